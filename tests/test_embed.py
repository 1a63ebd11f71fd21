"""Own images end to end: pretrain on a folder, export, embed, neighbours, API.

References: the files the tests wrote (listed with os.walk), and the model's
`encode` applied to images preprocessed by the tf.data evaluation function.
"""

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import simclr_jax
from configs import folder as folder_config
from simclr_jax import config as config_lib
from simclr_jax import data
from simclr_jax.data import imagefiles
from simclr_jax.exports import format as export_lib
from simclr_jax.modes import MODES
from simclr_jax.tools import embed
from simclr_jax.tools import export
from simclr_jax.tools import neighbors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "..", "shared", "fixtures", "official_simclr_tf2")


def _write_tree(root, nested):
  """20 images of odd sizes, PNG and JPEG, one file name with a space."""
  rng = np.random.default_rng(int(nested))
  for i in range(20):
    sub = ("", "x", os.path.join("x", "y z"))[i % 3] if nested else ""
    ext = ("png", "jpg")[i % 2]
    name = f"img {i}.{ext}" if i == 5 else f"img{i}.{ext}"
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    h, w = rng.integers(11, 48, 2)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(
        os.path.join(root, sub, name))


def _walk(root):
  found = []
  for d, _, files in os.walk(root):
    found += [os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
              for f in files]
  return sorted(found)


@pytest.fixture(scope="module", params=[False, True], ids=["flat", "nested"])
def pretrained(request, tmp_path_factory):
  """A 20-image folder pretrained for 4 steps, exported and embedded."""
  root = tmp_path_factory.mktemp("own")
  images = str(root / "images")
  _write_tree(images, request.param)
  config = folder_config.get_config("tiny")
  config.data.data_dir = images
  config.viz.tsne_points = 100
  workdir = str(root / "run")
  results = MODES["pretrain"].run(config, workdir)
  out = str(root / "export")
  export.export_workdir(workdir, out)
  npz = str(root / "emb.npz")
  summary = embed.embed_folder(out, images, npz, batch_size=6,
                               progress=False)
  return {"images": images, "workdir": workdir, "export": out, "npz": npz,
          "results": results, "summary": summary}


