"""A checksum of a pytree of arrays that does not depend on its container types.

A TrainState (dataclass fields, tuples, NamedTuples) and the nested dicts and
lists Orbax restores it as have the same leaf names ('params/encoder/conv0/
kernel') and so the same digest; one changed byte changes it. The checkpoints
store it and check it on every restore (``checkpoint.py``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def _key_name(key: Any) -> str:
  """One key-path entry as its plain name: dict key, attribute name or index."""
  if isinstance(key, (jax.tree_util.DictKey, jax.tree_util.FlattenedIndexKey)):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  return str(key)


def path_name(path: tuple) -> str:
  return "/".join(_key_name(k) for k in path)


def named_leaves(tree: Any) -> dict[str, Any]:
  """{'params/encoder/conv0/kernel': leaf, ...}.

  The names are the same for the TrainState dataclass (attributes, tuples,
  NamedTuples) and for the nested dicts and lists Orbax restores it as.
  """
  named = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = path_name(path)
    if name in named:  # E.g. keys 'a/b' and ('a', 'b'): the names would be ambiguous.
      raise ValueError(f"Two leaves are both named {name!r}; the checksum needs unique names.")
    named[name] = leaf
  return named


def state_digest(tree: Any) -> str:
  """sha256 (hex) of a pytree of arrays, independent of its container types.

  Hashes, for each leaf in the order of its normalised key path ('/'-joined
  dict keys, attribute names and indices), the path, dtype, shape and the
  C-contiguous bytes. So a TrainState and the dicts/lists Orbax restores it as
  have the same digest, and one changed byte changes it.
  """
  h = hashlib.sha256()
  for name, leaf in sorted(named_leaves(tree).items()):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{name}\0{a.dtype}\0{a.shape}\0".encode())
    h.update(a.reshape(-1).view(np.uint8))  # Any dtype (bfloat16 too), no copy.
  return h.hexdigest()
