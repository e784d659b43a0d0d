"""A folder of the user's own images (PNG, JPEG, BMP, WebP), read with PIL.

Every image file under ``data.folder`` (recursive, sorted by relative path),
EXIF orientation applied, converted to RGB or L by ``channels``, center-cropped
to a square and resized to ``image_size``. Splits: ``'test'`` = every 20th
file, held out; ``'train'`` = the others; ``'all'`` = every file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageOps

from vaegan_jax.data.readers import center_square
from vaegan_jax.data.readers import check_split
from vaegan_jax.data.readers import config_value
from vaegan_jax.data.readers import DataError
from vaegan_jax.data.readers import DatasetInfo
from vaegan_jax.data.readers import from_pil
from vaegan_jax.data.readers import resize
from vaegan_jax.data.readers import Source

_FOLDER_TEST_EVERY = 20
_FOLDER_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_files(cfg: Any) -> tuple[str, list[str]]:
  folder = config_value(cfg, "folder")
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


def split_files(files: list[str], split: str) -> list[str]:
  check_split("folder", split, ("train", "test", "all"))
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
  return from_pil(resize(center_square(image), image_size))


class FolderSource(Source):

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


