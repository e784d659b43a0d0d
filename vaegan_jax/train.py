"""The training loop: ``train_and_evaluate(config, workdir)``.

Reads top to bottom: ``train_and_evaluate``, which checks the config and the
workdir (``train_config``: the settings and the data before anything
compiles, a resumed checkpoint's config against this one), locks the
workdir, builds or restores the state and runs the loop (``_train``); the
loop's pieces in the order it runs them (one dispatch, then the log line,
grids, evaluation and checkpoint due at that step, then the final save);
last, their helpers. Evaluations
(``config.eval_every``: FID, KID, precision/recall and reconstruction metrics)
are ``vaegan_jax/evaluation``'s; the grids are decoded by ``vaegan_jax/sampling``.
Resuming is exact: the state holds the step and the RNG key, and the input
order is a pure function of (seed, step).

Faults (docs/reliability.md has the table and the tests):
  * SIGTERM and SIGINT finish the current step, save it and return (exit 0);
    a second Ctrl-C exits at once. Under ``jax.distributed`` the processes
    agree on the stop step with an all-reduce of the flag, dispatched with
    each step and read one dispatch later (``loop.StopRequest.agreed``), so
    none is left waiting in a collective and no step waits for the host. At
    most two steps are in flight (one when a step takes over a second), so the
    save fits a ~30 s grace period.
  * A checkpoint is written only for a state whose own loss was seen finite:
    the state of step s is held on the host and saved after step s + 1's loss
    (computed from it) is finite; a preemption save checks that every
    parameter, optimizer and BN value is finite.
  * Every exit path finishes (or reports, as one line) the in-flight save.
  * Corrupt checkpoints are moved aside and the newest good one is resumed
    (``checkpoint.restore_latest``); one trainer per workdir (``workdir_lock``).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any, Callable, Iterator, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from vaegan_jax import data
from vaegan_jax import models
from vaegan_jax import sampling
from vaegan_jax import train_config
from vaegan_jax import train_step
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import reports
from vaegan_jax.evaluation import features as eval_features
from vaegan_jax.runtime import best_checkpoint
from vaegan_jax.runtime import checkpoint
from vaegan_jax.runtime import image_grid
from vaegan_jax.runtime import io_errors
from vaegan_jax.runtime import loop
from vaegan_jax.runtime import metric_writer
from vaegan_jax.runtime import parallel
from vaegan_jax.runtime import workdir_lock
from vaegan_jax.runtime.errors import UserError


class NonFiniteLossError(UserError, RuntimeError):
  """A loss became NaN/inf; the message names the step and the loss."""


class DiskFullError(UserError, RuntimeError):
  """The workdir's disk filled up; the message names the newest checkpoint kept."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_step.TrainState:
  """Trains ``config.kind`` until ``config.num_train_steps``; returns the host state."""
  # From the first line on, a SIGTERM/SIGINT is a clean stop (exit 0), not a kill.
  with loop.StopRequest() as stop:
    return _train_locked(config, workdir, stop)


def _train_locked(config, workdir: str, stop: loop.StopRequest) -> train_step.TrainState:
  info = train_config.validate_config(config)
  train_config.check_workdir(workdir)
  hint = loop.unused_accelerator(jax.default_backend())
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
    return _train(config, workdir, is_chief, stop, info.num_examples)
  finally:
    lock.release()


def _restore(config, workdir: str, is_chief: bool) -> tuple[train_step.TrainState, bool]:
  """(state, resumed): the newest good checkpoint, else a fresh state."""
  state = train_step.create_train_state(config, jax.random.PRNGKey(config.seed))
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
      train_config.check_config_change(saved, config)
    raise
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.assert_equal(
        np.int64(-1 if restored is None else restored.step),
        "The processes found different checkpoints to resume from; is --workdir shared?")
  if restored is None:
    return state, False
  for line in train_config.check_config_change(restored.config, config):
    logging.warning("Resuming with a changed config: %s", line)
  logging.info("Resumed from step %d.", restored.step)
  return restored.state, True


