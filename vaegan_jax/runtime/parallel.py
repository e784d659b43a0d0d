"""Data-parallel helpers for ``jax.pmap`` over the local devices.

Arrays are placed with the same sharding that ``jax.pmap(axis_name='batch')``
gives its outputs (a 1-D mesh named 'batch' over the local devices), so the
step compiles once instead of once more after the first call.

Multi-host: call ``jax.distributed.initialize`` (JAX's own runtime) before
anything touches a device; each process then feeds its local devices, and
the pmap collectives span all devices of all processes.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def _sharding() -> NamedSharding:
  return NamedSharding(Mesh(np.array(jax.local_devices()), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree: Any) -> Any:
  """Adds a leading axis of size local_device_count and places one copy per device."""
  n = jax.local_device_count()
  sharding = _sharding()
  return jax.tree.map(
      lambda a: jax.device_put(np.broadcast_to(np.asarray(a)[None], (n,) + np.shape(a)),
                               sharding), tree)


def unreplicate(tree: Any) -> Any:
  """First device's copy, as host numpy arrays."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_shards[0].data)[0]
                      if isinstance(a, jax.Array) else a[0], tree)


def shard(batch: Any) -> Any:
  """(B_process, ...) host arrays -> (n_local, B_process / n_local, ...) on devices."""
  n = jax.local_device_count()
  sharding = _sharding()
  return jax.tree.map(
      lambda a: jax.device_put(np.asarray(a).reshape((n, -1) + a.shape[1:]), sharding), batch)


def shard_block(batches: list) -> Any:
  """k batches of (B_process, ...) -> (n_local, k, B_process / n_local, ...) on devices.

  Device d gets the same slice of every batch that ``shard`` would give it, so
  a block of k steps sees exactly the k single steps' data.
  """
  n = jax.local_device_count()
  sharding = _sharding()

  def put(*arrays):
    a = np.stack([np.asarray(x) for x in arrays])  # (k, B, ...)
    a = a.reshape((a.shape[0], n, -1) + a.shape[2:]).swapaxes(0, 1)
    return jax.device_put(np.ascontiguousarray(a), sharding)
  return jax.tree.map(put, *batches)


def prefetch_to_device(iterator: Iterable[Any], size: int = 2, put=None) -> Iterator[Any]:
  """Shards and transfers the next ``size`` batches while the current one runs.

  ``put`` places one item (default ``shard``; ``shard_block`` for lists of batches).
  The transfers are asynchronous, so the next items are on the devices before
  the loop asks for them.
  """
  put = shard if put is None else put
  queue = collections.deque()
  it = iter(iterator)

  def enqueue(n):
    for batch in itertools.islice(it, n):
      queue.append(put(batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


def check_batch_size(global_batch_size: int) -> int:
  """Returns the per-device batch, or raises a one-line ValueError naming the fix."""
  n = jax.device_count()
  if isinstance(global_batch_size, bool) or int(global_batch_size) <= 0:
    raise ValueError(f"batch_size={global_batch_size} must be a positive integer; use e.g. "
                     f"--config.batch_size={64 if 64 % n == 0 else n}.")
  if global_batch_size % n:
    fix = max(n, (global_batch_size // n) * n)
    raise ValueError(
        f"batch_size={global_batch_size} is not divisible by the {n} devices; "
        f"use e.g. --config.batch_size={fix}.")
  return global_batch_size // n

