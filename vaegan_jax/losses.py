"""The loss terms of VAE-GAN (Larsen et al. 2016, Sec. 2), per sample.

Every term is a per-sample sum over dimensions, shape (B,); the train step
averages over the batch (the authors' code sums; the mean only rescales the
learning rate). Signs, in terms of Dis's logits l (D = sigmoid(l)):

* ``kl_prior``      L_prior = -1/2 sum_j (1 + log s2_j - mu_j^2 - s2_j).
* ``llike_dis_l``   L_llike = 1/2 ||Dis_l(x~) - Dis_l(x)||^2: the negative
                    log-likelihood of Dis_l(x) ~ N(Dis_l(x~), I), constant dropped.
* ``pixel_llike``   the plain VAE's pixel-wise Gaussian NLL, 1/2 ||(x~ - x)/sigma||^2.
* ``gan_loss``      Dis's BCE, the quantity Dis *minimises*:
                    softplus(-l_real) + sum over fake groups softplus(l_fake)
                    = -log D(x) - log(1 - D(x_p)) [- log(1 - D(x~))].
                    The paper writes L_GAN = log D(x) + log(1 - D(x_p)) + ...,
                    which is minus this; its Algorithm 1 has Dis descend the BCE
                    and Dec descend gamma*L_llike - BCE (the saturating form).
* ``nonsaturating_gen_loss``  -log D(x_p) = softplus(-l_fake): the common
                    alternative for Dec's GAN term.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _sum_per_sample(x: Array) -> Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def kl_prior(mu: Array, logvar: Array) -> Array:
  """KL(N(mu, exp(logvar)) || N(0, I)): (B, Z), (B, Z) -> (B,)."""
  return -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)


def llike_dis_l(dis_l_tilde: Array, dis_l_x: Array) -> Array:
  """1/2 ||Dis_l(x~) - Dis_l(x)||^2: (B, h, w, c) x2 -> (B,)."""
  return 0.5 * _sum_per_sample(jnp.square(dis_l_tilde - dis_l_x))


def pixel_llike(x_tilde: Array, x: Array, sigma: float = 1.0) -> Array:
  """Pixel-wise Gaussian NLL without its constant: (B, H, W, C) x2 -> (B,)."""
  return 0.5 * _sum_per_sample(jnp.square((x_tilde - x) / sigma))


def gan_loss(real_logits: Array, fake_logits: Sequence[Array]) -> Array:
  """Dis's BCE (scalar): mean softplus(-l_real) + sum_g mean softplus(l_fake_g)."""
  loss = jnp.mean(jax.nn.softplus(-real_logits))
  for f in fake_logits:
    loss = loss + jnp.mean(jax.nn.softplus(f))
  return loss


def nonsaturating_gen_loss(fake_logits: Sequence[Array]) -> Array:
  """Dec's non-saturating GAN loss (scalar): sum_g mean -log D(x_fake_g)."""
  return sum(jnp.mean(jax.nn.softplus(-f)) for f in fake_logits)


def balance_costs(real_logits: Array, fake_logits: Array) -> tuple[Array, Array]:
  """The authors' equilibrium costs, with their +1e-3 inside the logs.

  real_cost = mean -log(D(x) + 1e-3), fake_cost = mean -log(1 - D(x_p) + 1e-3).
  """
  real = jnp.mean(-jnp.log(jax.nn.sigmoid(real_logits) + 1e-3))
  fake = jnp.mean(-jnp.log(jax.nn.sigmoid(-fake_logits) + 1e-3))
  return real, fake


def dis_accuracy(real_logits: Array, fake_logits: Array) -> Array:
  """Fraction of real (l > 0) and fake (l < 0) samples Dis classifies right."""
  correct = jnp.concatenate([real_logits > 0, fake_logits < 0])
  return jnp.mean(correct.astype(jnp.float32))
