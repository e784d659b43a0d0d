"""Which BatchNorm statistics should inference-mode sampling use? The measurement.

``measure(config, steps, num)`` is what ``python -m experiments.bn_statistics``
runs; the numbers and the decision are in ``vaegan_jax/train_step.py``'s
docstring and docs/results.md.

In a train step Dec runs twice, on the posterior codes z (the reconstruction
pass) and on the fakes' codes z_p (the GAN pass; [sg(z); z_p] with
``recon_in_gan``), and Dis runs on [x~; x] up to Dis_l, then on [x; fakes].
Each pass updates the same running averages, so the kept statistics are an
EMA over both passes. The authors' code keeps separate statistics per pass.

This trains ``config`` for ``steps`` steps with the library's train step,
and alongside it keeps per-pass EMAs (same momentum, same batches, same noise,
the pre-step parameters: exactly the passes of the step, each updating its own
copy). Then it decodes the same ``num`` prior codes z ~ N(0, I) in inference
mode with:

  kept         the running averages as the train step keeps them (both passes);
  prior_pass   the EMA of the GAN pass only (Dec(z_p), what sampling decodes);
  recon_pass   the EMA of the reconstruction pass only (Dec(z), z ~ q(z|x));
  prior_pop    population statistics of Dec(z_p) at the final parameters
               (the mean of 32 batch statistics, batch = config.batch_size);

and, as the target all of them approximate, Dec(z) in *train* mode on batches
of ``config.batch_size`` (batch statistics: the images Dis judged in training).
Returns, as a dict: the mean absolute pixel
difference (pixels in [-1, 1]) between each pair, the largest difference of
the BN statistics (mean shift in units of the kept std, log variance ratio), and the digits-classifier FID of each set
against the training images (``vaegan_jax.evaluation``), the pixel MSE of
held-out reconstructions Dec(mu(x)) with each decoder statistic, and for Dis,
the held-out Dis_l reconstruction error with the kept and per-pass statistics.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vaegan_jax import losses
from vaegan_jax import models
from vaegan_jax import sampling
from vaegan_jax import train
from vaegan_jax import train_config
from vaegan_jax import train_step
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import features as feats_lib

# Batches of the prior pass whose batch statistics make its population statistics.
POPULATION_BATCHES = 32


def _stat_difference(a, b) -> dict[str, float]:
  """Largest |mean_a - mean_b| / std_b and |log(var_a / var_b)| over BN layers and channels."""
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  shift, scale = 0.0, 0.0
  for k in fa:
    if k[-1] != "mean":
      continue
    va, vb = np.asarray(fa[k[:-1] + ("var",)]), np.asarray(fb[k[:-1] + ("var",)])
    d = np.abs(np.asarray(fa[k]) - np.asarray(fb[k])) / np.sqrt(vb + 1e-5)
    shift = max(shift, float(np.max(d)))
    scale = max(scale, float(np.max(np.abs(np.log((va + 1e-5) / (vb + 1e-5))))))
  return {"max_mean_shift_in_std": shift, "max_abs_log_var_ratio": scale}


def _apply_train(net, params, stats, *a, **kw):
  """Train-mode apply: (output, the updated batch_stats)."""
  out, upd = net.apply({"params": params, "batch_stats": stats}, *a, train=True,
                       mutable=["batch_stats"], **kw)
  return out, upd["batch_stats"]


def _per_pass_fn(config, arch: models.Architecture, nets: models.Networks):
  """Jitted (state, x (B, S, S, C), sep) -> sep: the step's passes with the pre-step
  state, each updating its own copy of the statistics (``sep``, keyed by pass)."""

  @jax.jit
  def per_pass(state, x, sep):
    p, st = state.params, state.batch_stats
    eps, z_p = train_step.draw_noise(state.rng, state.step, x.shape[0], arch.z_dim, None)
    (mu, logvar), _ = _apply_train(nets.encoder, p["encoder"], st["encoder"], x)
    z = mu + jnp.exp(0.5 * logvar) * eps
    x_t, sep["dec_recon"] = _apply_train(nets.decoder, p["decoder"], sep["dec_recon"], z)
    fake_z = jnp.concatenate([z, z_p]) if config.recon_in_gan else z_p
    x_f, sep["dec_gan"] = _apply_train(nets.decoder, p["decoder"], sep["dec_gan"], fake_z)
    _, sep["dis_l"] = _apply_train(nets.discriminator, p["discriminator"], sep["dis_l"],
                                   jnp.concatenate([x_t, x]), features_only=True)
    _, sep["dis_gan"] = _apply_train(nets.discriminator, p["discriminator"], sep["dis_gan"],
                                     jnp.concatenate([x, x_f]))
    return sep

  return per_pass


def _train(config, steps: int, train_images: np.ndarray, per_pass) -> tuple:
  """(state, per-pass statistics, seconds) after ``steps`` library train steps.

  Batches of ``config.batch_size`` are drawn with replacement from
  ``train_images`` (N, S, S, C).
  """
  rng = np.random.default_rng(int(config.seed))
  b = int(config.batch_size)
  state = train_step.create_train_state(config, jax.random.PRNGKey(int(config.seed)))
  st0 = state.batch_stats
  sep = {"dec_recon": st0["decoder"], "dec_gan": st0["decoder"],
         "dis_l": st0["discriminator"], "dis_gan": st0["discriminator"]}
  step = jax.jit(functools.partial(train_step.train_step, config=config, axis_name=None))
  t0 = time.time()
  for _ in range(steps):
    x = jnp.asarray(train_images[rng.integers(0, len(train_images), b)])
    new_sep = per_pass(state, x, sep)
    state, _ = step(state, {"image": x})
    if int(state.bad_step) >= 0:
      raise train.NonFiniteLossError(f"Non-finite loss at step {int(state.bad_step)}: "
                                     "lower --config.learning_rate.")
    sep = new_sep
  return state, sep, time.time() - t0


def _prior_population(config, p, kept):
  """Population statistics of the prior pass at the final parameters: the mean of
  POPULATION_BATCHES batch statistics (batch statistics are those at momentum 0)."""
  b = int(config.batch_size)
  pop_dec = models.Decoder(models.Architecture.from_config({**config.model, "bn_momentum": 0.0}))
  batch_stats = jax.jit(lambda zz: _apply_train(pop_dec, p["decoder"], kept["decoder"], zz)[1])
  keys = jax.random.split(jax.random.PRNGKey(1234), POPULATION_BATCHES)
  pops = [batch_stats(sampling.prior_sample(k, b, config.model.z_dim)) for k in keys]
  return jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), 0), *pops)


def _decoders(nets: models.Networks, p, kept):
  """(decode(stats, z), decode_train(z)): Dec in inference mode with the given
  statistics, and in train mode (batch statistics), for z (B, Z)."""
  decode = jax.jit(lambda stats, zz: nets.decoder.apply(
      {"params": p["decoder"], "batch_stats": stats}, zz, train=False))
  decode_train = jax.jit(lambda zz: _apply_train(nets.decoder, p["decoder"], kept["decoder"],
                                                 zz)[0])
  return decode, decode_train


def _prior_images(config, num: int, stats: dict, decode, decode_train) -> dict:
  """{statistics name: Dec(z) (num, S, S, C)} for the same ``num`` prior codes, and
  'train_mode', decoded in batches of ``config.batch_size``."""
  b = int(config.batch_size)
  z = sampling.prior_sample(jax.random.PRNGKey(int(config.seed) + 1), num, config.model.z_dim)
  # No zero-padded last batch (sampling.in_chunks): in train mode the batch
  # statistics would see the padding.
  chunks = lambda fn: np.concatenate([np.asarray(fn(z[s:s + b])) for s in range(0, num, b)])
  images = {name: chunks(functools.partial(decode, s)) for name, s in stats.items()}
  images["train_mode"] = chunks(decode_train)
  return images


def _fids(config, images: dict, train_images: np.ndarray, num: int):
  """{name: FID against the training images} in the digits classifier's features
  (``features.resolve('auto')``), or why there are no features."""
  extractor, why = feats_lib.resolve("auto", config.data)
  fid = {}
  if extractor is not None:
    real = evaluator.extract(extractor, train_images)
    for name, im in images.items():
      fid[name] = evaluator.feature_metrics(real, evaluator.extract(extractor, im),
                                            kid_subset_size=min(num, 500))["fid"]
  return fid or why


def _heldout_errors(nets: models.Networks, p, kept, sep, stats: dict, held: np.ndarray,
                    decode, decode_train) -> tuple[dict, dict]:
  """(pixel MSE of Dec(mu(x)) per decoder statistic, Dis_l error per Dis statistic)
  of the held-out images ``held`` (N, S, S, C)."""
  mu, _ = nets.encoder.apply({"params": p["encoder"], "batch_stats": kept["encoder"]},
                             held, train=False)
  recon_mse = {name: float(np.mean((np.asarray(decode(s, mu)) - held) ** 2))
               for name, s in stats.items()}
  recon_mse["train_mode"] = float(np.mean((np.asarray(decode_train(mu)) - held) ** 2))

  # Dis: the Dis_l error of Dec(mu(x)) with Dis's kept vs Dis_l-pass statistics.
  def dis_l_error(dis_stats):
    rec = decode(kept["decoder"], mu)
    f = lambda im: nets.discriminator.apply(
        {"params": p["discriminator"], "batch_stats": dis_stats}, im, train=False,
        features_only=True)
    return float(jnp.mean(losses.llike_dis_l(f(rec), f(held))))

  dis_l = {"kept": dis_l_error(kept["discriminator"]), "dis_l_pass": dis_l_error(sep["dis_l"]),
           "gan_pass": dis_l_error(sep["dis_gan"])}
  return recon_mse, dis_l


def measure(config, steps: int, num: int) -> dict:
  """Trains ``config`` for ``steps`` steps and compares the statistics (see module doc)."""
  if config.kind != "vaegan" or config.model.num_attributes:
    raise train_config.ConfigError("bn_statistics measures the unconditional 'vaegan' kind: "
                                   "set --config.kind=vaegan and --config.model.num_attributes=0.")
  train_config.validate_config(config)  # every check the trainer makes, as one-line errors
  arch = models.Architecture.from_config(config.model)
  nets = models.Networks.create(arch)
  train_images = evaluator.load_images(config.data, config.data.train_split, 10**9)["image"]
  held = evaluator.load_images(config.data, config.data.eval_split, 256)["image"]
  state, sep, train_s = _train(config, steps, train_images, _per_pass_fn(config, arch, nets))
  p, kept = state.params, state.batch_stats
  stats = {"kept": kept["decoder"], "prior_pass": sep["dec_gan"],
           "recon_pass": sep["dec_recon"], "prior_pop": _prior_population(config, p, kept)}
  decode, decode_train = _decoders(nets, p, kept)
  images = _prior_images(config, num, stats, decode, decode_train)
  names = list(images)
  mad = {f"{u} vs {v}": float(np.mean(np.abs(images[u] - images[v])))
         for i, u in enumerate(names) for v in names[i + 1:]}
  stat_diff = {f"{u} vs kept": _stat_difference(stats[u], stats["kept"])
               for u in stats if u != "kept"}
  fid = _fids(config, images, train_images, num)
  recon_mse, dis_l = _heldout_errors(nets, p, kept, sep, stats, held, decode, decode_train)
  return {
      "config": {"kind": config.kind, "data": config.data.name, "steps": steps,
                 "batch_size": int(config.batch_size), "gamma": config.gamma,
                 "recon_in_gan": config.recon_in_gan, "bn_momentum": config.model.bn_momentum,
                 "num_samples": num, "seed": int(config.seed)},
      "train_seconds": round(train_s, 1),
      "mean_abs_pixel_difference": mad,
      "dec_bn_stat_difference": stat_diff,
      "fid": fid,
      "heldout_recon_mse": recon_mse,
      "dis_l_error_heldout": dis_l,
  }
