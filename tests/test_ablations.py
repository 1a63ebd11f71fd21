"""The paper's ablation knobs: projection head none / linear / nonlinear, and
every augmentation op switchable on its own, on the host and on the device."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import default
from configs import digits
from simclr_jax import config as config_lib
from simclr_jax import optim
from simclr_jax.data import augment
from simclr_jax.data import augment_jax
from simclr_jax.engine import state as state_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config

pytestmark = pytest.mark.quick


def _tiny(proj_head):
  config = digits.get_config("tiny")
  config.model.stem = "cifar"
  config.model.proj_head = proj_head
  return config


def _forward(config):
  model = build_model(model_config(config), num_classes=3)
  variables = state_lib.init_variables(model, 16, seed=0)
  x = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(
      np.float32)
  return variables, model.apply(variables, x, train=False)


def test_no_projection_head_gives_z_equal_h():
  variables, out = _forward(_tiny("none"))
  np.testing.assert_array_equal(out["z"], out["h"])
  assert out["proj"] == ()
  assert "head" not in variables["params"]


def test_linear_head_is_one_dense_and_batchnorm_without_offset():
  config = _tiny("linear")
  config.model.head_layers = 3  # ignored: 'linear' is one layer
  variables, out = _forward(config)
  head = variables["params"]["head"]
  assert set(head) == {"dense0", "bn0"}
  assert set(head["bn0"]) == {"scale"}  # official center=False, no ReLU
  assert out["z"].shape == (4, config.model.proj_dim)
  assert len(out["proj"]) == 1
  # No ReLU: a linear head's output takes both signs.
  assert (out["z"] < 0).any() and (out["z"] > 0).any()


@pytest.mark.parametrize("field,value,pattern", [
    ("model.proj_head", "mlp", r"config\.model\.proj_head='mlp' is invalid"),
    ("model.sup_head_from", 1, r"config\.model\.sup_head_from=1 is invalid"),
    ("aug.crop", "yes", r"config\.aug\.crop='yes' is invalid"),
    ("aug.grayscale", 0, r"config\.aug\.grayscale=0 is invalid"),
    ("optim.decay_sup_head", 1, r"config\.optim\.decay_sup_head=1"),
    ("loss.official_scale", "on", r"config\.loss\.official_scale='on'"),
])
def test_bad_switches_fail_in_one_line(field, value, pattern):
  # Not type-safe: a config read back from JSON, or built by hand.
  config = ml_collections.ConfigDict(default.get_config().to_dict(),
                                     type_safe=False)
  config.model.proj_head = "none"  # sup_head_from 1 is then out of range
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=pattern) as err:
    config_lib.validate(config)
  assert "\n" not in str(err.value)


def _image():
  rng = np.random.default_rng(0)
  return tf.constant(rng.uniform(0.1, 0.9, size=(20, 24, 3)), tf.float32)


def _all_on():
  cfg = default.get_config().aug
  cfg.update(flip_prob=1.0, color_prob=1.0, grayscale_prob=1.0, blur=True,
             blur_prob=1.0)
  return cfg


def _centre(image):
  """The central 20 x 20 square of the 20 x 24 test image."""
  return image[:, 2:22]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_host_op_off_is_the_resized_centre_square(seed):
  cfg = _all_on()
  cfg.update(crop=False, flip=False, color_jitter=False, grayscale=False,
             blur=False)
  image = _image()
  view = augment.preprocess_pretrain(image, tf.constant([seed, 3]), 16, cfg)
  want = np.clip(augment.resize(_centre(image), 16).numpy(), 0, 1)
  np.testing.assert_allclose(view.numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("switch", ["flip", "color_jitter", "grayscale",
                                    "blur"])
def test_one_host_op_on_at_probability_one_changes_the_view(switch):
  cfg = _all_on()
  cfg.update(crop=False, flip=False, color_jitter=False, grayscale=False,
             blur=False)
  cfg[switch] = True
  image = _image()
  # 40 px: the blur kernel (10% of the side) is wider than one pixel.
  view = augment.preprocess_pretrain(image, tf.constant([5, 3]), 40, cfg)
  plain = np.clip(augment.resize(_centre(image), 40).numpy(), 0, 1)
  assert np.abs(view.numpy() - plain).max() > 1e-3
  if switch == "flip":
    np.testing.assert_allclose(view.numpy(), plain[:, ::-1], atol=1e-6)
  if switch == "grayscale":
    np.testing.assert_allclose(view.numpy()[..., 0], view.numpy()[..., 2],
                               atol=1e-6)


@pytest.mark.parametrize("shape,begin,size", [
    ((20, 24, 3), (0, 2, 0), (20, 20, -1)),
    ((25, 16, 3), (5, 0, 0), (16, 16, -1)),  # offset rounds up, as at eval
    ((16, 16, 3), (0, 0, 0), (16, 16, -1))])
def test_crop_switch_takes_the_centre_square(shape, begin, size):
  cfg = _all_on()
  cfg.crop = False
  got_begin, got_size = augment.sample_crop_box(tf.constant(shape),
                                                tf.constant([1, 2]), cfg)
  np.testing.assert_array_equal(got_begin.numpy(), begin)
  np.testing.assert_array_equal(got_size.numpy(), size)


@pytest.mark.parametrize("switch,param", [("flip", "flip"),
                                          ("color_jitter", "color"),
                                          ("grayscale", "gray"),
                                          ("blur", "blur")])
def test_device_switch_off_never_applies_its_op(switch, param):
  cfg = _all_on()
  on = jax.device_get(augment_jax.sample_params(jax.random.PRNGKey(0), 64,
                                                cfg))
  cfg[switch] = False
  off = jax.device_get(augment_jax.sample_params(jax.random.PRNGKey(0), 64,
                                                 cfg))
  assert on[param].all() and not off[param].any()
  for other in ("flip", "color", "gray", "blur"):  # the rest do not move
    if other != param:
      np.testing.assert_array_equal(on[other], off[other])
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 3)),
                       jnp.float32)
  cfg.update(flip=False, color_jitter=False, grayscale=False, blur=False)
  np.testing.assert_allclose(
      augment_jax.augment_batch(jax.random.PRNGKey(2), images, cfg), images,
      atol=1e-6)


def test_sup_head_decay_is_added_once():
  params = {"encoder": {"conv": {"kernel": jnp.ones((2, 2))}},
            "sup_head": {"dense": {"kernel": jnp.ones((2, 3)),
                                   "bias": jnp.ones((3,))}}}
  # Pretraining mask: the head is outside it, so decay_sup_head adds it.
  extra = optim.sup_head_mask(params, optim.decay_mask)
  assert extra["sup_head"]["dense"]["kernel"]
  assert not extra["sup_head"]["dense"]["bias"]
  assert not extra["encoder"]["conv"]["kernel"]
  # A mask that already decays the head (linear eval): nothing added.
  head_too = lambda p: optim.decay_mask(p, exclude=())
  assert not any(jax.tree.leaves(optim.sup_head_mask(params, head_too)))
