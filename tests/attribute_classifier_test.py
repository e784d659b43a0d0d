"""Attribute classifier and the Sec. 5.3 pipeline.

Fake CelebA files in the official on-disk format (zip of 178x218 JPEGs,
list_attr_celeba.txt, list_eval_partition.txt) are written into a temporary
folder, with one planted attribute: 'Smiling' is 1 exactly for the bright
images. On them: the classifier learns the planted attribute, a conditional
tiny VAE-GAN (num_attributes=40) trains through the pmapped train step, and
the attribute evaluation (``evaluation.attributes``, and its binary) and
``sampling_outputs.write_samples(attributes=True)`` run end to end.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from experiments.configs import attribute_classifier as clf_configs
from experiments.configs import tiny
from vaegan_jax import classifier
from vaegan_jax import data as data_lib
from vaegan_jax import sampling
from vaegan_jax import sampling_outputs
from vaegan_jax import train
from vaegan_jax.evaluation import attributes
from vaegan_jax.evaluation import metrics
from vaegan_jax.runtime import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTRS = list(data_lib.CELEBA_ATTRIBUTE_NAMES)
PLANTED = ATTRS.index("Smiling")
NUM_TRAIN, NUM_TEST, SIZE = 32, 16, 16


def _run_binary(name, *args):
  return subprocess.run([sys.executable, "-m", f"experiments.{name}", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


# ----------------------------------------------------------------------------
# Fake CelebA.


def _jpeg(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _write_celeba(manual_dir, images, partitions, attrs):
  """The official files: img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt."""
  os.makedirs(manual_dir, exist_ok=True)
  names = [f"{i + 1:06d}.jpg" for i in range(len(images))]
  with zipfile.ZipFile(os.path.join(manual_dir, "img_align_celeba.zip"), "w") as zf:
    for name, image in zip(names, images):
      zf.writestr(f"img_align_celeba/{name}", _jpeg(image))
  with open(os.path.join(manual_dir, "list_eval_partition.txt"), "w") as f:
    f.writelines(f"{n} {p}\n" for n, p in zip(names, partitions))
  with open(os.path.join(manual_dir, "list_attr_celeba.txt"), "w") as f:
    f.write(f"{len(images)}\n" + " ".join(ATTRS) + " \n")
    f.writelines(n + "".join(f" {v:2d}" for v in row) + "\n" for n, row in zip(names, attrs))
  for extra in ("list_landmarks_align_celeba.txt", "identity_CelebA.txt"):
    open(os.path.join(manual_dir, extra), "w").close()


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
  """Data config of fake CelebA: 32 train, 16 test images; Smiling == bright."""
  rng = np.random.default_rng(0)
  n = NUM_TRAIN + NUM_TEST
  bright = np.arange(n) % 2 == 0
  images = []
  for b in bright:
    # Smooth noise (cheap JPEGs) around a bright or dark level.
    low = rng.normal(200 if b else 55, 30, (28, 23, 3))
    up = np.asarray(Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize(
        (178, 218), Image.Resampling.BILINEAR))
    images.append(up)
  attrs = rng.choice([-1, 1], (n, 40))
  attrs[:, PLANTED] = np.where(bright, 1, -1)
  manual_dir = str(tmp_path_factory.mktemp("celeba"))
  _write_celeba(manual_dir, images, [0] * NUM_TRAIN + [2] * NUM_TEST, attrs)
  data = ml_collections.ConfigDict(dict(
      name="celeb_a", image_size=SIZE, channels=3, data_dir=None, manual_dir=manual_dir,
      folder=None, hflip=True, train_split="train", eval_split="test", num_examples=0))
  return data, (attrs > 0).astype(np.float32), bright


def _classifier_config(data):
  c = clf_configs.get_config()
  c.data = data
  c.model.update(dict(first=8, widths=(16, 16, 16), dense=32, conv_impl="xla"))
  c.batch_size = 16
  c.learning_rate = 1e-2
  c.num_train_steps = 40
  c.log_every = c.eval_every = c.checkpoint_every = 20
  return c


@pytest.fixture(scope="module")
def classifier_workdir(celeba, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("classifier"))
  classifier.train_and_evaluate(_classifier_config(celeba[0]), wd)
  return wd


@pytest.fixture(scope="module")
def conditional_workdir(celeba, tmp_path_factory):
  c = tiny.get_config()
  c.model.update(dict(conv_impl="xla", channels=3, num_attributes=40))
  c.data = celeba[0]
  c.num_train_steps, c.checkpoint_every, c.log_every, c.sample_every = 4, 4, 2, 4
  wd = str(tmp_path_factory.mktemp("conditional"))
  state = train.train_and_evaluate(c, wd)
  assert int(state.step) == 4
  return wd


# ----------------------------------------------------------------------------
# Classifier.


def test_classifier_learns_planted_attribute(celeba, classifier_workdir):
  data, labels, bright = celeba
  clf, config = classifier.restore(classifier_workdir)
  assert clf.step == 40 and clf.attribute_names == tuple(ATTRS)
  assert config.model.widths == (16, 16, 16)
  root = classifier.classifier_dir(classifier_workdir)
  assert sorted(os.listdir(checkpoint.checkpoint_dir(root))) == ["20", "40"]
  assert os.path.exists(os.path.join(root, "metrics.jsonl"))
  test = list(sampling.dataset_batches(data, "test", 8, NUM_TEST))
  y, p = classifier.predict_dataset(clf, test)
  np.testing.assert_array_equal(y, labels[NUM_TRAIN:])
  assert p.shape == (NUM_TEST, 40) and ((p >= 0) & (p <= 1)).all()
  # Held-out images: the planted attribute is read off the image.
  is_bright = bright[NUM_TRAIN:]
  acc = np.mean((p[:, PLANTED] > 0.5) == is_bright)
  assert acc >= 0.9, p[:, PLANTED]
  assert p[is_bright, PLANTED].mean() - p[~is_bright, PLANTED].mean() > 0.6
  result = classifier.evaluate(clf, test)
  assert result["per_attribute_accuracy"][PLANTED] == acc
  assert result["num_examples"] == NUM_TEST and np.isfinite(result["loss"])
  # Running again resumes at the last step: nothing more to train.
  again = classifier.train_and_evaluate(_classifier_config(data), classifier_workdir)
  assert again.step == 40


def test_classifier_config_errors(celeba, tmp_path):
  c = _classifier_config(celeba[0])
  c.model.num_attributes = 3
  with pytest.raises(classifier.ClassifierError, match="num_attributes=40"):
    classifier.train_and_evaluate(c, str(tmp_path))
  c = _classifier_config(ml_collections.ConfigDict(tiny.get_config().data))  # digits
  with pytest.raises(classifier.ClassifierError, match="has no attributes"):
    classifier.train_and_evaluate(c, str(tmp_path))
  with pytest.raises(classifier.ClassifierError, match="No classifier checkpoint"):
    classifier.restore(str(tmp_path / "none"))


# ----------------------------------------------------------------------------
# Conditional model, evaluation, attribute vectors.


def test_conditional_model_uses_y(conditional_workdir):
  state, config = sampling.restore_for_inference(conditional_workdir)
  assert config.model.num_attributes == 40
  logged = [json.loads(l) for l in open(os.path.join(conditional_workdir, "metrics.jsonl"))]
  assert logged[-1]["step"] == 4
  assert all(np.isfinite(logged[-1][k]) for k in ("kl_prior", "llike", "gan_real"))
  sampler = sampling.Sampler.from_state(config, state)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, config.model.z_dim))
  y0, y1 = np.zeros((2, 40), np.float32), np.ones((2, 40), np.float32)
  assert np.abs(np.asarray(sampler.decode(z, y0) - sampler.decode(z, y1))).max() > 1e-3


def test_evaluate_attributes_end_to_end(celeba, classifier_workdir, conditional_workdir,
                                        tmp_path):
  data, labels, _ = celeba
  out = str(tmp_path / "eval")
  result = attributes.evaluate_attributes([conditional_workdir, conditional_workdir],
                                          classifier_workdir, out, batch_size=8)
  with open(os.path.join(out, attributes.OUTPUT_FILE)) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(result))
  assert saved["num_examples"] == NUM_TEST and saved["split"] == "test"
  real, gen_a, gen_b = saved["rows"]
  assert real["kind"] == "real" and gen_a["kind"] == "vaegan" and gen_a["step"] == 4
  # The real row is the metric of the classifier on the real test images.
  clf, _ = classifier.restore(classifier_workdir)
  y, p = classifier.predict_dataset(clf, sampling.dataset_batches(data, "test", 16, NUM_TEST))
  np.testing.assert_array_equal(y, labels[NUM_TRAIN:])
  want = metrics.attribute_similarity(y, p)
  assert real["cosine"] == pytest.approx(want["cosine"], abs=1e-6)
  assert real["mse"] == pytest.approx(want["mse"], abs=1e-6)
  for row in saved["rows"]:
    assert 0 <= row["cosine"] <= 1 and 0 <= row["mse"] <= 1 and 0 <= row["accuracy"] <= 1
  # The same z for every generator: the same checkpoint scores the same.
  assert gen_a["cosine"] == gen_b["cosine"] and gen_a["mse"] == gen_b["mse"]
  assert "cosine" in saved["definitions"]
  assert "real test images" in attributes.format_table(result)
  # ``score_generators`` is the same without writing.
  assert attributes.score_generators([conditional_workdir], classifier_workdir,
                                     batch_size=8)["rows"] == saved["rows"][:2]

  # The binary is flags plus that call: the same JSON, the table on stdout.
  out2 = str(tmp_path / "binary")
  proc = _run_binary("evaluate_attributes", f"--workdir={conditional_workdir},"
                     f"{conditional_workdir}", f"--classifier_workdir={classifier_workdir}",
                     f"--outdir={out2}", "--batch_size=8")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(out2, attributes.OUTPUT_FILE)) as f:
    assert json.load(f) == saved
  assert attributes.format_table(result) in proc.stdout
  # Its errors are one line, exit status 1, nothing written.
  proc = _run_binary("evaluate_attributes", f"--workdir={conditional_workdir}",
                     f"--classifier_workdir={tmp_path / 'none'}", f"--outdir={tmp_path / 'o'}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: No classifier checkpoint"), proc.stderr
  assert not (tmp_path / "o").exists()


def test_evaluate_attributes_errors(classifier_workdir, conditional_workdir, tmp_path):
  with pytest.raises(classifier.ClassifierError, match="No classifier checkpoint"):
    attributes.evaluate_attributes([conditional_workdir], str(tmp_path), str(tmp_path / "o"))
  # An unconditional model is refused before anything is generated.
  meta = os.path.join(conditional_workdir, "checkpoints", "4", "config", "metadata")
  uncond = tmp_path / "uncond" / "checkpoints" / "4"
  shutil.copytree(os.path.dirname(os.path.dirname(meta)), uncond)
  with open(meta) as f:
    cfg = json.load(f)
  cfg["model"]["num_attributes"] = 0
  with open(uncond / "config" / "metadata", "w") as f:
    json.dump(cfg, f)
  with pytest.raises(attributes.EvaluationError, match="unconditional"):
    attributes.evaluate_attributes([str(tmp_path / "uncond")], classifier_workdir,
                            str(tmp_path / "o"))
  assert not (tmp_path / "o").exists()


def test_sample_attribute_vectors(conditional_workdir, tmp_path):
  kw = dict(num=4, num_interpolations=2, interpolation_steps=3, attributes=True,
            num_attribute_images=NUM_TRAIN, attribute_columns=4)
  out1, out2 = str(tmp_path / "a"), str(tmp_path / "b")
  written = sampling_outputs.write_samples(conditional_workdir, out1, **kw)
  assert {"attributes.png", sampling_outputs.ATTRIBUTE_VECTORS_FILE, "samples_y.npy"} <= set(written)
  with np.load(os.path.join(out1, sampling_outputs.ATTRIBUTE_VECTORS_FILE)) as f:
    assert tuple(f["names"]) == sampling.PAPER_ATTRIBUTES
    assert f["vectors"].shape == (18, 8) and np.isfinite(f["vectors"]).all()
    assert int(f["num_images"]) == NUM_TRAIN
    assert (f["num_positive"] + f["num_negative"] == NUM_TRAIN).all()
  grid = Image.open(os.path.join(out1, "attributes.png"))
  # Rows: inputs, reconstructions, then one per attribute; 4 columns.
  assert grid.mode == "RGB" and grid.size == (4 * 18 + 2, (2 + 18) * 18 + 2)
  # Reusing the saved vectors gives the same picture.
  sampling_outputs.write_samples(conditional_workdir, out2,
             attribute_vectors=os.path.join(out1, sampling_outputs.ATTRIBUTE_VECTORS_FILE), **kw)
  with open(os.path.join(out1, "attributes.png"), "rb") as a, \
       open(os.path.join(out2, "attributes.png"), "rb") as b:
    assert a.read() == b.read()
  assert sampling_outputs.ATTRIBUTE_VECTORS_FILE not in os.listdir(out2)
