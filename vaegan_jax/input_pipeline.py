"""Deterministic, random-access input pipeline (numpy + PIL, no tf.data, no TF).

Datasets (``data_config.name``):
  * ``'digits'``: scikit-learn's ``load_digits()`` (1,797 8x8 images, values
    0..16, shipped inside scikit-learn: nothing is downloaded). Scaled to uint8
    (``round(v * 255 / 16)``), resized to ``image_size`` with PIL BICUBIC,
    1 channel, label = digit. Splits: ``'test'`` = every 5th image *of each
    class* (its 1st, 6th, 11th, ... in file order: 363 images, 35 to 37 per
    class; every 5th image overall would hold 26 to 48 per class, as the file
    cycles through the digits), held out: ``'train'`` is the other 1,433;
    ``'all'`` is all 1,797. Evaluation uses ``'test'`` for
    held-out reconstructions and ``'train'`` as the real reference. The
    resized array is cached in memory per ``image_size``.
  * ``'mnist'``, ``'cifar10'``: prepared TFDS datasets read with
    ``tfds.data_source(..., download=False)`` (ArrayRecord format, no TF
    needed). Nothing is ever downloaded; if the dataset is not prepared a
    ``DataError`` says how to prepare it. MNIST 28x28 is zero-padded by 2
    pixels to 32x32 (as for LeNet: keeps strokes pixel-exact) and resized to
    ``image_size`` if that is not 32; CIFAR-10 is 32x32x3 (resized if needed).
  * ``'celeb_a'``: the official CelebA files, read directly (zipfile + PIL)
    from the manual directory ``data_config.manual_dir`` (default:
    ``<data_dir or ~/tensorflow_datasets>/downloads/manual``, TFDS's manual
    dir): ``img_align_celeba.zip`` (members ``img_align_celeba/000001.jpg``,
    ...; an extracted ``img_align_celeba/`` folder works too),
    ``list_eval_partition.txt`` and ``list_attr_celeba.txt``. TFDS 4.9's
    ``celeb_a`` builder is not used: it downloads from Google Drive and has
    no manual-download mode, so it cannot build offline. The paper's
    preprocessing: crop rows 40:188 and columns 15:163 (148x148) of the
    178x218 aligned image, resize to ``image_size`` (64) with PIL LANCZOS
    (antialiased: PIL widens the kernel by the down-scaling factor), scale to
    [-1, 1], random horizontal flip when ``hflip``. Splits from
    ``list_eval_partition.txt`` (0 ``'train'``, 1 ``'validation'``, 2
    ``'test'``), files sorted by name within a split (as TFDS does).
    ``'attributes'`` are the 40 binary attributes of ``list_attr_celeba.txt``
    in file-column order (-1/1 -> 0/1), ``attribute_names`` from its header.
  * ``'folder'``: every ``.png/.jpg/.jpeg/.bmp/.webp`` file under
    ``data_config.folder`` (recursive, sorted by relative path), EXIF
    orientation applied, converted to RGB or L by ``channels``, center-cropped
    to a square and resized to ``image_size``. Splits: ``'test'`` = every
    20th file (0, 20, 40, ...), held out; ``'train'`` = the other files;
    ``'all'`` = every file.

Resizing (all datasets): PIL LANCZOS when shrinking (antialiased), BICUBIC
when enlarging; done on uint8 in the loading threads.

Order and augmentation are pure functions of ``(seed, step)`` so that resume
and any number of processes reproduce single-process training exactly; see
``global_batch_indices`` and ``batch_iterator``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import io
import os
import posixpath
import sys
import threading
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

DATASETS = ("digits", "mnist", "cifar10", "celeb_a", "folder")

# Channels fixed by the dataset (None: chosen by data_config.channels).
_DATASET_CHANNELS = {"digits": 1, "mnist": 1, "cifar10": 3, "celeb_a": 3,
                     "folder": None}

# The encoder/discriminator halve the resolution three times (64 -> 8).
_SIZE_MULTIPLE = 8
_MAX_IMAGE_SIZE = 1024

_DIGITS_NUM = 1797
_DIGITS_TEST_EVERY = 5
_FOLDER_TEST_EVERY = 20
_FOLDER_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_TFDS_DATASETS = ("mnist", "cifar10")

# The 40 official CelebA attribute names, in list_attr_celeba.txt's column order
# (the pipeline reads the names from the file; this is for users and tests).
CELEBA_ATTRIBUTE_NAMES = tuple(
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs "
    "Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair "
    "Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair "
    "Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings "
    "Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young".split())
CELEBA_IMAGES = "img_align_celeba.zip"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_ATTRIBUTES = "list_attr_celeba.txt"
CELEBA_FILES = (CELEBA_IMAGES, CELEBA_PARTITION, CELEBA_ATTRIBUTES)
_CELEBA_IMAGE_DIR = "img_align_celeba"
# PIL (width, height) of the aligned images.
_CELEBA_RAW_SIZE = (178, 218)
# PIL box (left, upper, right, lower) == rows 40:188, cols 15:163 (148x148).
CELEBA_CROP_BOX = (15, 40, 163, 188)
_CELEBA_SPLITS = {"train": 0, "validation": 1, "test": 2}

# Mixed into the flip RNG seed so flips are independent of the epoch
# permutations, which use default_rng([seed, epoch]).
_FLIP_STREAM = 0x666C6970


class DataError(ValueError):
  """Data are missing or misconfigured; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a split looks like after preprocessing."""
  name: str
  image_size: int  # Output H == W.
  channels: int  # 1 or 3.
  num_examples: int  # Of the split (after the ``num_examples`` cap).
  attribute_names: tuple[str, ...] = ()  # CelebA: the 40 attributes.
  num_classes: int = 0  # Datasets with a 'label' (digits, mnist, cifar10).


# ----------------------------------------------------------------------------
# Config helpers.


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  """``cfg.name``, or ``default`` when absent or None (ConfigDict or object)."""
  try:
    value = getattr(cfg, name)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def _check_common(cfg: Any) -> tuple[str, int, int]:
  """Validates name, image_size and channels; returns them."""
  name = _get(cfg, "name")
  if name not in DATASETS:
    raise DataError(f"Unknown dataset {name!r}: set data.name to one of "
                    f"{', '.join(DATASETS)}.")
  size = _get(cfg, "image_size")
  if (isinstance(size, bool) or not isinstance(size, (int, np.integer))
      or not _SIZE_MULTIPLE <= size <= _MAX_IMAGE_SIZE
      or size % _SIZE_MULTIPLE):
    raise DataError(f"Bad data.image_size={size!r}: use an integer multiple "
                    f"of {_SIZE_MULTIPLE} in [{_SIZE_MULTIPLE}, "
                    f"{_MAX_IMAGE_SIZE}] (the networks halve it 3 times), "
                    "e.g. 32 or 64.")
  channels = _get(cfg, "channels")
  want = _DATASET_CHANNELS[name]
  if channels not in (1, 3):
    raise DataError(f"Bad data.channels={channels!r}: use 1 or 3"
                    + (f" ({name} has {want})." if want else "."))
  if want is not None and channels != want:
    raise DataError(f"Dataset {name!r} has {want} channel(s) but "
                    f"data.channels={channels}: set data.channels={want}.")
  return name, int(size), int(channels)


def _cap(cfg: Any) -> int:
  cap = _get(cfg, "num_examples", 0)
  if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 0:
    raise DataError(f"Bad data.num_examples={cap!r}: use 0 (all) or a "
                    "positive integer.")
  return int(cap)


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
  if split not in allowed:
    raise DataError(f"Unknown split {split!r} for dataset {name!r}: use one "
                    f"of {', '.join(map(repr, allowed))} (data.train_split / "
                    "data.eval_split).")


# ----------------------------------------------------------------------------
# Image helpers (uint8, PIL).


def _resize(image: Image.Image, size: int) -> Image.Image:
  """Resizes to (size, size): LANCZOS (antialiased) down, BICUBIC up."""
  if image.size == (size, size):
    return image
  shrink = image.size[0] > size or image.size[1] > size
  resample = (Image.Resampling.LANCZOS if shrink
              else Image.Resampling.BICUBIC)
  return image.resize((size, size), resample)


def _to_pil(image: np.ndarray) -> Image.Image:
  """(H, W, C) uint8 with C in {1, 3} -> PIL image."""
  if image.shape[-1] == 1:
    return Image.fromarray(image[..., 0], "L")
  return Image.fromarray(image, "RGB")


def _from_pil(image: Image.Image) -> np.ndarray:
  """PIL L/RGB image -> (H, W, C) uint8."""
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _resize_batch(images: np.ndarray, size: int) -> np.ndarray:
  """(n, H, W, C) uint8 -> (n, size, size, C) uint8."""
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((images.shape[0], size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    out[i] = _from_pil(_resize(_to_pil(image), size))
  return out


def _center_square(image: Image.Image) -> Image.Image:
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  return image.crop((left, top, left + side, top + side))


def _file_stamp(path: str) -> tuple[str, int, int]:
  """Cache key that changes when the file does."""
  st = os.stat(path)
  return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


# ----------------------------------------------------------------------------
# Sources.


class Source:
  """Random-access view of one preprocessed-size split.

  ``len(source)`` examples; ``source.get(indices)`` returns a dict with
  ``'image'``: uint8 (n, S, S, C) (already resized to ``info.image_size``),
  ``'label'``: int32 (n,) if the dataset has labels, ``'attributes'``:
  float32 (n, A) in {0, 1} if it has attributes. ``get`` is thread-safe.
  """

  def __init__(self, info: DatasetInfo):
    self.info = info

  def __len__(self) -> int:
    return self.info.num_examples

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
      raise IndexError(f"Indices out of range [0, {len(self)}) for "
                       f"{self.info.name}.")
    return self._get(idx)

  def _get(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    raise NotImplementedError


class _CappedSource(Source):
  """The first ``n`` examples of another source (``data.num_examples``)."""

  def __init__(self, base: Source, n: int):
    super().__init__(dataclasses.replace(base.info, num_examples=n))
    self._base = base

  def _get(self, idx):
    return self._base._get(idx)  # pylint: disable=protected-access


class _OneHotLabels(Source):
  """Adds 'attributes' = one-hot 'label' (``data.label_attributes``): class-conditional
  models on labelled data take the class as their attribute vector y."""

  def __init__(self, base: Source):
    n = base.info.num_classes
    super().__init__(dataclasses.replace(base.info, attribute_names=label_attribute_names(n)))
    self._base = base

  def _get(self, idx):
    out = self._base._get(idx)  # pylint: disable=protected-access
    out["attributes"] = np.eye(self.info.num_classes, dtype=np.float32)[out["label"]]
    return out


def label_attribute_names(num_classes: int) -> tuple[str, ...]:
  return tuple(f"class_{i}" for i in range(num_classes))


class _ArraySource(Source):
  """In-memory arrays (digits)."""

  def __init__(self, info: DatasetInfo, images: np.ndarray,
               labels: np.ndarray | None = None):
    super().__init__(info)
    self._images, self._labels = images, labels

  def _get(self, idx):
    out = {"image": self._images[idx]}
    if self._labels is not None:
      out["label"] = self._labels[idx]
    return out


# --- digits -----------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _digits_arrays(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits: uint8 (N, S, S, 1) and int32 labels (N,), read-only."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  raw = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = _resize_batch(raw[..., None], image_size)
  labels = digits.target.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


@functools.lru_cache(maxsize=4)
def _digits_split_indices(split: str) -> np.ndarray:
  every = np.arange(_DIGITS_NUM)
  if split == "all":
    return every
  labels = _digits_arrays(8)[1]
  held_out = np.zeros(_DIGITS_NUM, bool)
  for c in range(10):  # Stratified: every 5th occurrence of each class.
    held_out[np.flatnonzero(labels == c)[::_DIGITS_TEST_EVERY]] = True
  return every[held_out] if split == "test" else every[~held_out]


# --- TFDS (mnist, cifar10) --------------------------------------------------


def _tfds_data_dir_for_message(data_dir: str | None) -> str:
  return (data_dir or os.environ.get("TFDS_DATA_DIR")
          or os.path.expanduser("~/tensorflow_datasets"))


def _open_tfds(name: str, split: str, data_dir: str | None):
  """``tfds.data_source`` without download; DataError if not prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except Exception as e:  # pylint: disable=broad-except
    # TFDS raises assorted types here (NotImplementedError for a missing or
    # TFRecord-only dataset, ValueError for a bad split, ...): turn them into
    # one actionable line, keeping the cause.
    where = _tfds_data_dir_for_message(data_dir)
    cause = (str(e).strip().splitlines() or [""])[0]
    raise DataError(
        f"TFDS dataset {name!r} split {split!r} is not readable from {where} "
        f"({type(e).__name__}: {cause}). Prepare it in ArrayRecord format on "
        f"a machine with internet: `tfds build {name} --data_dir={where} "
        "--file_format=array_record`, copy that folder here and set "
        "data.data_dir (nothing is downloaded at run time).") from e


