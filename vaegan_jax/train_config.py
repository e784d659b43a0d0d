"""The trainer's checks of its config, data and workdir.

``validate_config`` (every setting, the data and their agreement; before the
workdir is touched or anything compiles), ``check_workdir``,
``check_config_change`` (a resumed run against its checkpoint's config, once
the checkpoint is found), ``check_data_unchanged`` (a resumed run's files: a
warning) and ``dry_run`` (the checks that can fail, nothing written). Each
failure is one line that names the fix: ``ConfigError``, or ``data.DataError``
for the data.
"""

from __future__ import annotations

import json
import math
import os

import jax
import ml_collections
from absl import logging

from vaegan_jax import data
from vaegan_jax import models
from vaegan_jax import train_step
from vaegan_jax.evaluation import features as eval_features
from vaegan_jax.evaluation import reports
from vaegan_jax.runtime import checkpoint
from vaegan_jax.runtime import parallel
from vaegan_jax.runtime.errors import UserError


class ConfigError(UserError, ValueError):
  """A config that can't work; the message is one line naming the fix."""


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


def _validate(config) -> data.DatasetInfo:
  arch = models.Architecture.from_config(config.model)
  arch.validate()
  train_step.LossConfig.from_config(config).validate()
  _validate_schedule(config)
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
  if (config.get("eval_every") and config.get("eval_features") == "classifier"
      and not (info.num_classes or info.attribute_names)):
    raise ValueError(
        f"eval_features='classifier' needs class labels or attributes, and dataset "
        f"{info.name!r} has neither; use --config.eval_features=auto (no FID) or "
        "--config.eval_features=inception with --config.eval_inception_weights=PATH.npz.")
  if arch.num_attributes and len(info.attribute_names) != arch.num_attributes:
    raise ValueError(
        f"model.num_attributes={arch.num_attributes} but dataset {info.name!r} has "
        f"{len(info.attribute_names)} attributes; set --config.model.num_attributes="
        f"{len(info.attribute_names)}.")
  return info


def _validate_schedule(config) -> None:
  """The steps, learning rate, checkpointing and evaluation settings."""
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
    reports.best_metric(config.keep_best)
  if config.get("eval_every") and int(config.get("eval_num", 0)) < 2:
    raise ValueError(f"eval_num must be >= 2, got {config.get('eval_num')}; e.g. "
                     "--config.eval_num=1000.")
  if config.get("eval_every"):
    try:
      eval_features.check_request(config.get("eval_features", "auto"),
                                  config.get("eval_inception_weights"))
    except eval_features.FeatureError as e:
      raise ValueError(as_config_fields(str(e))) from e


def as_config_fields(message: str) -> str:
  """The evaluation's messages name ``experiments.evaluate``'s flags; the trainer's
  user sets config fields."""
  return message.replace("--features", "--config.eval_features").replace(
      "--inception_weights", "--config.eval_inception_weights")


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


DATA_STAMP = "data_stamp.json"


def check_data_unchanged(workdir: str, data_config, num_examples: int, resumed: bool) -> None:
  """Warns when a resumed run lists other files than the workdir's last start did.

  A folder's images added, removed or renamed keep the config equal but change
  the input order and the held-out split (every 20th file) that the
  checkpoints were trained with. ``num_examples``: the train split's, as
  validated. Records the listing's stamp
  (``data.content_stamp(names_only=True)``; a file fixed in place is no change).
  """
  stamp = data.content_stamp(data_config, names_only=True)
  if not stamp:
    return
  path = os.path.join(workdir, DATA_STAMP)
  now = {"files": stamp, "examples": int(num_examples)}
  try:
    with open(path) as f:
      before = json.load(f)
  except (OSError, ValueError):
    before = None
  if resumed and isinstance(before, dict) and before.get("files") != stamp:
    logging.warning(
        "The training files were added, removed or renamed since this workdir's last start "
        "(%s examples, now %d): the resumed run's input order and held-out split differ from "
        "its checkpoints'. Use a fresh --workdir to train on the new files from scratch.",
        before.get("examples", "?"), now["examples"])
  elif resumed and before is None:
    logging.info("No record of the files this workdir trained on (%s, written since 2026-12-06); "
                 "recording %d examples now.", DATA_STAMP, now["examples"])
  try:
    eval_features.write_json_atomic(path, now)
  except OSError as e:  # a warning's record: never worth stopping the run
    logging.warning("Could not write %s (%s).", path, e)


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The config's, the data's and the workdir's checks, and the resumed checkpoint's
  config against this one; nothing written. Returns a summary.

  Raises the same one-line errors as ``train_and_evaluate``.
  """
  info = validate_config(config)
  check_not_a_file(workdir)  # Nothing created: a dry run writes nothing.
  steps = checkpoint.manager(workdir, read_only=True).all_steps() if os.path.isdir(
      checkpoint.checkpoint_dir(workdir)) else []
  resume = "starts from scratch"
  if steps:
    try:
      saved, step = checkpoint.read_config(workdir, verify=False)
    except checkpoint.CheckpointError as e:
      resume = f"has checkpoints {steps} but none is readable ({str(e).splitlines()[0]})"
    else:
      changed = check_config_change(saved, config)  # another experiment: ConfigError
      resume = f"resumes from step {step}" + (
          f" with a changed config ({'; '.join(changed)})" if changed else "")
  return (f"{config}\n"
          f"dry run: {config.kind} on {info.name} split {config.data.train_split!r}: "
          f"{info.num_examples} examples of {info.image_size}x{info.image_size}x{info.channels}; "
          f"{config.num_train_steps} steps of batch {config.batch_size} on "
          f"{jax.device_count()} device(s); {os.path.abspath(workdir)} {resume}. "
          "Everything checks out; nothing was trained.")


def check_not_a_file(workdir: str) -> None:
  """Raises ConfigError when ``workdir`` names a file; creates nothing."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} is a file, not a directory; choose another "
                      "--workdir.")


def check_workdir(workdir: str) -> None:
  """Creates ``workdir`` and proves it writable, or raises ConfigError."""
  check_not_a_file(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"Cannot write to --workdir={workdir} ({type(e).__name__}: "
                      f"{e.strerror or e}); choose a writable directory.") from e
