"""The routed VAE-GAN train step: one forward, one backward, three updates.

``routed_loss`` is the single place where the losses meet the parameters. It
builds one scalar, L_prior + L_llike + BCE (+ the non-saturating term), whose
gradient w.r.t. each group is exactly that group's own loss gradient, thanks
to the masks of ``routing.py`` (see its docstring for the rule):

  group          loss it descends                    model kinds
  encoder        L_prior + L_llike                   vae, vaegan, vae_dis_l
  decoder        gamma*L_llike - BCE   (saturating)  vaegan
                 gamma*L_llike + NS    (non-sat.)
                 L_llike                             vae_dis_l (no GAN term)
                 -BCE or NS                          gan
                 L_pixel                             vae
  discriminator  BCE (never L_llike)                 gan, vaegan, vae_dis_l

BCE is Dis's loss, -log D(x) - log(1 - D(x_p)) [- log(1 - D(x~))], NS is
-log D(x_p) [- log D(x~)]. L_llike of ``vae`` is the pixel-wise Gaussian NLL.

Batch composition (BN couples the samples of a batch, so it is part of the
definition): Dis_l is taken on [x~; x] with the target sg(Dis_l(x)); the GAN
term on [x; x_p] or [x; x~'; x_p], where x~' = Dec(sg(z)) is a second decoder
pass whose full-weight GAN gradient reaches Dec but not Enc. Dec runs on z
(with gamma-scaled params) and on the fakes as separate batches.

BatchNorm running statistics: every train-mode pass updates the group's one
set. Dec's is updated twice a step, by the reconstruction pass on z and then by
the GAN pass on the fakes' codes; Dis's by the Dis_l pass on [x~; x] (the
layers below Dis_l) and by its GAN pass (the non-saturating second pass's
update is dropped). The kept averages are thus an EMA over both passes, where
the authors' code keeps one set per pass. One set serves inference-mode
sampling (z ~ N(0, I)) and reconstruction (z = mu(x)) alike (``sampling.py``,
the evaluation), and the blend is kept on purpose, as the compromise between
the two: each pass's EMA alone gains 3-11 % on its own metric and loses as much
on the other's (``experiments/bn_statistics.py``; the measurements are in
docs/results.md).

All randomness (eps for z, z_p) is drawn for the *global* batch from
fold_in(rng, step) and sliced per device, so the step does not depend on how
many devices share the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax
import jax
import jax.numpy as jnp
from jax import lax

from vaegan_jax import losses
from vaegan_jax import models
from vaegan_jax import optim
from vaegan_jax.routing import block_grad, reverse_grad, scale_grad
from vaegan_jax.runtime import parallel

Array = jax.Array

KINDS = ("vae", "gan", "vaegan", "vae_dis_l")
GROUPS = {
    "vae": ("encoder", "decoder"),
    "gan": ("decoder", "discriminator"),
    "vaegan": ("encoder", "decoder", "discriminator"),
    "vae_dis_l": ("encoder", "decoder", "discriminator"),
}
GAN_FORMS = ("saturating", "non_saturating")
# Bits of TrainState.bad_terms: which loss went non-finite.
LOSS_BITS = ("kl_prior", "llike", "gan_bce", "dec_gan")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static loss/routing settings (hashable)."""
  kind: str = "vaegan"
  gamma: float = 1e-6
  gan_form: str = "saturating"
  recon_in_gan: bool = True
  pixel_sigma: float = 1.0
  balance: bool = False
  balance_equilibrium: float = 0.68
  balance_margin: float = 0.35

  @classmethod
  def from_config(cls, config) -> "LossConfig":
    return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})

  def validate(self) -> None:
    if self.kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}.")
    if self.gan_form not in GAN_FORMS:
      raise ValueError(f"gan_form must be one of {GAN_FORMS}, got {self.gan_form!r}.")
    if not self.gamma >= 0:
      raise ValueError(f"gamma must be >= 0, got {self.gamma}.")
    if not self.pixel_sigma > 0:
      raise ValueError(f"pixel_sigma must be > 0, got {self.pixel_sigma}.")

  @property
  def groups(self) -> tuple[str, ...]:
    return GROUPS[self.kind]

  @property
  def dec_llike_weight(self) -> float:
    """Weight of L_llike in Dec's own loss: gamma only where a GAN term competes."""
    return self.gamma if self.kind == "vaegan" else 1.0


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; all leaves are arrays (pmap/orbax friendly).

  params, batch_stats and opt_state are dicts keyed by group name.
  ``bad_step`` is -1 until a loss is non-finite, then the first such step;
  from then on updates are skipped so the state stays the last good one.
  """
  step: Array
  params: dict
  batch_stats: dict
  opt_state: dict
  rng: Array  # raw uint32[2] key
  bad_step: Array
  bad_terms: Array


def create_train_state(config, rng: Array) -> TrainState:
  """Initial state for ``config.kind`` with ``config.model``'s architecture."""
  arch = models.Architecture.from_config(config.model)
  loss_config = LossConfig.from_config(config)
  init_rng, state_rng = jax.random.split(rng)
  variables = jax.jit(models.init_variables, static_argnums=(0, 2))(
      arch, init_rng, loss_config.groups)
  tx = optim.make_optimizer(config)
  params = {g: v["params"] for g, v in variables.items()}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats={g: v["batch_stats"] for g, v in variables.items()},
      opt_state={g: tx.init(p) for g, p in params.items()},
      rng=state_rng,
      bad_step=jnp.full((), -1, jnp.int32),
      bad_terms=jnp.zeros((), jnp.int32))


