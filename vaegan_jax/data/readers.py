"""Dataset readers: random-access sources of uint8 images (numpy + PIL, no TF).

A source is what grain calls a random-access data source: ``len(source)``
examples and ``source[i]`` one example (``grain.MapDataset.source(source)``
takes it); ``source.get(indices)`` reads several at once, which is what the
pipeline's workers call. Order, sharding, augmentation and prefetching are
built on grain in ``vaegan_jax.data.pipeline``; ``get_source`` and
``validate`` are in ``vaegan_jax.data.sources``.

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
  * ``'folder'``: every ``.png/.jpg/.jpeg/.bmp/.webp/.tif/.tiff`` file under
    ``data_config.folder`` (recursive, sorted by relative path), EXIF
    orientation applied, converted to RGB or L by ``channels``, center-cropped
    to a square and resized to ``image_size``. Splits: ``'test'`` = every
    20th file (0, 20, 40, ...), held out; ``'train'`` = the other files;
    ``'all'`` = every file.
  * ``'photos'``: crops of the 16 natural photographs shipped by
    scikit-image and scikit-learn (``photos.py``: the photographs, the crop
    rule, a held-out band per photograph; label = photograph). Needs the
    ``photos`` extra (scikit-image).

Resizing (all datasets): PIL LANCZOS when shrinking (antialiased), BICUBIC
when enlarging; done on uint8 in the pipeline's
workers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vaegan_jax.runtime.errors import UserError

DATASETS = ("digits", "mnist", "cifar10", "celeb_a", "folder", "photos")

# Channels fixed by the dataset (None: chosen by data_config.channels).
_DATASET_CHANNELS = {"digits": 1, "mnist": 1, "cifar10": 3, "celeb_a": 3,
                     "folder": None, "photos": None}

# The sizes a reader can serve; which of them a network takes is the network's check.
_MIN_IMAGE_SIZE = 2
_MAX_IMAGE_SIZE = 1024

_DIGITS_NUM = 1797
_DIGITS_TEST_EVERY = 5

TFDS_DATASETS = ("mnist", "cifar10")


class DataError(UserError, ValueError):
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


def config_value(cfg: Any, name: str, default: Any = None) -> Any:
  """``cfg.name``, or ``default`` when absent or None (ConfigDict or object)."""
  try:
    value = getattr(cfg, name)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def check_common(cfg: Any) -> tuple[str, int, int]:
  """Validates name, image_size and channels; returns them."""
  name = config_value(cfg, "name")
  if name not in DATASETS:
    raise DataError(f"Unknown dataset {name!r}: set data.name to one of "
                    f"{', '.join(DATASETS)}.")
  size = config_value(cfg, "image_size")
  # What sizes a network can take (it halves them) is the network's check.
  if (isinstance(size, bool) or not isinstance(size, (int, np.integer))
      or not _MIN_IMAGE_SIZE <= size <= _MAX_IMAGE_SIZE):
    raise DataError(f"Bad data.image_size={size!r}: use an integer in [{_MIN_IMAGE_SIZE}, "
                    f"{_MAX_IMAGE_SIZE}], e.g. 32 or 64.")
  channels = config_value(cfg, "channels")
  want = _DATASET_CHANNELS[name]
  if channels not in (1, 3):
    raise DataError(f"Bad data.channels={channels!r}: use 1 or 3"
                    + (f" ({name} has {want})." if want else "."))
  if want is not None and channels != want:
    raise DataError(f"Dataset {name!r} has {want} channel(s) but "
                    f"data.channels={channels}: set data.channels={want}.")
  return name, int(size), int(channels)


def examples_cap(cfg: Any) -> int:
  cap = config_value(cfg, "num_examples", 0)
  if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 0:
    raise DataError(f"Bad data.num_examples={cap!r}: use 0 (all) or a "
                    "positive integer.")
  return int(cap)


def check_split(name: str, split: str, allowed: Sequence[str]) -> None:
  if split not in allowed:
    raise DataError(f"Unknown split {split!r} for dataset {name!r}: use one "
                    f"of {', '.join(map(repr, allowed))} (data.train_split / "
                    "data.eval_split).")


# ----------------------------------------------------------------------------
# Image helpers (uint8, PIL).


def resize(image: Image.Image, size: int) -> Image.Image:
  """Resizes to (size, size): LANCZOS (antialiased) down, BICUBIC up."""
  if image.size == (size, size):
    return image
  shrink = image.size[0] > size or image.size[1] > size
  resample = (Image.Resampling.LANCZOS if shrink
              else Image.Resampling.BICUBIC)
  return image.resize((size, size), resample)


def to_pil(image: np.ndarray) -> Image.Image:
  """(H, W, C) uint8 with C in {1, 3} -> PIL image."""
  if image.shape[-1] == 1:
    return Image.fromarray(image[..., 0], "L")
  return Image.fromarray(image, "RGB")


def from_pil(image: Image.Image) -> np.ndarray:
  """PIL L/RGB image -> (H, W, C) uint8."""
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
  """(n, H, W, C) uint8 -> (n, size, size, C) uint8."""
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((images.shape[0], size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    out[i] = from_pil(resize(to_pil(image), size))
  return out


def center_square(image: Image.Image) -> Image.Image:
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  return image.crop((left, top, left + side, top + side))


def file_stamp(path: str) -> tuple[str, int, int]:
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

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """One example (grain's random-access interface): 'image' uint8 (S, S, C), ..."""
    return {k: v[0] for k, v in self.get(np.asarray([index])).items()}

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
      raise IndexError(f"Indices out of range [0, {len(self)}) for "
                       f"{self.info.name}.")
    return self._get(idx)

  def _get(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    raise NotImplementedError


class CappedSource(Source):
  """The first ``n`` examples of another source (``data.num_examples``)."""

  def __init__(self, base: Source, n: int):
    super().__init__(dataclasses.replace(base.info, num_examples=n))
    self._base = base

  def _get(self, idx):
    return self._base._get(idx)  # pylint: disable=protected-access


class OneHotLabels(Source):
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


class ArraySource(Source):
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
def digits_arrays(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits: uint8 (N, S, S, 1) and int32 labels (N,), read-only."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  raw = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = resize_batch(raw[..., None], image_size)
  labels = digits.target.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


@functools.lru_cache(maxsize=4)
def digits_split_indices(split: str) -> np.ndarray:
  every = np.arange(_DIGITS_NUM)
  if split == "all":
    return every
  labels = digits_arrays(8)[1]
  held_out = np.zeros(_DIGITS_NUM, bool)
  for c in range(10):  # Stratified: every 5th occurrence of each class.
    held_out[np.flatnonzero(labels == c)[::_DIGITS_TEST_EVERY]] = True
  return every[held_out] if split == "test" else every[~held_out]


# --- TFDS (mnist, cifar10) --------------------------------------------------


def _tfds_data_dir_for_message(data_dir: str | None) -> str:
  return (data_dir or os.environ.get("TFDS_DATA_DIR")
          or os.path.expanduser("~/tensorflow_datasets"))


def open_tfds(name: str, split: str, data_dir: str | None):
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
  return {"image": resize_batch(images, image_size), "label": labels}


class TfdsSource(Source):
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


