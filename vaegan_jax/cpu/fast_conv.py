"""Fast forms of the VAE-GAN convolutions for XLA:CPU, with the same math.

The ops compute exactly ``layers.conv2d_xla`` / ``layers.conv2d_transpose_xla``
(odd k x k kernel, symmetric pad p = k // 2), as ``jax.custom_vjp`` functions
whose forward and backward pieces each use one of these forms:

* ``'matmul'``: everything is a large matmul plus cheap data movement.
  - im2col (stride-s conv): pad x by p, gather the k*k shifted, strided
    windows ``xp[:, u::s, v::s]`` into ``(N, Ho, Wo, k*k*C_in)`` patches and
    multiply with ``kernel.reshape(k*k*C_in, C_out)``. Kernel gradient:
    ``patches^T @ g``, one matmul contracting N, Ho, Wo.
  - col2im (stride-1 conv with C_out < C_in): ``Y = x @ (C_in, k*k*C_out)``,
    then sum the k*k shifted slices of Y: same flops, smaller intermediate.
  - sub-pixel (4-phase) transposed conv. It is the adjoint of the stride-2
    conv, ``z[r] = sum_{i, u: 2i + u - p = r} x[i] K[u]``. With r = 2m + a,
    phase a in {0, 1}: ``i = m + d``, ``u = a + p - 2d`` (k = 5: taps
    u = 4, 2, 0 at d = -1, 0, 1 for a = 0; u = 3, 1 at d = 0, 1 for a = 1).
    So all 4 phases (a, b) are stride-1 convs over the same 3x3 neighbourhood
    of x: one matmul of the 3x3 patches ``(N, H, W, 9*C_in)`` with a combined
    ``(9*C_in, 4*C_out)`` kernel (zeros where a phase has no tap), then
    depth-to-space. (Or col2im: ``x @ (C_in, k*k*C_out)`` and sum each
    phase's taps; 25/36 of the flops, used when its intermediate is smaller.)
  - backward: a stride-2 conv's input gradient is the sub-pixel transposed
    conv of g; a transposed conv's input gradient is the im2col stride-2 conv
    of g, whose patches also give its kernel gradient; a stride-1 conv's input
    gradient is a stride-1 conv of g with the flipped, transposed kernel.
* ``'phase'``: stride-2 and transposed convs as sums of stride-1 XLA convs
  over the 4 phases of the stride-2 grid (``_conv_s2_phase``,
  ``_conv_t_phase``): the same 25 taps, no zero taps. XLA:CPU runs stride-1
  convs with >= 128 contracted channels at ~95 % of its matmul rate, but
  stride-2 convs, their input gradients and transposed convs at 30-60 %.
* ``'auto'`` (default): per piece, whichever of XLA's direct conv and the
  phase form ``experiments/conv_microbench.py --pieces`` measured faster on
  XLA:CPU (2 shared cores, the model's shapes at batch 64), see ``_method``:
  - forward of a stride-2 conv (and input gradient of a transposed conv):
    phase form from 128 input channels, XLA's conv below;
  - transposed conv (and input gradient of a stride-2 conv): phase form from
    16 output channels (1.3-2x faster than XLA's), XLA's below;
  - kernel gradients: XLA's. Autodiff of ``lax.conv_transpose`` gives a
    kernel-gradient conv that XLA:CPU runs 20-50x slower, so the transposed
    conv's kernel gradient is computed as the stride-2 conv's (same sum);
  - the backward of a stride-1 conv with C_out < C_in (the decoder's output
    conv): the matmul form with patches of the narrow g (1.3-3x faster).
  All non-matmul pieces run over batch chunks of ``BATCH_CHUNK`` = 16 images:
  Eigen's convs lose 1.2-4.7x once a large batch's maps fall out of cache.

Matmuls accumulate in float32 (``preferred_element_type``) and cast back to
the input dtype, so float32 and bfloat16 inputs both work. The ops support
reverse mode to any order (the backward rules are differentiable JAX code) but,
like any ``jax.custom_vjp``, not forward mode (``jax.jvp``).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Array = jax.Array


def _check_kernel(kernel: Array) -> int:
  k = kernel.shape[0]
  if kernel.ndim != 4 or kernel.shape[1] != k or k % 2 != 1:
    raise ValueError(
        f"Expected a square, odd (k, k, C, C') kernel, got {kernel.shape}.")
  return k


def _out_size(size: int, k: int, stride: int) -> int:
  p = k // 2
  return (size + 2 * p - k) // stride + 1


def _dot(a: Array, b: Array, contract: tuple[tuple[int, ...], tuple[int, ...]],
         dtype) -> Array:
  """dot_general without batch dims, f32 accumulation, cast to ``dtype``."""
  out = lax.dot_general(a, b, (contract, ((), ())),
                        preferred_element_type=jnp.float32)
  return out.astype(dtype)


def _matmul(a: Array, b: Array, dtype) -> Array:
  """(..., K) @ (K, M) -> (..., M)."""
  return _dot(a, b, ((a.ndim - 1,), (0,)), dtype)


def _pad_hw(x: Array, lo: int, hi: int) -> Array:
  return jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))


def _patches(x: Array, window: int, stride: int, pad_lo: int, out_h: int,
             out_w: int) -> Array:
  """im2col: (N, H, W, C) -> (N, out_h, out_w, window*window*C).

  Channel order is (u, v, c), matching ``kernel.reshape(-1, C_out)`` for a
  (window, window, C, C_out) kernel. Element [n, i, j, (u, v, c)] is
  ``x[n, stride*i + u - pad_lo, stride*j + v - pad_lo, c]`` (0 outside x).
  """
  n, h, w, c = x.shape
  pad_hi_h = max(0, stride * (out_h - 1) + window - pad_lo - h)
  pad_hi_w = max(0, stride * (out_w - 1) + window - pad_lo - w)
  xp = jnp.pad(x, ((0, 0), (pad_lo, pad_hi_h), (pad_lo, pad_hi_w), (0, 0)))
  # One gather with static indices: XLA:CPU emits it as a single loop fusion,
  # ~1.6x faster than concatenating k*k slices (each slice is materialized).
  rows = stride * np.arange(out_h)[:, None] + np.arange(window)[None]
  cols = stride * np.arange(out_w)[:, None] + np.arange(window)[None]
  p = xp[:, rows[:, None, :, None], cols[None, :, None, :]]
  return p.reshape(n, out_h, out_w, window * window * c)


# ----------------------------------------------------------------------------
# Matmul forms: stride-1 and stride-2 convs.


def _conv_im2col(x: Array, kernel: Array, stride: int) -> Array:
  k = kernel.shape[0]
  ho, wo = (_out_size(s, k, stride) for s in x.shape[1:3])
  patches = _patches(x, k, stride, k // 2, ho, wo)
  return _matmul(patches, kernel.reshape(-1, kernel.shape[-1]), x.dtype)


def _conv_s1_col2im(x: Array, kernel: Array) -> Array:
  """Stride-1 conv as ``x @ kernel`` for all taps, then a shifted sum.

  ``y[i, j] = sum_{u, v} x[i + u - p, j + v - p] @ K[u, v]``; with
  ``Y[.., u, v, :] = x @ K[u, v]`` (zero-padded by p) that is
  ``sum_{u, v} Y[i + u, j + v, u, v]``.
  """
  k, _, c_in, c_out = kernel.shape
  n, h, w, _ = x.shape
  p = k // 2
  kmat = kernel.transpose(2, 0, 1, 3).reshape(c_in, k * k * c_out)
  y = _pad_hw(_matmul(x, kmat, jnp.float32), p, p)
  y = y.reshape(n, h + 2 * p, w + 2 * p, k, k, c_out)
  out = None
  for u in range(k):
    for v in range(k):
      term = y[:, u:u + h, v:v + w, u, v]
      out = term if out is None else out + term
  return out.astype(x.dtype)


def _use_col2im(c_in: int, c_out: int) -> bool:
  # Same flops either way; pick the smaller (k*k*C) intermediate.
  return c_out < c_in


def _conv_s1(x: Array, kernel: Array) -> Array:
  if _use_col2im(kernel.shape[2], kernel.shape[3]):
    return _conv_s1_col2im(x, kernel)
  return _conv_im2col(x, kernel, 1)


def _flip_transpose(kernel: Array) -> Array:
  """(k, k, C_in, C_out) -> (k, k, C_out, C_in), spatially flipped."""
  return kernel[::-1, ::-1].transpose(0, 1, 3, 2)


# ----------------------------------------------------------------------------
# Matmul forms: sub-pixel transposed conv (adjoint of the stride-2 conv).


@functools.lru_cache(maxsize=None)
def _phase_taps(k: int) -> tuple[int, int, np.ndarray, np.ndarray]:
  """Tap table of the 2 phases of a stride-2 transposed conv, per spatial dim.

  Output row r = 2m + a reads input rows m + d with tap u = a + p - 2d.

  Returns:
    d_lo: smallest offset d over both phases (the 3x3 window starts there).
    window: number of offsets d (3 for k = 5).
    taps: (window, 2) int, tap u for (d - d_lo, a), clipped to [0, k).
    valid: (window, 2) bool, whether that tap exists.
  """
  p = k // 2
  ds = [d for a in (0, 1) for d in range(-k, k + 1) if 0 <= a + p - 2 * d < k]
  d_lo, d_hi = min(ds), max(ds)
  window = d_hi - d_lo + 1
  taps = np.zeros((window, 2), np.int32)
  valid = np.zeros((window, 2), bool)
  for i, d in enumerate(range(d_lo, d_hi + 1)):
    for a in (0, 1):
      u = a + p - 2 * d
      if 0 <= u < k:
        taps[i, a], valid[i, a] = u, True
  return d_lo, window, taps, valid


def _depth_to_space(z: Array) -> Array:
  """(N, H, W, 2, 2, C) phases (a, b) -> (N, 2H, 2W, C)."""
  n, h, w, _, _, c = z.shape
  return z.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


def _subpixel_kernel(kernel: Array) -> Array:
  """(k, k, C_out, C_in) -> combined (window^2 * C_in, 4 * C_out) kernel.

  Row (dh, dw, c) x column (a, b, o) holds K[u(dh, a), v(dw, b), o, c], or 0
  where phase (a, b) has no tap at that offset.
  """
  k, _, c_out, c_in = kernel.shape
  _, window, taps, valid = _phase_taps(k)
  kt = kernel.transpose(0, 1, 3, 2)  # (k, k, C_in, C_out)
  # Static gather -> (window, window, 2, 2, C_in, C_out): (dh, dw, a, b, c, o).
  wc = kt[taps[:, None, :, None], taps[None, :, None, :]]
  mask = valid[:, None, :, None] & valid[None, :, None, :]
  wc = jnp.where(mask[..., None, None], wc, jnp.zeros((), wc.dtype))
  wc = wc.transpose(0, 1, 4, 2, 3, 5)  # (dh, dw, c, a, b, o)
  return wc.reshape(window * window * c_in, 4 * c_out)


def _conv_t_subpixel(x: Array, kernel: Array) -> Array:
  """One (N*H*W, 9*C_in) @ (9*C_in, 4*C_out) matmul, then depth-to-space."""
  k, _, c_out, _ = kernel.shape
  n, h, w, _ = x.shape
  d_lo, window, _, _ = _phase_taps(k)
  patches = _patches(x, window, 1, -d_lo, h, w)
  z = _matmul(patches, _subpixel_kernel(kernel), x.dtype)
  return _depth_to_space(z.reshape(n, h, w, 2, 2, c_out))


def _conv_t_col2im(x: Array, kernel: Array) -> Array:
  """``Y = x @ (C_in, k*k*C_out)``, then per phase sum the taps' shifted Y."""
  k, _, c_out, c_in = kernel.shape
  n, h, w, _ = x.shape
  d_lo, window, taps, valid = _phase_taps(k)
  kmat = kernel.transpose(3, 0, 1, 2).reshape(c_in, k * k * c_out)
  y = _matmul(x, kmat, jnp.float32)
  y = _pad_hw(y, -d_lo, window - 1 + d_lo).reshape(
      n, h + window - 1, w + window - 1, k, k, c_out)
  rows = []
  for a in (0, 1):
    cols = []
    for b in (0, 1):
      out = None
      for i in range(window):
        for j in range(window):
          if valid[i, a] and valid[j, b]:
            term = y[:, i:i + h, j:j + w, taps[i, a], taps[j, b]]
            out = term if out is None else out + term
      cols.append(out)
    rows.append(jnp.stack(cols, axis=3))
  z = jnp.stack(rows, axis=3)  # (N, H, W, 2, 2, C_out)
  return _depth_to_space(z).astype(x.dtype)


