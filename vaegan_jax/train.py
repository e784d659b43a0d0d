"""The training loop: ``train_and_evaluate(config, workdir)``.

Reads top to bottom: validate, build or restore the state, then step with
periodic logging, sample grids, evaluations (``config.eval_every``: FID, KID,
precision/recall and reconstruction metrics, ``vaegan_jax/evaluation``) and
checkpoints. Resuming is exact: the state
holds the step and the RNG key, and the input order is a pure function of
(seed, step). SIGTERM saves a checkpoint and returns; a non-finite loss stops
training without touching the last good checkpoint.
"""

from __future__ import annotations

import functools
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from vaegan_jax import checkpoint
from vaegan_jax import input_pipeline
from vaegan_jax import metric_writer
from vaegan_jax import models
from vaegan_jax import parallel
from vaegan_jax import train_step as ts
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import features as eval_features


class NonFiniteLossError(RuntimeError):
  """A loss became NaN/inf; the message names the step and the loss."""


class ConfigError(ValueError):
  """A config that can't work; the message is one line naming the fix."""


# Errors that the binary reports as one line, without a traceback.
USER_ERRORS = (ConfigError, input_pipeline.DataError, checkpoint.CheckpointError,
               NonFiniteLossError, eval_features.FeatureError)


def validate_config(config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """All checks that can fail, before anything compiles. Raises ConfigError/DataError."""
  try:
    return _validate(config)
  except input_pipeline.DataError:
    raise
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise ConfigError(str(e).strip().splitlines()[0]) from e


def _validate(config):
  arch = models.Architecture.from_config(config.model)
  arch.validate()
  ts.LossConfig.from_config(config).validate()
  if config.lr_schedule not in ("constant", "authors"):
    raise ValueError(f"lr_schedule must be 'constant' or 'authors', got {config.lr_schedule!r}.")
  for k in ("num_train_steps", "log_every", "checkpoint_every", "sample_every"):
    if int(config[k]) <= 0:
      raise ValueError(f"{k} must be positive, got {config[k]}; e.g. --config.{k}=100.")
  if int(config.get("eval_every", 0)) < 0:
    raise ValueError(f"eval_every must be >= 0 (0: off), got {config.eval_every}.")
  if config.get("eval_every") and int(config.get("eval_num", 0)) < 2:
    raise ValueError(f"eval_num must be >= 2, got {config.get('eval_num')}; e.g. "
                     "--config.eval_num=1000.")
  if config.get("eval_every"):
    try:
      eval_features.check_request(config.get("eval_features", "auto"),
                                  config.get("eval_inception_weights"))
    except eval_features.FeatureError as e:
      raise ValueError(str(e).replace("--features", "--config.eval_features").replace(
          "--inception_weights", "--config.eval_inception_weights")) from e
  parallel.check_batch_size(config.batch_size)
  if config.data.image_size != arch.image_size or config.data.channels != arch.channels:
    raise ValueError(
        f"data is {config.data.image_size}x{config.data.image_size}x{config.data.channels} but "
        f"the model expects {arch.image_size}x{arch.image_size}x{arch.channels}; set "
        "--config.data.image_size/channels and --config.model.image_size/channels alike.")
  info = input_pipeline.validate(config.data)
  if arch.num_attributes and len(info.attribute_names) != arch.num_attributes:
    raise ValueError(
        f"model.num_attributes={arch.num_attributes} but dataset {info.name!r} has "
        f"{len(info.attribute_names)} attributes; set --config.model.num_attributes="
        f"{len(info.attribute_names)}.")
  return info


class _Preemption:
  """Turns SIGTERM into a flag that the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting.")
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


@functools.lru_cache(maxsize=None)
def _grid_fns(arch: models.Architecture):
  nets = models.Networks.create(arch)

  @jax.jit
  def decode(var, z, y):
    return nets.decoder.apply(var, z, y, train=False)

  @jax.jit
  def reconstruct(var_enc, var_dec, x, y):
    mu, _ = nets.encoder.apply(var_enc, x, y, train=False)
    return nets.decoder.apply(var_dec, mu, y, train=False)

  return decode, reconstruct


def _write_grids(writer, state: ts.TrainState, config, z_fixed, eval_batch, step: int):
  arch = models.Architecture.from_config(config.model)
  decode, reconstruct = _grid_fns(arch)
  var = lambda g: {"params": state.params[g], "batch_stats": state.batch_stats[g]}
  y = eval_batch.get("attributes") if arch.num_attributes else None
  n = int(np.sqrt(len(z_fixed)))
  writer.write_grid(step, "samples", decode(var("decoder"), z_fixed, y), ncols=n)
  if "encoder" in state.params:
    x = eval_batch["image"]
    rec = reconstruct(var("encoder"), var("decoder"), x, y)
    # Rows alternate: inputs above their reconstructions.
    k = n
    rows = []
    for i in range(0, len(x) - k + 1, k):
      rows += [x[i:i + k], rec[i:i + k]]
    writer.write_grid(step, "reconstructions", np.concatenate(rows), ncols=k)


def _check_finite(rstate) -> None:
  bad_step = int(parallel.unreplicate(rstate.bad_step))
  if bad_step >= 0:
    names = ts.bad_terms_names(int(parallel.unreplicate(rstate.bad_terms)))
    raise NonFiniteLossError(
        f"Non-finite loss ({', '.join(names)}) at step {bad_step}; training stopped and the "
        "last good checkpoint is kept. Try a lower --config.learning_rate or "
        "--config.balance=True.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> ts.TrainState:
  """Trains ``config.kind`` until ``config.num_train_steps``; returns the host state."""
  info = validate_config(config)
  logging.info("Dataset %s: %d examples; %d devices, %d processes.", info.name,
               info.num_examples, jax.device_count(), jax.process_count())
  is_chief = jax.process_index() == 0
  mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
  state = ts.create_train_state(config, jax.random.PRNGKey(config.seed))
  if mngr.latest_step() is not None:
    state = checkpoint.restore_state(mngr, jax.device_get(state))
    logging.info("Resumed from step %d.", int(state.step))
  start = int(state.step)

  writer = metric_writer.MetricWriter(workdir, enabled=is_chief)
  arch = models.Architecture.from_config(config.model)
  keys = ("image", "attributes") if arch.num_attributes else ("image",)
  batches = input_pipeline.batch_iterator(
      config.data, config.data.train_split, config.batch_size, seed=config.seed,
      start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count())
  batches = parallel.prefetch_to_device(({k: b[k] for k in keys} for b in batches))
  n = int(np.sqrt(config.num_sample_images))
  z_fixed = jax.random.normal(jax.random.PRNGKey(config.seed + 1), (n * n, arch.z_dim))
  eval_batch = _eval_batch(config, n * n)

  extractor, no_features = _eval_features(config) if is_chief else (None, "")

  step_fn = ts.make_pmapped_step(config)
  rstate = parallel.replicate(state)
  del state
  window, t_log, step_log = [], time.time(), start
  total = config.num_train_steps
  with _Preemption() as preempt:
    for step in range(start, total):
      rstate, metrics = step_fn(rstate, next(batches))
      window.append(metrics)
      s = step + 1
      last = s == total or preempt.requested
      if s % config.log_every == 0 or last:
        _check_finite(rstate)
        means = {k: float(np.mean([np.asarray(m[k]).mean() for m in window]))
                 for k in window[0]}
        dt = time.time() - t_log
        ips = (s - step_log) * config.batch_size / max(dt, 1e-9)
        eta = (total - s) * dt / max(s - step_log, 1)
        writer.write_scalars(s, {**means, "images_per_sec": ips},
                             f"| {ips:.0f} img/s, ETA {eta / 60:.1f} min")
        window, t_log, step_log = [], time.time(), s
      if is_chief and (s % config.sample_every == 0 or last):
        _write_grids(writer, parallel.unreplicate(rstate), config, z_fixed, eval_batch, s)
      if is_chief and _eval_due(config, s, total) and not preempt.requested:
        _check_finite(rstate)
        _evaluate(writer, workdir, parallel.unreplicate(rstate), config, extractor, no_features)
      if s % config.checkpoint_every == 0 or last:
        _check_finite(rstate)
        checkpoint.save(mngr, parallel.unreplicate(rstate), config)
      if preempt.requested:
        logging.warning("Preempted: stopped after step %d, checkpoint %d saved.", s, s)
        break
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  return parallel.unreplicate(rstate)


def _eval_features(config):
  """(extractor, why none): resolved before the first step, so errors come early."""
  if not config.get("eval_every"):
    return None, ""
  return eval_features.resolve(config.get("eval_features", "auto"), config.data,
                               inception_weights=config.get("eval_inception_weights"))


def _eval_due(config, s: int, total: int) -> bool:
  every = int(config.get("eval_every", 0))
  return bool(every) and (s % every == 0 or s == total)


def _evaluate(writer, workdir, state, config, extractor, no_features) -> None:
  """One evaluation at ``state.step``: workdir/eval/step_<N>.json and eval/ scalars.

  A failing evaluation is logged and training goes on: a metric must never
  cost the run it measures.
  """
  try:
    report = evaluator.evaluate_state(state, config, num=int(config.eval_num),
                                      extractor=extractor, no_features_reason=no_features,
                                      seed=int(config.seed))
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Evaluation at step %d failed (%s: %s); training goes on.",
                    int(state.step), type(e).__name__, str(e).splitlines()[0][:300])
    return
  evaluator.write_report(workdir, report)
  writer.write_eval(report["step"], evaluator.scalars(report))
  for line in evaluator.format_table(report).splitlines():
    logging.info("%s", line)


def _eval_batch(config, num: int) -> dict:
  """A fixed batch of held-out images (first ``num`` of the eval split) for grids."""
  it = input_pipeline.batch_iterator(config.data, config.data.eval_split, num,
                                     seed=0, shuffle=False, drop_remainder=False)
  batch = next(iter(it))
  close = getattr(it, "close", None)
  if close:
    close()
  return {k: np.asarray(v) for k, v in batch.items() if k in ("image", "attributes")}
