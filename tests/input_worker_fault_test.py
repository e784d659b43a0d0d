"""Input worker processes and their trainer, killed for real (issue 21, section 1; slow).

* A worker killed with SIGKILL (as the kernel's OOM killer does): the trainer ends
  with one ``error:`` line naming what happened and the fix, the step it had reached
  saved, exit code 1, and no worker or shared-memory segment left behind.
* The trainer killed with SIGKILL: its workers exit by themselves (each polls its
  parent once a second), instead of living on re-parented to pid 1.
Both wait on events (a checkpoint, a process gone) with generous bounds, so a
loaded machine makes them slower, not failing.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from vaegan_jax import sampling
from vaegan_jax.runtime import checkpoint

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=experiments/configs/tiny.py", "--config.model.conv_impl=xla",
         "--config.data.worker_processes=2", "--config.num_train_steps=100000",
         "--config.checkpoint_every=5", "--config.log_every=5", "--config.sample_every=100000"]


def _children(pid):
  """Pids whose parent is ``pid`` (from /proc, no psutil)."""
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          stat = f.read()
      except OSError:
        continue
      fields = stat[stat.rindex(")") + 2:].split()
      if int(fields[1]) == pid and fields[0] != "Z":
        out.append(int(entry))
  return out


def _cmdline(pid):
  try:
    with open(f"/proc/{pid}/cmdline") as f:
      return f.read().replace("\0", " ")
  except OSError:
    return ""


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"
  except OSError:
    return False


def _start(wd):
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", f"--workdir={wd}", *FLAGS],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  while not checkpoint._all_steps(wd):  # training is under way
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() - t0 < 600, "no checkpoint within 600 s"
    time.sleep(0.2)
  workers = [p for p in _children(proc.pid) if "multiprocessing.spawn" in _cmdline(p)]
  assert len(workers) == 2, [(p, _cmdline(p)) for p in _children(proc.pid)]
  return proc, workers


def _wait_gone(pids, timeout=120):
  t0 = time.time()
  while any(_alive(p) for p in pids):
    assert time.time() - t0 < timeout, [p for p in pids if _alive(p)]
    time.sleep(0.2)


def _shm():
  return {f for f in os.listdir("/dev/shm") if f.startswith("psm_")} if os.path.isdir(
      "/dev/shm") else set()


def test_a_killed_worker_ends_the_run_in_one_line_with_the_step_saved(tmp_path):
  before = _shm()
  wd = str(tmp_path)
  proc, workers = _start(wd)
  everyone = _children(proc.pid)
  os.kill(workers[0], signal.SIGKILL)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 1, err[-3000:]
  lines = [l for l in err.splitlines() if l.strip()]
  assert lines[-1].startswith("error: An input worker process died (exit code -9: killed"), lines[-5:]
  assert "--config.data.worker_processes=1" in lines[-1]
  assert sum(l.startswith("error:") for l in lines) == 1 and "Traceback" not in err, err[-3000:]
  assert "leaked shared_memory" not in err
  saved = int(lines[-1].split("is saved (checkpoint ")[1].rstrip(")."))
  assert saved in checkpoint._all_steps(wd)
  state, _ = sampling.restore_for_inference(wd)  # the saved step restores and is the newest
  assert int(state.step) == saved
  _wait_gone(everyone)  # the other worker and the resource tracker
  assert _shm() <= before


def test_workers_exit_when_their_trainer_is_killed(tmp_path):
  proc, workers = _start(str(tmp_path))
  os.kill(proc.pid, signal.SIGKILL)
  proc.communicate(timeout=60)
  _wait_gone(workers)