def _train(config, workdir: str, is_chief: bool, stop: loop.StopRequest,
           num_examples: int) -> train_step.TrainState:
  state, resumed = _restore(config, workdir, is_chief)
  start = int(state.step)
  if is_chief:
    train_config.check_data_unchanged(workdir, config.data, num_examples, resumed)
  if stop.requested and jax.process_count() == 1:  # before anything costly
    logging.warning("Stopped (%s) before the first step; nothing new to save.",
                    stop.signal_name)
    return state
  try:  # Before the first step, so that errors come early; may train a classifier.
    extractor, no_features = _eval_features(config) if is_chief else (None, "")
  except loop.Preempted as e:  # a preemption, wherever it lands: exit 0
    logging.warning("%s No training step was run; checkpoint %s is the newest.", e,
                    start if start else "none")
    return state
  run = _Run.create(config, workdir, is_chief, start, extractor, no_features)
  host_batches, batches = _device_batches(config, start, run.arch.num_attributes)
  carry = _Carry(replicated=parallel.replicate(state), step=start,
                 progress=loop.Progress(start, run.total, config.batch_size))
  del state
  try:
    while carry.step < run.total and not stop.agreed(carry.replicated):
      _dispatch(run, carry, batches)
      _after_dispatch(run, carry, stop)
    _final_save(run, carry, batches, stop)
    checkpoint.finish(run.mngr)
  except BaseException as e:
    checkpoint.finish(run.mngr, quiet=True)  # the in-flight save completes or is reported
    if isinstance(e, OSError) and e.errno in io_errors.DISK_FULL:
      kept = checkpoint.manager(workdir, read_only=True).latest_step()
      raise DiskFullError(
          f"Disk full writing {e.filename or workdir} ({e.strerror}); the newest "
          f"checkpoint, {kept}, is kept: free space and rerun to resume") from e
    raise
  finally:
    host_batches.close()  # Stops the input workers (threads or processes).
    try:
      run.writer.close()
    except OSError as e:
      logging.warning("Could not close the metric writer: %s", e)
  if stop.requested and carry.step > start:
    logging.warning("Preempted (%s): stopped after step %d, checkpoint %d saved.",
                    stop.signal_name or "another process", carry.step, carry.step)
  elif stop.requested:
    logging.warning("Stopped before the first step; nothing new to save.")
  if carry.replicated is None:  # the final probe consumed it; the saved state is the result
    return carry.pending
  return parallel.unreplicate(carry.replicated)


# ----------------------------------------------------------------------------
# The loop's pieces, in the order it runs them.


@dataclasses.dataclass(frozen=True)
class _Run:
  """What stays the same for the whole run."""
  config: ml_collections.ConfigDict
  workdir: str
  is_chief: bool
  start: int
  total: int
  steps_per_dispatch: int
  mngr: checkpoint.Manager
  writer: metric_writer.MetricWriter
  keep_best: Optional[str]  # the metric that names the best checkpoint, or None
  extractor: Any  # the evaluation's feature extractor (chief only), or None
  no_features: str  # why there is none
  z_fixed: jax.Array  # (n * n, Z) the grids' prior samples, the same at every step
  eval_batch: dict  # the grids' held-out images, (n * n, H, W, C)
  arch: models.Architecture
  step_fn: Callable

  @classmethod
  def create(cls, config, workdir: str, is_chief: bool, start: int, extractor,
             no_features: str) -> "_Run":
    mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    # The best checkpoint by an evaluation metric: every evaluated step is saved, and
    # a record names the best one, which pruning keeps.
    keep_best = config.get("keep_best") if config.get("eval_every") else None
    if keep_best and is_chief:
      reports.refresh_best(workdir, keep_best, list(mngr.all_steps()))
    writer = metric_writer.MetricWriter(workdir, enabled=is_chief)
    k = int(config.get("steps_per_dispatch", 1))
    if k > 1 and jax.default_backend() == "cpu":
      logging.warning("steps_per_dispatch=%d on CPU: XLA:CPU runs a scanned step about 9x "
                      "slower than single steps (docs/performance.md); use 1 on CPU.", k)
    arch = models.Architecture.from_config(config.model)
    n = int(np.sqrt(config.num_sample_images))
    z_fixed = sampling.prior_sample(jax.random.PRNGKey(config.seed + 1), n * n, arch.z_dim)
    return cls(config=config, workdir=workdir, is_chief=is_chief, start=start,
               total=config.num_train_steps, steps_per_dispatch=k, mngr=mngr, writer=writer,
               keep_best=keep_best, extractor=extractor, no_features=no_features,
               z_fixed=z_fixed, eval_batch=_eval_batch(config, n * n), arch=arch,
               step_fn=train_step.make_pmapped_step(config, block=k > 1))


