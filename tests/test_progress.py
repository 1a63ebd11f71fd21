"""Progress reporting: status line figures, terminal redraws, periodic logs."""

import io

import pytest

from simclr_jax.engine import progress

pytestmark = pytest.mark.quick


class FakeClock:
  """A clock that advances only when told to."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class Terminal(io.StringIO):

  def isatty(self):
    return True


def test_format_duration_hand_cases():
  assert progress.format_duration(0) == "00:00"
  assert progress.format_duration(12.4) == "00:12"
  assert progress.format_duration(754) == "12:34"
  assert progress.format_duration(3600 + 2 * 60 + 3) == "1:02:03"
  assert progress.format_duration(float("inf")) == "?"


def test_status_line_rate_and_eta():
  # 450 of 1000 in 10 s: 45 items/s, 550 left -> 12.2 s.
  line = progress.format_status(450, 1000, 10.0, unit="images", desc="feat",
                                bar_width=10)
  assert line == "feat:  45%|####......| 450/1000 [00:10<00:12, 45.0 images/s]"
  # Unknown total: count and rate, no ETA.
  assert progress.format_status(30, None, 4.0, unit="batches") == (
      "30 batches [00:04, 7.5 batches/s]")
  rate, eta = progress.rate_and_eta(0, 10, 5.0)
  assert rate == 0.0 and eta == float("inf")


def test_interactive_bar_redraws_in_place():
  clock, out = FakeClock(), Terminal()
  bar = progress.Progress(4, desc="export", unit="files", stream=out,
                          clock=clock, refresh_s=1.0)
  assert bar.interactive
  for _ in range(4):
    clock.now += 0.5  # a redraw every second item (refresh 1 s)
    bar.update()
  bar.close()
  text = out.getvalue()
  assert text.endswith("\n") and text.count("\n") == 1
  frames = text.rstrip("\n").split("\r")[1:]
  # First update is due at once, then every 2 items, plus the final one.
  assert [f.split("|")[-1].split(" [")[0].strip() for f in frames] == [
      "1/4", "3/4", "4/4"]
  assert frames[-1].endswith("[00:02<00:00, 2.0 files/s]")


def test_non_interactive_logs_periodically():
  clock, lines = FakeClock(), []
  bar = progress.Progress(6, desc="convert", unit="variables",
                          stream=io.StringIO(), clock=clock,
                          log_every_s=30.0, log_fn=lines.append)
  assert not bar.interactive
  for _ in range(6):
    clock.now += 10.0
    bar.update()
  bar.close()
  # Start line, one line per 30 s (items 3 and 6), and the final one.
  assert lines[0] == "convert: starting, 6 variables"
  assert lines[1] == "convert:  50% 3/6 [00:30<00:30, 0.1 variables/s]"
  assert lines[2] == "convert: 100% 6/6 [01:00<00:00, 0.1 variables/s]"
  assert lines[3].endswith("(done)") and len(lines) == 4


def test_track_counts_sizes_and_early_stop():
  lines = []
  items = [[1, 2], [3], [4, 5, 6]]
  seen = []
  gen = progress.track(items, total=6, desc="x", unit="images",
                       size_fn=len, interactive=False, log_fn=lines.append,
                       log_every_s=0.0)
  for item in gen:
    seen.append(item)
    if len(seen) == 2:
      break
  gen.close()
  assert seen == items[:2]
  # The item being processed at the break counts: 3 of 6 images.
  assert lines[-1].startswith("x:  50% 3/6 ") and lines[-1].endswith("(done)")
  # len() gives the total when no size_fn is given.
  quiet = list(progress.track(range(5), enabled=False))
  assert quiet == list(range(5))


def test_bad_total_is_rejected():
  with pytest.raises(ValueError, match="total = -1"):
    progress.Progress(-1)


def _first(**kw):
  args = dict(step=1, now=100.0, total=1001, images_per_step=64, min_steps=5,
              min_seconds=30.0, lag=2, cpu_warning_hours=2.0, on_cpu=True,
              cpu_hint="configs/folder.py:cpu")
  args.update(kw)
  return progress.FirstEstimate(**args)


def test_first_estimate_after_a_few_steps_with_the_cpu_hint():
  first = _first()
  # Step 7 dispatched: steps 2-5 are certainly done (lag 2): 4 timed < 5.
  assert first.update(7, 129.0) == []
  lines = first.update(8, 129.0)  # 5 timed steps (2..6) in 29 s
  # (1001 - 6) steps left at 5/29 steps/s = 5771 s; 64 * 5 / 29 images/s.
  assert lines == ["first estimate over 5 steps (29 s): 11.0 images/s, ETA "
                   "1:36:11 for steps 7-1001"]  # under 2 h: no warning
  assert first.done and first.update(9, 131.0) == []


def test_first_estimate_after_the_seconds_and_the_warning():
  first = _first(total=100001)
  assert first.update(3, 129.0) == []  # 0 steps timed yet
  lines = first.update(4, 131.0)  # 1 step in 31 s: (100001 - 2) * 31 s
  eta = (100001 - 2) * 31.0
  assert lines[0] == ("first estimate over 1 steps (31 s): 2.1 images/s, "
                      f"ETA {progress.format_duration(eta)} for steps "
                      "3-100001")
  assert lines[1] == (f"this run would take {progress.format_duration(eta)} "
                      "on the CPU, more than 2 h: the CPU variant "
                      "--config=configs/folder.py:cpu trains a smaller model "
                      "on smaller images; or shorten it with "
                      "--config.train.epochs or --config.train.steps")
  # Not on a CPU, or without a variant: no word, or only how to shorten.
  assert len(_first(total=100001, on_cpu=False).update(4, 131.0)) == 1
  line = _first(total=100001, cpu_hint="").update(4, 131.0)[1]
  assert "variant" not in line and "--config.train.steps" in line
