"""Multi-host: 2 processes (jax.distributed on 127.0.0.1, gloo) == 1 process.

Each process owns one CPU device and reads only its half of every global
batch; the pmap collectives span both processes. Slow: two jax processes
start and compile.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from vaegan_jax import sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=experiments/configs/tiny.py", "--config.model.conv_impl=xla",
         "--config.num_train_steps=6", "--config.checkpoint_every=6",
         "--config.sample_every=6", "--config.log_every=3"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
  return env


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
  r = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={single}"] + FLAGS,
                     cwd=REPO, env=_env(2), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]

  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--workdir={multi}",
       f"--jax_coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"] + FLAGS,
      cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]

  a, _ = sampling.restore_for_inference(single)
  b, _ = sampling.restore_for_inference(multi)
  assert int(a.step) == int(b.step) == 6
  for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(v).max())))
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6),
               a.batch_stats, b.batch_stats)
