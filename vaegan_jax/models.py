"""The three networks of VAE-GAN (Larsen et al., ICML 2016, Table/appendix).

All convs are 5x5; "down" convs have stride 2 with a symmetric pad of 2, "up"
convs are stride-2 transposed convs that exactly double H and W. Layers that
are followed by BN have no bias. Shapes below are for the paper's 64x64 model
(``Architecture()``); ``Architecture.small32`` is the authors' 32x32 variant.

Encoder  x (B, 64, 64, 3)
  conv 64 down, BN, ReLU -> conv 128 down, BN, ReLU -> conv 256 down, BN, ReLU
  -> flatten (B, 8*8*256) -> dense 2048, BN, ReLU
  -> mu (B, 128), logvar (B, 128)         [two dense heads with bias]
Decoder  z (B, 128)
  dense 8*8*256, BN, ReLU -> reshape (B, 8, 8, 256)
  -> convT 256 up, BN, ReLU -> convT 128 up, BN, ReLU -> convT 32 up, BN, ReLU
  -> conv 3 (bias), tanh -> x (B, 64, 64, 3) in [-1, 1]
Discriminator  x (B, 64, 64, 3)
  conv 32 (stride 1, bias), ReLU -> conv 128 down, BN, ReLU
  -> conv 256 down, BN, ReLU -> conv 256 down = **Dis_l** (B, 8, 8, 256), BN, ReLU
  -> dense 512, BN, ReLU -> dense 1 (bias): the logit (B,)

Dis_l is the 4th conv's output *before* its BN and ReLU (paper Sec. 2.2).

Paper vs authors' code (andersbll/autoencoding_beyond_pixels), defaults
follow the paper and the code's choices are options:
  * encoder dense width: paper 2048 (``enc_dense=2048``), code 1024;
  * BN momentum / eps: unspecified in the paper -> Flax-style 0.99 / 1e-5;
    code uses momentum 0.9, eps 1e-6 (conv blocks) and 1e-5 (dense blocks);
  * init: unspecified in the paper -> LeCun normal; code uses uniform
    +-1/sqrt(3 fan_in) (``init='authors'``).

Precision (``dtype``, tests/bf16_test.py): parameters are float32 always.
With ``dtype='bfloat16'`` the convs and the hidden dense layers take bf16
inputs and kernels (float32 accumulation) and give bf16 activations, so their
cotangents are bf16 too; float32 stay BN (statistics, normalisation, its
backward; ``_bn``), the bias adds (``layers._add_bias``), the heads (mu,
logvar, Dis's logit: small; the losses read them directly, and their bias
gradients, sums over the batch, would be bf16 sums) and every output (mu,
logvar, x~ after its tanh, Dis_l, the logit).

Conditional models (``num_attributes > 0``, paper Sec. 5.3): the attribute
vector y (B, A) is tiled spatially and appended to the input image of Enc and
Dis, appended to z for Dec, and appended to the dense inputs of Enc and Dis,
as in the authors' early code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegan_jax import layers

Array = jax.Array

HEADS = ("mu_head", "logvar_head", "logit_head")  # excluded from weight decay


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Hyper-parameters of the three networks (hashable, static under jit)."""
  image_size: int = 64
  channels: int = 3
  z_dim: int = 128
  enc_widths: tuple[int, ...] = (64, 128, 256)
  enc_dense: int = 2048
  dec_dense_channels: int = 256
  dec_widths: tuple[int, ...] = (256, 128, 32)
  dis_first: int = 32
  dis_widths: tuple[int, ...] = (128, 256, 256)
  dis_dense: int = 512
  num_attributes: int = 0
  bn_momentum: float = 0.99
  bn_eps_conv: float = 1e-5
  bn_eps_dense: float = 1e-5
  init: str = "default"  # 'default' (LeCun normal) | 'authors'
  conv_impl: str = "auto"  # 'auto' | 'xla' | 'fast', see layers.py
  dtype: str = "float32"  # computation dtype: 'float32' | 'bfloat16'

  @classmethod
  def small32(cls, channels: int = 3, **kw) -> "Architecture":
    """The authors' 32x32 (CIFAR) variant: z=256, dec 192/128/32, dis 128/192/256."""
    fields = dict(image_size=32, channels=channels, z_dim=256,
                  dec_widths=(192, 128, 32), dis_widths=(128, 192, 256))
    return cls(**{**fields, **kw})

  @classmethod
  def from_config(cls, cfg) -> "Architecture":
    """From a ConfigDict/dict with (a subset of) these fields."""
    cfg = dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - names)
    if unknown:
      raise ValueError(f"Unknown model config field(s) {unknown}; valid: {sorted(names)}.")
    for k in ("enc_widths", "dec_widths", "dis_widths"):
      if k in cfg:
        cfg[k] = tuple(int(v) for v in cfg[k])
    return cls(**cfg)

  def validate(self) -> None:
    """Raises ValueError (one line naming the fix) for impossible geometry."""
    for name, n in (("enc_widths", len(self.enc_widths)),
                    ("dec_widths", len(self.dec_widths)),
                    ("dis_widths", len(self.dis_widths))):
      if n < 1 or self.image_size % (2 ** n):
        raise ValueError(
            f"image_size={self.image_size} must be divisible by 2**len({name})="
            f"{2 ** n}; use e.g. --config.model.image_size={64 if n == 3 else 2 ** (n + 3)}.")
    for name in ("z_dim", "enc_dense", "dec_dense_channels", "dis_first", "dis_dense"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}; e.g. "
                         f"--config.model.{name}={16 if name == 'z_dim' else 64}.")
    for name in ("enc_widths", "dec_widths", "dis_widths"):
      if any(int(w) <= 0 for w in getattr(self, name)):
        raise ValueError(f"model.{name} must all be positive, got {getattr(self, name)}.")
    if self.channels not in (1, 3):
      raise ValueError(f"model.channels must be 1 or 3, got {self.channels}.")
    if self.init not in ("default", "authors"):
      raise ValueError(f"model.init must be 'default' or 'authors', got {self.init!r}.")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}.")
    layers.resolve_impl(self.conv_impl)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def dis_l_shape(self) -> tuple[int, int, int]:
    s = self.image_size // 2 ** len(self.dis_widths)
    return (s, s, self.dis_widths[-1])


