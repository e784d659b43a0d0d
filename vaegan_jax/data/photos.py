"""``photos``: crops of the natural photographs that scikit-image and scikit-learn ship.

CelebA can't be downloaded here, but real photographs ship inside two well-kept
packages; this reader turns them into a dataset with real high-frequency detail
(fur, foliage, brick, gravel, stars), where the embedded digits have none. No
file is downloaded: every photograph is in an installed wheel.

Photographs (label = index in ``PHOTOGRAPHS``, 16 classes):
  * RGB (10): scikit-image's astronaut, chelsea, coffee, rocket,
    motorcycle_left, hubble_deep_field, retina, ihc; scikit-learn's china and
    flower (``sklearn.datasets.load_sample_images``).
  * Greyscale, served as RGB with R = G = B (6): camera, coins, moon, brick,
    grass, gravel.
  Left out: everything synthetic or drawn (chessboard, colour wheel, logo,
  phantom, text, page, horse silhouette), the motion-blurred clock (blurred on
  purpose: it would teach blur), motorcycle_right (the other half of a stereo
  pair: a near-duplicate of motorcycle_left), and images too small for the
  crop rule (microaneurysms, 102 px).

  Why greyscale too: the six greyscale photographs hold most of the fine,
  dense texture (brick, grass, gravel, the moon's craters, coins' reliefs),
  which is exactly what the sharpness question needs, and they bring the
  classes of the feature classifier from 10 to 16. The cost is a colour
  distribution with a grey mode, which the generators must match like any other
  property of the data. With ``data.channels=1`` every photograph is served
  as greyscale instead.

Crop rule. Each photograph is cut along its longer side into a training region
(the first 3/4) and a held-out band (the last 1/4, ``TEST_FRACTION``): right
columns of a landscape photograph, bottom rows of a portrait one. A crop is an
S x S square, S = round(u * B) with u ~ U[0.6, 1.0] and B the band's length
along the long side, raised to at least 64 px (``MIN_CROP``): 64-353 px
depending on the photograph (coins 64-96, chelsea 68-113, the 512 px
photographs 77-128, retina 212-353), at a uniform
position inside the split's region, resized to ``image_size`` with PIL
LANCZOS (antialiased, so downscaling by 2-11x keeps detail up to the Nyquist
frequency without aliasing). Why S scales with B: both splits then draw crops
from the same scale distribution (every crop size fits the band), so held-out
crops differ from training crops in place only; a variable S gives more
variety than fixed crops (the same region at several zooms). S >= 64 px
everywhere, so the 64x64 config never enlarges.

Splits: ``'train'`` holds 32,768 crops (2,048 per photograph), ``'test'``
2,048 (128 per photograph), ``'all'`` both (train first). Crop ``i`` of a split
is a pure function of ``(data.crop_seed, split, i)``: photograph ``i mod 16``,
size and position from ``numpy.random.default_rng([crop_seed, split_code, i])``.
So the dataset is a fixed random-access set, which the pipeline shuffles and
flips per epoch from ``(seed, step)``: resume and multi-process slicing keep
their guarantees. A training crop lies entirely left of (above) the band and
a held-out crop entirely inside it, and the resize reads only the crop's own
pixels: the two splits share no pixel (tested).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Any

import numpy as np
from PIL import Image

from vaegan_jax.data.readers import check_split
from vaegan_jax.data.readers import config_value
from vaegan_jax.data.readers import DataError
from vaegan_jax.data.readers import DatasetInfo
from vaegan_jax.data.readers import from_pil
from vaegan_jax.data.readers import resize
from vaegan_jax.data.readers import Source

INSTALL = "pip install -e '.[photos]'"  # or: pip install scikit-image

# (name, package, file under the package's data folder, RGB photograph)
PHOTOGRAPHS = (
    ("astronaut", "skimage", "astronaut.png", True),
    ("chelsea", "skimage", "chelsea.png", True),
    ("coffee", "skimage", "coffee.png", True),
    ("rocket", "skimage", "rocket.jpg", True),
    ("motorcycle_left", "skimage", "motorcycle_left.png", True),
    ("hubble_deep_field", "skimage", "hubble_deep_field.jpg", True),
    ("retina", "skimage", "retina.jpg", True),
    ("ihc", "skimage", "ihc.png", True),
    ("china", "sklearn", "china.jpg", True),
    ("flower", "sklearn", "flower.jpg", True),
    ("camera", "skimage", "camera.png", False),
    ("coins", "skimage", "coins.png", False),
    ("moon", "skimage", "moon.png", False),
    ("brick", "skimage", "brick.png", False),
    ("grass", "skimage", "grass.png", False),
    ("gravel", "skimage", "gravel.png", False),
)
PHOTO_NAMES = tuple(p[0] for p in PHOTOGRAPHS)
NUM_PHOTOS = len(PHOTOGRAPHS)

TEST_FRACTION = 0.25  # of the long side: the held-out band
CROP_RANGE = (0.6, 1.0)  # S / band length
MIN_CROP = 64  # px: the 64x64 config never enlarges (coins' band is only 96 px)
SPLIT_SIZES = {"train": 2048 * NUM_PHOTOS, "test": 128 * NUM_PHOTOS}
_SPLIT_CODES = {"train": 0, "test": 1}
SPLITS = ("train", "test", "all")

_DATA_FOLDERS = {"skimage": ("data",), "sklearn": ("datasets", "images")}


def _package_dir(package: str) -> str:
  """The installed package's folder, without importing it (skimage's import is slow)."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    what = "scikit-image" if package == "skimage" else "scikit-learn"
    raise DataError(f"data.name='photos' needs {what}, which is not installed: run "
                    f"`{INSTALL}`.")
  return list(spec.submodule_search_locations)[0]


