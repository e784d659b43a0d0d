"""Tests for vaegan_jax.data: the readers and the grain pipeline (no downloads, no TensorFlow).

CelebA and folder data are fake files written in the official on-disk formats
into tmp_path; mnist/cifar10 use ``tfds.testing.mock_data`` (which works with
``tfds.data_source`` without TensorFlow).
"""

import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import grain

from vaegan_jax import data as ip
from vaegan_jax.data import testing as data_testing


def _config(**overrides):
  cfg = dict(name="digits", image_size=32, channels=1, data_dir=None,
             manual_dir=None, folder=None, hflip=False, train_split="train",
             eval_split="test", num_examples=0)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------
# digits


def test_digits_shapes_range_and_splits():
  cfg = _config()
  info = ip.validate(cfg)
  assert info == ip.DatasetInfo("digits", 32, 1, 1433, (), 10)
  batch = next(ip.batch_iterator(cfg, "train", 16, seed=0))
  assert batch["image"].shape == (16, 32, 32, 1)
  assert batch["image"].dtype == np.float32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  # Digit strokes reach (nearly) full intensity, background is -1.
  assert batch["image"].max() > 0.9 and batch["image"].min() == -1.0
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  test = ip.get_source(cfg, "test")
  assert len(test) == 364
  train = ip.get_source(cfg, "train")
  everything = ip.get_source(cfg, "all")
  assert len(everything) == 1797 and len(train) == 1433
  # 'test' is every 5th image of each class, held out: 'train' is the rest.
  labels = everything.get(np.arange(1797))["label"]
  want = np.sort(np.concatenate([np.flatnonzero(labels == c)[::5] for c in range(10)]))
  np.testing.assert_array_equal(test.get(np.arange(len(test)))["image"],
                                everything.get(want)["image"])
  assert np.bincount(test.get(np.arange(len(test)))["label"]).min() >= 35
  rest = np.setdiff1d(np.arange(1797), want)
  np.testing.assert_array_equal(train.get(np.arange(len(train)))["image"],
                                everything.get(rest)["image"])
  train_set = {train.get(np.array([i]))["image"].tobytes() for i in range(len(train))}
  assert not any(test.get(np.array([i]))["image"].tobytes() in train_set
                 for i in range(len(test)))
  raw = train.get(np.arange(4))
  assert raw["image"].dtype == np.uint8 and raw["image"].shape == (4, 32, 32, 1)
  assert len(ip.get_source(_config(num_examples=100), "train")) == 100
  assert next(ip.batch_iterator(_config(image_size=64), "test", 4, seed=0))[
      "image"].shape == (4, 64, 64, 1)


def test_determinism_from_seed_and_step():
  cfg = _config(hflip=True)
  a = _take(ip.batch_iterator(cfg, "train", 32, seed=3), 4)
  b = _take(ip.batch_iterator(cfg, "train", 32, seed=3, num_workers=1,
                              prefetch=1), 4)
  _assert_batches_equal(a, b)
  c = next(ip.batch_iterator(cfg, "train", 32, seed=4))
  assert not np.array_equal(a[0]["label"], c["label"])
  # The batch contents are exactly the planned indices and flips.
  source = ip.get_source(cfg, "train")
  plan = ip.batch_plan(1433, 32, 3, hflip=True)
  flips = []
  for step in range(4):
    idx = ip.global_batch_indices(1433, 32, 3, step)
    np.testing.assert_array_equal(idx, plan[step]["index"])
    flips.append(plan[step]["flip"])
    want = ip.preprocess(source.get(idx), cfg, flip=plan[step]["flip"])
    _assert_batches_equal([a[step]], [want])
  assert 0.35 < np.mean(flips) < 0.65  # about half the images are mirrored
  assert not np.array_equal(flips[0], flips[1])
  # Epoch 0 is default_rng([seed, 0]).permutation(N).
  np.testing.assert_array_equal(ip.global_batch_indices(1797, 32, 3, 0),
                                _grain_epoch(1797, 3, 0)[:32])


