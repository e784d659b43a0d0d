"""Stops and messages that tell the truth (issue 21, section 4): what a message says is
saved or kept is what is on disk, a preemption is a clean stop wherever it lands, and a
refused run names the real reason and leaves no empty outputs behind."""

import logging
import os
import signal

import numpy as np
import pytest
from PIL import Image

from experiments.configs import tiny
from vaegan_jax import classifier
from vaegan_jax import data
from vaegan_jax import train
from vaegan_jax import train_config
from vaegan_jax.runtime import checkpoint


def _config(**kw):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  for k, v in kw.items():
    c[k] = v
  return c


def test_nonfinite_loss_before_any_checkpoint_says_none_is_kept(tmp_path):
  with pytest.raises(train.NonFiniteLossError, match="no checkpoint had been saved yet") as e:
    train.train_and_evaluate(_config(num_train_steps=8, learning_rate=1e30), str(tmp_path))
  assert "last good checkpoint" not in str(e.value)
  assert checkpoint._all_steps(str(tmp_path)) == []


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_that_is_not_positive_is_called_so(batch_size):
  with pytest.raises(train_config.ConfigError, match=f"batch_size={batch_size} must be a positive "
                     "integer") as e:
    train_config.validate_config(_config(batch_size=batch_size))
  assert "divisible" not in str(e.value)


def test_resuming_as_another_kind_names_the_kind_change(tmp_path):
  """vaegan -> gan changes the parameter tree (no encoder): the refusal names the kind."""
  wd = str(tmp_path)
  train.train_and_evaluate(_config(num_train_steps=2, checkpoint_every=2), wd)
  with pytest.raises(train_config.ConfigError,
                     match=r"kind: 'vaegan' -> 'gan'.*allow_config_change"):
    train.train_and_evaluate(_config(num_train_steps=4, kind="gan"), wd)
  assert checkpoint._all_steps(wd) == [2]


def test_data_refused_while_setting_up_leaves_no_empty_outputs(tmp_path):
  folder = tmp_path / "imgs"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(40):
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / f"{i:02d}.png")
  (folder / "00.png").write_bytes(b"not a png")  # file 0 is in the held-out split
  config = _config(num_train_steps=2)
  config.data.update(dict(name="folder", folder=str(folder)))
  wd = tmp_path / "wd"
  with pytest.raises(data.DataError, match="Cannot read image"):
    train.train_and_evaluate(config, str(wd))
  left = sorted(os.listdir(wd)) if wd.exists() else []
  assert not [f for f in left if f.startswith("events.") or f == "metrics.jsonl"], left


def test_sigterm_while_the_feature_classifier_trains_is_a_clean_stop(tmp_path, monkeypatch,
                                                                     caplog):
  real_step = classifier.train_step

  def step_then_sigterm(state, *a, **kw):
    if int(state.step) == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_step(state, *a, **kw)

  monkeypatch.setattr("vaegan_jax.classifier.model.train_step", step_then_sigterm)
  monkeypatch.setenv("VAEGAN_CACHE_DIR", str(tmp_path / "cache"))
  wd = str(tmp_path / "wd")
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(_config(num_train_steps=4, eval_every=2), wd)
  assert int(state.step) == 0  # returned, not raised: the binary exits 0
  assert checkpoint._all_steps(wd) == []
  assert "Preempted while training the digits feature classifier (step 2 of 200, its " \
         "checkpoint 2 is saved" in caplog.text
  assert "No training step was run; checkpoint none is the newest" in caplog.text
