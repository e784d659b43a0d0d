"""Evaluation end to end: during training, the binary, the library, real vs untrained.

Uses the tiny config (16x16 digits) and the session's fresh cache
(``VAEGAN_CACHE_DIR``, set in conftest.py): the digits feature classifier is
trained once here, then reused.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from experiments.configs import tiny
from vaegan_jax import data
from vaegan_jax import sampling
from vaegan_jax import train
from vaegan_jax import train_step
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import reports
from vaegan_jax.evaluation import features
from vaegan_jax.evaluation import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARPNESS_FIELDS = ("laplacian_variance", "hf_energy", "sharpness_laplacian",
                    "sharpness_spectral")
SAMPLE_FIELDS = ("fid", "kid", "kid_std", "precision", "recall", "classifier_score",
                 "confidence", "class_coverage", "class_tv") + SHARPNESS_FIELDS
RECON_FIELDS = ("mse", "psnr", "dis_l_error", "kl", "recon_nll", "elbo", "pixel_nll", "fid",
                "precision", "recall", "confidence", "class_coverage", "accuracy"
                ) + SHARPNESS_FIELDS


def _config(**kw):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("run"))
  config = _config(num_train_steps=6, checkpoint_every=3, log_every=3, sample_every=6,
                   eval_every=6, eval_num=64)
  state = train.train_and_evaluate(config, wd)
  return wd, config, state


@pytest.fixture(scope="module")
def extractor():
  ext, why = features.resolve("auto", _config().data)
  assert ext is not None, why
  return ext


def _walk_numbers(report):
  for v in report.values():
    if isinstance(v, dict):
      yield from _walk_numbers(v)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      yield v


def test_training_writes_a_complete_finite_report(trained):
  wd, config, _ = trained
  assert sorted(os.listdir(os.path.join(wd, "eval"))) == ["step_6.json"]
  report = json.load(open(os.path.join(wd, "eval", "step_6.json")))
  assert report["features"] == "digits_classifier" and report["feature_dim"] == 128
  assert report["num"] == 64 and report["num_heldout"] == 64
  for f in SAMPLE_FIELDS:
    assert f in report["samples"], f
  for f in RECON_FIELDS:
    assert f in report["reconstructions"], f
  for f in ("fid", "kid", "precision", "recall", "accuracy") + SHARPNESS_FIELDS:
    assert f in report["heldout_real"], f
  assert set(report["samples_at_heldout_n"]) == {"fid", "precision", "recall"}
  assert all(np.isfinite(v) for v in _walk_numbers(report))
  assert evaluator.is_finite_report(report)
  # The same numbers as TensorBoard/jsonl scalars under eval/.
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  evals = [l for l in lines if "eval/digits_classifier/fid" in l]  # the feature space named
  assert [l["step"] for l in evals] == [6]
  assert evals[0]["eval/digits_classifier/fid"] == pytest.approx(report["samples"]["fid"])
  assert evals[0]["eval/digits_classifier/recon/fid"] == pytest.approx(
      report["reconstructions"]["fid"])
  assert not any(k.startswith("eval/fid") for l in lines for k in l)
  assert evals[0]["eval/recon/psnr"] == pytest.approx(report["reconstructions"]["psnr"])
  assert evals[0]["eval/recon/sharpness_spectral"] == pytest.approx(
      report["reconstructions"]["sharpness_spectral"])


def test_tensorboard_reads_the_scalars_eval_curves_and_grids(trained):
  """TensorBoard's own loader (what `tensorboard --logdir=WORKDIR` shows)."""
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  wd, _, _ = trained
  acc = event_accumulator.EventAccumulator(wd, size_guidance={"images": 0, "scalars": 0})
  acc.Reload()
  tags = acc.Tags()
  for tag in ("kl_prior", "llike", "gan_bce", "dis_accuracy", "images_per_sec",
              "eval/digits_classifier/fid", "eval/recon/psnr", "eval/recon/sharpness_spectral"):
    assert tag in tags["scalars"], (tag, tags["scalars"])
  assert [e.step for e in acc.Scalars("kl_prior")] == [3, 6]
  report = json.load(open(os.path.join(wd, "eval", "step_6.json")))
  (fid,) = acc.Scalars("eval/digits_classifier/fid")
  assert fid.step == 6 and fid.value == pytest.approx(report["samples"]["fid"], rel=1e-6)
  assert {"samples", "reconstructions"} <= set(tags["images"])
  (grid,) = acc.Images("samples")
  assert grid.step == 6 and grid.encoded_image_string.startswith(b"\x89PNG")


