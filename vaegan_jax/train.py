"""The training loop: ``train_and_evaluate(config, workdir)``.

Reads top to bottom: validate, lock the workdir, build or restore the state,
then step with periodic logging, sample grids, evaluations
(``config.eval_every``: FID, KID, precision/recall and reconstruction metrics,
``vaegan_jax/evaluation``) and checkpoints. Resuming is exact: the state holds
the step and the RNG key, and the input order is a pure function of
(seed, step).

Faults (docs/reliability.md has the table and the tests):
  * SIGTERM and SIGINT finish the current step, save it and return (exit 0);
    a second Ctrl-C exits at once. Under ``jax.distributed`` the processes
    agree on the stop step with an all-reduce of the flag before every step,
    so none is left waiting in a collective. At most two steps are in flight
    (one when a step takes over a second), so the save fits a ~30 s grace period.
  * A checkpoint is written only for a state whose own loss was seen finite:
    the state of step s is held on the host and saved after step s + 1's loss
    (computed from it) is finite; a preemption save checks that every
    parameter, optimizer and BN value is finite.
  * Every exit path finishes (or reports, as one line) the in-flight save.
  * Corrupt checkpoints are moved aside and the newest good one is resumed
    (``checkpoint.restore_latest``); one trainer per workdir (``workdir_lock``).
"""

from __future__ import annotations

import errno
import functools
import itertools
import math
import os
import time
from typing import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from vaegan_jax import checkpoint
from vaegan_jax import data
from vaegan_jax import metric_writer
from vaegan_jax import models
from vaegan_jax import parallel
from vaegan_jax import train_step as ts
from vaegan_jax import trainer_utils
from vaegan_jax import workdir_lock
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import features as eval_features
# Shared with the attribute classifier's loop; still importable as train.StopRequest.
from vaegan_jax.trainer_utils import StopRequest


class NonFiniteLossError(RuntimeError):
  """A loss became NaN/inf; the message names the step and the loss."""


class ConfigError(ValueError):
  """A config that can't work; the message is one line naming the fix."""


