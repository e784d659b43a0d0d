"""Feature spaces for the sample metrics, and where their weights come from.

Every metric of ``metrics.py`` compares two sets of feature vectors, so the
feature network decides what a number means. Two kinds, named in every report
(the ``name`` of the extractor), so that nobody mistakes one for the other:

* ``'inception'``: the 2048-d pool3 features of the TF Inception-v3 graph of
  the original FID code, as pytorch-fid ports it (``inception.py``): the
  standard FID. Its weights are a file the user already has, converted once
  with ``python -m experiments.convert_inception_weights``; nothing is ever
  downloaded.
* ``'classifier'``: where no Inception weights are given, a classifier that
  the project trains on the dataset's own labels (``vaegan_jax.classifier``;
  classes for digits/MNIST/CIFAR-10, the 40 attributes for CelebA). Its
  penultimate layer gives the features and its outputs the class
  probabilities of the classifier score. Name:
  ``'<dataset>_classifier'``, e.g. ``'digits_classifier'``. It is trained once
  per (dataset, image size) and cached; the default digits one takes seconds.

``resolve`` picks one: ``'auto'`` takes Inception when weights are given (the
``inception_weights`` argument or ``$VAEGAN_INCEPTION_WEIGHTS``), else the
dataset's classifier, else none (a folder of unlabelled images): then only the
reconstruction metrics are reported, with the reason.

The cache (trained classifiers, real-data features) lives in ``cache_dir()``:
``$VAEGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/vaegan_jax``, else
``~/.cache/vaegan_jax``. Every entry is keyed by what determines it and written
atomically, so a killed process never leaves a half-written entry behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vaegan_jax import classifier
from vaegan_jax import data
from vaegan_jax.runtime import loop
from vaegan_jax.runtime.errors import UserError

FEATURE_KINDS = ("auto", "inception", "classifier")
INCEPTION_ENV = "VAEGAN_INCEPTION_WEIGHTS"


class FeatureError(UserError, ValueError):
  """Features that can't be had as asked (one-line message naming the fix)."""


@dataclasses.dataclass
class FeatureExtractor:
  """images (N, S, S, C) in [-1, 1] -> {'features': (N, D)[, 'probs': (N, K)]}.

  Attributes:
    name: what the JSON reports, e.g. 'digits_classifier', 'inception_v3_fid'.
    fingerprint: identity of the weights (cache keys of real features).
    fn: the batched extractor.
    num_classes: K where ``fn`` also returns class probabilities (softmax), else 0.
    info: facts to report about the feature network (e.g. its held-out accuracy).
  """
  name: str
  fingerprint: str
  fn: Callable[[Any], dict[str, np.ndarray]]
  num_classes: int = 0
  info: dict = dataclasses.field(default_factory=dict)

  def __call__(self, images: Any) -> dict[str, np.ndarray]:
    return self.fn(images)


def inference_chunk() -> int:
  """Images per network call in evaluation.

  On CPU, 16: the fast convs (``fast_conv.py``) already split batches into
  unrolled chunks of 16, so a bigger call only multiplies compile time (256
  rows: 47 s to compile the digits decoder and reconstruction, 16 rows: 8 s,
  at the same throughput). Elsewhere 256.
  """
  return 16 if jax.default_backend() == "cpu" else 256


def cache_dir() -> str:
  """The cache root (see module docstring); created on first use."""
  root = os.environ.get("VAEGAN_CACHE_DIR")
  if not root:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(xdg, "vaegan_jax")
  return os.path.abspath(root)


def digest(obj: Any) -> str:
  """Short stable hash of a JSON-able object."""
  return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(data_config: Any) -> dict:
  """What decides the images a split holds, after preprocessing: the data fields,
  and the files' own stamp (a folder's images added, removed or rewritten)."""
  keys = ("name", "image_size", "channels", "num_examples", "data_dir", "manual_dir", "folder",
          "label_attributes", "crop_seed")
  out = {k: data.config_value(data_config, k) for k in keys}
  stamp = data.content_stamp(data_config)
  return {**out, "content": stamp} if stamp else out  # built-in data: keys as before


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive lock on ``path`` (other processes wait: one trains, the rest reuse)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------
# The in-project classifier.


