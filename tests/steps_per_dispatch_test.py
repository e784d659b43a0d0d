"""config.steps_per_dispatch: k steps in one lax.scan equal k single steps.

References are independent: the k = 1 path (one pmapped ``train_step`` per
batch) and ``train_step`` called k times by hand.

Not bit for bit: XLA compiles the scan's body as a loop computation and fuses
it otherwise than the single step (the transposed convs' kernel gradients
round differently), so a block and its steps differ by float32 rounding,
which RMSProp's normalisation enlarges where gradients are tiny: measured here
(tiny config, 8 devices), a block of 3 steps 4.8e-5 and 16 steps with k = 3 or
4 1.5e-4 relative to each parameter leaf's largest value (unrolled, 9.9e-7 and
2.7e-6). With a fixed k,
resuming is exact: the blocks are a function of the step alone (they end on
every checkpoint), so a resumed run dispatches the same blocks.
"""

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from vaegan_jax import sampling
from vaegan_jax import train
from vaegan_jax import train_config
from vaegan_jax import train_step
from vaegan_jax.runtime import parallel


def _config(**kw):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.log_every = 4
  c.sample_every = 8
  c.checkpoint_every = 8
  for k, v in kw.items():
    c[k] = v
  return c


def _assert_state_equal(a, b, rtol=0.0):
  def check(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if rtol:  # relative to each leaf's scale: tiny values carry no meaning alone
      np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(y).max() + 1e-12))
    else:
      np.testing.assert_array_equal(x, y)
  for group in ("params", "opt_state", "batch_stats"):
    jax.tree.map(check, getattr(a, group), getattr(b, group))
  np.testing.assert_array_equal(a.rng, b.rng)
  assert int(a.step) == int(b.step)


def _max_rel_diff(a, b) -> float:
  d = jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max() /
                                      (np.abs(np.asarray(y)).max() + 1e-12)), a.params, b.params)
  return max(jax.tree.leaves(d))


@pytest.mark.slow  # 11 s; the default suite compares whole runs (blocks vs single steps)
def test_a_block_equals_its_steps_one_by_one_on_8_devices():
  c = _config()
  state = train_step.create_train_state(c, jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  xs = [rng.uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32) for _ in range(3)]
  one = train_step.make_pmapped_step(c, donate=False)
  block = train_step.make_pmapped_step(c, donate=False, block=True)
  r1 = parallel.replicate(state)
  metrics1 = []
  for x in xs:
    r1, m = one(r1, parallel.shard({"image": x}))
    metrics1.append(parallel.unreplicate(m))
  rk, mk = block(parallel.replicate(state), parallel.shard_block([{"image": x} for x in xs]))
  print("block vs steps, max relative difference:",
        _max_rel_diff(parallel.unreplicate(rk), parallel.unreplicate(r1)))
  _assert_state_equal(parallel.unreplicate(rk), parallel.unreplicate(r1), rtol=1e-4)
  mk = parallel.unreplicate(mk)
  for i, m in enumerate(metrics1):
    for name, v in m.items():
      np.testing.assert_allclose(mk[name][i], v, rtol=1e-4, atol=1e-6, err_msg=name)


