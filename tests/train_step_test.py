"""Routing tests: each group's update is exactly the gradient of its own loss.

The references below rebuild every loss from the plain ``apply`` functions,
with no masks, and differentiate each group's loss alone with ``jax.grad``.
They share only the batch composition with the routed step (BN couples the
samples of a batch, so the composition is part of the loss's definition).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import tiny
from vaegan_jax import models
from vaegan_jax import reference
from vaegan_jax import train_step

jax.config.update("jax_default_matmul_precision", "highest")


def _config(kind, **kw):
  c = tiny.get_config()
  c.kind = kind
  c.model.conv_impl = "xla"
  for k, v in kw.items():
    c[k] = v
  return c


def _setup(config, seed=0, b=8):
  state = train_step.create_train_state(config, jax.random.PRNGKey(seed))
  rng = np.random.RandomState(seed)
  s = config.model.image_size
  x = jnp.asarray(rng.uniform(-1, 1, (b, s, s, config.model.channels)), jnp.float32)
  eps, z_p = train_step.draw_noise(state.rng, state.step, b, config.model.z_dim, None)
  return state, x, eps, z_p


def reference_group_losses(config, state, x, eps, z_p):
  """{group: loss_fn(group_params)}: each group's own loss, written plainly."""
  return reference.group_losses(config, state.params, state.batch_stats, x, eps, z_p)


def _routed_grads(config, state, x, eps, z_p):
  return _routed_grad_fn(config)(state.params, state.batch_stats, x, eps, z_p)


def _routed_grad_fn(config):
  """jit(params, batch_stats, x, eps, z_p) -> the routed gradient, all groups.

  One jitted function per (architecture, loss config), shared by the tests.
  """
  return _routed_grad_jit(models.Architecture.from_config(config.model),
                          train_step.LossConfig.from_config(config))


@functools.lru_cache(maxsize=None)
def _routed_grad_jit(arch, loss_config):
  fn = functools.partial(train_step.routed_loss, nets=models.Networks.create(arch),
                         loss_config=loss_config)
  return jax.jit(jax.grad(lambda p, st, x, eps, z_p: fn(p, st, x, None, eps, z_p)[0]))


def _assert_tree_close(a, b, rtol, atol_frac=1e-6):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  scale = max(float(jnp.max(jnp.abs(v))) for v in lb)
  for u, v in zip(la, lb):
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol_frac * scale + 1e-30)


def _term_grad_fn(config, group, names):
  """jit(params, batch_stats, x, eps, z_p) -> {term: d term / d params[group]}.

  Each term of ``reference.loss_terms`` (no masks) gets its own ``jax.grad``.
  """
  def fn(params, batch_stats, x, eps, z_p):
    def term(name, q):
      return reference.loss_terms(config, {**params, group: q}, batch_stats, x, eps, z_p)[name]
    return {n: jax.grad(functools.partial(term, n))(params[group]) for n in names}
  return jax.jit(fn)


def _axpy(a, x, y=None):
  """a*x (+ y) on trees."""
  if y is None:
    return jax.tree.map(lambda u: a * u, x)
  return jax.tree.map(lambda u, v: a * u + v, x, y)


def _norm(tree):
  return float(optax.tree.norm(tree))


_SLOW = pytest.mark.slow  # The default suite keeps one case of each option; CI runs all.
CASES = [
    ("vaegan", dict()),
    pytest.param("vaegan", dict(recon_in_gan=False), marks=_SLOW),
    pytest.param("vaegan", dict(gan_form="non_saturating"), marks=_SLOW),
    ("vaegan", dict(gamma=0.3, recon_in_gan=False, gan_form="non_saturating")),
    ("vae", dict()),
    pytest.param("gan", dict(), marks=_SLOW),
    ("gan", dict(gan_form="non_saturating")),
    ("vae_dis_l", dict()),
]


@pytest.mark.parametrize("kind,kw", CASES)
def test_each_group_gets_exactly_its_own_gradient(kind, kw):
  config = _config(kind, **kw)
  state, x, eps, z_p = _setup(config)
  routed = _routed_grads(config, state, x, eps, z_p)
  refs = reference_group_losses(config, state, x, eps, z_p)
  assert set(routed) == set(refs) == set(train_step.GROUPS[kind])
  for group, loss in refs.items():
    ref = jax.jit(jax.grad(loss))(state.params[group])
    _assert_tree_close(routed[group], ref, rtol=2e-4)


