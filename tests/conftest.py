"""Test set-up: 8 virtual CPU devices so that pmap is really data-parallel."""

import os

# Must happen before jax initialises its backends. XLA_FLAGS rather than
# chex.set_n_cpu_devices: the trainers that tests start as subprocesses inherit
# the variable, so they see the same 8 devices.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# A fresh evaluation cache (feature classifiers, real-data features) per test
# session: never the user's ~/.cache, never stale entries.
import atexit  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

os.environ["VAEGAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="vaegan_test_cache_")
atexit.register(shutil.rmtree, os.environ["VAEGAN_CACHE_DIR"], True)

# JAX's persistent compilation cache, fresh per session: many tests (and the
# trainers they start as subprocesses, which inherit the variables) compile the
# same small models; a hit loads the executable instead of compiling it again.
_jax_cache = tempfile.mkdtemp(prefix="vaegan_test_jax_cache_")
atexit.register(shutil.rmtree, _jax_cache, True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session", autouse=True)
def _quiet_io_hooks():
  """What the binaries' entry point (``cli.run``) installs: in-process runs here
  see the same console (Orbax's closed-loop callbacks after a failed save are
  not reported as unraisable exceptions)."""
  from vaegan_jax.runtime import io_errors  # pylint: disable=g-import-not-at-top
  io_errors.install_quiet_hooks()