def _kinit(arch: Architecture, transposed: bool = False):
  if arch.init == "authors":
    return layers.authors_init(transposed)
  return nn.initializers.lecun_normal()


def _bn(arch: Architecture, train: bool, axis_name: Optional[str], eps: float,
        name: Optional[str] = None):
  """BatchNorm whose statistics, normalisation and backward pass are float32.

  Returns ``h -> BN(h)`` in the compute dtype. Under ``dtype='bfloat16'``:
  scale/bias are float32 parameters, the running mean/var are stored and the
  batch mean/var computed in float32 (``force_float32_reductions``, pinned
  here), and ``(h - mean) * scale / std + bias`` is evaluated in float32 and
  rounded to bf16 once. The input is upcast here, exactly, before the module
  sees it: Flax uses ``h`` twice (in the statistics and in ``h - mean``), and
  with a bf16 ``h`` each use's cotangent was rounded to bf16 before the two
  were summed. The two nearly cancel where the incoming gradient has a large
  mean (BN's backward subtracts it): for one of mean 10 and std 1, the input
  gradient was 2.6 % off the float64 one, 15x bf16's 0.17 % rounding error,
  which it is now (tests/bf16_test.py). float32 models are unchanged.
  """
  bn = nn.BatchNorm(use_running_average=not train, momentum=arch.bn_momentum,
                    epsilon=eps, axis_name=axis_name if train else None,
                    dtype=arch.compute_dtype, param_dtype=jnp.float32,
                    force_float32_reductions=True, name=name)
  return lambda h: bn(h.astype(jnp.promote_types(h.dtype, jnp.float32)))


def _tile(y: Array, x: Array) -> Array:
  """(B, A) -> (B, H, W, A) to append to feature maps x (B, H, W, C)."""
  return jnp.broadcast_to(y[:, None, None, :].astype(x.dtype),
                          x.shape[:3] + (y.shape[-1],))


class Encoder(nn.Module):
  """q(z|x): x (B, H, W, C) [, y (B, A)] -> mu, logvar, each (B, z_dim) float32."""
  arch: Architecture
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, y: Optional[Array] = None, *, train: bool):
    a = self.arch
    h = x.astype(a.compute_dtype)
    if a.num_attributes:
      h = jnp.concatenate([h, _tile(y, h)], axis=-1)
    for i, w in enumerate(a.enc_widths):
      h = layers.Conv(w, strides=2, use_bias=False, impl=a.conv_impl, dtype=a.compute_dtype,
                      kernel_init=_kinit(a), name=f"conv{i}")(h)
      h = nn.relu(_bn(a, train, self.axis_name, a.bn_eps_conv, f"bn{i}")(h))
    h = h.reshape(h.shape[0], -1)
    if a.num_attributes:
      h = jnp.concatenate([h, y.astype(h.dtype)], axis=-1)
    h = nn.Dense(a.enc_dense, use_bias=False, dtype=a.compute_dtype,
                 kernel_init=_kinit(a), name="dense")(h)
    h = nn.relu(_bn(a, train, self.axis_name, a.bn_eps_dense, "bn_dense")(h))
    # The heads run in float32 (bf16 models too; the module docstring).
    mu = nn.Dense(a.z_dim, dtype=jnp.float32, kernel_init=_kinit(a), name="mu_head")(h)
    logvar = nn.Dense(a.z_dim, dtype=jnp.float32, kernel_init=_kinit(a),
                      name="logvar_head")(h)
    return mu.astype(jnp.float32), logvar.astype(jnp.float32)


