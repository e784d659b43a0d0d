"""The PyTorch reference (experiments/torch_reference.py) against our Flax model.

Needs torch (CPU is enough); skipped where it is not installed, unless
``VAEGAN_REQUIRE_TORCH=1`` (``.ci/run``), which turns the skip into a failure.
Independent checks, two frameworks computing the same thing:

* Our params (randomised, BN statistics and biases included) loaded into torch:
  Enc/Dec/Dis outputs agree with Flax's in inference mode and in train mode
  (batch statistics), and the BN running-statistics update agrees (torch's
  unbiased variance converted); plain and conditional (attributes) models.
* One routed step's per-group gradients agree with ``jax.grad`` of
  ``train_step.routed_loss`` given the same eps/z_p draws, for both torch
  routings (one masked backward, three ``autograd.grad``), for the loss kinds
  and GAN forms; a control shows that a different routing (recon_in_gan, gamma)
  is far outside the tolerance, so the comparison can tell them apart.
* The timing function returns finite positive rates (float32 and bf16 autocast on CPU).

Tolerances: float32 on CPU; gradients per leaf max|torch - ours| <= 2e-4 * max|ours|
(measured 7e-6 with the tiny config), outputs 1e-4 absolute.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.torch  # CI's torch step: python -m pytest -m torch

if os.environ.get("VAEGAN_REQUIRE_TORCH") == "1":  # CI: the claim must be proven, not skipped
  import torch  # pylint: disable=g-import-not-at-top
else:
  torch = pytest.importorskip("torch")

from experiments import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.configs import tiny  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from vaegan_jax import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

B = 8
GRAD_RTOL = 2e-4


def _config(**kw):
  c = tiny.get_config()
  # Ours with XLA's stock convs: on CPU 'auto' is the fast forms, whose agreement
  # with these is tests/fast_conv_test.py's; eager, these need no 10 s compile.
  c.model.conv_impl = "xla"
  for k, v in kw.items():
    if k == "num_attributes":
      c.model.num_attributes = v
    else:
      setattr(c, k, v)
  return c


def _randomise(tree, seed):
  """Every leaf perturbed: biases and BN offsets non-zero, scales and variances positive."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  rng = np.random.RandomState(seed)
  out = []
  for path, leaf in leaves:
    name = path[-1].key
    a = np.asarray(leaf)
    if name in ("scale", "var"):
      a = rng.uniform(0.5, 1.5, a.shape)
    elif name in ("bias", "mean"):
      a = 0.2 * rng.randn(*a.shape)
    else:
      a = a * rng.uniform(0.8, 1.2, a.shape)
    out.append(jnp.asarray(a, jnp.float32))
  return jax.tree_util.tree_unflatten(treedef, out)


def _nchw(a):
  return torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last)


def _nhwc(t):
  return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("num_attributes", [0, 3])