@_SLOW  # The three-step test below checks step 1 too.
def test_train_step_applies_rmsprop_to_each_groups_own_gradient():
  config = _config("vaegan")
  state, x, eps, z_p = _setup(config)
  step = jax.jit(functools.partial(train_step.train_step, config=config, axis_name=None))
  new_state, metrics = step(state, {"image": x})
  refs = reference_group_losses(config, state, x, eps, z_p)
  tx = optax.scale_by_rms(decay=config.rmsprop_decay, eps=config.rmsprop_eps, eps_in_sqrt=False)
  for group, loss in refs.items():
    g = jax.jit(jax.grad(loss))(state.params[group])
    d, _ = tx.update(g, tx.init(state.params[group]))
    expected = jax.tree.map(lambda p, u: p - config.learning_rate * u, state.params[group], d)
    _assert_tree_close(new_state.params[group], expected, rtol=1e-4, atol_frac=1e-5)
  assert int(new_state.step) == 1
  assert float(metrics["skipped_decoder"]) == 0.0


@pytest.mark.parametrize("gan_form", ["saturating", pytest.param("non_saturating", marks=_SLOW)])
def test_decoder_gets_gamma_times_its_own_llike_gradient(gan_form):
  # At the paper's gamma = 1e-6, gamma * dL_llike is ~1e-6 of Dec's gradient: the
  # whole-group comparison above sees a decoder without it in only 1-4 of
  # thousands of entries, just past its tolerance. Here it is checked on its own
  # against per-term gradients of the unmasked reference: (a) with the GAN part
  # removed (Dis's logit kernel zeroed: every GAN gradient into Dec is exactly 0,
  # while Dis_l, below the head, and so L_llike are unchanged), at gamma = 1e-6
  # and 1; (b) at gamma = 1, where both parts are of similar size; (c) the part
  # that varies with gamma, routed(1) - routed(1e-6) = (1 - 1e-6) * dL_llike.
  cfg = lambda gamma: _config("vaegan", gamma=gamma, gan_form=gan_form)
  state, x, eps, z_p = _setup(cfg(1e-6))
  params, st = state.params, state.batch_stats
  dis = dict(params["discriminator"])
  dis["logit_head"] = dict(dis["logit_head"], kernel=jnp.zeros_like(dis["logit_head"]["kernel"]))
  no_gan = dict(params, discriminator=dis)

  terms = _term_grad_fn(cfg(1.0), "decoder", ("llike", "dec_gan"))
  ref, ref0 = terms(params, st, x, eps, z_p), terms(no_gan, st, x, eps, z_p)
  assert _norm(ref0["dec_gan"]) == 0.0  # the GAN part really is removed
  llike, gan = ref["llike"], ref["dec_gan"]
  assert 0.02 < _norm(llike) / _norm(gan) < 50, (_norm(llike), _norm(gan))  # both visible

  routed = {g: _routed_grad_fn(cfg(g)) for g in (1e-6, 1.0)}
  for gamma, fn in routed.items():  # (a)
    _assert_tree_close(fn(no_gan, st, x, eps, z_p)["decoder"], _axpy(gamma, ref0["llike"]),
                       rtol=2e-4)
  g1 = routed[1.0](params, st, x, eps, z_p)["decoder"]
  g6 = routed[1e-6](params, st, x, eps, z_p)["decoder"]
  _assert_tree_close(g1, _axpy(1.0, llike, gan), rtol=2e-4)  # (b)
  _assert_tree_close(_axpy(-1.0, g6, g1), _axpy(1.0 - 1e-6, llike), rtol=2e-3,
                     atol_frac=1e-5)  # (c)


def _rms_nu(opt_state):
  is_rms = lambda s: isinstance(s, optax.ScaleByRmsState)
  (rms,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_rms) if is_rms(s)]
  return rms.nu


