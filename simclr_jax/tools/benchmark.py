"""Throughput and memory benchmark for a config.

  python -m simclr_jax.benchmark --config=configs/digits.py
  python -m simclr_jax.benchmark --config=configs/imagenet.py --sample_jpegs \
      --config.train.global_batch=64 --skip_train \
      --input_paths=reference,fast,on_device_host --repeats=5
  python -m simclr_jax.benchmark --config=configs/digits.py --skip_input \
      --flops
  python -m simclr_jax.benchmark --config=configs/digits.py --skip_input \
      --steps_in_flight=0,2 --repeats=5
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m \
      simclr_jax.benchmark --config=configs/digits.py --skip_input \
      --skip_train --memory --grad_chunks=1,2,4,8

The input pipeline is timed alone (host tf.data, all views augmented); the
train step is timed alone on a batch made on the devices by the synthetic
source (no files, no TensorFlow), so each figure says what that part can
sustain. `--sample_jpegs` reads scikit-learn's bundled
photos (427x640), JPEG-encoded into a temporary image folder, as an offline
stand-in for ImageNet files; `--sample_scale=6` enlarges them first
(2562x3840, about 10 megapixels, like a phone camera's photos). `--input_paths` times the host paths in turns
(one timing of each, then again, `--repeats` rounds, so a slow spell of a
shared host hits every path alike) and prints each median, and its ratio to
`reference` when that path is timed too: `reference` (the official-semantics
ops), `fast` (`data.fast_jpeg`), `on_device_host` (the host half of
`aug.on_device`: decode, crop and resize only), and `fast_dct` /
`on_device_host_dct` (the same with `data.fast_jpeg_dct`: large crops
decoded at 1/2, 1/4 or 1/8 scale). With
`--official_code=PATH` (your checkout of google-research/simclr) the path
`official` times the official TF2 augmentation over the same files, in the
same turns, and every path is also printed as a ratio to it; without the
path `official` is reported as skipped.

`--host_profile` prints where the host's time goes per image (each stage
of the reference pipeline, then of the `data.fast_jpeg` path,
`tools/host_profile.py`). `--device_aug_cost` times the step with and without on-device augmentation
on the same batch and prints the share the augmentation adds.
`--flops` adds the achieved FLOP/s of the step (XLA cost analysis / step
time) next to a measured matmul rate in the model's dtype, and the step time
of the same model's forward+backward with the loss replaced by a plain mean.
`--memory` prints XLA's compiled temporary memory per device of the loss
step (gradient of NT-Xent with respect to z) for `--memory_batches`, and of
the whole train step for each `--grad_chunks`.
"""

import gc
import os
import tempfile
import time
from typing import Any, Optional

from absl import app
from absl import flags
from ml_collections import config_flags

from simclr_jax.engine import logs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Configuration file.",
                                lock_config=False)
flags.DEFINE_integer("steps", 10, "Timed train steps.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed train steps after compile.")
flags.DEFINE_integer("input_batches", 20, "Timed input-pipeline batches.")
flags.DEFINE_bool("sample_jpegs", False,
                  "Use scikit-learn's sample photos as a JPEG image folder.")
flags.DEFINE_integer("sample_copies", 64,
                     "Copies of each sample photo in the JPEG folder.")
flags.DEFINE_integer("sample_scale", 1,
                     "Enlarge the sample photos this many times (bicubic) "
                     "before encoding: 6 gives 2562x3840 (10 megapixels).")
flags.DEFINE_bool("skip_input", False, "Do not time the input pipeline.")
flags.DEFINE_bool("skip_train", False, "Do not time the train step.")
flags.DEFINE_list("input_paths", ["config"],
                  "Host paths to time: config (as configured), reference, "
                  "fast, on_device_host, fast_dct, on_device_host_dct, "
                  "official.")
flags.DEFINE_string("official_code", None, "A checkout of "
                    "google-research/simclr (root or tf2/), for the "
                    "'official' input path.")
flags.DEFINE_bool("host_profile", False, "Print where the host's time goes "
                  "per image: decode, crop and resize, each colour op, "
                  "grayscale, blur, batching, the copy to the devices.")