def _run_binary(*args):
  return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600, env=dict(os.environ))


@pytest.mark.slow  # 19 s: three runs of the binary
def test_binary_step_all_then_nothing_left_and_one_line_errors(trained):
  wd, _, _ = trained
  proc = _run_binary(f"--workdir={wd}", "--step=all", "--num=50000", "--seed=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(os.listdir(os.path.join(wd, "eval"))) == ["step_3.json", "step_6.json"]
  for s in (3, 6):
    r = json.load(open(os.path.join(wd, "eval", f"step_{s}.json")))
    # --num is capped by the real split (the 1,433 training digits), with a warning.
    assert r["step"] == s and r["num_requested"] == 50000 and r["num"] == 1433
    assert r["seed"] == 1 and evaluator.is_finite_report(r)
  assert "capped to 1433" in proc.stderr
  assert "FID" in proc.stdout and "held-out" in proc.stdout
  mtimes = {f: os.path.getmtime(os.path.join(wd, "eval", f)) for f in os.listdir(
      os.path.join(wd, "eval"))}
  again = _run_binary(f"--workdir={wd}", "--step=all", "--num=50000", "--seed=1")
  assert again.returncode == 0 and "nothing to do" in again.stderr
  assert mtimes == {f: os.path.getmtime(os.path.join(wd, "eval", f)) for f in mtimes}
  bad = _run_binary(f"--workdir={wd}", "--step=7")
  assert bad.returncode == 1, bad.stderr[-1000:]
  err = bad.stderr.strip().splitlines()[-1]
  assert err.startswith("error: No checkpoint for step 7") and "Traceback" not in bad.stderr


def test_feature_errors_are_one_line():
  data = _config().data
  for kw, msg in ((dict(kind="inception"), "needs --inception_weights"),
                  (dict(kind="auto", inception_weights="/nope.npz"), "not found"),
                  (dict(kind="fid"), "must be one of")):
    with pytest.raises(features.FeatureError, match=msg) as e:
      features.resolve(kw.pop("kind"), data, **kw)
    assert "\n" not in str(e.value)


def test_real_vs_real_beats_real_vs_untrained_on_every_metric(extractor):
  """Held-out real digits against real ones score far better than an untrained model.

  Two references: the report's (the 1,433 training digits; the 364 held-out
  ones as "real") and two class-balanced halves of the held-out digits. With
  the halves, precision is left out: the untrained decoder's samples are all
  nearly one image (feature spread 0.015 against 0.74 for digits), and at 182
  reference points that one spot falls inside an outlier's 3-NN ball or not,
  so its precision is 0 or 1 by chance (1 with this classifier). Recall,
  which such a collapsed set can't fake, stays in.
  """
  config = _config()
  held = evaluator.load_images(config.data, "test", 364)
  state = jax.device_get(train_step.create_train_state(config, jax.random.PRNGKey(0)))
  untrained, _ = sampling.sample(sampling.Sampler.from_state(config, state),
                                 jax.random.PRNGKey(1), 364)
  untrained = extractor(np.asarray(untrained))
  kw = dict(kid_subsets=20)
  reference = evaluator.real_features(extractor, config.data, "train", 1433)
  real = evaluator.feature_metrics(reference, extractor(held["image"]), **kw)
  fake = evaluator.feature_metrics(reference, untrained, **kw)
  order = np.argsort(held["label"], kind="stable")  # Halves with the same classes.
  a, b = extractor(held["image"][order[::2]]), extractor(held["image"][order[1::2]])
  real_halves = evaluator.feature_metrics(a, b, **kw)
  fake_halves = evaluator.feature_metrics(a, {k: v[:182] for k, v in untrained.items()}, **kw)
  for r, f, keys in ((real, fake, ("precision", "recall")), (real_halves, fake_halves,
                                                              ("recall",))):
    assert r["fid"] < f["fid"] / 5
    assert r["kid"] < f["kid"] / 10
    for k in keys + ("classifier_score", "confidence", "class_coverage"):
      assert r[k] > f[k] + 0.2, (k, r[k], f[k])
    assert r["class_tv"] < f["class_tv"] - 0.2
    assert r["recall"] > 0.7 and r["class_coverage"] == 1.0
  assert real["precision"] > 0.7 and fake["precision"] < 0.1


def test_digits_classifier_features(extractor):
  assert extractor.name == "digits_classifier"
  assert extractor.info["classifier_heldout_accuracy"] > 0.95
  held = evaluator.load_images(_config().data, "test", 40)
  out = extractor(held["image"])
  assert out["features"].shape == (40, 128) and out["probs"].shape == (40, 10)
  np.testing.assert_allclose(out["probs"].sum(1), 1.0, rtol=1e-5)
  assert np.mean(out["probs"].argmax(1) == held["label"]) > 0.9
  # Cached: resolving again restores the same weights (same fingerprint).
  assert features.resolve("classifier", _config().data)[0].fingerprint == extractor.fingerprint


def test_real_features_are_cached(extractor, monkeypatch):
  data = _config().data
  first = evaluator.real_features(extractor, data, "test", 100)

  def boom(*a, **k):
    raise AssertionError("recomputed instead of read from the cache")

  monkeypatch.setattr(evaluator, "extract", boom)
  second = evaluator.real_features(extractor, data, "test", 100)
  np.testing.assert_array_equal(first["features"], second["features"])
  np.testing.assert_array_equal(first["label"], second["label"])
  with pytest.raises(AssertionError, match="recomputed"):  # Another n: another entry.
    evaluator.real_features(extractor, data, "test", 99)


def test_real_statistics_of_a_folder_are_not_reused_after_its_images_change(tmp_path,
                                                                            monkeypatch):
  """The cache key holds the folder's file stamps: a rewritten, added or removed
  image gives another entry (it used to give the old folder's statistics)."""
  monkeypatch.setenv("VAEGAN_CACHE_DIR", str(tmp_path / "cache"))
  folder = tmp_path / "imgs"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(8):
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
  config = _config()
  config.data.update(dict(name="folder", folder=str(folder)))
  noisy = evaluator.real_sharpness(config.data, "all", 8)
  assert evaluator.real_sharpness(config.data, "all", 8) == noisy  # read back
  for i in range(8):  # the same names, now flat images
    Image.new("L", (16, 16), 128).save(folder / f"{i}.png")
  flat = evaluator.real_sharpness(config.data, "all", 8)
  assert flat != noisy and max(abs(v) for v in flat.values()) < 1e-6 < min(noisy.values())
  stamp = data.content_stamp(config.data)
  (folder / "extra.png").write_bytes((folder / "0.png").read_bytes())
  assert data.content_stamp(config.data) != stamp
  os.remove(folder / "extra.png")
  assert data.content_stamp(config.data) == stamp


def test_folder_without_labels_gets_reconstruction_metrics_and_a_reason(tmp_path):
  folder = tmp_path / "imgs"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(40):
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
  config = _config()
  config.data.update(dict(name="folder", channels=3, folder=str(folder)))
  config.model.channels = 3
  ext, why = features.resolve("auto", config.data)
  assert ext is None and "no labels" in why
  with pytest.raises(features.FeatureError, match="no labels"):
    features.resolve("classifier", config.data)
  state = jax.device_get(train_step.create_train_state(config, jax.random.PRNGKey(0)))
  report = evaluator.evaluate_state(state, config, num=100, extractor=None,
                                    no_features_reason=why)
  assert report["features"] is None
  # Without features: no feature metrics, but both sharpness measures in every section.
  assert set(report["samples"]) == set(SHARPNESS_FIELDS)
  assert set(report["heldout_real"]) == set(SHARPNESS_FIELDS)
  assert report["no_features_reason"] == why and report["num_heldout"] == 2
  assert {"mse", "psnr", "dis_l_error", "kl", "elbo"} | set(SHARPNESS_FIELDS) <= set(
      report["reconstructions"])
  # The reference of samples and held-out images is the training split's real images.
  train_images = evaluator.load_images(config.data, "train", 100)["image"]
  ref = metrics.sharpness_metrics(train_images)
  held = evaluator.load_images(config.data, "test", 100)["image"]
  assert report["heldout_real"]["sharpness_spectral"] == pytest.approx(
      metrics.high_frequency_energy(held).mean() / ref["hf_energy"])
  assert evaluator.is_finite_report(report)
  assert "no labels" in reports.format_table(report)


def test_evaluate_sampler_scores_the_samplers_prior_samples(extractor):
  config = _config()
  state = jax.device_get(train_step.create_train_state(config, jax.random.PRNGKey(0)))
  sampler = sampling.Sampler.from_state(config, state)
  got = evaluator.evaluate_sampler(sampler, config.data, extractor, num=100, seed=3)
  reference = evaluator.real_features(extractor, config.data, "train", 100)
  images, _ = sampling.sample(sampler, jax.random.PRNGKey(3), 100)
  want = evaluator.feature_metrics(reference, extractor(np.asarray(images)), seed=3)
  assert got == pytest.approx(want)
  assert got["fid"] > 20  # An untrained decoder: far from the digits.