def convert_tfds_examples(examples: Sequence[dict[str, Any]], name: str,
                          image_size: int) -> dict[str, np.ndarray]:
  """TFDS examples (dicts with 'image' (H, W, C) uint8 and 'label') -> batch.

  Returns ``{'image': uint8 (n, S, S, C), 'label': int32 (n,)}``. MNIST is
  zero-padded 28 -> 32 first (then resized if ``image_size != 32``).
  """
  images = np.stack([np.asarray(ex["image"], dtype=np.uint8)
                     for ex in examples])
  if images.ndim == 3:
    images = images[..., None]
  if name == "mnist" and images.shape[1:3] == (28, 28):
    images = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  labels = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
  return {"image": _resize_batch(images, image_size), "label": labels}


class _TfdsSource(Source):
  """A prepared TFDS dataset via ``tfds.data_source`` (thread-safe reads)."""

  def __init__(self, info: DatasetInfo, data_source):
    super().__init__(info)
    self._ds = data_source

  def _get(self, idx):
    # Per-item reads: tfds.testing.mock_data's sources lack __getitems__, and
    # these images are tiny.
    examples = [self._ds[int(i)] for i in idx]
    return convert_tfds_examples(examples, self.info.name,
                                 self.info.image_size)


# --- CelebA -----------------------------------------------------------------


