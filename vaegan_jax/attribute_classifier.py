"""Image classifier (attributes or classes) and the attribute-similarity metric.

Two uses, one network:
  * paper Sec. 5.3: an attribute classifier scores attribute-conditional
    generators (``labels='attributes'``, multi-label, sigmoid outputs);
  * evaluation (``vaegan_jax/evaluation``): where no Inception weights are
    given, a classifier trained on the dataset's own labels supplies the
    feature space of FID/KID/precision/recall (its penultimate layer,
    ``Classifier.features``) and the class probabilities of the
    Inception-score-like figure (``labels='classes'``, digits/MNIST/CIFAR-10,
    softmax outputs; or CelebA's attributes).

Larsen et al. (2016) evaluate attribute-conditional generators (GAN, VAE,
VAE-GAN, all conditioned on an attribute vector y) with a separate attribute
classifier trained on real images: each generated image is classified, and
the paper reports the cosine similarity and the mean squared error between y
and the predicted attributes, with real test images as the reference row.
The paper used LFW; here the data are whatever ``config.data`` names (CelebA
with its 40 binary attributes by default).

The classifier is the discriminator's conv stack with A outputs:

  x (B, S, S, C) in [-1, 1]
  -> conv ``first`` (5x5, stride 1, bias), ReLU
  -> for w in ``widths``: conv w (5x5, stride 2, pad 2, no bias), BN, ReLU
  -> flatten -> dense ``dense`` (no bias), BN, ReLU   = the features (B, dense)
  -> dense K (bias): logits (B, K)

With ``labels='attributes'`` K = A attributes, P(attribute a) = sigmoid(logit
a), trained with the sigmoid binary cross-entropy against y in {0, 1}
averaged over examples and attributes. With ``labels='classes'`` K =
``num_classes``, P(class) = softmax(logits), trained with the softmax cross-
entropy against the integer 'label'. Adam in both cases. It runs on one device
(``jax.jit``): it is small and this keeps it simple.

Training (``train_and_evaluate``) shares the VAE-GAN trainer's machinery:
checkpoints in ``workdir/classifier/checkpoints/<step>/{state,config,integrity}``
(``checkpoint.py``: Orbax's atomic rename, a checksum verified on every restore,
corrupt ones moved to ``checkpoints_bad/`` and the newest good one resumed; the
config as JSON with the dataset's ``attribute_names``), TensorBoard scalars and
``metrics.jsonl`` (``metric_writer.py``), one trainer per directory
(``workdir_lock.py``), and SIGTERM/SIGINT saving the current step before it
returns (``trainer_utils.StopRequest``).

``attribute_similarity`` (the metric) -- for labels y (N, A) in {0, 1} and
predicted probabilities p (N, A) in [0, 1]:

  cosine = (1/N) sum_i  <y_i, p_i> / (|y_i| |p_i|)   (mean of per-example
           cosines; an example with |y_i| |p_i| = 0, e.g. no positive label,
           counts as cosine 0 and is reported in ``num_zero_norm``)
  mse    = (1/(N A)) sum_{i,a} (y_ia - p_ia)^2          (mean over all entries)

Probabilities, not thresholded 0/1 predictions, are compared, so a confident
wrong prediction costs more than an unsure one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from vaegan_jax import checkpoint
from vaegan_jax import data
from vaegan_jax import layers
from vaegan_jax import metric_writer
from vaegan_jax import sampling
from vaegan_jax import trainer_utils
from vaegan_jax import workdir_lock

Array = jax.Array


class ClassifierError(ValueError):
  """A classifier config, data or checkpoint that can't work (one-line message)."""


# ----------------------------------------------------------------------------
# The metric.