class DiskFullError(RuntimeError):
  """The workdir's disk filled up; the message names the newest checkpoint kept."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# Errors that the binary reports as one line, without a traceback.
USER_ERRORS = (ConfigError, data.DataError, checkpoint.CheckpointError,
               NonFiniteLossError, eval_features.FeatureError,
               workdir_lock.WorkdirLockedError, DiskFullError)

# A resumed run with another value of these is another experiment: refused
# unless --config.allow_config_change=True.
EXPERIMENT_FIELDS = ("kind", "data.name", "data.folder", "data.train_split",
                     "data.num_examples", "data.image_size", "data.channels",
                     "data.label_attributes", "model.num_attributes")
# Run-time settings that may change between runs without a word.
RUNTIME_FIELDS = ("num_train_steps", "log_every", "checkpoint_every", "sample_every",
                  "keep_checkpoints", "keep_best", "num_sample_images", "eval_every", "eval_num",
                  "eval_features", "eval_inception_weights", "allow_config_change",
                  "model.conv_impl", "data.data_dir", "data.manual_dir",
                  "steps_per_dispatch")


def validate_config(config: ml_collections.ConfigDict) -> data.DatasetInfo:
  """All checks that can fail, before anything compiles. Raises ConfigError/DataError."""
  try:
    return _validate(config)
  except data.DataError:
    raise
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise ConfigError(str(e).strip().splitlines()[0]) from e


def _validate(config):
  arch = models.Architecture.from_config(config.model)
  arch.validate()
  ts.LossConfig.from_config(config).validate()
  if config.lr_schedule not in ("constant", "authors"):
    raise ValueError(f"lr_schedule must be 'constant' or 'authors', got {config.lr_schedule!r}.")
  for k in ("num_train_steps", "log_every", "checkpoint_every", "sample_every",
            "steps_per_dispatch"):
    if int(config.get(k, 1)) <= 0:
      raise ValueError(f"{k} must be positive, got {config[k]}; e.g. "
                       f"--config.{k}={10 if k == 'steps_per_dispatch' else 100}.")
  if int(config.keep_checkpoints) < 1:
    raise ValueError(f"keep_checkpoints must be >= 1 (it would delete every checkpoint), "
                     f"got {config.keep_checkpoints}; e.g. --config.keep_checkpoints=3.")
  lr = float(config.learning_rate)
  if not (math.isfinite(lr) and lr > 0):
    raise ValueError(f"learning_rate must be a positive number, got {config.learning_rate}; "
                     "e.g. --config.learning_rate=3e-4.")
  if int(config.get("eval_every", 0)) < 0:
    raise ValueError(f"eval_every must be >= 0 (0: off), got {config.eval_every}.")
  if config.get("keep_best"):
    evaluator.best_metric(config.keep_best)
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
  info = data.validate(config.data)
  if config.batch_size > info.num_examples:
    raise ValueError(
        f"batch_size={config.batch_size} is larger than the {info.num_examples} examples of "
        f"{info.name!r} split {config.data.train_split!r}; use --config.batch_size="
        f"{max(jax.device_count(), info.num_examples // jax.device_count() * jax.device_count())}"
        " or more data.")
  if arch.num_attributes and len(info.attribute_names) != arch.num_attributes:
    raise ValueError(
        f"model.num_attributes={arch.num_attributes} but dataset {info.name!r} has "
        f"{len(info.attribute_names)} attributes; set --config.model.num_attributes="
        f"{len(info.attribute_names)}.")
  return info


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


def _window_means(window: list[dict]) -> dict[str, float]:
  """Each metric's mean over the steps since the last log line.

  One ``device_get`` of the whole window starts every copy before waiting for
  any: fetching the arrays one at a time cost about 4 ms per step on an H200
  (12 blocking copies of ~0.3 ms each), more than the digits step itself
  (docs/performance.md). A jitted mean would compile again for every window
  length.
  """
  host = jax.device_get(window)  # (devices,) or (devices, k) per dispatch: mean over steps
  return {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in host]))) for k in host[0]}


def _save_on_failure(mngr, rstate, pending, config, s: int, start: int) -> str:
  """Saves the last finished step (checked finite) after an input failure; says what is kept."""
  if s == start:
    return f"Nothing new to save; {_kept(mngr)}."
  try:
    _check_finite(rstate, mngr)
    checkpoint.save(mngr, pending or _finite_host_state(rstate, mngr), config)
    checkpoint.check_saves(mngr)
  except (NonFiniteLossError, checkpoint.CheckpointError) as e:
    return f"Step {s} was not saved ({str(e).splitlines()[0][:200]})."
  return f"Step {s} is saved (checkpoint {s})."


def dispatch_sizes(config, start: int, total: int, k: int) -> Iterator[int]:
  """Steps per dispatch from ``start`` (``config.steps_per_dispatch`` = k > 1).

  At most k, and every block ends where the loop logs, writes grids, evaluates
  or checkpoints, so those happen at the same steps as with k = 1; then blocks
  of k for the final probe (and the prefetcher's read-ahead). Each distinct
  length compiles once: k dividing every ``*_every`` keeps it to one (plus the
  last block, and the first after resuming from a step that k does not divide).
  """
  every = [int(config[f]) for f in ("log_every", "sample_every", "checkpoint_every")]
  every += [int(config.eval_every)] if int(config.get("eval_every", 0)) else []
  s = start
  while s < total:
    n = min([k, total - s] + [e - s % e for e in every])
    yield n
    s += n
  while True:
    yield k


def _save_pending(mngr, rstate, pending, config) -> None:
  """Saves ``pending`` (the host state of step p) unless its own loss, computed by
  the dispatch after it (``rstate``), was non-finite: then raises, naming it."""
  bad = int(parallel.unreplicate(rstate.bad_step))
  if 0 <= bad <= int(pending.step):
    _check_finite(rstate, mngr)
  checkpoint.save(mngr, pending, config)


def _kept(mngr) -> str:
  """What a stop keeps on disk, said truthfully: the newest checkpoint, or none."""
  steps = mngr.all_steps() if mngr is not None else []
  return (f"the last good checkpoint, {max(steps)}, is kept" if steps
          else "no checkpoint had been saved yet")


def _check_finite(rstate, mngr=None) -> None:
  bad_step = int(parallel.unreplicate(rstate.bad_step))
  if bad_step >= 0:
    names = ts.bad_terms_names(int(parallel.unreplicate(rstate.bad_terms)))
    raise NonFiniteLossError(
        f"Non-finite loss ({', '.join(names)}) at step {bad_step}; training stopped and "
        f"{_kept(mngr)}. Try a lower --config.learning_rate or --config.balance=True.")


def _finite_host_state(rstate, mngr=None) -> ts.TrainState:
  """The host copy of the state, refused if any value in it is NaN/inf."""
  # An owned copy: on CPU the unreplicated arrays may be views of device buffers
  # that the next step (donating its input) overwrites.
  state = jax.tree.map(np.array, parallel.unreplicate(rstate))
  for group in ("params", "opt_state", "batch_stats"):
    for path, leaf in jax.tree_util.tree_flatten_with_path(getattr(state, group))[0]:
      leaf = np.asarray(leaf)
      if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
        raise NonFiniteLossError(
            f"Non-finite {group}{jax.tree_util.keystr(path)} after step {int(state.step)}; "
            f"training stopped and {_kept(mngr)}. Try a lower --config.learning_rate.")
  return state


def _check_not_a_file(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} is a file, not a directory; choose another "
                      "--workdir.")


def _check_workdir(workdir: str) -> None:
  _check_not_a_file(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"Cannot write to --workdir={workdir} ({type(e).__name__}: "
                      f"{e.strerror or e}); choose a writable directory.") from e


def _flat(config) -> dict:
  """Dotted keys -> values (tuples as lists), for comparing configs."""
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, prefix + k + ".")
      else:
        out[prefix + k] = list(v) if isinstance(v, (tuple, list)) else v
  walk(config.to_dict() if hasattr(config, "to_dict") else config, "")
  return out


def check_config_change(saved, config) -> list[str]:
  """Differences between a checkpoint's config and ``config`` that matter.

  Returns the changed fields ('field: saved -> now'); raises ConfigError when
  one of them makes the resumed run another experiment (EXPERIMENT_FIELDS),
  unless ``config.allow_config_change``.
  """
  old, new = _flat(saved), _flat(config)
  changed = [k for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and k not in RUNTIME_FIELDS]
  lines = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
  refused = [k for k in changed if k in EXPERIMENT_FIELDS]
  if refused and not config.get("allow_config_change", False):
    raise ConfigError(
        f"The checkpoint was trained with another experiment ({'; '.join(lines)}); use a fresh "
        "--workdir, or --config.allow_config_change=True to go on anyway.")
  return lines


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Every check that training makes before compiling, nothing written; a summary.

  Raises the same one-line errors as ``train_and_evaluate``.
  """
  info = validate_config(config)
  _check_not_a_file(workdir)  # Nothing created: a dry run writes nothing.
  steps = checkpoint.manager(workdir, read_only=True).all_steps() if os.path.isdir(
      checkpoint.checkpoint_dir(workdir)) else []
  resume = f"resumes from step {max(steps)}" if steps else "starts from scratch"
  return (f"{config}\n"
          f"dry run: {config.kind} on {info.name} split {config.data.train_split!r}: "
          f"{info.num_examples} examples of {info.image_size}x{info.image_size}x{info.channels}; "
          f"{config.num_train_steps} steps of batch {config.batch_size} on "
          f"{jax.device_count()} device(s); {os.path.abspath(workdir)} {resume}. "
          "Everything checks out; nothing was trained.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> ts.TrainState:
  """Trains ``config.kind`` until ``config.num_train_steps``; returns the host state."""
  # From the first line on, a SIGTERM/SIGINT is a clean stop (exit 0), not a kill.
  with StopRequest() as stop:
    return _train_locked(config, workdir, stop)


def _train_locked(config, workdir: str, stop: StopRequest) -> ts.TrainState:
  info = validate_config(config)
  _check_workdir(workdir)
  hint = trainer_utils.unused_accelerator(jax.default_backend())
  if hint:
    logging.warning("%s", hint)
  logging.info("Training %s for %d steps of batch %d (%d per device, %s compute, %d step(s) per "
               "dispatch) on %s split %r (%d examples, %dx%dx%d) on %d %s device(s) (%s), "
               "%d process(es); outputs in %s.", config.kind, config.num_train_steps,
               config.batch_size, config.batch_size // jax.device_count(),
               config.model.get("dtype", "float32"), int(config.get("steps_per_dispatch", 1)),
               info.name, config.data.train_split, info.num_examples, info.image_size,
               info.image_size, info.channels, jax.device_count(),
               jax.devices()[0].platform.upper(), jax.devices()[0].device_kind,
               jax.process_count(), os.path.abspath(workdir))
  is_chief = jax.process_index() == 0
  lock = workdir_lock.WorkdirLock(workdir)
  if is_chief:
    lock.acquire()
  try:
    return _train(config, workdir, is_chief, stop)
  finally:
    lock.release()


def _restore(config, workdir: str, is_chief: bool) -> tuple[ts.TrainState, bool]:
  """(state, resumed): the newest good checkpoint, else a fresh state."""
  state = ts.create_train_state(config, jax.random.PRNGKey(config.seed))
  try:
    restored = checkpoint.restore_latest(workdir, jax.device_get(state), quarantine=is_chief)
  except checkpoint.CorruptCheckpointError:
    raise
  except checkpoint.CheckpointError:
    # Another parameter tree: if the config says why (another kind, other data), say that.
    try:
      saved, _ = checkpoint.read_config(workdir, verify=False)
    except checkpoint.CheckpointError:
      saved = None
    if saved is not None:
      check_config_change(saved, config)
    raise
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.assert_equal(
        np.int64(-1 if restored is None else restored.step),
        "The processes found different checkpoints to resume from; is --workdir shared?")
  if restored is None:
    return state, False
  for line in check_config_change(restored.config, config):
    logging.warning("Resuming with a changed config: %s", line)
  logging.info("Resumed from step %d.", restored.step)
  return restored.state, True


def _train(config, workdir: str, is_chief: bool, stop: StopRequest) -> ts.TrainState:
  state, _ = _restore(config, workdir, is_chief)
  start = int(state.step)
  if stop.requested and jax.process_count() == 1:  # before anything costly
    logging.warning("Stopped (%s) before the first step; nothing new to save.",
                    stop.signal_name)
    return state
  try:  # Before the first step, so that errors come early; may train a classifier.
    extractor, no_features = _eval_features(config) if is_chief else (None, "")
  except trainer_utils.Preempted as e:  # a preemption, wherever it lands: exit 0
    logging.warning("%s No training step was run; checkpoint %s is the newest.", e,
                    start if start else "none")
    return state
  mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
  # The best checkpoint by an evaluation metric: every evaluated step is saved, and
  # a record names the best one, which pruning keeps.
  keep_best = config.get("keep_best") if config.get("eval_every") else None
  if keep_best and is_chief:
    evaluator.refresh_best(workdir, keep_best, list(mngr.all_steps()))
  pending_best = None  # the record to write once the pending state is saved

  writer = metric_writer.MetricWriter(workdir, enabled=is_chief)
  arch = models.Architecture.from_config(config.model)
  keys = ("image", "attributes") if arch.num_attributes else ("image",)
  host_batches = data.batch_iterator(
      config.data, config.data.train_split, config.batch_size, seed=config.seed,
      start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count(),
      worker_processes=config.data.get("worker_processes", 0))
  per_step = ({k: b[k] for k in keys} for b in host_batches)
  k_dispatch = int(config.get("steps_per_dispatch", 1))
  if k_dispatch > 1 and jax.default_backend() == "cpu":
    logging.warning("steps_per_dispatch=%d on CPU: XLA:CPU runs a scanned step about 9x "
                    "slower than single steps (docs/performance.md); use 1 on CPU.", k_dispatch)
  if k_dispatch == 1:
    batches = parallel.prefetch_to_device(per_step)
  else:  # blocks of k batches, cut at every boundary where the loop acts
    sizes = dispatch_sizes(config, start, config.num_train_steps, k_dispatch)
    batches = parallel.prefetch_to_device(
        (list(itertools.islice(per_step, n)) for n in sizes), put=parallel.shard_block)
  n = int(np.sqrt(config.num_sample_images))
  z_fixed = jax.random.normal(jax.random.PRNGKey(config.seed + 1), (n * n, arch.z_dim))
  eval_batch = _eval_batch(config, n * n)

  step_fn = ts.make_pmapped_step(config, block=k_dispatch > 1)
  rstate = parallel.replicate(state)
  del state
  window = []
  total = config.num_train_steps
  progress = trainer_utils.Progress(start, total, config.batch_size)
  in_flight = trainer_utils.InFlight()
  pending = None  # host state of a checkpoint step, saved once the next loss is finite
  s, early_done = start, False
  try:
    while s < total and not stop.agreed(rstate):
      t_wait = time.time()
      try:
        batch = next(batches)
      except data.InputWorkerError as e:  # as a preemption: keep the step reached
        kept = _save_on_failure(mngr, rstate, pending, config, s, start)
        raise data.InputWorkerError(f"{e} {kept}") from None
      progress.waited(time.time() - t_wait)
      rstate, metrics = step_fn(rstate, batch)
      s += 1 if k_dispatch == 1 else batch["image"].shape[1]
      if not progress.has_compiled:  # Rates and ETAs count from here: compiling is not training.
        jax.block_until_ready(metrics)
        progress.compiled(s)
      in_flight.add(metrics)
      window.append(metrics)
      if pending is not None:  # this dispatch's first loss came from the pending state
        _save_pending(mngr, rstate, pending, config)
        pending, pending_best = None, _record_best(workdir, pending_best)
        _check_finite(rstate, mngr)
      # Also an early line 10 steps after compiling, when log_every is long (the
      # 64x64 configs on CPU would otherwise be silent for many minutes).
      early = config.log_every > 10 and not early_done and s >= start + 11
      early_done = early_done or early
      if s % config.log_every == 0 or s == total or early:
        _check_finite(rstate, mngr)
        checkpoint.check_saves(mngr)
        means = _window_means(window)  # waits for the window's last step
        rate, text = progress.window(s)  # nothing for the compiling step alone
        writer.write_scalars(s, {**means, **rate}, text)
        window = []
      if is_chief and (s % config.sample_every == 0 or s == total):
        _write_grids(writer, parallel.unreplicate(rstate), config, z_fixed, eval_batch, s)
      if is_chief and _eval_due(config, s, total) and not stop.requested:
        _check_finite(rstate, mngr)
        report = _evaluate(writer, workdir, parallel.unreplicate(rstate), config, extractor,
                           no_features)
        if keep_best and report:
          pending_best = evaluator.best_record(report, keep_best, checkpoint.read_best(workdir))
      if (s % config.checkpoint_every == 0 or s == total
          or (keep_best and _eval_due(config, s, total))):  # every process knows this
        pending = _finite_host_state(rstate, mngr)
    # Every process takes the same branch: a stop they agreed on ends the loop early;
    # a signal that came after the last agreement is a stop on one process only.
    stopped = s < total or (stop.requested and jax.process_count() == 1)
    if pending is not None and not stopped:
      # The last state's own loss: one more dispatch, whose update is discarded.
      probe, _ = step_fn(rstate, next(batches))
      rstate = None
      _save_pending(mngr, probe, pending, config)
      _record_best(workdir, pending_best)
    elif s > start and stopped:
      # No time to wait for another step: save what every value checks finite.
      _check_finite(rstate, mngr)
      checkpoint.save(mngr, pending or _finite_host_state(rstate, mngr), config)
      if pending is not None:
        _record_best(workdir, pending_best)
    checkpoint.finish(mngr)
  except BaseException as e:
    checkpoint.finish(mngr, quiet=True)  # the in-flight save completes or is reported
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
      kept = checkpoint.manager(workdir, read_only=True).latest_step()
      raise DiskFullError(
          f"Disk full writing {e.filename or workdir} ({e.strerror}); the newest "
          f"checkpoint, {kept}, is kept: free space and rerun to resume") from e
    raise
  finally:
    host_batches.close()  # Stops the input workers (threads or processes).
    try:
      writer.close()
    except OSError as e:
      logging.warning("Could not close the metric writer: %s", e)
  if stop.requested and s > start:
    logging.warning("Preempted (%s): stopped after step %d, checkpoint %d saved.",
                    stop.signal_name or "another process", s, s)
  elif stop.requested:
    logging.warning("Stopped before the first step; nothing new to save.")
  return pending if rstate is None else parallel.unreplicate(rstate)


def _eval_features(config):
  """(extractor, why none): resolved before the first step, so errors come early."""
  if not config.get("eval_every"):
    return None, ""
  return eval_features.resolve(config.get("eval_features", "auto"), config.data,
                               inception_weights=config.get("eval_inception_weights"))


def _eval_due(config, s: int, total: int) -> bool:
  every = int(config.get("eval_every", 0))
  return bool(every) and (s % every == 0 or s == total)


def _record_best(workdir: str, record) -> None:
  """Names a just-saved step the best checkpoint (its save is in flight: a record whose
  step never lands is rebuilt at the next start, ``evaluator.refresh_best``)."""
  if record is not None:
    checkpoint.write_best(workdir, record)
    logging.info("Best checkpoint by %s: step %d (%.4g).", record["metric"], record["step"],
                 record["value"])


def _evaluate(writer, workdir, state, config, extractor, no_features):
  """One evaluation at ``state.step``: workdir/eval/step_<N>.json and eval/ scalars.

  Returns the report, or None: a failing evaluation is logged and training
  goes on, as a metric must never cost the run it measures.
  """
  try:
    report = evaluator.evaluate_state(state, config, num=int(config.eval_num),
                                      extractor=extractor, no_features_reason=no_features,
                                      seed=int(config.seed))
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Evaluation at step %d failed (%s: %s); training goes on.",
                    int(state.step), type(e).__name__, str(e).splitlines()[0][:300])
    return None
  evaluator.write_report(workdir, report)
  writer.write_eval(report["step"], evaluator.scalars(report))
  for line in evaluator.format_table(report).splitlines():
    logging.info("%s", line)
  return report


def _eval_batch(config, num: int) -> dict:
  """A fixed batch of held-out images (first ``num`` of the eval split) for grids."""
  it = data.batch_iterator(config.data, config.data.eval_split, num,
                                     seed=0, shuffle=False, drop_remainder=False)
  batch = next(iter(it))
  close = getattr(it, "close", None)
  if close:
    close()
  return {k: np.asarray(v) for k, v in batch.items() if k in ("image", "attributes")}