def draw_noise(rng: Array, step: Array, local_batch: int, z_dim: int,
               axis_name: Optional[str]) -> tuple[Array, Array]:
  """eps and z_p, each (local_batch, z_dim): this device's slice of the global draw."""
  if axis_name is None:
    n_dev, idx = 1, 0
  else:
    n_dev, idx = lax.psum(1, axis_name), lax.axis_index(axis_name)
  k_eps, k_zp = jax.random.split(jax.random.fold_in(rng, step))
  shape = (local_batch * n_dev, z_dim)
  take = lambda a: lax.dynamic_slice_in_dim(a, idx * local_batch, local_batch)
  return take(jax.random.normal(k_eps, shape)), take(jax.random.normal(k_zp, shape))


def _apply(net, params, stats, *args, **kw):
  """Train-mode apply; returns (output, updated batch_stats)."""
  out, upd = net.apply({"params": params, "batch_stats": stats}, *args, train=True,
                       mutable=["batch_stats"], **kw)
  return out, upd["batch_stats"]


def routed_loss(params: dict, batch_stats: dict, x: Array, y: Optional[Array],
                eps: Array, z_p: Array, *, nets: models.Networks, loss_config: LossConfig):
  """The routed scalar whose gradient is every group's own loss gradient.

  Args:
    params, batch_stats: dicts keyed by group.
    x: (B, H, W, C) images in [-1, 1]; y: (B, A) attributes or None.
    eps, z_p: (B, z_dim) standard normal draws for z = mu + sigma*eps and Dec(z_p).
  Returns:
    (total, (terms, new_batch_stats)); ``terms`` are scalar loss values, plus the
    Dis logits needed by the balance rule.
  """
  kind = loss_config.kind
  stats = dict(batch_stats)
  terms = {}
  total = 0.0
  b = x.shape[0]

  if kind != "gan":
    (mu, logvar), stats["encoder"] = _apply(nets.encoder, params["encoder"],
                                            stats["encoder"], x, y)
    z = mu + jnp.exp(0.5 * logvar) * eps
    terms["kl_prior"] = jnp.mean(losses.kl_prior(mu, logvar))
    # Reconstruction path: Dec's params get dec_llike_weight (gamma), z gets all.
    dec_rec = scale_grad(params["decoder"], loss_config.dec_llike_weight)
    x_tilde, stats["decoder"] = _apply(nets.decoder, dec_rec, stats["decoder"], z, y)
    if kind == "vae":
      terms["llike"] = jnp.mean(losses.pixel_llike(x_tilde, x, loss_config.pixel_sigma))
    else:
      # Dis_l path: Dis params frozen, so L_llike never reaches Dis.
      yy = None if y is None else jnp.concatenate([y, y])
      feats, stats["discriminator"] = _apply(
          nets.discriminator, block_grad(params["discriminator"]),
          stats["discriminator"], jnp.concatenate([x_tilde, x]), yy, features_only=True)
      terms["llike"] = jnp.mean(losses.llike_dis_l(feats[:b], block_grad(feats[b:])))
    total = terms["kl_prior"] + terms["llike"]

  if kind == "vae":
    return total, (terms, stats)

  # GAN path. Fakes: Dec(z_p), and Dec(sg(z)) if reconstructions are shown to Dis.
  fake_z, fake_y, n_groups = z_p, y, 1
  if kind != "gan" and loss_config.recon_in_gan:
    fake_z = jnp.concatenate([block_grad(z), z_p])
    fake_y = None if y is None else jnp.concatenate([y, y])
    n_groups = 2
  dec_gan = params["decoder"] if kind != "vae_dis_l" else block_grad(params["decoder"])
  x_fake, stats["decoder"] = _apply(nets.decoder, dec_gan, stats["decoder"], fake_z, fake_y)
  saturating = kind != "vae_dis_l" and loss_config.gan_form == "saturating"
  # Saturating: Dec descends -BCE, i.e. the BCE gradient reversed at x_fake.
  x_fake_in = reverse_grad(x_fake) if saturating else block_grad(x_fake)
  yy = None if y is None else jnp.concatenate([y, fake_y])
  dis_stats_in = stats["discriminator"]
  (logits, _), stats["discriminator"] = _apply(
      nets.discriminator, params["discriminator"], dis_stats_in,
      jnp.concatenate([x, x_fake_in]), yy)
  real, fakes = logits[:b], jnp.split(logits[b:], n_groups)
  terms["gan_bce"] = losses.gan_loss(real, fakes)
  terms["gan_real"] = jnp.mean(jax.nn.softplus(-real))
  terms["gan_fake"] = jnp.mean(jax.nn.softplus(fakes[-1]))  # x_p = Dec(z_p)
  if n_groups == 2:
    terms["gan_fake_recon"] = jnp.mean(jax.nn.softplus(fakes[0]))
  terms["dis_accuracy"] = losses.dis_accuracy(real, fakes[-1])
  terms["balance_real_cost"], terms["balance_fake_cost"] = losses.balance_costs(
      real, fakes[-1])
  total = total + terms["gan_bce"]

  if kind == "vae_dis_l":
    terms["dec_gan"] = jnp.zeros(())
  elif saturating:
    terms["dec_gan"] = -terms["gan_bce"]
  else:
    # Second pass through a frozen Dis, same batch composition; its BN update
    # is dropped (Dis's own pass above already made it).
    (ns_logits, _), _ = _apply(nets.discriminator, block_grad(params["discriminator"]),
                               dis_stats_in, jnp.concatenate([x, x_fake]), yy)
    terms["dec_gan"] = losses.nonsaturating_gen_loss(jnp.split(ns_logits[b:], n_groups))
    total = total + terms["dec_gan"]
  return total, (terms, stats)