def test_outputs_and_bn_updates_match_flax(num_attributes):
  c = _config(num_attributes=num_attributes)
  arch = models.Architecture.from_config(c.model)
  nets = models.Networks.create(arch)
  v = _variables(arch)
  params = _randomise({g: v[g]["params"] for g in tr.GROUPS}, 2)
  stats = _randomise({g: v[g]["batch_stats"] for g in tr.GROUPS}, 3)
  tnets = tr.build(arch).to(memory_format=torch.channels_last)
  tr.load_flax(tnets, params, stats)
  # The inverse layout (used to compare gradients) round-trips the params.
  back = tr.to_flax_layout({g: dict(tnets[g].named_parameters()) for g in tr.GROUPS})
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))

  rng = np.random.RandomState(4)
  s = arch.image_size
  x = rng.uniform(-1, 1, (B, s, s, arch.channels)).astype(np.float32)
  z = rng.randn(B, arch.z_dim).astype(np.float32)
  y = rng.randint(0, 2, (B, num_attributes)).astype(np.float32) if num_attributes else None
  ty = None if y is None else torch.from_numpy(y)
  close = functools.partial(np.testing.assert_allclose, atol=1e-4, rtol=1e-4)

  for train in (False, True):
    tnets.train(train)

    def apply(g, *a, **kw):
      out = getattr(nets, g).apply({"params": params[g], "batch_stats": stats[g]}, *a,
                                   train=train, mutable=["batch_stats"] if train else False, **kw)
      return out if train else (out, None)

    with torch.no_grad():
      (mu, logvar), upd_e = apply("encoder", x, y)
      t_mu, t_logvar = tnets["encoder"](_nchw(x), ty)
      close(t_mu.numpy(), mu)
      close(t_logvar.numpy(), logvar)
      xd, upd_d = apply("decoder", z, y)
      close(_nhwc(tnets["decoder"](torch.from_numpy(z), ty)), xd)
      (logit, dis_l), upd_D = apply("discriminator", x, y)
      t_logit, t_dis_l = tnets["discriminator"](_nchw(x), ty)
      close(t_logit.numpy(), logit)
      close(_nhwc(t_dis_l), dis_l)
      if not train:  # (in train mode a second pass would update BN statistics twice)
        close(_nhwc(tnets["discriminator"](_nchw(x), ty, features_only=True)), dis_l)
    assert np.abs(np.asarray(mu)).max() > 0.1 and np.abs(np.asarray(logit)).max() > 0.1

    if train:  # One train-mode pass each: BN running statistics, momentum convention.
      m = arch.bn_momentum
      for g, upd in (("encoder", upd_e), ("decoder", upd_d), ("discriminator", upd_D)):
        for layer, new in upd["batch_stats"].items():
          bn = getattr(tnets[g], layer)
          old = stats[g][layer]
          close(bn.running_mean.numpy(), new["mean"])
          # torch updates with the unbiased variance, Flax with the biased one.
          n = bn_count(g, layer, arch)
          t_batch_var = (bn.running_var.numpy() - m * np.asarray(old["var"])) * (n - 1) / n
          close(t_batch_var, np.asarray(new["var"]) - m * np.asarray(old["var"]))


def bn_count(group, layer, arch):
  """Samples per channel that a BN layer's statistics average over (B * h * w)."""
  s = arch.image_size
  if layer == "bn_dense":
    return B
  i = int(layer[2:])
  if group == "encoder":
    hw = s // 2 ** (i + 1)
  elif group == "decoder":
    hw = s // 2 ** (len(arch.dec_widths) - i - 1)
  else:
    hw = s // 2 ** i
  return B * hw * hw


@functools.lru_cache(maxsize=None)
def _variables(arch):
  """Initial {group: {'params', 'batch_stats'}} of all three groups (eager, no compile)."""
  return models.init_variables(arch, jax.random.PRNGKey(1), tr.GROUPS)


class _State:  # params and batch_stats of the groups of one kind, as TrainState's.

  def __init__(self, c):
    v = _variables(models.Architecture.from_config(c.model))
    groups = train_step.GROUPS[c.kind]
    self.params = {g: v[g]["params"] for g in groups}
    self.batch_stats = {g: v[g]["batch_stats"] for g in groups}


def _ours_grads(c, x, eps, z_p):
  """jax.grad of routed_loss (eager: the tiny model's ops compile once for all cases)."""
  state = _State(c)
  nets = models.Networks.create(models.Architecture.from_config(c.model))
  loss_config = train_step.LossConfig.from_config(c)
  grads, (terms, _) = jax.grad(
      lambda p: train_step.routed_loss(p, state.batch_stats, x, None, eps, z_p, nets=nets,
                               loss_config=loss_config),
      has_aux=True)(state.params)
  return state, jax.tree.map(np.asarray, grads), {k: float(v) for k, v in terms.items()}