def _use_conv_t_col2im(k: int, c_in: int, c_out: int) -> bool:
  # col2im: k*k*C_out intermediate, k*k flop units; sub-pixel: window^2 * C_in
  # patches, 4 * window^2 flop units (25 vs 36 for k = 5).
  _, window, _, _ = _phase_taps(k)
  return k * k * c_out <= window * window * c_in


def _conv_t(x: Array, kernel: Array) -> Array:
  """Adjoint of the stride-2 conv: (N, H, W, C_in) -> (N, 2H, 2W, C_out).

  ``kernel`` is (k, k, C_out, C_in), the kernel of the conv being transposed.
  """
  k, _, c_out, c_in = kernel.shape
  if _use_conv_t_col2im(k, c_in, c_out):
    return _conv_t_col2im(x, kernel)
  return _conv_t_subpixel(x, kernel)


# ----------------------------------------------------------------------------
# Phase forms: stride-2 and transposed convs as sums of stride-1 XLA convs.
#
# XLA:CPU runs stride-1 convs with >= 128 contracted channels at ~95 % of its
# matmul rate, forward and input gradient alike, but stride-2 convs, their
# input gradients and transposed convs at 30-60 %. Splitting the stride-2
# grid into its 4 phases turns each of them into 4 stride-1 convs with the
# same 25 taps in total (no zero taps, unlike space-to-depth with a 6x6 kernel).


