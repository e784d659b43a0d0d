"""Orbax checkpoints of the whole TrainState, checksummed, with the config as JSON.

Layout: ``workdir/checkpoints/<step>/{state,config,integrity}``. Each checkpoint
holds all params, optimizer states, BN statistics, the step and the RNG key, so
a run resumes exactly. Orbax writes into a temporary directory and renames it
when complete, so a process killed mid-save (kill -9) leaves the previous
checkpoints intact and restorable; a temporary directory is never listed as a
step.

``integrity`` is ``{"format": 1, "sha256": digest.state_digest(state), "num_leaves": N}``:
neither Orbax nor TensorStore notices flipped bytes in an uncompressed data
file (they restore garbage), so every restore recomputes the digest. A
checkpoint that cannot be read or fails the check raises
``CorruptCheckpointError``; ``restore_latest``, ``read_config`` and
``restore`` then fall back to the newest good checkpoint (the
trainer also moves the bad one to ``workdir/checkpoints_bad/``). A checkpoint
written before the checksum existed restores with a warning.

The state is saved as host numpy arrays and restored as numpy arrays from the
saved tree (not into a template), so a checkpoint written on one device
topology (a GPU, 8 CPU devices) restores on any other.

Failed background saves (a full disk) surface as ``CheckpointWriteError`` from
``save`` (the previous save's failure), ``check_saves`` and ``finish``.

The best checkpoint (``config.keep_best``, e.g. ``samples.fid``): the trainer
records it in ``workdir/best_checkpoint.json`` (``{"step", "metric", "value",
"features"}``); pruning never deletes that step, and every loader takes
``step="best"``. A record whose step is gone (set aside as corrupt, or never
saved because the run was killed first) is rebuilt by the trainer from the
evaluation reports of the checkpoints that remain (``vaegan_jax.evaluation.reports.refresh_best``).

Old checkpoints are deleted here, not by Orbax: only the newest ``keep`` are
kept (and the best one), and an older one is deleted only once a newer save is confirmed complete
(at the next ``save`` or at ``finish``). Orbax's own ``max_to_keep`` deletes in
its finalize thread, which goes on to delete even when the commit failed if any
other caller has already taken the checkpointer's error (Orbax 0.12): a failed
save could then leave no checkpoint at all.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Any, Callable, NamedTuple, Optional, TypeVar

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vaegan_jax.runtime import best_checkpoint
from vaegan_jax.runtime import digest
from vaegan_jax.runtime import io_errors
from vaegan_jax.runtime.errors import UserError

FORMAT = 1
ITEMS = ("state", "config", "integrity")
_T = TypeVar("_T")


class CheckpointError(UserError, ValueError):
  """A checkpoint that is missing or does not match the config (one-line message)."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint that cannot be read or fails its checksum (one-line message).

  Attributes:
    step_dir: the step's directory.
    reason: what is wrong with it, e.g. 'checksum mismatch ...'.
  """

  def __init__(self, step_dir: str, reason: str):
    self.step_dir, self.reason = step_dir, reason
    super().__init__(f"Checkpoint {step_dir} is unusable ({reason}); use another step, or "
                     "move that directory aside.")


class CheckpointWriteError(CheckpointError):
  """A checkpoint that could not be written, e.g. on a full disk (one-line message)."""


class Restored(NamedTuple):
  """What ``restore_latest`` found: the state, its step and the config saved with it."""
  state: Any
  step: int
  config: ml_collections.ConfigDict


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def quarantine_dir(workdir: str) -> str:
  """Where ``restore_latest(quarantine=True)`` moves unusable checkpoints."""
  return os.path.join(os.path.abspath(workdir), "checkpoints_bad")


_DELETING = ".deleting-"


class Manager(ocp.CheckpointManager):
  """Orbax's manager, with what ``save``, ``finish`` and their errors need to know.

  Attributes:
    keep_newest: how many checkpoints ``save``/``finish`` keep (see the module
      docstring); None for a reader, which deletes nothing.
    step_in_flight: the step still being written in the background, for the
      error message if that write fails; None when none is.
  """

  def __init__(self, directory: str, *, keep_newest: Optional[int],
               options: ocp.CheckpointManagerOptions):
    super().__init__(directory, options=options, item_names=ITEMS)
    self.keep_newest = keep_newest
    self.step_in_flight: Optional[int] = None


def manager(workdir: str, *, keep: int = 3, read_only: bool = False,
            async_save: bool = True) -> Manager:
  """An Orbax manager of ``workdir/checkpoints``; ``save`` and ``finish`` keep the newest ``keep``."""
  if not read_only and int(keep) < 1:
    raise ValueError(f"keep_checkpoints must be an integer >= 1, got {keep!r}; "
                     "set --config.keep_checkpoints=1 or more.")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
  return Manager(checkpoint_dir(workdir), keep_newest=None if read_only else int(keep),
                 options=options)


def _prune(mngr: ocp.CheckpointManager) -> None:
  """Deletes all but the newest ``keep`` complete checkpoints (the primary process deletes).

  Call only when no save is in flight and the last one is confirmed. A step
  directory is first renamed out of the step namespace, so a crash mid-delete
  leaves a ``.deleting-<step>`` directory (removed next time), never a
  half-deleted checkpoint that lists as a step.
  """
  keep = getattr(mngr, "keep_newest", None)
  if keep is None:
    return
  mngr.reload()
  best = best_checkpoint.read_best(os.path.dirname(str(mngr.directory)))
  old = [s for s in sorted(mngr.all_steps())[:-keep] if not best or s != best["step"]]
  if jax.process_index() == 0:
    root = str(mngr.directory)
    try:
      for step in old:
        trash = os.path.join(root, f"{_DELETING}{step}")
        if os.path.lexists(trash):
          shutil.rmtree(trash, ignore_errors=True)
        os.rename(_step_dir(mngr, step), trash)
      for name in os.listdir(root):
        if name.startswith(_DELETING):
          shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    except OSError as e:  # An extra old checkpoint is no reason to stop training.
      logging.warning("Could not delete an old checkpoint in %s (%s); it is kept.", root,
                      io_errors.first_line(e))
  if old:
    mngr.reload()


# ----------------------------------------------------------------------------
# Saving.

def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def save(mngr: ocp.CheckpointManager, state: Any, config) -> None:
  """Saves a host (unreplicated) state at ``state.step``, with its checksum; force-saves.

  The write finishes in the background; its failure surfaces from the next
  ``save``, ``check_saves`` or ``finish``.

  Raises:
    CheckpointWriteError: the previous save failed, or this one failed to start.
  """
  _surface_errors(mngr, block=True)  # Orbax's save() would raise the previous failure raw.
  _prune(mngr)  # The previous save is confirmed; only now may older ones go.
  # An owned host copy: the checksum reads it, Orbax writes it while training
  # goes on, and numpy (unlike device arrays) restores on any device topology.
  host = jax.tree.map(np.array, state)
  step = int(host.step)
  integrity = {"format": FORMAT, "sha256": digest.state_digest(host),
               "num_leaves": len(jax.tree.leaves(host))}
  mngr.step_in_flight = step
  try:
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host),
        config=ocp.args.JsonSave(_config_json(config)),
        integrity=ocp.args.JsonSave(integrity)), force=True)
  except Exception as e:  # pylint: disable=broad-except
    if io_errors.io_cause(e) == (None, None):
      raise  # A programming error, not the disk.
    raise _write_error(mngr, e) from e


def check_saves(mngr: ocp.CheckpointManager) -> None:
  """Raises CheckpointWriteError if a finished background save failed; never blocks."""
  _surface_errors(mngr, block=False)


def wait(mngr: ocp.CheckpointManager) -> None:
  """Waits for the background save; raises CheckpointWriteError if it failed."""
  _surface_errors(mngr, block=True)


def finish(mngr: ocp.CheckpointManager, *, quiet: bool = False) -> None:
  """Waits for the background save and closes ``mngr``.

  Args:
    quiet: log a failed save instead of raising (for an error path that is
      already raising something else).
  Raises:
    CheckpointWriteError: the save failed (the manager is closed all the same).
  """
  try:
    _surface_errors(mngr, block=True)
  except CheckpointWriteError as e:
    try:
      mngr.close()
    except Exception:  # pylint: disable=broad-except
      pass  # The write error is the one to report.
    if not quiet:
      raise
    logging.error("%s", e)
    return
  if not quiet:  # On an error path other processes may not get here.
    _prune(mngr)
  mngr.close()


def _saving(mngr: ocp.CheckpointManager) -> bool:
  in_progress = getattr(mngr, "is_saving_in_progress", None)
  return True if in_progress is None else bool(in_progress())


def _surface_errors(mngr: ocp.CheckpointManager, *, block: bool) -> None:
  """Re-raises a failed background save as CheckpointWriteError.

  Orbax 0.12's finalize thread takes the commit's error from the
  checkpointer's one-shot error slot and keeps it; ``wait_until_finished()``
  re-raises it (once) as whatever TensorStore raised (a ValueError
  'RESOURCE_EXHAUSTED ... [os_error_code=28]', not an OSError), and ``save()``
  raises it too because it waits first. So this waits once the save is over
  (or when blocking), and never calls ``mngr.check_for_errors()``: taking the
  error from the slot before the finalize thread does lets that thread go on as
  if the commit had succeeded.
  """
  try:
    if block or not _saving(mngr):
      mngr.wait_until_finished()
      mngr.step_in_flight = None
  except Exception as e:  # pylint: disable=broad-except
    raise _write_error(mngr, e) from e


def _write_error(mngr: ocp.CheckpointManager, e: BaseException) -> CheckpointWriteError:
  step, mngr.step_in_flight = getattr(mngr, "step_in_flight", None), None
  code, oserror = io_errors.io_cause(e)
  if code in io_errors.DISK_FULL:
    reason = f"disk full (OSError {errno.errorcode[code]}: {os.strerror(code)})"
  elif oserror is not None:
    reason = f"{type(oserror).__name__}: {io_errors.first_line(oserror)}"
  elif code is not None:
    reason = f"OSError {errno.errorcode.get(code, code)}: {io_errors.first_line(e)}"
  else:
    reason = _reason(e)
  try:
    mngr.reload()  # Orbax already dropped the steps this save was to replace.
    kept = sorted(s for s in mngr.all_steps() if s != step)
  except Exception:  # pylint: disable=broad-except
    kept = []
  previous = (f"the previous checkpoint {kept[-1]} is kept" if kept
              else "no earlier checkpoint exists")
  what = f"checkpoint {step}" if step is not None else "a checkpoint"
  return CheckpointWriteError(f"Could not write {what} to {mngr.directory}: {reason}; "
                              f"{previous}.")


# ----------------------------------------------------------------------------
# Reading one step.


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(mngr.directory), str(step))


def _reason(e: BaseException) -> str:
  return f"{type(e).__name__}: {io_errors.first_line(e)}"


def _restore_item(step_dir: str, name: str, handler: Any, args: Any) -> Any:
  """Item ``name`` of a step directory, read with its own Checkpointer.

  Not through the caller's manager: once a manager has saved, its item
  handlers are fixed (StandardSave), and restoring with other args fails.
  """
  checkpointer = ocp.Checkpointer(handler)
  try:
    return checkpointer.restore(epath.Path(step_dir) / name, args=args)
  finally:
    checkpointer.close()


def _read_json_item(mngr: ocp.CheckpointManager, step: int, name: str) -> Any:
  """Item ``name`` (a JSON item) of ``step``; CorruptCheckpointError if unreadable."""
  step_dir = _step_dir(mngr, step)
  _check_item_dir(step_dir, name)
  try:
    return _restore_item(step_dir, name, ocp.JsonCheckpointHandler(), ocp.args.JsonRestore())
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpointError(step_dir, f"its {name!r} item is unreadable: "
                                 f"{_reason(e)}") from e


def _check_item_dir(step_dir: str, name: str) -> None:
  if not os.path.isdir(step_dir):
    raise CorruptCheckpointError(step_dir, "its directory is missing")
  if not os.listdir(step_dir):
    raise CorruptCheckpointError(step_dir, "its directory is empty")
  if not os.path.isdir(os.path.join(step_dir, name)):
    raise CorruptCheckpointError(step_dir, f"its {name!r} item is missing")


def _read_saved_config(mngr: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  raw = _read_json_item(mngr, step, "config")
  if not isinstance(raw, dict):
    raise CorruptCheckpointError(_step_dir(mngr, step),
                                 f"its 'config' item is a {type(raw).__name__}, not a dict")
  return ml_collections.ConfigDict(lists_to_tuples(raw))


_warned_unverified: set[str] = set()


def _read_state(mngr: ocp.CheckpointManager, step: int) -> Any:
  """The saved state as nested dicts/lists of numpy arrays, checksum verified."""
  step_dir = _step_dir(mngr, step)
  _check_item_dir(step_dir, "state")
  path = os.path.join(step_dir, "state")
  try:
    # The saved tree, read as numpy whatever devices it was saved from (a
    # template-free restore would recreate the saved device shardings).
    handler = ocp.PyTreeCheckpointHandler()
    try:
      saved = handler.metadata(epath.Path(path)).tree
    finally:
      handler.close()
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
    raw = _restore_item(step_dir, "state", ocp.PyTreeCheckpointHandler(),
                        ocp.args.PyTreeRestore(restore_args=restore_args))
    raw = jax.tree.map(np.asarray, raw)
  except Exception as e:  # pylint: disable=broad-except
    # Without a target, any failure is unreadable data, not a config mismatch.
    raise CorruptCheckpointError(step_dir, f"its 'state' item is unreadable: "
                                 f"{_reason(e)}") from e
  if not os.path.isdir(os.path.join(step_dir, "integrity")):
    if step_dir in _warned_unverified:
      return raw
    _warned_unverified.add(step_dir)  # Once, though read_config and restore both read it.
    logging.warning("Checkpoint %s has no checksum (written before checkpoints had one); "
                    "restoring it unverified.", step_dir)
    return raw
  record = _read_json_item(mngr, step, "integrity")
  if (not isinstance(record, dict) or record.get("format") != FORMAT
      or not isinstance(record.get("sha256"), str)):
    raise CorruptCheckpointError(step_dir, f"its 'integrity' item is not a format-{FORMAT} "
                                 "record")
  try:
    num_leaves, sha256 = len(jax.tree.leaves(raw)), digest.state_digest(raw)
  except ValueError as e:
    raise CorruptCheckpointError(step_dir, _reason(e)) from e
  if num_leaves != record.get("num_leaves"):
    raise CorruptCheckpointError(step_dir, f"it holds {num_leaves} arrays but "
                                 f"{record.get('num_leaves')} were saved")
  if sha256 != record["sha256"]:
    raise CorruptCheckpointError(step_dir, "checksum mismatch: its data differs from what "
                                 "was saved")
  return raw


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda a: a if isinstance(a, jax.ShapeDtypeStruct)
                      else jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), tree)


def _match_template(raw: Any, template: Any, what: str) -> Any:
  """``raw``'s arrays in ``template``'s pytree type, matched by normalised path.

  Orbax gives back dicts and lists; the model built from the config decides
  the type, and every leaf's name, shape and dtype must agree with it.
  """
  paths, treedef = jax.tree_util.tree_flatten_with_path(_abstract(template))
  want = [(digest.path_name(p), w) for p, w in paths]
  got = digest.named_leaves(raw)
  missing = sorted({n for n, _ in want} - set(got))
  extra = sorted(set(got) - {n for n, _ in want})
  if missing or extra:
    detail = (f"{missing[0]!r} is not in the checkpoint" if missing
              else f"{extra[0]!r} is not in the model")
    raise CheckpointError(f"{what} does not match the model built from the config (different "
                          f"parameter tree: {detail}); use the config saved with it or a fresh "
                          "--workdir.")
  for name, w in want:
    g = got[name]
    if tuple(w.shape) != g.shape or np.dtype(w.dtype) != g.dtype:
      raise CheckpointError(
          f"{what} does not match the model built from the config: {name} is {g.shape} "
          f"{g.dtype} in the checkpoint but {tuple(w.shape)} {w.dtype} in the model; use the "
          "config saved with it or a fresh --workdir.")
  return jax.tree_util.tree_unflatten(treedef, [got[n] for n, _ in want])


def restore_state(mngr: ocp.CheckpointManager, template: Any,
                  step: Optional[int] = None) -> Any:
  """Restores checkpoint ``step`` (default: latest) in ``template``'s structure.

  Args:
    template: a host pytree or its ``jax.eval_shape``; every leaf's shape and
      dtype must match the saved one.
  Returns:
    ``template``'s pytree type with numpy leaves.
  Raises:
    CorruptCheckpointError: unreadable, or the checksum does not match.
    CheckpointError: an intact checkpoint of another model (one line).
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"No checkpoint in {mngr.directory}.")
  raw = _read_state(mngr, step)
  return _match_template(raw, template, f"Checkpoint step {step} in {mngr.directory}")


