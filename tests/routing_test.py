"""The stop_gradient masks of routing.py: exact forward value, chosen gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegan_jax import routing

CS = (1e-6, 1e-2, 0.25, 0.3, 0.5, 0.9, 2.0)


def _data(seed=0, n=20_000):
  rng = np.random.RandomState(seed)
  # Magnitudes over many binades, both signs, plus exact zeros.
  a = rng.randn(n) * rng.lognormal(0.0, 4.0, n)
  a[:100] = 0.0
  return a.astype(np.float32), rng.randn(n).astype(np.float32)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("c", CS)
def test_scale_grad_forward_is_bit_exact_and_gradient_is_c_times_g(c, jit):
  a, g = _data()
  f = lambda t: routing.scale_grad(t, c)
  if jit:
    f = jax.jit(f)
  out, vjp = jax.vjp(f, jnp.asarray(a))
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), a)
  (grad,) = vjp(jnp.asarray(g))
  np.testing.assert_array_equal(np.asarray(grad), np.float32(c) * g)


def test_the_textbook_form_is_not_bit_exact():
  # Why scale_grad is written as sg(a) + c*(a - sg(a)): c*a + (1-c)*sg(a)
  # rounds twice (this documents the 1-ulp error the exact form removes).
  a, _ = _data()
  c = np.float32(1e-6)
  textbook = c * a + (np.float32(1) - c) * a
  assert np.mean(textbook != a) > 0.01
  assert np.max(np.abs(textbook - a) / np.maximum(np.spacing(np.abs(a)), 1e-45)) <= 1.0


@pytest.mark.parametrize("c", [0.0, 1.0])
def test_scale_grad_special_cases(c):
  a, g = _data(1, 1000)
  out, vjp = jax.vjp(lambda t: routing.scale_grad(t, c), jnp.asarray(a))
  np.testing.assert_array_equal(np.asarray(out), a)
  np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), np.float32(c) * g)


def test_scale_grad_on_a_pytree():
  a, g = _data(2, 300)
  tree = {"w": jnp.asarray(a[:200]).reshape(10, 20), "b": [jnp.asarray(a[200:])]}
  gt = {"w": jnp.asarray(g[:200]).reshape(10, 20), "b": [jnp.asarray(g[200:])]}
  out, vjp = jax.vjp(lambda t: routing.scale_grad(t, 0.3), tree)
  jax.tree.map(np.testing.assert_array_equal, out, tree)
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(u, np.float32(0.3) * v),
               vjp(gt)[0], gt)


@pytest.mark.parametrize("jit", [False, True])
def test_reverse_and_block_grad(jit):
  a, g = _data(3)
  rev = jax.jit(routing.reverse_grad) if jit else routing.reverse_grad
  blk = jax.jit(routing.block_grad) if jit else routing.block_grad
  out, vjp = jax.vjp(rev, jnp.asarray(a))
  np.testing.assert_array_equal(np.asarray(out), a)
  np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), -g)
  out, vjp = jax.vjp(blk, jnp.asarray(a))
  np.testing.assert_array_equal(np.asarray(out), a)
  np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), np.zeros_like(g))
