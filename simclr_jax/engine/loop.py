"""The one training loop: every mode, every guarantee.

A mode (see `simclr_jax.modes`) says only what differs: it builds a `Job`
(initial state, mapped step, batches, evaluators, what it writes at the
end). This loop then gives every mode the same behaviour:

* the config resolved once against the data and the backend, validated and
  frozen (`engine.resolve`), before the mode builds anything;
* resume from the newest checkpoint of the workdir, shape-checked against the
  job's state (`train.start_over` moves a different model's checkpoints
  aside); the data iterator starts at the restored step;
* config agreement across hosts; `config.json` beside the checkpoints;
* one host sync per log period: console and TensorBoard scalars, steps/s,
  images/s and ETA, the non-finite guard naming the step and quantity;
* bounded run-ahead: at most `train.max_steps_in_flight` steps dispatched
  ahead of the device (waiting on a finished step's metrics, not copying
  them), so a stop signal is acted on within that many steps plus the save;
* "Initial compilation" and its duration;
* checkpoints at `train.checkpoint_every_steps` and at the end, evaluators at
  `train.eval_every_steps` and at the end, all through `config.is_time`;
* SIGTERM/SIGINT: finish the step, check finiteness, commit the checkpoint on
  every process, raise `Preempted` (exit 75); also during the final
  evaluation, whose rerun then evaluates without training;
* every exit path waits for the checkpoints already started.
"""

import abc
import dataclasses
import sys
import time
from typing import (Any, Callable, ClassVar, Dict, Iterator, List, Optional,
                    Sequence, Tuple, Union)

import jax
import ml_collections
from absl import logging
from etils import epath

from simclr_jax import config as config_lib
from simclr_jax import distributed
from simclr_jax import parallel
from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax.engine import preemption
from simclr_jax.engine import progress
from simclr_jax.engine import resolve as resolve_lib
from simclr_jax.engine import results as results_lib
from simclr_jax.engine import state as state_lib
from simclr_jax.engine import workdir as workdir_lib
from simclr_jax.engine import writer as writer_lib
from simclr_jax.evals import base as evals_base


@dataclasses.dataclass
class Job:
  """What a mode hands the loop.

  Attributes:
    state: the replicated step-0 state (also the checkpoint's target).
    step_fn: (state, *step_args, global batch) -> (state, metrics).
    batches: start step -> iterator of host-local batches from that step.
    total_steps: steps of the whole run.
    images_per_step: global images per step, for images/s.
    step_args: replicated read-only inputs of the step (frozen encoder,
      teacher).
    evaluators: run at the evaluation cadence (`periodic` ones) and at the
      end; their results are filed under their names.
    variables: state -> the variables the evaluators score.
    finish: (state, results) -> None, after the final evaluation: adds to
      the results and writes what the mode leaves behind (exports).
    results: results known when the job is built (its source, ...).
    description: one log line saying what is trained.
  """
  state: Any
  step_fn: Callable
  batches: Callable[[int], Iterator[Dict[str, Any]]]
  total_steps: int
  images_per_step: int
  step_args: Tuple = ()
  evaluators: Sequence[evals_base.Evaluator] = ()
  variables: Callable[[Any], Any] = lambda state: state.variables
  finish: Optional[Callable[[Any, Dict[str, Any]], None]] = None
  results: Dict[str, Any] = dataclasses.field(default_factory=dict)
  description: str = ""


@dataclasses.dataclass
class EvalJob:
  """What an evaluation-only mode hands the loop: no state, step or batches,
  nothing to resume; its evaluators run once, at the end.

  Attributes:
    evaluators: run once; their results are filed under their names.
    variables: () -> the variables the evaluators score.
    results: results known when the job is built (its source, ...).
    description: one log line saying what is evaluated.
  """
  evaluators: Sequence[evals_base.Evaluator]
  variables: Callable[[], Any]
  results: Dict[str, Any] = dataclasses.field(default_factory=dict)
  description: str = ""
  total_steps: ClassVar[int] = 0  # trains nothing


