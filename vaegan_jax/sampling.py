"""Inference tools: samples, reconstructions, interpolations, attribute vectors.

Everything runs the networks in inference mode: BatchNorm uses its running
averages (``train=False``), so the output for one example never depends on the
other examples of the batch, and results do not change with the batch size or
the chunking used to bound memory.

Visual attribute vectors follow Larsen et al. (2016), "Autoencoding beyond
pixels using a learned similarity metric", Sec. 5.2: encode a set of labelled
images (the paper: 10,000 CelebA training images, the 18 attributes of
``PAPER_ATTRIBUTES``), and for each attribute take the mean latent vector of
the images that have it minus the mean latent vector of those that do not.
Adding such a vector to the latent code of an image (``apply_attribute``) and
decoding it adds the attribute (e.g. 'Eyeglasses', 'Smiling').

Typical use (a trained workdir; runs as written)::

  sampler = Sampler.from_workdir('/tmp/vaegan')      # newest good checkpoint
  images, z = sample(sampler, jax.random.key(0), 64, temperature=0.8)
  held = next(iter(dataset_batches(sampler.config.data, 'test', 16, 16)))
  recon, _ = reconstruct(sampler, held['image'])
  frames, path = interpolate(sampler, z[:8], z[8:16], 10)      # (8, 10, H, W, C)

and, on CelebA, the paper's attribute vectors::

  z_ds, attrs = encode_dataset(
      sampler, dataset_batches(sampler.config.data, 'train', 256, 10_000, seed=0),
      10_000)
  names = data.get_source(sampler.config.data, 'train').info.attribute_names
  av = attribute_vectors(z_ds, attrs[:, paper_attribute_indices(names)],
                         names=PAPER_ATTRIBUTES)
  smiling = sampler.decode(apply_attribute(z, av, PAPER_ATTRIBUTES.index('Smiling')))

All randomness is explicit (JAX keys, new-style or raw ``uint32[2]``); the
network calls are jitted once per ``Architecture`` and input chunk shape.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from vaegan_jax import data
from vaegan_jax import models
from vaegan_jax import train_step
from vaegan_jax.runtime import checkpoint

Array = jax.Array

# The 18 CelebA attributes of the paper's Sec. 5.2 / Fig. 6 (CelebA spelling).
PAPER_ATTRIBUTES = (
    "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Bushy_Eyebrows",
    "Eyeglasses", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mustache", "Pale_Skin", "Rosy_Cheeks", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Lipstick", "Young")

DEFAULT_CHUNK_SIZE = 256
# |cos(angle)| above which slerp falls back to linear interpolation: for
# (anti-)parallel vectors sin(angle) -> 0 and the slerp weights blow up.
_SLERP_PARALLEL_COS = 0.9995


# ----------------------------------------------------------------------------
# Loading a trained model: every loader of a trained VAE-GAN comes through here (the
# trainer's resume and the evaluator's choice of steps read checkpoints directly).


def read_config(workdir: str, step: Union[int, str, None] = None) -> tuple[Any, int]:
  """(config, step) saved with checkpoint ``step`` of ``workdir``, no arrays restored.

  ``step=None``: the newest checkpoint whose state passes its checksum, so that
  restoring that step afterwards cannot fail on a corrupt newer one.

  Raises:
    checkpoint.CheckpointError: one line; no checkpoint directory at all is
      checked first, so that a typo is not preceded by Orbax's warnings.
  """
  if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
    raise checkpoint.no_checkpoint(workdir)
  return checkpoint.read_config(workdir, step)


def check_config(config: Any, workdir: str, step: Any) -> models.Architecture:
  """The Architecture of ``config``, after checking that the config is valid here.

  Args:
    config: the training config saved with checkpoint ``step`` of ``workdir``
      (both only name it in the message).
  Raises:
    checkpoint.CheckpointError: one line naming the first problem.
  """
  try:
    arch = models.Architecture.from_config(config.model)
    arch.validate()
    train_step.LossConfig.from_config(config).validate()
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise checkpoint.CheckpointError(
        f"The config saved with checkpoint {step} in {workdir} is not valid here "
        f"({str(e).strip().splitlines()[0]}).") from e
  return arch


def restore_for_inference(workdir: str, step: Union[int, str, None] = None,
                          config: Any = None) -> tuple[train_step.TrainState, Any]:
  """(host TrainState, config) of checkpoint ``step`` of ``workdir``; the saved config
  unless one is given.

  ``step``: an int, 'best', or None/'latest' for the newest usable checkpoint
  (unusable ones are skipped with a warning, never moved); ``state.step`` says
  which one it was.

  Raises:
    checkpoint.CorruptCheckpointError: ``step`` is given and unusable.
    checkpoint.CheckpointError: no (usable) checkpoint, no such step, or another model.
  """
  def template(cfg):
    return jax.eval_shape(lambda: train_step.create_train_state(cfg, jax.random.PRNGKey(0)))
  return checkpoint.restore(workdir, step, template, config)


# ----------------------------------------------------------------------------
# Jitted network calls, the prior, and chunks.


@functools.lru_cache(maxsize=None)
def network_fns(arch: models.Architecture):
  """Jitted inference-mode (encoder, decoder) applies for ``arch``.

  ``encode(variables, x (B, S, S, C), y (B, A) or None) -> (mu, logvar)``, each
  (B, Z); ``decode(variables, z (B, Z), y) -> images (B, S, S, C)``, with
  ``variables = {'params': ..., 'batch_stats': ...}`` of that group.

  Cached per Architecture (hashable and frozen), so every Sampler of the same
  architecture, e.g. one per sampled checkpoint in a training loop, shares the
  compiled executables instead of recompiling; the evaluator builds its
  reconstruction step from them too.
  """
  nets = models.Networks.create(arch)  # axis_name=None: no cross-device BN.

  @jax.jit
  def encode(variables, x, y):
    return nets.encoder.apply(variables, x, y, train=False)

  @jax.jit
  def decode(variables, z, y):
    return nets.decoder.apply(variables, z, y, train=False)

  return encode, decode


def prior_sample(rng: Array, num: int, z_dim: int, temperature: float = 1.0) -> Array:
  """z ~ N(0, temperature^2 I): (num, z_dim) float32, drawn at once from ``rng``.

  The same key gives the same codes whatever the later chunking, so results
  never depend on ``chunk_size``.
  """
  return temperature * jax.random.normal(rng, (int(num), int(z_dim)), jnp.float32)


def in_chunks(fn: Callable[..., Any], chunk_size: int, *inputs: Any,
              always_pad: bool = False) -> Any:
  """fn(*inputs) over row chunks of at most ``chunk_size``; outputs concatenated.

  The last chunk is zero-padded to ``chunk_size`` rows, so a single executable
  serves every chunk. Valid only for row-independent ``fn`` (BatchNorm in
  inference mode): neither the chunk boundaries nor the padding change any
  output row.

  Args:
    fn: takes one chunk of each input; returns a pytree of (rows, ...) arrays.
    chunk_size: rows per call.
    *inputs: arrays with the same N rows, or None (passed through as None).
      numpy inputs are sliced and padded on the host, jax arrays on the device.
    always_pad: pad an input of fewer than ``chunk_size`` rows as well (one
      executable for every N); by default it runs as it is, in one call.
  Returns:
    fn's pytree, each leaf (N, ...); numpy where fn returns numpy.
  """
  n = next(a.shape[0] for a in inputs if a is not None)
  c = int(chunk_size)
  if n <= c and not always_pad:
    return fn(*inputs)
  outs = []
  for start in range(0, n, c):
    part = [None if a is None else a[start:start + c] for a in inputs]
    m = min(c, n - start)
    if m < c:  # Pad to the common chunk shape: no second compilation.
      part = [None if t is None else _xp(t).pad(t, [(0, c - m)] + [(0, 0)] * (t.ndim - 1))
              for t in part]
    outs.append(jax.tree.map(lambda o, m=m: o[:m], fn(*part)))
  return jax.tree.map(lambda *o: _xp(o[0]).concatenate(o), *outs)


def _xp(a: Any):
  """numpy for host arrays, jax.numpy otherwise: chunks stay where their input is."""
  return np if isinstance(a, np.ndarray) else jnp


@jax.jit
def _reparameterize(mu: Array, logvar: Array, rng: Array) -> Array:
  """z = mu + sigma * eps, eps ~ N(0, I) drawn for the whole (B, Z) batch."""
  return mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)


def _as_architecture(config_or_arch: Any) -> models.Architecture:
  if isinstance(config_or_arch, models.Architecture):
    return config_or_arch
  model_cfg = getattr(config_or_arch, "model", config_or_arch)
  return models.Architecture.from_config(model_cfg)


class Sampler:
  """Inference-mode encoder/decoder of one trained model.

  Attributes:
    arch: the models.Architecture.
    variables: ``{group: {'params': ..., 'batch_stats': ...}}`` for the groups
      present ('encoder' is absent for ``kind='gan'``, so ``encode`` raises).
    chunk_size: inputs larger than this are run in chunks of this size (the
      last one zero-padded, so a single executable serves every chunk).
  """

  def __init__(self, arch: Union[models.Architecture, Any], params: Mapping[str, Any],
               batch_stats: Mapping[str, Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Builds a sampler.

    Args:
      arch: an Architecture, or a config with a ``model`` field (or the model
        config itself).
      params: dict keyed by group ('encoder', 'decoder', ...), as
        ``TrainState.params``.
      batch_stats: dict keyed by group, as ``TrainState.batch_stats``.
      chunk_size: maximum batch per network call.
    """
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    self.arch = _as_architecture(arch)
    self.chunk_size = int(chunk_size)
    # Only the inference groups; the discriminator is not needed here. Moved
    # to the device once so repeated calls do not re-transfer host arrays.
    self.variables = {
        g: jax.device_put({"params": params[g], "batch_stats": batch_stats.get(g, {})})
        for g in ("encoder", "decoder") if g in params}
    self._encode_fn, self._decode_fn = network_fns(self.arch)
    self.config = None  # The training config, where known (from_workdir).
    self.step = None

  @classmethod
  def from_state(cls, config: Any, state: Any, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> "Sampler":
    """From a config (or Architecture) and a ``train_step.TrainState``.

    A pmap-replicated state (leading device axis on every leaf, detected by a
    non-scalar ``state.step``) is un-replicated by taking device 0's copy.
    """
    params, batch_stats = state.params, state.batch_stats
    if np.ndim(state.step) > 0:
      params, batch_stats = jax.tree.map(lambda a: a[0], (params, batch_stats))
    return cls(config, params, batch_stats, chunk_size=chunk_size)

  @classmethod
  def from_workdir(cls, workdir: str, step: Union[int, str, None] = None, *,
                   config: Any = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> "Sampler":
    """The sampler of a training workdir's checkpoint ``step`` (default: the newest good one;
    'best': the best by the run's ``config.keep_best`` metric).

    The config saved with the checkpoint builds the networks, unless ``config``
    is given (e.g. the saved one from ``read_config`` with its data paths
    changed; it is checked first, ``check_config``). It is kept as
    ``sampler.config`` (and the step as ``sampler.step``). A corrupt newest
    checkpoint is skipped with a warning; a missing or corrupt explicit step
    raises ``checkpoint.CheckpointError`` (one line).
    """
    if config is not None:
      check_config(config, workdir, step)
    state, config = restore_for_inference(workdir, step, config)
    sampler = cls.from_state(config, state, chunk_size=chunk_size)
    sampler.config, sampler.step = config, int(np.asarray(state.step))
    return sampler

  # --- input checks ---------------------------------------------------------

  @staticmethod
  def _check_range(x: Any) -> None:
    """Images must be floats in [-1, 1]: uint8 or [0, 255] inputs encode to garbage."""
    dtype = np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"Images must be floats in [-1, 1], got {dtype}; convert uint8 with "
                       "x / 127.5 - 1 (or use data.preprocess).")
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
    if lo < -1.01 or hi > 1.01:
      raise ValueError(f"Images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                       "scale [0, 255] with x / 127.5 - 1 and [0, 1] with 2 * x - 1.")

  def _group(self, group: str) -> dict:
    if group not in self.variables:
      raise ValueError(f"This model has no {group} (groups: "
                       f'{sorted(self.variables)}); e.g. kind="gan" cannot encode.')
    return self.variables[group]

  def _attributes(self, y: Any, batch: int) -> Optional[Array]:
    """y as float32 (batch, A); a single (A,) vector is broadcast to the batch."""
    a = self.arch.num_attributes
    if not a:
      if y is not None:
        raise ValueError("This model is unconditional (num_attributes=0): pass y=None.")
      return None
    if y is None:
      raise ValueError(f"This model is conditional: pass y with shape ({batch}, {a}) or ({a},).")
    y = jnp.asarray(y, jnp.float32)
    if y.ndim == 1:
      y = jnp.broadcast_to(y, (batch, y.shape[0]))
    if y.shape != (batch, a):
      raise ValueError(f"y must have shape ({batch}, {a}) or ({a},), got {y.shape}.")
    return y

  # --- public API -----------------------------------------------------------

  def encode_distribution(self, x: Any, y: Any = None) -> tuple[Array, Array]:
    """q(z|x): x (B, H, W, C) in [-1, 1] [, y] -> (mu, logvar), each (B, Z) float32."""
    if np.size(x):
      self._check_range(x)
    x = jnp.asarray(x, jnp.float32)
    a = self.arch
    if x.ndim != 4 or x.shape[1:] != (a.image_size, a.image_size, a.channels):
      raise ValueError(f"x must have shape (B, {a.image_size}, {a.image_size}, "
                       f"{a.channels}), got {x.shape}.")
    return in_chunks(functools.partial(self._encode_fn, self._group("encoder")),
                     self.chunk_size, x, self._attributes(y, x.shape[0]))

  def encode(self, x: Any, y: Any = None, *, use_mean: bool = True,
             rng: Optional[Array] = None) -> Array:
    """Latent codes z (B, Z) float32 of images x (B, H, W, C) in [-1, 1].

    Args:
      x: images; y: (B, A) or (A,) attributes for a conditional model.
      use_mean: return mu (deterministic); else a sample mu + sigma * eps.
      rng: key for eps, required when ``use_mean=False``.
    """
    mu, logvar = self.encode_distribution(x, y)
    if use_mean:
      return mu
    if rng is None:
      raise ValueError("encode(use_mean=False) needs an rng key.")
    return _reparameterize(mu, logvar, rng)

  def decode(self, z: Any, y: Any = None) -> Array:
    """Dec: z (B, Z) [, y (B, A) or (A,)] -> images (B, H, W, C) float32 in [-1, 1]."""
    z = jnp.asarray(z, jnp.float32)
    if z.ndim != 2 or z.shape[1] != self.arch.z_dim:
      raise ValueError(f"z must have shape (B, {self.arch.z_dim}), got {z.shape}.")
    return in_chunks(functools.partial(self._decode_fn, self._group("decoder")),
                     self.chunk_size, z, self._attributes(y, z.shape[0]))


# ----------------------------------------------------------------------------
# Sampling, reconstruction, interpolation.


def sample(sampler: Sampler, rng: Array, num: int, *, temperature: float = 1.0,
           y: Any = None) -> tuple[Array, Array]:
  """Decodes ``num`` prior samples z ~ N(0, temperature^2 I).

  Returns:
    (images (num, H, W, C) float32 in [-1, 1], z (num, Z)).
  """
  if num < 0 or not temperature >= 0:
    raise ValueError(f"Need num >= 0 and temperature >= 0, got {num}, {temperature}.")
  z = prior_sample(rng, num, sampler.arch.z_dim, temperature)
  return sampler.decode(z, y), z


def reconstruct(sampler: Sampler, x: Any, *, rng: Optional[Array] = None,
                use_mean: bool = True, y: Any = None) -> tuple[Array, Array]:
  """x~ = Dec(Enc(x)): returns (recon (B, H, W, C) in [-1, 1], z (B, Z)).

  ``use_mean=True`` decodes mu (deterministic); otherwise a sample
  z = mu + sigma * eps drawn with ``rng``.
  """
  z = sampler.encode(x, y, use_mean=use_mean, rng=rng)
  return sampler.decode(z, y), z


@functools.partial(jax.jit, static_argnames=("steps", "method"))
def interpolation_path(z0: Array, z1: Array, steps: int,
                       method: str = "slerp") -> Array:
  """Points from z0 to z1: (P, Z) x2 -> (P, steps, Z), endpoints exact.

  ``'linear'``: (1 - t) z0 + t z1. ``'slerp'``: the standard spherical
  interpolation (Shoemake 1985; White 2016, "Sampling generative networks")
  sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1, with w the angle between
  z0 and z1. Unlike the linear path, which cuts through the low-density
  interior of the Gaussian prior (its midpoint has norm ~|z|/sqrt(2) for
  orthogonal codes), it stays near the shell where prior samples live. Falls
  back to linear per pair when z0 and z1 are (nearly) parallel or
  anti-parallel (|cos w| > 0.9995) or one of them is 0, where sin(w) ~ 0.
  t = linspace(0, 1, steps).
  """
  if method not in ("slerp", "linear"):
    raise ValueError(f"method must be 'slerp' or 'linear', got {method!r}.")
  t = jnp.linspace(0.0, 1.0, steps, dtype=jnp.float32)[None, :]  # (1, T)
  w0, w1 = 1.0 - t, t
  if method == "slerp":
    n0 = jnp.linalg.norm(z0, axis=-1)
    n1 = jnp.linalg.norm(z1, axis=-1)
    tiny = jnp.finfo(jnp.float32).tiny
    cos = jnp.sum(z0 * z1, axis=-1) / jnp.maximum(n0 * n1, tiny)
    cos = jnp.clip(cos, -1.0, 1.0)
    omega = jnp.arccos(cos)[:, None]  # (P, 1)
    degenerate = ((jnp.abs(cos) > _SLERP_PARALLEL_COS) | (n0 == 0) | (n1 == 0))[:, None]
    sin_omega = jnp.where(degenerate, 1.0, jnp.sin(omega))
    w0 = jnp.where(degenerate, w0, jnp.sin((1.0 - t) * omega) / sin_omega)
    w1 = jnp.where(degenerate, w1, jnp.sin(t * omega) / sin_omega)
  path = w0[..., None] * z0[:, None, :] + w1[..., None] * z1[:, None, :]
  # Pin the endpoints bit-exactly (sin(w)/sin(w) need not round to 1).
  path = path.at[:, 0].set(z0)
  if steps > 1:
    path = path.at[:, -1].set(z1)
  return path


def interpolate(sampler: Sampler, z0: Any, z1: Any, steps: int, *,
                method: str = "slerp", y: Any = None) -> tuple[Array, Array]:
  """Decodes ``steps`` points on the path from each z0 to its z1.

  Args:
    z0, z1: (P, Z) pairs of codes (a single (Z,) code is treated as P=1).
    steps: frames per path (>= 1), including both endpoints.
    method: 'slerp' (default) or 'linear'; see ``interpolation_path``.
    y: for a conditional model, (A,) for all frames or (P, A) per path.
  Returns:
    (images (P, steps, H, W, C) in [-1, 1], path z (P, steps, Z)).
  """
  z0 = jnp.atleast_2d(jnp.asarray(z0, jnp.float32))
  z1 = jnp.atleast_2d(jnp.asarray(z1, jnp.float32))
  if z0.shape != z1.shape or z0.shape[-1] != sampler.arch.z_dim:
    raise ValueError(f"z0 and z1 must both be (P, {sampler.arch.z_dim}), got "
                     f"{z0.shape} and {z1.shape}.")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  p, zd = z0.shape
  path = interpolation_path(z0, z1, int(steps), method)
  if y is not None:
    y = jnp.asarray(y, jnp.float32)
    if y.ndim == 2:  # (P, A): one attribute vector per path, for all its frames.
      y = jnp.repeat(y, steps, axis=0)
  images = sampler.decode(path.reshape(p * steps, zd), y)
  return images.reshape((p, steps) + images.shape[1:]), path


# ----------------------------------------------------------------------------
# Visual attribute vectors (paper Sec. 5.2).


class AttributeVectors(NamedTuple):
  """Result of ``attribute_vectors``.

  vectors: (A, Z) float32; row a = mean z of examples with attribute a minus
    mean z of those without; 0 where ``valid[a]`` is False.
  valid: (A,) bool; False when an attribute has no positive or no negative
    example, so its mean difference is undefined.
  num_positive, num_negative: (A,) int64 example counts.
  """
  vectors: Array
  valid: np.ndarray
  num_positive: np.ndarray
  num_negative: np.ndarray


@jax.jit
def _attribute_stats(z: Array, attributes: Array):
  pos = (attributes > 0.5).astype(jnp.float32)  # (N, A); {0,1} or {-1,1} labels.
  neg = 1.0 - pos
  # Centre first: the mean difference is shift-invariant, and the float32 sums
  # of 10k codes lose less precision around 0 than around a large offset.
  zc = z - jnp.mean(z, axis=0, keepdims=True)
  hi = jax.lax.Precision.HIGHEST  # No TF32/bf16 passes on accelerators.
  n_pos, n_neg = jnp.sum(pos, axis=0), jnp.sum(neg, axis=0)
  mean_pos = jnp.matmul(pos.T, zc, precision=hi) / jnp.maximum(n_pos, 1.0)[:, None]
  mean_neg = jnp.matmul(neg.T, zc, precision=hi) / jnp.maximum(n_neg, 1.0)[:, None]
  valid = (n_pos > 0) & (n_neg > 0)
  vectors = jnp.where(valid[:, None], mean_pos - mean_neg, 0.0)
  return vectors, valid, n_pos, n_neg


def attribute_vectors(z: Any, attributes: Any,
                      names: Optional[Sequence[str]] = None) -> AttributeVectors:
  """Per-attribute mean-difference vectors in latent space (paper Sec. 5.2).

  Args:
    z: (N, Z) latent codes (e.g. from ``encode_dataset``).
    attributes: (N, A) binary labels; an example has attribute a when
      ``attributes[:, a] > 0.5`` (so {0, 1} and CelebA's {-1, 1} both work).
    names: optional A names, used in the warning.
  Returns:
    AttributeVectors; an attribute with no positive or no negative example
    gets a zero vector, ``valid=False`` and a RuntimeWarning (no NaNs).
  """
  z = jnp.asarray(z, jnp.float32)
  attributes = jnp.asarray(attributes, jnp.float32)
  if attributes.ndim == 1:
    attributes = attributes[:, None]
  if z.ndim != 2 or attributes.ndim != 2 or z.shape[0] != attributes.shape[0]:
    raise ValueError(f"Need z (N, Z) and attributes (N, A), got {z.shape} and "
                     f"{attributes.shape}.")
  if names is not None and len(names) != attributes.shape[1]:
    raise ValueError(f"{len(names)} names for {attributes.shape[1]} attributes.")
  vectors, valid, n_pos, n_neg = _attribute_stats(z, attributes)
  valid = np.asarray(valid)
  n_pos, n_neg = np.asarray(n_pos).astype(np.int64), np.asarray(n_neg).astype(np.int64)
  if not valid.all():
    bad = [f"{names[i] if names is not None else i} ({n_pos[i]}+/{n_neg[i]}-)"
           for i in np.flatnonzero(~valid)]
    warnings.warn("Attribute vectors set to 0 for attributes lacking positive or "
                  f'negative examples: {", ".join(bad)}.', RuntimeWarning, stacklevel=2)
  return AttributeVectors(vectors, valid, n_pos, n_neg)


@jax.jit
def _apply_attribute(z, vectors, indices, scale):
  return z + jnp.sum(scale[:, None] * vectors[indices], axis=0)


def apply_attribute(z: Any, vectors: Union[AttributeVectors, Any],
                    index_or_indices: Union[int, Sequence[int]],
                    scale: Union[float, Sequence[float]] = 1.0) -> Array:
  """z + sum_k scale_k * vectors[index_k].

  Args:
    z: (..., Z) codes, e.g. (B, Z) or (Z,).
    vectors: (A, Z) array or an AttributeVectors.
    index_or_indices: one attribute index or a sequence of K of them.
    scale: scalar for all, or K per-attribute scales (negative removes the
      attribute).
  Returns:
    Array with the shape of z.
  """
  if isinstance(vectors, AttributeVectors):
    vectors = vectors.vectors
  vectors = jnp.asarray(vectors, jnp.float32)
  indices = np.atleast_1d(np.asarray(index_or_indices, np.int64))
  if indices.ndim != 1 or ((indices < 0) | (indices >= vectors.shape[0])).any():
    raise ValueError(f"Attribute index out of range [0, {vectors.shape[0]}): "
                     f"{index_or_indices}.")
  scale = np.broadcast_to(np.asarray(scale, np.float32), indices.shape)
  return _apply_attribute(jnp.asarray(z, jnp.float32), vectors,
                          jnp.asarray(indices, jnp.int32), jnp.asarray(scale))


def paper_attribute_indices(attribute_names: Sequence[str]) -> tuple[int, ...]:
  """Columns of ``PAPER_ATTRIBUTES`` in a dataset's ``attribute_names``.

  E.g. ``attrs[:, paper_attribute_indices(source.info.attribute_names)]``
  selects the paper's 18 attributes, in ``PAPER_ATTRIBUTES`` order, from
  CelebA's 40.
  """
  names = list(attribute_names)
  missing = [a for a in PAPER_ATTRIBUTES if a not in names]
  if missing:
    raise ValueError(f"Attributes {missing} not among the dataset attributes {names}.")
  return tuple(names.index(a) for a in PAPER_ATTRIBUTES)


def encode_dataset(sampler: Sampler, batches: Iterable[Any], max_examples: int, *,
                   use_mean: bool = True, rng: Optional[Array] = None,
                   attribute_key: str = "attributes"
                   ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Encodes up to ``max_examples`` images from an iterable of batches.

  Stops as soon as ``max_examples`` are encoded, without pulling another
  batch, so an infinite ``data.batch_iterator`` is fine (but see
  ``dataset_batches`` for a finite pass without repeats).

  Args:
    sampler: a Sampler (anything with ``.encode(x, y, use_mean=, rng=)`` and
      ``.arch.num_attributes`` works).
    batches: dicts with 'image' (b, H, W, C) in [-1, 1] and optionally
      ``attribute_key`` (b, A), or plain image arrays. For a conditional
      model, the batch attributes are also its y.
    max_examples: how many examples to encode (the paper: 10,000).
    use_mean: encode to mu (default) or to a sample (needs ``rng``; batch i
      uses ``fold_in(rng, i)``).
  Returns:
    (z (n, Z) float32, attributes (n, A) float32 or None if the batches have
    none), numpy arrays on the host, n = min(max_examples, examples seen).
  """
  if max_examples < 1:
    raise ValueError(f"max_examples must be >= 1, got {max_examples}.")
  if not use_mean and rng is None:
    raise ValueError("encode_dataset(use_mean=False) needs an rng key.")
  conditional = bool(getattr(getattr(sampler, "arch", None), "num_attributes", 0))
  zs, attrs, n = [], [], 0
  for i, batch in enumerate(batches):
    if isinstance(batch, Mapping):
      x, a = batch["image"], batch.get(attribute_key)
    else:
      x, a = batch, None
    take = min(len(x), max_examples - n)
    x = x[:take]
    a = None if a is None else np.asarray(a, np.float32)[:take]
    if zs and (a is None) != (not attrs):
      raise ValueError(f"Some batches have {attribute_key!r} and some do not.")
    key = None if use_mean else jax.random.fold_in(rng, i)
    z = sampler.encode(x, a if conditional else None, use_mean=use_mean, rng=key)
    zs.append(np.asarray(z, np.float32))
    if a is not None:
      attrs.append(a)
    n += take
    if n >= max_examples:
      break
  if not zs:
    raise ValueError("encode_dataset got no batches.")
  return np.concatenate(zs), (np.concatenate(attrs) if attrs else None)


def dataset_batches(data_config: Any, split: str, batch_size: int, max_examples: int,
                    *, seed: Optional[int] = None) -> Iterable[dict[str, np.ndarray]]:
  """Finite, deterministic batches for ``encode_dataset``: no repeats, no flips.

  Yields preprocessed batches ('image' float32 (b, S, S, C) in [-1, 1], plus
  'attributes'/'label' where the dataset has them) covering
  min(max_examples, split size) distinct examples: the first ones in split
  order, or, with ``seed``, a uniformly random subset (paper Sec. 5.2 uses
  10,000 training images).
  """
  source = data.get_source(data_config, split)
  n = min(int(max_examples), len(source))
  if seed is None:
    order = np.arange(n)
  else:
    order = np.random.default_rng(seed).permutation(len(source))[:n]
  for start in range(0, n, int(batch_size)):
    idx = order[start:start + int(batch_size)]
    # flip=all False: attribute vectors should see the images as they are,
    # whatever data.hflip says for training.
    yield data.preprocess(source.get(idx), data_config,
                                    flip=np.zeros(len(idx), bool))
