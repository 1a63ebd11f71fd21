"""The run's metric writer: console lines and TensorBoard events.

Scalars go to both; images and the hyper-parameters go to TensorBoard only
(the config is also in `config.json`), so the console stays readable.
Processes other than 0 write nothing to TensorBoard.

The event files are written by clu's writer where clu (and what it needs) is
installed. On a machine without TensorFlow or clu, `tensorboardX` writes them
(scalars, images and hyper-parameters), else `tensorboard`'s own writer
(scalars only), else nothing but the console; the log says which.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

# Event-file writers, in the order they are tried.
EVENT_BACKENDS = ("clu", "tensorboardX", "tensorboard")


def flat_config(config: ml_collections.ConfigDict,
                prefix: str = "") -> Dict[str, Any]:
  """{'a.b': value} of every leaf field (tuples as text), for hparams."""
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else (
          str(v))
  return out


def open_event_writer(logdir: str,
                      backends: Sequence[str] = EVENT_BACKENDS
                      ) -> Tuple[Optional[Any], str]:
  """The first event writer of `backends` that imports, and its name.

  Args:
    logdir: directory of the event files.
    backends: names from `EVENT_BACKENDS`, tried in order.

  Returns:
    (writer with clu's `write_scalars/images/hparams`, `flush`, `close`, or
    None, the backend's name or 'none').
  """
  for name in backends:
    try:
      tb = _OPENERS[name](logdir)
    except ImportError as e:  # not installed here (or needs TensorFlow)
      logging.info("TensorBoard writer %s unavailable: %s", name, e)
      continue
    logging.info("TensorBoard events in %s written by %s", logdir, name)
    return tb, name
  logging.warning("No TensorBoard writer (clu, tensorboardX or tensorboard) "
                  "is installed: metrics go to the console only")
  return None, "none"


class Writer:
  """Console + TensorBoard writer with clu's writer methods."""

  def __init__(self, logdir: str):
    """Opens the TensorBoard event file in `logdir` (process 0 only)."""
    self._tb = None
    self.backend = "none"
    if jax.process_index() == 0:
      self._tb, self.backend = open_event_writer(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs `[step] name=value, ...` and writes the TensorBoard scalars."""
    if not scalars:
      return
    if jax.process_index() == 0:
      text = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(scalars.items()))
      logging.info("[%d] %s", step, text)
    if self._tb is not None:
      self._tb.write_scalars(step, dict(scalars))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Writes [1, H, W, C] uint8 images to TensorBoard."""
    if self._tb is not None:
      self._tb.write_images(step, dict(images))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Writes the hyper-parameters to TensorBoard (not the console)."""
    if self._tb is not None:
      self._tb.write_hparams(dict(hparams))

  def flush(self) -> None:
    """Flushes the event file."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _fmt(v: Any) -> str:
  return f"{v:.6g}" if isinstance(v, float) else str(v)


class _TensorboardX:
  """clu's writer methods over `tensorboardX.SummaryWriter` (no TensorFlow)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._w = SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for k, v in scalars.items():
      self._w.add_scalar(k, float(v), int(step))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    for k, v in images.items():
      self._w.add_images(k, np.asarray(v), int(step), dataformats="NHWC")

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # As text: tensorboardX's hparams plugin files them in a separate run.
    self._w.add_text("hparams", "\n\n".join(
        f"{k}: {v}" for k, v in sorted(hparams.items())), 0)

  def flush(self) -> None:
    self._w.flush()

  def close(self) -> None:
    self._w.close()


class _TensorboardScalars:
  """clu's writer methods over `tensorboard.summary.Writer`: scalars only."""

  def __init__(self, logdir: str):
    # pylint: disable-next=g-import-not-at-top
    from tensorboard.summary import Writer as TbWriter
    self._w = TbWriter(logdir)
    self._said = False

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for k, v in scalars.items():
      self._w.add_scalar(k, float(v), int(step))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    del step
    if images and not self._said:  # once, not at every evaluation
      logging.info("tensorboard's writer keeps scalars only: images %s are "
                   "not written to the event file", sorted(images))
      self._said = True

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # scalars only; the config is in config.json

  def flush(self) -> None:
    self._w.flush()

  def close(self) -> None:
    self._w.close()


def _clu(logdir: str):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers.SummaryWriter(logdir)


_OPENERS: Dict[str, Callable[[str], Any]] = {
    "clu": _clu, "tensorboardX": _TensorboardX,
    "tensorboard": _TensorboardScalars}