@dataclasses.dataclass
class _Carry:
  """What the loop carries from one dispatch to the next.

  Attributes:
    replicated: the TrainState on every device; None once the final probe took it.
    step: the step reached (dispatched).
    progress: images/s, input wait and ETA of each log window; its clock starts
      here, so compiling is timed from the loop's start.
    in_flight: bounds the dispatched steps not yet finished.
    pending: the host state of a checkpoint step, saved once the next loss
      (computed from it) is seen finite.
    pending_best: the best-checkpoint record naming ``pending``'s step, written
      once it is saved.
    window: each dispatch's metrics since the last log line.
    early_line_done: whether the early log line (10 steps after compiling) came.
  """
  replicated: Any
  step: int
  progress: loop.Progress
  in_flight: loop.InFlight = dataclasses.field(default_factory=loop.InFlight)
  pending: Optional[train_step.TrainState] = None
  pending_best: Optional[dict] = None
  window: list = dataclasses.field(default_factory=list)
  early_line_done: bool = False


def _device_batches(config, start: int, num_attributes: int):
  """(the host iterator, to close; device batches from ``start``: one step's each, or
  blocks of steps cut at every boundary where the loop acts)."""
  keys = ("image", "attributes") if num_attributes else ("image",)
  host_batches = data.batch_iterator(
      config.data, config.data.train_split, config.batch_size, seed=config.seed,
      start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count(),
      worker_processes=config.data.get("worker_processes", 0))
  per_step = ({k: b[k] for k in keys} for b in host_batches)
  k = int(config.get("steps_per_dispatch", 1))
  if k == 1:
    return host_batches, parallel.prefetch_to_device(per_step)
  sizes = dispatch_sizes(config, start, config.num_train_steps, k)
  return host_batches, parallel.prefetch_to_device(
      (list(itertools.islice(per_step, n)) for n in sizes), put=parallel.shard_block)


def _dispatch(run: _Run, carry: _Carry, batches) -> None:
  """One dispatch (one step, or a block of them); then the pending checkpoint is saved,
  its own loss being known."""
  t_wait = time.time()
  batch = _next_batch(run, carry, batches)
  carry.progress.waited(time.time() - t_wait)
  carry.replicated, metrics = run.step_fn(carry.replicated, batch)
  carry.step += 1 if run.steps_per_dispatch == 1 else batch["image"].shape[1]
  if not carry.progress.has_compiled:  # Rates and ETAs count from here: compiling is not training.
    jax.block_until_ready(metrics)
    carry.progress.compiled(carry.step)
  carry.in_flight.add(metrics)
  carry.window.append(metrics)
  if carry.pending is not None:  # this dispatch's first loss came from the pending state
    _save_pending(run.mngr, carry.replicated, carry.pending, run.config)
    carry.pending, carry.pending_best = None, _record_best(run.workdir, carry.pending_best)
    _check_finite(carry.replicated, run.mngr)


