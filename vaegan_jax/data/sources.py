"""``get_source`` and ``validate``: a data config to a random-access source.

Every check here runs before anything is compiled and raises ``DataError``
with one line that names the fix.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from vaegan_jax.data import celeba
from vaegan_jax.data import folder
from vaegan_jax.data import photos
from vaegan_jax.data import readers
from vaegan_jax.data.readers import config_value
from vaegan_jax.data.readers import DataError
from vaegan_jax.data.readers import DatasetInfo
from vaegan_jax.data.readers import Source


# Datasets whose examples carry a class 'label'.
_NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "photos": photos.NUM_PHOTOS}


def _split_info(cfg: Any, split: str) -> DatasetInfo:
  """Cheap DatasetInfo of one split (no image decoding)."""
  name, size, channels = readers.check_common(cfg)
  cap = readers.examples_cap(cfg)
  attribute_names = ()
  if name == "digits":
    readers.check_split(name, split, ("train", "test", "all"))
    n = len(readers.digits_split_indices(split))
  elif name in readers.TFDS_DATASETS:
    n = len(readers.open_tfds(name, split, config_value(cfg, "data_dir")))
  elif name == "celeb_a":
    paths = celeba.celeba_paths(celeba.celeba_manual_dir(cfg))
    n = len(celeba.split_files(paths, split))
    attribute_names = celeba.read_attribute_names(paths[celeba.CELEBA_ATTRIBUTES])
  elif name == "photos":
    n = photos.info(cfg, split, size, channels).num_examples
  else:
    _, files = folder.list_files(cfg)
    n = len(folder.split_files(files, split))
  if n == 0:
    raise DataError(f"Split {split!r} of {name!r} is empty: choose another "
                    "split (data.train_split / data.eval_split).")
  num_classes = _NUM_CLASSES.get(name, 0)
  if config_value(cfg, "label_attributes", False):
    if not num_classes:
      raise DataError(f"data.label_attributes=True needs a dataset with class labels "
                      f"({', '.join(_NUM_CLASSES)}), not {name!r}.")
    attribute_names = readers.label_attribute_names(num_classes)
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
  info = _split_info(data_config, config_value(data_config, "train_split", "train"))
  eval_split = config_value(data_config, "eval_split")
  if eval_split:
    _split_info(data_config, eval_split)
  return info


def get_source(data_config: Any, split: str) -> Source:
  """Random-access source of ``split`` (``readers.Source``: ``len``, ``[i]``, ``get``)."""
  name, size, channels = readers.check_common(data_config)
  cap = readers.examples_cap(data_config)
  if name == "digits":
    readers.check_split(name, split, ("train", "test", "all"))
    images, labels = readers.digits_arrays(size)
    idx = readers.digits_split_indices(split)
    source = readers.ArraySource(DatasetInfo(name, size, 1, len(idx), num_classes=10),
                                 images[idx], labels[idx])
  elif name in readers.TFDS_DATASETS:
    ds = readers.open_tfds(name, split, config_value(data_config, "data_dir"))
    source = readers.TfdsSource(DatasetInfo(name, size, channels, len(ds), num_classes=10), ds)
  elif name == "celeb_a":
    source = celeba.CelebASource(celeba.celeba_manual_dir(data_config), split, size)
  elif name == "photos":
    photos.info(data_config, split, size, channels)
    source = photos.PhotosSource(split, size, channels, photos.crop_seed(data_config))
  else:
    root, files = folder.list_files(data_config)
    source = folder.FolderSource(root, folder.split_files(files, split), size, channels)
  if len(source) == 0:
    raise DataError(f"Split {split!r} of {name!r} is empty: choose another "
                    "split (data.train_split / data.eval_split).")
  if config_value(data_config, "label_attributes", False):
    if not source.info.num_classes:
      raise DataError(f"data.label_attributes=True needs a dataset with class labels "
                      f"({', '.join(_NUM_CLASSES)}), not {name!r}.")
    source = readers.OneHotLabels(source)
  if cap and cap < len(source):
    source = readers.CappedSource(source, cap)
  return source


def content_stamp(data_config: Any, *, names_only: bool = False) -> str:
  """A digest that changes when the files a dataset is read from change.

  For ``folder``: every listed file's relative path, size and mtime (a file
  added, removed, renamed or rewritten), or with ``names_only`` the paths alone
  (what decides the input order and the held-out split). For ``celeb_a``: the
  official files' sizes (a re-download or a copy is the same data; an
  extracted image folder counts as one entry). Other datasets are fixed by
  their package's version: ''. Caches of real-data statistics key on it, so
  they are never reused for other images. Costs one ``stat`` per file (about
  0.4 s per 50,000 local files).
  """
  name = config_value(data_config, "name")
  h = hashlib.sha256()
  if name == "folder":
    root, files = folder.list_files(data_config)
    for f in files:
      h.update(os.fsencode(f) + b"\0")
      if not names_only:
        try:
          st = os.stat(os.path.join(root, f))
          h.update(f"{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # a dangling link, a file gone: read (and reported) later
          h.update(b"?\n")
  elif name == "celeb_a" and not names_only:
    for f, path in sorted(celeba.celeba_paths(celeba.celeba_manual_dir(data_config)).items()):
      h.update(f"{f}\0{os.path.getsize(path)}\n".encode())
  else:
    return ""
  return h.hexdigest()[:16]
