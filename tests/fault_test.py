"""The fault suite, in-process part: faults that a test can inject in microseconds.

Each test here failed before its fix (issue 10). The subprocess trials
(kill -9, SIGTERM/SIGINT, two processes, a full disk) are in
``fault_slow_test.py``, marked slow. docs/reliability.md has the table.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import logging
from PIL import Image

from experiments.configs import tiny
from vaegan_jax import data
from vaegan_jax import sampling
from vaegan_jax import train
from vaegan_jax import train_config
from vaegan_jax.runtime import checkpoint
from vaegan_jax.runtime import workdir_lock


def _config(**kw):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.log_every = 100
  c.sample_every = 100
  c.checkpoint_every = 4
  for k, v in kw.items():
    c[k] = v
  return c


def _steps(wd):
  return sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())


def _inject(monkeypatch, at_step, action):
  """Runs ``action()`` when the training loop asks for batch ``at_step`` (0-based)."""
  real = data.batch_iterator

  def wrapped(*args, start_step=0, **kw):
    it = real(*args, start_step=start_step, **kw)
    if kw.get("shuffle", True) is False:  # the fixed evaluation batch
      return it

    def gen():
      for i, b in enumerate(it, start=start_step):
        if i == at_step:
          action()
        yield b
    return gen()

  monkeypatch.setattr(data, "batch_iterator", wrapped)


@pytest.mark.slow  # 15-45 s on 2 cores; CI runs it in the slow suite.
def test_update_that_blows_up_on_a_checkpoint_step_is_not_saved(tmp_path):
  """Step 5's loss is finite but its update (lr 1e30) poisons the state; 5 is a
  checkpoint step. The state may only be saved once a loss computed from it is
  finite, so 4 stays the newest checkpoint and resuming works."""
  wd = str(tmp_path)
  good = train.train_and_evaluate(_config(num_train_steps=4), wd)
  with pytest.raises(train.NonFiniteLossError, match="at step 5"):
    train.train_and_evaluate(_config(num_train_steps=12, checkpoint_every=1,
                                     learning_rate=1e30), wd)
  assert _steps(wd) == [4]
  state, _ = sampling.restore_for_inference(wd)
  jax.tree.map(np.testing.assert_array_equal, state.params, good.params)
  resumed = train.train_and_evaluate(_config(num_train_steps=6), wd)
  assert int(resumed.step) == 6


def test_final_state_is_checked_before_it_is_saved(tmp_path):
  """The last step's update blows up: no step follows to see it, so the loop
  runs one probe step before the final save."""
  wd = str(tmp_path)
  train.train_and_evaluate(_config(num_train_steps=4), wd)
  with pytest.raises(train.NonFiniteLossError):
    train.train_and_evaluate(_config(num_train_steps=5, learning_rate=1e30), wd)
  assert _steps(wd) == [4]


def test_error_exit_finishes_the_in_flight_save(tmp_path, monkeypatch):
  """An error in the loop (here an unexpected one, a bug) right after a save was
  started: the save completes before the error leaves train_and_evaluate (it
  used to be abandoned)."""
  wd = str(tmp_path)
  finished = []
  real_finish = checkpoint.finish

  def finish(mngr, **kw):
    finished.append(mngr.is_saving_in_progress())
    return real_finish(mngr, **kw)
  monkeypatch.setattr(checkpoint, "finish", finish)

  def fail():
    raise RuntimeError("injected: a bug in the input")
  _inject(monkeypatch, 10, fail)
  with pytest.raises(RuntimeError, match="injected"):
    train.train_and_evaluate(_config(num_train_steps=20, checkpoint_every=2), wd)
  assert finished, "the error path did not finish the checkpoint manager"
  # Checkpoint 8 is saved once step 9's loss is seen: before batch 10 is asked for.
  assert _steps(wd)[-1] == 8
  assert not [d for d in os.listdir(os.path.join(wd, "checkpoints")) if "tmp" in d]
  state, _ = sampling.restore_for_inference(wd)
  assert int(state.step) == 8


def test_an_unreadable_image_mid_run_names_it_saves_the_step_reached_and_resumes(tmp_path,
                                                                               monkeypatch):
  """A training image that turns unreadable mid-run (a truncated copy, a bad
  disk block): one line naming the file and the fix, the step reached is saved
  (checkpoint_every is far away), and after the fix the run resumes from it."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(40):
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i:02d}.png")
  victim = folder / "07.png"  # a training image, read every epoch (2-3 steps)
  good_bytes = victim.read_bytes()
  config = _config(num_train_steps=30, checkpoint_every=100)
  config.data.update(dict(name="folder", folder=str(folder)))
  _inject(monkeypatch, 6, lambda: victim.write_bytes(good_bytes[:40]))
  wd = str(tmp_path / "wd")
  with pytest.raises(data.DataError) as e:
    train.train_and_evaluate(config, wd)
  msg = str(e.value)
  assert "\n" not in msg and f"Cannot read image {victim}" in msg and "remove or fix it" in msg
  saved = re.search(r"Step (\d+) is saved \(checkpoint \1\)\.$", msg)
  assert saved, msg
  # grain reads ahead (4-8 batches, by the core count), so the failure is seen a few steps on.
  assert 6 <= int(saved.group(1)) < 30 and _steps(wd) == [int(saved.group(1))]
  victim.write_bytes(good_bytes)
  monkeypatch.undo()  # no more injection
  state = train.train_and_evaluate(config, wd)
  assert int(state.step) == 30


