"""The naive per-group losses: each group's own loss, written without masks.

This is the definition that ``train_step.routed_loss`` must reproduce with a
single backward pass. It serves as the independent reference of the routing
tests and as the "three separate jax.grad calls" baseline of the benchmark.
Only the batch composition is shared with the routed step (BN couples the
samples of a batch, so it is part of the definition):

  Dis_l on [x~; x] with target sg(Dis_l(x)); the GAN term on [x; fakes] with
  fakes = Dec([z; z_p]) (reconstructions shown to Dis) or Dec(z_p).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from vaegan_jax import models

Array = jax.Array


def _apply(net, params, stats, *a, **kw):
  out, _ = net.apply({"params": params, "batch_stats": stats}, *a, train=True,
                     mutable=["batch_stats"], **kw)
  return out


def loss_terms(config, params: dict, batch_stats: dict, x: Array, eps: Array, z_p: Array,
               y: Optional[Array] = None) -> dict[str, Array]:
  """The loss terms as plain functions of all ``params``, no masks.

  Keys: 'kl' and 'llike' (not for ``gan``), and for the kinds with a
  discriminator 'bce' (Dis's loss), 'ns' (-log D of the fakes) and 'dec_gan',
  Dec's GAN term: 'ns' or -'bce' by ``config.gan_form``. Differentiating one
  term w.r.t. one group gives that term's part of the group's gradient, e.g.
  the decoder's gradient is gamma * d'llike' + d'dec_gan' for ``vaegan``.
  """
  arch = models.Architecture.from_config(config.model)
  nets = models.Networks.create(arch)
  kind = config.kind
  st = batch_stats
  b = x.shape[0]
  cat = lambda *a: None if y is None else jnp.concatenate(a)
  pe, pd, pD = params.get("encoder"), params.get("decoder"), params.get("discriminator")
  out = {}
  fy = y
  if kind != "gan":
    mu, logvar = _apply(nets.encoder, pe, st["encoder"], x, y)
    z = mu + jnp.exp(0.5 * logvar) * eps
    out["kl"] = jnp.mean(-0.5 * jnp.sum(1 + logvar - mu**2 - jnp.exp(logvar), -1))
    x_t = _apply(nets.decoder, pd, st["decoder"], z, y)
    if kind == "vae":
      out["llike"] = jnp.mean(0.5 * jnp.sum((x_t - x) ** 2, (1, 2, 3)) / config.pixel_sigma**2)
      return out
    f = _apply(nets.discriminator, pD, st["discriminator"], jnp.concatenate([x_t, x]),
               cat(y, y), features_only=True)
    out["llike"] = jnp.mean(0.5 * jnp.sum((f[:b] - jax.lax.stop_gradient(f[b:])) ** 2,
                                          (1, 2, 3)))
    if config.recon_in_gan:
      fz, fy = jnp.concatenate([z, z_p]), cat(y, y)
    else:
      fz = z_p
  else:
    fz = z_p
  fakes = _apply(nets.decoder, pd, st["decoder"], fz, fy)
  logits, _ = _apply(nets.discriminator, pD, st["discriminator"],
                     jnp.concatenate([x, fakes]), None if y is None else jnp.concatenate([y, fy]))
  groups = jnp.split(logits[b:], fakes.shape[0] // b)
  out["bce"] = (jnp.mean(-jax.nn.log_sigmoid(logits[:b])) +
                sum(jnp.mean(-jax.nn.log_sigmoid(-g)) for g in groups))
  out["ns"] = sum(jnp.mean(-jax.nn.log_sigmoid(g)) for g in groups)
  out["dec_gan"] = out["ns"] if config.gan_form == "non_saturating" else -out["bce"]
  return out


def group_losses(config, params: dict, batch_stats: dict, x: Array, eps: Array, z_p: Array,
                 y: Optional[Array] = None) -> dict[str, Callable]:
  """{group: loss(group_params) -> scalar}, the other groups held at ``params``."""
  kind = config.kind

  def terms(group, q):
    return loss_terms(config, {**params, group: q}, batch_stats, x, eps, z_p, y)

  losses = {}
  if kind != "gan":
    losses["encoder"] = lambda q: (lambda t: t["kl"] + t["llike"])(terms("encoder", q))
  if kind == "vae":
    losses["decoder"] = lambda q: terms("decoder", q)["llike"]
    return losses
  w = config.gamma if kind == "vaegan" else 1.0

  def dec_loss(q):
    t = terms("decoder", q)
    llike = w * t["llike"] if kind != "gan" else 0.0
    if kind == "vae_dis_l":
      return llike
    return llike + t["dec_gan"]

  losses["decoder"] = dec_loss
  losses["discriminator"] = lambda q: terms("discriminator", q)["bce"]
  return losses


def naive_grads(config, params: dict, batch_stats: dict, x: Array, eps: Array, z_p: Array,
                y: Optional[Array] = None) -> dict:
  """Each group's gradient from its own ``jax.value_and_grad`` call."""
  losses = group_losses(config, params, batch_stats, x, eps, z_p, y)
  return {g: jax.value_and_grad(f)(params[g])[1] for g, f in losses.items()}