class Mode(abc.ABC):
  """A mode of `main`: a name, its rules and how to build its job.

  A mode owns everything that is particular to it: the data it needs, the
  rules that resolve its config against the data (`engine.resolve`), its own
  field checks, and its job. Nothing outside `simclr_jax.modes` asks a mode
  for its name to decide anything.

  Attributes:
    name: the `config.mode` value (and the results file's name).
    needs_labels: refuse unlabelled data.
    needs_eval_split: refuse data without an eval split.
    takes_encoder: the mode evaluates or trains an existing encoder named by
      `config.init` (the `evaluate` command runs these).
    evaluators: the evaluator names (`evals.registry.NAMES`) it can run.
    default_evaluators: what `eval.evaluators=("auto",)` resolves to.
  """

  name: str = ""
  needs_labels: bool = True
  needs_eval_split: bool = True
  takes_encoder: bool = False
  evaluators: Tuple[str, ...] = ("classifier",)
  default_evaluators: Tuple[str, ...] = ("classifier",)

  def rules(self) -> Sequence[resolve_lib.Rule]:
    """(config, facts) -> changed fields, applied in order when resolving.

    By default the batch is fitted to a small dataset (`data.fit_sizes`).
    """
    return (resolve_lib.fit_batch,)

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """The mode's own field checks, after the shared ones (no data, no
    devices); raises ConfigError."""

  def check_data(self, config: ml_collections.ConfigDict,
                 facts: resolve_lib.DataFacts) -> None:
    """The checks whose limits depend on the data; by default the batch must
    fit the training split."""
    resolve_lib.check_batch(config, facts.num_train)

  @abc.abstractmethod
  def build(self, config: ml_collections.FrozenConfigDict, mesh,
            workdir: str) -> Union[Job, EvalJob]:
    """Builds the job from the resolved config, before compiling anything."""

  def run(self, config: ml_collections.ConfigDict, workdir: str,
          guard: Optional[preemption.PreemptionGuard] = None
          ) -> Dict[str, Any]:
    """Runs this mode in `workdir` through the one loop; see `run`."""
    return run(self, config, workdir, guard)


def resolve_config(mode: Mode, config: ml_collections.ConfigDict
                   ) -> Tuple[ml_collections.FrozenConfigDict,
                              resolve_lib.DataFacts]:
  """`config` resolved for `mode` on this data and these devices (frozen),
  and the facts it was resolved on."""
  facts = resolve_lib.read_facts(config, jax.device_count(),
                                 jax.default_backend(), jax.process_count())
  return resolve_lib.resolve(mode, config, facts), facts


def run(mode: Mode, config: ml_collections.ConfigDict, workdir: str,
        guard: Optional[preemption.PreemptionGuard] = None) -> Dict[str, Any]:
  """Trains (or resumes) `mode` in `workdir` and returns its results.

  Args:
    mode: the mode (from `simclr_jax.modes.MODES`).
    config: the configuration.
    workdir: directory for checkpoints, TensorBoard events and results.
    guard: the signal handling (default: SIGTERM and SIGINT stop the run).

  Returns:
    The results dict also written to `<workdir>/<mode>_results.json`.

  Raises:
    preemption.Preempted: after a stop signal, once the checkpoint of the
      current step is committed on every process.
    preemption.NonFiniteError: at the first non-finite loss, gradient norm
      or state about to be saved; no such checkpoint is written.
  """
  guard = guard or preemption.PreemptionGuard()
  with guard:  # Handlers are installed only while the job runs.
    return _run(mode, config, workdir, guard)


def _run(mode: Mode, config: ml_collections.ConfigDict, workdir: str,
         guard: preemption.PreemptionGuard) -> Dict[str, Any]:
  """The body of `run`, with `guard`'s signal handlers installed."""
  mesh = parallel.make_mesh()
  # Hosts started with different flags would hang in (or corrupt) collectives.
  distributed.check_config_agreement(config, {"workdir": workdir})
  config, facts = resolve_config(mode, config)  # validated once, frozen
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # gs:// too
  with workdir_lib.WorkdirLock(workdir):  # one run per workdir
    if facts.has_eval:
      # Image files of the eval split are read first after training: a
      # corrupt one must fail (or be skipped and counted) before the first
      # step.
      from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
      data_lib.check_split_readable(config.data, config.data.eval_split)
    job = mode.build(config, mesh, workdir)
    checkpointer, start, state = None, 0, None
    if isinstance(job, Job):  # an evaluation-only job has nothing to resume
      checkpointer, start, state = ckpt_lib.resume(
          workdir, config.train.keep_checkpoints, job.state,
          config.train.start_over)
    try:
      return _resumed(mode, job, config, workdir, state, start, checkpointer,
                      guard)
    finally:
      # Every exit path (a result, a signal, an error) commits started saves.
      if checkpointer is not None:
        checkpointer.close()