@pytest.mark.parametrize("eps_in_sqrt", [False, pytest.param(True, marks=_SLOW)])
def test_train_step_later_steps_match_hand_computed_rmsprop(eps_in_sqrt):
  # Three steps from nu = 0, each group's gradient from its own jax.grad of the
  # unmasked reference at that step's state; RMSProp by hand (optim.py):
  #   nu_t = rho nu_{t-1} + (1 - rho) g_t^2,
  #   p_t = p_{t-1} - lr g_t / (sqrt(nu_t) + eps)     (eps_in_sqrt=False, authors)
  #   p_t = p_{t-1} - lr g_t / sqrt(nu_t + eps)       (eps_in_sqrt=True, optax)
  # eps = 1e-4 so that the two forms differ on this model's gradients (at init,
  # by > 1 % on ~95 % of Dec's and Dis's entries and ~50 % of Enc's).
  config = _config("vaegan", rmsprop_eps=1e-4, rmsprop_eps_in_sqrt=eps_in_sqrt)
  rho, eps_opt, lr = config.rmsprop_decay, config.rmsprop_eps, config.learning_rate
  state, _, _, _ = _setup(config)
  step = jax.jit(functools.partial(train_step.train_step, config=config, axis_name=None))
  ref_grads = jax.jit(functools.partial(reference.naive_grads, config))
  rng = np.random.RandomState(1)
  s = config.model.image_size
  f64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)
  nu = {g: jax.tree.map(np.zeros_like, f64(p)) for g, p in state.params.items()}
  for t in range(3):
    x = jnp.asarray(rng.uniform(-1, 1, (8, s, s, 1)), jnp.float32)
    eps, z_p = train_step.draw_noise(state.rng, state.step, 8, config.model.z_dim, None)
    grads = f64(ref_grads(state.params, state.batch_stats, x, eps, z_p))
    new_state, metrics = step(state, {"image": x})
    assert float(metrics["skipped_decoder"]) == float(metrics["skipped_discriminator"]) == 0.0
    for g in grads:
      nu[g] = jax.tree.map(lambda n, d: rho * n + (1 - rho) * d * d, nu[g], grads[g])
      _assert_tree_close(f64(_rms_nu(new_state.opt_state[g])), nu[g], rtol=2e-3,
                         atol_frac=1e-5)
      if t < 2:
        continue
      moved = jax.tree.map(lambda a, b: a - b, f64(new_state.params[g]), f64(state.params[g]))
      def expected(in_sqrt):
        den = (lambda n: np.sqrt(n + eps_opt)) if in_sqrt else (lambda n: np.sqrt(n) + eps_opt)
        return jax.tree.map(lambda d, n: -lr * d / den(n), grads[g], nu[g])
      _assert_tree_close(moved, expected(eps_in_sqrt), rtol=2e-3, atol_frac=1e-3)
      # The check tells the two eps forms apart on this step.
      with pytest.raises(AssertionError):
        _assert_tree_close(moved, expected(not eps_in_sqrt), rtol=2e-3, atol_frac=1e-3)
    state = new_state
  assert int(state.step) == 3


@pytest.mark.parametrize("gan_form", train_step.GAN_FORMS)
def test_gan_loss_never_reaches_encoder(gan_form):
  # Changing the Dis layers above Dis_l changes L_GAN but not L_llike: the
  # encoder's gradient must not change by a single bit.
  config = _config("vaegan", gan_form=gan_form)
  state, x, eps, z_p = _setup(config)
  g0 = _routed_grads(config, state, x, eps, z_p)["encoder"]
  dis = dict(state.params["discriminator"])
  for name in ("dense", "logit_head", "bn_dense"):
    dis[name] = jax.tree.map(lambda a: a * 3.0 + 0.5, dis[name])
  params = dict(state.params, discriminator=dis)
  g1 = _routed_grads(config, state.replace(params=params), x, eps, z_p)["encoder"]
  jax.tree.map(np.testing.assert_array_equal, g0, g1)


def test_llike_never_reaches_discriminator():
  # With reconstructions kept out of the GAN term, eps only moves x~ and so
  # L_llike; the discriminator's gradient must stay bit-identical.
  config = _config("vaegan", recon_in_gan=False)
  state, x, eps, z_p = _setup(config)
  g0 = _routed_grads(config, state, x, eps, z_p)
  g1 = _routed_grads(config, state, x, eps * 2.0 + 1.0, z_p)
  assert not np.allclose(g0["encoder"]["mu_head"]["kernel"], g1["encoder"]["mu_head"]["kernel"])
  jax.tree.map(np.testing.assert_array_equal, g0["discriminator"], g1["discriminator"])


@_SLOW
def test_gamma_scales_only_decoder_llike_gradient():
  # Dec(vaegan, gamma) = gamma * Dec(vae_dis_l: L_llike alone) + Dec(gan: NS alone),
  # and gamma never reaches the encoder.
  kw = dict(recon_in_gan=False, gan_form="non_saturating")
  config_l = _config("vae_dis_l", **kw)
  config_g = _config("gan", **kw)
  config_vg = _config("vaegan", gamma=0.25, **kw)
  state, x, eps, z_p = _setup(config_vg)
  gl = _routed_grads(config_l, state, x, eps, z_p)
  gg = _routed_grads(config_g, state, x, eps, z_p)
  gvg = _routed_grads(config_vg, state, x, eps, z_p)
  _assert_tree_close(gvg["encoder"], gl["encoder"], rtol=1e-5)
  expected = jax.tree.map(lambda a, b: 0.25 * a + b, gl["decoder"], gg["decoder"])
  _assert_tree_close(gvg["decoder"], expected, rtol=2e-4)
  jax.tree.map(np.testing.assert_array_equal, gg["discriminator"], gvg["discriminator"])