def test_shard_block_gives_each_device_its_slice_of_every_batch():
  n = jax.local_device_count()
  batches = [{"image": np.arange(16 * 2, dtype=np.float32).reshape(16, 2) + 100 * i}
             for i in range(3)]
  blk = np.asarray(parallel.shard_block(batches)["image"])
  assert blk.shape == (n, 3, 16 // n, 2)
  for i, b in enumerate(batches):
    np.testing.assert_array_equal(blk[:, i], np.asarray(parallel.shard(b)["image"]))


def test_dispatch_sizes_end_on_every_boundary():
  c = _config(log_every=6, sample_every=10, checkpoint_every=15, eval_every=0)
  it = train.dispatch_sizes(c, 3, 31, 4)
  ends, s = [], 3
  while s < 31:
    s += next(it)
    ends.append(s)
  assert ends[-1] == 31
  marks = {m for m in range(4, 32) if m % 6 == 0 or m % 10 == 0 or m % 15 == 0}
  assert marks <= set(ends)
  sizes = np.diff([3] + ends)
  assert sizes.max() <= 4 and sizes.min() >= 1
  assert next(it) == 4  # the probe's block


@pytest.mark.slow  # ~17 s; CI runs it in the slow suite
@pytest.mark.parametrize("k", [3])
def test_training_with_blocks_equals_one_step_per_dispatch(tmp_path, k):
  """Same end state up to float32 rounding, same checkpoints, same logged steps and
  values; k = 3 divides none of the boundaries (blocks of 3 and 1)."""
  ref, blk = str(tmp_path / "k1"), str(tmp_path / f"k{k}")
  a = train.train_and_evaluate(_config(num_train_steps=16), ref)
  b = train.train_and_evaluate(_config(num_train_steps=16, steps_per_dispatch=k), blk)
  print(f"k={k} vs k=1 after 16 steps, max relative difference:", _max_rel_diff(b, a))
  _assert_state_equal(b, a, rtol=1e-3)
  assert sorted(os.listdir(os.path.join(ref, "checkpoints"))) == sorted(
      os.listdir(os.path.join(blk, "checkpoints")))
  la = [json.loads(l) for l in open(os.path.join(ref, "metrics.jsonl"))]
  lb = [json.loads(l) for l in open(os.path.join(blk, "metrics.jsonl"))]
  assert [l["step"] for l in la] == [l["step"] for l in lb] == [4, 8, 12, 16]
  for x, y in zip(la, lb):
    for name in ("kl_prior", "llike", "gan_bce", "dis_accuracy"):
      np.testing.assert_allclose(y[name], x[name], rtol=1e-4, err_msg=name)
  assert "input_wait_fraction" in lb[-1] and 0 <= lb[-1]["input_wait_fraction"] <= 1
  assert sorted(os.listdir(os.path.join(ref, "samples"))) == sorted(
      os.listdir(os.path.join(blk, "samples")))
  restored, _ = sampling.restore_for_inference(blk)
  _assert_state_equal(restored, b)


@pytest.mark.slow  # 21 s: three whole runs
def test_resume_with_blocks_is_exact(tmp_path):
  """Stopped at checkpoint 5 (which k = 4 does not divide) and resumed with the
  same k: bit for bit the uninterrupted k = 4 run."""
  ref, wd = str(tmp_path / "ref"), str(tmp_path / "wd")
  c = lambda n: _config(num_train_steps=n, checkpoint_every=5, steps_per_dispatch=4)
  a = train.train_and_evaluate(c(14), ref)
  train.train_and_evaluate(c(5), wd)
  b = train.train_and_evaluate(c(14), wd)
  _assert_state_equal(b, a)


def test_steps_per_dispatch_must_be_positive(tmp_path):
  with pytest.raises(train_config.ConfigError, match="steps_per_dispatch must be positive"):
    train.train_and_evaluate(_config(steps_per_dispatch=0), str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_a_loss_that_goes_bad_inside_a_block_keeps_the_checkpoint_before_it(tmp_path,
                                                                            monkeypatch):
  """Batch 10 is NaN, inside the block 8-12 (k = 4). Step 8's state had a finite
  loss (the block's first), so checkpoint 8 is saved; then the run stops naming step 10."""
  from vaegan_jax import data  # pylint: disable=g-import-not-at-top
  real = data.batch_iterator

  def poisoned(*args, start_step=0, **kw):
    it = real(*args, start_step=start_step, **kw)
    if kw.get("shuffle", True) is False:  # the fixed evaluation batch
      return it
    return ({**b, "image": b["image"] * np.nan} if i == 10 else b
            for i, b in enumerate(it, start=start_step))
  monkeypatch.setattr(data, "batch_iterator", poisoned)
  wd = str(tmp_path)
  with pytest.raises(train.NonFiniteLossError, match="at step 10"):
    train.train_and_evaluate(_config(num_train_steps=16, log_every=16, sample_every=16,
                                     steps_per_dispatch=4), wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["8"]
  state, _ = sampling.restore_for_inference(wd)
  assert int(state.step) == 8
  for leaf in jax.tree.leaves(state.params):
    assert np.isfinite(leaf).all()