# ----------------------------------------------------------------------------
# Newest good checkpoint.


def _all_steps(workdir: str) -> list[int]:
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  mngr = manager(workdir, read_only=True)
  try:
    return sorted(mngr.all_steps())
  finally:
    mngr.close()


def _move_aside(workdir: str, step: int) -> str:
  """Moves ``checkpoints/<step>`` to ``checkpoints_bad/<step>[.k]``; returns the new path."""
  os.makedirs(quarantine_dir(workdir), exist_ok=True)
  dest = os.path.join(quarantine_dir(workdir), str(step))
  k = 0
  while os.path.lexists(dest):
    k += 1
    dest = os.path.join(quarantine_dir(workdir), f"{step}.{k}")
  os.rename(os.path.join(checkpoint_dir(workdir), str(step)), dest)
  return dest


def _newest_good(workdir: str, load: Callable[[ocp.CheckpointManager, int], _T], *,
                 quarantine: bool) -> Optional[_T]:
  """``load(mngr, step)`` of the newest step it does not raise CorruptCheckpointError for.

  Returns None if there is no checkpoint; other CheckpointErrors propagate.
  """
  steps = _all_steps(workdir)[::-1]
  if not steps:
    return None
  ckdir = checkpoint_dir(workdir)
  mngr = manager(workdir, read_only=True)  # Restores by path: moving a step aside is fine.
  try:
    for i, step in enumerate(steps):
      try:
        return load(mngr, step)
      except CorruptCheckpointError as e:
        where = "kept in place"
        if quarantine:
          try:
            where = f"moved aside to {_move_aside(workdir, step)}"
          except OSError as move_error:
            where = f"kept in place (cannot move it aside: {io_errors.first_line(move_error)})"
        then = (f"falling back to checkpoint {steps[i + 1]}" if i + 1 < len(steps)
                else "no older checkpoint to fall back to")
        logging.warning("Checkpoint %d in %s is unusable (%s); %s; %s.", step, ckdir,
                        e.reason, where, then)
  finally:
    mngr.close()
  listed = ", ".join(str(s) for s in sorted(steps))
  if quarantine:
    raise CheckpointError(
        f"None of the checkpoints in {ckdir} is usable (steps {listed}); they were moved to "
        f"{quarantine_dir(workdir)}, so a rerun starts from scratch.")
  raise CheckpointError(
      f"None of the checkpoints in {ckdir} is readable (steps {listed}; see the warnings "
      "above); train again or use another --workdir.")