def celeba_manual_dir(cfg: Any) -> str:
  """``data.manual_dir``, else TFDS's ``<data_dir>/downloads/manual``."""
  manual_dir = _get(cfg, "manual_dir")
  if manual_dir:
    return os.path.abspath(os.path.expanduser(manual_dir))
  data_dir = _get(cfg, "data_dir") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.join(os.path.expanduser(data_dir),
                                      "downloads", "manual"))


def _celeba_paths(manual_dir: str) -> dict[str, str]:
  """Paths of the files; DataError naming every missing one and the folder."""
  paths = {f: os.path.join(manual_dir, f) for f in CELEBA_FILES}
  image_dir = os.path.join(manual_dir, _CELEBA_IMAGE_DIR)
  missing = [f for f, p in paths.items() if not os.path.isfile(p)]
  if CELEBA_IMAGES in missing and os.path.isdir(image_dir):
    missing.remove(CELEBA_IMAGES)  # An extracted folder works too.
    paths[CELEBA_IMAGES] = image_dir
  if missing:
    raise DataError(
        f"CelebA file(s) missing: {', '.join(missing)}. Put the official "
        f"{', '.join(CELEBA_FILES)} (from the CelebA 'Img' and 'Anno'/'Eval' "
        f"folders) into {manual_dir} (or set data.manual_dir to the folder "
        "holding them).")
  if paths[CELEBA_IMAGES].endswith(".zip") and not zipfile.is_zipfile(
      paths[CELEBA_IMAGES]):
    raise DataError(f"{paths[CELEBA_IMAGES]} is not a valid zip file: "
                    f"re-download {CELEBA_IMAGES} into {manual_dir}.")
  return paths