def _conv_s1_valid(x: Array, kernel: Array, pad_h=(0, 0), pad_w=(0, 0)) -> Array:
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=(pad_h, pad_w),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _s2_phase(k: int, a: int, size: int) -> tuple[int, int, int, int]:
  """Phase a (rows 2m + a) of a stride-2 conv's input, per spatial dim.

  Output row i reads ``x[2i + u - p]``; those in phase a are taps
  u = u0, u0 + 2, ... (u0 = (p + a) % 2) at phase rows m = i + d,
  d = (u - p - a) / 2. Returns (u0, number of taps, pad_lo, pad_hi) of the
  stride-1 conv over the phase's rows that gives all outputs.
  """
  p = k // 2
  u0 = (p + a) % 2
  taps = len(range(u0, k, 2))
  out, rows = _out_size(size, k, 2), len(range(a, size, 2))
  d_lo = (u0 - p - a) // 2
  return u0, taps, -d_lo, (out - 1) + d_lo + taps - 1 - (rows - 1)


def _conv_s2_phase(x: Array, kernel: Array) -> Array:
  """Stride-2 conv as the sum over the 4 input phases of stride-1 convs."""
  k = kernel.shape[0]
  _, h, w, _ = x.shape
  out = None
  for a in (0, 1):
    u0, ka, lo_a, hi_a = _s2_phase(k, a, h)
    for b in (0, 1):
      v0, kb, lo_b, hi_b = _s2_phase(k, b, w)
      if not ka * kb or a >= h or b >= w:  # k = 1, or a 1-pixel side.
        continue
      term = _conv_s1_valid(x[:, a::2, b::2], kernel[u0::2, v0::2],
                            (lo_a, hi_a), (lo_b, hi_b))
      out = term if out is None else out + term
  return out