def restore_latest(workdir: str, template: Any, *, quarantine: bool) -> Optional[Restored]:
  """The newest usable checkpoint of ``workdir`` in ``template``'s structure.

  Unusable checkpoints (unreadable, checksum mismatch) are skipped with one
  warning each; with ``quarantine`` they are also moved to
  ``workdir/checkpoints_bad/<step>`` (never deleted). Managers created before
  a move are stale: create the training manager afterwards, or ``reload()`` it.

  Args:
    template: a host pytree or its ``jax.eval_shape`` (e.g. a TrainState).
    quarantine: move unusable checkpoints aside (only the trainer should).
  Returns:
    Restored(state, step, config), or None if there is no checkpoint at all.
  Raises:
    CheckpointError: checkpoints exist but none is usable, or the newest
      readable one is of another model (then nothing is moved).
  """
  def load(mngr, step):
    config = _read_saved_config(mngr, step)
    return Restored(restore_state(mngr, template, step), step, config)
  return _newest_good(workdir, load, quarantine=quarantine)


def no_checkpoint(workdir: str) -> CheckpointError:
  """The one error for a workdir without any checkpoint: says how to make one."""
  return CheckpointError(f"No checkpoint in {checkpoint_dir(workdir)}; train first with "
                         f"`python -m experiments.train --workdir={workdir}`.")


