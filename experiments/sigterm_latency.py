r"""Measures SIGTERM-to-exit of the trainer: the time a preempted run needs to save.

  python -m experiments.sigterm_latency --json_out=/tmp/sigterm.json
  python -m experiments.sigterm_latency --rows=paper64 --trials=1

Each trial starts ``experiments.train`` in a fresh workdir, waits until
``--after_steps`` steps are logged, sleeps a random part of a step (so the
signal lands mid-step, the common case), sends SIGTERM and times the exit.
It checks that the process exited 0 and that the checkpoint it reports is on
disk. Rows:
  * ``digits``: the default config (32x32x1, narrow networks), 1 process;
  * ``paper64``: the paper's 64x64x3 CelebA model (``celeba_vaegan.py`` with
    ``data.name=folder``) on a folder of random 64x64 images made here, 1 process;
  * ``two_process``: the tiny config on two ``jax.distributed`` processes
    (gloo on 127.0.0.1), SIGTERM to process 1 only.
A scheduler's grace period is typically 30 s; the table says which rows fit.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order
from PIL import Image

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["digits", "paper64", "two_process"], "Rows to measure.")
flags.DEFINE_integer("trials", 2, "Trials per row.")
flags.DEFINE_integer("after_steps", 2, "Logged steps before the signal.")
flags.DEFINE_float("grace_s", 30.0, "The grace period the table compares with.")
flags.DEFINE_float("timeout_s", 600.0, "Give up on a trial (kill -9) after this long.")
flags.DEFINE_integer("seed", 0, "Seed of the random delays.")
flags.DEFINE_string("json_out", None, "Write the results here as JSON.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEP = re.compile(r"\] step (\d+) ")


def _random_folder(root: str, n: int = 160) -> str:
  rng = np.random.default_rng(0)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        os.path.join(root, f"{i:03d}.png"))
  return root


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _commands(row: str, workdir: str, tmp: str) -> tuple[list[list[str]], list[dict]]:
  cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}"]
  # After --config=..., which they override.
  overrides = ["--config.num_train_steps=1000000", "--config.log_every=1",
               "--config.sample_every=1000000", "--config.checkpoint_every=1000000",
               "--config.eval_every=0"]
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
  if row == "digits":
    return [cmd + overrides], [env]
  if row == "paper64":
    folder = os.path.join(tmp, "images")
    os.makedirs(folder, exist_ok=True)
    _random_folder(folder)
    return [cmd + ["--config=experiments/configs/celeba_vaegan.py", "--config.data.name=folder",
                   f"--config.data.folder={folder}"] + overrides], [env]
  if row == "two_process":
    port = _free_port()
    env2 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1",
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    cmds = [cmd + ["--config=experiments/configs/tiny.py", "--config.model.conv_impl=xla",
                   f"--jax_coordinator=127.0.0.1:{port}", "--num_processes=2",
                   f"--process_id={i}"] + overrides for i in range(2)]
    return cmds, [env2, env2]
  raise app.UsageError(f"Unknown row {row!r}; use digits, paper64 or two_process.")


def _trial(row: str, rng: random.Random) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "wd")
    cmds, envs = _commands(row, workdir, tmp)
    logs = [open(os.path.join(tmp, f"log{i}.txt"), "w+") for i in range(len(cmds))]
    procs = [subprocess.Popen(c, cwd=REPO, env=e, stdout=subprocess.DEVNULL, stderr=log)
             for c, e, log in zip(cmds, envs, logs)]
    t_start, steps, times = time.time(), [], []
    while time.time() - t_start < FLAGS.timeout_s:
      logs[0].seek(0)
      steps = [int(m.group(1)) for m in _STEP.finditer(logs[0].read())]
      if len(steps) >= FLAGS.after_steps + 1 or any(p.poll() is not None for p in procs):
        break
      if steps and (not times or times[-1][0] != steps[-1]):
        times.append((steps[-1], time.time()))
      time.sleep(0.05)
    step_s = (times[-1][1] - times[0][1]) / max(1, times[-1][0] - times[0][0]) \
        if len(times) > 1 else float("nan")
    delay = rng.uniform(0, step_s if np.isfinite(step_s) else 0.5)
    time.sleep(delay)
    t0 = time.time()
    target = procs[1] if row == "two_process" else procs[0]
    target.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
      try:
        codes.append(p.wait(timeout=max(1.0, FLAGS.timeout_s - (time.time() - t0))))
      except subprocess.TimeoutExpired:
        p.kill()
        codes.append(p.wait())
    exit_s = time.time() - t0
    logs[0].seek(0)
    text = logs[0].read()
    m = re.search(r"stopped after step (\d+), checkpoint (\d+) saved", text)
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                   if d.isdigit()) if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    ok = all(c == 0 for c in codes) and m is not None and saved and saved[-1] == int(m.group(1))
    for log in logs:
      log.close()
    return dict(row=row, exit_s=exit_s, step_s=step_s, delay_s=delay, exit_codes=codes,
                stopped_step=int(m.group(1)) if m else None, ok=bool(ok),
                fits_grace=bool(ok and exit_s <= FLAGS.grace_s))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  rng = random.Random(FLAGS.seed)
  results = []
  print(f"{'row':<12} {'step s':>7} {'SIGTERM->exit s':>16} {'exit codes':>11} {'saved':>6} "
        f"{'fits ' + str(int(FLAGS.grace_s)) + ' s':>9}")
  for row in FLAGS.rows:
    for _ in range(FLAGS.trials):
      r = _trial(row, rng)
      results.append(r)
      print(f"{row:<12} {r['step_s']:7.2f} {r['exit_s']:16.1f} {str(r['exit_codes']):>11} "
            f"{str(r['ok']):>6} {str(r['fits_grace']):>9}", flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(dict(grace_s=FLAGS.grace_s, results=results), f, indent=1)


if __name__ == "__main__":
  cli.run(main)