@functools.lru_cache(maxsize=4)
def _read_partition(stamp: tuple[str, int, int]) -> tuple[np.ndarray,
                                                          np.ndarray]:
  """list_eval_partition.txt (``000001.jpg 0`` lines) -> (names, parts)."""
  path = stamp[0]
  with open(path, "r", encoding="utf-8") as f:
    tokens = f.read().split()
  if len(tokens) % 2:
    raise DataError(f"{path} is malformed (expected '<file> <0|1|2>' lines): "
                    f"re-download {CELEBA_PARTITION}.")
  names = np.asarray(tokens[0::2])
  try:
    parts = np.asarray([int(t) for t in tokens[1::2]], dtype=np.int8)
  except ValueError as e:
    raise DataError(f"{path} is malformed ({e}): re-download "
                    f"{CELEBA_PARTITION}.") from e
  return names, parts


def _read_attribute_names(path: str) -> tuple[str, ...]:
  """The header (2nd line) of list_attr_celeba.txt."""
  with open(path, "r", encoding="utf-8") as f:
    f.readline()  # Number of images.
    names = tuple(f.readline().split())
  if not names:
    raise DataError(f"{path} has no attribute-name header: re-download "
                    f"{CELEBA_ATTRIBUTES}.")
  return names


@functools.lru_cache(maxsize=4)
def _read_attributes(stamp: tuple[str, int, int]
                     ) -> tuple[tuple[str, ...], dict[str, int], np.ndarray]:
  """list_attr_celeba.txt -> (names, {file: row}, bool (N, A) values).

  Format: line 1 the image count, line 2 the attribute names, then
  ``000001.jpg -1  1 ...`` (values -1/1; True where > 0, as TFDS does).
  """
  path = stamp[0]
  with open(path, "r", encoding="utf-8") as f:
    f.readline()
    names = tuple(f.readline().split())
    files, rows = [], []
    for line in f:
      parts = line.split(None, 1)
      if not parts:
        continue
      files.append(parts[0])
      rows.append(parts[1] if len(parts) > 1 else "")
  values = np.fromstring(" ".join(rows), dtype=np.int8, sep=" ")  # Text mode.
  if not names or values.size != len(files) * len(names):
    raise DataError(f"{path} is malformed (expected {len(names)} values per "
                    f"line): re-download {CELEBA_ATTRIBUTES}.")
  values = values.reshape(len(files), len(names)) > 0
  values.setflags(write=False)
  return names, {f: i for i, f in enumerate(files)}, values


