"""Training the classifier, and restoring it from its checkpoints.

The loop shares the VAE-GAN trainer's pieces (``vaegan_jax.runtime``):
``checkpoint`` (checksummed saves, the newest good checkpoint on resume,
corrupt ones moved aside), ``metric_writer`` (TensorBoard, metrics.jsonl,
console), ``workdir_lock`` (one trainer per directory) and ``loop``
(SIGTERM/SIGINT, steps in flight, images/s). Everything lives in
``classifier_dir(workdir)``:

  checkpoints/<step>/{state,config,integrity}   checkpoints_bad/<step>
  events.out.tfevents.*  metrics.jsonl  lock.json

The config is saved as JSON with the dataset's ``attribute_names``.
Checkpoints of the layout before checksums, ``<step>/{state,config}`` right in
``classifier_dir``, are still read and resumed from (``legacy.py``); new ones
go to ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from vaegan_jax import data
from vaegan_jax import sampling
from vaegan_jax.classifier import legacy
from vaegan_jax.classifier import model
from vaegan_jax.classifier.inference import Classifier
from vaegan_jax.classifier.inference import evaluate
from vaegan_jax.classifier.model import ClassifierArch
from vaegan_jax.classifier.model import ClassifierError
from vaegan_jax.classifier.model import ClassifierState
from vaegan_jax.runtime import checkpoint
from vaegan_jax.runtime import loop
from vaegan_jax.runtime import metric_writer
from vaegan_jax.runtime import workdir_lock


def classifier_dir(workdir: str) -> str:
  """The classifier's own directory in ``workdir``: its checkpoints, metrics and lock."""
  return os.path.join(os.path.abspath(workdir), "classifier")


def validate_config(config: ml_collections.ConfigDict) -> data.DatasetInfo:
  """All checks before compiling anything. Raises ClassifierError / DataError."""
  arch = ClassifierArch.from_config(config)
  arch.validate()
  for k in ("num_train_steps", "batch_size", "log_every", "checkpoint_every", "eval_every"):
    if int(config[k]) <= 0:
      raise ClassifierError(f"{k} must be positive, got {config[k]}; e.g. --config.{k}=100.")
  if int(config.get("keep_checkpoints", 2)) < 1:
    raise ClassifierError(f"keep_checkpoints must be >= 1 (it would delete every checkpoint), "
                          f"got {config.keep_checkpoints}; e.g. --config.keep_checkpoints=2.")
  if not float(config.learning_rate) > 0:
    raise ClassifierError(f"learning_rate must be > 0, got {config.learning_rate}.")
  info = data.validate(config.data)
  if arch.labels == "classes":
    if not info.num_classes:
      raise ClassifierError(f"Dataset {info.name!r} has no class labels: use "
                            "--config.model.labels=attributes or a labelled dataset.")
    if info.num_classes != arch.num_classes:
      raise ClassifierError(f"model.num_classes={arch.num_classes} but dataset {info.name!r} "
                            f"has {info.num_classes} classes; set --config.model.num_classes="
                            f"{info.num_classes}.")
  elif not info.attribute_names:
    raise ClassifierError(f"Dataset {info.name!r} has no attributes: train the classifier "
                          "on a dataset with attributes (data.name=celeb_a).")
  if info.num_examples < int(config.batch_size):
    raise ClassifierError(f"Split {config.data.train_split!r} has {info.num_examples} examples, "
                          f"fewer than batch_size={config.batch_size}: lower --config.batch_size.")
  if arch.labels == "attributes" and len(info.attribute_names) != arch.num_attributes:
    raise ClassifierError(
        f"model.num_attributes={arch.num_attributes} but dataset {info.name!r} has "
        f"{len(info.attribute_names)} attributes; set --config.model.num_attributes="
        f"{len(info.attribute_names)}.")
  return info


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Classifier:
  """Trains on ``config.data.train_split``; evaluates on ``eval_split``; checkpoints.

  Resumes from the newest good checkpoint in ``classifier_dir(workdir)``
  (corrupt ones are moved to ``checkpoints_bad/``); the input order is a pure
  function of (seed, step), so a resumed run ends where an uninterrupted one
  does. SIGTERM/SIGINT finish the current step, save it and return early: the
  returned Classifier's ``step`` is then below ``config.num_train_steps``.
  Only states whose every value is finite are saved.

  Returns:
    The trained Classifier (inference mode).
  Raises:
    A ``UserError`` (one line): a bad config, missing data, a
    checkpoint of another model, a diverged loss, another trainer on the
    directory, a failed save.
  """
  info = validate_config(config)
  root = classifier_dir(workdir)
  try:
    os.makedirs(root, exist_ok=True)
  except OSError as e:
    raise ClassifierError(f"Cannot create {root} ({type(e).__name__}: {e.strerror or e}); "
                          "choose a writable --workdir.") from e
  with workdir_lock.WorkdirLock(root), loop.StopRequest() as stop:
    return _train(config, root, info, stop)


