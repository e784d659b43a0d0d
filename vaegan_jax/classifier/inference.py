"""A trained classifier in inference mode, and what is computed with it.

``Classifier`` holds the parameters and BN running averages on the device and
applies the network in fixed-size chunks; ``predict_dataset``,
``predict_conditional_samples`` and ``evaluate`` run it over data or over the
images of a conditional generator.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaegan_jax import sampling
from vaegan_jax.classifier.model import AttributeClassifier
from vaegan_jax.classifier.model import ClassifierArch
from vaegan_jax.classifier.model import ClassifierError

Array = jax.Array


@functools.lru_cache(maxsize=None)
def _apply_fn(arch: ClassifierArch):
  model = AttributeClassifier(arch)

  @jax.jit
  def apply(params, batch_stats, x):
    return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False,
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

    Runs in chunks of ``chunk_size`` (``sampling.in_chunks``: the last one
    zero-padded, so one executable serves every chunk; a batch of at most
    ``chunk_size`` runs as it is, in one call).
    """
    x = jnp.asarray(images, jnp.float32)
    a = self.arch
    if x.ndim != 4 or x.shape[1:] != (a.image_size, a.image_size, a.channels):
      raise ValueError(f"The classifier takes (B, {a.image_size}, {a.image_size}, "
                       f"{a.channels}) images, got {x.shape}.")
    if not x.shape[0]:
      return (np.zeros((0, a.num_outputs), np.float32), np.zeros((0, a.dense), np.float32))
    # np.array: writable host copies, also where the batch is a single chunk.
    return sampling.in_chunks(lambda p: jax.tree.map(np.array, self._apply(*self._variables, p)),
                              self.chunk_size, x)

  def logits(self, images: Any) -> np.ndarray:
    """images (B, S, S, C) in [-1, 1] -> logits (B, K) float32 (host)."""
    return self.logits_and_features(images)[0]

  def features(self, images: Any) -> np.ndarray:
    """images (B, S, S, C) in [-1, 1] -> penultimate features (B, dense) float32."""
    return self.logits_and_features(images)[1]

  def probs_from_logits(self, logits: Any) -> np.ndarray:
    """Sigmoid (attributes) or softmax (classes) of logits (B, K)."""
    fn = jax.nn.softmax if self.arch.labels == "classes" else jax.nn.sigmoid
    return np.asarray(fn(jnp.asarray(logits, jnp.float32)), np.float32)

  def predict_probs(self, images: Any) -> np.ndarray:
    """images (B, S, S, C) in [-1, 1] -> probabilities (B, K) float32 in [0, 1]:
    P(attribute) per attribute, or P(class) summing to 1 with labels='classes'."""
    return self.probs_from_logits(self.logits(images))


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
      raise ClassifierError(f"The data have no {key!r}: use a dataset with "
                            + ("attributes (e.g. data.name=celeb_a)." if key == "attributes"
                               else "class labels (digits, mnist, cifar10)."))
    ys.append(np.asarray(batch[key], np.int32 if key == "label" else np.float32))
    ps.append(classifier.predict_probs(batch["image"]))
  if not ys:
    raise ClassifierError("No examples to classify.")
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
  z = sampling.prior_sample(rng, n, sampler.arch.z_dim, temperature)
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
  if classifier.arch.labels == "classes":
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
              num_examples=int(len(y)))