def _celeba_split_files(paths: dict[str, str], split: str) -> list[str]:
  _check_split("celeb_a", split, tuple(_CELEBA_SPLITS))
  names, parts = _read_partition(_file_stamp(paths[CELEBA_PARTITION]))
  return sorted(names[parts == _CELEBA_SPLITS[split]].tolist())


class _ZipReader:
  """Reads members by base name; one ZipFile per thread (no shared lock)."""

  def __init__(self, path: str):
    self._path = path
    self._local = threading.local()
    try:
      zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise DataError(f"Cannot read {path} ({e}): re-download "
                      f"{CELEBA_IMAGES}.") from e
    self._members = {posixpath.basename(n): n for n in zf.namelist()
                     if not n.endswith("/") and not n.startswith("__MACOSX")}
    self._local.zf = zf

  def __contains__(self, name: str) -> bool:
    return name in self._members

  def read(self, name: str) -> bytes:
    zf = getattr(self._local, "zf", None)
    if zf is None:
      zf = self._local.zf = zipfile.ZipFile(self._path)
    return zf.read(self._members[name])


class _DirReader:
  """Reads files from an extracted ``img_align_celeba/`` folder."""

  def __init__(self, path: str):
    self._path = path

  def __contains__(self, name: str) -> bool:
    return os.path.isfile(os.path.join(self._path, name))

  def read(self, name: str) -> bytes:
    with open(os.path.join(self._path, name), "rb") as f:
      return f.read()


def decode_celeba(data: bytes, image_size: int, name: str = "") -> np.ndarray:
  """Aligned 178x218 JPEG bytes -> paper crop, resized: uint8 (S, S, 3)."""
  with Image.open(io.BytesIO(data)) as image:
    if image.size != _CELEBA_RAW_SIZE:
      raise DataError(f"CelebA image {name} is {image.size[0]}x"
                      f"{image.size[1]}, expected 178x218: use the aligned "
                      f"& cropped images ({CELEBA_IMAGES}).")
    image = image.convert("RGB").crop(CELEBA_CROP_BOX)
  return _from_pil(_resize(image, image_size))


class _CelebASource(Source):
  """CelebA read straight from the official manual-download files."""

  def __init__(self, manual_dir: str, split: str, image_size: int):
    paths = _celeba_paths(manual_dir)
    files = _celeba_split_files(paths, split)
    names, rows, values = _read_attributes(
        _file_stamp(paths[CELEBA_ATTRIBUTES]))
    no_attr = [f for f in files if f not in rows]
    if no_attr:
      raise DataError(f"{len(no_attr)} image(s) of split {split!r} (e.g. "
                      f"{no_attr[0]}) have no line in {CELEBA_ATTRIBUTES}: "
                      f"re-download it into {manual_dir}.")
    image_path = paths[CELEBA_IMAGES]
    self._reader = (_DirReader(image_path) if os.path.isdir(image_path)
                    else _ZipReader(image_path))
    no_image = [f for f in files if f not in self._reader]
    if no_image:
      raise DataError(f"{len(no_image)} image(s) of split {split!r} (e.g. "
                      f"{no_image[0]}) are missing from {image_path}: "
                      f"re-download {CELEBA_IMAGES} into {manual_dir}.")
    self._files = files
    self._attributes = values[[rows[f] for f in files]]
    super().__init__(DatasetInfo("celeb_a", image_size, 3, len(files), names))

  def _get(self, idx):
    size = self.info.image_size
    images = np.empty((idx.size, size, size, 3), np.uint8)
    for k, i in enumerate(idx):
      name = self._files[i]
      images[k] = decode_celeba(self._reader.read(name), size, name)
    return {"image": images,
            "attributes": self._attributes[idx].astype(np.float32)}


# --- folder -----------------------------------------------------------------