def _saved_config(config: ml_collections.ConfigDict, info) -> ml_collections.ConfigDict:
  """The config as saved with each checkpoint: plus the dataset's attribute names."""
  saved = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
  saved.attribute_names = list(info.attribute_names)
  return saved


def _nonfinite_leaf(state: ClassifierState) -> Optional[str]:
  """The path of the first NaN/inf value of the state, or None."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
      return jax.tree_util.keystr(path)
  return None


def _diverged(s: int, what: str) -> ClassifierError:
  return ClassifierError(f"Non-finite classifier {what} at step {s}; training stopped and the "
                         "last good checkpoint is kept: lower --config.learning_rate.")


def _resume(root: str, fresh: ClassifierState) -> ClassifierState:
  """The newest good checkpoint (corrupt ones moved aside), a legacy one, or ``fresh``."""
  try:
    restored = checkpoint.restore_latest(root, fresh, quarantine=True)
  except checkpoint.CheckpointError as e:
    raise ClassifierError(f"Attribute classifier: {e}") from e
  if restored is not None:
    logging.info("Resumed the classifier from step %d.", restored.step)
    return restored.state
  old = legacy.steps(root)
  if not old:
    return fresh
  state = legacy.restore_state(root, fresh, old[-1])
  logging.info("Resumed the classifier from step %d (a checkpoint without checksum in %s; "
               "new ones go to %s).", old[-1], root, checkpoint.checkpoint_dir(root))
  return state


def _classifier(arch: ClassifierArch, info: data.DatasetInfo,
                state: ClassifierState) -> Classifier:
  return Classifier(arch, state.params, state.batch_stats,
                    attribute_names=info.attribute_names, step=int(state.step))


@dataclasses.dataclass(frozen=True)
class _Run:
  """What the steps of one training run share; fixed once the run starts."""
  config: ml_collections.ConfigDict
  arch: ClassifierArch
  info: data.DatasetInfo
  start: int
  total: int
  saved_config: ml_collections.ConfigDict
  mngr: checkpoint.Manager
  writer: metric_writer.MetricWriter
  progress: loop.Progress


def _train(config: ml_collections.ConfigDict, root: str, info: data.DatasetInfo,
           stop: loop.StopRequest) -> Classifier:
  """Resumes in ``root`` and trains until ``config.num_train_steps`` or a stop request."""
  arch = ClassifierArch.from_config(config)
  fresh = jax.device_get(model.create_state(arch, float(config.learning_rate),
                                            jax.random.PRNGKey(config.seed)))
  state = _resume(root, fresh)
  start, total = int(state.step), int(config.num_train_steps)
  saved_config = _saved_config(config, info)
  if start >= total:
    return _classifier(arch, info, state)
  mngr = checkpoint.manager(root, keep=int(config.get("keep_checkpoints", 2)))
  writer = metric_writer.MetricWriter(root)
  batches = data.batch_iterator(config.data, config.data.train_split, int(config.batch_size),
                                seed=int(config.seed), start_step=start)
  run = _Run(config, arch, info, start, total, saved_config, mngr, writer,
             loop.Progress(start, total, int(config.batch_size)))
  logging.info("Training the classifier (%s) from step %d to %d, batch %d, on %s split %r; "
               "outputs in %s.", arch.labels, start, total, int(config.batch_size), info.name,
               config.data.train_split, root)
  try:
    state, s = _steps(run, state, batches, stop)
    checkpoint.finish(mngr)
  except BaseException:
    checkpoint.finish(mngr, quiet=True)  # The in-flight save completes or is reported.
    raise
  finally:
    writer.close()
    close = getattr(batches, "close", None)
    if close:
      close()
  _log_stop(stop, start, s, total)
  return _classifier(arch, info, state)


def _steps(run: _Run, state: ClassifierState, batches: Iterator[dict[str, Any]],
           stop: loop.StopRequest) -> tuple[ClassifierState, int]:
  """Trains from ``run.start`` to ``run.total`` or a stop request; logs, evaluates, saves.

  Returns:
    (the last state, its step).
  """
  config, arch, lr = run.config, run.arch, float(run.config.learning_rate)
  eval_split = config.data.get("eval_split") or None
  in_flight = loop.InFlight()
  window, s, saved = [], run.start, run.start
  while s < run.total and not stop.requested:
    batch = next(batches)
    state, metrics = model.train_step(state, batch["image"], batch[arch.label_key], arch=arch,
                                      learning_rate=lr)
    s += 1
    if s == run.start + 1:  # Rates count from here: compiling is not training.
      jax.block_until_ready(metrics)
      run.progress.compiled(s, "classifier step")
    in_flight.add(metrics)
    window.append(metrics)
    if s % config.log_every == 0 or s == run.total:
      _log_window(run, s, window)
      window = []
    if eval_split and (s % config.eval_every == 0 or s == run.total) and not stop.requested:
      _evaluate(run, state, s, eval_split)
    if s % config.checkpoint_every == 0 or s == run.total:
      _save(run, state)
      saved = s
  if stop.requested and s > saved:
    _save(run, state)  # The step that was running when the signal came.
  return state, s


def _log_window(run: _Run, s: int, window: list[dict[str, jax.Array]]) -> None:
  """Writes the means of the window's metrics; raises on a NaN loss or a failed save."""
  means = {k: float(np.mean(jax.device_get([w[k] for w in window]))) for k in window[0]}
  if not np.isfinite(means["loss"]):
    raise _diverged(s, "loss")
  checkpoint.check_saves(run.mngr)
  rate, rate_text = run.progress.window(s)
  text = f"classifier loss={means['loss']:.4g} accuracy={means['accuracy']:.4g} {rate_text}"
  run.writer.write_scalars(s, {**means, **rate}, text.rstrip())


