"""The trainer's checks before compiling (``vaegan_jax.train_config``), in process:
bad settings, a resumed run's config changes, the workdir and the dry run."""

import json
import os
import random

import numpy as np
import pytest

from experiments.configs import tiny
from vaegan_jax import data
from vaegan_jax import train
from vaegan_jax import train_config


def _config(**kw):
  c = tiny.get_config()
  for k, v in kw.items():
    c[k] = v
  return c


def test_validation_over_random_configs_names_the_bad_field():
  """Property over the config space: any one bad field among random valid
  settings of the others gives a one-line error naming that field, in-process
  and without compiling."""
  rng = random.Random(0)
  good = dict(batch_size=[16, 32, 64], learning_rate=[1e-4, 1e-3], keep_checkpoints=[1, 3],
              num_train_steps=[1, 100], gamma=[1e-6, 1.0], kind=["vaegan", "vae", "gan"])
  bad = [("model.z_dim", 0), ("model.z_dim", -3), ("learning_rate", 0.0),
         ("learning_rate", -1e-3), ("learning_rate", float("nan")),
         ("learning_rate", float("inf")), ("keep_checkpoints", 0), ("keep_checkpoints", -1),
         ("batch_size", 4096), ("batch_size", 12), ("num_train_steps", 0), ("log_every", 0),
         ("checkpoint_every", -5), ("eval_every", -1), ("kind", "vqvae"),
         ("model.enc_dense", 0), ("model.dis_widths", (16, 0, 16)), ("lr_schedule", "cosine")]
  for _ in range(60):
    c = _config()
    for k, values in good.items():
      c[k] = rng.choice(values)
    field, value = rng.choice(bad)
    holder, key = (c.model, field.split(".")[1]) if field.startswith("model.") else (c, field)
    holder[key] = value
    with pytest.raises((train_config.ConfigError, data.DataError)) as e:
      train_config.validate_config(c)
    msg = str(e.value)
    assert "\n" not in msg and key in msg, (field, value, msg)


def test_config_change_refuses_another_experiment_lists_the_rest_and_ignores_run_settings():
  saved = _config()
  same_experiment = _config(seed=3, gamma=1e-3, num_train_steps=999, eval_every=7)
  assert train_config.check_config_change(saved, same_experiment) == [
      "gamma: 1e-06 -> 0.001", "seed: 0 -> 3"]
  other = _config(kind="gan")
  other.data.train_split = "all"
  with pytest.raises(train_config.ConfigError) as e:
    train_config.check_config_change(saved, other)
  msg = str(e.value)
  assert "\n" not in msg and "allow_config_change=True" in msg
  assert "data.train_split: 'train' -> 'all'" in msg and "kind: 'vaegan' -> 'gan'" in msg
  other.allow_config_change = True
  assert train_config.check_config_change(saved, other) == [
      "data.train_split: 'train' -> 'all'", "kind: 'vaegan' -> 'gan'"]


def test_config_change_reads_a_saved_dict_and_tuples_as_lists():
  """A checkpoint's config comes back as a plain dict with lists for tuples."""
  saved = _config().to_dict()
  saved["model"]["dis_widths"] = list(saved["model"]["dis_widths"])
  assert train_config.check_config_change(saved, _config()) == []


def test_workdir_checks_refuse_a_file_and_leave_nothing_behind(tmp_path):
  a_file = tmp_path / "f"
  a_file.write_text("keep")
  for check in (train_config.check_not_a_file, train_config.check_workdir):
    with pytest.raises(train_config.ConfigError, match="is a file, not a directory"):
      check(str(a_file))
  assert a_file.read_text() == "keep"
  fresh = tmp_path / "new" / "wd"
  train_config.check_not_a_file(str(fresh))
  assert not fresh.exists()  # the dry run's check creates nothing
  train_config.check_workdir(str(fresh))
  assert fresh.is_dir() and os.listdir(fresh) == []  # the write probe is removed


def test_dry_run_summarises_and_writes_nothing(tmp_path):
  wd = tmp_path / "wd"
  summary = train_config.dry_run(_config(), str(wd))
  assert "starts from scratch" in summary.splitlines()[-1]
  assert "Everything checks out" in summary
  assert not wd.exists()


def test_dry_run_checks_the_checkpoint_it_would_resume(tmp_path):
  """A dry run on a workdir of another experiment fails as the real run would."""
  wd = str(tmp_path / "wd")
  c = _config(num_train_steps=2, checkpoint_every=2, log_every=2, sample_every=2)
  c.model.conv_impl = "xla"
  train.train_and_evaluate(c, wd)
  c.num_train_steps = 4
  assert "resumes from step 2. Everything" in train_config.dry_run(c, wd)
  c.seed = 3
  assert "resumes from step 2 with a changed config (seed: 0 -> 3)" in train_config.dry_run(c, wd)
  c.kind = "gan"
  with pytest.raises(train_config.ConfigError, match=r"kind: 'vaegan' -> 'gan'"):
    train_config.dry_run(c, wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2"]


def test_a_classifier_feature_space_on_unlabelled_images_is_refused_naming_config_fields(
    tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i in range(40):
    Image.new("L", (16, 16), i).save(tmp_path / f"{i:02d}.png")
  c = _config(eval_every=10, eval_features="classifier")
  c.data.update(dict(name="folder", folder=str(tmp_path)))
  with pytest.raises(train_config.ConfigError) as e:
    train_config.validate_config(c)
  msg = str(e.value)
  assert "'folder' has neither" in msg and "--config.eval_features=auto" in msg
  assert "--features" not in msg and "--inception_weights" not in msg
  c.eval_features = "auto"
  train_config.validate_config(c)


def test_a_resumed_run_on_other_files_is_warned(tmp_path, caplog):
  """Added, removed or renamed files change the order and the held-out split: a
  warning. A file fixed in place (the fix an unreadable image asks for) is not."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(40):
    Image.new("L", (16, 16), 3 * i).save(folder / f"{i:02d}.png")
  c = _config()
  c.data.update(dict(name="folder", folder=str(folder)))
  wd = tmp_path / "wd"
  wd.mkdir()
  warned = "training files were added, removed or renamed"

  def check(resumed):  # as the trainer calls it: with the count it has validated
    train_config.check_data_unchanged(str(wd), c.data, data.validate(c.data).num_examples,
                                      resumed=resumed)
  with caplog.at_level(logging.WARNING):
    check(resumed=False)  # a fresh run records
    check(resumed=True)  # the same files
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(folder / "07.png")
    check(resumed=True)  # fixed in place
    assert warned not in caplog.text
    os.rename(folder / "07.png", folder / "07b.png")
    check(resumed=True)
    assert f"{warned} since this workdir's last start (38 examples, now 38)" in caplog.text
    caplog.clear()
    Image.new("L", (16, 16), 255).save(folder / "41.png")
    check(resumed=False)  # a fresh run: no word
    assert warned not in caplog.text
  assert json.load(open(wd / train_config.DATA_STAMP)) == {
      "examples": 38, "files": data.content_stamp(c.data, names_only=True)}
  c.data.update(dict(name="digits", folder=None))
  train_config.check_data_unchanged(str(tmp_path / "none"), c.data, 0, resumed=True)
  assert not (tmp_path / "none").exists()  # built-in data: nothing to stamp