def test_balance_rule():
  loss_config = train_step.LossConfig(balance=True)
  f = lambda r, fk: {k: bool(v) for k, v in train_step._balance_flags(
      {"gan_bce": 0.0, "balance_real_cost": jnp.float32(r),
       "balance_fake_cost": jnp.float32(fk)}, loss_config).items()}
  assert f(0.7, 0.7) == {"decoder": True, "discriminator": True}
  assert f(0.2, 0.7) == {"decoder": True, "discriminator": False}  # Dis too good
  assert f(0.7, 1.2) == {"decoder": False, "discriminator": True}  # Dec too bad
  assert f(0.2, 1.2) == {"decoder": True, "discriminator": True}  # both -> both
  off = train_step.LossConfig(balance=False)
  assert all(bool(v) for v in train_step._balance_flags(
      {"gan_bce": 0.0, "balance_real_cost": 0.0, "balance_fake_cost": 9.0}, off).values())


def test_balance_rule_skips_discriminator_update_in_step():
  config = _config("vaegan", balance=True, balance_equilibrium=100.0, balance_margin=1.0)
  # Costs are far below 99: Dis is "too good" -> its update is skipped.
  state, x, _, _ = _setup(config)
  new, m = jax.jit(functools.partial(train_step.train_step, config=config, axis_name=None))(
      state, {"image": x})
  assert float(m["skipped_discriminator"]) == 1.0 and float(m["skipped_decoder"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, new.params["discriminator"],
               state.params["discriminator"])
  assert not np.allclose(new.params["decoder"]["out_conv"]["kernel"],
                         state.params["decoder"]["out_conv"]["kernel"])


def test_nonfinite_loss_freezes_state_and_records_step():
  config = _config("vaegan")
  state, x, _, _ = _setup(config)
  step = jax.jit(functools.partial(train_step.train_step, config=config, axis_name=None))
  state, _ = step(state, {"image": x})
  bad_x = x.at[0, 0, 0, 0].set(jnp.nan)
  new, _ = step(state, {"image": bad_x})
  assert int(new.bad_step) == 1
  assert "kl_prior" in train_step.bad_terms_names(int(new.bad_terms))
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats, state.batch_stats)
  newer, _ = step(new, {"image": x})  # stays frozen at the last good state
  jax.tree.map(np.testing.assert_array_equal, newer.params, state.params)
  assert int(newer.bad_step) == 1


@pytest.mark.parametrize("gan_form", [pytest.param("saturating", marks=_SLOW),
                                      pytest.param("non_saturating", marks=_SLOW)])  # ~15 s
def test_conditional_model_routing(gan_form):
  config = _config("vaegan", gan_form=gan_form)
  config.model.num_attributes = 3
  state, x, eps, z_p = _setup(config)
  y = jnp.asarray(np.random.RandomState(1).randint(0, 2, (x.shape[0], 3)), jnp.float32)
  arch = models.Architecture.from_config(config.model)
  fn = functools.partial(train_step.routed_loss, nets=models.Networks.create(arch),
                         loss_config=train_step.LossConfig.from_config(config))
  routed = jax.jit(jax.grad(lambda p: fn(p, state.batch_stats, x, y, eps, z_p)[0]))(state.params)
  refs = reference.group_losses(config, state.params, state.batch_stats, x, eps, z_p, y)
  for group, loss in refs.items():
    _assert_tree_close(routed[group], jax.jit(jax.grad(loss))(state.params[group]), rtol=2e-4)


def _flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


@pytest.mark.parametrize("kind,kw", [
    ("vaegan", {}), pytest.param("vaegan", dict(gan_form="non_saturating"), marks=_SLOW),
    pytest.param("gan", {}, marks=_SLOW)])
def test_compiled_step_has_one_backward_per_path(kind, kw):
  # XLA's cost analysis: one backward costs ~2 forwards, so the routed gradient
  # must cost <= ~3x the routed forward (measured 2.8-3.1x), while the naive
  # three-gradient reference recomputes the shared forward (measured 1.4-1.6x more).
  config = _config(kind, **kw)
  state, x, eps, z_p = _setup(config)
  arch = models.Architecture.from_config(config.model)
  fn = functools.partial(train_step.routed_loss, nets=models.Networks.create(arch),
                         loss_config=train_step.LossConfig.from_config(config))
  loss = lambda p: fn(p, state.batch_stats, x, None, eps, z_p)[0]
  forward, routed = _flops(loss, state.params), _flops(jax.grad(loss), state.params)
  naive = _flops(lambda p: reference.naive_grads(config, p, state.batch_stats, x, eps, z_p),
                 state.params)
  assert routed <= 3.2 * forward, (routed, forward)
  assert naive >= 1.35 * routed, (naive, routed)
