"""The best checkpoint by an evaluation metric (config.keep_best) survives pruning,
resumes and a corrupt best; the sampler and the evaluator open it with step='best'.

The evaluation is replaced by a script of FIDs (the metric's values are the
point here, not how they are computed), so the FID gets worse after step 4.
"""

import json
import os
import shutil

import pytest

from experiments.configs import tiny
from vaegan_jax import data
from vaegan_jax import sampling
from vaegan_jax import train
from vaegan_jax import train_config
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import reports
from vaegan_jax.runtime import best_checkpoint
from vaegan_jax.runtime import checkpoint

FIDS = {2: 5.0, 4: 1.0, 6: 3.0, 8: 4.0, 10: 2.0}


def _config(steps):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.num_train_steps = steps
  c.eval_every = 2
  c.checkpoint_every = 4
  c.keep_checkpoints = 1
  c.keep_best = "samples.fid"
  return c


@pytest.fixture
def scripted_fid(monkeypatch):
  def evaluate_state(state, config, **kw):
    step = int(state.step)
    return {"step": step, "kind": config.kind, "dataset": "digits", "features": "scripted",
            "num": 2, "real_split": "train", "heldout_split": None,
            "samples": {"fid": FIDS[step]}, "seconds": {"total": 0.0}}
  monkeypatch.setattr(evaluator, "evaluate_state", evaluate_state)
  monkeypatch.setattr(train, "_eval_features", lambda config: (None, ""))


@pytest.mark.slow  # 13 s: whole runs, a resume and a corruption
def test_best_checkpoint_is_kept_through_pruning_resume_and_corruption(tmp_path, scripted_fid):
  wd = str(tmp_path / "run")
  with pytest.raises(checkpoint.CheckpointError, match="No best checkpoint recorded"):
    checkpoint.resolve_step(wd, "best")
  train.train_and_evaluate(_config(8), wd)
  # keep_checkpoints=1 keeps the newest (8) and the best (4), though 6 and 8 are worse.
  assert checkpoint._all_steps(wd) == [4, 8]
  best = json.load(open(best_checkpoint.best_path(wd)))
  assert best == {"step": 4, "metric": "samples.fid", "value": 1.0, "features": "scripted"}
  assert sampling.Sampler.from_workdir(wd, "best").step == 4
  assert sampling.Sampler.from_workdir(wd).step == 8
  state, _ = sampling.restore_for_inference(wd, "best")
  assert int(state.step) == 4

  # The best checkpoint turns out corrupt and is set aside: the record is rebuilt from the
  # reports of the checkpoints that remain, then a better evaluation takes over.
  shutil.move(os.path.join(checkpoint.checkpoint_dir(wd), "4"), str(tmp_path / "bad4"))
  with pytest.raises(checkpoint.CheckpointError, match="no longer in"):
    checkpoint.resolve_step(wd, "best")
  assert reports.refresh_best(wd, "samples.fid", [8])["step"] == 8
  train.train_and_evaluate(_config(10), wd)
  assert json.load(open(best_checkpoint.best_path(wd)))["step"] == 10
  assert checkpoint._all_steps(wd) == [10]


@pytest.mark.slow  # ~20 s: a fault trial
def test_an_input_failure_right_after_the_best_evaluation_saves_and_records_it(tmp_path,
                                                                              scripted_fid,
                                                                              monkeypatch):
  """Step 4 is evaluated best (FID 1.0); the input fails before step 5. The step
  reached is saved on the way out, and named the best (it used to be lost, and
  step 2 stayed the best on record)."""
  real = train._device_batches

  def failing_at_step_5(config, start, num_attributes):
    host, batches = real(config, start, num_attributes)

    def gen():
      for i, b in enumerate(batches, start=start):
        if i == 4:  # batch i is step i + 1's
          raise data.DataError("Cannot read image x.png (injected): remove or fix it.")
        yield b
    return host, gen()
  monkeypatch.setattr(train, "_device_batches", failing_at_step_5)
  wd = str(tmp_path / "run")
  with pytest.raises(data.DataError) as e:
    train.train_and_evaluate(_config(8), wd)
  assert str(e.value).endswith("remove or fix it. Step 4 is saved (checkpoint 4).")
  assert checkpoint._all_steps(wd) == [2, 4]  # 2 was the best when 4 was saved: pruned later
  assert json.load(open(best_checkpoint.best_path(wd)))["step"] == 4


def test_keep_best_names_must_be_metrics():
  c = _config(4)
  c.keep_best = "samples.fidd"
  with pytest.raises(train_config.ConfigError, match="keep_best='samples.fidd' is not a metric"):
    train_config.validate_config(c)
  assert reports.best_metric("reconstructions.psnr") == ("reconstructions", "psnr", False)
  assert reports.best_record({"step": 3, "samples": {"fid": float("nan")}}, "samples.fid",
                               None) is None
  current = {"step": 1, "metric": "samples.fid", "value": 2.0, "features": "a"}
  worse = {"step": 3, "features": "a", "samples": {"fid": 2.5}}
  assert reports.best_record(worse, "samples.fid", current) is None
  other_space = dict(worse, features="b")  # not comparable: it replaces the record
  assert reports.best_record(other_space, "samples.fid", current)["step"] == 3
  higher = {"step": 5, "features": "a", "reconstructions": {"psnr": 30.0}}
  old = {"step": 1, "metric": "reconstructions.psnr", "value": 29.0, "features": "a"}
  assert reports.best_record(higher, "reconstructions.psnr", old)["value"] == 30.0