def _folder_files(cfg: Any) -> tuple[str, list[str]]:
  folder = _get(cfg, "folder")
  if not folder:
    raise DataError("data.folder is not set: set it to a directory of "
                    f"{'/'.join(_FOLDER_EXTS)} images.")
  folder = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(folder):
    raise DataError(f"data.folder {folder} does not exist: set data.folder "
                    "to a directory of images.")
  files = []
  for root, dirs, names in os.walk(folder, followlinks=True):
    dirs.sort()
    for n in names:
      if n.lower().endswith(_FOLDER_EXTS) and not n.startswith("."):
        files.append(os.path.relpath(os.path.join(root, n), folder)
                     .replace(os.sep, "/"))
  if not files:
    raise DataError(f"No {'/'.join(_FOLDER_EXTS)} images under {folder}: "
                    "put images there or set data.folder.")
  return folder, sorted(files)


def _folder_split(files: list[str], split: str) -> list[str]:
  _check_split("folder", split, ("train", "test", "all"))
  if split == "all":
    return files
  if split == "test":
    return files[::_FOLDER_TEST_EVERY]
  return [f for i, f in enumerate(files) if i % _FOLDER_TEST_EVERY]


def load_folder_image(path: str, image_size: int, channels: int) -> np.ndarray:
  """Any image -> center square crop, resized: uint8 (S, S, channels)."""
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      image = image.convert("L" if channels == 1 else "RGB")
  except OSError as e:
    raise DataError(f"Cannot read image {path} ({e}): remove or fix it.") from e
  return _from_pil(_resize(_center_square(image), image_size))


class _FolderSource(Source):

  def __init__(self, folder: str, files: list[str], image_size: int,
               channels: int):
    super().__init__(DatasetInfo("folder", image_size, channels, len(files)))
    self._folder, self._files = folder, files

  def _get(self, idx):
    s, c = self.info.image_size, self.info.channels
    images = np.empty((idx.size, s, s, c), np.uint8)
    for k, i in enumerate(idx):
      images[k] = load_folder_image(
          os.path.join(self._folder, self._files[i]), s, c)
    return {"image": images}


# ----------------------------------------------------------------------------
# Public API.


def _split_info(cfg: Any, split: str) -> DatasetInfo:
  """Cheap DatasetInfo of one split (no image decoding)."""
  name, size, channels = _check_common(cfg)
  cap = _cap(cfg)
  attribute_names = ()
  if name == "digits":
    _check_split(name, split, ("train", "test", "all"))
    n = len(_digits_split_indices(split))
  elif name in _TFDS_DATASETS:
    n = len(_open_tfds(name, split, _get(cfg, "data_dir")))
  elif name == "celeb_a":
    paths = _celeba_paths(celeba_manual_dir(cfg))
    n = len(_celeba_split_files(paths, split))
    attribute_names = _read_attribute_names(paths[CELEBA_ATTRIBUTES])
  else:
    _, files = _folder_files(cfg)
    n = len(_folder_split(files, split))
  if n == 0:
    raise DataError(f"Split {split!r} of {name!r} is empty: choose another "
                    "split (data.train_split / data.eval_split).")
  num_classes = 10 if name in ("digits",) + _TFDS_DATASETS else 0
  if _get(cfg, "label_attributes", False):
    if not num_classes:
      raise DataError(f"data.label_attributes=True needs a dataset with class labels "
                      f"(digits, mnist, cifar10), not {name!r}.")
    attribute_names = label_attribute_names(num_classes)
  return DatasetInfo(name, size, channels, min(n, cap) if cap else n,
                     attribute_names, num_classes)


def validate(data_config: Any) -> DatasetInfo:
  """Checks the config and that the data are there; no image decoding.

  Run before compiling anything. Checks ``train_split`` and, if set,
  ``eval_split``.

  Returns:
    DatasetInfo of the train split.
  Raises:
    DataError: one line naming the fix.
  """
  info = _split_info(data_config, _get(data_config, "train_split", "train"))
  eval_split = _get(data_config, "eval_split")
  if eval_split:
    _split_info(data_config, eval_split)
  return info