def _balance_flags(terms: dict, loss_config: LossConfig) -> dict[str, Array]:
  """The authors' equilibrium rule: which of Dec/Dis to update this step."""
  true = jnp.ones((), bool)
  if not loss_config.balance or "gan_bce" not in terms:
    return {"decoder": true, "discriminator": true}
  lo = loss_config.balance_equilibrium - loss_config.balance_margin
  hi = loss_config.balance_equilibrium + loss_config.balance_margin
  r, f = terms["balance_real_cost"], terms["balance_fake_cost"]
  upd_dis = ~((r < lo) | (f < lo))
  upd_dec = ~((r > hi) | (f > hi))
  both_off = ~upd_dis & ~upd_dec
  return {"decoder": upd_dec | both_off, "discriminator": upd_dis | both_off}


def _select(pred: Array, new, old):
  return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def train_step(state: TrainState, batch: dict, *, config, axis_name: Optional[str] = parallel.AXIS):
  """One routed update. Run under ``jax.pmap(axis_name=...)`` (or jit with None).

  Args:
    state: TrainState (replicated under pmap).
    batch: {'image': (B_local, H, W, C) float32 in [-1, 1][, 'attributes': (B_local, A)]}.
  Returns:
    (new_state, metrics): metrics are scalars averaged over devices.
  """
  arch = models.Architecture.from_config(config.model)
  loss_config = LossConfig.from_config(config)
  nets = models.Networks.create(arch, axis_name)
  tx = optim.make_optimizer(config)
  x = batch["image"]
  y = batch.get("attributes") if arch.num_attributes else None
  eps, z_p = draw_noise(state.rng, state.step, x.shape[0], arch.z_dim, axis_name)

  loss_fn = functools.partial(routed_loss, nets=nets, loss_config=loss_config)
  grads, (terms, new_stats) = jax.grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, x, y, eps, z_p)
  if axis_name is not None:
    grads, terms = lax.pmean((grads, terms), axis_name)

  bad = jnp.zeros((), jnp.int32)
  for i, name in enumerate(LOSS_BITS):
    if name in terms:
      bad = bad | jnp.where(jnp.isfinite(terms[name]), 0, 1 << i)
  ok = (bad == 0) & (state.bad_step < 0)
  lr = optim.learning_rate(config, state.step)
  flags = _balance_flags(terms, loss_config)
  params, opt_state = dict(state.params), dict(state.opt_state)
  for g in loss_config.groups:
    direction, new_opt = tx.update(grads[g], state.opt_state[g], state.params[g])
    new_params = jax.tree.map(lambda p, d: p - lr * d, state.params[g], direction)
    do = ok & flags.get(g, True)
    params[g] = _select(do, new_params, state.params[g])
    opt_state[g] = _select(do, new_opt, state.opt_state[g])

  first_bad = (bad != 0) & (state.bad_step < 0)
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=_select(ok, new_stats, state.batch_stats),
      opt_state=opt_state,
      bad_step=jnp.where(first_bad, state.step, state.bad_step),
      bad_terms=jnp.where(first_bad, bad, state.bad_terms))
  metrics = dict(terms)
  metrics["learning_rate"] = lr
  for g in ("decoder", "discriminator"):
    if g in loss_config.groups:
      metrics[f"skipped_{g}"] = 1.0 - flags[g].astype(jnp.float32)
  return new_state, metrics


