"""Fake data in the real on-disk formats, for tests and the benchmark (nothing is downloaded).

``write_celeba`` writes the official CelebA manual-download files
(``img_align_celeba.zip`` of 178x218 JPEGs, ``list_eval_partition.txt``,
``list_attr_celeba.txt``), which ``data.name='celeb_a'`` reads exactly as it
reads the real ones.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Sequence

import numpy as np
from PIL import Image

from vaegan_jax.data.celeba import CELEBA_ATTRIBUTE_NAMES


def jpeg_bytes(image: np.ndarray, quality: int = 100) -> bytes:
  """(H, W, 3) uint8 -> JPEG bytes (no chroma subsampling)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
  return buf.getvalue()


def write_celeba(manual_dir: str, images: Sequence[np.ndarray], partitions: Sequence[int],
                 attributes: np.ndarray, zipped: bool = True, quality: int = 100) -> list[str]:
  """Writes CelebA's files for ``images`` (each (218, 178, 3) uint8).

  Args:
    manual_dir: folder to write into (created).
    images: the aligned images, named 000001.jpg, 000002.jpg, ...
    partitions: per image 0 (train), 1 (validation) or 2 (test).
    attributes: (n, 40) of -1/1, in ``CELEBA_ATTRIBUTE_NAMES`` order.
    zipped: ``img_align_celeba.zip`` (as downloaded) or an extracted folder.
    quality: JPEG quality.
  Returns:
    The file names.
  """
  os.makedirs(manual_dir, exist_ok=True)
  names = [f"{i + 1:06d}.jpg" for i in range(len(images))]
  if zipped:
    with zipfile.ZipFile(os.path.join(manual_dir, "img_align_celeba.zip"), "w") as zf:
      zf.writestr("img_align_celeba/", b"")
      for name, image in zip(names, images):
        zf.writestr(f"img_align_celeba/{name}", jpeg_bytes(image, quality))
  else:
    os.makedirs(os.path.join(manual_dir, "img_align_celeba"))
    for name, image in zip(names, images):
      with open(os.path.join(manual_dir, "img_align_celeba", name), "wb") as f:
        f.write(jpeg_bytes(image, quality))
  with open(os.path.join(manual_dir, "list_eval_partition.txt"), "w") as f:
    for name, part in zip(names, partitions):
      f.write(f"{name} {part}\n")
  with open(os.path.join(manual_dir, "list_attr_celeba.txt"), "w") as f:
    f.write(f"{len(images)}\n")
    f.write(" ".join(CELEBA_ATTRIBUTE_NAMES) + " \n")
    for name, row in zip(names, attributes):
      # The official file pads positives to the width of '-1'.
      f.write(name + "".join(f" {int(v):2d}" for v in row) + "\n")
  for extra in ("list_landmarks_align_celeba.txt", "identity_CelebA.txt"):
    open(os.path.join(manual_dir, extra), "w").close()
  return names


def smooth_images(n: int, seed: int = 0, height: int = 218, width: int = 178) -> list[np.ndarray]:
  """``n`` smooth random colour images (H, W, 3) uint8: low-frequency noise,
  which JPEG compresses to about a real face's size (unlike white noise)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    out.append(np.asarray(big))
  return out


def write_fake_celeba(manual_dir: str, n: int, seed: int = 0) -> str:
  """``n`` smooth images, all in the train split, random attributes, JPEG quality 90
  (about the real files' size). Returns ``manual_dir``."""
  rng = np.random.default_rng(seed)
  write_celeba(manual_dir, smooth_images(n, seed), [0] * n,
               rng.choice([-1, 1], (n, len(CELEBA_ATTRIBUTE_NAMES))), quality=90)
  return manual_dir
