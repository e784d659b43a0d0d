"""Transparent huge pages for XLA:CPU's host buffers (Linux, glibc).

XLA:CPU allocates a step's buffers afresh on every execution, and glibc hands
large blocks back to the kernel on free. With 4 KiB pages the kernel faults and
zeroes every page again each step: the paper's 64x64 VAE-GAN step at batch 64
took 2.7 M page faults and ~7 s of system time per step on 2 cores. glibc's
``glibc.malloc.hugetlb=1`` tunable makes malloc ask for transparent huge pages
(2 MiB): ~45x fewer faults and an 11 % faster step (9.1 -> 8.1 s, see
docs/performance.md).

glibc reads tunables only when a process starts, so the binaries call
``reexec_with_hugepages()`` first thing: it re-executes the same command line
once with the tunable added to ``GLIBC_TUNABLES`` (same PID, so signals and
pipes are unaffected). It does nothing off Linux/glibc, when transparent huge
pages are disabled, when the tunable is already set, or when
``VAEGAN_HUGEPAGES=0``.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_available() -> bool:
  try:
    with open(_THP) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def hugepages_env(environ=None) -> dict | None:
  """The environment to re-exec with, or None when nothing should change."""
  environ = dict(os.environ if environ is None else environ)
  if environ.get("VAEGAN_HUGEPAGES", "1") == "0":
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or not _thp_available():
    return None
  environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  return environ


def reexec_with_hugepages() -> None:
  """Re-executes this process's command line once with the tunable set."""
  env = hugepages_env()
  argv = getattr(sys, "orig_argv", None)
  if env is None or not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)


def active() -> bool:
  return TUNABLE in os.environ.get("GLIBC_TUNABLES", "")
