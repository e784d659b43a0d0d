"""Pieces every training loop here shares: preemption, steps in flight, progress.

``train.py`` (the VAE-GAN) and ``classifier/train.py`` (the Sec. 5.3 and
evaluation-feature classifier) both stop cleanly on SIGTERM/SIGINT through
``StopRequest`` and keep at most two steps in flight through ``InFlight``, so
that a stop request waits for one step, not for hundreds dispatched ahead;
``Progress`` gives both their images/s and ETA.
Checkpoints (``checkpoint.py``), metrics (``metric_writer.py``) and the one
trainer per workdir lock (``workdir_lock.py``) are their own modules.
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import time

import jax
import numpy as np
from absl import logging

from vaegan_jax.runtime import parallel


def unused_accelerator(backend: str, exists=os.path.exists) -> str:
  """A one-line warning when a GPU/TPU is visible but JAX runs on the CPU, else ''.

  JAX warns too, but only once, at backend start-up, among other lines; this
  one names the project's install command. ``JAX_PLATFORMS=cpu`` is a choice.
  """
  if backend != "cpu" or os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
    return ""
  if exists("/dev/nvidiactl") or exists("/dev/nvidia0"):
    return ("An NVIDIA GPU is present but JAX runs on the CPU: install JAX's CUDA build with "
            "pip install -e '.[cuda12]' (or '.[cuda13]'); JAX_PLATFORMS=cpu silences this.")
  if exists("/dev/accel0") or exists("/dev/vfio/0"):
    return ("A TPU is present but JAX runs on the CPU: install JAX's TPU build with "
            "pip install -e '.[tpu]'; JAX_PLATFORMS=cpu silences this.")
  return ""


class Preempted(RuntimeError):
  """A stop request (SIGTERM/SIGINT) ended a loop that another call started (the feature
  classifier trained for an evaluation): a preemption, which binaries end with exit 0."""


class StopRequest:
  """SIGTERM/SIGINT -> a flag checked before every step; all processes agree on it.

  Single process: the local flag. Under ``jax.distributed`` an all-reduce
  (max over every device of every process) of the flag, so that all processes
  stop after the same step and none waits alone in a collective or a
  checkpoint barrier. Each check dispatches its all-reduce and reads the
  previous check's, which finished while the last dispatch ran: the host
  never waits for the step it has just dispatched, and every process reads
  the same answer at the same check, so a stop lands one dispatch later.
  A second SIGINT exits at once (130) without saving; the checkpoints already
  written stay intact (orbax's atomic rename).
  """

  def __init__(self):
    self.requested = False
    self.signal_name = ""
    self._old = {}
    self._in_flight = None  # the last check's all-reduce, read at the next check

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: no signal handling
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      logging.warning("Second SIGINT: exiting now without saving; the last checkpoint "
                      "is kept.")
      logging.flush()
      os._exit(130)  # pylint: disable=protected-access
    if not self.requested:
      logging.warning("%s received: finishing the current step, saving a checkpoint and "
                      "exiting%s.", name,
                      " (Ctrl-C again exits at once, without saving)"
                      if signum == signal.SIGINT else "")
    self.requested, self.signal_name = True, self.signal_name or name

  def agreed(self, replicated) -> bool:
    """Whether every process stops before the next step (same answer on all)."""
    if jax.process_count() == 1:
      return self.requested
    flag = parallel.replicate(np.int32(self.requested))
    previous, self._in_flight = self._in_flight, _agree_fn()(flag, replicated.step)
    if previous is None:
      return False
    agreed = bool(parallel.unreplicate(previous))
    if agreed and not self.requested:
      logging.warning("Another process was asked to stop: saving and exiting.")
      self.requested = True
    return agreed

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    # A nested request (the feature classifier's, inside the trainer's) hands a signal
    # on to the enclosing one: one that came as the inner loop finished is not lost.
    outer = self._old.get(signal.SIGTERM)
    if self.requested and isinstance(getattr(outer, "__self__", None), StopRequest):
      outer.__self__.requested = True
      outer.__self__.signal_name = outer.__self__.signal_name or self.signal_name


@functools.lru_cache(maxsize=None)
def _agree_fn():
  # The state's step is an input so that this runs after the last step.
  return jax.pmap(lambda flag, step: jax.lax.pmax(flag + 0 * step, parallel.AXIS),
                  axis_name=parallel.AXIS)


class InFlight:
  """Bounds the steps dispatched ahead of the device.

  JAX dispatches asynchronously, so without a bound the loop runs hundreds of
  steps ahead and a stop request waits for all of them. Two in flight keep the
  device busy while the host prepares the next step; one when a step is slower
  than ``slow_s``, so a stop waits at most for the step that is running.
  """

  def __init__(self, slow_s: float = 1.0):
    self.slow_s = slow_s
    self._pending = collections.deque()
    self._last_done = None
    self._step_s = 0.0

  def add(self, marker) -> None:
    self._pending.append(marker)
    bound = 1 if self._step_s > self.slow_s else 2
    while len(self._pending) >= bound:
      jax.block_until_ready(self._pending.popleft())
      now = time.time()
      if self._last_done is not None:
        self._step_s = now - self._last_done
      self._last_done = now


class Progress:
  """Images/s and the ETA of each log window; the compiling step does not count.

  Both loops call ``compiled`` after their first step (blocked on) and
  ``window`` at each log line; the rate covers the steps since the last call.
  """

  def __init__(self, start: int, total: int, batch_size: int):
    self.total, self.batch_size = int(total), int(batch_size)
    self._window_start, self._step = time.time(), int(start)
    self._wait_s, self._timed_input, self._compiled = 0.0, False, False

  def waited(self, seconds: float) -> None:
    """Time the loop spent waiting for its input: reported as a fraction of the window."""
    self._wait_s += seconds
    self._timed_input = True

  @property
  def has_compiled(self) -> bool:
    return self._compiled

  def compiled(self, step: int, what: str = "step") -> None:
    self._compiled = True
    logging.info("Compiled and ran %s %d in %.1f s.", what, step, time.time() - self._window_start)
    self._window_start, self._step, self._wait_s = time.time(), int(step), 0.0

  def window(self, step: int) -> tuple[dict, str]:
    """({'images_per_sec': r}, '| r img/s, ETA m min'), or ({}, '') for the compiling step alone.

    With input timed (``waited``), also 'input_wait_fraction': the share of the
    window the loop spent waiting for batches (0 when the input keeps ahead).
    """
    dt, done = time.time() - self._window_start, int(step) - self._step
    wait, self._wait_s = self._wait_s, 0.0
    self._window_start, self._step = time.time(), int(step)
    if done <= 0:
      return {}, ""
    ips = done * self.batch_size / max(dt, 1e-9)
    eta = (self.total - step) * dt / done
    if not self._timed_input:
      return {"images_per_sec": ips}, f"| {ips:.0f} img/s, ETA {eta / 60:.1f} min"
    frac = wait / max(dt, 1e-9)
    return ({"images_per_sec": ips, "input_wait_fraction": frac},
            f"| {ips:.0f} img/s, input wait {100 * frac:.0f}%, ETA {eta / 60:.1f} min")