def _reader(workdir: str, step: int) -> ocp.CheckpointManager:
  """A read-only manager of ``workdir`` after checking that ``step`` exists."""
  steps = _all_steps(workdir)
  if not steps:
    raise no_checkpoint(workdir)
  if step not in steps:
    raise CheckpointError(f"No checkpoint for step {step} in {checkpoint_dir(workdir)}; "
                          f"available: {steps}.")
  return manager(workdir, read_only=True)


def read_config(workdir: str, step: Any = None, *,
                verify: Optional[bool] = None) -> tuple[ml_collections.ConfigDict, int]:
  """The config saved with checkpoint ``step``, and that step.

  With ``step=None``, the newest usable checkpoint: its state is read and its
  checksum checked too, so ``restore`` of that step succeeds;
  unusable ones are skipped with a warning, never moved (a trainer may be
  running).

  Args:
    verify: also read ``step``'s state and check its checksum (default: only
      when ``step`` is None), e.g. to fail before expensive set-up.
  Raises:
    CorruptCheckpointError: ``step`` is given and unusable.
    CheckpointError: no (usable) checkpoint, or no such step.
  """
  verify = step is None if verify is None else verify

  def load(mngr, s):
    config = _read_saved_config(mngr, s)
    if verify:
      _read_state(mngr, s)
    return config, s
  return _load_step_or_newest(workdir, step, load)


