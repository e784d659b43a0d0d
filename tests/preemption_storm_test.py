"""A storm of preemptions (issue 21, section 2; slow): a run stopped again and again at
random moments (before its first step, during saves, during evaluations, mid-run),
by SIGTERM and by kill -9, ends bitwise where an uninterrupted run ends, and no
stop loses more than the steps in flight.

SIGTERM: every cycle exits 0 and the step it names is the newest checkpoint (nothing
lost). kill -9 with a checkpoint every step: the newest checkpoint is at most 2 steps
behind the last step the trainer logged (the state of step s is saved once step s+1's
loss is seen finite, and that save may be in flight). Limits wait on events (a log
line, a checkpoint, an exit) with bounds of minutes, so a loaded machine slows the
test down without failing it.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vaegan_jax import sampling
from vaegan_jax.runtime import checkpoint

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 400
EVAL_EVERY = 50
FLAGS = ["--config=experiments/configs/tiny.py", "--config.model.conv_impl=xla",
         f"--config.num_train_steps={TOTAL}", "--config.log_every=1",
         "--config.sample_every=100000", f"--config.eval_every={EVAL_EVERY}",
         "--config.eval_num=64"]


def _spawn(wd, *extra):
  return subprocess.Popen([sys.executable, "-m", "experiments.train", f"--workdir={wd}", *FLAGS,
                           *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)


def _read_until(proc, predicate, timeout=600):
  """Reads stderr lines until ``predicate(line)``; returns (that line or None at exit, lines)."""
  lines, t0 = [], time.time()
  while time.time() - t0 < timeout:
    line = proc.stderr.readline()
    if not line:
      return None, lines
    lines.append(line)
    if predicate(line):
      return line, lines
  raise TimeoutError(f"no matching line within {timeout} s")


def _newest(wd):
  steps = checkpoint._all_steps(wd)
  return steps[-1] if steps else 0


def _assert_bitwise(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_storm_of_sigterms_and_kill9s_ends_bitwise_where_an_uninterrupted_run_does(tmp_path):
  rng = random.Random(0)
  wd, ref = str(tmp_path / "stormed"), str(tmp_path / "ref")
  where = {"start": 0, "save": 0, "eval": 0, "mid": 0}
  for cycle in range(20):
    kill9 = cycle >= 10
    before = _newest(wd)
    assert before < TOTAL - 20, (cycle, before)  # room left for every cycle
    every = 1 if kill9 else 4  # checkpoint_every
    proc = _spawn(wd, f"--config.checkpoint_every={every}")
    # At most 3 evaluation cycles: each runs up to the next multiple of EVAL_EVERY.
    moment = rng.choice(["start", "save", "mid"] + (["eval"] if where["eval"] < 3 else []))
    # Step lines read "] step N ..."; an evaluation runs right after the line of a step
    # that is a multiple of EVAL_EVERY, a save after a multiple of checkpoint_every.
    target = before + rng.randint(1, 12)
    multiple = {"save": every, "eval": EVAL_EVERY, "mid": 1}.get(moment)
    if moment == "start":  # right after the restart, before or at its first step
      m, lines = _read_until(proc, lambda l: "Training vaegan" in l)
    else:
      m, lines = _read_until(proc, lambda l: any(
          int(x) >= target and int(x) % multiple == 0
          for x in re.findall(r"\] step (\d+) (?!classifier)", l)))
    assert m is not None, "".join(lines)[-3000:]
    if moment == "mid":
      time.sleep(rng.uniform(0.0, 0.2))
    where[moment] += 1
    if kill9:
      proc.kill()
      rest = proc.communicate(timeout=60)[1]
      logged = [int(x) for x in re.findall(r"\] step (\d+) (?!classifier)", "".join(lines) + rest)]
      if logged:
        assert _newest(wd) >= max(logged) - 2, (cycle, moment, max(logged), _newest(wd))
    else:
      proc.send_signal(signal.SIGTERM)
      rest = proc.communicate(timeout=600)[1]
      err = "".join(lines) + rest
      assert proc.returncode == 0, err[-3000:]
      stopped = re.search(r"stopped after step (\d+), checkpoint (\d+) saved", err)
      if stopped:
        assert int(stopped.group(1)) == int(stopped.group(2)) == _newest(wd), err[-2000:]
      else:
        assert re.search(r"Stopped( \(\w+\))? before the first step|Preempted while training",
                         err), err[-2000:]
      assert _newest(wd) >= before  # nothing lost
    print(f"cycle {cycle}: {'kill -9' if kill9 else 'SIGTERM'} at {moment} (target {target}), "
          f"checkpoints {before} -> {_newest(wd)}")
  assert sum(where.values()) == 20 and min(where.values()) >= 1, where
  final = _spawn(wd, "--config.checkpoint_every=4")
  err = final.communicate(timeout=900)[1]
  assert final.returncode == 0, err[-3000:]
  straight = _spawn(ref, "--config.checkpoint_every=4")
  err = straight.communicate(timeout=900)[1]
  assert straight.returncode == 0, err[-3000:]
  a, _ = sampling.restore_for_inference(wd)
  b, _ = sampling.restore_for_inference(ref)
  assert int(a.step) == int(b.step) == TOTAL
  _assert_bitwise(a, b)
