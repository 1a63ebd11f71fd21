"""The synthetic source: deterministic, resumable, sharded, every example once.

Batches are compared with themselves under other seeds, start steps and
meshes, and with the source's definition (label i mod C; with no noise, the
plain class pattern in every view and eval image).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from simclr_jax import config as config_lib
from simclr_jax import data as data_lib
from simclr_jax import modes
from simclr_jax import parallel
from simclr_jax.data import synthetic


def _cfg(**data):
  config = synthetic_config.get_config("tiny")
  for k, v in data.items():
    config.data[k] = v
  return config


def _take(it, n):
  return [jax.device_get(next(it)) for _ in range(n)]


def _pretrain(config, seed=0, start=0):
  return data_lib.make_pretrain_iterator(config.data, config.aug, 8, seed,
                                         start_step=start)


@pytest.mark.quick
def test_batches_are_global_arrays_split_over_the_devices():
  config = _cfg()
  batch = next(_pretrain(config))
  mesh = parallel.make_mesh()
  assert batch["images"].shape == (8, 2, 16, 16, 3)
  assert batch["images"].sharding.is_equivalent_to(
      parallel.batch_sharding(mesh), 5)
  # host_to_global hands them to the step as they are: no host round trip.
  out = parallel.host_to_global(mesh, batch)
  assert out["images"] is batch["images"] and out["labels"] is batch["labels"]
  images = np.asarray(batch["images"])
  assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1


@pytest.mark.quick
def test_deterministic_for_a_seed_and_resumes_at_a_step_exactly():
  config = _cfg()
  fresh = _take(_pretrain(config, seed=3), 5)
  again = _take(_pretrain(config, seed=3), 5)
  resumed = _take(_pretrain(config, seed=3, start=3), 2)
  for a, b in zip(fresh, again):
    np.testing.assert_array_equal(a["images"], b["images"])
  for a, b in zip(fresh[3:], resumed):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  other = _take(_pretrain(config, seed=4), 1)[0]
  assert not np.array_equal(other["images"], fresh[0]["images"])
  np.testing.assert_array_equal(other["labels"], fresh[0]["labels"])
  # Successive steps draw other examples and other view noise.
  assert not np.array_equal(fresh[0]["images"], fresh[1]["images"])


@pytest.mark.quick
def test_labels_and_order_follow_the_definition():
  config = _cfg()  # 64 train examples, 4 classes, global batch 8
  batches = _take(_pretrain(config), 9)
  ids = [(s * 8 + r) % 64 for s in range(9) for r in range(8)]
  np.testing.assert_array_equal(
      np.concatenate([b["labels"] for b in batches]), np.array(ids) % 4)


@pytest.mark.quick
def test_values_do_not_depend_on_the_device_count():
  config = _cfg()
  one = parallel.make_mesh(jax.devices()[:1])
  a = jax.device_get(next(synthetic.train_batches(config.data, 2, 8, 0, 5,
                                                  mesh=one)))
  b = jax.device_get(next(_pretrain(config, start=5)))
  np.testing.assert_allclose(a["images"], b["images"], atol=1e-6)


@pytest.mark.quick
def test_without_noise_every_view_is_the_class_pattern():
  config = _cfg(synthetic_noise=0.0)
  batch = _take(_pretrain(config), 1)[0]
  images, labels = batch["images"], batch["labels"]
  np.testing.assert_array_equal(images[:, 0], images[:, 1])
  for c in range(4):
    same = images[labels == c, 0]
    assert len(same) == 2
    np.testing.assert_array_equal(same[0], same[1])
  assert not np.allclose(images[labels == 0, 0][0], images[labels == 1, 0][0])
  evals = list(data_lib.make_eval_iterator(config.data, config.aug, "test",
                                           16))
  first = jax.device_get(evals[0])
  # Eval example i is train example i's image (same pattern, no noise).
  np.testing.assert_array_equal(first["images"][:8], images[:, 0])


@pytest.mark.quick
def test_eval_iterator_counts_every_example_once():
  config = _cfg()  # 24 eval examples in global batches of 16: 2 batches
  assert data_lib.num_eval_batches(config.data, "test", 16) == 2
  batches = [jax.device_get(b) for b in data_lib.make_eval_iterator(
      config.data, config.aug, "test", 16)]
  assert len(batches) == 2
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["labels"] for b in batches])
  images = np.concatenate([b["images"] for b in batches])
  assert mask.sum() == 24 and not mask[24:].any()
  np.testing.assert_array_equal(labels[mask], np.arange(24) % 4)
  np.testing.assert_array_equal(images[~mask], 0.0)
  np.testing.assert_array_equal(data_lib.load_labels(config.data, "test"),
                                np.arange(24) % 4)
  info = data_lib.dataset_info(config.data)
  assert info.num_examples == {"train": 64, "test": 24}
  assert info.num_classes == 4 and info.image_shape == (16, 16, 3)
  assert data_lib.shard_sizes(config.data, "test", 2) == [12, 12]


@pytest.mark.quick
def test_supervised_batches_draw_from_the_labelled_subset():
  config = _cfg()
  subset = np.array([1, 5, 9, 13, 2])  # labels 1, 1, 1, 1, 2
  it = data_lib.make_supervised_iterator(config.data, config.aug, 8, 0,
                                         indices=subset)
  batch = jax.device_get(next(it))
  assert batch["images"].shape == (8, 16, 16, 3)
  np.testing.assert_array_equal(batch["labels"],
                                subset[np.arange(8) % 5] % 4)


@pytest.mark.quick
@pytest.mark.parametrize("field,value,needle", [
    ("data.synthetic_num_classes", 1, "an integer >= 2"),
    ("data.synthetic_train_examples", 0, "a positive integer"),
    ("data.synthetic_grid", 32, "must be <= data.image_size=16"),
    ("data.synthetic_noise", -0.1, "must be >= 0"),
    ("eval.evaluators", ("classifier", "pictures"), "leave 'pictures' out"),
])
def test_bad_values_fail_in_one_line(field, value, needle):
  config = _cfg()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError) as e:
    modes.validate(config)  # the shared checks and the mode's
  message = str(e.value)
  assert message.startswith(f"config.{field}=") and needle in message
  assert "\n" not in message


@pytest.mark.quick
def test_unknown_split_is_refused():
  data_cfg = _cfg().data
  with pytest.raises(config_lib.ConfigError, match="two splits"):
    data_lib.load_labels(data_cfg, "validation")


@pytest.mark.quick
def test_command_line_refuses_a_bad_value_with_status_2(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = [repo] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "simclr_jax.main",
       "--config=configs/synthetic.py:tiny", f"--workdir={tmp_path}/run",
       "--config.data.synthetic_noise=-1.0"],
      cwd=repo, env=env, capture_output=True, text=True, timeout=120,
      check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if "synthetic_noise" in l]
  assert errors == ["error: config.data.synthetic_noise=-1.0 is invalid: "
                    "must be >= 0"], proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_eval_views_are_fixed_per_example_and_differ_between_views():
  config = _cfg()

  def images(view, seed=0):
    return np.concatenate([jax.device_get(b["images"]) for b in
                           data_lib.make_eval_iterator(
                               config.data, config.aug, "test", 16,
                               view=view, seed=seed)])[:24]

  v0, v1, plain = images(0), images(1), images(None)
  np.testing.assert_array_equal(v0, images(0))  # same pairs every call
  assert not np.array_equal(v0, v1) and not np.array_equal(v0, images(0, 1))
  # Views are the plain image plus noise: closer to it than to another's.
  assert np.abs(v0 - plain).mean() < np.abs(v0 - plain[::-1]).mean()
