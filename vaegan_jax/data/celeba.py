"""CelebA read straight from the official manual-download files (zipfile + PIL).

See ``vaegan_jax.data.readers`` for the format and the paper's preprocessing.
TFDS's ``celeb_a`` builder is not used: it downloads from Google Drive and
has no manual-download mode, so it cannot build offline.
"""

from __future__ import annotations

import functools
import io
import os
import posixpath
import threading
import zipfile
import zlib
from typing import Any

import numpy as np
from PIL import Image

from vaegan_jax.data.readers import check_split
from vaegan_jax.data.readers import config_value
from vaegan_jax.data.readers import DataError
from vaegan_jax.data.readers import DatasetInfo
from vaegan_jax.data.readers import file_stamp
from vaegan_jax.data.readers import from_pil
from vaegan_jax.data.readers import resize
from vaegan_jax.data.readers import Source
from vaegan_jax.runtime import io_errors

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


def celeba_manual_dir(cfg: Any) -> str:
  """``data.manual_dir``, else TFDS's ``<data_dir>/downloads/manual``."""
  manual_dir = config_value(cfg, "manual_dir")
  if manual_dir:
    return os.path.abspath(os.path.expanduser(manual_dir))
  data_dir = config_value(cfg, "data_dir") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.join(os.path.expanduser(data_dir),
                                      "downloads", "manual"))


def celeba_paths(manual_dir: str) -> dict[str, str]:
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


def read_attribute_names(path: str) -> tuple[str, ...]:
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


def split_files(paths: dict[str, str], split: str) -> list[str]:
  check_split("celeb_a", split, tuple(_CELEBA_SPLITS))
  names, parts = _read_partition(file_stamp(paths[CELEBA_PARTITION]))
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

  def __getstate__(self):  # Worker processes open their own ZipFile.
    return {"_path": self._path, "_members": self._members}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

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
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.size != _CELEBA_RAW_SIZE:
        raise DataError(f"CelebA image {name} is {image.size[0]}x"
                        f"{image.size[1]}, expected 178x218: use the aligned "
                        f"& cropped images ({CELEBA_IMAGES}).")
      image.load()
  except (OSError, SyntaxError, EOFError) as e:  # a truncated or damaged JPEG
    raise _damaged(name, e) from e
  return from_pil(resize(image.convert("RGB").crop(CELEBA_CROP_BOX), image_size))


class CelebASource(Source):
  """CelebA read straight from the official manual-download files."""

  def __init__(self, manual_dir: str, split: str, image_size: int):
    paths = celeba_paths(manual_dir)
    files = split_files(paths, split)
    names, rows, values = _read_attributes(
        file_stamp(paths[CELEBA_ATTRIBUTES]))
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
      images[k] = decode_celeba(self._read(name), size, name)
    return {"image": images,
            "attributes": self._attributes[idx].astype(np.float32)}

  def _read(self, name: str) -> bytes:
    try:
      return self._reader.read(name)
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:  # a bad CRC, a bad block
      raise _damaged(name, e) from e


def _damaged(name: str, e: BaseException) -> DataError:
  return DataError(f"Cannot read CelebA image {name} ({io_errors.first_line(e)}): re-download "
                   f"{CELEBA_IMAGES}.")


# --- folder -----------------------------------------------------------------


