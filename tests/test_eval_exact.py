"""Exact evaluation on 8 devices, label fractions, and evaluation-config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eval_helpers
from configs import digits_finetune
from configs import digits_linear
from simclr_jax import data as data_lib
from simclr_jax import modes
from simclr_jax import parallel
from simclr_jax.evals import classifier
from simclr_jax.evals import features

pytestmark = pytest.mark.quick


def _logits_fn(variables, images):
  return images.reshape((images.shape[0], -1)) @ variables["w"]


def test_exact_eval_counts_every_example_once_on_8_devices():
  config = eval_helpers.tiny_config()
  assert jax.device_count() == 8
  batch = 64  # 360 test digits = 5 full batches + 40: the last one is padded
  rng = np.random.default_rng(0)
  w = rng.normal(size=(16 * 16 * 3, 10)).astype(np.float32)
  mesh = parallel.make_mesh()
  step = classifier.make_classifier_eval_step(_logits_fn, mesh)
  got = classifier.run_classifier_eval(
      step, parallel.replicate(mesh, {"w": w}),
      data_lib.make_eval_iterator(config.data, config.aug, "test", batch),
      mesh)
  # Reference: one unpadded batch, float64 NumPy on the same logits.
  full = next(data_lib.make_eval_iterator(config.data, config.aug, "test",
                                          360))
  logits = full["images"].reshape(360, -1).astype(np.float64) @ w
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert got["num_examples"] == 360
  assert got["top1"] == pytest.approx(
      np.mean(np.argmax(logits, 1) == full["labels"]), abs=1e-12)
  assert got["top5"] == pytest.approx(
      np.mean(np.any(top5 == full["labels"][:, None], 1)), abs=1e-12)


def test_global_row_ids_put_padded_rows_back_in_order():
  config = eval_helpers.tiny_config()
  ids = features.global_row_ids(config.data, "test", 64)
  assert len(ids) == 6 * 64 and np.sum(ids < 0) == 6 * 64 - 360
  np.testing.assert_array_equal(ids[ids >= 0], np.arange(360))
  mesh = parallel.make_mesh()
  x, y = features.extract(lambda v, im: jnp.mean(im, (1, 2)), {}, config,
                          "test", mesh)
  full = next(data_lib.make_eval_iterator(config.data, config.aug, "test",
                                          360))
  np.testing.assert_allclose(x, full["images"].mean((1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(y, full["labels"])


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_label_fraction_is_class_balanced_and_seeded(fraction):
  config = eval_helpers.tiny_config()
  labels = data_lib.load_labels(config.data, "train")
  config.eval.label_fraction = fraction
  a = features.labelled_indices(config, labels)
  b = features.labelled_indices(config, labels)
  np.testing.assert_array_equal(a, b)
  counts = np.bincount(labels, minlength=10)
  want = [max(1, round(fraction * c)) for c in counts]
  np.testing.assert_array_equal(np.bincount(labels[a], minlength=10), want)
  assert len(np.unique(a)) == len(a)
  config.eval.label_seed = 1
  assert not np.array_equal(features.labelled_indices(config, labels), a)
  config.eval.label_fraction = 1.0
  np.testing.assert_array_equal(features.labelled_indices(config, labels),
                                np.arange(len(labels)))


@pytest.mark.parametrize("field,value,match", [
    ("eval.label_fraction", 0.0, "eval.label_fraction=0.0"),
    ("eval.label_fraction", 1.5, "eval.label_fraction=1.5"),
    ("eval.evaluators", ("classifier", "svm"), "eval.evaluators"),
    ("eval.knn_k", 0, "eval.knn_k=0"),
])
def test_bad_eval_fields_are_rejected(field, value, match):
  config = digits_linear.get_config()
  config.init.export = "some/export"
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    modes.validate(config)


def test_linear_eval_and_finetune_need_exactly_one_encoder():
  for config in (digits_linear.get_config(), digits_finetune.get_config()):
    with pytest.raises(ValueError, match="needs exactly one encoder"):
      modes.validate(config)
    config.init.export = "a"
    modes.validate(config)
    config.init.checkpoint_dir = "b"
    with pytest.raises(ValueError, match="needs exactly one encoder"):
      modes.validate(config)
  modes.validate(digits_linear.get_config("random"))
  modes.validate(digits_linear.get_config("pixels"))
  config = digits_linear.get_config("pixels")
  config.eval.evaluators = ("classifier", "knn")
  with pytest.raises(ValueError, match="raw-pixel baseline"):
    modes.validate(config)