def get_source(data_config: Any, split: str) -> Source:
  """Random-access source of ``split``; see ``Source`` for ``get``."""
  name, size, channels = _check_common(data_config)
  cap = _cap(data_config)
  if name == "digits":
    _check_split(name, split, ("train", "test", "all"))
    images, labels = _digits_arrays(size)
    idx = _digits_split_indices(split)
    source = _ArraySource(DatasetInfo(name, size, 1, len(idx), num_classes=10),
                          images[idx], labels[idx])
  elif name in _TFDS_DATASETS:
    ds = _open_tfds(name, split, _get(data_config, "data_dir"))
    source = _TfdsSource(DatasetInfo(name, size, channels, len(ds), num_classes=10), ds)
  elif name == "celeb_a":
    source = _CelebASource(celeba_manual_dir(data_config), split, size)
  else:
    folder, files = _folder_files(data_config)
    source = _FolderSource(folder, _folder_split(files, split), size,
                           channels)
  if len(source) == 0:
    raise DataError(f"Split {split!r} of {name!r} is empty: choose another "
                    "split (data.train_split / data.eval_split).")
  if _get(data_config, "label_attributes", False):
    if not source.info.num_classes:
      raise DataError(f"data.label_attributes=True needs a dataset with class labels "
                      f"(digits, mnist, cifar10), not {name!r}.")
    source = _OneHotLabels(source)
  if cap and cap < len(source):
    source = _CappedSource(source, cap)
  return source