@functools.lru_cache(maxsize=None)
def _t_phase(k: int, a: int) -> tuple[tuple[int, ...], int, int]:
  """Taps of output phase a of the stride-2 transposed conv, per spatial dim.

  Output row r = 2m + a reads input rows m + d with tap u = a + p - 2d.
  Returns (taps u in order of increasing d, pad_lo = -d_min, pad_hi = d_max).
  """
  p = k // 2
  ds = [d for d in range(-k, k + 1) if 0 <= a + p - 2 * d < k]
  if not ds:  # k = 1, a = 1: no tap reaches odd outputs.
    return (), 0, 0
  return tuple(a + p - 2 * d for d in ds), -min(ds), max(ds)


def _conv_t_phase(x: Array, kernel: Array) -> Array:
  """Sub-pixel transposed conv: one stride-1 conv per output phase (a, b).

  ``kernel`` is (k, k, C_out, C_in); returns (N, 2H, 2W, C_out).
  """
  k = kernel.shape[0]
  kt = kernel.transpose(0, 1, 3, 2)  # (k, k, C_in, C_out)
  rows = []
  for a in (0, 1):
    taps_a, lo_a, hi_a = _t_phase(k, a)
    cols = []
    for b in (0, 1):
      taps_b, lo_b, hi_b = _t_phase(k, b)
      if not taps_a or not taps_b:
        cols.append(jnp.zeros(x.shape[:3] + kt.shape[-1:], x.dtype))
        continue
      sub = kt[np.asarray(taps_a)][:, np.asarray(taps_b)]
      cols.append(_conv_s1_valid(x, sub, (lo_a, hi_a), (lo_b, hi_b)))
    rows.append(jnp.stack(cols, axis=3))
  return _depth_to_space(jnp.stack(rows, axis=3))


