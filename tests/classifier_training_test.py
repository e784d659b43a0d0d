"""The classifier's training loop shares the VAE-GAN trainer's guarantees.

A small digits classifier (the evaluation-feature kind: classes, softmax) is
trained for 12 steps with checkpoints every 4. Resuming -- after a SIGTERM, from
a layout written before checkpoints had checksums, or past a corrupt newest
checkpoint -- must end bit for bit where the uninterrupted run ends, because
the state holds everything and the input order is a pure function of
(seed, step). The signal is sent in-process, as in ``fault_test.py``.
"""

import glob
import json
import os
import re
import signal
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging

from experiments.configs import tiny
from vaegan_jax import classifier
from vaegan_jax import data as data_lib
from vaegan_jax.evaluation import features
from vaegan_jax.runtime import checkpoint
from vaegan_jax.runtime import loop
from vaegan_jax.runtime import workdir_lock
from vaegan_jax.runtime.errors import UserError

TOTAL, EVERY = 12, 4


def _config(**kw):
  data = tiny.get_config().data
  c = features.classifier_config(data, data_lib.validate(data))
  c.model.update(dict(first=8, widths=(8, 16, 16), dense=16, conv_impl="xla"))
  c.batch_size = 16
  c.num_train_steps = TOTAL
  c.log_every = c.checkpoint_every = EVERY
  c.eval_every = TOTAL
  c.keep_checkpoints = 3
  c.update(kw)
  return c


def _template(config):
  arch = classifier.ClassifierArch.from_config(config)
  return jax.eval_shape(lambda: classifier.create_state(arch, config.learning_rate,
                                                jax.random.PRNGKey(0)))


def _state(wd, config, step=None):
  """The full saved state (params, BN statistics, Adam state) of ``step`` (default: newest)."""
  mngr = checkpoint.manager(classifier.classifier_dir(wd), read_only=True)
  try:
    return checkpoint.restore_state(mngr, _template(config), step)
  finally:
    mngr.close()


def _steps(wd):
  root = classifier.classifier_dir(wd)
  return sorted(int(d) for d in os.listdir(checkpoint.checkpoint_dir(root)))


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("uninterrupted"))
  clf = classifier.train_and_evaluate(_config(), wd)
  return wd, clf


def test_uninterrupted_run_writes_checksummed_checkpoints_and_metrics(uninterrupted):
  wd, clf = uninterrupted
  root = classifier.classifier_dir(wd)
  assert clf.step == TOTAL and _steps(wd) == [4, 8, 12]
  for s in (4, 8, 12):  # The trainer's checkpoint format: with the integrity record.
    assert {"config", "integrity", "state"} <= set(
        os.listdir(os.path.join(checkpoint.checkpoint_dir(root), str(s))))
  assert glob.glob(os.path.join(root, "events.out.tfevents.*"))  # TensorBoard
  lines = [json.loads(l) for l in open(os.path.join(root, "metrics.jsonl"))]
  train = [l for l in lines if "loss" in l]
  assert [l["step"] for l in train] == [4, 8, 12]
  assert all(np.isfinite(l["loss"]) and 0 <= l["accuracy"] <= 1 for l in train)
  assert "images_per_sec" in train[-1]
  evals = [l for l in lines if "eval/accuracy" in l]
  assert [l["step"] for l in evals] == [12] and 0 <= evals[0]["eval/accuracy"] <= 1
  assert not os.path.exists(os.path.join(root, workdir_lock.LOCK_NAME))  # released
  restored, config = classifier.restore(wd)
  assert restored.step == TOTAL and config.model.num_classes == 10
  _assert_same(restored.variables, clf.variables)


def test_sigterm_saves_the_step_and_resuming_equals_the_uninterrupted_run(
    uninterrupted, tmp_path, monkeypatch, caplog):
  wd_full, _ = uninterrupted
  wd = str(tmp_path)
  real_step = classifier.train_step

  def step_then_sigterm(state, *a, **kw):
    if int(state.step) == 5:  # While step 6 is being computed.
      os.kill(os.getpid(), signal.SIGTERM)
    return real_step(state, *a, **kw)

  monkeypatch.setattr("vaegan_jax.classifier.model.train_step", step_then_sigterm)
  handler_before = signal.getsignal(signal.SIGTERM)
  with caplog.at_level(logging.WARNING):
    stopped = classifier.train_and_evaluate(_config(), wd)
  monkeypatch.undo()
  # The step that was running finished and was saved: 6, not a checkpoint step.
  assert stopped.step == 6
  assert _steps(wd) == [4, 6]
  assert "stopped after step 6 of 12" in caplog.text and "SIGTERM" in caplog.text
  assert signal.getsignal(signal.SIGTERM) is handler_before
  _assert_same(classifier.restore(wd)[0].variables, stopped.variables)
  # Up to the stop, the same as the uninterrupted run.
  _assert_same(_state(wd, _config(), 4), _state(wd_full, _config(), 4))

  trained = []
  monkeypatch.setattr("vaegan_jax.classifier.model.train_step", lambda state, *a, **kw: (
      trained.append(int(state.step)), real_step(state, *a, **kw))[1])
  resumed = classifier.train_and_evaluate(_config(), wd)
  assert trained == list(range(6, TOTAL))  # From the saved step, not from scratch.
  assert resumed.step == TOTAL and _steps(wd) == [6, 8, 12]  # keep_checkpoints=3
  # Bit for bit: params, BN statistics, Adam's moments and count.
  _assert_same(_state(wd, _config()), _state(wd_full, _config()))
  path = os.path.join(classifier.classifier_dir(wd), "metrics.jsonl")
  lines = [json.loads(l) for l in open(path)]
  assert [l["step"] for l in lines if "loss" in l] == [4, 8, 12]