@pytest.mark.slow  # ~15 s: a fault trial
def test_an_input_failure_under_jax_distributed_saves_nothing_and_says_so(tmp_path, monkeypatch):
  """One process's input fails: a save by that process alone would wait forever in
  Orbax's barrier for the others, so nothing is saved and the line says why."""
  def fail_as_one_of_two_processes():
    monkeypatch.setattr(jax, "process_count", lambda: 2)  # from the failure on
    raise data.DataError("Cannot read image x.png (injected): remove or fix it.")
  _inject(monkeypatch, 6, fail_as_one_of_two_processes)
  wd = str(tmp_path)
  with pytest.raises(data.DataError) as e:
    train.train_and_evaluate(_config(num_train_steps=30, checkpoint_every=4), wd)
  assert re.search(r"remove or fix it\. Step \d+ was not saved \(a multi-process run saves only "
                   r"at a stop all processes agree on\); the last good checkpoint, 4, is kept\.$",
                   str(e.value)), str(e.value)
  assert _steps(wd) == [4]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_reported_step_and_returns(tmp_path, monkeypatch, caplog, sig):
  """SIGINT (Ctrl-C) used to raise KeyboardInterrupt and save nothing."""
  wd = str(tmp_path)
  _inject(monkeypatch, 6, lambda: os.kill(os.getpid(), sig))
  handler_before = signal.getsignal(sig)
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(_config(num_train_steps=1000, checkpoint_every=100), wd)
  stopped = int(state.step)
  assert 6 <= stopped <= 8  # the handler runs between steps; at most 2 in flight
  assert _steps(wd) == [stopped]
  assert f"stopped after step {stopped}" in caplog.text
  assert signal.Signals(sig).name in caplog.text
  restored, _ = sampling.restore_for_inference(wd)
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
  # The handlers are restored afterwards.
  assert signal.getsignal(sig) is handler_before


@pytest.mark.slow  # 15-45 s on 2 cores; CI runs it in the slow suite.
def test_resume_refuses_another_experiment_and_warns_on_other_changes(tmp_path, caplog):
  wd = str(tmp_path)
  train.train_and_evaluate(_config(num_train_steps=2), wd)
  with pytest.raises(train_config.ConfigError, match=r"kind: 'vaegan' -> 'vae_dis_l'.*"
                     r"allow_config_change=True"):
    train.train_and_evaluate(_config(num_train_steps=4, kind="vae_dis_l"), wd)
  assert _steps(wd) == [2]
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(_config(num_train_steps=4, seed=3, gamma=1e-3), wd)
  assert int(state.step) == 4
  assert "changed config: gamma: 1e-06 -> 0.001" in caplog.text
  assert "changed config: seed: 0 -> 3" in caplog.text
  assert "num_train_steps" not in caplog.text  # run-time settings change silently
  other_data = _config(num_train_steps=6)
  other_data.data.train_split = "all"
  with pytest.raises(train_config.ConfigError, match=r"data.train_split: 'train' -> 'all'"):
    train.train_and_evaluate(other_data, wd)
  other_data.allow_config_change = True
  state = train.train_and_evaluate(other_data, wd)
  assert int(state.step) == 6


def _write_lock(wd, **holder):
  os.makedirs(wd, exist_ok=True)
  info = dict(host=socket.gethostname(), pid=os.getpid(), started="earlier")
  info.update(holder)
  with open(os.path.join(wd, workdir_lock.LOCK_NAME), "w") as f:
    json.dump(info, f)


def test_second_trainer_on_a_workdir_refuses(tmp_path):
  wd = str(tmp_path)
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(wd, pid=sleeper.pid)
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf"in use by another trainer, pid {sleeper.pid} on this host"):
      train.train_and_evaluate(_config(num_train_steps=2), wd)
  finally:
    sleeper.kill()
    sleeper.wait()
  assert not os.path.exists(os.path.join(wd, "checkpoints"))
  _write_lock(wd, host="some-other-host", pid=1)
  with pytest.raises(workdir_lock.WorkdirLockedError, match="on host some-other-host"):
    train.train_and_evaluate(_config(num_train_steps=2), wd)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  wd = str(tmp_path)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_lock(wd, pid=dead.pid)
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(_config(num_train_steps=2), wd)
  assert int(state.step) == 2
  assert f"stale lock of pid {dead.pid}" in caplog.text
  assert not os.path.exists(os.path.join(wd, workdir_lock.LOCK_NAME))  # released


def test_lock_is_exclusive_between_two_holders(tmp_path):
  a, b = workdir_lock.WorkdirLock(str(tmp_path)), workdir_lock.WorkdirLock(str(tmp_path))
  b.info = dict(b.info, pid=a.info["pid"] + 10 ** 6)  # another (fictitious) process
  with a:
    held = json.load(open(os.path.join(tmp_path, workdir_lock.LOCK_NAME)))
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    # b sees a live holder (this process) and refuses.
    with pytest.raises(workdir_lock.WorkdirLockedError):
      b.acquire()
  assert not os.path.exists(os.path.join(tmp_path, workdir_lock.LOCK_NAME))
