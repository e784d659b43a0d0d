"""One trainer per workdir: a lock file naming its holder.

``workdir/lock.json`` holds ``{"host", "pid", "started"}`` of the trainer that
owns the workdir. A second trainer refuses to start (one line naming the
holder), because two trainers on one workdir delete each other's in-flight
saves and overwrite each other's steps. A lock left by a dead process on this
host (kill -9, a crash) is taken over with a warning; a lock from another host
can't be checked from here, so the message says how to remove it by hand.

The lock is created with ``O_CREAT | O_EXCL``, so of two trainers starting at
once exactly one wins, also on a shared file system that honours O_EXCL.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from typing import Optional

from absl import logging
from vaegan_jax.runtime.errors import UserError

LOCK_NAME = "lock.json"


class WorkdirLockedError(UserError, RuntimeError):
  """Another live trainer holds the workdir (one-line message naming it)."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


class WorkdirLock:
  """Context manager: ``with WorkdirLock(workdir): train...``.

  Raises WorkdirLockedError on entry when a live process holds the lock.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    self._held = False

  def acquire(self) -> None:
    for _ in range(3):  # a takeover can race with another starter
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self.info, f)
      self._held = True
      return
    raise WorkdirLockedError(f"Could not take the lock {self.path}; another trainer is "
                             "starting on this workdir.")

  def _take_over_if_stale(self) -> None:
    holder = _read(self.path)
    if holder is None:  # being written right now, or garbage
      time.sleep(0.2)
      holder = _read(self.path)
    if holder is None:
      logging.warning("Unreadable lock %s; taking it over.", self.path)
    elif holder.get("host") != self.info["host"]:
      raise WorkdirLockedError(
          f"The workdir is in use by pid {holder.get('pid')} on host {holder.get('host')} "
          f"(since {holder.get('started')}); stop that trainer or use another --workdir "
          f"(if it is gone, delete {self.path}).")
    elif (_alive(int(holder.get("pid", -1))) and
          int(holder.get("pid", -1)) != self.info["pid"]):
      raise WorkdirLockedError(
          f"The workdir is in use by another trainer, pid {holder['pid']} on this host "
          f"(since {holder.get('started')}); stop it or use another --workdir.")
    else:
      logging.warning("Taking over the stale lock of pid %s (started %s), which is no longer "
                      "running.", holder.get("pid"), holder.get("started"))
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass

  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    holder = _read(self.path)
    if holder and holder.get("pid") == self.info["pid"] and holder.get(
        "host") == self.info["host"]:
      try:
        os.remove(self.path)
      except OSError as e:
        if e.errno != errno.ENOENT:
          logging.warning("Could not remove the lock %s: %s", self.path, e)

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