def attribute_similarity(y: Any, pred: Any) -> dict[str, float]:
  """Cosine similarity and MSE between attribute labels and predictions.

  Args:
    y: (N, A) target attributes, {0, 1} (any reals work).
    pred: (N, A) predicted attribute probabilities in [0, 1].
  Returns:
    dict with 'cosine': mean over examples of cos(y_i, pred_i) (an example
    whose y_i or pred_i is all zero contributes 0); 'mse': mean over all N*A
    entries of (y - pred)^2; 'num_examples': N; 'num_zero_norm': how many
    examples had a zero-norm y_i or pred_i. Computed in float64 on the host.
  """
  y = np.asarray(y, np.float64)
  p = np.asarray(pred, np.float64)
  if y.ndim != 2 or y.shape != p.shape or y.shape[0] == 0:
    raise ValueError(f'Need y and pred of the same shape (N, A), N > 0; got '
                     f'{y.shape} and {p.shape}.')
  dot = np.sum(y * p, axis=1)
  denom = np.linalg.norm(y, axis=1) * np.linalg.norm(p, axis=1)
  zero = denom == 0
  cos = np.where(zero, 0.0, dot / np.where(zero, 1.0, denom))
  return dict(cosine=float(np.mean(cos)), mse=float(np.mean((y - p) ** 2)),
              num_examples=int(y.shape[0]), num_zero_norm=int(np.sum(zero)))


def binary_accuracy(y: Any, pred: Any) -> float:
  """Mean over all entries of [pred > 0.5] == [y > 0.5]."""
  return float(np.mean((np.asarray(pred) > 0.5) == (np.asarray(y) > 0.5)))


# ----------------------------------------------------------------------------
# The network.


@dataclasses.dataclass(frozen=True)
class ClassifierArch:
  """Hyper-parameters of the classifier (hashable: static under jit)."""
  image_size: int = 64
  channels: int = 3
  num_attributes: int = 40
  first: int = 32
  widths: tuple[int, ...] = (64, 128, 256)
  dense: int = 512
  bn_momentum: float = 0.9
  conv_impl: str = 'auto'  # see layers.py
  labels: str = 'attributes'  # 'attributes' (multi-label) | 'classes' (one label)
  num_classes: int = 0  # outputs when labels='classes'

  @property
  def num_outputs(self) -> int:
    return self.num_classes if self.labels == 'classes' else self.num_attributes

  @property
  def label_key(self) -> str:
    """The batch key of the targets: 'attributes' (B, A) or 'label' (B,)."""
    return 'label' if self.labels == 'classes' else 'attributes'

  @classmethod
  def from_config(cls, config) -> 'ClassifierArch':
    """From a classifier config (``config.model`` + ``config.data`` sizes)."""
    m = dict(config.model)
    names = {f.name for f in dataclasses.fields(cls)} - {'image_size', 'channels'}
    unknown = sorted(set(m) - names)
    if unknown:
      raise ClassifierError(f'Unknown classifier model field(s) {unknown}; valid: '
                            f'{sorted(names)}.')
    if 'widths' in m:
      m['widths'] = tuple(int(w) for w in m['widths'])
    return cls(image_size=int(config.data.image_size),
               channels=int(config.data.channels), **m)

  def validate(self) -> None:
    n = len(self.widths)
    if n < 1 or self.image_size % (2 ** n):
      raise ClassifierError(f'image_size={self.image_size} must be divisible by '
                            f'2**len(model.widths)={2 ** n}.')
    if self.labels not in ('attributes', 'classes'):
      raise ClassifierError(f"model.labels must be 'attributes' or 'classes', got "
                            f'{self.labels!r}.')
    if self.num_outputs < 1:
      field = 'num_classes' if self.labels == 'classes' else 'num_attributes'
      raise ClassifierError(f'model.{field} must be >= 1, got {self.num_outputs}.')
    try:
      layers.resolve_impl(self.conv_impl)
    except ValueError as e:
      raise ClassifierError(str(e).splitlines()[0]) from e


