r"""A PyTorch reference of the same VAE-GAN, to time against ours (issue 18 sec. 5).

Torch is optional: only ``experiments/`` and ``tests/`` import this module, never
the ``vaegan_jax`` library. It builds the paper's Enc/Dec/Dis (``vaegan_jax/models.py``)
from our ``Architecture`` (any config: the paper's 64x64 CelebA model, the 32x32
digits model, conditional models) with exactly our layer shapes and values:

  * 5x5 convs, stride 2 with a symmetric pad of 2 (``nn.Conv2d(padding=2)``), or
    stride 1 with pad 2; layers followed by BN have no bias.
  * Transposed convs ``nn.ConvTranspose2d(k=5, s=2, padding=2, output_padding=1)``,
    which is exactly our ``layers.conv2d_transpose`` (lax pads (2, 3), the
    transpose of the stride-2 conv): our kernel (k, k, C_out, C_in) is the kernel of
    the forward conv it transposes, torch's weight (C_in, C_out, k, k) likewise, so
    ``weight = kernel.transpose(3, 2, 0, 1)`` with no spatial flip.
  * Flatten and reshape in NHWC order (``permute`` before ``flatten``), so dense
    kernels load as plain transposes.
  * BN: momentum ``1 - bn_momentum`` (torch's convention), our epsilons. One
    difference that does not touch outputs or gradients: torch's running variance
    is updated with the unbiased batch variance, Flax's with the biased one.
  * Dis_l is the last strided conv's output before its BN/ReLU; tanh, mu/logvar,
    the logit and Dis_l are float32 outputs, as ours.

The train step is a port of ``train_step.routed_loss``: the same batch composition
(Dis_l on [x~; x] with the target detached; the GAN term on [x; Dec(z_p)] or, with
``recon_in_gan``, [x; Dec(sg(z)); Dec(z_p)]) and the same per-group losses:

  Enc: L_prior + L_llike;  Dec: gamma*L_llike - BCE (saturating) or + NS;
  Dis: BCE, never L_llike.  (The other kinds 'vae', 'gan', 'vae_dis_l' as ours.)

Gradients, ``routing=``:
  * ``'single'`` (default, timed): ONE backward pass of L_prior + L_llike + BCE
    with the masks of ``vaegan_jax/routing.py`` written in torch (Dec's params
    gamma-scaled on the reconstruction path, Dis's params detached on the Dis_l
    path, the fakes' gradient reversed before Dis), the params passed through
    ``torch.func.functional_call``. This is our algorithm, so the timing compares
    frameworks rather than algorithms.
  * ``'three'``: three backward passes, ``torch.autograd.grad`` of each group's own
    loss w.r.t. its own params over one retained forward graph (what a PyTorch
    user would write; the tests check both against ours).

Updates: ``torch.optim.RMSprop`` (alpha = rmsprop_decay, eps outside the sqrt,
which is ``rmsprop_eps_in_sqrt=False``, the only form supported here; no
momentum), L2 weight decay on conv/dense kernels outside the heads as
``optim.weight_decay_mask``, the learning rate of ``optim.learning_rate`` set per
step. Left out, for timing only: the balance rule (all three groups are updated
every step, where ours computes the rule's flags and selects with ``where``)
and the non-finite guard.

Dtypes: 'float32', or 'bfloat16' through ``torch.autocast`` (cuda, and cpu,
where torch's CPU autocast runs convs and matmuls in bf16: oneDNN, AMX where the
CPU has it); params and the optimizer stay float32 as ours; BN takes the bf16
activations with float32 params. Memory format:
channels_last throughout. On cuda, ``cudnn.benchmark`` is on and float32 matmuls
may use TF32, as XLA's default precision does for ours. The timed model has
torch's default init (``load_flax`` loads ours; speed does not depend on it).

  python -m experiments.torch_reference --config=paper64 --batch_size=64 --steps=3

``experiments/benchmark.py --torch`` runs this file as a subprocess per row (the
row's exact config as JSON), so that torch gets its own process: without the
glibc huge-page tunable the benchmark re-executes itself with for XLA (with it,
torch's 64x64 CPU step measured 6.9 s instead of 4.8 s) and without JAX's
threads and buffers beside it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vaegan_jax import models
from vaegan_jax import train_step

GROUPS = ("encoder", "decoder", "discriminator")
ROUTINGS = ("single", "three")


def _bn2d(arch: models.Architecture, c: int, eps: float) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, eps=eps, momentum=1.0 - arch.bn_momentum)


def _bn1d(arch: models.Architecture, c: int, eps: float) -> nn.BatchNorm1d:
  return nn.BatchNorm1d(c, eps=eps, momentum=1.0 - arch.bn_momentum)


def _conv(cin: int, cout: int, stride: int, bias: bool) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 5, stride=stride, padding=2, bias=bias)


def _tile(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
  """(B, A) -> (B, A, H, W) to append to NCHW feature maps h."""
  return y[:, :, None, None].to(h.dtype).expand(-1, -1, h.shape[2], h.shape[3])


def _nhwc_flat(h: torch.Tensor) -> torch.Tensor:
  """NCHW -> (B, H*W*C) in our (NHWC) flatten order."""
  return h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)


class Encoder(nn.Module):
  """x (B, C, H, W) [, y] -> mu, logvar (B, z_dim) float32."""

  def __init__(self, arch: models.Architecture):
    super().__init__()
    a = self.arch = arch
    cin = a.channels + a.num_attributes
    for i, w in enumerate(a.enc_widths):
      self.add_module(f"conv{i}", _conv(cin, w, 2, False))
      self.add_module(f"bn{i}", _bn2d(a, w, a.bn_eps_conv))
      cin = w
    s = a.image_size // 2 ** len(a.enc_widths)
    self.dense = nn.Linear(s * s * cin + a.num_attributes, a.enc_dense, bias=False)
    self.bn_dense = _bn1d(a, a.enc_dense, a.bn_eps_dense)
    self.mu_head = nn.Linear(a.enc_dense, a.z_dim)
    self.logvar_head = nn.Linear(a.enc_dense, a.z_dim)

  def forward(self, x, y=None):
    a = self.arch
    h = x
    if a.num_attributes:
      h = torch.cat([h, _tile(y, h)], 1)
    for i in range(len(a.enc_widths)):
      h = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(h)))
    h = _nhwc_flat(h)
    if a.num_attributes:
      h = torch.cat([h, y.to(h.dtype)], 1)
    h = F.relu(self.bn_dense(self.dense(h)))
    return self.mu_head(h).float(), self.logvar_head(h).float()


class Decoder(nn.Module):
  """z (B, z_dim) [, y] -> x (B, C, H, W) float32 in [-1, 1]."""

  def __init__(self, arch: models.Architecture):
    super().__init__()
    a = self.arch = arch
    self.s = s = a.image_size // 2 ** len(a.dec_widths)
    self.dense = nn.Linear(a.z_dim + a.num_attributes, s * s * a.dec_dense_channels, bias=False)
    self.bn_dense = _bn1d(a, s * s * a.dec_dense_channels, a.bn_eps_dense)
    cin = a.dec_dense_channels
    for i, w in enumerate(a.dec_widths):
      self.add_module(f"convT{i}", nn.ConvTranspose2d(cin, w, 5, stride=2, padding=2,
                                                      output_padding=1, bias=False))
      self.add_module(f"bn{i}", _bn2d(a, w, a.bn_eps_conv))
      cin = w
    self.out_conv = _conv(cin, a.channels, 1, True)

  def forward(self, z, y=None):
    a = self.arch
    h = z
    if a.num_attributes:
      h = torch.cat([h, y.to(h.dtype)], 1)
    h = F.relu(self.bn_dense(self.dense(h)))
    # NHWC reshape, then an NCHW view that is channels_last in memory.
    h = h.reshape(h.shape[0], self.s, self.s, a.dec_dense_channels).permute(0, 3, 1, 2)
    for i in range(len(a.dec_widths)):
      h = F.relu(getattr(self, f"bn{i}")(getattr(self, f"convT{i}")(h)))
    return torch.tanh(self.out_conv(h).float())


class Discriminator(nn.Module):
  """x (B, C, H, W) [, y] -> (logit (B,), Dis_l (B, c, h, w)), float32; or Dis_l alone."""

  def __init__(self, arch: models.Architecture):
    super().__init__()
    a = self.arch = arch
    self.conv0 = _conv(a.channels + a.num_attributes, a.dis_first, 1, True)
    cin = a.dis_first
    n = len(a.dis_widths)
    for i, w in enumerate(a.dis_widths, start=1):
      self.add_module(f"conv{i}", _conv(cin, w, 2, False))
      self.add_module(f"bn{i}", _bn2d(a, w, a.bn_eps_conv))
      cin = w
    s = a.image_size // 2 ** n
    self.dense = nn.Linear(s * s * cin + a.num_attributes, a.dis_dense, bias=False)
    self.bn_dense = _bn1d(a, a.dis_dense, a.bn_eps_dense)
    self.logit_head = nn.Linear(a.dis_dense, 1)

  def forward(self, x, y=None, features_only: bool = False):
    a = self.arch
    h = x
    if a.num_attributes:
      h = torch.cat([h, _tile(y, h)], 1)
    h = F.relu(self.conv0(h))
    n = len(a.dis_widths)
    dis_l = None
    for i in range(1, n + 1):
      h = getattr(self, f"conv{i}")(h)
      if i == n:
        dis_l = h.float()
        if features_only:
          return dis_l
      h = F.relu(getattr(self, f"bn{i}")(h))
    h = _nhwc_flat(h)
    if a.num_attributes:
      h = torch.cat([h, y.to(h.dtype)], 1)
    h = F.relu(self.bn_dense(self.dense(h)))
    return self.logit_head(h)[:, 0].float(), dis_l


def build(arch: models.Architecture, groups=GROUPS) -> nn.ModuleDict:
  """{group: module} for ``groups``, float32, not yet moved or reformatted."""
  cls = {"encoder": Encoder, "decoder": Decoder, "discriminator": Discriminator}
  return nn.ModuleDict({g: cls[g](arch) for g in groups})


# ----------------------------------------------------------------------------
# Our Flax params -> torch.


def _to_torch(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, dtype=np.float32))


def load_flax(nets: nn.ModuleDict, params: dict, batch_stats: Optional[dict] = None) -> None:
  """Copies our params (``TrainState.params``: {group: flax params}) and, if
  given, ``batch_stats`` into the torch modules, in place.

  Conv kernels HWIO -> OIHW; transposed-conv kernels (k, k, C_out, C_in) ->
  (C_in, C_out, k, k) (the same permutation: both are the forward conv's kernel);
  dense kernels (in, out) -> weight (out, in); BN scale/bias -> weight/bias and
  mean/var -> running_mean/running_var. Every torch param must be covered.
  """
  with torch.no_grad():
    for g, net in nets.items():
      loaded = set()
      for layer, leaves in params[g].items():
        mod = getattr(net, layer)
        for leaf, value in leaves.items():
          v = _to_torch(value)
          if leaf == "kernel":
            v = v.permute(3, 2, 0, 1) if v.ndim == 4 else v.T
            name = "weight"
          elif leaf == "scale":
            name = "weight"
          elif leaf == "bias":
            name = "bias"
          else:
            raise ValueError(f"Unknown leaf {g}/{layer}/{leaf}.")
          dst = getattr(mod, name)
          if dst.shape != v.shape:
            raise ValueError(f"{g}/{layer}/{leaf}: torch {tuple(dst.shape)} vs flax "
                             f"{tuple(v.shape)} (after transposing).")
          dst.copy_(v)
          loaded.add(f"{layer}.{name}")
      missing = {n for n, _ in net.named_parameters()} - loaded
      if missing:
        raise ValueError(f"{g}: torch params not in the flax params: {sorted(missing)}.")
      if batch_stats is not None:
        for layer, leaves in batch_stats.get(g, {}).items():
          mod = getattr(net, layer)
          mod.running_mean.copy_(_to_torch(leaves["mean"]))
          mod.running_var.copy_(_to_torch(leaves["var"]))


def to_flax_layout(grads: dict[str, dict[str, torch.Tensor]]) -> dict:
  """{group: {torch param name: tensor}} -> {group: {layer: {leaf: np.ndarray}}},
  in our layouts (the inverse of ``load_flax``'s permutations)."""
  out = {}
  for g, named in grads.items():
    tree: dict[str, dict[str, np.ndarray]] = {}
    for name, v in named.items():
      layer, leaf = name.rsplit(".", 1)
      v = v.detach().float().cpu()
      if leaf == "weight":
        if v.ndim == 4:
          v, leaf = v.permute(2, 3, 1, 0), "kernel"
        elif v.ndim == 2:
          v, leaf = v.T, "kernel"
        else:
          leaf = "scale"
      tree.setdefault(layer, {})[leaf] = v.numpy()
    out[g] = tree
  return out


# ----------------------------------------------------------------------------
# The routed step.


def _scale_grad(a: torch.Tensor, c: float) -> torch.Tensor:
  """routing.scale_grad: forward a exactly, gradient c*g."""
  if c == 1.0:
    return a
  if c == 0.0:
    return a.detach()
  s = a.detach()
  return s + c * (a - s)


def _kl_prior(mu, logvar):
  """Batch mean of KL(q(z|x) || N(0, I)) (``losses.kl_prior``)."""
  return torch.mean(-0.5 * torch.sum(1.0 + logvar - mu.square() - logvar.exp(), -1))


def _half_sq_norm(d):
  """Batch mean of 0.5 ||d_i||^2: the Gaussian NLLs of ``losses`` up to constants."""
  return torch.mean(0.5 * d.square().flatten(1).sum(-1))

def _reverse_grad(a: torch.Tensor) -> torch.Tensor:
  """routing.reverse_grad: forward a exactly, gradient -g."""
  return 2.0 * a.detach() - a


class Reference:
  """The torch model, its three optimizers and the routed train step of ``config``.

  Args:
    config: one of our configs (ConfigDict): kind, gamma, gan_form, recon_in_gan,
      pixel_sigma, learning_rate, lr_schedule, rmsprop_*, weight_decay, model.
    device: 'cpu' or 'cuda'.
    dtype: 'float32' or 'bfloat16' (autocast; params stay float32). None: the
      config's model.dtype.
    routing: 'single' or 'three' (module docstring).
    compile: wrap the loss in ``torch.compile`` (forward and backward graphs).
  """

  def __init__(self, config, device: str = "cpu", dtype: Optional[str] = None,
               routing: str = "single", compile: bool = False):  # pylint: disable=redefined-builtin
    if routing not in ROUTINGS:
      raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}.")
    if config.rmsprop_eps_in_sqrt:
      raise ValueError("The torch reference has torch's RMSprop only: eps outside the sqrt "
                       "(rmsprop_eps_in_sqrt=False).")
    self.config = config
    self.arch = models.Architecture.from_config(config.model)
    self.loss_config = train_step.LossConfig.from_config(config)
    self.loss_config.validate()
    self.device = torch.device(device)
    self.dtype = dtype or self.arch.dtype
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}.")
    self.routing = routing
    self.groups = self.loss_config.groups
    self.nets = build(self.arch, self.groups).to(self.device).to(
        memory_format=torch.channels_last)
    self.nets.train()
    self.step_count = 0
    self.optimizers = {g: self._optimizer(self.nets[g]) for g in self.groups}
    loss = self._routed_loss if routing == "single" else self._group_losses
    self._loss = torch.compile(loss) if compile else loss

  # -- optimizers --

  def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
    c = self.config
    decayed, plain = [], []
    for name, p in net.named_parameters():
      layer, leaf = name.rsplit(".", 1)
      is_kernel = leaf == "weight" and p.ndim >= 2  # conv/dense kernels, not BN scales
      (decayed if is_kernel and layer not in models.HEADS else plain).append(p)
    groups = [dict(params=plain, weight_decay=0.0)]
    if decayed:
      groups.append(dict(params=decayed, weight_decay=float(c.weight_decay or 0.0)))
    return torch.optim.RMSprop(groups, lr=float(c.learning_rate), alpha=float(c.rmsprop_decay),
                               eps=float(c.rmsprop_eps), momentum=0.0, centered=False,
                               foreach=True)

  def learning_rate(self, step: int) -> float:
    """optim.learning_rate, on the host."""
    c = self.config
    if c.lr_schedule == "constant":
      return float(c.learning_rate)
    epoch = math.floor(step / 250.0)
    frac = min(epoch / 250.0, 1.0)
    return (0.025 - frac ** 0.75 * (0.025 - 1e-5)) / 64.0

  # -- losses --

  def _autocast(self):
    if self.dtype == "bfloat16":
      return torch.autocast(self.device.type, dtype=torch.bfloat16)
    return torch.autocast(self.device.type, enabled=False)

  def _call(self, g: str, params: dict, *args, buffers: Optional[dict] = None, **kw):
    state = dict(params)
    if buffers is not None:
      state.update(buffers)
    return torch.func.functional_call(self.nets[g], state, args, kw)

  def _params(self, g: str, mode: str = "grad", c: float = 1.0) -> dict:
    ps = dict(self.nets[g].named_parameters())
    if mode == "detach":
      return {k: v.detach() for k, v in ps.items()}
    if mode == "scale":
      return {k: _scale_grad(v, c) for k, v in ps.items()}
    return ps

  def _routed_loss(self, x, y, eps, z_p):
    """Port of ``train_step.routed_loss``: (total, terms) with the masks."""
    loss_config, kind = self.loss_config, self.loss_config.kind
    b = x.shape[0]
    cat = lambda *a: None if y is None else torch.cat(a)
    terms = {}
    total = x.new_zeros(())
    z = None
    if kind != "gan":
      mu, logvar = self.nets["encoder"](x, y)
      z = mu + torch.exp(0.5 * logvar) * eps
      terms["kl_prior"] = _kl_prior(mu, logvar)
      x_tilde = self._call(
          "decoder", self._params("decoder", "scale", loss_config.dec_llike_weight), z, y)
      if kind == "vae":
        terms["llike"] = _half_sq_norm((x_tilde - x) / loss_config.pixel_sigma)
        return terms["kl_prior"] + terms["llike"], terms
      feats = self._call("discriminator", self._params("discriminator", "detach"),
                         torch.cat([x_tilde, x]), cat(y, y), features_only=True)
      terms["llike"] = _half_sq_norm(feats[:b] - feats[b:].detach())
      total = terms["kl_prior"] + terms["llike"]

    fake_z, fake_y, n_groups = z_p, y, 1
    if kind != "gan" and loss_config.recon_in_gan:
      fake_z, fake_y, n_groups = torch.cat([z.detach(), z_p]), cat(y, y), 2
    dec_mode = "detach" if kind == "vae_dis_l" else "grad"
    x_fake = self._call("decoder", self._params("decoder", dec_mode), fake_z, fake_y)
    saturating = kind != "vae_dis_l" and loss_config.gan_form == "saturating"
    x_fake_in = _reverse_grad(x_fake) if saturating else x_fake.detach()
    yy = None if y is None else torch.cat([y, fake_y])
    ns_buffers = None
    if not saturating and kind != "vae_dis_l":  # the NS pass must not update BN stats
      ns_buffers = {k: v.clone() for k, v in self.nets["discriminator"].named_buffers()}
    logits, _ = self.nets["discriminator"](torch.cat([x, x_fake_in]), yy)
    real, fakes = logits[:b], torch.chunk(logits[b:], n_groups)
    terms["gan_bce"] = F.softplus(-real).mean() + sum(F.softplus(f).mean() for f in fakes)
    total = total + terms["gan_bce"]
    if ns_buffers is not None:
      ns_logits, _ = self._call("discriminator", self._params("discriminator", "detach"),
                                torch.cat([x, x_fake]), yy, buffers=ns_buffers)
      terms["dec_gan"] = sum(F.softplus(-f).mean() for f in torch.chunk(ns_logits[b:], n_groups))
      total = total + terms["dec_gan"]
    return total, terms

  def _group_losses(self, x, y, eps, z_p):
    """Each group's own loss over one unmasked forward: ({group: loss}, terms)."""
    loss_config, kind = self.loss_config, self.loss_config.kind
    b = x.shape[0]
    cat = lambda *a: None if y is None else torch.cat(a)
    terms = {}
    z = None
    if kind != "gan":
      mu, logvar = self.nets["encoder"](x, y)
      z = mu + torch.exp(0.5 * logvar) * eps
      terms["kl_prior"] = _kl_prior(mu, logvar)
      x_tilde = self.nets["decoder"](z, y)
      if kind == "vae":
        terms["llike"] = _half_sq_norm((x_tilde - x) / loss_config.pixel_sigma)
        return {"encoder": terms["kl_prior"] + terms["llike"], "decoder": terms["llike"]}, terms
      feats = self.nets["discriminator"](torch.cat([x_tilde, x]), cat(y, y), features_only=True)
      terms["llike"] = _half_sq_norm(feats[:b] - feats[b:].detach())
    fake_z, fake_y, n_groups = z_p, y, 1
    if kind != "gan" and loss_config.recon_in_gan:
      fake_z, fake_y, n_groups = torch.cat([z.detach(), z_p]), cat(y, y), 2
    x_fake = self.nets["decoder"](fake_z, fake_y)
    yy = None if y is None else torch.cat([y, fake_y])
    ns_buffers = None
    if loss_config.gan_form != "saturating" and kind not in ("vae_dis_l",):
      ns_buffers = {k: v.clone() for k, v in self.nets["discriminator"].named_buffers()}
    logits, _ = self.nets["discriminator"](torch.cat([x, x_fake]), yy)
    real, fakes = logits[:b], torch.chunk(logits[b:], n_groups)
    terms["gan_bce"] = F.softplus(-real).mean() + sum(F.softplus(f).mean() for f in fakes)
    if kind == "vae_dis_l":
      dec_gan = None
    elif ns_buffers is None:
      dec_gan = -terms["gan_bce"]
    else:
      ns_logits, _ = self._call("discriminator", dict(self.nets["discriminator"].named_parameters()),
                                torch.cat([x, x_fake]), yy, buffers=ns_buffers)
      dec_gan = terms["dec_gan"] = sum(
          F.softplus(-f).mean() for f in torch.chunk(ns_logits[b:], n_groups))
    out = {"discriminator": terms["gan_bce"]}
    if kind != "gan":
      out["encoder"] = terms["kl_prior"] + terms["llike"]
      w = loss_config.dec_llike_weight
      out["decoder"] = w * terms["llike"] + (dec_gan if dec_gan is not None else 0.0)
    else:
      out["decoder"] = dec_gan
    return out, terms

  # -- the step --

  def grads(self, x: torch.Tensor, eps: Optional[torch.Tensor], z_p: torch.Tensor,
            y: Optional[torch.Tensor] = None) -> tuple[dict, dict]:
    """({group: {param name: grad}}, terms) of one routed step, BN in train mode
    (batch statistics; the running statistics are updated, as ours).

    x is NCHW (channels_last is applied here); eps, z_p (B, z_dim).
    """
    x = x.to(self.device, memory_format=torch.channels_last)
    with self._autocast():
      out, terms = self._loss(x, y, eps, z_p)
    named = {g: dict(self.nets[g].named_parameters()) for g in self.groups}
    if self.routing == "single":
      flat = [(g, k, p) for g in self.groups for k, p in named[g].items()]
      gs = torch.autograd.grad(out, [p for _, _, p in flat], allow_unused=True)
      grads = {g: {} for g in self.groups}
      for (g, k, p), gr in zip(flat, gs):
        grads[g][k] = torch.zeros_like(p) if gr is None else gr
      return grads, terms
    grads = {}
    for i, g in enumerate(self.groups):
      ps = list(named[g].values())
      gs = torch.autograd.grad(out[g], ps, retain_graph=i < len(self.groups) - 1,
                               allow_unused=True)
      grads[g] = {k: torch.zeros_like(p) if gr is None else gr
                  for (k, p), gr in zip(named[g].items(), gs)}
    return grads, terms

  def step(self, x: torch.Tensor, y: Optional[torch.Tensor] = None,
           eps: Optional[torch.Tensor] = None, z_p: Optional[torch.Tensor] = None) -> dict:
    """One full train step: noise, forward, routed backward, three RMSProp updates."""
    b = x.shape[0]
    if eps is None and self.loss_config.kind != "gan":
      eps = torch.randn(b, self.arch.z_dim, device=self.device)
    if z_p is None:
      z_p = torch.randn(b, self.arch.z_dim, device=self.device)
    grads, terms = self.grads(x, eps, z_p, y)
    lr = self.learning_rate(self.step_count)
    for g in self.groups:
      opt = self.optimizers[g]
      for group in opt.param_groups:
        group["lr"] = lr
        for p in group["params"]:
          p.grad = None
      for name, p in self.nets[g].named_parameters():
        p.grad = grads[g][name]
      opt.step()
    self.step_count += 1
    return terms


