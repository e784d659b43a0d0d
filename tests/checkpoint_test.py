"""Checksummed checkpoints: corruption is detected, restores fall back, saves fail loudly.

Real (untrained) tiny TrainStates saved with ``checkpoint.save``; corruption is
made by hand on the files Orbax wrote (flipped bytes, deleted or truncated
data files, missing metadata or items, an empty step directory). Nothing is
trained, and only the sampler/evaluator tests compile a network.
"""

import errno
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import tiny
from vaegan_jax import sampling
from vaegan_jax import sampling_outputs
from vaegan_jax import train_step
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import features as feats_lib
from vaegan_jax.runtime import checkpoint
from vaegan_jax.runtime import digest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**model):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.model.update(model)
  return c


@pytest.fixture(scope="module")
def state():
  """A host TrainState of the tiny VAE-GAN (step 0)."""
  return jax.device_get(train_step.create_train_state(_config(), jax.random.PRNGKey(0)))


def _at(state, step):
  """``state`` at ``step``, with params shifted by ``step`` to tell checkpoints apart."""
  return state.replace(step=np.asarray(step, np.int32),
                       params=jax.tree.map(lambda p: p + np.float32(step), state.params))


def _template(config=None):
  config = config or _config()
  return jax.eval_shape(lambda: train_step.create_train_state(config, jax.random.PRNGKey(0)))


def _save(wd, state, steps, config=None, keep=3):
  mngr = checkpoint.manager(wd, keep=keep)
  for s in steps:
    checkpoint.save(mngr, _at(state, s), config or _config())
  checkpoint.finish(mngr)


def _step_dir(wd, step):
  return os.path.join(checkpoint.checkpoint_dir(wd), str(step))


def _steps_on_disk(wd):
  return sorted(os.listdir(checkpoint.checkpoint_dir(wd)))


def _largest_data_file(wd, step):
  files = [f for f in glob.glob(os.path.join(_step_dir(wd, step), "state", "**"), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _flip_bytes(path, n=16):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    chunk = f.read(n)
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _one_line(e):
  text = str(e.value if hasattr(e, "value") else e)
  assert "\n" not in text, text
  return text


# ----------------------------------------------------------------------------
# The checksum.


def test_digest_is_the_same_for_the_dataclass_and_the_restored_dicts(tmp_path, state):
  wd = str(tmp_path)
  _save(wd, state, [3])
  # Orbax without a target: nested dicts and lists (tuples, NamedTuples lost).
  raw = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
      os.path.join(_step_dir(wd, 3), "state"))
  assert isinstance(raw, dict) and isinstance(raw["opt_state"]["encoder"], list)
  saved = _at(state, 3)
  assert digest.state_digest(raw) == digest.state_digest(saved)
  assert digest.state_digest(jax.device_put(saved)) == digest.state_digest(saved)
  record = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      os.path.join(_step_dir(wd, 3), "integrity"))
  assert record == {"format": 1, "sha256": digest.state_digest(saved),
                    "num_leaves": len(jax.tree.leaves(saved))}


