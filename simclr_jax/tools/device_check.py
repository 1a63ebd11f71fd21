"""The stages of `launch/gpu_check.sh`: environment, train-step rows, table.

  python -m simclr_jax.tools.device_check --config=configs/synthetic.py \
      --out=DIR --stage=env | --stage=bench --per_chip_batch=128 |
      --stage=matmul | --stage=table

(every stage takes --config: the matmul runs in its model's dtype).

Each `bench` run is its own process, so its peak memory is its own; it
times the pretraining step (`tools.benchmark.time_train_step`, a batch made
by the synthetic source on the devices) and writes one JSON row to
`DIR/bench_<per_chip_batch>.json` (`..._aug.json` with `aug.on_device`) as
soon as it has it; a batch size timed both with and without on-device
augmentation gives the table's line of what the augmentation adds. `matmul` measures
the square-matmul rate of one chip in the model's compute dtype. `table`
prints whatever rows exist: a stage that failed or ran out of time leaves
its row out and the others stand.
"""

import glob
import importlib
import json
import os
import platform
import time

from absl import flags

from simclr_jax.tools import benchmark  # defines --config, --steps, ...

FLAGS = flags.FLAGS
flags.DEFINE_enum("stage", None, ["env", "bench", "matmul", "table"],
                  "What to run.")
flags.DEFINE_string("out", None, "Folder of the JSON rows.")
flags.DEFINE_integer("per_chip_batch", 64, "bench: images per chip per step.")
flags.DEFINE_bool("paired", False, "bench: this row times the other "
                  "aug.on_device variant of a table row (set on the command "
                  "line), for the augmentation's share of the step.")
flags.DEFINE_integer("matmul_side", 8192, "matmul: side of the square "
                     "operands.")

# What the target machine must have (import name, wheel to bring), and what
# it may have; TensorFlow, TFDS and clu are reported, never needed.
REQUIRED = (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"),
            ("optax", "optax"), ("orbax.checkpoint", "orbax-checkpoint"),
            ("absl", "absl-py"), ("chex", "chex"), ("etils", "etils"),
            ("numpy", "numpy"), ("ml_collections", "ml-collections"),
            ("yaml", "PyYAML (needed by ml-collections)"))
OPTIONAL = ("tensorboardX", "tensorboard", "pytest", "tensorflow",
            "tensorflow_datasets", "clu")
MIB = 2.0 ** 20


def env_report() -> dict:
  """Versions of the required and optional packages, and the devices.

  Returns:
    {'python', 'packages': {name: version or None}, 'missing': [wheel],
    'devices', 'platform', 'device_kind'}.
  """
  packages, missing = {}, []
  for name, wheel in REQUIRED:
    packages[name] = _version(name)
    if packages[name] is None:
      missing.append(wheel)
  for name in OPTIONAL:
    packages[name] = _version(name)
  report = {"python": platform.python_version(), "packages": packages,
            "missing": missing}
  if packages["jax"] is not None:
    import jax  # pylint: disable=g-import-not-at-top
    report.update(devices=jax.device_count(),
                  platform=jax.devices()[0].platform,
                  device_kind=jax.devices()[0].device_kind)
  return report


def _version(name: str):
  try:
    module = importlib.import_module(name)
  except ImportError:
    return None
  return str(getattr(module, "__version__", "present"))