class AttributeClassifier(nn.Module):
  """x (B, S, S, C) in [-1, 1] -> logits (B, K) float32 [, features (B, dense)]."""
  arch: ClassifierArch

  @nn.compact
  def __call__(self, x: Array, *, train: bool, return_features: bool = False):
    a = self.arch
    bn = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=a.bn_momentum, epsilon=1e-5)
    h = layers.Conv(a.first, strides=1, use_bias=True, impl=a.conv_impl,
                    name='conv0')(x.astype(jnp.float32))
    h = nn.relu(h)
    for i, w in enumerate(a.widths, start=1):
      h = layers.Conv(w, strides=2, use_bias=False, impl=a.conv_impl, name=f'conv{i}')(h)
      h = nn.relu(bn(name=f'bn{i}')(h))
    h = h.reshape(h.shape[0], -1)
    h = nn.Dense(a.dense, use_bias=False, name='dense')(h)
    h = nn.relu(bn(name='bn_dense')(h))
    logits = nn.Dense(a.num_outputs, name='logits')(h).astype(jnp.float32)
    return (logits, h.astype(jnp.float32)) if return_features else logits


@flax.struct.dataclass
class ClassifierState:
  """All that training changes; every leaf an array (Orbax friendly)."""
  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any


def _optimizer(learning_rate: float) -> optax.GradientTransformation:
  return optax.adam(learning_rate)


