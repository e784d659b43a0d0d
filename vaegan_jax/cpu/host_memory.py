"""Transparent huge pages for XLA:CPU's host buffers (Linux, glibc).

XLA:CPU allocates a step's buffers afresh on every execution, and glibc hands
large blocks back to the kernel on free. With 4 KiB pages the kernel faults and
zeroes every page again each step: the paper's 64x64 VAE-GAN step at batch 64
took 2.7 M page faults and ~7 s of system time per step on 2 cores. glibc's
``glibc.malloc.hugetlb=1`` tunable makes malloc ask for transparent huge pages
(2 MiB): ~45x fewer faults and an 11 % faster step (9.1 -> 8.1 s, see
docs/performance.md).

glibc reads tunables only when a process starts, so the binaries that run
steps (``experiments/train.py``, ``experiments/benchmark.py``) call
``reexec_with_hugepages()`` first thing: it re-executes the same command line
once with the tunable added to ``GLIBC_TUNABLES`` (same PID, so signals and
pipes are unaffected). This module is the one place that decides; it does
nothing:
  * off Linux/glibc, or when transparent huge pages are disabled;
  * when the tunable is already set, or with ``VAEGAN_HUGEPAGES=0``;
  * for ``--help``/``-h``/``--helpfull``/``--helpshort`` (nothing will run);
  * when JAX will not run on the CPU: ``JAX_PLATFORMS`` names another platform
    first, or (``JAX_PLATFORMS`` unset) a GPU or TPU device node is present
    (``/dev/nvidia0``, ``/dev/nvidiactl``, ``/dev/accel0``, ``/dev/vfio/0``).
    Deciding this from the environment keeps JAX uninitialised until after
    the re-exec; on an accelerator the host buffers are few and the tunable
    buys nothing.
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


_HELP_FLAGS = ("--help", "-h", "--helpfull", "--helpshort", "--helpxml", "-?")
_ACCELERATOR_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/accel0", "/dev/vfio/0")


def runs_on_cpu(environ=None, exists=os.path.exists) -> bool:
  """Whether JAX will pick the CPU backend, decided without initialising JAX."""
  environ = os.environ if environ is None else environ
  platforms = (environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not any(exists(p) for p in _ACCELERATOR_NODES)


def hugepages_env(environ=None, argv=None) -> dict | None:
  """The environment to re-exec with, or None when nothing should change."""
  environ = dict(os.environ if environ is None else environ)
  if environ.get("VAEGAN_HUGEPAGES", "1") == "0":
    return None
  if any(a in _HELP_FLAGS or a.startswith("--help") for a in (argv or [])[1:]):
    return None
  if not runs_on_cpu(environ):
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
  argv = getattr(sys, "orig_argv", None)
  env = hugepages_env(argv=sys.argv)
  if env is None or not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)


def active() -> bool:
  return TUNABLE in os.environ.get("GLIBC_TUNABLES", "")