def bench_row(config, per_chip_batch: int, steps: int, warmup: int) -> dict:
  """Times the pretraining step at `per_chip_batch` images per chip.

  Args:
    config: the full config (configs/synthetic.py or a variant).
    per_chip_batch: images per chip per step.
    steps: timed steps.
    warmup: untimed steps after the compile.

  Returns:
    {'per_chip_batch', 'devices', 'images_per_sec_per_chip',
    'flops_per_sec_per_chip', 'compile_s', 'peak_bytes', 'peak_source', ...}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax.tools import perf_report  # pylint: disable=g-import-not-at-top
  devices = jax.device_count()
  config.train.global_batch = per_chip_batch * devices
  ips, compile_s, step_fn, state, batch = benchmark.time_train_step(
      config, steps, warmup)
  per_chip = ips / devices
  flops = perf_report.compiled_flops(step_fn, state, batch)  # one chip's
  peak, source = _peak_bytes(step_fn, state, batch)
  return {"per_chip_batch": per_chip_batch, "devices": devices,
          "device_kind": jax.devices()[0].device_kind,
          "image_size": int(config.data.image_size),
          "depth": int(config.model.depth), "dtype": config.model.dtype,
          "on_device_aug": bool(config.aug.on_device),
          "images_per_sec_per_chip": per_chip,
          "flops_per_step_per_chip": flops,
          "flops_per_sec_per_chip": flops * per_chip / per_chip_batch,
          "compile_s": compile_s, "peak_bytes": peak, "peak_source": source,
          "steps": steps, "jax": jax.__version__}


def _peak_bytes(step_fn, state, batch):
  """The device's peak bytes in use, or XLA's compiled estimate (CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device"
  mem = step_fn.lower(state, batch).compile().memory_analysis()
  total = sum(int(getattr(mem, f, 0) or 0) for f in (
      "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"))
  return total, "xla"


def matmul_row(side: int, dtype_name: str) -> dict:
  """The square-matmul rate of one chip in `dtype_name`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax.tools import perf_report  # pylint: disable=g-import-not-at-top
  rate = perf_report.matmul_flops_per_sec(jnp.dtype(dtype_name), side)
  return {"matmul_flops_per_sec": rate, "side": side, "dtype": dtype_name,
          "device_kind": jax.devices()[0].device_kind}


def table_lines(out: str) -> list:
  """The table of `out`'s rows: a header and one line per batch size."""
  matmul = _read(os.path.join(out, "matmul.json"))
  rate = matmul["matmul_flops_per_sec"] if matmul else None
  every = [r for r in (_read(p) for p in glob.glob(
      os.path.join(out, "bench_*.json"))) if r]
  # The table's rows are the configured variant; a row of the other variant
  # at the same batch ("paired") gives the augmentation's share.
  rows = sorted((r for r in every if not r.get("paired")),
                key=lambda r: r["per_chip_batch"])
  lines = ["| batch/chip | images/s/chip | TFLOP/s/chip | of matmul rate | "
           "peak memory MiB | compile s |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    frac = f"{r['flops_per_sec_per_chip'] / rate:.1%}" if rate else "n/a"
    mem = f"{r['peak_bytes'] / MIB:.1f}" + (
        "" if r["peak_source"] == "device" else " (XLA est.)")
    lines.append(f"| {r['per_chip_batch']} | "
                 f"{r['images_per_sec_per_chip']:.1f} | "
                 f"{r['flops_per_sec_per_chip'] / 1e12:.3f} | {frac} | {mem} "
                 f"| {r['compile_s']:.1f} |")
  for pair in sorted((r for r in every if r.get("paired")),
                     key=lambda r: r["per_chip_batch"]):
    same = [r for r in rows if r["per_chip_batch"] == pair["per_chip_batch"]]
    if not same or same[0]["on_device_aug"] == pair["on_device_aug"]:
      continue  # nothing to compare with
    with_aug, without = ((same[0], pair) if same[0]["on_device_aug"]
                         else (pair, same[0]))
    added = (without["images_per_sec_per_chip"]
             / with_aug["images_per_sec_per_chip"] - 1.0)
    lines.append(f"on-device augmentation at {pair['per_chip_batch']}/chip: "
                 f"{with_aug['images_per_sec_per_chip']:.1f} images/s/chip "
                 f"with it, {without['images_per_sec_per_chip']:.1f} without"
                 f": adds {added:.1%} to the step")
  if rows:
    r = rows[0]
    aug = "on-device augmentation" if r["on_device_aug"] else "no augmentation"
    lines.append(f"ResNet-{r['depth']}, {r['image_size']} px, {r['dtype']}, "
                 f"synthetic data, {aug}, {r['devices']} x {r['device_kind']}, "
                 f"jax {r['jax']}; matmul rate "
                 + (f"{rate / 1e12:.2f} TFLOP/s ({matmul['dtype']}, side "
                    f"{matmul['side']})" if rate else "not measured"))
  return lines


def _read(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write(out: str, name: str, row: dict) -> None:
  os.makedirs(out, exist_ok=True)
  tmp = os.path.join(out, f".{name}.tmp")
  with open(tmp, "w") as f:
    json.dump(row, f, indent=1)
  os.replace(tmp, os.path.join(out, name))  # a row is whole or absent


def main(argv) -> None:
  """Runs `--stage`."""
  del argv
  t0 = time.time()
  if FLAGS.stage == "env":
    report = env_report()
    print(json.dumps(report, indent=1))
    if FLAGS.out:
      _write(FLAGS.out, "env.json", report)
    if report["missing"]:
      raise SystemExit("missing packages; bring these wheels: "
                       + ", ".join(report["missing"]))
  elif FLAGS.stage == "bench":
    row = bench_row(FLAGS.config, FLAGS.per_chip_batch, FLAGS.steps,
                    FLAGS.warmup_steps)
    row["paired"] = bool(FLAGS.paired)
    suffix = "_paired" if FLAGS.paired else ""
    _write(FLAGS.out, f"bench_{FLAGS.per_chip_batch:05d}{suffix}.json", row)
    print(f"bench {FLAGS.per_chip_batch}/chip "
          f"(aug.on_device={row['on_device_aug']}): "
          f"{row['images_per_sec_per_chip']:.1f} images/s/chip "
          f"({time.time() - t0:.0f} s)")
  elif FLAGS.stage == "matmul":
    # In the model's compute dtype (bfloat16 for the ResNet-50 check).
    row = matmul_row(FLAGS.matmul_side, FLAGS.config.model.dtype)
    _write(FLAGS.out, "matmul.json", row)
    print(f"matmul: {row['matmul_flops_per_sec'] / 1e12:.3f} TFLOP/s")
  else:
    print("\n".join(table_lines(FLAGS.out)))


if __name__ == "__main__":
  from simclr_jax.engine import logs  # pylint: disable=g-import-not-at-top
  logs.run_app(main)