def bce_loss(logits: Array, y: Array) -> Array:
  """Sigmoid binary cross-entropy, mean over examples and attributes."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))


def _loss_and_accuracy(arch: ClassifierArch, logits: Array, y: Array):
  if arch.labels == 'classes':
    labels = y.astype(jnp.int32)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return loss, jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return bce_loss(logits, y), jnp.mean(((logits > 0) == (y > 0.5)).astype(jnp.float32))


def create_state(arch: ClassifierArch, learning_rate: float, rng: Array) -> ClassifierState:
  """Freshly initialised parameters and optimizer state."""
  model = AttributeClassifier(arch)
  x = jnp.zeros((1, arch.image_size, arch.image_size, arch.channels), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(rng, x)
  params = variables['params']
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                         batch_stats=variables['batch_stats'],
                         opt_state=_optimizer(learning_rate).init(params))


@functools.lru_cache(maxsize=None)
def _train_step_fn(arch: ClassifierArch, learning_rate: float):
  """Jitted (state, x (B,S,S,C), y) -> (state, {'loss', 'accuracy'})."""
  model = AttributeClassifier(arch)
  tx = _optimizer(learning_rate)

  def loss_fn(params, batch_stats, x, y):
    logits, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                                   train=True, mutable=['batch_stats'])
    loss, acc = _loss_and_accuracy(arch, logits, y)
    return loss, (acc, new_vars['batch_stats'])

  @jax.jit
  def step(state: ClassifierState, x: Array, y: Array):
    (loss, (acc, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, x, y)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=stats, opt_state=opt_state)
    return new, {'loss': loss, 'accuracy': acc}

  return step


def train_step(state: ClassifierState, x: Any, y: Any, *, arch: ClassifierArch,
               learning_rate: float) -> tuple[ClassifierState, dict[str, Array]]:
  """One Adam step on images x (B, S, S, C) vs targets y.

  y is (B, A) in {0, 1} for ``labels='attributes'`` (sigmoid BCE) or (B,)
  integer classes for ``labels='classes'`` (softmax cross-entropy).
  """
  y = jnp.asarray(y, jnp.int32 if arch.labels == 'classes' else jnp.float32)
  return _train_step_fn(arch, float(learning_rate))(state, jnp.asarray(x, jnp.float32), y)


@functools.lru_cache(maxsize=None)
def _apply_fn(arch: ClassifierArch):
  model = AttributeClassifier(arch)

  @jax.jit
  def apply(params, batch_stats, x):
    return model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False,
                       return_features=True)

  return apply


class Classifier:
  """A trained classifier in inference mode (BN running averages).

  Attributes:
    arch: the ClassifierArch.
    attribute_names: the A names it predicts (from its training data), or ().
    step: training step of the restored checkpoint.
  """

  def __init__(self, arch: ClassifierArch, params: Any, batch_stats: Any, *,
               attribute_names: tuple[str, ...] = (), step: int = 0,
               chunk_size: int = 256):
    self.arch = arch
    self.attribute_names = tuple(attribute_names)
    self.step = int(step)
    self.chunk_size = int(chunk_size)
    self._variables = jax.device_put((params, batch_stats))
    self._apply = _apply_fn(arch)

  @property
  def variables(self) -> tuple[Any, Any]:
    """(params, batch_stats) on the device."""
    return self._variables

  def logits_and_features(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
    """images (B, S, S, C) in [-1, 1] -> (logits (B, K), features (B, dense)), host float32.

    Runs in chunks of ``chunk_size`` (the last one zero-padded: one executable).
    """
    x = jnp.asarray(images, jnp.float32)
    a = self.arch
    if x.ndim != 4 or x.shape[1:] != (a.image_size, a.image_size, a.channels):
      raise ValueError(f'The classifier takes (B, {a.image_size}, {a.image_size}, '
                       f'{a.channels}) images, got {x.shape}.')
    logits, feats, c = [], [], self.chunk_size
    for s in range(0, x.shape[0], c):
      part = x[s:s + c]
      m = part.shape[0]
      if m < c and x.shape[0] > c:  # One executable for every chunk.
        part = jnp.pad(part, [(0, c - m), (0, 0), (0, 0), (0, 0)])
      lg, ft = self._apply(*self._variables, part)
      logits.append(np.asarray(lg)[:m])
      feats.append(np.asarray(ft)[:m])
    if not logits:
      return (np.zeros((0, a.num_outputs), np.float32), np.zeros((0, a.dense), np.float32))
    return np.concatenate(logits), np.concatenate(feats)

  def logits(self, images: Any) -> np.ndarray:
    """images (B, S, S, C) in [-1, 1] -> logits (B, K) float32 (host)."""
    return self.logits_and_features(images)[0]

  def features(self, images: Any) -> np.ndarray:
    """images (B, S, S, C) in [-1, 1] -> penultimate features (B, dense) float32."""
    return self.logits_and_features(images)[1]

  def probs_from_logits(self, logits: Any) -> np.ndarray:
    """Sigmoid (attributes) or softmax (classes) of logits (B, K)."""
    fn = jax.nn.softmax if self.arch.labels == 'classes' else jax.nn.sigmoid
    return np.asarray(fn(jnp.asarray(logits, jnp.float32)), np.float32)

  def predict_probs(self, images: Any) -> np.ndarray:
    """images (B, S, S, C) in [-1, 1] -> probabilities (B, K) float32 in [0, 1]:
    P(attribute) per attribute, or P(class) summing to 1 with labels='classes'."""
    return self.probs_from_logits(self.logits(images))


# ----------------------------------------------------------------------------
# Evaluation helpers.


def predict_dataset(classifier: Classifier, batches: Iterable[Mapping[str, Any]]
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Labels and predictions over batches with 'image' and the classifier's targets.

  Returns:
    (y, p): y (N, A) float32 attributes or (N,) int32 classes, as the
    classifier's ``arch.label_key``; p (N, K) float32 predicted probabilities.
  """
  key = classifier.arch.label_key
  ys, ps = [], []
  for batch in batches:
    if key not in batch:
      raise ClassifierError(f'The data have no {key!r}: use a dataset with '
                            + ('attributes (e.g. data.name=celeb_a).' if key == 'attributes'
                               else 'class labels (digits, mnist, cifar10).'))
    ys.append(np.asarray(batch[key], np.int32 if key == 'label' else np.float32))
    ps.append(classifier.predict_probs(batch['image']))
  if not ys:
    raise ClassifierError('No examples to classify.')
  return np.concatenate(ys), np.concatenate(ps)