# ----------------------------------------------------------------------------
# XLA direct-conv pieces (the same convs as ``layers.conv2d_xla``).


def _conv_xla(x: Array, kernel: Array, stride: int) -> Array:
  p = kernel.shape[0] // 2
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=((p, p), (p, p)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_xla_dx(g: Array, kernel: Array, stride: int,
                 x_shape: tuple[int, ...]) -> Array:
  """Adjoint of ``_conv_xla(., kernel, stride)`` on an input of ``x_shape``."""
  x_aval = jax.ShapeDtypeStruct(x_shape, g.dtype)
  return jax.linear_transpose(
      lambda x: _conv_xla(x, kernel, stride), x_aval)(g)[0]


def _conv_xla_dk(x: Array, g: Array, kernel_shape: tuple[int, ...],
                 stride: int) -> Array:
  """Kernel gradient of ``_conv_xla(x, ., stride)`` for output cotangent g."""
  k_aval = jax.ShapeDtypeStruct(kernel_shape, x.dtype)
  return jax.linear_transpose(
      lambda k: _conv_xla(x, k, stride), k_aval)(g)[0]


# ----------------------------------------------------------------------------
# Form selection.

FORMS = ("auto", "phase", "matmul")
_form = "auto"


def set_form(form: str) -> str:
  """Sets the form used by ops traced from now on; returns the previous one.

  The form is read when an op is traced (it is baked into jitted functions)
  and is carried to the op's backward pass.
  """
  global _form
  if form not in FORMS:
    raise ValueError(f"form must be one of {FORMS}, got {form!r}.")
  previous, _form = _form, form
  return previous


@contextlib.contextmanager
def use_form(form: str) -> Iterator[None]:
  """Context manager version of ``set_form``."""
  previous = set_form(form)
  try:
    yield
  finally:
    set_form(previous)


# Every stride-2 piece is one of three ops, each with three methods:
#   s2(x, K):   the stride-2 conv; also the input gradient of a transposed conv.
#   t(x, K):    the transposed conv; also the input gradient of a stride-2 conv.
#   dk(x, g):   the stride-2 conv's kernel gradient; also the transposed conv's
#               (with x and g swapped).
# 'auto' picks per op and shape what ``experiments/conv_microbench.py
# --pieces`` measured fastest on XLA:CPU (2 shared cores, batch 16-64).


def _method(op: str, form: str, a: Array, b: Array, k: int) -> str:
  """'xla', 'phase' or 'matmul' for one piece ``METHODS[op][.](a, b, ...)``.

  For 's2' and 't', a is the input and b the kernel; for 'dk', a is the
  stride-2 conv's input x and b the cotangent g. k is the kernel size.
  """
  if form == "matmul":
    return "matmul"
  if k == 1:
    return "xla"
  if form == "phase":
    return "phase"
  if op == "s2":  # Stride-1 sub-convs are near matmul speed from 128 channels.
    return "phase" if a.shape[-1] >= 128 else "xla"
  if op == "t":  # Output channels: kernel (k, k, C_out, C_in).
    return "phase" if b.shape[2] >= 16 else "xla"
  # dk: over batch chunks XLA's own is as fast or faster at every model shape.
  return "xla"


def _t_xla(x: Array, kernel: Array) -> Array:
  n, h, w, _ = x.shape
  return _conv_xla_dx(x, kernel, 2, (n, 2 * h, 2 * w, kernel.shape[2]))


def _dk_xla(x: Array, g: Array, kernel_shape: tuple[int, ...]) -> Array:
  return _conv_xla_dk(x, g, kernel_shape, 2)


def _dk_phase(x: Array, g: Array, kernel_shape: tuple[int, ...]) -> Array:
  # <s2(x, K), g> = <x, t(g, K)>: dK is the kernel gradient of the sub-pixel
  # convs of g, with cotangent x zero-extended to (2*Ho, 2*Wo).
  ho, wo = g.shape[1:3]
  x_ext = jnp.pad(x, ((0, 0), (0, 2 * ho - x.shape[1]), (0, 2 * wo - x.shape[2]), (0, 0)))
  k_aval = jax.ShapeDtypeStruct(kernel_shape, g.dtype)
  return jax.linear_transpose(lambda kk: _conv_t_phase(g, kk), k_aval)(x_ext)[0]


def _dk_matmul(x: Array, g: Array, kernel_shape: tuple[int, ...]) -> Array:
  k = kernel_shape[0]
  px = _patches(x, k, 2, k // 2, *g.shape[1:3])
  return _dot(px, g, ((0, 1, 2), (0, 1, 2)), jnp.float32).reshape(kernel_shape)


# op -> method -> function; 's2' and 't' take (x, kernel), 'dk' (x, g, shape).
METHODS = {
    "s2": {"xla": lambda x, kk: _conv_xla(x, kk, 2), "phase": _conv_s2_phase,
           "matmul": lambda x, kk: _conv_im2col(x, kk, 2)},
    "t": {"xla": _t_xla, "phase": _conv_t_phase, "matmul": _conv_t},
    "dk": {"xla": _dk_xla, "phase": _dk_phase, "matmul": _dk_matmul},
}


# XLA:CPU's (Eigen) convs lose 1.2-4.7x in efficiency once a batch's maps fall
# out of cache: the kernel gradient of 320 32x32x128 images takes 4.1 s in one
# conv and 0.85 s as 20 convs of 16 images (conv_microbench). So non-matmul
# pieces run on batch chunks of this size, unrolled (a lax.scan over chunks is
# far slower: its body runs single-threaded).
BATCH_CHUNK = 16


def _chunks(n: int) -> list[tuple[int, int]]:
  return [(i, min(i + BATCH_CHUNK, n)) for i in range(0, n, BATCH_CHUNK)]


def _per_chunk(fn, x: Array, *rest) -> Array:
  """fn over batch chunks of x (rest: non-batched args), concatenated."""
  parts = [fn(x[i:j], *rest) for i, j in _chunks(x.shape[0])]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _summed_over_chunks(fn, x: Array, g: Array, *rest) -> Array:
  """Sum over batch chunks of fn(x_chunk, g_chunk, *rest), in float32."""
  out = None
  for i, j in _chunks(x.shape[0]):
    term = fn(x[i:j], g[i:j], *rest).astype(jnp.float32)
    out = term if out is None else out + term
  return out


def run_piece(op: str, method: str, a: Array, b: Array, *rest) -> Array:
  """``METHODS[op][method](a, b, *rest)``, non-matmul methods over batch chunks."""
  fn = METHODS[op][method]
  if method == "matmul":
    return fn(a, b, *rest)
  if op == "dk":
    return _summed_over_chunks(fn, a, b, *rest)
  return _per_chunk(fn, a, b)


def _strided_conv(x: Array, kernel: Array, form: str) -> Array:
  return run_piece("s2", _method("s2", form, x, kernel, kernel.shape[0]), x, kernel)


def _transposed_conv(x: Array, kernel: Array, form: str, out_hw: tuple[int, int]) -> Array:
  """Transposed conv of x cropped to ``out_hw`` (<= 2H, 2W); kernel (k, k, C_out, C_in)."""
  m = _method("t", form, x, kernel, kernel.shape[0])
  if m == "xla":  # Computes only the kept outputs.
    return _per_chunk(
        lambda xc, kk: _conv_xla_dx(xc, kk, 2, (xc.shape[0], *out_hw, kk.shape[2])), x, kernel)
  return run_piece("t", m, x, kernel)[:, :out_hw[0], :out_hw[1]]


def _kernel_grad(x: Array, g: Array, kernel_shape: tuple[int, ...], form: str) -> Array:
  """Kernel gradient of the stride-2 conv ``y = s2(x, K)`` for cotangent g."""
  m = _method("dk", form, x, g, kernel_shape[0])
  return run_piece("dk", m, x, g, kernel_shape)


# ----------------------------------------------------------------------------
# Public ops.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x: Array, kernel: Array, stride: int, form: str) -> Array:
  if stride == 2:
    return _strided_conv(x, kernel, form)
  if form == "matmul":
    return _conv_s1(x, kernel)
  return _per_chunk(_conv_xla, x, kernel, 1)


def _conv2d_fwd(x, kernel, stride, form):
  # Keep only the inputs: patches are cheap to rebuild and k*k/s^2 times
  # larger than x.
  return _conv2d(x, kernel, stride, form), (x, kernel)


def _conv2d_bwd(stride, form, res, g):
  x, kernel = res
  k, _, c_in, c_out = kernel.shape
  n, h, w, _ = x.shape
  p = k // 2
  g = g.astype(x.dtype)
  if stride == 2:
    dx = _transposed_conv(g, kernel, form, (h, w))
    dk = _kernel_grad(x, g, kernel.shape, form)
  elif _use_col2im(c_in, c_out):
    # Both forms: patches of the narrow cotangent give both gradients,
    # dx = conv(g, flip(K)^T) and dK[u, v] = x^T @ (g shifted by p - u, p - v).
    pg = _patches(g, k, 1, p, h, w)  # (N, H, W, k*k*C_out), taps k-1-u.
    dx = _matmul(pg, _flip_transpose(kernel).reshape(-1, c_in), x.dtype)
    dk = _dot(x, pg, ((0, 1, 2), (0, 1, 2)), jnp.float32)  # (C_in, k*k*C_out)
    dk = dk.reshape(c_in, k, k, c_out)[:, ::-1, ::-1].transpose(1, 2, 0, 3)
  elif form == "matmul":
    px = _patches(x, k, 1, p, h, w)
    dk = _dot(px, g, ((0, 1, 2), (0, 1, 2)), jnp.float32).reshape(kernel.shape)
    dx = _conv_s1(g, _flip_transpose(kernel))
  else:
    dx = _per_chunk(lambda gc, kk: _conv_xla_dx(gc, kk, 1, gc.shape[:3] + (c_in,)), g, kernel)
    dk = _summed_over_chunks(_conv_xla_dk, x, g, kernel.shape, 1)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(x: Array, kernel: Array, stride: int) -> Array:
  """NHWC conv, symmetric pad k//2; same math as ``layers.conv2d_xla``.

  Args:
    x: (N, H, W, C_in).
    kernel: (k, k, C_in, C_out), k odd; cast to x's dtype.
    stride: 1 or 2.

  Returns:
    (N, Ho, Wo, C_out) in x's dtype, Ho = (H - 1) // stride + 1.
  """
  _check_kernel(kernel)
  if stride not in (1, 2):
    raise ValueError(f"stride must be 1 or 2, got {stride}.")
  if x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"x has {x.shape[-1]} channels, kernel {kernel.shape}.")
  return _conv2d(x, kernel.astype(x.dtype), int(stride), _form)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d_transpose(x: Array, kernel: Array, form: str) -> Array:
  n, h, w, _ = x.shape
  return _transposed_conv(x, kernel, form, (2 * h, 2 * w))


def _conv2d_transpose_fwd(x, kernel, form):
  return _conv2d_transpose(x, kernel, form), (x, kernel)


def _conv2d_transpose_bwd(form, res, g):
  x, kernel = res
  g = g.astype(x.dtype)
  # z = A^T x with A = conv(., K, stride 2), so <z, g> = <x, A g>:
  # dx = A g and dK = d<x, conv(g, K, 2)>/dK, a stride-2 conv's kernel
  # gradient with input g and cotangent x. (Autodiff of lax.conv_transpose
  # instead gives a kernel-gradient conv that XLA:CPU runs 20-50x slower.)
  dx = _strided_conv(g, kernel, form)
  dk = _kernel_grad(g, x, kernel.shape, form)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv2d_transpose.defvjp(_conv2d_transpose_fwd, _conv2d_transpose_bwd)


def conv2d_transpose(x: Array, kernel: Array) -> Array:
  """Stride-2 transposed conv; same math as ``layers.conv2d_transpose_xla``.

  Args:
    x: (N, H, W, C_in).
    kernel: (k, k, C_out, C_in), k odd, cast to x's dtype: the kernel of the
      stride-2 conv that this op transposes
      (``nn.ConvTranspose(transpose_kernel=True)`` layout).

  Returns:
    (N, 2H, 2W, C_out) in x's dtype.
  """
  _check_kernel(kernel)
  if x.shape[-1] != kernel.shape[3]:
    raise ValueError(f"x has {x.shape[-1]} channels, kernel {kernel.shape}.")
  return _conv2d_transpose(x, kernel.astype(x.dtype), _form)
