"""Loss terms against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np

from vaegan_jax import losses


def test_kl_prior_matches_monte_carlo():
  rng = np.random.RandomState(0)
  mu = rng.normal(size=(3, 4)).astype(np.float32)
  logvar = rng.normal(scale=0.5, size=(3, 4)).astype(np.float32)
  kl = np.asarray(losses.kl_prior(jnp.asarray(mu), jnp.asarray(logvar)))
  n = 400_000
  sd = np.exp(0.5 * logvar)
  z = mu[None] + sd[None] * rng.normal(size=(n, 3, 4))
  log_q = -0.5 * (((z - mu) / sd) ** 2 + logvar + np.log(2 * np.pi))
  log_p = -0.5 * (z ** 2 + np.log(2 * np.pi))
  mc = (log_q - log_p).sum(-1).mean(0)
  stderr = (log_q - log_p).sum(-1).std(0) / np.sqrt(n)
  assert kl.shape == (3,)
  np.testing.assert_array_less(np.abs(kl - mc), 5 * stderr + 1e-4)


def test_llike_dis_l_by_hand():
  a = jnp.array([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # (1, 2, 1, 2)
  b = jnp.array([[[[0.0, 2.0]], [[1.0, 1.0]]]])
  # 1/2 * (1 + 0 + 4 + 4) = 4.5
  np.testing.assert_allclose(losses.llike_dis_l(a, b), [4.5])
  np.testing.assert_allclose(losses.pixel_llike(a, b, sigma=2.0), [4.5 / 4])


def test_gan_loss_signs_and_stability():
  real = jnp.array([2.0, -1.0])
  fake = jnp.array([-3.0, 0.5])
  d = lambda l: 1 / (1 + np.exp(-np.asarray(l, np.float64)))
  expected = np.mean(-np.log(d(real))) + np.mean(-np.log(1 - d(fake)))
  np.testing.assert_allclose(losses.gan_loss(real, [fake]), expected, rtol=1e-6)
  np.testing.assert_allclose(losses.nonsaturating_gen_loss([fake]),
                             np.mean(-np.log(d(fake))), rtol=1e-6)
  # Extreme logits stay finite.
  big = jnp.array([1e4, -1e4])
  assert np.isfinite(float(losses.gan_loss(big, [big])))
  assert np.isfinite(float(jax.grad(lambda l: losses.gan_loss(l, [l]))(big).sum()))


def test_balance_costs_match_authors_formula():
  real, fake = jnp.array([0.3, -2.0]), jnp.array([1.0, -0.5])
  d = lambda l: 1 / (1 + np.exp(-np.asarray(l, np.float64)))
  r, f = losses.balance_costs(real, fake)
  np.testing.assert_allclose(r, np.mean(-np.log(d(real) + 1e-3)), rtol=1e-6)
  np.testing.assert_allclose(f, np.mean(-np.log(1 - d(fake) + 1e-3)), rtol=1e-6)
  np.testing.assert_allclose(losses.dis_accuracy(real, fake), 0.5)
