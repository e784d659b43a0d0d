"""The ``photos`` dataset: crops of the photographs shipped by scikit-image and scikit-learn.

Disjointness of the splits is tested on pixels, not only on the crop
geometry: a photograph whose held-out band (computed here from the documented
rule) is white and the rest black must give black training crops and white
held-out crops.
"""

import importlib.util
import pickle

import numpy as np
import pytest

from experiments.configs import photos as photos_config
from experiments.configs import photos64 as photos64_config
from vaegan_jax import data
from vaegan_jax.data import photos

pytest.importorskip("skimage")  # the test extra installs it; a user without it sees one line


def _config(**kw):
  c = photos_config.get_config().data
  with c.unlocked():
    c.update(kw)
  return c


def test_splits_labels_shapes_and_the_photographs():
  info = data.validate(_config())
  assert info == data.DatasetInfo("photos", 32, 3, 32_768, (), 16)
  assert len(data.get_source(_config(), "test")) == 2_048
  assert len(data.get_source(_config(), "all")) == 32_768 + 2_048
  assert len(set(photos.PHOTO_NAMES)) == 16
  for bad in ("chessboard", "color", "logo", "phantom", "text", "page", "horse", "clock"):
    assert not any(bad in name for name in photos.PHOTO_NAMES)
  for i in range(photos.NUM_PHOTOS):
    rgb = photos.load_photo(i, 3)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert min(rgb.shape[:2]) >= 300
    if not photos.PHOTOGRAPHS[i][3]:  # greyscale served as RGB: R = G = B
      assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
  batch = data.get_source(_config(), "train").get(np.arange(64))
  assert batch["image"].shape == (64, 32, 32, 3) and batch["image"].dtype == np.uint8
  np.testing.assert_array_equal(batch["label"], np.arange(64) % 16)  # balanced classes
  assert batch["image"].std() > 20  # real content, not flat crops
  grey = data.get_source(_config(channels=1), "test").get(np.arange(4))["image"]
  assert grey.shape == (4, 32, 32, 1)


def test_crops_are_a_pure_function_of_seed_and_index():
  a = data.get_source(_config(), "train")
  b = data.get_source(_config(), "train")
  idx = np.array([5, 17, 30_000, 5])
  np.testing.assert_array_equal(a.get(idx)["image"], b.get(idx[::-1])["image"][::-1])
  np.testing.assert_array_equal(a.get(idx)["image"][0], a.get(idx)["image"][3])
  other = data.get_source(_config(crop_seed=1), "train")
  assert not np.array_equal(a.get(idx)["image"], other.get(idx)["image"])
  # The reader pickles small and reads the same crops in a worker process.
  blob = pickle.dumps(a)
  assert len(blob) < 2_000
  np.testing.assert_array_equal(pickle.loads(blob).get(idx)["image"], a.get(idx)["image"])
  # 'all' is train, then test.
  everything = data.get_source(_config(), "all")
  test = data.get_source(_config(), "test")
  np.testing.assert_array_equal(everything.get(np.array([32_768 + 7]))["image"],
                                test.get(np.array([7]))["image"])
  # Through the pipeline: resume and two processes see what one process sees.
  full = data.batch_iterator(_config(), "train", 32, seed=2)
  batches = [next(full) for _ in range(3)]
  resumed = next(data.batch_iterator(_config(), "train", 32, seed=2, start_step=2))
  np.testing.assert_array_equal(resumed["image"], batches[2]["image"])
  halves = [next(data.batch_iterator(_config(), "train", 32, seed=2, process_index=p,
                                     process_count=2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]),
                                batches[0]["image"])


def _band(shape):
  """The held-out band as documented: the last quarter of the longer side."""
  h, w = shape
  mask = np.zeros((h, w), bool)
  if w >= h:
    mask[:, w - int(round(0.25 * w)):] = True
  else:
    mask[h - int(round(0.25 * h)):, :] = True
  return mask


def test_held_out_crops_share_no_pixel_with_training_crops(monkeypatch):
  real_shapes = [photos.load_photo(i, 3).shape[:2] for i in range(photos.NUM_PHOTOS)]
  bands = [_band(shape) for shape in real_shapes]
  white_bands = [np.repeat((b * 255).astype(np.uint8)[..., None], 3, axis=2) for b in bands]

  def planted(index, channels):
    assert channels == 3
    return white_bands[index]

  monkeypatch.setattr(photos, "load_photo", planted)
  for split, want in (("train", 0), ("test", 255)):
    source = photos.PhotosSource(split, 32, 3)
    n = len(source)
    idx = np.random.default_rng(0).choice(n, min(n, 2_048), replace=False)
    images = source.get(idx)["image"]
    assert (images == want).all(), split  # a single pixel of the other split would show
  # Geometry of every crop: inside its split's region, and at least 64 px (never enlarged at 64).
  for split in ("train", "test"):
    for i in range(photos.SPLIT_SIZES[split]):
      crop = photos.crop_of(0, split, i, tuple(real_shapes))
      inside = bands[crop.photo][crop.top:crop.top + crop.size, crop.left:crop.left + crop.size]
      assert inside.shape == (crop.size, crop.size)
      assert (inside.all() if split == "test" else not inside.any()), (split, i)
      assert crop.size >= 64


def test_configs_and_label_attributes():
  c64 = photos64_config.get_config()
  assert (c64.data.name, c64.data.image_size, c64.model.image_size) == ("photos", 64, 64)
  assert c64.model.enc_widths == (64, 128, 256)  # the paper's networks
  assert data.validate(c64.data).num_classes == 16
  source = data.get_source(_config(label_attributes=True), "test")
  out = source.get(np.arange(20))
  np.testing.assert_array_equal(out["attributes"], np.eye(16)[np.arange(20) % 16])
  assert len(source.info.attribute_names) == 16


def test_without_scikit_image_one_line_names_the_install(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "skimage" else find_spec(name, *a))
  with pytest.raises(data.DataError) as e:
    data.validate(_config())
  assert "pip install -e '.[photos]'" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(data.DataError, match="crop_seed"):
    monkeypatch.undo()
    data.validate(_config(crop_seed=-1))