flags.DEFINE_integer("profile_images", 128, "Images timed per profile stage.")
flags.DEFINE_bool("device_aug_cost", False, "Time the train step with and "
                  "without on-device augmentation on the same batch and "
                  "print what the augmentation adds.")
flags.DEFINE_integer("repeats", 1, "Timings per figure (the median is shown).")
flags.DEFINE_bool("flops", False, "Achieved FLOP/s, matmul rate, mean-loss "
                  "step.")
flags.DEFINE_list("steps_in_flight", [], "Also time the step with these "
                  "bounds on the steps dispatched ahead of the device, in "
                  "turns (0 = unbounded; the loop uses "
                  "train.max_steps_in_flight), e.g. 0,2.")
flags.DEFINE_bool("memory", False, "Compiled temporary memory per device.")
flags.DEFINE_list("memory_batches", ["4096", "16384", "65536"],
                  "Global batches of the loss-memory table.")
flags.DEFINE_list("grad_chunks", ["1", "2", "4"],
                  "train.grad_chunks values of the train-step memory table.")
flags.mark_flags_as_required(["config"])


def write_sample_jpeg_folder(root: str, copies: int, scale: int = 1) -> str:
  """Writes scikit-learn's sample photos as JPEGs in root/train/<class>/.

  Args:
    root: directory to create the folder in.
    copies: files per photo (each class holds one photo's copies).
    scale: enlarge each photo this many times (bicubic) first.

  Returns:
    The image-folder root.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = [Image.fromarray(np.asarray(p)) for p in load_sample_images().images]
  if scale > 1:
    photos = [p.resize((p.width * scale, p.height * scale), Image.BICUBIC)
              for p in photos]
  for split in ("train", "test"):
    for c, photo in enumerate(photos):
      d = os.path.join(root, split, f"photo{c}")
      os.makedirs(d, exist_ok=True)
      for i in range(copies if split == "train" else 2):
        photo.save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
  return root


OFFICIAL = "official"  # the official TF2 augmentation (--official_code)
INPUT_PATHS = {  # --input_paths name -> (fast_jpeg, on_device, fast_jpeg_dct)
    "reference": (False, False, False), "fast": (True, False, False),
    "on_device_host": (False, True, False),
    "fast_dct": (True, False, True), "on_device_host_dct": (False, True, True)}


def time_input(config, num_batches: int, official: Any = None) -> float:
  """Images/s of the host pretraining pipeline (all views augmented).

  Args:
    config: the full config (data, aug, train.global_batch, seed).
    num_batches: timed batches, after two untimed ones.
    official: the official `data_util` module: time its augmentation over
      the same training files instead of ours.

  Returns:
    Images per second.
  """
  from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  if official is not None:
    from simclr_jax.data import folders  # pylint: disable=g-import-not-at-top
    from simclr_jax.tools import official_pipeline  # pylint: disable=g-import-not-at-top
    files, _ = folders.split_files(config.data, config.data.train_split)
    it = official_pipeline.official_batches(
        official, files, config.train.global_batch,
        int(config.data.image_size), float(config.aug.color_strength),
        bool(config.aug.blur), config.seed)
  else:
    it = data_lib.make_pretrain_iterator(config.data, config.aug,
                                         config.train.global_batch,
                                         config.seed)
  next(it)  # start-up: file listing, caching, first fill of the buffers
  next(it)
  t0 = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return num_batches * config.train.global_batch / (time.perf_counter() - t0)


def time_train_step(config, steps: int, warmup: int):
  """Images/s of the pretraining step on a synthetic batch made on the devices.

  Args:
    config: the full config.
    steps: timed steps.
    warmup: untimed steps after the compile.

  Returns:
    (images_per_sec, compile_seconds, step_fn, state, device_batch).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from simclr_jax.modes import pretrain  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  config_lib.validate(config, jax.device_count(), jax.process_count())
  batch = config.train.global_batch
  sched = config_lib.Schedule(steps_per_epoch=1, total_steps=10 ** 6,
                              warmup_steps=0, peak_lr=1e-3)
  _, _, _, state, step_fn = pretrain.build_pretrain(config, 10, sched, mesh)
  # Made on the devices (the synthetic source), whatever config.data says:
  # this times the step alone, and needs no files and no TensorFlow.
  device_batch = next(synthetic.train_batches(
      config.data, config.aug.num_views, batch, config.seed, mesh=mesh))
  t0 = time.perf_counter()
  state, metrics = step_fn(state, device_batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = step_fn(state, device_batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, device_batch)
  jax.block_until_ready(metrics)
  return (steps * batch / (time.perf_counter() - t0), compile_s, step_fn,
          state, device_batch)


def print_in_flight(step_fn, state, device_batch, steps: int, bounds,
                    repeats: int, images_per_step: int) -> None:
  """Times the step with each bound on the steps in flight, in turns.

  The bound is the training loop's (`train.max_steps_in_flight`, through
  `engine.loop.wait_for_step_behind`); 0 dispatches every step without
  waiting, as the loop did before the bound. Prints each median images/s and
  its ratio to the first bound's.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from simclr_jax.engine import loop  # pylint: disable=g-import-not-at-top
  rates = {b: [] for b in bounds}
  for _ in range(max(1, repeats)):
    for bound in bounds:
      pending = []
      t0 = time.perf_counter()
      for step in range(steps):
        state, metrics = step_fn(state, device_batch)
        if bound:
          pending.append((step, metrics))
          loop.wait_for_step_behind(pending, bound)
      jax.block_until_ready(metrics)
      rates[bound].append(steps * images_per_step /
                          (time.perf_counter() - t0))
  first = float(np.median(rates[bounds[0]]))
  for bound in bounds:
    median = float(np.median(rates[bound]))
    name = f"at most {bound} steps in flight" if bound else "unbounded"
    print(f"train step, {name}: {median:.1f} images/s (median of "
          f"{len(rates[bound])}; x{median / first:.3f} of the first)")


def print_device_aug_cost(config, steps: int, warmup: int,
                          repeats: int = 1) -> float:
  """The device side of `aug.on_device`: its share of a train step.

  Times the pretraining step of `config`'s model on the same synthetic batch
  with `aug.on_device` off (the batch is taken as finished views) and on
  (flip, colour, grayscale and blur run inside the step), in turns.

  Args:
    config: the full config.
    steps: timed steps per timing.
    warmup: untimed steps after the compile.
    repeats: timings of each (the median is used).

  Returns:
    The fraction the augmentation adds to the step time.
  """
  times = {False: [], True: []}
  for _ in range(max(1, repeats)):
    for on in (False, True):
      c = config.copy_and_resolve_references()
      c.aug.on_device = on
      ips = time_train_step(c, steps, warmup)[0]
      times[on].append(c.train.global_batch / ips)
      gc.collect()
  off, on = (sorted(times[k])[len(times[k]) // 2] for k in (False, True))
  added = on / off - 1.0
  print(f"on-device augmentation: step {on * 1e3:.1f} ms with it, "
        f"{off * 1e3:.1f} ms without (same batch of "
        f"{config.train.global_batch}, {config.data.image_size} px): adds "
        f"{added * 100:.1f}% to the step")
  return added


def _with_input_path(config, name: str):
  if name in ("config", OFFICIAL):
    return config
  if name not in INPUT_PATHS:
    raise ValueError(f"--input_paths entry {name!r} is invalid: allowed "
                     f"config, {', '.join(INPUT_PATHS)}, {OFFICIAL}.")
  c = config.copy_and_resolve_references()
  c.data.fast_jpeg, c.aug.on_device, c.data.fast_jpeg_dct = INPUT_PATHS[name]
  return c


def print_input_paths(config, names, repeats: int, num_batches: int,
                      official_code: Optional[str] = None):
  """Times each host input path, round-robin, and prints medians and ratios.

  The paths take turns (reference, fast, ..., reference, fast, ...) so that
  a slow spell of a shared host costs every path alike, and each timing
  starts a fresh iterator after the previous one is released.

  Args:
    config: the full config.
    names: `--input_paths` entries.
    repeats: timings per path.
    num_batches: batches per timing.
    official_code: a checkout of the official code, for `official`.

  Returns:
    {name: median images/s}.
  """
  configs = {name: _with_input_path(config, name) for name in names}
  official = None
  if OFFICIAL in names:
    if official_code:
      from simclr_jax.tools import official_pipeline  # pylint: disable=g-import-not-at-top
      official = official_pipeline.load_data_util(official_code)
    else:
      print(f"input pipeline [{OFFICIAL}]: skipped, no --official_code "
            "(a checkout of google-research/simclr); no ratio to it")
      names = [n for n in names if n != OFFICIAL]
  runs = {name: [] for name in names}
  for _ in range(max(1, repeats)):
    for name in names:
      runs[name].append(time_input(configs[name], num_batches,
                                   official if name == OFFICIAL else None))
      gc.collect()  # drop the timed iterator's threads and buffers
  medians = {name: sorted(r)[len(r) // 2] for name, r in runs.items()}
  for name in names:
    ips = medians[name]
    ratio = (f", {ips / medians['reference']:.2f} x the reference path"
             if "reference" in medians and name != "reference" else "")
    if OFFICIAL in medians and name != OFFICIAL:
      ratio += f", {ips / medians[OFFICIAL]:.2f} x the official code"
    print(f"input pipeline [{name}]: {ips:.1f} images/s "
          f"({ips * config.aug.num_views:.1f} views/s){ratio}, median of "
          f"{len(runs[name])}: {', '.join(f'{r:.1f}' for r in runs[name])}")
  return medians


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  tmp = None
  if FLAGS.sample_jpegs:
    tmp = tempfile.TemporaryDirectory()
    config.data.source = "folder"
    config.data.data_dir = write_sample_jpeg_folder(
        tmp.name, FLAGS.sample_copies, FLAGS.sample_scale)
    config.data.train_split, config.data.eval_split = "train", "test"
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"host CPUs: {os.cpu_count()}")
  print(f"config: source={config.data.source} image_size="
        f"{config.data.image_size} views={config.aug.num_views} "
        f"blur={config.aug.blur} depth={config.model.depth} "
        f"width={config.model.width} global_batch={config.train.global_batch}")
  if not FLAGS.skip_input:
    print_input_paths(config, FLAGS.input_paths, FLAGS.repeats,
                      FLAGS.input_batches, FLAGS.official_code)
  if not FLAGS.skip_train:
    ips, compile_s, step_fn, state, batch = time_train_step(
        config, FLAGS.steps, FLAGS.warmup_steps)
    print(f"train step: {ips:.1f} images/s "
          f"(compile + first step {compile_s:.1f} s)")
    if FLAGS.steps_in_flight:
      print_in_flight(step_fn, state, batch, FLAGS.steps,
                      [int(b) for b in FLAGS.steps_in_flight], FLAGS.repeats,
                      config.train.global_batch)
    if FLAGS.flops:
      from simclr_jax.tools import perf_report  # pylint: disable=g-import-not-at-top
      perf_report.print_flops(config, step_fn, state, batch, ips,
                              FLAGS.steps)
  if FLAGS.host_profile:
    from simclr_jax.data import folders  # pylint: disable=g-import-not-at-top
    from simclr_jax.tools import host_profile  # pylint: disable=g-import-not-at-top
    if config.data.source != "folder":
      raise app.UsageError("--host_profile reads image files: use "
                           "--sample_jpegs or a folder source")
    files, _ = folders.split_files(config.data, config.data.train_split)
    for path in ("reference", "fast"):
      host_profile.print_profile(host_profile.profile(
          files, int(config.data.image_size), config.aug,
          config.train.global_batch, FLAGS.profile_images, path), path)
  if FLAGS.device_aug_cost:
    print_device_aug_cost(config, FLAGS.steps, FLAGS.warmup_steps,
                          FLAGS.repeats)
  if FLAGS.memory:
    from simclr_jax.tools import perf_report  # pylint: disable=g-import-not-at-top
    perf_report.print_loss_memory(config,
                                  [int(b) for b in FLAGS.memory_batches])
    perf_report.print_step_memory(config, [int(c) for c in FLAGS.grad_chunks])
  if tmp is not None:
    tmp.cleanup()


def cli() -> None:
  """The command line: python -m simclr_jax.benchmark."""
  logs.run_app(main)