def predict_conditional_samples(sampler: Any, classifier: Classifier, y: Any,
                                rng: Array, *, temperature: float = 1.0,
                                batch_size: int = 256) -> np.ndarray:
  """Classifies Dec(z, y_i), z ~ N(0, T^2 I), one sample per row y_i.

  Args:
    sampler: a ``sampling.Sampler`` of a conditional model (``decode(z, y)``).
    classifier: the Classifier; its images must match the decoder's.
    y: (N, A) attribute vectors to condition on.
    rng: key for z; all N codes are drawn at once, so the result does not
      depend on ``batch_size``.
  Returns:
    p (N, A) float32: predicted probabilities of the generated images.
  """
  y = np.asarray(y, np.float32)
  n = y.shape[0]
  z = temperature * jax.random.normal(rng, (n, sampler.arch.z_dim), jnp.float32)
  out = []
  for s in range(0, n, int(batch_size)):
    images = sampler.decode(z[s:s + batch_size], y[s:s + batch_size])
    out.append(classifier.predict_probs(images))
  return np.concatenate(out)


def evaluate(classifier: Classifier, batches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """Loss and accuracy of ``classifier`` on ``batches``.

  For ``labels='classes'``: the cross-entropy, the accuracy and the majority
  baseline (always the most frequent class of these labels). Otherwise:

  'majority_accuracy' is the accuracy of always predicting each attribute's
  majority value *in these labels*: the floor a useful classifier must beat
  (CelebA's attributes are imbalanced, so it is ~0.8).
  """
  y, p = predict_dataset(classifier, batches)
  eps = 1e-7
  if classifier.arch.labels == 'classes':
    ce = -np.mean(np.log(np.clip(p[np.arange(len(y)), y].astype(np.float64), eps, 1.0)))
    counts = np.bincount(y, minlength=p.shape[1])
    return dict(loss=float(ce), accuracy=float(np.mean(np.argmax(p, 1) == y)),
                majority_accuracy=float(counts.max() / len(y)), num_examples=int(len(y)))
  pc = np.clip(p.astype(np.float64), eps, 1 - eps)
  bce = -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))
  per_attr = np.mean((p > 0.5) == (y > 0.5), axis=0)
  frac = np.mean(y > 0.5, axis=0)
  return dict(loss=float(bce), accuracy=float(np.mean(per_attr)),
              per_attribute_accuracy=per_attr.tolist(),
              majority_accuracy=float(np.mean(np.maximum(frac, 1 - frac))),
              num_examples=int(y.shape[0]))


# ----------------------------------------------------------------------------
# Training and checkpoints.
#
# The loop shares the VAE-GAN trainer's pieces: ``checkpoint`` (checksummed
# saves, the newest good checkpoint on resume, corrupt ones moved aside),
# ``metric_writer`` (TensorBoard, metrics.jsonl, console), ``workdir_lock``
# (one trainer per directory) and ``trainer_utils`` (SIGTERM/SIGINT, steps in
# flight). Everything lives in ``classifier_dir(workdir)``:
#
#   checkpoints/<step>/{state,config,integrity}   checkpoints_bad/<step>
#   events.out.tfevents.*  metrics.jsonl  lock.json
#
# Checkpoints of the layout before checksums, ``<step>/{state,config}`` right
# in ``classifier_dir``, are still read (unverified, with a warning) and
# resumed from; new ones go to ``checkpoints/``.


def classifier_dir(workdir: str) -> str:
  """The classifier's own directory in ``workdir``: its checkpoints, metrics and lock."""
  return os.path.join(os.path.abspath(workdir), 'classifier')


