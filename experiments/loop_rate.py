r"""The training loop's own rate, against the step's rate that the benchmark times.

  python -m experiments.loop_rate --rows=default32_vaegan --steps_per_dispatch=1,10
  python -m experiments.loop_rate --rows=paper64_vaegan --dtype=bfloat16 --batch_size=256 \
      --worker_processes=8 --steps=400 --json_out=/tmp/loop.json

Each row runs ``train.train_and_evaluate`` (the real loop: input pipeline,
prefetch, stop agreement, in-flight bound, log lines, checkpoint at the end) in
a temporary workdir, with evaluations and grids off, and reads the loop's
images/s from its log windows, skipping the first window (it holds the
compile). The digits rows read the embedded digits; the paper64 rows read
fake CelebA-format files (178x218 JPEGs in the official zip layout, decoded,
cropped and flipped on the fly), so the input pipeline is the real one. Each
row also times the bare pmapped step on device-resident data in the same
process (``experiments.benchmark``'s method), so the two rates share a device.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import flags
from absl import logging

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order

from experiments import rows
from vaegan_jax import train
from vaegan_jax.data import testing as data_testing

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["default32_vaegan"], "Rows: default32_<kind> or paper64_<kind>.")
flags.DEFINE_list("steps_per_dispatch", ["1", "10"], "Values of config.steps_per_dispatch.")
flags.DEFINE_integer("steps", 1000, "Training steps per loop run (log windows of steps / 5).")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_integer("worker_processes", 0, "config.data.worker_processes (JPEG decoding).")
flags.DEFINE_integer("fake_images", 4096, "Fake CelebA-format files for the paper64 rows.")
flags.DEFINE_integer("step_timing_steps", 30, "Timed bare steps for the step rate.")
flags.DEFINE_string("json_out", None, "Write the results here as JSON.")


def row_config(name: str, manual_dir: str | None):
  """The row's config, run as the trainer's loop with FLAGS.steps steps and 5 log windows."""
  c = rows.row_config(name, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype)
  c.eval_every = 0
  c.sample_every = 10**9
  c.num_train_steps = FLAGS.steps
  c.log_every = max(1, FLAGS.steps // 5)
  c.checkpoint_every = FLAGS.steps
  c.data.worker_processes = FLAGS.worker_processes
  if name.startswith("paper64"):
    c.data.manual_dir = manual_dir
    c.data.eval_split = "train"  # the fake files are all in the train split
  return c


def step_rate(config) -> float:
  """Images/s of the bare pmapped step on device-resident data (the benchmark's rate)."""
  run, _ = rows.build_step(config)
  times = rows.time_calls(run, FLAGS.step_timing_steps, warmup=3)
  return config.batch_size / float(np.median(times))


def loop_rate(config, workdir: str) -> dict:
  """The loop's images/s (median of the log windows after the first) and input wait."""
  t = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - t
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  lines = [l for l in lines if "images_per_sec" in l][1:]
  return dict(loop_images_per_s=float(np.median([l["images_per_sec"] for l in lines])),
              loop_windows=len(lines), wall_s=wall,
              input_wait_fraction=float(np.max([l.get("input_wait_fraction", np.nan)
                                                for l in lines])))


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    manual = None
    if any(r.startswith("paper64") for r in FLAGS.rows):
      manual = data_testing.write_fake_celeba(os.path.join(tmp, "celeba"), FLAGS.fake_images)
    for name in FLAGS.rows:
      bare = step_rate(row_config(name, manual))
      for k in FLAGS.steps_per_dispatch:
        c = row_config(name, manual)
        c.steps_per_dispatch = int(k)
        r = loop_rate(c, os.path.join(tmp, f"{name}_k{k}"))
        r.update(row=name, steps_per_dispatch=int(k), dtype=FLAGS.dtype, batch=c.batch_size,
                 worker_processes=FLAGS.worker_processes, step_images_per_s=bare,
                 loop_over_step=r["loop_images_per_s"] / bare)
        rows.append(r)
        logging.info("%s k=%s: loop %.0f img/s, step %.0f img/s (%.1f %%), input wait <= %.1f %%",
                     name, k, r["loop_images_per_s"], bare, 100 * r["loop_over_step"],
                     100 * r["input_wait_fraction"])
  head = (f"{'row':<22} {'k':>3} {'dtype':>8} {'batch':>5} {'loop img/s':>10} "
          f"{'step img/s':>10} {'loop/step':>9} {'input wait':>10}")
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}\n{head}\n{'-' * len(head)}")
  for r in rows:
    print(f"{r['row']:<22} {r['steps_per_dispatch']:>3} {r['dtype']:>8} {r['batch']:>5} "
          f"{r['loop_images_per_s']:>10.0f} {r['step_images_per_s']:>10.0f} "
          f"{100 * r['loop_over_step']:>8.1f}% {100 * r['input_wait_fraction']:>9.1f}%")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(dict(device=jax.devices()[0].device_kind, device_count=jax.device_count(),
                     backend=jax.default_backend(), jax_version=jax.__version__, rows=rows),
                f, indent=2)


if __name__ == "__main__":
  cli.run(main)