def _torch_grads(c, state, x, eps, z_p, routing):
  ref = tr.Reference(c, routing=routing)
  tr.load_flax(ref.nets, state.params, state.batch_stats)
  grads, terms = ref.grads(_nchw(x), torch.from_numpy(eps), torch.from_numpy(z_p))
  return tr.to_flax_layout(grads), {k: float(v.detach()) for k, v in terms.items()}


def _worst(ours, theirs):
  """{group: max over leaves of max|theirs - ours| / max|ours|}."""
  out = {}
  for g in ours:
    errs = jax.tree.map(lambda a, b: np.abs(a - b).max() / max(np.abs(a).max(), 1e-30),
                        ours[g], theirs[g])
    out[g] = max(jax.tree.leaves(errs))
  return out


def _draws(c):
  arch = models.Architecture.from_config(c.model)
  rng = np.random.RandomState(5)
  x = rng.uniform(-1, 1, (B, arch.image_size, arch.image_size, arch.channels)).astype(np.float32)
  return x, rng.randn(B, arch.z_dim).astype(np.float32), rng.randn(B, arch.z_dim).astype(np.float32)


CASES = [  # gamma 0.3 so that Dec's L_llike part is as visible as its GAN part.
    dict(kind="vaegan", gan_form="saturating", recon_in_gan=True, gamma=0.3),
    dict(kind="vaegan", gan_form="non_saturating", recon_in_gan=False, gamma=0.3),
    dict(kind="vae_dis_l", gan_form="saturating", recon_in_gan=True, gamma=0.3),
    dict(kind="gan", gan_form="saturating", recon_in_gan=True, gamma=0.3),
    dict(kind="vae", gan_form="saturating", recon_in_gan=True, gamma=0.3, pixel_sigma=0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda d: f"{d['kind']}-{d['gan_form']}-"
                         f"recon{int(d['recon_in_gan'])}")
def test_routed_gradients_match_ours(case):
  c = _config(**case)
  x, eps, z_p = _draws(c)
  state, ours, ours_terms = _ours_grads(c, x, eps, z_p)
  routings = ("single", "three") if case["kind"] == "vaegan" else ("single",)
  for routing in routings:
    theirs, terms = _torch_grads(c, state, x, eps, z_p, routing)
    assert set(theirs) == set(ours) == set(train_step.GROUPS[c.kind])
    for k in ("kl_prior", "llike", "gan_bce", "dec_gan"):
      if k in terms:
        np.testing.assert_allclose(terms[k], ours_terms[k], rtol=1e-5, err_msg=k)
    worst = _worst(ours, theirs)
    assert max(worst.values()) <= GRAD_RTOL, (routing, worst)


def test_a_different_routing_is_far_outside_the_tolerance():
  """Control: the check tells routings apart (Dis sees x~' or not; Dec's gamma)."""
  c = _config(**CASES[0])
  x, eps, z_p = _draws(c)
  state, ours, _ = _ours_grads(c, x, eps, z_p)
  other, _ = _torch_grads(_config(**{**CASES[0], "recon_in_gan": False}), state, x, eps, z_p,
                          "single")
  worst = _worst(ours, other)
  assert worst["encoder"] <= GRAD_RTOL  # Enc's loss has no GAN term.
  assert worst["decoder"] > 100 * GRAD_RTOL and worst["discriminator"] > 100 * GRAD_RTOL, worst
  other, _ = _torch_grads(_config(**{**CASES[0], "gamma": 0.6}), state, x, eps, z_p, "single")
  worst = _worst(ours, other)
  assert worst["encoder"] <= GRAD_RTOL and worst["discriminator"] <= GRAD_RTOL, worst
  assert worst["decoder"] > 100 * GRAD_RTOL, worst


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_timing_returns_a_finite_positive_rate(dtype):
  r = tr.time_train_step(tiny.get_config(), batch_size=16, dtype=dtype, device="cpu",
                         steps=3, warmup=1)
  assert np.isfinite(r["images_per_s"]) and r["images_per_s"] > 0, r
  assert 0 < r["step_s_p10"] <= r["step_s_median"] <= r["step_s_p90"], r
  assert r["images_per_s"] == pytest.approx(16 / r["step_s_median"])
  assert r["dtype"] == dtype and r["batch"] == 16 and r["torch_version"] == torch.__version__


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_two_steps_update_every_group_as_our_optimizer(weight_decay):
  """Two torch steps equal our RMSProp (optim.py: nu = decay nu + (1 - decay) g^2,
  p -= lr g / (sqrt(nu) + eps), L2 decay on optim.weight_decay_mask's kernels),
  applied in numpy to torch's own gradients of the same two steps."""
  c = _config(**CASES[0], weight_decay=weight_decay)
  x, eps, z_p = _draws(c)
  state = _State(c)
  ref = tr.Reference(c)
  tr.load_flax(ref.nets, state.params, state.batch_stats)
  params = jax.tree.map(np.asarray, state.params)
  mask = {g: optim.weight_decay_mask(params[g]) for g in params}
  nu = jax.tree.map(np.zeros_like, params)
  lr, d, e = np.float32(c.learning_rate), np.float32(c.rmsprop_decay), np.float32(c.rmsprop_eps)
  if weight_decay:
    assert sum(jax.tree.leaves(mask)) >= 6 and not all(jax.tree.leaves(mask))

  def rmsprop(p, g, n, m):
    g = g + np.float32(weight_decay) * p if m else g
    n = d * n + (1 - d) * g * g
    return p - lr * g / (np.sqrt(n) + e), n

  for _ in range(2):
    grads, _ = ref.grads(_nchw(x), torch.from_numpy(eps), torch.from_numpy(z_p))
    grads = tr.to_flax_layout(grads)
    for g in params:
      out = jax.tree.map(rmsprop, params[g], grads[g], nu[g], mask[g])
      params[g] = jax.tree.map(lambda t: t[0], out, is_leaf=lambda t: isinstance(t, tuple))
      nu[g] = jax.tree.map(lambda t: t[1], out, is_leaf=lambda t: isinstance(t, tuple))
    # The same step in torch, from the same state (it recomputes the same gradients:
    # BN running statistics do not enter train-mode outputs).
    ref.step(_nchw(x), eps=torch.from_numpy(eps), z_p=torch.from_numpy(z_p))
    new = tr.to_flax_layout({g: dict(ref.nets[g].named_parameters()) for g in ref.groups})
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6, rtol=0),
                 new, params)
  moved = jax.tree.map(lambda a, b: np.abs(a - np.asarray(b)).max(), params, state.params)
  assert min(jax.tree.leaves(moved)) > 0.1 * lr


def test_benchmark_does_not_import_torch_at_import_time():
  code = ("import sys; import experiments.benchmark; "
          "assert 'torch' not in sys.modules, 'torch imported'")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=False)
  assert r.returncode == 0, r.stderr[-2000:]


def test_benchmark_times_the_reference_in_a_subprocess_without_the_hugepage_tunable(monkeypatch):
  from experiments import benchmark  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0:glibc.malloc.hugetlb=1")
  env = benchmark._torch_env(hugepages=False)  # pylint: disable=protected-access
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.check=0" and env["JAX_PLATFORMS"] == "cpu"
  assert "hugetlb" in benchmark._torch_env(hugepages=True)["GLIBC_TUNABLES"]  # pylint: disable=protected-access
  c = tiny.get_config()
  c.batch_size, c.model.dtype = 8, "bfloat16"
  r = benchmark.run_torch_reference(c, "cpu", steps=2, warmup=1)
  assert "error" not in r, r
  assert r["batch"] == 8 and r["dtype"] == "bfloat16" and r["images_per_s"] > 0, r
  assert benchmark.torch_version() == torch.__version__.split("+")[0]
