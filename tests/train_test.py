"""The training binary: outputs, exact resume, preemption, kill -9, bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from experiments.configs import tiny
from vaegan_jax import sampling
from vaegan_jax import train
from vaegan_jax.runtime import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**kw):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.log_every = 2
  c.sample_every = 4
  c.checkpoint_every = 4
  for k, v in kw.items():
    c[k] = v
  return c


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_end_to_end_writes_checkpoint_metrics_and_grids(tmp_path):
  wd = str(tmp_path)
  state = train.train_and_evaluate(_config(num_train_steps=4), wd)
  assert int(state.step) == 4
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["4"]
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [2, 4]
  for key in ("kl_prior", "llike", "gan_real", "gan_fake", "dis_accuracy", "learning_rate",
              "skipped_discriminator", "images_per_sec"):
    assert np.isfinite(lines[-1][key]), key
  samples = Image.open(os.path.join(wd, "samples", "samples_0000004.png"))
  assert samples.mode == "L" and samples.size[0] > 4 * 16
  assert os.path.exists(os.path.join(wd, "samples", "reconstructions_0000004.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))
  restored, config = sampling.restore_for_inference(wd)
  _assert_trees_equal(restored.params, state.params)
  assert config.model.image_size == 16 and config.kind == "vaegan"


def test_resume_equals_uninterrupted(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  train.train_and_evaluate(_config(num_train_steps=4), a)
  resumed = train.train_and_evaluate(_config(num_train_steps=8), a)
  straight = train.train_and_evaluate(_config(num_train_steps=8), b)
  assert int(resumed.step) == int(straight.step) == 8
  _assert_trees_equal(resumed.params, straight.params)
  _assert_trees_equal(resumed.opt_state, straight.opt_state)
  _assert_trees_equal(resumed.batch_stats, straight.batch_stats)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  wd = str(tmp_path)
  good = train.train_and_evaluate(_config(num_train_steps=4), wd)
  with pytest.raises(train.NonFiniteLossError, match=r"Non-finite loss \(.+\) at step \d+"):
    train.train_and_evaluate(_config(num_train_steps=12, learning_rate=1e30), wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4"]
  restored, _ = sampling.restore_for_inference(wd)
  _assert_trees_equal(restored.params, good.params)


def _spawn(wd, *flags):
  cmd = [sys.executable, "-m", "experiments.train", f"--workdir={wd}",
         "--config=experiments/configs/tiny.py", "--config.model.conv_impl=xla",
         "--config.num_train_steps=100000", "--config.log_every=1000",
         "--config.sample_every=100000", *flags]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _wait_for_checkpoint_step(wd, min_step, proc, timeout=300):
  ckdir = os.path.join(wd, "checkpoints")
  t0 = time.time()
  while time.time() - t0 < timeout:
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    steps = [int(d) for d in os.listdir(ckdir) if d.isdigit()] if os.path.isdir(ckdir) else []
    if steps and max(steps) >= min_step:
      return
    time.sleep(0.2)
  raise TimeoutError("no checkpoints written")


@pytest.mark.slow  # 15-45 s on 2 cores; CI runs it in the slow suite.
def test_sigterm_saves_and_exits_cleanly_then_kill9_leaves_restorable(tmp_path):
  wd = str(tmp_path)
  proc = _spawn(wd, "--config.checkpoint_every=50")
  _wait_for_checkpoint_step(wd, 50, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  stopped = re.search(r"Preempted \(SIGTERM\): stopped after step (\d+)", err)
  assert stopped, err[-2000:]
  mngr = checkpoint.manager(wd, read_only=True)
  steps = sorted(mngr.all_steps())
  assert steps[-1] == int(stopped.group(1)) >= 50  # a checkpoint at the preemption step
  # kill -9 while saving every step: the latest complete checkpoint restores.
  proc = _spawn(wd, "--config.checkpoint_every=1")
  _wait_for_checkpoint_step(wd, steps[-1] + 3, proc)
  proc.kill()
  proc.communicate()
  state, _ = sampling.restore_for_inference(wd)
  assert int(state.step) > steps[-1]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize("flags,message", [
    (["--config.data.name=imagenet"], "Unknown dataset 'imagenet'"),
    (["--config.model.image_size=20", "--config.data.image_size=20"], "must be divisible"),
    (["--config.batch_size=12"], "not divisible by the 8 devices"),
    (["--config=experiments/configs/celeba_vaegan.py", "--config.data.manual_dir=/nonexistent"],
     "img_align_celeba.zip"),
    (["--config.kind=vqvae"], "kind must be one of"),
    (["--config.eval_every=5", "--config.eval_features=fid"], "eval_features must be one of"),
    (["--config.eval_every=5", "--config.eval_features=inception"],
     "needs --config.eval_inception_weights"),
    # Issue 10's list: each used to be a traceback or a misleading error.
    (["--config.model.z_dim=0"], "model.z_dim must be positive"),
    (["--config.learning_rate=0"], "learning_rate must be a positive number"),
    (["--config.learning_rate=nan"], "learning_rate must be a positive number"),
    (["--config.keep_checkpoints=0"], "keep_checkpoints must be >= 1"),
    (["--config.batch_size=2048"], "is larger than the 1433 examples"),
    (["--config.lerning_rate=1"], 'Did you mean "learning_rate"'),
    (["--config=no_such_config.py"], "no_such_config.py"),
])
def test_bad_config_is_one_clear_line_before_compiling(tmp_path, flags, message):
  cmd = [sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}"] + flags
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, r.stderr[-1500:]
  assert "Traceback" not in r.stderr
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


@pytest.mark.parametrize("make", ["file", "under_a_file"])
def test_workdir_that_is_not_a_writable_directory_is_one_line(tmp_path, make):
  wd = tmp_path / "wd"
  wd.write_text("not a directory")
  target = str(wd) if make == "file" else str(wd / "sub")
  r = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={target}"],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 1
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "--workdir" in last, r.stderr[-1500:]
  assert "Traceback" not in r.stderr
  assert wd.read_text() == "not a directory"


def test_resume_with_mismatching_architecture_is_one_clear_error(tmp_path):
  wd = str(tmp_path)
  train.train_and_evaluate(_config(num_train_steps=2), wd)
  c = _config(num_train_steps=4)
  c.model.z_dim = 4
  with pytest.raises(checkpoint.CheckpointError, match=r"does not match the model built from"):
    train.train_and_evaluate(c, wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2"]