def preprocess(batch: dict[str, np.ndarray], data_config: Any,
               rng: np.random.Generator | None = None, *,
               flip: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """uint8 images -> float32 (n, S, S, C) in [-1, 1], optional h-flip.

  Args:
    batch: dict with 'image' uint8 (n, H, W, C) (or (n, H, W)); resized to
      ``data_config.image_size`` if needed. Other keys are passed through.
    data_config: uses ``image_size`` and ``hflip``.
    rng: draws the flips (p = 1/2 each) when ``hflip`` and ``flip`` is None.
    flip: optional bool (n,): which images to flip; overrides ``rng`` (used
      by ``batch_iterator`` so flips do not depend on the process count).
  Returns:
    ``batch`` with 'image' float32 (n, S, S, C) in [-1, 1].
  """
  size = int(data_config.image_size)
  images = np.asarray(batch["image"])
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8:
    raise ValueError(f"preprocess expects uint8 images, got {images.dtype}.")
  images = _resize_batch(images, size)
  x = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  if flip is None and _get(data_config, "hflip", False):
    if rng is None:
      raise ValueError("preprocess needs `rng` (or `flip`) when hflip is on.")
    flip = rng.random(x.shape[0]) < 0.5
  if flip is not None:
    flip = np.asarray(flip, dtype=bool)
    x[flip] = x[flip, :, ::-1]
  return dict(batch, image=x)


@functools.lru_cache(maxsize=8)
def _epoch_order(num_examples: int, seed: int, epoch: int,
                 shuffle: bool) -> np.ndarray:
  if not shuffle:
    order = np.arange(num_examples)
  else:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.setflags(write=False)
  return order


def global_batch_indices(num_examples: int, global_batch_size: int, seed: int,
                         step: int, *, shuffle: bool = True,
                         drop_remainder: bool = True) -> np.ndarray:
  """Dataset indices of global batch ``step``: int64 (global_batch_size,).

  Epoch ``e`` is ``default_rng([seed, e]).permutation(N)`` (``arange(N)``
  without shuffle).

  * ``drop_remainder=True``: every epoch gives ``N // B`` batches and its last
    ``N % B`` examples are dropped (a different few each shuffled epoch);
    batch ``step`` is slice ``step % (N // B)`` of epoch ``step // (N // B)``.
    Needs ``N >= B``.
  * ``drop_remainder=False``: the epochs are concatenated into one stream and
    batch ``step`` is positions ``[step * B, (step + 1) * B)`` of it, so a
    batch may straddle an epoch boundary (or span several epochs if B > N);
    no example is ever dropped.
  """
  n, b = int(num_examples), int(global_batch_size)
  if n <= 0 or b <= 0:
    raise ValueError(f"Need num_examples > 0 and batch size > 0, got {n}, {b}.")
  if seed < 0 or step < 0:
    raise ValueError(f"seed and step must be >= 0, got {seed}, {step}.")
  if drop_remainder:
    per_epoch = n // b
    if per_epoch == 0:
      raise ValueError(f"Global batch size {b} exceeds the {n} examples of the "
                       "split: use drop_remainder=False or a smaller batch.")
    epoch, within = divmod(int(step), per_epoch)
    order = _epoch_order(n, int(seed), epoch, bool(shuffle))
    return order[within * b:(within + 1) * b].astype(np.int64)
  epochs, offsets = np.divmod(int(step) * b + np.arange(b, dtype=np.int64), n)
  out = np.empty(b, np.int64)
  for e in np.unique(epochs):
    mask = epochs == e
    out[mask] = _epoch_order(n, int(seed), int(e), bool(shuffle))[offsets[mask]]
  return out


def global_flip_mask(seed: int, step: int,
                     global_batch_size: int) -> np.ndarray:
  """Horizontal flips of global batch ``step``: bool (global_batch_size,)."""
  rng = np.random.default_rng([int(seed), _FLIP_STREAM, int(step)])
  return rng.random(int(global_batch_size)) < 0.5


def batch_iterator(data_config: Any, split: str, global_batch_size: int, *,
                   seed: int, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1, shuffle: bool = True,
                   drop_remainder: bool = True, num_workers: int | None = None,
                   prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator over this process's part of each global batch.

  Batch ``step`` (counting from 0, ``start_step`` included) holds examples
  ``global_batch_indices(N, B, seed, step, ...)`` (see there for epochs and
  ``drop_remainder``), flipped where ``global_flip_mask(seed, step, B)`` (if
  ``hflip``). Process ``p`` gets the contiguous slice ``[p * b, (p + 1) * b)``
  with ``b = B // process_count``: P processes together see exactly what one
  process sees, and ``start_step=k`` yields exactly batches k, k+1, ... of an
  iterator started at 0.

  For evaluation over a whole split use ``shuffle=False,
  drop_remainder=False`` and take ``ceil(N / B)`` batches (the last one wraps
  around to the first examples).

  Loading and preprocessing run ahead in ``num_workers`` background threads
  (default ``min(8, cpu_count)``; PIL decoding releases the GIL), each batch
  in one thread, ``max(prefetch, num_workers)`` batches deep. The threads
  start on the first ``next`` and stop when the iterator is closed or
  garbage-collected.

  Returns:
    Iterator of dicts: 'image' float32 (b, S, S, C) in [-1, 1], and 'label'
    int32 (b,) / 'attributes' float32 (b, A) where the dataset has them.
  Raises:
    ValueError: bad batch size / process arguments.
    DataError: data missing or misconfigured (raised here, not on first next).
  """
  b_global, p_count = int(global_batch_size), int(process_count)
  if b_global <= 0 or p_count <= 0:
    raise ValueError(f"global_batch_size ({global_batch_size}) and "
                     f"process_count ({process_count}) must be positive.")
  if b_global % p_count:
    raise ValueError(f"global_batch_size {b_global} is not divisible by "
                     f"process_count {p_count}: use a multiple of {p_count}.")
  if not 0 <= process_index < p_count:
    raise ValueError(f"process_index {process_index} not in [0, {p_count}).")
  if seed < 0 or start_step < 0:
    raise ValueError(f"seed and start_step must be >= 0, got {seed}, "
                     f"{start_step}.")
  source = get_source(data_config, split)
  if drop_remainder and len(source) < b_global:
    raise ValueError(f"Split {split!r} has {len(source)} examples, fewer than "
                     f"the global batch {b_global}: use drop_remainder=False "
                     "or a smaller batch.")
  local = b_global // p_count
  if num_workers is None:
    # ~1 ms of PIL work per CelebA image: 8 threads keep up with a GPU step.
    num_workers = max(1, min(8, os.cpu_count() or 1))
  return _iterate(source, data_config, b_global, int(seed), int(start_step),
                  process_index * local, (process_index + 1) * local,
                  bool(shuffle), bool(drop_remainder), int(num_workers),
                  max(int(prefetch), int(num_workers), 1))


def _iterate(source: Source, cfg: Any, b_global: int, seed: int, step: int,
             lo: int, hi: int, shuffle: bool, drop_remainder: bool,
             num_workers: int, depth: int) -> Iterator[dict[str, np.ndarray]]:
  """The generator behind ``batch_iterator``; threads start on first next."""
  hflip = bool(_get(cfg, "hflip", False))
  n = len(source)

  def load(idx, flip):
    return preprocess(source.get(idx), cfg, flip=flip)

  executor = concurrent.futures.ThreadPoolExecutor(
      max_workers=num_workers, thread_name_prefix="vaegan_input")
  pending = collections.deque()
  try:
    while True:
      while len(pending) < depth:
        idx = global_batch_indices(n, b_global, seed, step, shuffle=shuffle,
                                   drop_remainder=drop_remainder)[lo:hi]
        # Flips drawn for the whole global batch, then sliced: identical for
        # every process count and on resume.
        flip = (global_flip_mask(seed, step, b_global)[lo:hi] if hflip
                else None)
        pending.append(executor.submit(load, idx, flip))
        step += 1
      yield pending.popleft().result()
  finally:
    # Runs on close() / garbage collection of the generator.
    for future in pending:
      future.cancel()
    if not sys.is_finalizing():  # at interpreter exit the pool is torn down anyway
      executor.shutdown(wait=False, cancel_futures=True)
