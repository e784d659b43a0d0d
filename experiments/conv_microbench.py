r"""Times fwd+bwd of the 64x64 VAE-GAN conv layers: stock XLA vs fast_conv.

Each row is one layer at batch 64: value and gradients w.r.t. both the input
and the kernel of ``sum(conv(x, K) * g)``, jitted; median of ``--runs`` timed
calls after one warm-up (compile) call. Columns:

  xla:    ``layers.conv2d_xla`` / ``layers.conv2d_transpose_xla`` + autodiff.
  fast:   ``fast_conv`` with its default form, ``'auto'``.
  matmul: ``fast_conv`` with ``form='matmul'`` (im2col / sub-pixel everywhere).

The impls are timed round-robin per layer, so load from other processes hits
them alike.

  python -m experiments.conv_microbench [--batch 64] [--runs 5] [--dtype f32]

With ``--pieces`` it instead times each piece of the stride-2 and transposed
layers (forward, input gradient, kernel gradient) with each of fast_conv's
methods ('xla', 'phase', 'matmul'), and marks the one ``form='auto'`` picks:
the table behind ``fast_conv._method``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vaegan_jax import layers
from vaegan_jax.cpu import fast_conv

# (name, kind, H, C_in, C_out): kind 's1'/'s2' conv stride 1/2, 't' transposed.
LAYERS_64 = (
    ("enc conv1", "s2", 64, 3, 64),
    ("enc conv2", "s2", 32, 64, 128),
    ("enc conv3", "s2", 16, 128, 256),
    ("dis conv0", "s1", 64, 3, 32),
    ("dis conv1", "s2", 64, 32, 128),
    ("dis conv2", "s2", 32, 128, 256),
    ("dis conv3", "s2", 16, 256, 256),
    ("dec convT1", "t", 8, 256, 256),
    ("dec convT2", "t", 16, 256, 128),
    ("dec convT3", "t", 32, 128, 32),
    ("dec conv_out", "s1", 64, 32, 3),
)
# The 32x32 digits model of the default config (experiments/configs/default.py).
LAYERS_DEFAULT32 = (
    ("enc conv1", "s2", 32, 1, 16),
    ("enc conv2", "s2", 16, 16, 32),
    ("enc conv3", "s2", 8, 32, 64),
    ("dis conv0", "s1", 32, 1, 16),
    ("dis conv1", "s2", 32, 16, 32),
    ("dis conv2", "s2", 16, 32, 64),
    ("dis conv3", "s2", 8, 64, 64),
    ("dec convT1", "t", 4, 64, 64),
    ("dec convT2", "t", 8, 64, 32),
    ("dec convT3", "t", 16, 32, 16),
    ("dec conv_out", "s1", 32, 16, 1),
)
MODELS = {"paper64": LAYERS_64, "default32": LAYERS_DEFAULT32}


def _fast(form, kind, x, kernel):
  # The form is read at trace time, i.e. inside this call under jit.
  with fast_conv.use_form(form):
    if kind == "t":
      return fast_conv.conv2d_transpose(x, kernel)
    return fast_conv.conv2d(x, kernel, int(kind[1]))


def _xla(kind, x, kernel):
  if kind == "t":
    return layers.conv2d_transpose_xla(x, kernel)
  return layers.conv2d_xla(x, kernel, int(kind[1]))


IMPLS = {
    "xla": _xla,
    "fast": functools.partial(_fast, "auto"),
    "matmul": functools.partial(_fast, "matmul"),
}


def make_inputs(kind, h, c_in, c_out, batch, dtype, seed=0):
  """Returns x, kernel and a cotangent-like weight g for one layer."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, h, h, c_in))
  if kind == "t":
    kernel = rng.normal(size=(5, 5, c_out, c_in)) / np.sqrt(25 * c_in)
    ho = 2 * h
  else:
    kernel = rng.normal(size=(5, 5, c_in, c_out)) / np.sqrt(25 * c_in)
    ho = h // int(kind[1])
  g = rng.normal(size=(batch, ho, ho, c_out))
  return tuple(jnp.asarray(a, dtype) for a in (x, kernel, g))