def _grain_epoch(n, seed, epoch):
  """Epoch ``epoch`` of the documented order: default_rng([seed, epoch]).permutation(n)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def test_resume_equals_skipping():
  cfg = _config(hflip=True)
  full = _take(ip.batch_iterator(cfg, "train", 64, seed=1), 60)
  # 1433 // 64 = 22 batches per epoch: resume inside epoch 0 and in epoch 2.
  for k in (5, 50):
    resumed = _take(ip.batch_iterator(cfg, "train", 64, seed=1, start_step=k),
                    3)
    _assert_batches_equal(full[k:k + 3], resumed)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_process_sharding_matches_single_process(drop_remainder):
  cfg = _config(hflip=True)
  kw = dict(seed=7, start_step=27, drop_remainder=drop_remainder)
  single = _take(ip.batch_iterator(cfg, "train", 64, **kw), 3)
  for count in (2, 4):
    parts = [_take(ip.batch_iterator(cfg, "train", 64, process_index=p,
                                     process_count=count, **kw), 3)
             for p in range(count)]
    for s in range(3):
      assert parts[0][s]["image"].shape == (64 // count, 32, 32, 1)
      merged = {k: np.concatenate([part[s][k] for part in parts])
                for k in single[s]}
      _assert_batches_equal([single[s]], [merged])


def test_epoch_boundary_straddle_and_drop_remainder():
  n, b = 10, 4
  # Continuous stream: 5 batches = exactly 2 epochs; batch 2 straddles.
  stream = np.concatenate([
      ip.global_batch_indices(n, b, 0, s, drop_remainder=False)
      for s in range(5)])
  epochs = [_grain_epoch(n, 0, e) for e in range(3)]
  for perm in epochs:  # every epoch is a permutation, reshuffled each epoch
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(stream[:10], epochs[0])
  np.testing.assert_array_equal(stream[10:], epochs[1])
  # B > N spans several epochs.
  big = ip.global_batch_indices(n, 25, 0, 1, drop_remainder=False)
  np.testing.assert_array_equal(big[:5], epochs[2][5:])
  # Drop mode: 2 batches per epoch, the last 2 examples of each epoch dropped.
  for epoch in range(3):
    perm = epochs[epoch]
    got = np.concatenate([ip.global_batch_indices(n, b, 0, 2 * epoch + s)
                          for s in range(2)])
    np.testing.assert_array_equal(got, perm[:8])
  # No shuffle: sequential.
  np.testing.assert_array_equal(
      ip.global_batch_indices(n, b, 0, 2, shuffle=False,
                              drop_remainder=False), [8, 9, 0, 1])
  # The iterator follows the same order across the straddle.
  cfg = _config(num_examples=n)
  source = ip.get_source(cfg, "train")
  batches = _take(ip.batch_iterator(cfg, "train", b, seed=0,
                                    drop_remainder=False), 5)
  got = np.concatenate([x["label"] for x in batches])
  np.testing.assert_array_equal(got, source.get(stream)["label"])
  with pytest.raises(ValueError, match="drop_remainder=False"):
    ip.batch_iterator(cfg, "train", 16, seed=0)


def test_batch_iterator_argument_errors():
  cfg = _config()
  with pytest.raises(ValueError, match="not divisible by process_count 4"):
    ip.batch_iterator(cfg, "train", 30, seed=0, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    ip.batch_iterator(cfg, "train", 32, seed=0, process_index=2,
                      process_count=2)


def test_preprocess_flip_and_scaling():
  cfg = _config(hflip=True, image_size=8)
  images = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1) * 2
  images[0, 0, 1, 0] = 255  # [0, 0, 0, 0] stays 0.
  out = ip.preprocess({"image": images, "label": np.array([1, 2])}, cfg,
                      flip=np.array([True, False]))
  np.testing.assert_array_equal(out["label"], [1, 2])
  want = images.astype(np.float32) / 127.5 - 1
  np.testing.assert_allclose(out["image"][0], want[0, :, ::-1], atol=1e-6)
  np.testing.assert_allclose(out["image"][1], want[1], atol=1e-6)
  assert out["image"][0, 0, -2, 0] == 1.0 and out["image"][0, 0, -1, 0] == -1.0
  # Random flips come from the rng.
  r1 = ip.preprocess({"image": images}, cfg, np.random.default_rng(0))
  r2 = ip.preprocess({"image": images}, cfg, np.random.default_rng(0))
  np.testing.assert_array_equal(r1["image"], r2["image"])
  with pytest.raises(ValueError, match="rng"):
    ip.preprocess({"image": images}, cfg)
  # Resizes when the source gives another size.
  assert ip.preprocess({"image": images}, _config(image_size=16))[
      "image"].shape == (2, 16, 16, 1)


def test_config_errors():
  with pytest.raises(ip.DataError, match="Unknown dataset 'imagenet'"):
    ip.validate(_config(name="imagenet"))
  for size in (0, 1, -8, 4096, "64"):
    with pytest.raises(ip.DataError, match="image_size"):
      ip.validate(_config(image_size=size))
  # Any size can be served; which sizes a network takes is the network's check
  # (models.Architecture.validate, run first by the trainer).
  assert ip.validate(_config(image_size=30)).image_size == 30
  with pytest.raises(ip.DataError, match="data.channels=1"):
    ip.validate(_config(channels=3))
  with pytest.raises(ip.DataError, match="Unknown split 'validation'"):
    ip.validate(_config(eval_split="validation"))
  with pytest.raises(ip.DataError, match="num_examples"):
    ip.get_source(_config(num_examples=-1), "train")
  assert issubclass(ip.DataError, ValueError)


# ----------------------------------------------------------------------------
# CelebA (fake files in the official format)

_ATTRS = list(ip.CELEBA_ATTRIBUTE_NAMES)

# Mean (0..255) of the cropped shifted square: white on 108x133 of 148x148.
_SHIFTED_MEAN = 255 * 108 * 133 / 148**2
_RED, _GREEN, _BLUE, _WHITE = ((255, 0, 0), (0, 255, 0), (0, 0, 255),
                               (255, 255, 255))


def _celeba_images():
  """7 aligned 218x178 images, (H, W, 3) uint8, with planted patterns."""
  h, w = 218, 178
  images = []
  # 0: white exactly on the paper's crop (rows 40:188, cols 15:163).
  im = np.zeros((h, w, 3), np.uint8)
  im[40:188, 15:163] = _WHITE
  images.append(im)
  # 1: the same square shifted to the top-left corner.
  im = np.zeros((h, w, 3), np.uint8)
  im[0:148, 0:148] = _WHITE
  images.append(im)
  # 2: crop's left half green, right half blue, top 20 rows of crop red.
  im = np.zeros((h, w, 3), np.uint8)
  im[40:188, 15:89] = _GREEN
  im[40:188, 89:163] = _BLUE
  im[40:60, 15:163] = _RED
  images.append(im)
  rng = np.random.default_rng(0)
  for _ in range(4):
    images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
  return images


_write_celeba = data_testing.write_celeba


@pytest.fixture(name="celeba")
def fixture_celeba(tmp_path):
  images = _celeba_images()
  # Train: 1, 2, 3, 5, 7 (sorted); validation: 4; test: 6.
  partitions = [0, 0, 0, 1, 0, 2, 0]
  attrs = np.random.default_rng(1).choice([-1, 1], (len(images), 40))
  manual_dir = str(tmp_path / "manual")
  _write_celeba(manual_dir, images, partitions, attrs)
  cfg = _config(name="celeb_a", image_size=64, channels=3,
                manual_dir=manual_dir, eval_split="validation")
  return cfg, images, attrs


def _to_uint(x):
  return (x + 1) * 127.5


def test_celeba_shapes_attributes_splits(celeba):
  cfg, _, attrs = celeba
  info = ip.validate(cfg)
  assert info == ip.DatasetInfo("celeb_a", 64, 3, 5, tuple(_ATTRS))
  assert [len(ip.get_source(cfg, s)) for s in ("train", "validation",
                                               "test")] == [5, 1, 1]
  batch = next(ip.batch_iterator(cfg, "train", 5, seed=0, shuffle=False))
  assert batch["image"].shape == (5, 64, 64, 3)
  assert batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["attributes"].shape == (5, 40)
  assert batch["attributes"].dtype == np.float32
  train_rows = [0, 1, 2, 4, 6]
  np.testing.assert_array_equal(batch["attributes"],
                                (attrs[train_rows] > 0).astype(np.float32))
  val = ip.get_source(cfg, "validation").get(np.array([0]))
  np.testing.assert_array_equal(val["attributes"][0], attrs[3] > 0)
  with pytest.raises(ip.DataError, match="Unknown split 'valid'"):
    ip.get_source(cfg, "valid")


def test_celeba_crop_on_planted_pattern(celeba):
  cfg, _, _ = celeba
  source = ip.get_source(cfg, "train")
  out = _to_uint(ip.preprocess(source.get(np.arange(3)), cfg,
                               flip=np.zeros(3, bool))["image"])
  # Image 0 is white exactly on the crop: the output is (almost) all white.
  assert out[0].mean() > 250 and out[0].min() > 200
  # Shifted pattern: the crop sees white only in its top-left 108x133.
  assert abs(out[1].mean() - _SHIFTED_MEAN) < 8
  assert out[0].mean() - out[1].mean() > 80
  assert out[1][-5:].max() < 20 and out[1][:, -5:].max() < 20
  assert out[1][:30, :30].min() > 200
  # Colours land where planted: red top, green left, blue right.
  np.testing.assert_allclose(out[2][2:6, 10:54].mean((0, 1)), _RED, atol=12)
  np.testing.assert_allclose(out[2][20:60, 2:28].mean((0, 1)), _GREEN, atol=12)
  np.testing.assert_allclose(out[2][20:60, 36:62].mean((0, 1)), _BLUE,
                             atol=12)


def test_celeba_hflip_deterministic(celeba):
  cfg, _, _ = celeba
  cfg.hflip = True
  source = ip.get_source(cfg, "train")
  plain = ip.preprocess(source.get(np.arange(5)), cfg,
                        flip=np.zeros(5, bool))["image"]
  a = _take(ip.batch_iterator(cfg, "train", 4, seed=5, drop_remainder=False),
            4)
  b = _take(ip.batch_iterator(cfg, "train", 4, seed=5, drop_remainder=False,
                              process_index=1, process_count=2, start_step=2),
            2)
  num_flipped = 0
  for step, batch in enumerate(a):
    idx = ip.global_batch_indices(5, 4, 5, step, drop_remainder=False)
    flips = ip.batch_plan(5, 4, 5, drop_remainder=False, hflip=True)[step]["flip"]
    for j, (i, f) in enumerate(zip(idx, flips)):
      want = plain[i, :, ::-1] if f else plain[i]
      np.testing.assert_array_equal(batch["image"][j], want)
      num_flipped += f
    if step >= 2:
      np.testing.assert_array_equal(b[step - 2]["image"], batch["image"][2:])
  assert 0 < num_flipped < 16


def test_celeba_extracted_folder(tmp_path):
  images = _celeba_images()[:2]
  manual_dir = str(tmp_path / "m")
  _write_celeba(manual_dir, images, [0, 2], np.ones((2, 40), int),
                zipped=False)
  cfg = _config(name="celeb_a", image_size=64, channels=3,
                manual_dir=manual_dir)
  out = _to_uint(next(ip.batch_iterator(cfg, "test", 1, seed=0))["image"])
  # The test split is image 2, the shifted square.
  assert abs(out[0].mean() - _SHIFTED_MEAN) < 8


@pytest.mark.parametrize("zipped", [True, False])
def test_celeba_damaged_image_is_one_line_naming_it(tmp_path, zipped):
  """A flipped byte inside the zip (bad CRC / bad deflate stream) or a truncated
  extracted JPEG: one DataError line naming the image and the re-download."""
  import zipfile  # pylint: disable=g-import-not-at-top
  manual_dir = str(tmp_path / "m")
  _write_celeba(manual_dir, _celeba_images()[:2], [0, 0], np.ones((2, 40), int), zipped=zipped)
  if zipped:
    path = os.path.join(manual_dir, "img_align_celeba.zip")
    with zipfile.ZipFile(path) as zf:
      info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("000002.jpg")))
    raw = bytearray(open(path, "rb").read())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
  else:
    path = os.path.join(manual_dir, "img_align_celeba", "000002.jpg")
    good = open(path, "rb").read()
    open(path, "wb").write(good[:len(good) // 3])
  source = ip.get_source(_config(name="celeb_a", image_size=64, channels=3,
                                 manual_dir=manual_dir), "train")
  assert source.get(np.array([0]))["image"].shape == (1, 64, 64, 3)  # the intact image
  with pytest.raises(ip.DataError) as e:
    source.get(np.array([1]))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("Cannot read CelebA image 000002.jpg (")
  assert msg.endswith("re-download img_align_celeba.zip.")


def test_celeba_missing_files(tmp_path):
  manual_dir = str(tmp_path / "empty")
  os.makedirs(manual_dir)
  cfg = _config(name="celeb_a", image_size=64, channels=3,
                manual_dir=manual_dir)
  with pytest.raises(ip.DataError) as e:
    ip.validate(cfg)
  msg = str(e.value)
  assert "\n" not in msg
  for name in ("img_align_celeba.zip", "list_eval_partition.txt",
               "list_attr_celeba.txt", manual_dir):
    assert name in msg
  # Only one file missing: that one is named as missing.
  open(os.path.join(manual_dir, "list_eval_partition.txt"), "w").close()
  open(os.path.join(manual_dir, "list_attr_celeba.txt"), "w").close()
  with pytest.raises(ip.DataError, match="missing: img_align_celeba.zip."):
    ip.get_source(cfg, "train")
  # Default manual dir follows TFDS: <data_dir>/downloads/manual.
  cfg = _config(name="celeb_a", image_size=64, channels=3,
                data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ip.DataError,
                     match=str(tmp_path / "tfds" / "downloads" / "manual")):
    ip.validate(cfg)


def test_celeba_image_missing_from_zip(tmp_path):
  manual_dir = str(tmp_path / "m")
  _write_celeba(manual_dir, _celeba_images()[:1], [0], np.ones((1, 40), int))
  with open(os.path.join(manual_dir, "list_eval_partition.txt"), "a") as f:
    f.write("000002.jpg 0\n")
  with open(os.path.join(manual_dir, "list_attr_celeba.txt"), "a") as f:
    f.write("000002.jpg" + " 1" * 40 + "\n")
  cfg = _config(name="celeb_a", image_size=64, channels=3,
                manual_dir=manual_dir)
  with pytest.raises(ip.DataError, match="000002.jpg"):
    ip.get_source(cfg, "train")


# ----------------------------------------------------------------------------
# folder


def _write_folder(root):
  os.makedirs(os.path.join(root, "sub"))
  # RGB 40 wide x 20 high: only the middle 20 columns (green) survive the crop.
  rgb = np.zeros((20, 40, 3), np.uint8)
  rgb[:, :10] = _RED
  rgb[:, 10:30] = _GREEN
  rgb[:, 30:] = _BLUE
  Image.fromarray(rgb).save(os.path.join(root, "a.png"))
  # Grayscale 30 wide x 50 high: rows 10:40 are white, the rest black.
  gray = np.zeros((50, 30), np.uint8)
  gray[10:40] = 255
  Image.fromarray(gray, "L").save(os.path.join(root, "sub", "b.PNG"))
  Image.fromarray(rgb).save(os.path.join(root, "sub", "c.jpg"), quality=100)
  with open(os.path.join(root, "notes.txt"), "w") as f:
    f.write("not an image")


def test_folder_center_crop(tmp_path):
  root = str(tmp_path / "imgs")
  _write_folder(root)
  cfg = _config(name="folder", folder=root, image_size=16, channels=3)
  assert ip.validate(cfg) == ip.DatasetInfo("folder", 16, 3, 2, ())
  assert len(ip.get_source(cfg, "test")) == 1  # Every 20th file: a.png, held out.
  assert len(ip.get_source(cfg, "train")) == 2
  batch = next(ip.batch_iterator(cfg, "all", 3, seed=0, shuffle=False))
  out = _to_uint(batch["image"])
  assert out.shape == (3, 16, 16, 3) and set(batch) == {"image"}
  np.testing.assert_allclose(out[0], np.broadcast_to(_GREEN, (16, 16, 3)),
                             atol=1)
  np.testing.assert_allclose(out[1], 255, atol=1)  # Gray -> RGB white.
  np.testing.assert_allclose(out[2].mean((0, 1)), _GREEN, atol=8)
  gray = ip.get_source(_config(name="folder", folder=root, image_size=8,
                               channels=1), "all").get(np.arange(2))
  assert gray["image"].shape == (2, 8, 8, 1)
  np.testing.assert_allclose(gray["image"][0], 150, atol=2)  # L of green.
  np.testing.assert_array_equal(gray["image"][1], 255)


def test_folder_errors(tmp_path):
  with pytest.raises(ip.DataError, match="does not exist"):
    ip.validate(_config(name="folder", folder=str(tmp_path / "nope")))
  with pytest.raises(ip.DataError, match="No .png"):
    ip.validate(_config(name="folder", folder=str(tmp_path)))
  with pytest.raises(ip.DataError, match="data.folder is not set"):
    ip.validate(_config(name="folder"))


def test_folder_scales_16_bit_and_float_images_instead_of_clipping(tmp_path):
  """PIL's own convert() clips a 16-bit PNG's values to 255 (a white image)."""
  from vaegan_jax.data import folder  # pylint: disable=g-import-not-at-top
  ramp = np.tile(np.linspace(0, 1, 32), (32, 1))
  Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "a.png")
  Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "b.tif")
  expected = (ramp * 255).round()
  for name in ("a.png", "b.tif"):
    for channels in (1, 3):
      out = folder.load_folder_image(str(tmp_path / name), 32, channels)
      assert out.shape == (32, 32, channels) and out.dtype == np.uint8
      np.testing.assert_allclose(out[..., 0], expected, atol=1, err_msg=name)
  assert folder.list_files(_config(name="folder", folder=str(tmp_path)))[1] == ["a.png", "b.tif"]
  nan = ramp.astype(np.float32)
  nan[3, 4] = np.nan
  Image.fromarray(nan).save(tmp_path / "c.tif")
  with pytest.raises(ip.DataError, match=r"c.tif has NaN or infinite values: remove or fix it"):
    folder.load_folder_image(str(tmp_path / "c.tif"), 32, 3)


def test_folder_decodes_large_jpegs_at_reduced_scale_close_to_a_full_decode(tmp_path):
  from vaegan_jax.data import folder  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import readers  # pylint: disable=g-import-not-at-top
  y, x = np.mgrid[0:768, 0:1024] / 64.0
  photo = np.stack([127 + 120 * np.sin(x), 127 + 120 * np.cos(y), 127 + 60 * np.sin(x + y)], -1)
  Image.fromarray(photo.astype(np.uint8)).save(tmp_path / "p.jpg", quality=95)
  with Image.open(tmp_path / "p.jpg") as im:
    assert im.draft(None, (64, 64))[1][2:] == (128.0, 96.0)  # this JPEG does scale: 1/8
    reduced = readers.from_pil(readers.resize(readers.center_square(im.convert("RGB")), 32))
  with Image.open(tmp_path / "p.jpg") as im:
    full = readers.from_pil(readers.resize(readers.center_square(im.convert("RGB")), 32))
  out = folder.load_folder_image(str(tmp_path / "p.jpg"), 32, 3)
  np.testing.assert_array_equal(out, reduced)  # the reduced decode is the one used
  assert not np.array_equal(out, full)
  diff = np.abs(out.astype(int) - full)
  assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


@pytest.mark.parametrize("content", [b"<html>not an image</html>", "truncated"])
def test_folder_unreadable_file_is_one_line_naming_it(tmp_path, content):
  from vaegan_jax.data import folder  # pylint: disable=g-import-not-at-top
  path = tmp_path / "x.jpg"
  if content == "truncated":
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    content = path.read_bytes()[:len(path.read_bytes()) // 2]
  path.write_bytes(content)
  with pytest.raises(ip.DataError) as e:
    folder.load_folder_image(str(path), 16, 3)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"Cannot read image {path} (")
  assert msg.endswith("remove or fix it.")


def test_folder_content_stamp_tracks_files_and_survives_odd_names_and_dangling_links(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  Image.new("L", (8, 8), 0).save(root / "a.png")
  with open(os.path.join(os.fsencode(str(root)), b"caf\xe9.png"), "wb") as f:  # Latin-1 name
    f.write((root / "a.png").read_bytes())
  os.symlink(root / "gone.png", root / "link.png")  # dangling
  cfg = _config(name="folder", folder=str(root))
  full, names = ip.content_stamp(cfg), ip.content_stamp(cfg, names_only=True)
  assert len(full) == len(names) == 16 and full != names
  Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(root / "a.png")  # rewritten
  assert ip.content_stamp(cfg) != full and ip.content_stamp(cfg, names_only=True) == names
  (root / "b.png").write_bytes((root / "a.png").read_bytes())  # added
  assert ip.content_stamp(cfg, names_only=True) != names
  assert ip.content_stamp(_config(name="digits")) == ""


# ----------------------------------------------------------------------------
# TFDS datasets (mock data: no files, no TF)


@pytest.mark.parametrize("name,channels", [("mnist", 1), ("cifar10", 3)])
def test_tfds_datasets_with_mock_data(name, channels):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = _config(name=name, channels=channels, eval_split="test")
  with tfds.testing.mock_data(num_examples=10):
    info = ip.validate(cfg)
    assert info == ip.DatasetInfo(name, 32, channels, 10, (), 10)
    batches = _take(ip.batch_iterator(cfg, "train", 4, seed=0), 3)
  for batch in batches:
    assert batch["image"].shape == (4, 32, 32, channels)
    assert batch["image"].dtype == np.float32
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32


def test_tfds_conversion_pads_mnist():
  rng = np.random.default_rng(0)
  examples = [{"image": rng.integers(1, 256, (28, 28, 1), dtype=np.uint8),
               "label": np.int64(i)} for i in range(2)]
  out = ip.convert_tfds_examples(examples, "mnist", 32)
  assert out["image"].shape == (2, 32, 32, 1)
  np.testing.assert_array_equal(out["image"][:, 2:30, 2:30],
                                np.stack([e["image"] for e in examples]))
  assert out["image"][:, :2].max() == 0 and out["image"][:, :, 30:].max() == 0
  np.testing.assert_array_equal(out["label"], [0, 1])
  assert ip.convert_tfds_examples(examples, "mnist", 64)["image"].shape == (
      2, 64, 64, 1)


def test_tfds_not_prepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  cfg = _config(name="mnist", data_dir=str(tmp_path))
  with pytest.raises(ip.DataError, match="tfds build mnist") as e:
    ip.validate(cfg)
  assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------
# grain


def test_sources_are_grain_random_access_sources(celeba):
  cfg, _, _ = celeba
  for c in (_config(), cfg):
    source = ip.get_source(c, "train")
    ds = grain.MapDataset.source(source)
    assert len(ds) == len(source)
    for i in (0, len(source) - 1):
      want = source.get(np.array([i]))
      for k, v in want.items():
        np.testing.assert_array_equal(ds[i][k], v[0])


def test_batch_dataset_random_access_equals_iterator():
  cfg = _config(hflip=True)
  it = _take(ip.batch_iterator(cfg, "train", 32, seed=2), 25)
  ds = ip.batch_dataset(cfg, "train", 32, seed=2)
  for k in (0, 3, 24):  # 1433 // 32 = 44 per epoch; 24 is inside epoch 0
    _assert_batches_equal([it[k]], [ds[k]])
  _assert_batches_equal(it[20:22], [ds[20:][0], ds[20:][1]])


def test_worker_processes_give_the_same_batches_as_threads(celeba):
  cfg, _, _ = celeba
  cfg.hflip = True
  kw = dict(seed=4, drop_remainder=False, start_step=3)
  threads = _take(ip.batch_iterator(cfg, "train", 4, **kw), 3)
  it = ip.batch_iterator(cfg, "train", 4, worker_processes=2, **kw)
  processes = _take(it, 3)
  it.close()
  _assert_batches_equal(threads, processes)
  assert type(processes[0]["image"]) is np.ndarray  # copied out of shared memory
  with pytest.raises(ValueError, match="worker_processes"):
    ip.batch_iterator(cfg, "train", 4, seed=0, worker_processes=-1)


def test_worker_processes_need_a_picklable_reader(monkeypatch):
  import threading  # pylint: disable=g-import-not-at-top
  from vaegan_jax.data import sources  # pylint: disable=g-import-not-at-top
  real = sources.get_source

  def unpicklable(cfg, split):
    source = real(cfg, split)
    source.lock = threading.Lock()
    return source

  monkeypatch.setattr(sources, "get_source", unpicklable)
  with pytest.raises(ip.DataError, match="worker_processes=0"):
    ip.batch_iterator(_config(), "train", 32, seed=0, worker_processes=2)
  next(ip.batch_iterator(_config(), "train", 32, seed=0))  # threads need no pickling


def test_old_module_name_is_an_alias():
  from vaegan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  assert input_pipeline is ip
  assert input_pipeline.batch_iterator is ip.batch_iterator