def classifier_config(data_config: Any, info: data.DatasetInfo
                      ) -> ml_collections.ConfigDict:
  """The classifier trained for evaluation on ``data_config``'s train split.

  Classes where the dataset has labels (softmax), else its attributes
  (sigmoid). Digits: a narrow 3-conv net (16/32/64/64, 128 features), 200
  steps of 64 (9 epochs of 1,433 images): 30 s on 2 CPU cores, compile
  included, 99.2 % on the 364 held-out digits (measured, docs/eval_default_run.json).
  Photos at 32x32: the digits' net, 800 steps (16 photographs): 86 % on crops of
  the held-out bands, which no training crop overlaps (measured, 2026-12-05). MNIST and CIFAR-10:
  32/32/64/128, 6,000 steps (8 epochs). CelebA: the Sec. 5.3 classifier,
  20,000 steps.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(data_config))
  if "label_attributes" in c.data:  # The same classifier for conditional runs.
    c.data.label_attributes = False
  c.data.hflip = bool(data.config_value(data_config, "hflip", False))
  c.data.train_split = data.config_value(data_config, "train_split", "train")
  c.data.eval_split = data.config_value(data_config, "eval_split", None) or ""
  if info.name == "digits":
    first, widths, dense, steps = 16, (32, 64, 64), 128, 200
  elif info.name == "photos" and int(data_config.image_size) <= 32:
    first, widths, dense, steps = 16, (32, 64, 64), 128, 800
  elif int(data_config.image_size) <= 32:
    first, widths, dense, steps = 32, (32, 64, 128), 128, 6000
  else:
    first, widths, dense, steps = 32, (64, 128, 256), 512, 20_000
  c.model = ml_collections.ConfigDict(dict(
      labels="classes" if info.num_classes else "attributes",
      num_classes=info.num_classes, num_attributes=len(info.attribute_names),
      first=first, widths=widths, dense=dense, bn_momentum=0.9, conv_impl="auto"))
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.num_train_steps = steps
  c.log_every = max(steps // 4, 1)
  c.eval_every = steps
  c.num_eval_examples = 0
  c.checkpoint_every = steps
  c.keep_checkpoints = 1
  return c


def _params_fingerprint(tree: Any) -> str:
  h = hashlib.sha1()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def classifier_features(data_config: Any, *, directory: Optional[str] = None
                        ) -> FeatureExtractor:
  """The dataset's classifier as a FeatureExtractor; trains and caches it once.

  Args:
    data_config: the data config of the model being evaluated.
    directory: a classifier workdir (as ``train_attribute_classifier`` writes)
      to use instead of the cache; trained there if it holds none.
  """
  info = data.validate(data_config)
  if not info.num_classes and not info.attribute_names:
    raise FeatureError(f"Dataset {info.name!r} has neither class labels nor attributes, so "
                       "no classifier can be trained for features: pass --inception_weights "
                       "(see experiments/convert_inception_weights.py).")
  config = classifier_config(data_config, info)
  if directory is None:
    key = digest({"data": data_fingerprint(data_config), "classifier": config.to_dict()})
    directory = os.path.join(cache_dir(), "classifiers", f"{info.name}_{key}")
  with file_lock(directory + ".lock"):
    clf = _trained_classifier(config, directory, info)
  clf.chunk_size = inference_chunk()
  meta_path = os.path.join(directory, "heldout_accuracy.json")
  meta = {}
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
  name = f"{info.name}_classifier"
  num_classes = clf.arch.num_classes if clf.arch.labels == "classes" else 0

  def fn(images):
    logits, feats = clf.logits_and_features(images)
    out = {"features": feats}
    if num_classes:
      out["probs"] = clf.probs_from_logits(logits)
    return out

  return FeatureExtractor(name=name, fingerprint=_params_fingerprint(clf.variables), fn=fn,
                          num_classes=num_classes,
                          info={"classifier_dir": directory, "classifier_step": clf.step, **meta})


def _trained_classifier(config, directory: str, info) -> classifier.Classifier:
  workdir = directory  # The classifier keeps its checkpoints in workdir/classifier.
  done, started = False, 0
  if os.path.isdir(classifier.classifier_dir(workdir)):
    try:
      clf, _ = classifier.restore(workdir)
      done, started = clf.step >= int(config.num_train_steps), clf.step
    except classifier.ClassifierError as e:
      logging.warning("Cached classifier in %s unreadable (%s): retraining.", directory, e)
  if not done:
    logging.info("Training the %s classifier for evaluation features (%d steps, once; "
                 "cached in %s).", info.name, config.num_train_steps, directory)
    clf = classifier.train_and_evaluate(config, workdir)
    if clf.step < int(config.num_train_steps):  # SIGTERM/SIGINT: saved, not finished.
      saved = (f"its checkpoint {clf.step} is saved in {classifier.classifier_dir(workdir)}"
               if clf.step > started else "before a new step: nothing new was saved")
      raise loop.Preempted(
          f"Preempted while training the {info.name} feature classifier (step {clf.step} of "
          f"{config.num_train_steps}, {saved}); rerun to resume.")
    eval_split = config.data.eval_split
    if eval_split:
      from vaegan_jax import sampling  # pylint: disable=g-import-not-at-top
      result = classifier.evaluate(
          clf, sampling.dataset_batches(config.data, eval_split, 256, 2 ** 62))
      meta = {"classifier_heldout_split": eval_split,
              "classifier_heldout_accuracy": result["accuracy"]}
      write_json_atomic(os.path.join(directory, "heldout_accuracy.json"), meta)
      logging.info("Classifier accuracy on held-out %r: %.4f.", eval_split, result["accuracy"])
  return clf


def write_json_atomic(path: str, obj: Any) -> None:
  """json.dump to a temporary file, then rename: readers never see half a file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------