# ----------------------------------------------------------------------------
# Timing.


def _sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def time_train_step(config, batch_size: Optional[int] = None, dtype: Optional[str] = None,
                    device: str = "cpu", steps: int = 20, warmup: int = 2,
                    compile: bool = False, routing: str = "single",  # pylint: disable=redefined-builtin
                    seed: int = 0) -> dict[str, Any]:
  """Times the torch reference's full train step, measured like ours.

  After ``warmup`` untimed steps (the first also compiles with ``compile=True``
  and lets cudnn.benchmark pick its algorithms), each of ``steps`` steps is
  timed from the call to its completion (``torch.cuda.synchronize`` on cuda).
  The batch is fixed uniform noise in [-1, 1], as the benchmark's; the noise
  eps, z_p is drawn inside each step, as ours.

  Returns: dict(step_s_median, step_s_p10, step_s_p90, images_per_s, first_step_s,
  torch_version, device, dtype, batch, routing, compile, num_threads).
  """
  b = int(batch_size or config.batch_size)
  dev = torch.device(device)
  if dev.type == "cuda":
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True  # XLA's default precision on GPU
    torch.backends.cudnn.allow_tf32 = True
  torch.manual_seed(seed)
  ref = Reference(config, device=device, dtype=dtype, routing=routing, compile=compile)
  s, c = ref.arch.image_size, ref.arch.channels
  x = np.random.RandomState(0).uniform(-1, 1, (b, s, s, c)).astype(np.float32)
  x = torch.from_numpy(x).permute(0, 3, 1, 2).to(dev, memory_format=torch.channels_last)
  y = None
  if ref.arch.num_attributes:
    y = torch.from_numpy(np.random.RandomState(1).randint(
        0, 2, (b, ref.arch.num_attributes)).astype(np.float32)).to(dev)

  t = time.perf_counter()
  ref.step(x, y)
  _sync(dev)
  first = time.perf_counter() - t
  for _ in range(max(0, warmup - 1)):
    ref.step(x, y)
  _sync(dev)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    ref.step(x, y)
    _sync(dev)
    times.append(time.perf_counter() - t)
  times = np.asarray(times)
  med = float(np.median(times))
  out = dict(step_s_median=med, step_s_p10=float(np.percentile(times, 10)),
             step_s_p90=float(np.percentile(times, 90)), images_per_s=b / med,
             first_step_s=first, torch_version=torch.__version__, device=str(dev),
             dtype=ref.dtype, batch=b, routing=routing, compile=bool(compile),
             num_threads=torch.get_num_threads())
  if dev.type == "cuda":
    out["device_name"] = torch.cuda.get_device_name(dev)
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
  del ref
  if dev.type == "cuda":
    torch.cuda.empty_cache()
  return out