def _resumed(mode: Mode, job: Job, config: ml_collections.ConfigDict,
             workdir: str, state: Any, start: int,
             checkpointer: Optional[ckpt_lib.Checkpointer],
             guard: preemption.PreemptionGuard) -> Dict[str, Any]:
  """Trains from `start`, evaluates and writes the results."""
  stored = _stored_config(workdir)
  if start:
    workdir_lib.check_resume_config(workdir, config, stored)
    logging.info("Resuming from checkpoint at step %d in %s", start,
                 checkpointer.directory)
  if not start or stored is None:
    # The config the checkpoints are made with: exports and evaluations read
    # the architecture back from it. Later starts go to the history only.
    results_lib.write_results(workdir, "config", config.to_dict())
  workdir_lib.record_start(workdir, config, start)
  writer = writer_lib.Writer(workdir)
  try:
    if start == 0:
      writer.write_hparams(writer_lib.flat_config(config))
    for ev in job.evaluators:
      ev.start(writer, start)
    logging.info("%s: %d steps, %d devices", job.description or mode.name,
                 job.total_steps, jax.device_count())
    if config.data.source == "synthetic":
      logging.warning("data.source='synthetic': generated images, for "
                      "benchmarks and debugging; no result of this run is a "
                      "result on real data")
    started = time.monotonic()
    state = _train(job, config, state, start, checkpointer, writer, guard)
    trained = time.monotonic()
    results = _evaluate_final(job, config, state, writer, guard)
    # Wall time of this process's part (a resumed run counts from its
    # restart): what the CPU study and the recipes' timings read.
    results["seconds"] = {"train": trained - started,
                          "final_evaluation": time.monotonic() - trained}
    if isinstance(job, Job) and job.finish is not None:
      job.finish(state, results)
    results_lib.write_results(workdir, f"{mode.name}_results", results)
    return results
  finally:
    writer.close()


def _stored_config(workdir: str) -> Optional[Dict[str, Any]]:
  """`<workdir>/config.json` as a dict, or None."""
  try:
    return results_lib.read_workdir_config(workdir).to_dict()
  except ValueError:
    return None


def _train(job: Job, config: ml_collections.ConfigDict, state: Any,
           start: int, checkpointer: ckpt_lib.Checkpointer,
           writer: writer_lib.Writer,
           guard: preemption.PreemptionGuard) -> Any:
  """Steps `start + 1 .. total`; returns the final state."""
  if isinstance(job, EvalJob) or start >= job.total_steps:
    return state
  total, tc = job.total_steps, config.train
  mesh = parallel.make_mesh()
  batches = job.batches(start)
  pending: List[Tuple[int, Dict[str, Any]]] = []
  last_saved = start  # newest checkpoint known good, for error messages
  clock = _Clock(start, total, job.images_per_step, tc)
  for step in range(start + 1, total + 1):
    batch = parallel.host_to_global(mesh, next(batches))
    if step == start + 1:
      logging.info("Initial compilation, this might take some minutes...")
      t0 = time.time()
      state, metrics = job.step_fn(state, *job.step_args, batch)
      jax.block_until_ready(metrics)
      logging.info("Initial compilation and first step took %.1f s",
                   time.time() - t0)
      clock.restart(step)
    else:
      state, metrics = job.step_fn(state, *job.step_args, batch)
    pending.append((step, metrics))
    wait_for_step_behind(pending, tc.max_steps_in_flight)
    clock.tick(step)
    log_now = config_lib.is_time(step, tc.log_every_steps, total)
    if log_now:
      pending = jax.device_get(pending)  # the one host sync per log period
      _check_finite(pending, None, step, last_saved)
      scalars = state_lib.mean_metrics([m for _, m in pending])
      pending = []
      scalars.update(clock.rates(step))
      writer.write_scalars(step, scalars)
    stop = guard.should_stop(step, sync=log_now)
    if stop or config_lib.is_time(step, tc.checkpoint_every_steps, total):
      _check_finite(pending, state, step, last_saved)
      checkpointer.save(step, state)
      last_saved = step
    if stop:
      _preempted(checkpointer, writer, step, stop)
    if step < total and config_lib.is_time(step, tc.eval_every_steps, total):
      _evaluate(job, state, step, writer, periodic_only=True)
  clock.close()
  return state


def wait_for_step_behind(pending: Sequence[Tuple[int, Any]],
                         max_in_flight: int) -> None:
  """Bounded run-ahead: blocks until the step `max_in_flight` behind the
  newest dispatched one has finished on the device.

  Without it the host queues every step of a log period before it looks at
  a stop signal again, so a SIGTERM waits for all of them; with it a signal
  is acted on within `max_in_flight` steps plus the save. Waiting on a
  finished step's metrics copies nothing to the host.

  Args:
    pending: (step, metrics) of the steps dispatched since the last host
      sync, oldest first.
    max_in_flight: steps allowed to be dispatched but not finished (>= 1).
  """
  if len(pending) > max_in_flight:
    jax.block_until_ready(pending[-1 - max_in_flight][1])


