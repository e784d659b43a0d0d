r"""Benchmarks the train step: images/s, compile time, FLOPs, FLOP/s vs matmul peak, memory.

  python -m experiments.benchmark --json_out=/tmp/bench.json
  python -m experiments.benchmark --rows=paper64_vaegan --dtype=bfloat16 --batch_size=256

For each row it times the full pmapped train step (the one training runs)
over ``--steps`` steps after warm-up and reports the median and spread. FLOPs
are the model's: XLA:CPU's cost analysis of the same step compiled with stock
convs (``conv_impl='xla'``), also on GPU (whose cost analysis skips cuDNN
convs), so a fast form's own overhead never counts as
work; the fraction is taken against a jitted square matmul timed in the same
run. On Linux it re-executes itself once with glibc's transparent-huge-page
tunable, as training does (``vaegan_jax/cpu/host_memory.py``; ``VAEGAN_HUGEPAGES=0``
turns that off). It also times the
routed single-backward step against the naive step (three
``jax.value_and_grad`` calls, one per network), and the input pipeline alone.
Needs no TensorFlow, so it runs on the GPU machine too.

With ``--torch`` (default) and torch installed, each row also times the
PyTorch reference of the same model (``experiments/torch_reference.py``: same
layers, losses, routing and batch composition, one routed backward, torch's
RMSprop) in the same run, right after ours, on the same device (cuda when JAX's
backend is gpu, else cpu), batch and dtype, over the same ``--steps`` after
``--warmup``; the row gets ``torch_step_s_median``, ``torch_images_per_s`` and
``ours_over_torch`` = our step time / torch's (> 1: ours is slower). Without
torch the column stays blank. Torch runs in a subprocess (this process never
imports it): there it has no JAX threads or buffers beside it and, on CPU, not
the glibc huge-page tunable this process re-executes itself with for XLA
(``--torch_hugepages`` keeps it; it made torch's step slower). On a GPU, JAX
here still holds its preallocated share (75 %) of the GPU's memory while torch
runs; a torch out-of-memory error lands in the row's ``torch_error`` (then set
``XLA_PYTHON_CLIENT_MEM_FRACTION``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from PIL import Image

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order

from experiments import rows
from experiments.configs import celeba_vaegan
from experiments.configs import default
from experiments.configs import folder
from vaegan_jax import data
from vaegan_jax import layers
from vaegan_jax import reference
from vaegan_jax import train_step
from vaegan_jax.cpu import host_memory
from vaegan_jax.data import testing as data_testing
from vaegan_jax.runtime import parallel

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["paper64_vaegan", "paper64_vae", "paper64_gan",
                           "paper64_vae_dis_l", "default32_vaegan"], "Rows to time.")
flags.DEFINE_integer("steps", 20, "Timed steps per row (after warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_enum("conv_impl", "auto", ["auto", "xla", "fast"], "Conv implementation.")
flags.DEFINE_bool("naive", True, "Also time the naive three-gradient step (routed rows only).")
flags.DEFINE_integer("naive_steps", 5, "Timed gradient computations for routed vs naive.")
flags.DEFINE_bool("input_pipeline", True, "Also time the input pipeline alone: digits, "
                  "CelebA-format files with threads and with worker processes, and a folder of "
                  "large JPEGs.")
flags.DEFINE_integer("celeba_batches", 16, "Timed batches of the CelebA-format input rows.")
flags.DEFINE_string("json_out", None, "Write the results here as JSON.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference (experiments/torch_reference.py) "
                  "of each row, if torch is importable.")
flags.DEFINE_bool("torch_compile", False, "torch.compile the reference's loss (slow to compile).")
flags.DEFINE_enum("torch_routing", "single", ["single", "three"],
                  "The reference's gradients: one routed backward (ours) or three autograd.grad.")
flags.DEFINE_bool("torch_hugepages", False, "Run the reference with glibc's huge-page tunable "
                  "too (on CPU it made torch's 64x64 step slower: 6.9 vs 4.8 s).")


def row_config(name: str) -> ml_collections.ConfigDict:
  return rows.row_config(name, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
                         conv_impl=FLAGS.conv_impl)


def matmul_rate(dtype: str, n: int | None = None, reps: int = 10) -> float:
  """FLOP/s of a jitted n x n matmul (the machine's practical peak).

  n is 2048 on CPU and 8192 on accelerators, where a 2048 matmul is too short
  to fill the chip. On GPU, float32 matmuls run with XLA's default precision
  (TF32 tensor cores on Ampere and later), as the model's convs do.
  """
  if n is None:
    n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, a).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / float(np.median(times))


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _model_flops(name: str, state, per_dev: dict) -> float:
  """FLOPs of one device's step with stock convs, counted by XLA:CPU.

  XLA's GPU cost analysis does not count convolutions that run as cuDNN
  calls (it reported 13 GFLOP for the 1,177 GFLOP paper64_vaegan step on an
  H200), so the count is always taken from the same step compiled for CPU.
  """
  stock = row_config(name)
  stock.model.conv_impl = "xla"
  cpu = jax.devices("cpu")[0]
  state, per_dev = jax.device_put((state, per_dev), cpu)
  stock_one = jax.jit(functools.partial(train_step.train_step, config=stock, axis_name=None))
  return _flops(stock_one.lower(state, per_dev).compile())


def _memory(compiled) -> float:
  """Peak bytes XLA plans for the step: arguments + outputs + temporaries - aliased."""
  try:
    m = compiled.memory_analysis()
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
                 m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return float("nan")


def bench_row(name: str, peak: float) -> dict:
  config = row_config(name)
  state = train_step.create_train_state(config, jax.random.PRNGKey(0))
  b = config.batch_size
  # FLOPs and memory from the single-device jitted step (what each device runs).
  one = jax.jit(functools.partial(train_step.train_step, config=config, axis_name=None),
                donate_argnums=(0,))
  per_dev = rows.random_batch(config, b // jax.device_count())
  t = time.perf_counter()
  compiled = one.lower(state, per_dev).compile()
  compile_s = time.perf_counter() - t
  # Model FLOPs: XLA's cost analysis of the same step with stock convs, so
  # that a conv form's own extra work (zero taps, padding) never counts.
  flops_compiled = _flops(compiled) * jax.device_count()
  flops = flops_compiled
  if layers.resolve_impl(config.model.conv_impl) != "xla" or jax.default_backend() != "cpu":
    flops = _model_flops(name, state, per_dev) * jax.device_count()

  step = train_step.make_pmapped_step(config)
  replicated = [parallel.replicate(state)]
  batch = parallel.shard(rows.random_batch(config, b))

  def run():
    replicated[0], m = step(replicated[0], batch)
    return m

  jax.block_until_ready(run())  # compile the pmapped step
  times = rows.time_calls(run, FLAGS.steps, FLAGS.warmup)
  med = float(np.median(times))
  row = dict(row=name, kind=config.kind, image_size=config.model.image_size, batch=b,
             dtype=config.model.dtype, step_s_median=med,
             step_s_p10=float(np.percentile(times, 10)),
             step_s_p90=float(np.percentile(times, 90)),
             images_per_s=b / med, compile_s=compile_s, flops_per_step=flops,
             flops_per_step_as_compiled=flops_compiled, glibc_hugepages=host_memory.active(),
             flops_per_s=flops / med, fraction_of_matmul_peak=flops / med / peak,
             peak_memory_gib=_memory(compiled) / 2**30)
  if FLAGS.naive and config.kind in ("vaegan", "vae_dis_l", "gan"):
    row.update(bench_naive(config, state))
  if FLAGS.torch:
    row.update(bench_torch(config, med))
  return row


def torch_version() -> str | None:
  """The installed torch's version, without importing it (None: not installed)."""
  try:
    return importlib.metadata.version("torch")
  except importlib.metadata.PackageNotFoundError:
    return None


def _torch_env(hugepages: bool) -> dict:
  """This process's environment for the torch subprocess: JAX kept off the GPU there,
  and (unless ``hugepages``) without the glibc huge-page tunable that
  ``host_memory`` re-executed this process with for XLA."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if not hugepages:
    kept = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and t != host_memory.TUNABLE]
    if kept:
      env["GLIBC_TUNABLES"] = ":".join(kept)
    else:
      env.pop("GLIBC_TUNABLES", None)
  return env


def run_torch_reference(config, device: str, steps: int, warmup: int, routing: str = "single",
                        compile: bool = False, hugepages: bool = False,  # pylint: disable=redefined-builtin
                        timeout_s: float = 3600) -> dict:
  """Times ``experiments/torch_reference.py`` on ``config`` (its batch and dtype) in a
  subprocess; returns its result dict, or {'error': one line} if it failed."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    cfg, out = os.path.join(tmp, "config.json"), os.path.join(tmp, "torch.json")
    with open(cfg, "w") as f:
      f.write(config.to_json())
    cmd = [sys.executable, "-m", "experiments.torch_reference", "--config_json", cfg,
           "--batch_size", str(config.batch_size), "--dtype", str(config.model.dtype),
           "--device", device, "--steps", str(steps), "--warmup", str(warmup),
           "--routing", routing, "--json_out", out] + (["--compile"] if compile else [])
    try:
      proc = subprocess.run(cmd, cwd=root, env=_torch_env(hugepages), capture_output=True,
                            text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
      return dict(error=f"timed out after {timeout_s:.0f} s")
    if proc.returncode != 0 or not os.path.exists(out):
      lines = [l for l in proc.stderr.splitlines() if l.strip()]
      return dict(error=f"exit {proc.returncode}: {lines[-1][:300] if lines else 'no output'}")
    with open(out) as f:
      return json.load(f)


def bench_torch(config, ours_step_s: float) -> dict:
  """The PyTorch reference's step on the same device, batch and dtype ({} without torch)."""
  if torch_version() is None:
    return {}
  backend = jax.default_backend()
  if backend not in ("cpu", "gpu"):
    return dict(torch_error=f"no torch device for JAX backend {backend!r}")
  r = run_torch_reference(config, "cuda" if backend == "gpu" else "cpu", FLAGS.steps,
                          FLAGS.warmup, FLAGS.torch_routing, FLAGS.torch_compile,
                          FLAGS.torch_hugepages)
  if "error" in r:
    return dict(torch_error=r["error"])
  out = {f"torch_{k}": v for k, v in r.items()
         if k in ("step_s_median", "step_s_p10", "step_s_p90", "images_per_s", "first_step_s",
                  "device", "device_name", "routing", "compile", "num_threads",
                  "peak_memory_gib")}
  out["torch_version"] = r["torch_version"]
  out["torch_glibc_hugepages"] = FLAGS.torch_hugepages and host_memory.active()
  out["ours_over_torch"] = ours_step_s / r["step_s_median"]
  return out


def bench_naive(config, state) -> dict:
  """Routed vs naive: gradient computations only, same inputs, single device."""
  arch_z = config.model.z_dim
  b = config.batch_size // jax.device_count()
  x = jnp.asarray(rows.random_batch(config, b)["image"])
  eps, z_p = train_step.draw_noise(state.rng, state.step, b, arch_z, None)
  from vaegan_jax import models  # pylint: disable=g-import-not-at-top
  nets = models.Networks.create(models.Architecture.from_config(config.model))
  loss_config = train_step.LossConfig.from_config(config)

  routed = jax.jit(lambda p: jax.grad(
      lambda q: train_step.routed_loss(q, state.batch_stats, x, None, eps, z_p, nets=nets,
                                       loss_config=loss_config)[0])(p))
  naive = jax.jit(lambda p: reference.naive_grads(config, p, state.batch_stats, x, eps, z_p))
  out = {}
  for label, fn in (("routed", routed), ("naive", naive)):
    jax.block_until_ready(fn(state.params))
    times = rows.time_calls(lambda: fn(state.params), FLAGS.naive_steps, 1)
    out[f"{label}_grad_s_median"] = float(np.median(times))
  out["naive_over_routed"] = out["naive_grad_s_median"] / out["routed_grad_s_median"]
  return out


def _images_per_s(it, batch_size: int, batches: int) -> float:
  next(it)  # Workers started, first batch read.
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch_size / (time.perf_counter() - t)
  it.close()
  return rate


def bench_input_pipeline(batch_size: int, batches: int = 50) -> list[dict]:
  """Images/s of the input pipeline alone: digits; CelebA-format files (fake
  178x218 JPEGs in the official zip, 64x64 crops with flips) read by grain's
  threads and by worker processes; a folder of 2048x1536 JPEGs (a camera's
  photographs, to 64x64) read by threads."""
  workers = max(1, min(8, os.cpu_count() or 1))
  c = default.get_config()
  rows = [dict(row="input_pipeline_digits", workers=f"{workers} threads", images_per_s=_images_per_s(
      data.batch_iterator(c.data, "train", batch_size, seed=0), batch_size, batches))]
  with tempfile.TemporaryDirectory() as tmp:
    cc = celeba_vaegan.get_config().data
    cc.manual_dir = data_testing.write_fake_celeba(os.path.join(tmp, "manual"), 8 * batch_size)
    for kind, kw in (("threads", {}), ("processes", dict(worker_processes=workers))):
      it = data.batch_iterator(cc, "train", batch_size, seed=0, **kw)
      rows.append(dict(row=f"input_pipeline_celeba64_{kind}", workers=f"{workers} {kind}",
                       images_per_s=_images_per_s(it, batch_size, FLAGS.celeba_batches)))
    fc = folder.get_config().data
    fc.folder = os.path.join(tmp, "photos")
    os.makedirs(fc.folder)
    for i in range(batch_size):  # one frame in memory at a time (9 MB each)
      image, = data_testing.smooth_images(1, seed=i, height=1536, width=2048)
      Image.fromarray(image).save(os.path.join(fc.folder, f"{i:04d}.jpg"), quality=92)
    it = data.batch_iterator(fc, "all", batch_size, seed=0)
    rows.append(dict(row="input_pipeline_folder64_2048px_jpg", workers=f"{workers} threads",
                     images_per_s=_images_per_s(it, batch_size, FLAGS.celeba_batches)))
  return rows


def _fmt(rows: list[dict], peak: float) -> str:
  head = (f"{'row':<34} {'img/s':>8} {'step s (p10-p90)':>20} {'compile s':>9} "
          f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'% peak':>7} {'mem GiB':>8} {'naive/routed':>12} "
          f"{'torch img/s':>11} {'ours/torch':>10}")
  lines = [f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
           f"matmul peak {peak / 1e9:.0f} GFLOP/s ({FLAGS.dtype}), "
           f"glibc huge pages {'on' if host_memory.active() else 'off'}", head, "-" * len(head)]
  for r in rows:
    if "step_s_median" not in r:
      lines.append(f"{r['row']:<34} {r['images_per_s']:>8.0f}   ({r['workers']})")
      continue
    ratio = r.get("naive_over_routed")
    t_rate, t_ratio = r.get("torch_images_per_s"), r.get("ours_over_torch")
    lines.append(
        f"{r['row']:<34} {r['images_per_s']:>8.1f} "
        f"{r['step_s_median']:>7.3f} ({r['step_s_p10']:.3f}-{r['step_s_p90']:.3f}) "
        f"{r['compile_s']:>9.1f} {r['flops_per_step'] / 1e9:>10.1f} "
        f"{r['flops_per_s'] / 1e9:>8.1f} {100 * r['fraction_of_matmul_peak']:>6.1f}% "
        f"{r['peak_memory_gib']:>8.2f} {'' if ratio is None else f'{ratio:.2f}x':>12} "
        f"{'' if t_rate is None else f'{t_rate:.1f}':>11} "
        f"{'' if t_ratio is None else f'{t_ratio:.2f}x':>10}"
        + (f"  torch: {r['torch_error']}" if "torch_error" in r else ""))
  return "\n".join(lines)


def main(argv):
  del argv
  peak = matmul_rate(FLAGS.dtype)
  rows = []
  for name in FLAGS.rows:
    rows.append(bench_row(name, peak))
    print(_fmt(rows[-1:], peak).splitlines()[-1], flush=True)
  if FLAGS.input_pipeline:
    rows.extend(bench_input_pipeline(FLAGS.batch_size))
  print(_fmt(rows, peak))
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(dict(device=jax.devices()[0].device_kind, device_count=jax.device_count(),
                     backend=jax.default_backend(), jax_version=jax.__version__,
                     matmul_peak_flops=peak, dtype=FLAGS.dtype,
                     glibc_hugepages=host_memory.active(), torch_version=torch_version() if FLAGS.torch else None,
                     rows=rows), f, indent=2)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()  # Before JAX allocates anything.
  cli.run(main)