def _after_dispatch(run: _Run, carry: _Carry, stop: loop.StopRequest) -> None:
  """The log line, grids, evaluation and checkpoint due at this step."""
  config, s, total = run.config, carry.step, run.total
  # Also an early line 10 steps after compiling, when log_every is long (the
  # 64x64 configs on CPU would otherwise be silent for many minutes).
  early = config.log_every > 10 and not carry.early_line_done and s >= run.start + 11
  carry.early_line_done = carry.early_line_done or early
  if s % config.log_every == 0 or s == total or early:
    _check_finite(carry.replicated, run.mngr)
    checkpoint.check_saves(run.mngr)
    means = _window_means(carry.window)  # waits for the window's last step
    rate, text = carry.progress.window(s)  # nothing for the compiling step alone
    run.writer.write_scalars(s, {**means, **rate}, text)
    carry.window = []
  if run.is_chief and (s % config.sample_every == 0 or s == total):
    _write_grids(run.writer, parallel.unreplicate(carry.replicated), config, run.z_fixed,
                 run.eval_batch, s)
  if run.is_chief and _eval_due(config, s, total) and not stop.requested:
    _check_finite(carry.replicated, run.mngr)
    report = _evaluate(run.writer, run.workdir, parallel.unreplicate(carry.replicated), config,
                       run.extractor, run.no_features)
    if run.keep_best and report:
      carry.pending_best = reports.best_record(report, run.keep_best,
                                                 best_checkpoint.read_best(run.workdir))
  if (s % config.checkpoint_every == 0 or s == total
      or (run.keep_best and _eval_due(config, s, total))):  # every process knows this
    carry.pending = _finite_host_state(carry.replicated, run.mngr)


def _final_save(run: _Run, carry: _Carry, batches, stop: loop.StopRequest) -> None:
  """The last checkpoint: at the end, the pending state once its own loss is seen; after
  a stop, what every value checks finite, without waiting for another step."""
  # Every process takes the same branch: a stop they agreed on ends the loop early;
  # a signal that came after the last agreement is a stop on one process only.
  stopped = carry.step < run.total or (stop.requested and jax.process_count() == 1)
  if carry.pending is not None and not stopped:
    # The last state's own loss: one more dispatch, whose update is discarded.
    probe, _ = run.step_fn(carry.replicated, _next_batch(run, carry, batches))
    carry.replicated = None
    _save_pending(run.mngr, probe, carry.pending, run.config)
    _record_best(run.workdir, carry.pending_best)
  elif carry.step > run.start and stopped:
    _save_reached(run, carry)


# ----------------------------------------------------------------------------
# Helpers of the pieces above.


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


def _write_grids(writer, state: train_step.TrainState, config, z_fixed, eval_batch, step: int):
  """The sample and reconstruction grids of ``state`` (host, unreplicated).

  Decoded by the sampler, as ``experiments.sample`` decodes: one call for the
  whole grid (chunk_size = its size), compiled once per architecture.
  """
  sampler = sampling.Sampler.from_state(config, state, chunk_size=max(1, len(z_fixed)))
  y = eval_batch.get("attributes") if sampler.arch.num_attributes else None
  n = int(np.sqrt(len(z_fixed)))
  writer.write_grid(step, "samples", sampler.decode(z_fixed, y), ncols=n)
  if "encoder" in state.params:
    x = eval_batch["image"]
    rec, _ = sampling.reconstruct(sampler, x, y=y)
    m = len(x) // n * n  # whole rows only
    writer.write_grid(step, "reconstructions",
                      image_grid.interleave_rows(x[:m], np.asarray(rec)[:m], n), ncols=n)


def _eval_features(config):
  """(extractor, why none): resolved before the first step, so errors come early."""
  if not config.get("eval_every"):
    return None, ""
  try:
    extractor, why = eval_features.resolve(config.get("eval_features", "auto"), config.data,
                                           inception_weights=config.get("eval_inception_weights"))
  except eval_features.FeatureError as e:
    raise train_config.ConfigError(train_config.as_config_fields(str(e))) from e
  return extractor, train_config.as_config_fields(why)


def _eval_due(config, s: int, total: int) -> bool:
  every = int(config.get("eval_every", 0))
  return bool(every) and (s % every == 0 or s == total)


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
  reports.write_report(workdir, report)
  writer.write_eval(report["step"], reports.scalars(report))
  for line in reports.format_table(report).splitlines():
    logging.info("%s", line)
  return report


def _record_best(workdir: str, record) -> None:
  """Names a just-saved step the best checkpoint (its save is in flight: a record whose
  step never lands is rebuilt at the next start, ``reports.refresh_best``)."""
  if record is not None:
    best_checkpoint.write_best(workdir, record)
    logging.info("Best checkpoint by %s: step %d (%.4g).", record["metric"], record["step"],
                 record["value"])