class Decoder(nn.Module):
  """Dec: z (B, z_dim) [, y (B, A)] -> x (B, H, W, C) float32 in [-1, 1]."""
  arch: Architecture
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, z: Array, y: Optional[Array] = None, *, train: bool):
    a = self.arch
    h = z.astype(a.compute_dtype)
    if a.num_attributes:
      h = jnp.concatenate([h, y.astype(h.dtype)], axis=-1)
    s = a.image_size // 2 ** len(a.dec_widths)
    h = nn.Dense(s * s * a.dec_dense_channels, use_bias=False, dtype=a.compute_dtype,
                 kernel_init=_kinit(a), name="dense")(h)
    h = nn.relu(_bn(a, train, self.axis_name, a.bn_eps_dense, "bn_dense")(h))
    h = h.reshape(h.shape[0], s, s, a.dec_dense_channels)
    for i, w in enumerate(a.dec_widths):
      h = layers.ConvTranspose(w, use_bias=False, impl=a.conv_impl, dtype=a.compute_dtype,
                               kernel_init=_kinit(a, transposed=True), name=f"convT{i}")(h)
      h = nn.relu(_bn(a, train, self.axis_name, a.bn_eps_conv, f"bn{i}")(h))
    h = layers.Conv(a.channels, strides=1, use_bias=True, impl=a.conv_impl,
                    dtype=a.compute_dtype, kernel_init=_kinit(a), name="out_conv")(h)
    return jnp.tanh(h.astype(jnp.float32))


class Discriminator(nn.Module):
  """Dis: x (B, H, W, C) [, y] -> (logit (B,), Dis_l (B, h, w, c)), both float32.

  With ``features_only=True`` it stops at Dis_l and returns it alone, so the
  L_llike path does not pay for (or update BN statistics of) the layers above.
  """
  arch: Architecture
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, y: Optional[Array] = None, *, train: bool,
               features_only: bool = False):
    a = self.arch
    h = x.astype(a.compute_dtype)
    if a.num_attributes:
      h = jnp.concatenate([h, _tile(y, h)], axis=-1)
    h = layers.Conv(a.dis_first, strides=1, use_bias=True, impl=a.conv_impl,
                    dtype=a.compute_dtype, kernel_init=_kinit(a), name="conv0")(h)
    h = nn.relu(h)
    n = len(a.dis_widths)
    dis_l = None
    for i, w in enumerate(a.dis_widths, start=1):
      h = layers.Conv(w, strides=2, use_bias=False, impl=a.conv_impl, dtype=a.compute_dtype,
                      kernel_init=_kinit(a), name=f"conv{i}")(h)
      if i == n:
        dis_l = h.astype(jnp.float32)
        if features_only:
          return dis_l
      h = nn.relu(_bn(a, train, self.axis_name, a.bn_eps_conv, f"bn{i}")(h))
    h = h.reshape(h.shape[0], -1)
    if a.num_attributes:
      h = jnp.concatenate([h, y.astype(h.dtype)], axis=-1)
    h = nn.Dense(a.dis_dense, use_bias=False, dtype=a.compute_dtype,
                 kernel_init=_kinit(a), name="dense")(h)
    h = nn.relu(_bn(a, train, self.axis_name, a.bn_eps_dense, "bn_dense")(h))
    logit = nn.Dense(1, dtype=jnp.float32, kernel_init=_kinit(a), name="logit_head")(h)
    return logit[:, 0].astype(jnp.float32), dis_l


@dataclasses.dataclass(frozen=True)
class Networks:
  """The three modules of one model, sharing one Architecture."""
  encoder: Encoder
  decoder: Decoder
  discriminator: Discriminator

  @classmethod
  def create(cls, arch: Architecture, axis_name: Optional[str] = None) -> "Networks":
    return cls(Encoder(arch, axis_name), Decoder(arch, axis_name),
               Discriminator(arch, axis_name))


def init_variables(arch: Architecture, rng: Array, groups: tuple[str, ...]) -> dict[str, Any]:
  """Initial {'params', 'batch_stats'} for each group in ``groups``.

  Returns ``{group: {'params': ..., 'batch_stats': ...}}`` with groups among
  'encoder', 'decoder', 'discriminator'.
  """
  nets = Networks.create(arch)
  s = arch.image_size
  x = jnp.zeros((1, s, s, arch.channels), jnp.float32)
  z = jnp.zeros((1, arch.z_dim), jnp.float32)
  y = jnp.zeros((1, arch.num_attributes), jnp.float32) if arch.num_attributes else None
  k_enc, k_dec, k_dis = jax.random.split(rng, 3)
  init = {
      "encoder": lambda: nets.encoder.init(k_enc, x, y, train=False),
      "decoder": lambda: nets.decoder.init(k_dec, z, y, train=False),
      "discriminator": lambda: nets.discriminator.init(k_dis, x, y, train=False),
  }
  out = {}
  for g in groups:
    v = init[g]()
    out[g] = {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
  return out
