"""Orbax checkpoints of the whole TrainState, with the config beside it as JSON.

Layout: ``workdir/checkpoints/<step>/{state,config}``. Each checkpoint holds
all params, optimizer states, BN statistics, the step and the RNG key, so a
run resumes exactly. Orbax writes into a temporary directory and renames it
when complete, so a process killed mid-save (kill -9) leaves the previous
checkpoints intact and restorable.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vaegan_jax import train_step as ts


class CheckpointError(ValueError):
  """A checkpoint that is missing or does not match the config (one-line message)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, *, keep: int = 3, read_only: bool = False,
            async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "config"))


def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def save(mngr: ocp.CheckpointManager, state: ts.TrainState, config) -> None:
  """Saves a host (unreplicated) state at ``state.step``; force-saves."""
  step = int(state.step)
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(_config_json(config))), force=True)


def _abstract(state: ts.TrainState):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
                      if not isinstance(a, jax.ShapeDtypeStruct) else a, state)


def restore_state(mngr: ocp.CheckpointManager, template: Any,
                  step: Optional[int] = None) -> Any:
  """Restores into the structure of ``template`` (a host pytree or its eval_shape),
  checking every leaf's shape and dtype; raises a one-line CheckpointError."""
  step = mngr.latest_step() if step is None else step
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(template))))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f"Checkpoint step {step} in {mngr.directory} does not match the model built from "
        f"the config ({type(e).__name__}: {str(e).splitlines()[0][:200]}); use the config "
        "saved with it or a fresh --workdir.") from e
  except OSError as e:  # e.g. a half-deleted checkpoint directory
    raise CheckpointError(f"Cannot read checkpoint {step} in {mngr.directory} "
                          f"({type(e).__name__}: {e}).") from e
  state = jax.tree.map(np.asarray, restored.state)
  _check_matches(state, _abstract(template), f"Checkpoint step {step} in {mngr.directory}")
  return state


def _check_matches(state, expected, what: str) -> None:
  """Orbax restores arrays at their *saved* shapes whatever the template says, so
  compare every leaf's path, shape and dtype with the model the config builds."""
  want = jax.tree_util.tree_flatten_with_path(expected)[0]
  got = jax.tree_util.tree_flatten_with_path(state)[0]
  if [p for p, _ in want] != [p for p, _ in got]:
    raise CheckpointError(f"{what} does not match the model built from the config (different "
                          "parameter tree); use the config saved with it or a fresh --workdir.")
  for (p, w), (_, g) in zip(want, got):
    if tuple(w.shape) != np.shape(g) or np.dtype(w.dtype) != g.dtype:
      raise CheckpointError(
          f"{what} does not match the model built from the config: "
          f"{jax.tree_util.keystr(p)} is {np.shape(g)} {g.dtype} in the checkpoint but "
          f"{tuple(w.shape)} {w.dtype} in the model; use the config saved with it or a fresh "
          "--workdir.")


def read_config(workdir: str, step: Optional[int] = None) -> tuple[ml_collections.ConfigDict, int]:
  """The config saved with checkpoint ``step`` (default: latest), and that step."""
  mngr = manager(workdir, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"No checkpoint in {checkpoint_dir(workdir)}; train first with "
                          f"`python -m experiments.train --workdir={workdir}`.")
  if step not in mngr.all_steps():
    raise CheckpointError(f"No checkpoint for step {step} in {checkpoint_dir(workdir)}; "
                          f"available: {sorted(mngr.all_steps())}.")
  raw = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  return ml_collections.ConfigDict(lists_to_tuples(raw)), step


def restore_for_inference(workdir: str, step: Optional[int] = None,
                          config: Optional[ml_collections.ConfigDict] = None
                          ) -> tuple[ts.TrainState, ml_collections.ConfigDict]:
  """(host TrainState, config) from ``workdir``; the saved config unless one is given."""
  saved, step = read_config(workdir, step)
  config = saved if config is None else config
  template = jax.eval_shape(lambda: ts.create_train_state(config, jax.random.PRNGKey(0)))
  mngr = manager(workdir, read_only=True)
  return restore_state(mngr, template, step), config


def lists_to_tuples(x: Any) -> Any:
  """JSON lists back to tuples, as ConfigDicts of the configs hold them."""
  if isinstance(x, dict):
    return {k: lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(lists_to_tuples(v) for v in x)
  return x
