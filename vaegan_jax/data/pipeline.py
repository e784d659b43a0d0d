"""The input order on grain: epochs, shuffling, sharding over processes, flips, prefetch.

Batch ``step`` of a run is a pure function of ``(seed, step)``:

* ``batch_plan`` is a ``grain.MapDataset`` whose element ``step`` holds the
  dataset indices of global batch ``step`` and its horizontal flips:
  ``range(N)`` shuffled anew every epoch (epoch ``e``:
  ``default_rng([seed, e]).permutation(N)``, see ``EpochShuffle``), batched per epoch
  (``drop_remainder=True``: N // B batches an epoch, the last N % B examples
  of each epoch dropped) or over the concatenated epochs
  (``drop_remainder=False``: a batch may straddle epochs; nothing is dropped),
  repeated forever; the flips come from ``random_map`` on that dataset, so
  they too depend on ``(seed, step)`` alone.
* Process ``p`` of ``P`` takes the contiguous slice ``[p*b, (p+1)*b)`` of
  every global batch (``b = B // P``) and reads only those examples: ``P``
  processes together see exactly what one process sees, device by device.
* ``batch_iterator(..., start_step=k)`` slices the dataset at ``k``, so a
  resumed run sees exactly the batches an uninterrupted run would.

**Iterator state.** The checkpoint does not hold grain's iterator state: the
state *is* the step, which the checkpoint already holds. Slicing a
``MapDataset`` at the step costs nothing, works for any number of processes
and worker processes, and leaves one source of truth; a saved grain state
(orbax's ``grain`` handler) would be a second item that must agree with the
step, written by every process, and tied to one pipeline layout.

**Workers.** Each element of the dataset is one process's part of a global
batch, read and preprocessed by one worker: by default ``num_workers`` read
threads (``grain.ReadOptions``; PIL decoding releases the GIL), or with
``worker_processes > 0`` that many processes (``mp_prefetch``, spawned) for
expensive decoding (CelebA's JPEGs, large images of a folder). Threads or
processes give the same batches (tested); ``experiments/benchmark.py`` has
the rates of both.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import threading
import time
from typing import Any, Iterator

from absl import flags
import cloudpickle
import grain
import numpy as np

from vaegan_jax.data import readers
from vaegan_jax.data import sources
from vaegan_jax.data.readers import config_value


def _check_order_args(num_examples: int, global_batch_size: int, seed: int, step: int = 0,
                      drop_remainder: bool = True) -> None:
  n, b = int(num_examples), int(global_batch_size)
  if n <= 0 or b <= 0:
    raise ValueError(f"Need num_examples > 0 and batch size > 0, got {n}, {b}.")
  if not 0 <= seed < 2**32 or step < 0:
    raise ValueError(f"seed must be in [0, 2**32) and step >= 0, got {seed}, {step}.")
  if drop_remainder and n < b:
    raise ValueError(f"Global batch size {b} exceeds the {n} examples of the "
                     "split: use drop_remainder=False or a smaller batch.")


class EpochShuffle(grain.MapDataset):
  """grain's ``shuffle``, with epoch ``e``'s order ``default_rng([seed, e]).permutation(N)``.

  Like ``MapDataset.shuffle`` it reshuffles every epoch: index ``e*N + i``
  reads ``parent[e*N + perm_e[i]]``. grain's own node computes each index
  with a Feistel network, ~50 us per index on this project's CPUs, which
  held the digits pipeline to ~15k images/s, below the H200's digits step
  (18k); this node draws each epoch's permutation once with numpy (the
  previous pipeline's order, so runs resume with the same batches).
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, *, seed: int):
    super().__init__(parent)
    self._seed = int(seed)

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self._seed})"

  def _index(self, index: int) -> int:
    n = len(self._parent)
    epoch, i = divmod(int(index), n)
    return epoch * n + int(_permutation(n, self._seed, epoch)[i])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._index(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._index(i) for i in indices])  # pylint: disable=protected-access


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  perm.setflags(write=False)
  return perm


