"""Progress reporting for long work outside the training loop.

On an interactive terminal a one-line bar is redrawn in place with the rate
(items/s) and an ETA; when the output is a file or a pipe (batch jobs, CI) the
same figures go to the log as a periodic line instead, so logs stay readable.
No dependency beyond the standard library and absl.

  for batch in progress.track(batches, total=n, desc="features", unit="images"):
    ...

or, when the work is not a loop over one iterable:

  with progress.Progress(total, desc="export") as bar:
    ...
    bar.update(k)
"""

import math
import sys
import time
from typing import (Callable, Iterable, Iterator, List, Optional, TextIO,
                    TypeVar)

from absl import logging

T = TypeVar("T")

# Display cadence, not a hyper-parameter: redraw the bar at most this often ...
REFRESH_S = 0.2
# ... and write a log line at most this often when not on a terminal.
LOG_EVERY_S = 30.0
# Characters of the bar itself.
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
  """Formats seconds as 'MM:SS', or 'H:MM:SS' from one hour on.

  Args:
    seconds: a non-negative duration (inf or NaN give '?').

  Returns:
    The formatted duration.
  """
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  s = int(round(seconds))
  h, s = divmod(s, 3600)
  m, s = divmod(s, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def rate_and_eta(done: float, total: Optional[float],
                 elapsed: float) -> tuple:
  """Average rate since the start and the remaining time at that rate.

  Args:
    done: items finished.
    total: items in all (None when unknown).
    elapsed: seconds since the start.

  Returns:
    (items per second, seconds left); the rate is 0 before any progress and
    the ETA is inf when it cannot be estimated.
  """
  rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
  if total is None or rate == 0.0:
    return rate, math.inf
  return rate, max(total - done, 0) / rate


def format_status(done: int, total: Optional[int], elapsed: float,
                  unit: str = "items", desc: str = "",
                  bar_width: int = BAR_WIDTH) -> str:
  """One status line: '[desc: ] 45%|####....| 450/1000 [00:10<00:12, 45.0 items/s]'.

  Args:
    done: items finished.
    total: items in all, or None (no percentage, bar or ETA then).
    elapsed: seconds since the start.
    unit: what an item is, for the rate.
    desc: prefix naming the work.
    bar_width: characters of the bar (0 = no bar).

  Returns:
    The line, without a newline.
  """
  rate, eta = rate_and_eta(done, total, elapsed)
  prefix = f"{desc}: " if desc else ""
  timing = f"{format_duration(elapsed)}"
  if total:
    frac = min(done / total, 1.0)
    filled = int(frac * bar_width)
    bar = f"|{'#' * filled}{'.' * (bar_width - filled)}|" if bar_width else ""
    timing += f"<{format_duration(eta)}"
    return (f"{prefix}{100 * frac:3.0f}%{bar} {done}/{total} "
            f"[{timing}, {rate:.1f} {unit}/s]")
  return f"{prefix}{done} {unit} [{timing}, {rate:.1f} {unit}/s]"


class Progress:
  """A progress reporter: a redrawn bar on a terminal, log lines elsewhere."""

  def __init__(self, total: Optional[int], desc: str = "",
               unit: str = "items", stream: Optional[TextIO] = None,
               interactive: Optional[bool] = None,
               refresh_s: float = REFRESH_S,
               log_every_s: float = LOG_EVERY_S,
               clock: Callable[[], float] = time.monotonic,
               log_fn: Callable[[str], None] = logging.info,
               enabled: bool = True):
    """Starts the clock.

    Args:
      total: items expected (None or 0 when unknown).
      desc: short name of the work, shown first.
      unit: what an item is ('images', 'batches', 'variables').
      stream: where the bar is drawn (default sys.stderr).
      interactive: draw a bar (True) or log lines (False); default: whether
        `stream` is a terminal.
      refresh_s: minimum seconds between two redraws of the bar.
      log_every_s: minimum seconds between two log lines.
      clock: time source in seconds (tests pass a fake one).
      log_fn: receives each log line when not interactive.
      enabled: False silences everything (e.g. on processes other than 0).
    """
    if total is not None and total < 0:
      raise ValueError(f"total = {total} is invalid: must be >= 0 or None.")
    self.total = total or None
    self.desc, self.unit = desc, unit
    self.stream = sys.stderr if stream is None else stream
    if interactive is None:
      isatty = getattr(self.stream, "isatty", None)
      interactive = bool(isatty and isatty())
    self.interactive = interactive
    self.refresh_s, self.log_every_s = refresh_s, log_every_s
    self.clock, self.log_fn, self.enabled = clock, log_fn, enabled
    self.done = 0
    self.start = clock()
    self._last_shown = -math.inf
    self._closed = False
    if enabled and not interactive:
      size = f"{self.total} {unit}" if self.total else f"unknown number of {unit}"
      log_fn(f"{desc or 'work'}: starting, {size}")
      self._last_shown = self.start

  @property
  def elapsed(self) -> float:
    """Seconds since the start."""
    return self.clock() - self.start

  def status(self) -> str:
    """The current status line."""
    return format_status(self.done, self.total, self.elapsed, self.unit,
                         self.desc, BAR_WIDTH if self.interactive else 0)

  def update(self, n: int = 1) -> None:
    """Records `n` more finished items and shows the status when due.

    Args:
      n: items finished since the last call.
    """
    self.done += n
    if not self.enabled:
      return
    now = self.clock()
    every = self.refresh_s if self.interactive else self.log_every_s
    if now - self._last_shown >= every:
      self._show(final=False)
      self._last_shown = now

  def _show(self, final: bool) -> None:
    if self.interactive:
      end = "\n" if final else ""
      self.stream.write("\r" + self.status() + end)
      self.stream.flush()
    else:
      self.log_fn(self.status() + (" (done)" if final else ""))

  def close(self) -> None:
    """Shows the final status once (a last redraw or a 'done' log line)."""
    if self._closed:
      return
    self._closed = True
    if self.enabled:
      self._show(final=True)

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def track(iterable: Iterable[T], total: Optional[int] = None, desc: str = "",
          unit: str = "items", size_fn: Optional[Callable[[T], int]] = None,
          **kwargs) -> Iterator[T]:
  """Yields the items of `iterable` while reporting progress.

  Args:
    iterable: the work items (batches, files, variables).
    total: units of work in all; default `len(iterable)` when it has one
      and `size_fn` is not given.
    desc: short name of the work.
    unit: what a unit of work is.
    size_fn: units of work in one item (e.g. images in a batch, so that the
      rate reads in images/s); default one per item.
    **kwargs: further `Progress` arguments (stream, interactive, enabled...).

  Yields:
    The items of `iterable`, unchanged.
  """
  if total is None and size_fn is None and hasattr(iterable, "__len__"):
    total = len(iterable)
  bar = Progress(total, desc=desc, unit=unit, **kwargs)
  size = (lambda item: 1) if size_fn is None else size_fn
  item, counted = None, True
  try:
    for item in iterable:
      counted = False
      yield item
      counted = True
      bar.update(int(size(item)))
  except GeneratorExit:
    # The consumer stopped early (break) after finishing the current item.
    if not counted:
      bar.update(int(size(item)))
    raise
  finally:
    bar.close()


class FirstEstimate:
  """The run's first ETA, a few steps after the compile instead of at the
  first log step, and a word when the run does not fit a CPU.

  A long log period on a slow machine used to keep the user waiting minutes
  for any estimate (and then for an estimate of a day); this one comes after
  `min_steps` timed steps or `min_seconds`, whichever is first.
  """

  def __init__(self, step: int, now: float, total: int, images_per_step: int,
               min_steps: int, min_seconds: float, lag: int,
               cpu_warning_hours: float, on_cpu: bool, cpu_hint: str = ""):
    """Starts timing at a finished step.

    Args:
      step: the step finished at `now` (the compiled first step).
      now: its time (seconds).
      total: the run's last step.
      images_per_step: global images per step.
      min_steps: timed steps after which the estimate is due...
      min_seconds: ... or seconds, whichever comes first.
      lag: steps that may be dispatched but not finished (the loop's
        `train.max_steps_in_flight`): step k's tick guarantees k - lag done.
      cpu_warning_hours: on a CPU, an ETA above this adds the warning.
      on_cpu: whether the backend is the CPU.
      cpu_hint: the config to suggest then (e.g. 'configs/folder.py:cpu').
    """
    self._step0, self._t0, self._total = step, now, total
    self._images, self._lag = images_per_step, lag
    self._min_steps, self._min_seconds = min_steps, min_seconds
    self._warn_s = cpu_warning_hours * 3600
    self._on_cpu, self._hint = on_cpu, cpu_hint
    self.done = False

  def update(self, step: int, now: float) -> List[str]:
    """The estimate's lines once it is due (each only once), else [].

    Args:
      step: the step just dispatched.
      now: the time (seconds).
    """
    finished = step - self._lag
    timed, elapsed = finished - self._step0, now - self._t0
    if self.done or timed < 1 or elapsed <= 0 or finished >= self._total:
      return []
    if timed < self._min_steps and elapsed < self._min_seconds:
      return []
    self.done = True
    per_s = timed / elapsed
    eta = (self._total - finished) / per_s
    lines = [f"first estimate over {timed} steps ({elapsed:.0f} s): "
             f"{per_s * self._images:.1f} images/s, ETA "
             f"{format_duration(eta)} for steps {finished + 1}-{self._total}"]
    if self._on_cpu and eta > self._warn_s:
      variant = (f"the CPU variant --config={self._hint} trains a smaller "
                 "model on smaller images; or " if self._hint else "")
      lines.append(f"this run would take {format_duration(eta)} on the CPU, "
                   f"more than {self._warn_s / 3600:g} h: {variant}shorten "
                   "it with --config.train.epochs or --config.train.steps")
    return lines