def validate_config(config: ml_collections.ConfigDict) -> data.DatasetInfo:
  """All checks before compiling anything. Raises ClassifierError / DataError."""
  arch = ClassifierArch.from_config(config)
  arch.validate()
  for k in ('num_train_steps', 'batch_size', 'log_every', 'checkpoint_every', 'eval_every'):
    if int(config[k]) <= 0:
      raise ClassifierError(f'{k} must be positive, got {config[k]}; e.g. --config.{k}=100.')
  if int(config.get('keep_checkpoints', 2)) < 1:
    raise ClassifierError(f'keep_checkpoints must be >= 1 (it would delete every checkpoint), '
                          f'got {config.keep_checkpoints}; e.g. --config.keep_checkpoints=2.')
  if not float(config.learning_rate) > 0:
    raise ClassifierError(f'learning_rate must be > 0, got {config.learning_rate}.')
  info = data.validate(config.data)
  if arch.labels == 'classes':
    if not info.num_classes:
      raise ClassifierError(f'Dataset {info.name!r} has no class labels: use '
                            "--config.model.labels=attributes or a labelled dataset.")
    if info.num_classes != arch.num_classes:
      raise ClassifierError(f'model.num_classes={arch.num_classes} but dataset {info.name!r} '
                            f'has {info.num_classes} classes; set --config.model.num_classes='
                            f'{info.num_classes}.')
  elif not info.attribute_names:
    raise ClassifierError(f'Dataset {info.name!r} has no attributes: train the classifier '
                          'on a dataset with attributes (data.name=celeb_a).')
  if info.num_examples < int(config.batch_size):
    raise ClassifierError(f'Split {config.data.train_split!r} has {info.num_examples} examples, '
                          f'fewer than batch_size={config.batch_size}: lower --config.batch_size.')
  if arch.labels == 'attributes' and len(info.attribute_names) != arch.num_attributes:
    raise ClassifierError(
        f'model.num_attributes={arch.num_attributes} but dataset {info.name!r} has '
        f'{len(info.attribute_names)} attributes; set --config.model.num_attributes='
        f'{len(info.attribute_names)}.')
  return info


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Classifier:
  """Trains on ``config.data.train_split``; evaluates on ``eval_split``; checkpoints.

  Resumes from the newest good checkpoint in ``classifier_dir(workdir)``
  (corrupt ones are moved to ``checkpoints_bad/``); the input order is a pure
  function of (seed, step), so a resumed run ends where an uninterrupted one
  does. SIGTERM/SIGINT finish the current step, save it and return early: the
  returned Classifier's ``step`` is then below ``config.num_train_steps``.
  Only states whose every value is finite are saved.

  Returns:
    The trained Classifier (inference mode).
  Raises:
    One of ``USER_ERRORS`` (one line): a bad config, missing data, a
    checkpoint of another model, a diverged loss, another trainer on the
    directory, a failed save.
  """
  info = validate_config(config)
  root = classifier_dir(workdir)
  try:
    os.makedirs(root, exist_ok=True)
  except OSError as e:
    raise ClassifierError(f'Cannot create {root} ({type(e).__name__}: {e.strerror or e}); '
                          'choose a writable --workdir.') from e
  with workdir_lock.WorkdirLock(root), trainer_utils.StopRequest() as stop:
    return _train(config, root, info, stop)


def _saved_config(config: ml_collections.ConfigDict, info) -> ml_collections.ConfigDict:
  """The config as saved with each checkpoint: plus the dataset's attribute names."""
  saved = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
  saved.attribute_names = list(info.attribute_names)
  return saved