def _as_plan(index: np.ndarray) -> dict[str, np.ndarray]:
  return {"index": np.asarray(index, np.int64)}


def _draw_flips(plan: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
  return dict(plan, flip=rng.random(plan["index"].shape[0]) < 0.5)


def batch_plan(num_examples: int, global_batch_size: int, seed: int, *,
               shuffle: bool = True, drop_remainder: bool = True,
               hflip: bool = False) -> grain.MapDataset:
  """Global batches as a grain dataset of infinite length.

  Element ``step``: ``{'index': int64 (B,)}`` dataset indices, and with
  ``hflip`` also ``'flip'``: bool (B,), which images to mirror. See the module
  docstring for epochs and ``drop_remainder``.
  """
  n, b = int(num_examples), int(global_batch_size)
  _check_order_args(n, b, int(seed), drop_remainder=drop_remainder)
  ds = grain.MapDataset.range(n).seed(int(seed))
  if shuffle:
    ds = EpochShuffle(ds, seed=int(seed))
  if drop_remainder:
    ds = ds.batch(b, drop_remainder=True).repeat()
  else:
    ds = ds.repeat().batch(b)
  ds = ds.map(_as_plan)
  if hflip:
    ds = ds.random_map(_draw_flips)
  return ds


def global_batch_indices(num_examples: int, global_batch_size: int, seed: int,
                         step: int, *, shuffle: bool = True,
                         drop_remainder: bool = True) -> np.ndarray:
  """Dataset indices of global batch ``step``: int64 (global_batch_size,)."""
  _check_order_args(num_examples, global_batch_size, int(seed), int(step), drop_remainder)
  plan = batch_plan(num_examples, global_batch_size, seed, shuffle=shuffle,
                    drop_remainder=drop_remainder)
  return plan[int(step)]["index"]


def preprocess(batch: dict[str, np.ndarray], data_config: Any,
               rng: np.random.Generator | None = None, *,
               flip: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """uint8 images -> float32 (n, S, S, C) in [-1, 1], optional h-flip.

  Args:
    batch: dict with 'image' uint8 (n, H, W, C) (or (n, H, W)); resized to
      ``data_config.image_size`` if needed. Other keys are passed through.
    data_config: uses ``image_size`` and ``hflip``.
    rng: draws the flips (p = 1/2 each) when ``hflip`` and ``flip`` is None.
    flip: optional bool (n,): which images to flip; overrides ``rng`` (used
      by ``batch_iterator`` so flips do not depend on the process count).
  Returns:
    ``batch`` with 'image' float32 (n, S, S, C) in [-1, 1].
  """
  size = int(data_config.image_size)
  images = np.asarray(batch["image"])
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8:
    raise ValueError(f"preprocess expects uint8 images, got {images.dtype}.")
  images = readers.resize_batch(images, size)
  x = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  if flip is None and config_value(data_config, "hflip", False):
    if rng is None:
      raise ValueError("preprocess needs `rng` (or `flip`) when hflip is on.")
    flip = rng.random(x.shape[0]) < 0.5
  if flip is not None:
    flip = np.asarray(flip, dtype=bool)
    x[flip] = x[flip, :, ::-1]
  return dict(batch, image=x)


@dataclasses.dataclass(frozen=True)
class _Preprocessing:
  """What ``preprocess`` reads of the config (picklable for worker processes)."""
  image_size: int
  hflip: bool


@dataclasses.dataclass(frozen=True)
class _ReadLocalPart:
  """Plan of a global batch -> this process's slice, read and preprocessed."""
  source: readers.Source
  lo: int
  hi: int
  prep: _Preprocessing

  def __call__(self, plan: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    flip = plan["flip"][self.lo:self.hi] if "flip" in plan else None
    return preprocess(self.source.get(plan["index"][self.lo:self.hi]), self.prep, flip=flip)


def batch_dataset(data_config: Any, split: str, global_batch_size: int, *,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  shuffle: bool = True, drop_remainder: bool = True) -> grain.MapDataset:
  """This process's batches as a ``grain.MapDataset`` (element ``step``: batch ``step``).

  Random access: ``ds[k]`` is batch ``k`` and ``ds[k:]`` starts a resumed run.
  Elements as ``batch_iterator`` yields them. Raises as ``batch_iterator``.
  """
  b_global, p_count = int(global_batch_size), int(process_count)
  if b_global <= 0 or p_count <= 0:
    raise ValueError(f"global_batch_size ({global_batch_size}) and "
                     f"process_count ({process_count}) must be positive.")
  if b_global % p_count:
    raise ValueError(f"global_batch_size {b_global} is not divisible by "
                     f"process_count {p_count}: use a multiple of {p_count}.")
  if not 0 <= process_index < p_count:
    raise ValueError(f"process_index {process_index} not in [0, {p_count}).")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}.")
  source = sources.get_source(data_config, split)
  if drop_remainder and len(source) < b_global:
    raise ValueError(f"Split {split!r} has {len(source)} examples, fewer than "
                     f"the global batch {b_global}: use drop_remainder=False "
                     "or a smaller batch.")
  hflip = bool(config_value(data_config, "hflip", False))
  plan = batch_plan(len(source), b_global, int(seed), shuffle=shuffle,
                    drop_remainder=drop_remainder, hflip=hflip)
  local = b_global // p_count
  prep = _Preprocessing(int(data_config.image_size), hflip)
  return plan.map(_ReadLocalPart(source, process_index * local,
                                 (process_index + 1) * local, prep))


def batch_iterator(data_config: Any, split: str, global_batch_size: int, *,
                   seed: int, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1, shuffle: bool = True,
                   drop_remainder: bool = True, num_workers: int | None = None,
                   prefetch: int = 4, worker_processes: int = 0
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator over this process's part of each global batch.

  Batch ``step`` (counting from 0, ``start_step`` included) holds examples
  ``global_batch_indices(N, B, seed, step, ...)`` (see ``batch_plan`` for
  epochs, ``drop_remainder`` and flips). Process ``p`` gets the contiguous
  slice ``[p * b, (p + 1) * b)`` with ``b = B // process_count``: P processes
  together see exactly what one process sees, and ``start_step=k`` yields
  exactly batches k, k+1, ... of an iterator started at 0.

  For evaluation over a whole split use ``shuffle=False,
  drop_remainder=False`` and take ``ceil(N / B)`` batches (the last one wraps
  around to the first examples).

  Reading and preprocessing run ahead in ``num_workers`` grain read threads
  (default ``min(8, cpu_count)``), ``max(prefetch, num_workers)`` batches
  deep, or in ``worker_processes`` spawned processes when that is > 0 (each
  ``max(1, prefetch // worker_processes)`` batches deep). Workers start on
  the first ``next`` and stop when the iterator is closed or
  garbage-collected.

  Returns:
    Iterator of dicts: 'image' float32 (b, S, S, C) in [-1, 1], and 'label'
    int32 (b,) / 'attributes' float32 (b, A) where the dataset has them.
  Raises:
    ValueError: bad batch size / process arguments.
    DataError: data missing or misconfigured (raised here, not on first next).
  """
  if start_step < 0:  # The seed is checked once, in batch_dataset.
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  if worker_processes < 0:
    raise ValueError(f"worker_processes must be >= 0, got {worker_processes}.")
  ds = batch_dataset(data_config, split, global_batch_size, seed=seed,
                     process_index=process_index, process_count=process_count,
                     shuffle=shuffle, drop_remainder=drop_remainder)[int(start_step):]
  if num_workers is None:
    # ~1 ms of PIL work per CelebA image: 8 threads keep up with a GPU step.
    num_workers = max(1, min(8, os.cpu_count() or 1))
  depth = max(int(prefetch), int(num_workers), 1)
  if worker_processes:
    _check_picklable(ds, config_value(data_config, "name"))
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags in mp_prefetch
      flags.FLAGS.mark_as_parsed()  # (a notebook or test never parses them).
    _start_resource_tracker()
    it = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(worker_processes),
        per_worker_buffer_size=max(1, int(prefetch) // int(worker_processes))),
        worker_init_fn=functools.partial(_die_with_parent, os.getpid()))
  else:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(num_workers),
                                              prefetch_buffer_size=depth))
  return _iterate(it, copy=bool(worker_processes), worker_processes=int(worker_processes))


def _check_picklable(ds: grain.MapDataset, name: str) -> None:
  """Worker processes receive the dataset pickled: fail here in one line, not in a worker."""
  try:
    cloudpickle.dumps(ds)
  except Exception as e:  # pylint: disable=broad-except
    raise readers.DataError(
        f"The {name!r} reader cannot be sent to worker processes ({type(e).__name__}: {e}); "
        "use --config.data.worker_processes=0 (read threads).") from e


class InputWorkerError(readers.DataError):
  """An input worker process died (the kernel's OOM killer, a kill); one line naming the fix."""


_WORKER_DIED = "Worker process was terminated unexpectedly"


def _start_resource_tracker() -> None:
  """Starts Python's shared-memory resource tracker, if not running, without its warning.

  When a worker dies mid-batch, the segments it had created are unlinked by
  the tracker when the trainer exits (nothing is left in /dev/shm), but the
  tracker warns "There appear to be N leaked shared_memory objects" on the
  way: a handled failure must not read like a second one.
  """
  from multiprocessing import resource_tracker  # pylint: disable=g-import-not-at-top
  old = os.environ.get("PYTHONWARNINGS")
  os.environ["PYTHONWARNINGS"] = ",".join(
      w for w in (old, "ignore:resource_tracker:UserWarning") if w)
  try:
    resource_tracker.ensure_running()
  finally:
    if old is None:
      del os.environ["PYTHONWARNINGS"]
    else:
      os.environ["PYTHONWARNINGS"] = old


def _die_with_parent(parent_pid: int, worker_index: int, worker_count: int) -> None:
  """In each input worker (grain's ``worker_init_fn``): exit when the trainer is gone.

  A trainer killed with SIGKILL runs no cleanup, and its workers (~200 MB each)
  would live on, re-parented. A daemon thread polls the parent pid once a
  second; ``prctl(PR_SET_PDEATHSIG)`` is not used because it fires when the
  *thread* that started the worker exits, which need not be the trainer's end.
  """
  del worker_index, worker_count

  def watch():
    while True:
      if os.getppid() != parent_pid:
        os._exit(0)  # pylint: disable=protected-access
      time.sleep(1.0)

  threading.Thread(target=watch, name="die_with_parent", daemon=True).start()


def _iterate(dataset: grain.IterDataset, copy: bool,
             worker_processes: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields from grain's iterator (its workers start on the first next).

  With worker processes grain hands over arrays in shared memory; ``copy``
  makes them plain arrays at once, so no shared block outlives the iterator.
  A worker that dies becomes ``InputWorkerError`` (one line), and the
  iterator is closed: the other workers stop and their shared memory is freed.
  """
  it = iter(dataset)
  try:
    for batch in it:
      yield {k: np.array(v) for k, v in batch.items()} if copy else batch
  except RuntimeError as e:
    if not worker_processes or _WORKER_DIED not in str(e):
      raise
    code = re.search(r"exit code (-?\d+)", str(e))
    how = f"exit code {code.group(1)}" if code else "no exit code"
    if code and code.group(1) == "-9":
      how += ": killed, as the kernel's OOM killer does"
    raise InputWorkerError(
        f"An input worker process died ({how}); use fewer workers "
        f"(--config.data.worker_processes={max(0, worker_processes // 2)}; 0 reads in threads) "
        "or give the machine more memory, then rerun to resume.") from None
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      try:
        close()
      except AssertionError:  # grain 0.2.18 joins a worker it never started when one died
        pass
