"""One optax optimizer per network, and the learning-rate schedules.

Paper: RMSProp, lr 3e-4, batch 64. Authors' code: decay 0.9, eps 1e-8 added
*outside* the square root (``rmsprop_eps_in_sqrt=False``; optax's default is
inside), no momentum, optional L2 weight decay 1e-5 on conv/dense kernels only
(not on the mu/logvar/logit heads, biases or BN), and a per-epoch schedule
(epoch = 250 batches):

    lr(e) = (0.025 - (e/250)**0.75 * (0.025 - 1e-5)) / 64   # 3.9e-4 -> 1.3e-6 at e=249

The optimizers return *unscaled* directions; the train step multiplies them by
-lr(step), so the learning rate depends on the global step (not on how many
updates the balance rule let through) and can be logged.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

from vaegan_jax import models

SCHEDULES = ("constant", "authors")


def weight_decay_mask(params):
  """True for conv/dense kernels outside the heads."""
  flat = flax.traverse_util.flatten_dict(params)
  mask = {k: (k[-1] == "kernel" and not any(h in k for h in models.HEADS)) for k in flat}
  return flax.traverse_util.unflatten_dict(mask)


def make_optimizer(config) -> optax.GradientTransformation:
  """RMSProp direction (without the learning rate), optionally with L2 decay."""
  txs = []
  if config.weight_decay:
    txs.append(optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask))
  txs.append(optax.scale_by_rms(decay=config.rmsprop_decay, eps=config.rmsprop_eps,
                                eps_in_sqrt=config.rmsprop_eps_in_sqrt))
  return optax.chain(*txs)


def learning_rate(config, step: jax.Array) -> jax.Array:
  """lr as a function of the global step (traceable)."""
  if config.lr_schedule == "constant":
    return jnp.asarray(config.learning_rate, jnp.float32)
  if config.lr_schedule == "authors":
    epoch = jnp.floor(step / 250.0)
    frac = jnp.minimum(epoch / 250.0, 1.0)
    return ((0.025 - frac ** 0.75 * (0.025 - 1e-5)) / 64.0).astype(jnp.float32)
  raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {config.lr_schedule!r}.")