def _nonfinite_leaf(state: ClassifierState) -> Optional[str]:
  """The path of the first NaN/inf value of the state, or None."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
      return jax.tree_util.keystr(path)
  return None


def _diverged(s: int, what: str) -> ClassifierError:
  return ClassifierError(f'Non-finite classifier {what} at step {s}; training stopped and the '
                         'last good checkpoint is kept: lower --config.learning_rate.')


def _resume(root: str, fresh: ClassifierState) -> ClassifierState:
  """The newest good checkpoint (corrupt ones moved aside), a legacy one, or ``fresh``."""
  try:
    restored = checkpoint.restore_latest(root, fresh, quarantine=True)
  except checkpoint.CheckpointError as e:
    raise ClassifierError(f'Attribute classifier: {e}') from e
  if restored is not None:
    logging.info('Resumed the classifier from step %d.', restored.step)
    return restored.state
  legacy = _legacy_steps(root)
  if not legacy:
    return fresh
  state = _restore_legacy(root, fresh, legacy[-1])
  logging.info('Resumed the classifier from step %d (a checkpoint without checksum in %s; '
               'new ones go to %s).', legacy[-1], root, checkpoint.checkpoint_dir(root))
  return state


def _train(config, root: str, info, stop: trainer_utils.StopRequest) -> Classifier:
  arch = ClassifierArch.from_config(config)
  lr = float(config.learning_rate)
  fresh = jax.device_get(create_state(arch, lr, jax.random.PRNGKey(config.seed)))
  state = _resume(root, fresh)
  start = s = int(state.step)
  total = int(config.num_train_steps)
  saved_config = _saved_config(config, info)
  eval_split = config.data.get('eval_split') or None
  make = lambda st: Classifier(arch, st.params, st.batch_stats,
                               attribute_names=info.attribute_names, step=int(st.step))
  if start >= total:
    return make(state)
  mngr = checkpoint.manager(root, keep=int(config.get('keep_checkpoints', 2)))
  writer = metric_writer.MetricWriter(root)
  batches = data.batch_iterator(config.data, config.data.train_split,
                                          int(config.batch_size), seed=int(config.seed),
                                          start_step=start)
  in_flight = trainer_utils.InFlight()
  window, saved = [], start
  progress = trainer_utils.Progress(start, total, int(config.batch_size))
  logging.info('Training the classifier (%s) from step %d to %d, batch %d, on %s split %r; '
               'outputs in %s.', arch.labels, start, total, int(config.batch_size), info.name,
               config.data.train_split, root)

  def save(st):
    bad = _nonfinite_leaf(jax.device_get(st))
    if bad is not None:
      raise _diverged(int(st.step), f'value {bad}')
    checkpoint.save(mngr, st, saved_config)

  try:
    while s < total and not stop.requested:
      batch = next(batches)
      state, metrics = train_step(state, batch['image'], batch[arch.label_key], arch=arch,
                                  learning_rate=lr)
      s += 1
      if s == start + 1:  # Rates count from here: compiling is not training.
        jax.block_until_ready(metrics)
        progress.compiled(s, 'classifier step')
      in_flight.add(metrics)
      window.append(metrics)
      if s % config.log_every == 0 or s == total:
        means = {k: float(np.mean(jax.device_get([w[k] for w in window]))) for k in window[0]}
        if not np.isfinite(means['loss']):
          raise _diverged(s, 'loss')
        checkpoint.check_saves(mngr)
        rate, rate_text = progress.window(s)
        text = f"classifier loss={means['loss']:.4g} accuracy={means['accuracy']:.4g} {rate_text}"
        writer.write_scalars(s, {**means, **rate}, text.rstrip())
        window = []
      if eval_split and (s % config.eval_every == 0 or s == total) and not stop.requested:
        n_eval = int(config.get('num_eval_examples', 2000)) or 2 ** 62  # 0: whole split
        result = evaluate(make(state),
                          sampling.dataset_batches(config.data, eval_split, 256, n_eval))
        writer.write_eval(s, {f'eval/{k}': result[k]
                              for k in ('loss', 'accuracy', 'majority_accuracy')})
        logging.info('classifier eval at step %d on %d %r examples: loss %.4f, accuracy '
                     '%.4f (majority baseline %.4f)', s, result['num_examples'], eval_split,
                     result['loss'], result['accuracy'], result['majority_accuracy'])
      if s % config.checkpoint_every == 0 or s == total:
        save(state)
        saved = s
    if stop.requested and s > saved:
      save(state)  # The step that was running when the signal came.
    checkpoint.finish(mngr)
  except BaseException:
    checkpoint.finish(mngr, quiet=True)  # The in-flight save completes or is reported.
    raise
  finally:
    writer.close()
    close = getattr(batches, 'close', None)
    if close:
      close()
  if stop.requested and s > start:
    logging.warning('Classifier preempted (%s): stopped after step %d of %d, checkpoint %d '
                    'saved; rerun to resume.', stop.signal_name, s, total, s)
  elif stop.requested:
    logging.warning('Classifier preempted (%s) before its first step (step %d of %d): nothing '
                    'new to save; rerun to resume.', stop.signal_name, s, total)
  return make(state)


# ----------------------------------------------------------------------------
# Restoring.


def _legacy_steps(root: str) -> list[int]:
  """Steps in the layout before checksums: ``root/<step>/{state,config}``."""
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root)
                if d.isdigit() and os.path.isdir(os.path.join(root, d, 'state')))


def _legacy_config(root: str, step: int) -> dict:
  """The config dict saved with a legacy checkpoint."""
  checkpointer = ocp.Checkpointer(ocp.JsonCheckpointHandler())
  try:
    return checkpointer.restore(epath.Path(root) / str(step) / 'config',
                                args=ocp.args.JsonRestore())
  except Exception as e:  # pylint: disable=broad-except
    raise ClassifierError(f'Attribute classifier: the config of checkpoint {root}/{step} is '
                          f'unreadable ({type(e).__name__}); train again in a fresh '
                          '--workdir.') from e
  finally:
    checkpointer.close()


def _restore_legacy(root: str, template: Any, step: int) -> Any:
  """The state of a legacy checkpoint in ``template``'s structure (read unverified)."""
  options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=False)
  mngr = ocp.CheckpointManager(root, options=options, item_names=('state', 'config'))
  try:
    return checkpoint.restore_state(mngr, template, step)
  except checkpoint.CheckpointError as e:
    raise ClassifierError(f'Attribute classifier: {e}') from e
  finally:
    mngr.close()


