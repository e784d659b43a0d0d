"""Convolution layers of VAE-GAN, with the implementation chosen in one place.

Every conv in the paper is 5x5 with either stride 1 ("SAME", pad 2) or stride 2
with a symmetric pad of 2 on each side (the paper / authors' code; Flax's
'SAME' would pad (1, 2) and put the output on a shifted grid). Transposed convs
exactly double the spatial size: PyTorch ``ConvTranspose2d(k=5, s=2, p=2,
output_padding=1)``, i.e. the transpose of the stride-2 conv above.

Parameters have the same names and shapes as ``flax.linen.Conv`` (kernel
``(k, k, C_in, C_out)``) and ``flax.linen.ConvTranspose(transpose_kernel=True)``
(kernel ``(k, k, C_out, C_in)``, the kernel of the forward conv it transposes),
so checkpoints are interchangeable between implementations.

Implementations (``impl``):
  * ``'xla'``: ``lax.conv_general_dilated`` / ``lax.conv_transpose``. Fast under
    cuDNN and the TPU compiler.
  * ``'fast'``: ``vaegan_jax.cpu.fast_conv``: phase (sub-pixel) forms, batch
    chunking and custom VJPs that avoid XLA:CPU's slow paths.
  * ``'auto'`` (default): ``'fast'`` on CPU, ``'xla'`` elsewhere.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Initializer = Callable[..., Array]

IMPLS = ("auto", "xla", "fast")


def resolve_impl(impl: str) -> str:
  """Maps ``'auto'`` to the implementation that is fast on the default backend."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}.")
  if impl == "auto":
    return "fast" if jax.default_backend() == "cpu" else "xla"
  return impl


def _pad(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  p = kernel_size // 2
  return ((p, p), (p, p))


def conv2d_xla(x: Array, kernel: Array, stride: int) -> Array:
  """NHWC conv, kernel (k, k, C_in, C_out), symmetric pad k//2."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride),
      padding=_pad(kernel.shape[0]),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d_transpose_xla(x: Array, kernel: Array) -> Array:
  """Stride-2 transposed conv: (N, H, W, C_in) -> (N, 2H, 2W, C_out).

  ``kernel`` is (k, k, C_out, C_in): the kernel of the stride-2 conv that this
  op transposes, as in ``nn.ConvTranspose(transpose_kernel=True)``.
  """
  k = kernel.shape[0]
  p = k // 2
  # Pads (p, p+1) give exactly 2H; equal to PyTorch's output_padding=1.
  pad = ((k - 1 - p, k - p), (k - 1 - p, k - p))
  return lax.conv_transpose(
      x, kernel, strides=(2, 2), padding=pad,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)


def conv2d(x: Array, kernel: Array, stride: int, impl: str = "auto") -> Array:
  if resolve_impl(impl) == "fast":
    from vaegan_jax.cpu import fast_conv  # pylint: disable=g-import-not-at-top
    return fast_conv.conv2d(x, kernel, stride)
  return conv2d_xla(x, kernel, stride)


def conv2d_transpose(x: Array, kernel: Array, impl: str = "auto") -> Array:
  if resolve_impl(impl) == "fast":
    from vaegan_jax.cpu import fast_conv  # pylint: disable=g-import-not-at-top
    return fast_conv.conv2d_transpose(x, kernel)
  return conv2d_transpose_xla(x, kernel)


def _cast(dtype, *xs):
  return xs if dtype is None else tuple(
      None if a is None else jnp.asarray(a, dtype) for a in xs)


def _add_bias(y: Array, bias: Array) -> Array:
  """``y + bias`` in (at least) float32, rounded once to ``y``'s dtype.

  The bias gradient is the sum of ``y``'s cotangent over N, H and W. With the
  add in bf16 that sum is a bf16 reduction, and XLA:CPU accumulates it in
  bf16 (measured: 4,096 ones sum to 256; the decoder's out_conv bias gradient
  in the default config, 16 x 32 x 32 positions, was 93 % off). With the add
  in float32 the reduction is float32 whatever the backend does with bf16
  ones, and the output is rounded once instead of twice. For float32 ``y``
  this is the plain ``y + bias``.
  """
  return (y.astype(jnp.promote_types(y.dtype, jnp.float32)) + bias).astype(y.dtype)


class Conv(nn.Module):
  """5x5 (by default) conv, stride 1 or 2, symmetric padding k//2."""
  features: int
  kernel_size: int = 5
  strides: int = 1
  use_bias: bool = True
  impl: str = "auto"
  dtype: Any = None  # computation dtype; params and the bias add stay float32.
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    x, kernel = _cast(self.dtype, x, kernel)
    y = conv2d(x, kernel, self.strides, self.impl)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = _add_bias(y, bias)
    return y


class ConvTranspose(nn.Module):
  """5x5 (by default) stride-2 transposed conv that exactly doubles H and W."""
  features: int
  kernel_size: int = 5
  use_bias: bool = True
  impl: str = "auto"
  dtype: Any = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    # Same layout as nn.ConvTranspose(transpose_kernel=True): (k, k, out, in).
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, self.features, x.shape[-1]), jnp.float32)
    x, kernel = _cast(self.dtype, x, kernel)
    y = conv2d_transpose(x, kernel, self.impl)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = _add_bias(y, bias)
    return y


@functools.lru_cache(maxsize=None)
def authors_init(transposed: bool = False) -> Initializer:
  """Authors' code init: uniform +-1/sqrt(3*fan_in) = variance_scaling(1/9).

  For transposed convs the authors' fan is C_out*k*k. Our transposed kernels
  are laid out (k, k, C_out, C_in), so the fan is axes (0, 1, 2).
  """
  if transposed:
    return nn.initializers.variance_scaling(
        1 / 9, "fan_in", "uniform", in_axis=(0, 1, 2), out_axis=3)
  return nn.initializers.variance_scaling(1 / 9, "fan_in", "uniform")