def test_corrupt_newest_checkpoint_is_skipped_then_moved_aside(uninterrupted, tmp_path,
                                                                 caplog):
  wd_full, _ = uninterrupted
  wd = str(tmp_path)
  classifier.train_and_evaluate(_config(num_train_steps=8), wd)
  assert _steps(wd) == [4, 8]
  step_dir = os.path.join(checkpoint.checkpoint_dir(classifier.classifier_dir(wd)), "8")
  data = max((f for f in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True)
              if os.path.isfile(f)), key=os.path.getsize)
  with open(data, "r+b") as f:  # Flip bytes: Orbax itself would restore garbage.
    f.seek(os.path.getsize(data) // 2)
    chunk = f.read(16)
    f.seek(os.path.getsize(data) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))
  # A reader skips it (with a warning) and moves nothing.
  # Flipped compressed bytes decompress to garbage (the checksum catches it) or break
  # the zstd stream (TensorStore can't read it), depending on which file is largest.
  caught = "checksum mismatch|unreadable"
  with caplog.at_level(logging.WARNING):
    clf, _ = classifier.restore(wd)
  assert clf.step == 4 and re.search(caught, caplog.text)
  assert _steps(wd) == [4, 8]
  with pytest.raises(classifier.ClassifierError, match=caught) as e:
    classifier.restore(wd, step=8)
  assert "\n" not in str(e.value)
  # The trainer moves it aside and resumes from 4: the same step 8 as before.
  classifier.train_and_evaluate(_config(num_train_steps=8), wd)
  assert _steps(wd) == [4, 8]
  assert os.listdir(os.path.join(classifier.classifier_dir(wd), "checkpoints_bad")) == ["8"]
  _assert_same(_state(wd, _config()), _state(wd_full, _config(), 8))


def test_checkpoints_of_the_old_layout_are_read_and_resumed(uninterrupted, tmp_path, caplog):
  """Classifiers trained before checksums (``classifier/<step>/{state,config}``, e.g.
  an evaluation cache entry) still restore, and training resumes from them."""
  wd_full, _ = uninterrupted
  wd = str(tmp_path)
  config = _config()
  state8 = _state(wd_full, config, 8)
  saved = json.loads(config.to_json_best_effort())
  saved["attribute_names"] = []
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  mngr = ocp.CheckpointManager(classifier.classifier_dir(wd), options=options,
                               item_names=("state", "config"))
  mngr.save(8, args=ocp.args.Composite(state=ocp.args.StandardSave(state8),
                                       config=ocp.args.JsonSave(saved)))
  mngr.wait_until_finished()
  mngr.close()
  with caplog.at_level(logging.WARNING):
    old, old_config = classifier.restore(wd)
  assert old.step == 8 and old_config.model.widths == (8, 16, 16)
  assert "no checksum" in caplog.text
  _assert_same(old.variables, (state8.params, state8.batch_stats))
  resumed = classifier.train_and_evaluate(config, wd)
  assert resumed.step == TOTAL and _steps(wd) == [12]  # New checkpoints: new layout.
  _assert_same(_state(wd, config), _state(wd_full, config))


def test_a_second_trainer_on_the_directory_is_refused(tmp_path):
  root = classifier.classifier_dir(str(tmp_path))
  os.makedirs(root)
  # A live process on this host (pid 1) holds the lock.
  with open(os.path.join(root, workdir_lock.LOCK_NAME), "w") as f:
    json.dump({"host": socket.gethostname(), "pid": 1, "started": "earlier"}, f)
  with pytest.raises(workdir_lock.WorkdirLockedError, match="pid 1") as e:
    classifier.train_and_evaluate(_config(), str(tmp_path))
  assert "\n" not in str(e.value)
  assert isinstance(e.value, UserError)
  assert not os.path.exists(checkpoint.checkpoint_dir(root))


def test_feature_classifier_stopped_by_a_signal_is_not_used(tmp_path, monkeypatch):
  """Evaluation trains the digits classifier on the fly: a SIGTERM during that
  training keeps its checkpoint and says to rerun, instead of scoring with a
  half-trained classifier."""
  real_step = classifier.train_step

  def step_then_sigterm(state, *a, **kw):
    if int(state.step) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_step(state, *a, **kw)

  monkeypatch.setattr("vaegan_jax.classifier.model.train_step", step_then_sigterm)
  with pytest.raises(loop.Preempted,
                     match="step 3 of 200, its checkpoint 3 is saved in .*rerun") as e:
    features.classifier_features(tiny.get_config().data, directory=str(tmp_path))
  assert "\n" not in str(e.value)
  assert _steps(str(tmp_path)) == [3]
  assert not os.path.exists(os.path.join(str(tmp_path), "heldout_accuracy.json"))
  # A signal before the resumed run's first step: what is said to be saved is what is saved.
  real_resume = classifier.train._resume

  def sigterm_then_resume(*a, **kw):
    os.kill(os.getpid(), signal.SIGTERM)
    return real_resume(*a, **kw)

  monkeypatch.setattr("vaegan_jax.classifier.train._resume", sigterm_then_resume)
  with pytest.raises(loop.Preempted, match="step 3 of 200, before a new step: nothing "
                     "new was saved"):
    features.classifier_features(tiny.get_config().data, directory=str(tmp_path))
  assert _steps(str(tmp_path)) == [3]