def _load_step_or_newest(workdir: str, step: Any,
                         load: Callable[[ocp.CheckpointManager, int], _T]) -> _T:
  """``load`` of checkpoint ``step`` (an int or 'best'), or of the newest usable one
  (None or 'latest'); readers move nothing."""
  step = resolve_step(workdir, step)
  if step is None:
    found = _newest_good(workdir, load, quarantine=False)
    if found is None:
      raise no_checkpoint(workdir)
    return found
  mngr = _reader(workdir, step)
  try:
    return load(mngr, step)
  finally:
    mngr.close()


def restore(workdir: str, step: Any, template_for: Callable[[ml_collections.ConfigDict], Any],
            config: Optional[ml_collections.ConfigDict] = None
            ) -> tuple[Any, ml_collections.ConfigDict]:
  """(host state, config) of checkpoint ``step``; the saved config unless one is given.

  ``step``: an int, 'best', or None/'latest' for the newest usable checkpoint
  (unusable ones are skipped with a warning, never moved). The state has the
  structure of ``template_for(config)`` (e.g. ``jax.eval_shape`` of the
  model's initial state), every leaf checked against it.

  Raises:
    CorruptCheckpointError: ``step`` is given and unusable.
    CheckpointError: no (usable) checkpoint, no such step, or another model.
  """
  def load(mngr, s):
    saved = _read_saved_config(mngr, s)
    cfg = saved if config is None else config
    return restore_state(mngr, template_for(cfg), s), cfg
  return _load_step_or_newest(workdir, step, load)