def _eval_batch(config, num: int) -> dict:
  """A fixed batch of held-out images (first ``num`` of the eval split) for grids."""
  it = data.batch_iterator(config.data, config.data.eval_split, num, seed=0, shuffle=False,
                           drop_remainder=False)
  batch = next(iter(it))
  close = getattr(it, "close", None)
  if close:
    close()
  return {k: np.asarray(v) for k, v in batch.items() if k in ("image", "attributes")}


def _save_pending(mngr, replicated, pending, config) -> None:
  """Saves ``pending`` (the host state of step p) unless its own loss, computed by
  the dispatch after it (``replicated``), was non-finite: then raises, naming it."""
  bad = int(parallel.unreplicate(replicated.bad_step))
  if 0 <= bad <= int(pending.step):
    _check_finite(replicated, mngr)
  checkpoint.save(mngr, pending, config)


def _next_batch(run: _Run, carry: _Carry, batches):
  """The next device batch; an input failure (an unreadable image, a dead input worker)
  first saves the step reached, as a stop would, and says in its one line what is kept."""
  try:
    return next(batches)
  except data.DataError as e:
    raise type(e)(f"{e} {_save_on_failure(run, carry)}") from None


def _save_on_failure(run: _Run, carry: _Carry) -> str:
  """Saves the last finished step (checked finite) and waits for it; says what is kept."""
  s = carry.step
  if s == run.start:
    return f"Nothing new to save; {_kept(run.mngr)}."
  if jax.process_count() > 1:  # the processes save together; this one alone would hang
    try:
      checkpoint.wait(run.mngr)  # the save in flight (started by all) lands: say it is kept
    except checkpoint.CheckpointError:
      pass  # the exit path reports it (checkpoint.finish); _kept counts what landed
    return (f"Step {s} was not saved (a multi-process run saves only at a stop all processes "
            f"agree on); {_kept(run.mngr)}.")
  try:
    _save_reached(run, carry, wait=True)
  except (NonFiniteLossError, checkpoint.CheckpointError) as e:
    return f"Step {s} was not saved ({io_errors.first_line(e)})."
  return f"Step {s} is saved (checkpoint {s})."


def _save_reached(run: _Run, carry: _Carry, *, wait: bool = False) -> None:
  """Saves the step reached without another step (a stop, an input failure): every
  value checked finite; a pending evaluated step is named the best if it is."""
  _check_finite(carry.replicated, run.mngr)
  checkpoint.save(run.mngr, carry.pending or _finite_host_state(carry.replicated, run.mngr),
                  run.config)
  if wait:  # the caller says it is saved: it must have landed
    checkpoint.wait(run.mngr)
  if carry.pending is not None:
    carry.pending_best = _record_best(run.workdir, carry.pending_best)


def _kept(mngr) -> str:
  """What a stop keeps on disk, said truthfully: the newest checkpoint, or none."""
  steps = mngr.all_steps() if mngr is not None else []
  return (f"the last good checkpoint, {max(steps)}, is kept" if steps
          else "no checkpoint had been saved yet")


def _check_finite(replicated, mngr=None) -> None:
  bad_step = int(parallel.unreplicate(replicated.bad_step))
  if bad_step >= 0:
    names = train_step.bad_terms_names(int(parallel.unreplicate(replicated.bad_terms)))
    raise NonFiniteLossError(
        f"Non-finite loss ({', '.join(names)}) at step {bad_step}; training stopped and "
        f"{_kept(mngr)}. Try a lower --config.learning_rate or --config.balance=True.")


def _finite_host_state(replicated, mngr=None) -> train_step.TrainState:
  """The host copy of the state, refused if any value in it is NaN/inf."""
  # An owned copy: on CPU the unreplicated arrays may be views of device buffers
  # that the next step (donating its input) overwrites.
  state = jax.tree.map(np.array, parallel.unreplicate(replicated))
  for group in ("params", "opt_state", "batch_stats"):
    for path, leaf in jax.tree_util.tree_flatten_with_path(getattr(state, group))[0]:
      leaf = np.asarray(leaf)
      if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
        raise NonFiniteLossError(
            f"Non-finite {group}{jax.tree_util.keystr(path)} after step {int(state.step)}; "
            f"training stopped and {_kept(mngr)}. Try a lower --config.learning_rate.")
  return state
