"""The classifier network, its training state and its one jitted training step.

The classifier is the discriminator's conv stack with K outputs:

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
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vaegan_jax import layers
from vaegan_jax.runtime.errors import UserError

Array = jax.Array


class ClassifierError(UserError, ValueError):
  """A classifier config, data or checkpoint that can't work (one-line message)."""


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
  conv_impl: str = "auto"  # see layers.py
  labels: str = "attributes"  # 'attributes' (multi-label) | 'classes' (one label)
  num_classes: int = 0  # outputs when labels='classes'

  @property
  def num_outputs(self) -> int:
    return self.num_classes if self.labels == "classes" else self.num_attributes

  @property
  def label_key(self) -> str:
    """The batch key of the targets: 'attributes' (B, A) or 'label' (B,)."""
    return "label" if self.labels == "classes" else "attributes"

  @classmethod
  def from_config(cls, config) -> "ClassifierArch":
    """From a classifier config (``config.model`` + ``config.data`` sizes)."""
    m = dict(config.model)
    names = {f.name for f in dataclasses.fields(cls)} - {"image_size", "channels"}
    unknown = sorted(set(m) - names)
    if unknown:
      raise ClassifierError(f"Unknown classifier model field(s) {unknown}; valid: "
                            f"{sorted(names)}.")
    if "widths" in m:
      m["widths"] = tuple(int(w) for w in m["widths"])
    return cls(image_size=int(config.data.image_size),
               channels=int(config.data.channels), **m)

  def validate(self) -> None:
    n = len(self.widths)
    if n < 1 or self.image_size % (2 ** n):
      raise ClassifierError(f"image_size={self.image_size} must be divisible by "
                            f"2**len(model.widths)={2 ** n}.")
    if self.labels not in ("attributes", "classes"):
      raise ClassifierError(f"model.labels must be 'attributes' or 'classes', got "
                            f"{self.labels!r}.")
    if self.num_outputs < 1:
      field = "num_classes" if self.labels == "classes" else "num_attributes"
      raise ClassifierError(f"model.{field} must be >= 1, got {self.num_outputs}.")
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
                    name="conv0")(x.astype(jnp.float32))
    h = nn.relu(h)
    for i, w in enumerate(a.widths, start=1):
      h = layers.Conv(w, strides=2, use_bias=False, impl=a.conv_impl, name=f"conv{i}")(h)
      h = nn.relu(bn(name=f"bn{i}")(h))
    h = h.reshape(h.shape[0], -1)
    h = nn.Dense(a.dense, use_bias=False, name="dense")(h)
    h = nn.relu(bn(name="bn_dense")(h))
    logits = nn.Dense(a.num_outputs, name="logits")(h).astype(jnp.float32)
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
  if arch.labels == "classes":
    labels = y.astype(jnp.int32)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return loss, jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return bce_loss(logits, y), jnp.mean(((logits > 0) == (y > 0.5)).astype(jnp.float32))


def create_state(arch: ClassifierArch, learning_rate: float, rng: Array) -> ClassifierState:
  """Freshly initialised parameters and optimizer state."""
  model = AttributeClassifier(arch)
  x = jnp.zeros((1, arch.image_size, arch.image_size, arch.channels), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(rng, x)
  params = variables["params"]
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                         batch_stats=variables["batch_stats"],
                         opt_state=_optimizer(learning_rate).init(params))


def state_template(config: ml_collections.ConfigDict
                   ) -> tuple[ClassifierArch, ClassifierState]:
  """(arch, the state's shapes and dtypes) for a classifier config: a restore target."""
  arch = ClassifierArch.from_config(config)
  return arch, jax.eval_shape(lambda: create_state(arch, float(config.learning_rate),
                                                   jax.random.PRNGKey(0)))


@functools.lru_cache(maxsize=None)
def _train_step_fn(arch: ClassifierArch, learning_rate: float):
  """Jitted (state, x (B,S,S,C), y) -> (state, {'loss', 'accuracy'})."""
  model = AttributeClassifier(arch)
  tx = _optimizer(learning_rate)

  def loss_fn(params, batch_stats, x, y):
    logits, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                   train=True, mutable=["batch_stats"])
    loss, acc = _loss_and_accuracy(arch, logits, y)
    return loss, (acc, new_vars["batch_stats"])

  @jax.jit
  def step(state: ClassifierState, x: Array, y: Array):
    (loss, (acc, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, x, y)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=stats, opt_state=opt_state)
    return new, {"loss": loss, "accuracy": acc}

  return step


def train_step(state: ClassifierState, x: Any, y: Any, *, arch: ClassifierArch,
               learning_rate: float) -> tuple[ClassifierState, dict[str, Array]]:
  """One Adam step on images x (B, S, S, C) vs targets y.

  y is (B, A) in {0, 1} for ``labels='attributes'`` (sigmoid BCE) or (B,)
  integer classes for ``labels='classes'`` (softmax cross-entropy).
  """
  y = jnp.asarray(y, jnp.int32 if arch.labels == "classes" else jnp.float32)
  return _train_step_fn(arch, float(learning_rate))(state, jnp.asarray(x, jnp.float32), y)