def train_block(state: TrainState, block: dict, *, config,
                axis_name: Optional[str] = parallel.AXIS):
  """``k`` routed updates in one dispatch: ``lax.scan`` of ``train_step`` over a block.

  Args:
    state: TrainState.
    block: like ``train_step``'s batch with a leading step axis, e.g.
      {'image': (k, B_local, H, W, C)}: batch i is step ``state.step + i``'s.
  Returns:
    (new_state after k steps, metrics stacked to (k,) each).

  Every step inside is ``train_step`` itself (noise from fold_in(rng, step),
  the same routing and updates), so a block of k equals k single steps; it
  saves the host k - 1 dispatches, which bound the small models on a GPU.
  XLA:CPU runs the loop's body about 9x slower than the same step at the top
  level (4 default steps: 9.0 s in the loop, 1.04 s one by one; unrolled 1.05 s,
  at twice the compile time), so keep k = 1 on CPU.
  """
  return lax.scan(lambda s, b: train_step(s, b, config=config, axis_name=axis_name),
                  state, block)


def make_pmapped_step(config, donate: bool = True, block: bool = False):
  """``train_step`` (or ``train_block`` if ``block``) pmapped over local devices.

  Under multi-host ``jax.distributed``, the collectives span every device of
  every process. The state is donated: do not reuse the input state. A block
  compiles once per block length (the scan's length is the batch's shape).
  """
  fn = train_block if block else train_step
  return jax.pmap(functools.partial(fn, config=config, axis_name=parallel.AXIS),
                  axis_name=parallel.AXIS, donate_argnums=(0,) if donate else ())


def bad_terms_names(bits: int) -> list[str]:
  return [n for i, n in enumerate(LOSS_BITS) if bits & (1 << i)]
