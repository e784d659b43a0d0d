"""Image-grid helpers: tile a batch of images and write it as a PNG.

Used by ``sampling_outputs`` and by the training loop (``metric_writer``) to
write sample and reconstruction grids. Images follow the model convention: float
arrays in [-1, 1], shape (N, H, W, C) with C in {1, 3}.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """Maps float images in [-1, 1] to uint8 in [0, 255] (-1 -> 0, 1 -> 255).

  Values outside [-1, 1] are clipped; NaNs map to 0 so a diverged model still
  produces a (black) picture instead of an exception.
  """
  x = np.asarray(images, dtype=np.float32)
  x = np.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)
  x = (np.clip(x, -1.0, 1.0) + 1.0) * 127.5
  return np.round(x).astype(np.uint8)


def interleave_rows(top, bottom, ncols: int) -> np.ndarray:
  """Rows of ``ncols`` images of ``top``, each followed by the same row of ``bottom``.

  Args:
    top, bottom: (N, H, W, C) arrays of the same shape, e.g. inputs and their
      reconstructions.
  Returns:
    (2N, H, W, C), for ``make_grid(..., ncols=ncols)``.
  """
  rows = []
  for i in range(0, len(top), ncols):
    rows += [top[i:i + ncols], bottom[i:i + ncols]]
  return np.concatenate(rows)


def make_grid(images, ncols: int = 8, padding: int = 2,
              pad_value: int = 255) -> np.ndarray:
  """Tiles images into one uint8 grid image.

  Args:
    images: (N, H, W, C) floats in [-1, 1] (C=1 grayscale or C=3 RGB). A
      (N, H, W) array is treated as C=1.
    ncols: number of columns; rows = ceil(N / ncols). Clamped to [1, N].
    padding: pixels between tiles and around the border.
    pad_value: uint8 value of the padding (white by default).

  Returns:
    uint8 array (H', W', C) with H' = rows*(H+p)+p and W' = cols*(W+p)+p;
    unused trailing cells are filled with `pad_value`.
  """
  x = to_uint8(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f"Expected (N, H, W, C) images, got shape {x.shape}.")
  n, h, w, c = x.shape
  if n == 0:
    raise ValueError("make_grid needs at least one image.")
  ncols = max(1, min(int(ncols), n))
  nrows = -(-n // ncols)
  p = int(padding)
  grid = np.full((nrows * (h + p) + p, ncols * (w + p) + p, c), pad_value,
                 dtype=np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    top, left = p + r * (h + p), p + col * (w + p)
    grid[top:top + h, left:left + w] = x[i]
  return grid


def save_png(path: str, grid) -> None:
  """Writes a uint8 grid (H, W, C) or (H, W) to `path` as PNG, atomically.

  The image goes to a temporary file in the same directory first and is then
  moved with `os.replace`, so readers (e.g. a dashboard polling the file) never
  see a half-written PNG. Parent directories are created as needed.
  """
  arr = np.asarray(grid)
  if arr.dtype != np.uint8:
    raise ValueError(f"save_png expects uint8, got {arr.dtype}; "
                     "use make_grid/to_uint8 first.")
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
    raise ValueError(f"Unsupported grid shape {arr.shape}.")
  # PIL infers the mode from a uint8 array: (H, W) -> 'L', (H, W, 3) -> 'RGB'.
  img = Image.fromarray(np.ascontiguousarray(arr))
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".png")
  try:
    with os.fdopen(fd, "wb") as f:
      img.save(f, format="PNG")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; grids are for everyone to read
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