# Inception.


def inception_features(weights: str) -> FeatureExtractor:
  """pytorch-fid's FID Inception-v3 from a converted ``.npz`` (see inception.py).

  Returns pool3 'features' (N, 2048) and 'inception_probs' (N, 1008), the
  softmax of its fc logits without the fc bias (as OpenAI's Inception-score
  code and torch-fidelity), for the Inception score only: coverage and class
  histograms over ImageNet's classes say nothing about faces or digits.
  """
  from vaegan_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
  path = check_request("inception", weights)
  with open(path, "rb") as f:
    fingerprint = hashlib.sha1(f.read()).hexdigest()[:16]
  try:
    net = inception.InceptionFeatures.from_npz(path, batch_size=50)
  except inception.WeightsError as e:
    raise FeatureError(str(e)) from e
  fc_bias = np.asarray(net.variables["params"]["fc"]["bias"], np.float32)

  def fn(images):
    pool3, logits = net.features_and_logits(images)
    logits = np.asarray(logits, np.float32) - fc_bias  # the reference IS code has no bias
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits)), np.float32)
    return {"features": np.asarray(pool3, np.float32), "inception_probs": probs}

  return FeatureExtractor(name=net.name, fingerprint=fingerprint, fn=fn,
                          info={"inception_weights": path,
                                **{f"inception_{k}": str(v) for k, v in net.meta.items()}})


# ----------------------------------------------------------------------------
# Choosing.


def check_request(kind: str, inception_weights: Optional[str] = None) -> Optional[str]:
  """Cheap checks of a feature request (no network is built); returns the weights path
  that Inception will use, or None. Raises FeatureError."""
  if kind not in FEATURE_KINDS:
    raise FeatureError(f"--features must be one of {FEATURE_KINDS}, got {kind!r}.")
  weights = inception_weights or os.environ.get(INCEPTION_ENV) or None
  if kind == "classifier" or not (kind == "inception" or weights):
    return None
  if not weights:
    raise FeatureError("--features=inception needs --inception_weights=PATH.npz (or "
                       f'${INCEPTION_ENV}); convert pytorch-fid\'s .pth once with `python -m '
                       "experiments.convert_inception_weights`.")
  path = os.path.abspath(os.path.expanduser(weights))
  if not os.path.isfile(path):
    raise FeatureError(f'Inception weights {path} not found: convert pytorch-fid\'s '
                       "pt_inception-2015-12-05-*.pth once with `python -m "
                       "experiments.convert_inception_weights --pth=... --out=...npz`.")
  return path


def resolve(kind: str, data_config: Any, *, inception_weights: Optional[str] = None,
            classifier_dir: Optional[str] = None) -> tuple[Optional[FeatureExtractor], str]:
  """(extractor or None, why there is none) for ``kind`` in FEATURE_KINDS.

  Raises FeatureError where ``kind`` asks for what can't be had.
  """
  weights = check_request(kind, inception_weights)
  if weights:
    return inception_features(weights), ""
  info = data.validate(data_config)
  if info.num_classes or info.attribute_names:
    return classifier_features(data_config, directory=classifier_dir), ""
  why = (f"no FID/KID/precision/recall: dataset {info.name!r} has no labels to train a "
         "feature classifier on and no Inception weights were given (--inception_weights)")
  if kind == "classifier":
    raise FeatureError(why[len("no FID/KID/precision/recall: "):].capitalize() + ".")
  return None, why
