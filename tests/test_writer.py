"""The metric writer without clu: the fallback writes readable event files."""

import glob

import numpy as np
import pytest

# The event files are read back with tensorboard's loader.
event_file_loader = pytest.importorskip(
    "tensorboard.backend.event_processing.event_file_loader")

from simclr_jax.engine import writer as writer_lib

pytestmark = pytest.mark.quick


def _scalars(logdir):
  """{(tag, step): value} of the scalars in the event files of `logdir`."""
  out = {}
  for path in glob.glob(f"{logdir}/events.out.tfevents.*"):
    for event in event_file_loader.EventFileLoader(path).Load():
      for v in event.summary.value:
        if v.HasField("simple_value"):  # tensorboardX, clu
          out[(v.tag, event.step)] = v.simple_value
        elif v.metadata.plugin_data.plugin_name == "scalars":  # tensorboard
          t = v.tensor
          out[(v.tag, event.step)] = float(
              t.float_val[0] if t.float_val else
              np.frombuffer(t.tensor_content, np.float32)[0])
  return out


def test_falls_back_past_a_missing_clu(tmp_path, monkeypatch):
  def no_clu(logdir):
    raise ImportError("No module named 'clu'")

  monkeypatch.setitem(writer_lib._OPENERS, "clu", no_clu)
  monkeypatch.setitem(writer_lib._OPENERS, "tensorboardX", no_clu)
  w = writer_lib.Writer(str(tmp_path))
  assert w.backend == "tensorboard"
  w.write_hparams({"a": 1})
  w.write_scalars(3, {"loss": 0.25, "lr": np.float32(2.0)})
  w.write_images(3, {"grid": np.zeros((1, 4, 4, 3), np.uint8)})  # skipped
  w.close()
  got = _scalars(str(tmp_path))
  assert got == {("loss", 3): pytest.approx(0.25), ("lr", 3): 2.0}


def test_console_only_when_no_writer_is_installed(tmp_path, monkeypatch):
  def missing(logdir):
    raise ImportError("not installed")

  for name in writer_lib.EVENT_BACKENDS:
    monkeypatch.setitem(writer_lib._OPENERS, name, missing)
  w = writer_lib.Writer(str(tmp_path))
  assert w.backend == "none"
  w.write_scalars(1, {"loss": 1.0})
  w.close()
  assert not glob.glob(f"{tmp_path}/events.out.tfevents.*")


def test_tensorboardx_backend_when_installed(tmp_path):
  pytest.importorskip("tensorboardX")
  tb, name = writer_lib.open_event_writer(str(tmp_path), ("tensorboardX",))
  assert name == "tensorboardX"
  tb.write_scalars(2, {"loss": 0.5})
  tb.write_images(2, {"grid": np.zeros((1, 4, 4, 3), np.uint8)})
  tb.write_hparams({"a": 1})
  tb.close()
  assert _scalars(str(tmp_path))[("loss", 2)] == pytest.approx(0.5)