# ----------------------------------------------------------------------------


def _main(argv=None):
  """Times the reference; with --config_json (a config's ``to_json()``), that exact
  config (the benchmark's rows); else --config and --kind."""
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from experiments.configs import celeba_vaegan, default, tiny  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="paper64", choices=["paper64", "default32", "tiny"])
  p.add_argument("--config_json", default=None, help="A JSON file of one config (overrides "
                 "--config and --kind).")
  p.add_argument("--kind", default="vaegan", choices=list(train_step.KINDS))
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--routing", default="single", choices=list(ROUTINGS))
  p.add_argument("--compile", action="store_true")
  p.add_argument("--json_out", default=None, help="Also write the result here.")
  a = p.parse_args(argv)
  if a.config_json:
    with open(a.config_json) as f:
      config = ml_collections.ConfigDict(json.load(f))
  else:
    config = {"paper64": celeba_vaegan, "default32": default, "tiny": tiny}[a.config].get_config()
    config.kind = a.kind
  r = time_train_step(config, a.batch_size, a.dtype, a.device, a.steps, a.warmup, a.compile,
                      a.routing)
  print(json.dumps(r, indent=2))
  if a.json_out:
    with open(a.json_out, "w") as f:
      json.dump(r, f)


if __name__ == "__main__":
  _main()
