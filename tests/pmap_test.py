"""Data parallelism: a step on 8 devices equals the step on 1 device, same batch."""

import functools

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from vaegan_jax import train_step
from vaegan_jax.runtime import parallel

jax.config.update("jax_default_matmul_precision", "highest")


def _close(a, b, rtol, atol_frac):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    u, v = np.asarray(u), np.asarray(v)
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol_frac * np.abs(v).max() + 1e-30)


@pytest.mark.parametrize("kind", ["vaegan", pytest.param("vae", marks=pytest.mark.slow)])
def test_eight_devices_match_one_device(kind):
  assert jax.local_device_count() == 8, "conftest sets 8 CPU devices"
  c = tiny.get_config()
  c.kind = kind
  c.model.conv_impl = "xla"
  b = 16
  rng = np.random.RandomState(0)
  xs = [rng.uniform(-1, 1, (b, 16, 16, 1)).astype(np.float32) for _ in range(2)]
  state = train_step.create_train_state(c, jax.random.PRNGKey(0))

  one = jax.jit(functools.partial(train_step.train_step, config=c, axis_name=None))
  s1 = state
  for x in xs:
    s1, m1 = one(s1, {"image": x})

  step8 = train_step.make_pmapped_step(c)
  s8 = parallel.replicate(state)
  for x in xs:
    s8, m8 = step8(s8, parallel.shard({"image": x}))
  # Every device holds the same state (gradients and BN statistics are synced).
  for leaf in jax.tree.leaves(s8):
    per_dev = np.asarray(leaf)
    np.testing.assert_array_equal(per_dev, np.broadcast_to(per_dev[:1], per_dev.shape))
  s8 = parallel.unreplicate(s8)

  # RMSProp's nu holds 0.1*g^2 (+0.09*g_prev^2): the synced global gradient.
  _close(s8.opt_state, s1.opt_state, rtol=2e-3, atol_frac=1e-6)
  _close(s8.batch_stats, s1.batch_stats, rtol=1e-4, atol_frac=1e-6)
  _close(s8.params, s1.params, rtol=1e-4, atol_frac=1e-4)
  for k in m1:
    np.testing.assert_allclose(np.asarray(m8[k])[0], m1[k], rtol=1e-4, atol=1e-6)
  assert int(s8.step) == 2


def test_batch_not_divisible_by_devices_is_clear_error():
  with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the 8 devices; use e\.g\. --config\.batch_size=8"):
    parallel.check_batch_size(12)
  assert parallel.check_batch_size(64) == 8


def test_the_training_loop_traces_its_step_once(monkeypatch, tmp_path):
  """The trainer's pmapped step is traced (and compiled) once for a whole run,
  across logging, checkpointing and resuming: no step-dependent Python value
  leaks into its trace."""
  import chex  # pylint: disable=g-import-not-at-top
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train_step, "train_step", chex.assert_max_traces(train_step.train_step, n=1))
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.num_train_steps, c.log_every, c.checkpoint_every, c.sample_every = 5, 2, 2, 100
  c.eval_every = 0
  train.train_and_evaluate(c, str(tmp_path / "wd"))
  # A second trace of the same function would raise; prove the counter is live.
  chex.clear_trace_counter()
  step = train_step.make_pmapped_step(c)
  state = parallel.replicate(train_step.create_train_state(c, jax.random.PRNGKey(0)))
  x = np.zeros((8, 16, 16, 1), np.float32)
  state, _ = step(state, parallel.shard({"image": x}))
  with pytest.raises(AssertionError, match="traced"):
    train_step.make_pmapped_step(c)(state, parallel.shard({"image": x[:, :8, :8]}))