def _template(config: ml_collections.ConfigDict):
  arch = ClassifierArch.from_config(config)
  return arch, jax.eval_shape(lambda: create_state(arch, float(config.learning_rate),
                                                   jax.random.PRNGKey(0)))


def restore(workdir: str, step: Optional[int] = None
            ) -> tuple[Classifier, ml_collections.ConfigDict]:
  """(Classifier, its training config) from ``classifier_dir(workdir)``.

  ``step=None`` takes the newest checkpoint that passes its checksum (a
  corrupt newer one is skipped with a warning, never moved: a trainer may be
  running). Raises ClassifierError (one line).
  """
  root = classifier_dir(workdir)
  if not os.path.isdir(root):
    raise ClassifierError(f'No classifier checkpoint in {root}; train one with '
                          f'`python -m experiments.train_attribute_classifier '
                          f'--workdir={workdir}`.')
  steps = []
  if os.path.isdir(checkpoint.checkpoint_dir(root)):
    mngr = checkpoint.manager(root, read_only=True)
    steps = sorted(mngr.all_steps())
    mngr.close()
  legacy = _legacy_steps(root)
  if not steps and legacy and (step is None or step in legacy):
    step = legacy[-1] if step is None else step
    raw = dict(_legacy_config(root, step))
    names = tuple(raw.pop('attribute_names', ()))
    config = ml_collections.ConfigDict(checkpoint.lists_to_tuples(raw))
    arch, template = _template(config)
    state = _restore_legacy(root, template, step)
    return Classifier(arch, state.params, state.batch_stats, attribute_names=names,
                      step=int(state.step)), config
  if not steps or (step is not None and step not in steps):
    raise ClassifierError(f'No classifier checkpoint{"" if step is None else f" for step {step}"} '
                          f'in {root} (available: {steps or legacy}); train one with `python -m '
                          f'experiments.train_attribute_classifier --workdir={workdir}`.')
  try:
    config, step = checkpoint.read_config(root, step)
    names = tuple(config.get('attribute_names', ()))
    if 'attribute_names' in config:
      del config['attribute_names']
    arch, template = _template(config)
    mngr = checkpoint.manager(root, read_only=True)
    try:
      state = checkpoint.restore_state(mngr, template, step)
    finally:
      mngr.close()
  except checkpoint.CheckpointError as e:
    raise ClassifierError(f'Attribute classifier: {e}') from e
  return Classifier(arch, state.params, state.batch_stats, attribute_names=names,
                    step=int(state.step)), config


USER_ERRORS = (ClassifierError, data.DataError, checkpoint.CheckpointError,
               workdir_lock.WorkdirLockedError)
