"""The measured rows the timing binaries share (``benchmark``, ``loop_rate``, ``profile_step``):
configs, a fixed random batch, a timer and the bare pmapped step.

A row is ``<model>_<kind>``: ``paper64`` (the paper's 64x64x3 networks,
``configs/celeba_vaegan.py``) or ``default32`` (the default digits run's
32x32x1 networks), and a ``kind`` (vaegan, vae, vae_dis_l, gan). Nothing here
imports JAX at import time: ``profile_step`` sets XLA flags first.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import ml_collections
import numpy as np

from experiments.configs import celeba_vaegan
from experiments.configs import default
from vaegan_jax.runtime.errors import FlagError

MODELS = {"paper64": celeba_vaegan, "default32": default}


def row_config(name: str, *, batch_size: int, dtype: str = "float32",
               conv_impl: Optional[str] = None) -> ml_collections.ConfigDict:
  """The config of row ``name`` (e.g. 'paper64_vaegan') at this global batch and dtype."""
  model, _, kind = name.partition("_")
  if model not in MODELS or not kind:
    raise FlagError(f"Unknown row {name!r}: use <model>_<kind> with model in "
                    f"{sorted(MODELS)}, e.g. paper64_vaegan.")
  c = MODELS[model].get_config()
  c.kind = kind
  c.batch_size = batch_size
  c.model.dtype = dtype
  if conv_impl is not None:
    c.model.conv_impl = conv_impl
  return c


def random_batch(config: ml_collections.ConfigDict, n: int) -> dict:
  """{'image': (n, S, S, C) float32 uniform in [-1, 1]}, the same for every call."""
  s, c = config.model.image_size, config.model.channels
  return {"image": np.random.RandomState(0).uniform(-1, 1, (n, s, s, c)).astype(np.float32)}


def time_calls(fn: Callable[[], object], steps: int, warmup: int) -> np.ndarray:
  """Seconds of each of ``steps`` calls of ``fn`` (each waited for), after ``warmup`` calls."""
  import jax  # pylint: disable=g-import-not-at-top
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return np.asarray(times)


def build_step(config) -> tuple[Callable[[], object], Callable[[], str]]:
  """(run, hlo): run dispatches one pmapped train step on a fixed random batch;
  hlo returns the step's optimized HLO text (from JAX's cache once run has run)."""
  import jax  # pylint: disable=g-import-not-at-top

  from vaegan_jax import train_step  # pylint: disable=g-import-not-at-top
  from vaegan_jax.runtime import parallel  # pylint: disable=g-import-not-at-top

  parallel.check_batch_size(config.batch_size)
  state = train_step.create_train_state(config, jax.random.PRNGKey(0))
  batch = parallel.shard(random_batch(config, config.batch_size))
  step = train_step.make_pmapped_step(config)
  box = [parallel.replicate(state)]

  def run():
    box[0], metrics = step(box[0], batch)
    return metrics

  def hlo():
    compiled = step.lower(box[0], batch).compile()
    return compiled.as_text()

  return run, hlo
