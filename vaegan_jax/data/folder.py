"""A folder of the user's own images (PNG, JPEG, BMP, WebP, TIFF), read with PIL.

Every image file under ``data.folder`` (recursive, sorted by relative path),
EXIF orientation applied, converted to RGB or L by ``channels``, center-cropped
to a square and resized to ``image_size``. Splits: ``'test'`` = every 20th
file, held out; ``'train'`` = the others; ``'all'`` = every file.

Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
``Image.draft``) while the short side stays >= 2 x ``image_size``: a 2048 x 1536
photograph to 64 x 64 decodes ~5x faster, and the result differs from a full
decode by < 0.4/255 on average (a few levels at most). 16-bit and float
images are scaled to 8 bits by their mode (PIL's own conversion clips 16-bit
values to white and turns [0, 1] floats black); floats are taken to lie in [0, 1].
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
from vaegan_jax.runtime import io_errors

_FOLDER_TEST_EVERY = 20
_FOLDER_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


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


# What PIL raises for a broken or unsupported file (a truncated JPEG: OSError; a
# broken PNG chunk: SyntaxError; some bad headers: ValueError or EOFError).
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def load_folder_image(path: str, image_size: int, channels: int) -> np.ndarray:
  """Any image -> center square crop, resized: uint8 (S, S, channels)."""
  try:
    with Image.open(path) as image:
      image.draft(None, (2 * image_size, 2 * image_size))  # JPEG only; a no-op otherwise
      image.load()
      image = ImageOps.exif_transpose(image)
  except UNREADABLE as e:
    reason = io_errors.first_line(e)
    if isinstance(e, OSError) and e.errno is not None:  # the disk, not the file's content
      raise DataError(f"Could not read image {path} ({reason}): check the disk or mount, "
                      "then rerun to resume.") from e
    raise DataError(f"Cannot read image {path} ({reason}): remove or fix it.") from e
  image = _to_8_bits(image, path).convert("L" if channels == 1 else "RGB")
  return from_pil(resize(center_square(image), image_size))


def _to_8_bits(image: Image.Image, path: str) -> Image.Image:
  """Scales by the mode, not by the content, so one dataset is scaled alike:
  16-bit ('I;16*'; 'I', as PIL opens some 16-bit files) /257, float ('F') in [0, 1]."""
  if image.mode.startswith("I;16") or image.mode == "I":
    a = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(a, 0, 65535) // 257).astype(np.uint8))
  if image.mode == "F":
    a = np.asarray(image, np.float64)
    if not np.isfinite(a).all():
      raise DataError(f"Image {path} has NaN or infinite values: remove or fix it.")
    return Image.fromarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8))
  return image


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


