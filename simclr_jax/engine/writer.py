"""The run's metric writer: console lines and TensorBoard events.

Scalars go to both; images and the hyper-parameters go to TensorBoard only
(the config is also in `config.json`), so the console stays readable.
Processes other than 0 write nothing to TensorBoard.
"""

from typing import Any, Dict, Mapping

import jax
import ml_collections
from absl import logging


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


class Writer:
  """Console + TensorBoard writer with clu's writer methods."""

  def __init__(self, logdir: str):
    """Opens the TensorBoard event file in `logdir` (process 0 only)."""
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self._tb = None
    if jax.process_index() == 0:
      self._tb = metric_writers.SummaryWriter(logdir)

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