def _evaluate(run: _Run, state: ClassifierState, s: int, split: str) -> None:
  """Scores ``state`` on ``config.num_eval_examples`` of ``split``; writes and logs it."""
  n_eval = int(run.config.get("num_eval_examples", 2000)) or 2 ** 62  # 0: whole split
  result = evaluate(_classifier(run.arch, run.info, state),
                    sampling.dataset_batches(run.config.data, split, 256, n_eval))
  run.writer.write_eval(s, {f"eval/{k}": result[k]
                            for k in ("loss", "accuracy", "majority_accuracy")})
  logging.info("classifier eval at step %d on %d %r examples: loss %.4f, accuracy "
               "%.4f (majority baseline %.4f)", s, result["num_examples"], split,
               result["loss"], result["accuracy"], result["majority_accuracy"])


def _save(run: _Run, state: ClassifierState) -> None:
  """Saves ``state`` if every value is finite; a diverged state raises instead."""
  bad = _nonfinite_leaf(jax.device_get(state))
  if bad is not None:
    raise _diverged(int(state.step), f"value {bad}")
  checkpoint.save(run.mngr, state, run.saved_config)


def _log_stop(stop: loop.StopRequest, start: int, s: int, total: int) -> None:
  """Says where a stop request left the run (nothing if it ran to the end)."""
  if stop.requested and s > start:
    logging.warning("Classifier preempted (%s): stopped after step %d of %d, checkpoint %d "
                    "saved; rerun to resume.", stop.signal_name, s, total, s)
  elif stop.requested:
    logging.warning("Classifier preempted (%s) before its first step (step %d of %d): nothing "
                    "new to save; rerun to resume.", stop.signal_name, s, total)


def restore(workdir: str, step: Optional[int] = None
            ) -> tuple[Classifier, ml_collections.ConfigDict]:
  """(Classifier, its training config) from ``classifier_dir(workdir)``.

  ``step=None`` takes the newest checkpoint that passes its checksum (a
  corrupt newer one is skipped with a warning, never moved: a trainer may be
  running). Raises ClassifierError (one line).
  """
  root = classifier_dir(workdir)
  if not os.path.isdir(root):
    raise ClassifierError(f"No classifier checkpoint in {root}; train one with "
                          f"`python -m experiments.train_attribute_classifier "
                          f"--workdir={workdir}`.")
  steps = []
  if os.path.isdir(checkpoint.checkpoint_dir(root)):
    mngr = checkpoint.manager(root, read_only=True)
    steps = sorted(mngr.all_steps())
    mngr.close()
  old = legacy.steps(root)
  if not steps and old and (step is None or step in old):
    return legacy.restore(root, old[-1] if step is None else step)
  if not steps or (step is not None and step not in steps):
    raise ClassifierError(f'No classifier checkpoint{"" if step is None else f" for step {step}"} '
                          f"in {root} (available: {steps or old}); train one with `python -m "
                          f"experiments.train_attribute_classifier --workdir={workdir}`.")
  try:
    state, config = checkpoint.restore(root, step, lambda c: model.state_template(c)[1])
  except checkpoint.CheckpointError as e:
    raise ClassifierError(f"Attribute classifier: {e}") from e
  names = tuple(config.get("attribute_names", ()))
  if "attribute_names" in config:
    del config["attribute_names"]
  return Classifier(ClassifierArch.from_config(config), state.params, state.batch_stats,
                    attribute_names=names, step=int(state.step)), config