def test_digest_changes_when_one_byte_of_one_leaf_changes(state):
  kernel = np.array(state.params["decoder"]["dense"]["kernel"])
  kernel.view(np.uint8).reshape(-1)[kernel.nbytes // 2] ^= 1
  params = jax.tree.map(lambda x: x, state.params)  # New dicts, same leaves.
  params["decoder"]["dense"]["kernel"] = kernel
  assert digest.state_digest(state.replace(params=params)) != digest.state_digest(state)


# ----------------------------------------------------------------------------
# Detection and fallback.


@pytest.mark.parametrize("quarantine", [True, False])
def test_flipped_bytes_are_detected_and_restore_latest_falls_back(tmp_path, state, caplog,
                                                                  quarantine):
  wd = str(tmp_path)
  _save(wd, state, [2, 4])
  _flip_bytes(_largest_data_file(wd, 4))
  mngr = checkpoint.manager(wd, read_only=True)
  with pytest.raises(checkpoint.CorruptCheckpointError) as e:
    checkpoint.restore_state(mngr, _template(), 4)
  assert _step_dir(wd, 4) in _one_line(e)
  with caplog.at_level(logging.WARNING):
    restored = checkpoint.restore_latest(wd, _template(), quarantine=quarantine)
  assert restored.step == 2 and int(restored.state.step) == 2
  assert isinstance(restored.state, train_step.TrainState)
  _assert_same(restored.state, _at(state, 2))
  assert restored.config.model.z_dim == 8 and restored.config.model.enc_widths == (8, 16, 16)
  warning = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
  assert len(warning) == 1 and "Checkpoint 4 in" in warning[0], warning
  assert "falling back to checkpoint 2" in warning[0]
  bad = os.path.join(checkpoint.quarantine_dir(wd), "4")
  if quarantine:
    assert _steps_on_disk(wd) == ["2"]
    assert os.path.isdir(os.path.join(bad, "state")), "moved aside, never deleted"
    assert f"moved aside to {bad}" in warning[0]
    # A second bad checkpoint 4 does not overwrite the first one.
    _save(wd, state, [4])
    _flip_bytes(_largest_data_file(wd, 4))
    assert checkpoint.restore_latest(wd, _template(), quarantine=True).step == 2
    assert sorted(os.listdir(checkpoint.quarantine_dir(wd))) == ["4", "4.1"]
  else:
    assert _steps_on_disk(wd) == ["2", "4"]
    assert not os.path.exists(checkpoint.quarantine_dir(wd))
    assert "kept in place" in warning[0]


def _damage(wd, step, how):
  """Damages checkpoint ``step``; returns the step that is now unusable."""
  d = _step_dir(wd, step)
  if how == "flipped_bytes":
    _flip_bytes(_largest_data_file(wd, step))
  elif how == "deleted_data_file":
    os.remove(_largest_data_file(wd, step))
  elif how == "truncated_data_file":
    path = _largest_data_file(wd, step)
    os.truncate(path, os.path.getsize(path) // 2)
  elif how == "missing_metadata":
    meta = os.path.join(d, "state", "_METADATA")  # Orbax's tree metadata.
    assert os.path.isfile(meta), os.listdir(os.path.join(d, "state"))
    os.remove(meta)
  elif how == "missing_state":
    shutil.rmtree(os.path.join(d, "state"))
  elif how == "missing_config":
    shutil.rmtree(os.path.join(d, "config"))
  elif how == "unparsable_config":
    with open(os.path.join(d, "config", "metadata"), "w") as f:
      f.write('{"kind": ')
  elif how == "unparsable_integrity":
    with open(os.path.join(d, "integrity", "metadata"), "w") as f:
      f.write("[")
  elif how == "empty_step_dir":  # A newer, empty step directory.
    step += 2
    os.makedirs(_step_dir(wd, step))
  else:
    raise ValueError(how)
  return step


DAMAGES = ("flipped_bytes", "deleted_data_file", "truncated_data_file", "missing_metadata",
           "missing_state", "missing_config", "unparsable_config", "unparsable_integrity",
           "empty_step_dir")


@pytest.mark.parametrize("how", DAMAGES)
def test_unusable_newest_checkpoint_falls_back_with_one_warning(tmp_path, state, caplog, how):
  wd = str(tmp_path)
  _save(wd, state, [2, 4])
  bad = _damage(wd, 4, how)
  good = 4 if bad == 6 else 2
  on_disk = _steps_on_disk(wd)
  # An explicit step: one line naming the step directory.
  with pytest.raises(checkpoint.CorruptCheckpointError) as e:
    sampling.restore_for_inference(wd, step=bad)
  assert _step_dir(wd, bad) in _one_line(e)
  with pytest.raises(checkpoint.CorruptCheckpointError):
    checkpoint.read_config(wd, bad, verify=True)
  # No step: the newest good one, with a warning naming the bad one.
  with caplog.at_level(logging.WARNING):
    restored = checkpoint.restore_latest(wd, _template(), quarantine=False)
  assert restored.step == good
  _assert_same(restored.state.params, _at(state, good).params)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(f"Checkpoint {bad} in" in w and f"falling back to checkpoint {good}" in w
             for w in warnings), warnings
  # Readers fall back the same way, and never move anything.
  assert checkpoint.read_config(wd)[1] == good
  restored, config = sampling.restore_for_inference(wd)
  assert int(restored.step) == good and config.kind == "vaegan"
  assert _steps_on_disk(wd) == on_disk


@pytest.mark.parametrize("quarantine", [True, False])
def test_all_checkpoints_unusable_is_one_line_error(tmp_path, state, caplog, quarantine):
  wd = str(tmp_path)
  _save(wd, state, [2, 4])
  _damage(wd, 2, "missing_metadata")
  _damage(wd, 4, "flipped_bytes")
  with caplog.at_level(logging.WARNING):
    with pytest.raises(checkpoint.CheckpointError) as e:
      checkpoint.restore_latest(wd, _template(), quarantine=quarantine)
  assert not isinstance(e.value, checkpoint.CorruptCheckpointError)
  msg = _one_line(e)
  assert "None of the checkpoints" in msg and "2, 4" in msg
  assert "Checkpoint 2 in" in caplog.text and "no older checkpoint to fall back to" in caplog.text
  if quarantine:
    assert checkpoint.quarantine_dir(wd) in msg and "starts from scratch" in msg
    assert sorted(os.listdir(checkpoint.quarantine_dir(wd))) == ["2", "4"]
    assert checkpoint.restore_latest(wd, _template(), quarantine=True) is None
  else:
    assert "readable" in msg and _steps_on_disk(wd) == ["2", "4"]
    for read in (checkpoint.read_config, sampling.restore_for_inference):
      with pytest.raises(checkpoint.CheckpointError, match="None of the checkpoints"):
        read(wd)


def test_no_checkpoint_at_all(tmp_path):
  assert checkpoint.restore_latest(str(tmp_path), _template(), quarantine=True) is None
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint in .*train first"):
    checkpoint.read_config(str(tmp_path))


def test_intact_checkpoint_of_another_model_is_a_config_error_and_nothing_moves(tmp_path,
                                                                                state):
  wd = str(tmp_path)
  _save(wd, state, [2, 4])
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.restore_latest(wd, _template(_config(z_dim=4)), quarantine=True)
  assert type(e.value) is checkpoint.CheckpointError  # pylint: disable=unidiomatic-typecheck
  msg = _one_line(e)
  assert "does not match the model built from the config" in msg and "--workdir" in msg
  assert "Checkpoint step 4" in msg, "no fallback to older checkpoints of the same run"
  assert _steps_on_disk(wd) == ["2", "4"]
  assert not os.path.exists(checkpoint.quarantine_dir(wd))
  with pytest.raises(checkpoint.CheckpointError, match="does not match the model"):
    sampling.restore_for_inference(wd, config=_config(z_dim=4))


def test_checkpoint_without_checksum_restores_with_a_warning(tmp_path, state, caplog):
  """Checkpoints written before the integrity item existed (and with device arrays)."""
  wd = str(tmp_path)
  mngr = checkpoint.manager(wd)
  mngr.save(3, args=ocp.args.Composite(
      state=ocp.args.StandardSave(jax.device_put(_at(state, 3))),
      config=ocp.args.JsonSave(json.loads(_config().to_json_best_effort()))))
  mngr.wait_until_finished()
  mngr.close()
  assert not os.path.exists(os.path.join(_step_dir(wd, 3), "integrity"))
  with caplog.at_level(logging.WARNING):
    restored = checkpoint.restore_latest(wd, _template(), quarantine=True)
  assert restored.step == 3
  _assert_same(restored.state, _at(state, 3))
  warnings = [r.getMessage() for r in caplog.records if "no checksum" in r.getMessage()]
  assert len(warnings) == 1 and _step_dir(wd, 3) in warnings[0]
  assert _steps_on_disk(wd) == ["3"]


def test_keeps_the_newest_and_deletes_older_only_after_a_newer_save_completed(tmp_path, state):
  wd = str(tmp_path)
  _save(wd, state, [2, 4, 6, 8], keep=2)
  assert _steps_on_disk(wd) == ["6", "8"]
  # A delete that crashed half-way: never listed as a step, removed next time.
  os.makedirs(os.path.join(checkpoint.checkpoint_dir(wd), ".deleting-4", "state"))
  mngr = checkpoint.manager(wd, keep=1)
  assert sorted(mngr.all_steps()) == [6, 8]
  checkpoint.save(mngr, _at(state, 10), _config())
  # keep=1: the confirmed 8 stays while 10 is in flight (10 may yet fail).
  on_disk = _steps_on_disk(wd)
  assert "8" in on_disk and "6" not in on_disk and ".deleting-4" not in on_disk, on_disk
  checkpoint.finish(mngr)
  assert _steps_on_disk(wd) == ["10"]
  restored = checkpoint.restore_latest(wd, _template(), quarantine=True)
  assert restored.step == 10
  _assert_same(restored.state, _at(state, 10))


# ----------------------------------------------------------------------------
# Failed saves.


def _fail_integrity_writes(monkeypatch):
  """The integrity item's background write raises ENOSPC, like a full disk."""
  handler = ocp.JsonCheckpointHandler
  if not hasattr(handler, "_save_fn"):
    pytest.skip("this Orbax has no JsonCheckpointHandler._save_fn to inject a failure into")
  real = handler._save_fn  # pylint: disable=protected-access

  async def save_fn(self, x, directory):
    if isinstance(x, dict) and "sha256" in x:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await real(self, x, directory)
  monkeypatch.setattr(handler, "_save_fn", save_fn)
  # Orbax's finalize thread comes late, as on a loaded machine: a caller that
  # takes the write error first must not let it finalize (and prune) anyway.
  wait = getattr(ocp.CheckpointManager, "_wait_for_checkpointers", None)
  if wait is not None:
    def late_wait(self):
      time.sleep(0.5)
      return wait(self)
    monkeypatch.setattr(ocp.CheckpointManager, "_wait_for_checkpointers", late_wait)


def _check_write_error(wd, e, step, previous):
  msg = _one_line(e)
  assert msg.startswith(f"Could not write checkpoint {step} to {checkpoint.checkpoint_dir(wd)}")
  assert "disk full" in msg and "ENOSPC" in msg, msg
  assert f"the previous checkpoint {previous} is kept" in msg, msg


def _check_previous_survives(wd, previous):
  """The failed step is not a checkpoint (its tmp dir included); ``previous`` restores."""
  mngr = checkpoint.manager(wd, read_only=True)
  assert sorted(mngr.all_steps()) == [previous]
  mngr.close()
  restored = checkpoint.restore_latest(wd, _template(), quarantine=True)
  assert restored.step == previous
  assert not os.path.exists(checkpoint.quarantine_dir(wd))
  leftover = [d for d in _steps_on_disk(wd) if d != str(previous)]
  assert all("tmp" in d for d in leftover), leftover  # e.g. '4.orbax-checkpoint-tmp'


@pytest.mark.parametrize("surface", ["check_saves", "finish", "next_save"])
def test_failed_background_save_is_one_line_write_error(tmp_path, state, monkeypatch, surface):
  wd = str(tmp_path)
  mngr = checkpoint.manager(wd, keep=1)  # Step 2 would be deleted once 4 is complete.
  checkpoint.save(mngr, _at(state, 2), _config())
  checkpoint.finish(mngr)
  mngr = checkpoint.manager(wd, keep=1)
  _fail_integrity_writes(monkeypatch)
  checkpoint.save(mngr, _at(state, 4), _config())  # Returns: the write fails later.
  if surface == "check_saves":
    deadline = time.time() + 120
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
      while time.time() < deadline:
        checkpoint.check_saves(mngr)  # Never blocks; raises once the save is over.
        time.sleep(0.05)
    checkpoint.finish(mngr)  # Reported once only.
  elif surface == "finish":
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
      checkpoint.finish(mngr)
  else:
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
      checkpoint.save(mngr, _at(state, 6), _config())
    checkpoint.finish(mngr)
  _check_write_error(wd, e, 4, 2)
  monkeypatch.undo()
  _check_previous_survives(wd, 2)


def test_finish_quiet_logs_a_failed_save(tmp_path, state, monkeypatch, caplog):
  wd = str(tmp_path)
  mngr = checkpoint.manager(wd)
  _fail_integrity_writes(monkeypatch)
  checkpoint.save(mngr, _at(state, 2), _config())
  with caplog.at_level(logging.ERROR):
    checkpoint.finish(mngr, quiet=True)
  assert any(r.getMessage().startswith("Could not write checkpoint 2") and
             "no earlier checkpoint exists" in r.getMessage() for r in caplog.records)


def test_disk_full_on_a_tiny_tmpfs(tmp_path, state):
  """The real thing: TensorStore's ENOSPC, a ValueError with os_error_code=28."""
  mnt = str(tmp_path / "disk")
  os.makedirs(mnt)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
  try:
    wd = os.path.join(mnt, "wd")
    mngr = checkpoint.manager(wd, keep=1)
    checkpoint.save(mngr, _at(state, 2), _config())
    checkpoint.check_saves(mngr)
    mngr.wait_until_finished()
    st = os.statvfs(mnt)
    with open(os.path.join(mnt, "filler"), "wb") as f:
      f.write(b"\0" * (st.f_bavail * st.f_frsize - 8 * 1024))
    checkpoint.save(mngr, _at(state, 4), _config())
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
      checkpoint.finish(mngr)
    _check_write_error(wd, e, 4, 2)
    os.remove(os.path.join(mnt, "filler"))
    _check_previous_survives(wd, 2)
  finally:
    subprocess.run(["umount", "-l", mnt], capture_output=True)


# ----------------------------------------------------------------------------
# The sampler and the evaluator.


def test_sampler_skips_corrupt_newest_checkpoints_and_names_an_explicit_one(tmp_path, state,
                                                                           caplog):
  wd, out = str(tmp_path / "wd"), str(tmp_path / "out")
  _save(wd, state, [2, 4, 6])
  _damage(wd, 6, "flipped_bytes")
  _damage(wd, 4, "deleted_data_file")
  with caplog.at_level(logging.INFO):
    written = sampling_outputs.write_samples(wd, out, num=4, num_interpolations=1, interpolation_steps=2)
  assert os.path.isfile(written["samples.png"])
  assert "falling back to checkpoint 4" in caplog.text
  assert "falling back to checkpoint 2" in caplog.text and "(checkpoint step 2)" in caplog.text
  # TensorStore's failed read leaves callbacks into a closed event loop; they
  # must not print tracebacks after the error line.
  r = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={wd}",
                      f"--outdir={out}_4", "--step=4"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and _step_dir(wd, 4) in last, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and not os.path.exists(f"{out}_4")


def _stub_evaluation(monkeypatch):
  """Evaluation without networks or features: the report names the step restored."""
  monkeypatch.setattr(feats_lib, "resolve", lambda *a, **k: (None, "stubbed"))
  monkeypatch.setattr(evaluator, "evaluate_state", lambda state, config, **kw: {
      "step": int(state.step), "num_requested": kw["num"], "features": None,
      "seed": kw["seed"], "seconds": {"total": 0.0}})


class _Writer:

  def __init__(self):
    self.steps = []

  def write_eval(self, step, scalars):
    del scalars
    self.steps.append(step)


def test_evaluator_skips_corrupt_checkpoints(tmp_path, state, monkeypatch, caplog):
  wd = str(tmp_path)
  _save(wd, state, [2, 4, 6])
  _flip_bytes(_largest_data_file(wd, 4))
  _damage(wd, 6, "missing_config")
  _stub_evaluation(monkeypatch)
  with caplog.at_level(logging.WARNING):
    reports = evaluator.evaluate_workdir(wd, "all", num=8, writer=_Writer())
  assert [r["step"] for r in reports] == [2]
  assert "Skipping checkpoint 4" in caplog.text and "Skipping checkpoint 6" in caplog.text
  assert [r["step"] for r in evaluator.evaluate_workdir(wd, None, num=8,
                                                        writer=_Writer())] == [2]
  assert evaluator.evaluate_checkpoint(wd, num=8)["step"] == 2
  for step in (4, 6):
    with pytest.raises(checkpoint.CorruptCheckpointError) as e:
      evaluator.evaluate_workdir(wd, step, num=8, writer=_Writer())
    assert _step_dir(wd, step) in _one_line(e)
  _damage(wd, 2, "deleted_data_file")
  with pytest.raises(checkpoint.CheckpointError, match="None of the checkpoints"):
    evaluator.evaluate_workdir(wd, "all", num=8, writer=_Writer())
  assert _steps_on_disk(wd) == ["2", "4", "6"]


def test_evaluate_binary_names_a_corrupt_step_in_one_line(tmp_path, state):
  wd = str(tmp_path)
  _save(wd, state, [2, 4])
  _flip_bytes(_largest_data_file(wd, 4))
  r = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={wd}",
                      "--step=4", "--num=8"], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 1, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "checksum mismatch" in last, r.stderr[-3000:]
  assert "Traceback" not in r.stderr