def photo_path(index: int) -> str:
  name, package, filename, _ = PHOTOGRAPHS[index]
  path = os.path.join(_package_dir(package), *_DATA_FOLDERS[package], filename)
  if not os.path.isfile(path):
    raise DataError(f"Photograph {name!r} is missing from the installed package ({path}): "
                    f"reinstall it with `{INSTALL}`.")
  return path


def check_available() -> None:
  """Raises DataError (one line naming the install) unless every photograph is there."""
  for i in range(NUM_PHOTOS):
    photo_path(i)


@functools.lru_cache(maxsize=2 * NUM_PHOTOS)
def load_photo(index: int, channels: int) -> np.ndarray:
  """Photograph ``index`` as uint8 (H, W, channels), read-only, cached per process."""
  path = photo_path(index)
  try:
    with Image.open(path) as image:
      array = from_pil(image.convert("L" if channels == 1 else "RGB"))
  except OSError as e:
    raise DataError(f"Cannot read photograph {path} ({e}): reinstall with `{INSTALL}`.") from e
  array.setflags(write=False)
  return array


@dataclasses.dataclass(frozen=True)
class Crop:
  """A crop of photograph ``photo``: rows [top, top+size), columns [left, left+size)."""
  photo: int
  top: int
  left: int
  size: int


def regions(height: int, width: int) -> dict[str, tuple[int, int, int, int, int]]:
  """Per split: (top, left, bottom, right, band length) of the region crops come from.

  The held-out band is the last ``TEST_FRACTION`` of the longer side.
  """
  long_side = max(height, width)
  band = int(round(TEST_FRACTION * long_side))
  cut = long_side - band
  if width >= height:  # Landscape or square: the band is the right columns.
    return {"train": (0, 0, height, cut, band), "test": (0, cut, height, width, band)}
  return {"train": (0, 0, cut, width, band), "test": (cut, 0, height, width, band)}


def crop_of(seed: int, split: str, index: int, shapes: tuple[tuple[int, int], ...]) -> Crop:
  """Crop ``index`` of ``split`` ('train' or 'test'): a pure function of (seed, split, index).

  Args:
    shapes: (H, W) of every photograph, in ``PHOTOGRAPHS`` order.
  """
  photo = int(index) % len(shapes)
  top0, left0, bottom, right, band = regions(*shapes[photo])[split]
  rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])
  u, fy, fx = rng.random(3)
  size = int(round((CROP_RANGE[0] + (CROP_RANGE[1] - CROP_RANGE[0]) * u) * band))
  size = min(max(size, MIN_CROP), band, bottom - top0, right - left0)
  top = top0 + int(fy * (bottom - top0 - size + 1))
  left = left0 + int(fx * (right - left0 - size + 1))
  return Crop(photo, top, left, size)


def split_size(split: str) -> int:
  check_split("photos", split, SPLITS)
  if split == "all":
    return sum(SPLIT_SIZES.values())
  return SPLIT_SIZES[split]


def crop_seed(cfg: Any) -> int:
  seed = config_value(cfg, "crop_seed", 0)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise DataError(f"Bad data.crop_seed={seed!r}: use an integer in [0, 2**32).")
  return int(seed)


def info(cfg: Any, split: str, image_size: int, channels: int) -> DatasetInfo:
  """The split's DatasetInfo; checks that the photographs are installed (no decoding)."""
  n = split_size(split)
  crop_seed(cfg)
  check_available()
  return DatasetInfo("photos", image_size, channels, n, num_classes=NUM_PHOTOS)


class PhotosSource(Source):
  """Crops of the photographs (see the module docstring); label = photograph index.

  Pickles small (the config's numbers only): each worker process reads the
  photographs itself, once.
  """

  def __init__(self, split: str, image_size: int, channels: int, seed: int = 0):
    super().__init__(DatasetInfo("photos", image_size, channels, split_size(split),
                                 num_classes=NUM_PHOTOS))
    self._split, self._seed = split, int(seed)

  def crop(self, index: int) -> Crop:
    """Which pixels example ``index`` of this split comes from."""
    shapes = tuple(load_photo(p, self.info.channels).shape[:2] for p in range(NUM_PHOTOS))
    split, index = self._split, int(index)
    if split == "all":  # train crops first, then the held-out ones
      split, index = (("train", index) if index < SPLIT_SIZES["train"]
                      else ("test", index - SPLIT_SIZES["train"]))
    return crop_of(self._seed, split, index, shapes)

  def _get(self, idx):
    s, c = self.info.image_size, self.info.channels
    images = np.empty((idx.size, s, s, c), np.uint8)
    labels = np.empty((idx.size,), np.int32)
    for k, i in enumerate(idx):
      crop = self.crop(int(i))
      pixels = load_photo(crop.photo, c)[crop.top:crop.top + crop.size,
                                         crop.left:crop.left + crop.size]
      image = Image.fromarray(pixels[..., 0] if c == 1 else pixels, "L" if c == 1 else "RGB")
      images[k] = from_pil(resize(image, s))
      labels[k] = crop.photo
    return {"image": images, "label": labels}