# ----------------------------------------------------------------------------
# Which step a loader means.


def resolve_step(workdir: str, step: Any) -> Optional[int]:
  """None or 'latest' -> None (the newest usable); 'best' -> the recorded best step; an int.

  Raises CheckpointError (one line) for 'best' without a record or a record whose
  checkpoint is gone, and for anything else that is not an integer.
  """
  if step is None or step == "latest":
    return None
  if step == "best":
    best = best_checkpoint.read_best(workdir)
    if best is None:
      raise CheckpointError(
          f"No best checkpoint recorded in {workdir}: train with --config.keep_best=samples.fid "
          "and evaluations on (--config.eval_every), or use --step=latest.")
    if int(best["step"]) not in _all_steps(workdir):
      raise CheckpointError(
          f"The best checkpoint, step {best['step']} ({best.get('metric')} "
          f"{best.get('value')}), is no longer in {checkpoint_dir(workdir)}; resume training "
          "to choose a new one, or use --step=latest.")
    return int(best["step"])
  try:
    return int(step)
  except (TypeError, ValueError):
    raise CheckpointError(f"--step must be an integer, 'latest' or 'best', got {step!r}.") from None


def lists_to_tuples(x: Any) -> Any:
  """JSON lists back to tuples, as ConfigDicts of the configs hold them."""
  if isinstance(x, dict):
    return {k: lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(lists_to_tuples(v) for v in x)
  return x