def _evaluate(job: Job, state: Any, step: int, writer: writer_lib.Writer,
              periodic_only: bool, guard=None, checkpointer=None
              ) -> Dict[str, Any]:
  """Runs the evaluators; returns {name: result}."""
  results = {}
  variables = (job.variables() if isinstance(job, EvalJob)
               else job.variables(state))
  for ev in job.evaluators:
    if periodic_only and not ev.periodic:
      continue
    if guard is not None:
      stop = guard.should_stop(step, sync=True)
      if stop:
        _preempted(checkpointer, writer, step, stop)
    result = ev.run(variables, step, writer)
    if result is not None:
      results[ev.name] = result
      writer.write_scalars(step, evals_base.scalars_of(ev.name, result))
      if "top1" in result:
        logging.info("%s on the eval split: top-1 %.4f over %d examples",
                     ev.name, result["top1"], result.get("num_examples", 0))
  return results


def _evaluate_final(job: Job, config: ml_collections.ConfigDict, state: Any,
                    writer: writer_lib.Writer,
                    guard: preemption.PreemptionGuard) -> Dict[str, Any]:
  """The end of a run: every evaluator, stoppable by a signal."""
  results = dict(job.results)
  results.setdefault("step", int(job.total_steps))
  # Stated beside every number: a synthetic run measures the program only.
  results["data_source"] = config.data.source
  results["config"] = config.to_dict()
  results.update(_evaluate(job, state, job.total_steps, writer,
                           periodic_only=False, guard=guard,
                           checkpointer=None))
  return results


def _preempted(checkpointer, writer, step: int, reason: str) -> None:
  """Commits the saves on every process, then raises `Preempted`."""
  if checkpointer is not None:
    checkpointer.wait()  # committed on every process before exiting
  writer.flush()
  logging.warning("Preempted (%s) at step %d: its checkpoint is committed; "
                  "rerun the same command to resume.", reason, step)
  raise preemption.Preempted(step, reason)


def _check_finite(pending: List[Tuple[int, Dict[str, Any]]], state: Any,
                  step: int, last_saved: int) -> None:
  """Stops the run at a non-finite guarded metric (or state, when given)."""
  guarded = [(s, {k: m[k] for k in preemption.GUARDED_METRICS if k in m})
             for s, m in pending]
  preemption.check_finite_metrics(jax.device_get(guarded),
                                  last_good=last_saved)
  if state is not None:
    preemption.check_finite_tree(state, step, last_good=last_saved)


class _Clock:
  """Steps/s, images/s and ETA: a log line per log period, and on a terminal
  also a bar redrawn every step (in images, so its rate reads images/s)."""

  def __init__(self, start: int, total: int, images_per_step: int,
               train_cfg: ml_collections.ConfigDict):
    self._total, self._images = total, images_per_step
    self._step, self._time = start, time.time()
    self._bar = None
    self._first = None
    self._cfg = train_cfg

  def restart(self, step: int) -> None:
    """Measures from now on (after the compile)."""
    self._step, self._time = step, time.time()
    tc = self._cfg
    self._first = progress.FirstEstimate(
        step, self._time, self._total, self._images, tc.first_eta_steps,
        tc.first_eta_seconds, tc.max_steps_in_flight,
        tc.cpu_eta_warning_hours, jax.default_backend() == "cpu",
        tc.cpu_variant)
    interactive = bool(getattr(sys.stderr, "isatty", lambda: False)())
    self._bar = progress.Progress(
        # From the compiled first step on, which is counted right after.
        (self._total - step + 1) * self._images,
        desc=f"steps {step}-{self._total}",
        unit="images", interactive=True,
        enabled=interactive and jax.process_index() == 0)

  def tick(self, step: int) -> None:
    """Step `step` dispatched (redraws the bar; the first ETA when due)."""
    if self._bar is not None:
      self._bar.update(self._images)
    if self._first is not None and not self._first.done:
      lines = self._first.update(step, time.time())
      for i, line in enumerate(lines):
        (logging.warning if i else logging.info)("%s", line)

  def close(self) -> None:
    """Draws the bar's last state."""
    if self._bar is not None:
      self._bar.close()

  def rates(self, step: int) -> Dict[str, float]:
    """Rates since the last call, and a progress line in the log."""
    now = time.time()
    out = {}
    if step > self._step and now > self._time:
      steps_per_s = (step - self._step) / (now - self._time)
      eta_s = (self._total - step) / steps_per_s
      out = {"steps_per_sec": steps_per_s,
             "images_per_sec": steps_per_s * self._images,
             "eta_minutes": eta_s / 60}
      logging.info("step %d/%d, %.1f images/s, ETA %s", step, self._total,
                   out["images_per_sec"], progress.format_duration(eta_s))
    self._step, self._time = step, now
    return out