def test_folder_pretraining_runs_end_to_end(pretrained):
  results = pretrained["results"]
  # No labels: the label evaluations are off, the held-out signals ran.
  assert "probe" not in results and "knn" not in results
  signals = results["heldout"]
  assert signals["num_examples"] == 2
  # Recomputed in NumPy from the exported model's z of the two held-out
  # views (the resolved config of the run picks the held-out split).
  import ml_collections  # pylint: disable=g-import-not-at-top
  from simclr_jax.evals import encoders  # pylint: disable=g-import-not-at-top
  with open(os.path.join(pretrained["workdir"], "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  model, variables, _ = encoders.load_export_model(pretrained["export"])
  z1, z2 = [np.asarray(model.apply(variables, next(data.make_eval_iterator(
      config.data, config.aug, config.data.eval_split, 2, view=v))["images"],
                                   False)["z"], np.float64) for v in (0, 1)]
  z1 /= np.linalg.norm(z1, axis=1, keepdims=True)
  z2 /= np.linalg.norm(z2, axis=1, keepdims=True)
  alignment = np.mean(np.sum((z1 - z2) ** 2, axis=1))
  uniformity = np.log(np.exp(-2 * np.sum((z1[0] - z1[1]) ** 2)))  # one pair
  every = np.concatenate([z1, z2])
  sim = every @ every.T - 3 * np.eye(4)  # not itself
  top1 = np.mean(np.argmax(sim, 1) == [2, 3, 0, 1])
  assert signals["alignment"] == pytest.approx(alignment, rel=1e-4, abs=1e-6)
  assert signals["uniformity"] == pytest.approx(uniformity, rel=1e-4,
                                                abs=1e-6)
  assert signals["contrastive_top1"] == top1
  pictures = os.path.join(pretrained["workdir"], "pictures")
  assert os.path.isfile(os.path.join(pictures, "embedding_map_step4.png"))
  with open(os.path.join(pretrained["export"], "meta.json")) as f:
    pre = json.load(f)["preprocessing"]
  assert (pre["image_size"], pre["crop_proportion"]) == (16, 1.0)


def test_embed_gives_one_finite_row_per_file(pretrained):
  with np.load(pretrained["npz"]) as f:  # allow_pickle stays False
    emb, paths = f["embeddings"], [str(p) for p in f["paths"]]
    assert str(f["layer"]) == "h" and int(f["image_size"]) == 16
    assert float(f["crop_proportion"]) == 1.0 and len(f["skipped"]) == 0
  assert paths == _walk(pretrained["images"]) and len(paths) == 20
  assert emb.dtype == np.float32 and emb.shape == (20, 16)
  assert np.isfinite(emb).all()
  assert pretrained["summary"]["num_images"] == 20


def test_api_equals_the_command_and_the_model(pretrained):
  encoder = simclr_jax.load_encoder(pretrained["export"])
  assert encoder.image_size == 16 and encoder.layers == ("h", "proj1",
                                                         "proj2", "z")
  with np.load(pretrained["npz"]) as f:
    rows, paths = f["embeddings"], [str(p) for p in f["paths"]]
  decoded = [imagefiles.read_image(os.path.join(pretrained["images"], p))
             for p in paths]
  got = encoder.embed(decoded, batch_size=7)  # a list of different sizes
  rel = np.linalg.norm(got - rows, axis=1) / np.linalg.norm(rows, axis=1)
  assert rel.max() < 1e-5
  # Independent reference: tf.data's evaluation preprocessing + encode.
  from simclr_jax.evals import encoders  # pylint: disable=g-import-not-at-top
  model, variables, _ = encoders.load_export_model(pretrained["export"])
  inputs = np.stack([data.preprocess_eval(
      tf.image.convert_image_dtype(im, tf.float32), 16, 1.0).numpy()
                     for im in decoded])
  want = np.asarray(jax.jit(lambda v, x: model.apply(
      v, x, False, method=model.encode))(variables, inputs))
  rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
  assert rel.max() < 1e-5
  # Floats in [0, 1] give the same rows as uint8; z is the last head layer.
  first = decoded[0].astype(np.float32) / 255
  np.testing.assert_allclose(encoder.embed([first]), got[:1], rtol=1e-5,
                             atol=1e-6)
  z = encoder.embed(decoded[:3], layer="z")
  want_z = jax.jit(lambda v, x: model.apply(v, x, False)["z"])(variables,
                                                               inputs[:3])
  np.testing.assert_allclose(z, want_z, rtol=1e-4, atol=1e-5)


def test_nearest_neighbour_of_an_image_is_itself(pretrained, tmp_path):
  emb = neighbors.load_embeddings(pretrained["npz"])
  out = str(tmp_path / "nb.png")
  rows = neighbors.write_neighbours(emb, "3", 5, out)
  paths = [str(p) for p in emb["paths"]]
  assert rows[0][1] == paths[3] and abs(rows[0][2] - 1.0) < 1e-6
  # The same by relative path, and the cosines against NumPy.
  assert neighbors.write_neighbours(emb, paths[7], 5, out)[0][1] == paths[7]
  e = emb["embeddings"] / np.linalg.norm(emb["embeddings"], axis=1,
                                         keepdims=True)
  want = np.sort(e @ e[7])[::-1][:5]
  np.testing.assert_allclose([c for _, _, c in
                              neighbors.write_neighbours(emb, "7", 5, out)],
                             want, atol=1e-6)
  with Image.open(out) as png:
    assert png.format == "PNG" and png.size[0] > 100
  with open(str(tmp_path / "nb.csv")) as f:
    table = list(csv.DictReader(f))
  assert [r["path"] for r in table][0] == paths[7] and len(table) == 5


def test_unreadable_files_are_named_or_skipped(pretrained, tmp_path):
  images = str(tmp_path / "imgs")
  shutil.copytree(pretrained["images"], images)
  with open(os.path.join(images, "broken.jpg"), "wb") as f:
    f.write(b"not a jpeg at all")
  out = str(tmp_path / "e.npz")
  with pytest.raises(config_lib.ConfigError, match="broken.jpg"):
    embed.embed_folder(pretrained["export"], images, out, progress=False)
  assert not os.path.exists(out)
  summary = embed.embed_folder(pretrained["export"], images, out,
                               skip_unreadable=True, progress=False)
  assert summary["num_images"] == 20 and summary["skipped"] == 1
  with np.load(out) as f:
    assert list(f["skipped"]) == ["broken.jpg"] and len(f["paths"]) == 20
  # An --out that is not an embeddings file of ours is never replaced.
  mine = tmp_path / "x.npz"
  mine.write_text("mine")
  with pytest.raises(config_lib.ConfigError, match="not an embeddings file"):
    embed.embed_folder(pretrained["export"], images, str(mine),
                       progress=False)
  assert mine.read_text() == "mine"


@pytest.mark.skipif(not os.path.isdir(FIXTURES),
                    reason=f"official SimCLR TF2 fixtures not found at {FIXTURES}")
def test_converted_official_checkpoint_embeds_with_its_crop(tmp_path):
  from simclr_jax.tools import convert  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "r18")
  convert.convert_to_export(os.path.join(FIXTURES, "r18_1x_sk0", "ckpt"), out)
  encoder = simclr_jax.load_encoder(out)
  assert (encoder.image_size, encoder.crop_proportion) == (224, 0.875)
  image = np.random.default_rng(0).integers(0, 256, (260, 300, 3), np.uint8)
  got = encoder.embed(image[None])
  from simclr_jax.evals import encoders  # pylint: disable=g-import-not-at-top
  model, variables, _ = encoders.load_export_model(out)
  x = data.preprocess_eval(tf.image.convert_image_dtype(image, tf.float32),
                           224, 0.875).numpy()[None]
  want = model.apply(variables, x, False, method=model.encode)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # An export written before the crop was recorded gets the official rule.
  meta_path = os.path.join(out, "meta.json")
  with open(meta_path) as f:
    meta = json.load(f)
  del meta["preprocessing"]
  assert export_lib.preprocessing(meta)["crop_proportion"] == 0.875


def test_evaluate_takes_image_size_and_crop_from_the_export(pretrained):
  from configs import digits_linear  # pylint: disable=g-import-not-at-top
  from simclr_jax.tools import evaluate  # pylint: disable=g-import-not-at-top
  meta_path = os.path.join(pretrained["export"], "meta.json")
  with open(meta_path) as f:
    recorded = json.load(f)["preprocessing"]
  config = digits_linear.get_config()
  config.data.image_size, config.aug.eval_crop_proportion = 40, 0.5
  evaluate._take_preprocessing_from_export(  # pylint: disable=protected-access
      config, pretrained["export"], ["evaluate"])
  assert config.data.image_size == recorded["image_size"] == 16
  assert config.aug.eval_crop_proportion == recorded["crop_proportion"]
  # A value given on the command line wins.
  config.data.image_size = 40
  evaluate._take_preprocessing_from_export(  # pylint: disable=protected-access
      config, pretrained["export"], ["evaluate", "--config.data.image_size=40"])
  assert config.data.image_size == 40


# ------------------------------------------------- output files of ours ---


def _embeddings(rows=3):
  return {"embeddings": np.ones((rows, 4), np.float32),
          "paths": np.array([f"{i}.png" for i in range(rows)]),
          "skipped": np.array([], np.str_), "layer": np.str_("h"),
          "image_size": np.int64(16), "crop_proportion": np.float64(1.0),
          "export": np.str_("e"), "images_root": np.str_("r")}


def _empty(path, good):
  open(path, "wb").close()


def _npy_renamed(path, good):
  with open(path, "wb") as f:
    np.save(f, np.ones(3))


def _truncated(path, good):
  with open(good, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _damaged(path, good):
  with open(good, "rb") as f:
    data = bytearray(f.read())
  data[len(data) // 3] ^= 0xFF  # inside a member: its CRC fails
  with open(path, "wb") as f:
    f.write(bytes(data))


def _other_npz(path, good):
  with open(path, "wb") as f:
    np.savez(f, x=np.ones(2))


def _rows_and_paths_differ(path, good):
  with open(path, "wb") as f:
    np.savez(f, format=np.str_(embed.EMBEDDINGS_FORMAT),
             **(_embeddings() | {"paths": np.array(["a"])}))


@pytest.mark.parametrize("make,why", [
    (_empty, "an empty file"),
    (_npy_renamed, "a .npy array, not an .npz archive"),
    (_truncated, "not an .npz archive, or a truncated one"),
    (_damaged, "damaged"),
    (_other_npz, "without the simclr_jax format marker"),
    (_rows_and_paths_differ, "do not match paths")])
def test_embed_refuses_an_out_that_is_not_a_complete_file_of_ours(
    tmp_path, make, why):
  good = str(tmp_path / "good.npz")
  embed.save_embeddings(good, _embeddings())
  out = str(tmp_path / "out.npz")
  make(out, good)
  with open(out, "rb") as f:
    before = f.read()
  # Refused first of all: the export and images are never looked at.
  with pytest.raises(config_lib.ConfigError) as err:
    embed.embed_folder(str(tmp_path / "no_export"), str(tmp_path / "none"),
                       out, progress=False)
  message = str(err.value)
  assert "\n" not in message and why in message
  assert message.startswith(f"--out={out!r} is invalid: it exists and is "
                            "not an embeddings file written by simclr_jax (")
  with open(out, "rb") as f:
    assert f.read() == before
  # Nor is it replaced if it appears while the images are embedded.
  os.remove(out)
  embed.save_embeddings(out, _embeddings())
  make(out, good)
  with pytest.raises(config_lib.ConfigError, match="not an embeddings file"):
    embed.save_embeddings(out, _embeddings(5))
  with open(out, "rb") as f:
    assert f.read() == before
  assert sorted(os.listdir(tmp_path)) == ["good.npz", "out.npz"]


@pytest.mark.quick
def test_a_complete_embeddings_file_of_ours_is_replaced(tmp_path):
  out = str(tmp_path / "e.npz")
  embed.save_embeddings(out, _embeddings(3))
  embed.check_out_file(out)  # accepted
  embed.save_embeddings(out, _embeddings(5))
  with np.load(out) as f:
    assert f["embeddings"].shape == (5, 4)
  assert os.listdir(tmp_path) == ["e.npz"]  # no temporary file left


def test_neighbours_replace_only_their_own_picture_and_table(pretrained,
                                                             tmp_path):
  emb = neighbors.load_embeddings(pretrained["npz"])
  out, table = tmp_path / "nb.png", tmp_path / "nb.csv"
  Image.new("RGB", (4, 4)).save(out)  # a user's picture
  with pytest.raises(config_lib.ConfigError, match="not a neighbours "
                     "picture written by simclr_jax .a PNG without"):
    neighbors.write_neighbours(emb, "0", 3, str(out))
  out.unlink()
  table.write_text("name,score\nx,1\n")  # a user's table beside it
  with pytest.raises(config_lib.ConfigError, match="not a neighbours table"):
    neighbors.write_neighbours(emb, "0", 3, str(out))
  assert table.read_text() == "name,score\nx,1\n" and not out.exists()
  table.unlink()
  neighbors.write_neighbours(emb, "0", 3, str(out))
  neighbors.write_neighbours(emb, "1", 3, str(out))  # ours: replaced
  assert sorted(os.listdir(tmp_path)) == ["nb.csv", "nb.png"]
  with open(table) as f:
    assert list(csv.DictReader(f))[0]["path"] == str(emb["paths"][1])
