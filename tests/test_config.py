"""Config validation, derived schedule values, the optimizer masks."""

import math

import jax
import numpy as np
import pytest

from configs import cifar10, default, digits, imagenet
from simclr_jax import config as config_lib
from simclr_jax import modes
from simclr_jax import optim
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import pretrain

pytestmark = pytest.mark.quick


@pytest.mark.parametrize("get", [default.get_config, digits.get_config,
                                 lambda: digits.get_config("r18"),
                                 cifar10.get_config, imagenet.get_config])
def test_shipped_configs_validate(get):
  modes.validate(get(), num_devices=8)


@pytest.mark.parametrize("field,value,needle", [
    ("mode", "pretrian", "config.mode='pretrian'"),
    ("data.source", "mnist", "config.data.source='mnist'"),
    ("model.depth", 20, "config.model.depth=20"),
    ("optim.name", "adagrad", "config.optim.name='adagrad'"),
    ("loss.name", "infonce", "config.loss.name='infonce'"),
    ("loss.temperature", 0.0, "config.loss.temperature=0.0"),
    ("data.image_size", 4, "config.data.image_size=4"),
    ("model.width", 0, "config.model.width=0"),
])
def test_bad_fields_are_named(field, value, needle):
  config = digits.get_config()
  section, _, key = field.rpartition(".")
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError) as err:
    modes.validate(config, num_devices=8)
  assert needle in str(err.value)


def test_batch_not_divisible_by_devices():
  config = digits.get_config()
  config.train.global_batch = 12
  with pytest.raises(ValueError, match=r"global_batch=12 .*number of devices \(8\)"):
    modes.validate(config, num_devices=8)


def test_imagenet_stem_needs_32_pixels():
  config = digits.get_config()
  config.model.stem = "imagenet"
  config.data.image_size = 16
  with pytest.raises(ValueError, match="image_size=16.*at least 32"):
    modes.validate(config)


def test_errors_raised_by_run_before_any_compile(tmp_path):
  config = digits.get_config()
  config.train.global_batch = 36  # not divisible by the 8 test devices
  with pytest.raises(ValueError, match="number of devices"):
    pretrain.run(config, str(tmp_path))
  config = digits.get_config()
  config.data.source = "folder"
  config.data.data_dir = str(tmp_path / "does_not_exist")
  with pytest.raises(ValueError, match="data.data_dir"):
    pretrain.run(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_derive_schedule_and_lr_scaling():
  config = digits.get_config()
  config.train.global_batch = 256
  config.train.epochs = 30
  config.optim.warmup_epochs = 5
  config.optim.base_lr = 0.3
  sched = config_lib.derive_schedule(config, num_train_examples=1437)
  assert sched.steps_per_epoch == 1437 // 256
  assert sched.total_steps == 30 * (1437 // 256)
  assert sched.warmup_steps == 5 * (1437 // 256)
  assert sched.peak_lr == pytest.approx(0.3 * 256 / 256)
  config.optim.lr_scaling = "sqrt"
  assert config_lib.derive_schedule(config, 1437).peak_lr == pytest.approx(
      0.3 * math.sqrt(256))
  config.train.steps = 7
  assert config_lib.derive_schedule(config, 1437).total_steps == 7


def test_schedule_warmup_then_cosine_to_zero():
  s = optim.make_schedule(2.0, total_steps=100, warmup_steps=10)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(1.0)
  assert float(s(10)) == pytest.approx(2.0)
  # Cosine over the remaining 90 steps: half-way is half the peak.
  assert float(s(55)) == pytest.approx(1.0, rel=1e-5)
  assert float(s(100)) == pytest.approx(0.0, abs=1e-7)


def test_is_time_single_decision_point():
  hits = [s for s in range(1, 11) if config_lib.is_time(s, 4, 10)]
  assert hits == [4, 8, 10]


def test_lars_masks_exclude_bn_and_biases_include_kernels():
  config = digits.get_config("r18")  # a ResNet-18
  model = build_model(model_config(config), num_classes=10)
  params = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)),
                         train=False))["params"]
  mask = optim.decay_mask(params)
  flat = jax.tree_util.tree_leaves_with_path(mask)
  n_kernel = 0
  for path, included in flat:
    names = [str(getattr(k, "key", k)) for k in path]
    is_bn = any("bn" in n.lower() or "batchnorm" in n.lower() for n in names)
    if names[-1] in ("scale", "bias") or is_bn:
      assert not included, names
    elif names[-1] == "kernel" and "sup_head" not in names:
      assert included, names
      n_kernel += 1
    else:
      assert not included, names
  # ResNet-18: 17 convs + a projection shortcut opening each of the 4 stages
  # (the official code projects in stage 1 too), plus 2 head dense layers.
  assert n_kernel == 17 + 4 + 2