def fwd_bwd(op):
  """jit of (x, K, g) -> (sum(op(x, K) * g), (dx, dK))."""
  def loss(x, kernel, g):
    return jnp.sum(op(x, kernel).astype(jnp.float32) * g.astype(jnp.float32))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def time_fns(fns, args, runs):
  """Median seconds per call of each fn, timed round-robin after a warm-up."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = {name: [] for name in fns}
  for _ in range(runs):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


def pieces(kind, x, kernel, g):
  """{piece: (fast_conv op, args)} for one stride-2 ('s2') or transposed ('t') layer."""
  if kind == "s2":
    return {"fwd": ("s2", (x, kernel)), "dx": ("t", (g, kernel)),
            "dk": ("dk", (x, g, kernel.shape))}
  return {"fwd": ("t", (x, kernel)), "dx": ("s2", (g, kernel)),
          "dk": ("dk", (g, x, kernel.shape))}


def main_pieces(args, dtype):
  methods = ("xla", "phase", "matmul")
  print(f"{'layer':<13}{'piece':<6}{'op':<4}" + "".join(f"{m + ' (s)':>12}" for m in methods)
        + "  auto")
  total = {"auto": 0.0, "best": 0.0}
  for name, kind, h, c_in, c_out in MODELS[args.model]:
    if kind == "s1":
      continue
    x, kernel, g = make_inputs(kind, h, c_in, c_out, args.batch, dtype)
    for piece, (op, op_args) in pieces(kind, x, kernel, g).items():
      fns = {m: jax.jit(functools.partial(
          lambda m, op, a, b: fast_conv.run_piece(op, m, a, b, *op_args[2:]), m, op))
             for m in methods}
      secs = time_fns(fns, op_args[:2], args.runs)
      auto = fast_conv._method(op, "auto", *op_args[:2], kernel.shape[0])
      total["auto"] += secs[auto]
      total["best"] += min(secs.values())
      print(f"{name:<13}{piece:<6}{op:<4}" + "".join(f"{secs[m]:>12.4f}" for m in methods)
            + f"  {auto}{'' if secs[auto] <= 1.1 * min(secs.values()) else ' (slower)'}",
            flush=True)
  print(f"total: auto {total['auto']:.3f} s, best per piece {total['best']:.3f} s")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64, help="Batch size of every conv.")
  parser.add_argument("--runs", type=int, default=5,
                      help="Timed runs per conv and form (the median is reported).")
  parser.add_argument("--dtype", default="f32", choices=("f32", "bf16"),
                      help="Computation dtype.")
  parser.add_argument("--impls", default="xla,fast,matmul",
                      help="Comma-separated forms to time: xla (stock convs), fast "
                      "(fast_conv, form 'auto'), matmul (fast_conv, form 'matmul').")
  parser.add_argument("--pieces", action="store_true",
                      help="Instead time each piece (forward, input gradient, kernel "
                      "gradient) with each fast_conv method, marking the one 'auto' picks.")
  parser.add_argument("--model", default="paper64", choices=sorted(MODELS),
                      help="Whose conv shapes: the paper's 64x64 model or the default 32x32 one.")
  args = parser.parse_args()
  dtype = {"f32": jnp.float32, "bf16": jnp.bfloat16}[args.dtype]
  if args.pieces:
    return main_pieces(args, dtype)
  impls = args.impls.split(",")

  print(f"backend={jax.default_backend()} devices={jax.devices()} "
        f"batch={args.batch} dtype={args.dtype} median of {args.runs} runs")
  header = f"{'layer':<13}{'kind':<5}{'shape':<22}" + "".join(
      f"{i + ' (s)':>11}" for i in impls) + (
          f"{'speedup':>9}" if impls[:2] == ["xla", "fast"] else "")
  print(header)
  print("-" * len(header))
  totals = dict.fromkeys(impls, 0.0)
  for name, kind, h, c_in, c_out in MODELS[args.model]:
    inputs = make_inputs(kind, h, c_in, c_out, args.batch, dtype)
    ho = 2 * h if kind == "t" else h // int(kind[1])
    shape = f"{h}x{h}x{c_in}->{ho}x{ho}x{c_out}"
    row = f"{name:<13}{kind:<5}{shape:<22}"
    fns = {i: fwd_bwd(functools.partial(IMPLS[i], kind)) for i in impls}
    secs = time_fns(fns, inputs, args.runs)
    for impl in impls:
      totals[impl] += secs[impl]
      row += f"{secs[impl]:>11.4f}"
    if impls[:2] == ["xla", "fast"]:
      row += f"{secs['xla'] / secs['fast']:>8.1f}x"
    print(row, flush=True)
  row = f"{'total':<40}" + "".join(f"{totals[i]:>11.4f}" for i in impls)
  if impls[:2] == ["xla", "fast"]:
    row += f"{totals['xla'] / totals['fast']:>8.1f}x"
  print(row)


if __name__ == "__main__":
  main()
