"""The huge-page re-exec: when it changes the environment, and that it runs the same command."""

import os
import subprocess
import sys

import pytest

from vaegan_jax.cpu import host_memory

linux_glibc = pytest.mark.skipif(host_memory.hugepages_env({}) is None,
                                 reason="needs Linux, glibc and transparent huge pages")


@linux_glibc
def test_adds_the_tunable_and_keeps_others():
  env = host_memory.hugepages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert env["A"] == "b"
  assert host_memory.hugepages_env({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_no_change_when_set_or_opted_out():
  assert host_memory.hugepages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert host_memory.hugepages_env({"VAEGAN_HUGEPAGES": "0"}) is None


@linux_glibc
def test_reexec_runs_the_same_command_once_with_the_tunable():
  code = ("import os, sys; from vaegan_jax.cpu import host_memory; "
          "print('start', sys.argv[1:], flush=True); host_memory.reexec_with_hugepages(); "
          "print('tunables', os.environ.get('GLIBC_TUNABLES'), host_memory.active())")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VAEGAN_HUGEPAGES")}
  r = subprocess.run([sys.executable, "-c", code, "arg"], capture_output=True, text=True,
                     env=env, timeout=60, check=True)
  # Printed once before the re-exec and once after it; the second run has the tunable.
  assert r.stdout.splitlines() == ["start ['arg']", "start ['arg']",
                                   "tunables glibc.malloc.hugetlb=1 True"]


@linux_glibc
def test_no_reexec_for_help_or_an_accelerator():
  assert host_memory.hugepages_env({}, argv=["train.py", "--help"]) is None
  assert host_memory.hugepages_env({}, argv=["train.py", "--helpfull"]) is None
  assert host_memory.hugepages_env({}, argv=["train.py", "--workdir=/tmp/x"]) is not None
  assert host_memory.hugepages_env({"JAX_PLATFORMS": "cuda"}) is None
  assert host_memory.hugepages_env({"JAX_PLATFORMS": "tpu,cpu"}) is None
  assert host_memory.hugepages_env({"JAX_PLATFORMS": "cpu"}) is not None
  assert not host_memory.runs_on_cpu({}, exists=lambda p: p == "/dev/nvidia0")
  assert host_memory.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, exists=lambda p: True)
  assert host_memory.runs_on_cpu({}, exists=lambda p: False)


@linux_glibc
def test_help_is_printed_without_a_reexec():
  code = ("import sys; from vaegan_jax.cpu import host_memory; "
          "print('start', flush=True); host_memory.reexec_with_hugepages(); print('after')")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VAEGAN_HUGEPAGES")}
  r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True,
                     env=env, timeout=60, check=True)
  assert r.stdout.splitlines() == ["start", "after"]
