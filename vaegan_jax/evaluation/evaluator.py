"""Evaluation of a trained model: samples, reconstructions, and a real reference.

One report per checkpoint (``evaluate_state`` / ``evaluate_checkpoint``), the
JSON that ``experiments/evaluate.py`` writes to ``workdir/eval/step_<N>.json``
and that training writes every ``config.eval_every`` steps:

* ``samples``: n = min(num, size of the real split) images Dec(z), z ~ N(0, I),
  against n real images of ``data.train_split`` (a fixed random subset when
  the split is larger): FID, KID (mean, std), precision, recall, and where the
  features come with class probabilities, the classifier score (the Inception-
  score formula in the classifier's classes; Inception features give the
  standard ``inception_score`` instead, 10 splits, fc bias dropped),
  confidence, class coverage and the class-histogram distance ``class_tv``.
* ``reconstructions``: the held-out images of ``data.eval_split`` through
  Dec(mu(x)): pixel MSE and PSNR (on [0, 1]), the Dis_l feature error
  1/2 ||Dis_l(x~) - Dis_l(x)||^2 that the model optimises (Dis in inference
  mode), the ELBO terms on one z ~ q(z|x) per image (KL, the model's own
  reconstruction NLL: Dis_l for vaegan/vae_dis_l, pixels for vae, constants
  dropped as in ``losses.py``; elbo = -(kl + recon_nll)), and the feature
  metrics of the reconstructions (FID against the real reference, classifier
  accuracy against the true labels).
* ``heldout_real``: the same feature metrics for the held-out *real* images
  against the same reference: the score of real data, which a model can at
  best approach. FID is biased by n, so ``samples_at_heldout_n`` gives the
  samples' FID/precision/recall at the held-out n as well; KID is unbiased.
* Sharpness, in every section and for every dataset (with or without
  features): ``laplacian_variance`` (variance of the grey image's Laplacian)
  and ``hf_energy`` (mean power at spatial frequencies 0.25-0.5 cycles/pixel,
  ``metrics.HIGH_FREQUENCY_BAND``), and their ratios ``sharpness_laplacian``
  and ``sharpness_spectral`` to real images: samples and held-out real images
  against the n real images of ``train_split``, reconstructions against their
  own held-out inputs (1.0 = as sharp as real; blur scores below 1).

Features and their name come from ``features.py``; real features are cached
per (dataset, split, feature weights, n) in ``features.cache_dir()``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vaegan_jax import data as data_lib
from vaegan_jax import losses
from vaegan_jax import models
from vaegan_jax import sampling
from vaegan_jax.evaluation import features as feats_lib
from vaegan_jax.evaluation import metrics
from vaegan_jax.evaluation import reports
from vaegan_jax.runtime import checkpoint

# Subsets of KID: the reference code's 100 subsets of 1,000.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


# ----------------------------------------------------------------------------
# Real images and their features.


def _split_size(data_config: Any, split: str) -> int:
  return len(data_lib.get_source(data_config, split))


def load_images(data_config: Any, split: str, num: int) -> dict[str, np.ndarray]:
  """n = min(num, split size) preprocessed images of ``split``, no flips.

  The whole split in order when it fits, else a random subset fixed by seed 0
  (so that the cached reference never depends on an evaluation's seed).
  Returns 'image' float32 (n, S, S, C) in [-1, 1] and 'label'/'attributes'
  where the dataset has them.
  """
  size = _split_size(data_config, split)
  seed = None if num >= size else 0
  parts = list(sampling.dataset_batches(data_config, split, 512, num, seed=seed))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]
          if k in ("image", "label", "attributes")}


def real_features(extractor: feats_lib.FeatureExtractor, data_config: Any, split: str,
                  num: int, *, use_cache: bool = True) -> dict[str, np.ndarray]:
  """Features (and probs, labels, attributes) of ``load_images(...)``, cached.

  The cache key holds the data fields and the files' stamp (a folder whose
  images changed), the split, n and the extractor's weight fingerprint, so
  other images, a retrained classifier or other weights never reuse stale
  features.
  """
  n = min(int(num), _split_size(data_config, split))
  key = feats_lib.digest({"data": feats_lib.data_fingerprint(data_config), "split": split,
                          "n": n, "features": extractor.name, "weights": extractor.fingerprint})
  path = os.path.join(feats_lib.cache_dir(), "real_features",
                      f'{data_lib.config_value(data_config, "name")}_{split}_{n}_{key}.npz')
  if use_cache and os.path.exists(path):
    try:
      with np.load(path) as f:
        return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
      logging.warning("Ignoring unreadable cache file %s (%s).", path, e)
  data = load_images(data_config, split, n)
  out = extract(extractor, data["image"])
  out.update({k: v for k, v in data.items() if k != "image"})
  if use_cache:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
  return out


def real_sharpness(data_config: Any, split: str, num: int, *,
                   use_cache: bool = True) -> dict[str, float]:
  """``metrics.sharpness_metrics`` of ``load_images(data_config, split, num)``, cached."""
  n = min(int(num), _split_size(data_config, split))
  key = feats_lib.digest({"data": feats_lib.data_fingerprint(data_config), "split": split,
                          "n": n, "band": metrics.HIGH_FREQUENCY_BAND})
  path = os.path.join(feats_lib.cache_dir(), "real_sharpness",
                      f'{data_lib.config_value(data_config, "name")}_{split}_{n}_{key}.json')
  if use_cache and os.path.exists(path):
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      logging.warning("Ignoring unreadable cache file %s (%s).", path, e)
  out = metrics.sharpness_metrics(load_images(data_config, split, n)["image"])
  if use_cache:
    feats_lib.write_json_atomic(path, out)
  return out


def extract(extractor: feats_lib.FeatureExtractor, images: Any) -> dict[str, np.ndarray]:
  """extractor over images (N, S, S, C) in chunks; host float32 arrays."""
  images = np.asarray(images, np.float32)
  parts = [extractor(images[s:s + 1024]) for s in range(0, images.shape[0], 1024)]
  return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in parts[0]}


# ----------------------------------------------------------------------------
# Metrics of one image set.


def feature_metrics(real: dict[str, np.ndarray], fake: dict[str, np.ndarray], *,
                    seed: int = 0, kid_subsets: int = KID_SUBSETS,
                    kid_subset_size: int = KID_SUBSET_SIZE,
                    labels: Optional[np.ndarray] = None) -> dict[str, float]:
  """FID, KID, precision/recall [, classifier scores] of ``fake`` against ``real``.

  Args:
    real, fake: dicts with 'features' (N, D) and optionally 'probs' (N, K).
    labels: true classes of the fake images (reconstructions): adds 'accuracy'.
  """
  rf, ff = real["features"], fake["features"]
  out = {"fid": metrics.fid_from_features(rf, ff)}
  out.update(metrics.kernel_inception_distance(rf, ff, num_subsets=kid_subsets,
                                               subset_size=kid_subset_size, seed=seed))
  out.update(metrics.precision_recall(rf, ff, k=3))
  if "probs" in fake:
    out.update(metrics.classifier_scores(fake["probs"], real.get("probs")))
    if labels is not None:
      out["accuracy"] = float(np.mean(np.argmax(fake["probs"], axis=1) == labels))
  if "inception_probs" in fake and len(fake["inception_probs"]) >= 10:
    out.update(metrics.inception_score(fake["inception_probs"], splits=10))
  return out


def evaluate_images(real_images: Any, fake_images: Any,
                    extractor: feats_lib.FeatureExtractor, **kw) -> dict[str, float]:
  """The library's one call for arrays: metrics of fake vs real images (N, S, S, C) in [-1, 1]."""
  return feature_metrics(extract(extractor, real_images), extract(extractor, fake_images), **kw)


def evaluate_sampler(sampler: sampling.Sampler, data_config: Any,
                     extractor: feats_lib.FeatureExtractor, *, num: int = 10_000,
                     seed: int = 0, split: Optional[str] = None,
                     temperature: float = 1.0) -> dict[str, float]:
  """Metrics of ``num`` prior samples of ``sampler`` against the real ``split``.

  n = min(num, split size) on both sides; the real features come from the
  cache. A conditional sampler gets the real images' attributes as y.
  """
  split = split or data_config.train_split
  real = real_features(extractor, data_config, split, num)
  n = real["features"].shape[0]
  y = None
  if sampler.arch.num_attributes:
    y = real["attributes"][:n]
  images, _ = sampling.sample(sampler, jax.random.PRNGKey(seed), n, temperature=temperature,
                              y=y)
  return feature_metrics(real, extract(extractor, np.asarray(images)), seed=seed)


# ----------------------------------------------------------------------------
# Reconstructions and the ELBO terms.


@functools.lru_cache(maxsize=None)
def _recon_fn(arch: models.Architecture, with_dis: bool, pixel_sigma: float):
  """Jitted (variables by group, x, y, eps) -> Dec(mu(x)) and the per-image ELBO terms.

  The encoder and decoder calls are the sampler's (``sampling.network_fns``), so
  evaluation decodes exactly as sampling does.
  """
  encode, decode = sampling.network_fns(arch)
  discriminator = models.Networks.create(arch).discriminator

  @jax.jit
  def fn(variables, x, y, eps):
    mu, logvar = encode(variables["encoder"], x, y)
    x_mean = decode(variables["decoder"], mu, y)
    x_sample = decode(variables["decoder"], mu + jnp.exp(0.5 * logvar) * eps, y)
    out = {"x_mean": x_mean, "kl": losses.kl_prior(mu, logvar),
           "pixel_nll": losses.pixel_llike(x_sample, x, pixel_sigma)}
    if with_dis:
      dis_l = lambda im: discriminator.apply(variables["discriminator"], im, y,
                                             train=False, features_only=True)
      f_x = dis_l(x)
      out["dis_l_error"] = losses.llike_dis_l(dis_l(x_mean), f_x)
      out["dis_l_nll"] = losses.llike_dis_l(dis_l(x_sample), f_x)
    return out

  return fn


def _variables(state: Any) -> dict:
  return {g: {"params": state.params[g], "batch_stats": state.batch_stats.get(g, {})}
          for g in state.params}


def reconstruct_heldout(state: Any, config: Any, images: np.ndarray, y: Optional[np.ndarray],
                        rng: jax.Array) -> tuple[np.ndarray, dict[str, float]]:
  """Dec(mu(x)) of images (N, S, S, C) and the per-image means of the ELBO terms.

  Returns:
    (reconstructions (N, S, S, C), {'mse', 'psnr', 'kl', 'pixel_nll',
    'recon_nll', 'elbo'[, 'dis_l_error']}).
  """
  arch = models.Architecture.from_config(config.model)
  kind = config.kind
  with_dis = kind in ("vaegan", "vae_dis_l")
  fn = _recon_fn(arch, with_dis, float(config.get("pixel_sigma", 1.0)))
  variables = jax.device_put(_variables(state))
  eps = np.asarray(sampling.prior_sample(rng, images.shape[0], arch.z_dim))
  # Chunks come back to the host one by one; every size is padded to one
  # chunk, so each training-time evaluation reuses one executable.
  out = sampling.in_chunks(lambda *a: jax.device_get(fn(variables, *a)),
                           feats_lib.inference_chunk(), images, y, eps, always_pad=True)
  rec = out.pop("x_mean")
  result = metrics.pixel_metrics(images, rec)
  for k, v in out.items():
    result[k] = float(np.mean(v))
  result["recon_nll"] = result["dis_l_nll"] if with_dis else result["pixel_nll"]
  result.pop("dis_l_nll", None)
  result["elbo"] = -(result["kl"] + result["recon_nll"])
  return rec, result


# ----------------------------------------------------------------------------
# One report.


def evaluate_state(state: Any, config: Any, *, num: int = 10_000,
                   extractor: Optional[feats_lib.FeatureExtractor] = None,
                   no_features_reason: str = "", seed: int = 0,
                   use_cache: bool = True) -> dict[str, Any]:
  """The report of one host TrainState (see the module docstring for its fields).

  Args:
    state: a host (unreplicated) ``train_step.TrainState``.
    config: its training config.
    num: samples and real images; capped by the real split's size.
    extractor: the feature space (``features.resolve``); None: reconstruction
      metrics only, with ``no_features_reason`` in the report.
    seed: draws z (samples), eps (ELBO) and the KID subsets.
  """
  t0 = time.time()
  data = config.data
  arch = models.Architecture.from_config(config.model)
  real_split = data.train_split
  n_real = _split_size(data, real_split)
  rng_samples, rng_eps = jax.random.split(jax.random.PRNGKey(seed))
  report = _report_head(state, config, num=num, n_real=n_real, seed=seed, extractor=extractor,
                        no_features_reason=no_features_reason)
  n = report["num"]
  timings = {}

  real = None
  if extractor is not None:
    t = time.time()
    real = real_features(extractor, data, real_split, n, use_cache=use_cache)
    report["feature_dim"] = int(real["features"].shape[1])
    timings["real_features"] = time.time() - t

  reference = real_sharpness(data, real_split, n, use_cache=use_cache)
  sampler = sampling.Sampler.from_state(config, state, chunk_size=feats_lib.inference_chunk())
  t = time.time()
  images = _prior_samples(sampler, config, real, n, rng_samples)
  fake = extract(extractor, images) if extractor is not None else None
  timings["samples"] = time.time() - t
  t = time.time()
  report["samples"] = feature_metrics(real, fake, seed=seed) if extractor is not None else {}
  report["samples"].update(metrics.sharpness_metrics(images, reference))
  timings["sample_metrics"] = time.time() - t

  if report["heldout_split"]:
    t = time.time()
    report.update(_heldout_sections(state, config, report["heldout_split"], n,
                                    conditional=bool(arch.num_attributes), real=real,
                                    fake=fake, reference=reference, extractor=extractor,
                                    seed=seed, use_cache=use_cache, rng=rng_eps))
    timings["heldout"] = time.time() - t
  report["seconds"] = {**{k: round(v, 2) for k, v in timings.items()},
                       "total": round(time.time() - t0, 2)}
  return report


def _report_head(state: Any, config: Any, *, num: int, n_real: int, seed: int,
                 extractor: Optional[feats_lib.FeatureExtractor],
                 no_features_reason: str) -> dict[str, Any]:
  """The report's first fields: what is evaluated, against what, in which features.

  Args:
    n_real: the size of the real split (``data.train_split``), which caps
      ``num`` (with a warning and ``num_capped_by`` in the report).
  """
  data = config.data
  real_split = data.train_split
  n = min(int(num), n_real)
  report: dict[str, Any] = {
      "step": int(np.asarray(state.step)), "kind": config.kind,
      "dataset": data.name, "real_split": real_split,
      "heldout_split": data.get("eval_split") or None,
      "num_requested": int(num), "num": n, "seed": int(seed),
      "features": extractor.name if extractor else None}
  if n < num:
    report["num_capped_by"] = f"{real_split!r} has {n_real} images"
    logging.warning("num=%d capped to %d: split %r of %s has %d images.", num, n, real_split,
                    data.name, n_real)
  if extractor is None:
    report["no_features_reason"] = no_features_reason
  else:
    report["feature_info"] = dict(extractor.info)
  return report


def _prior_samples(sampler: sampling.Sampler, config: Any, real: Optional[dict[str, np.ndarray]],
                   n: int, rng: jax.Array) -> np.ndarray:
  """Dec(z) of n prior samples z ~ N(0, I) drawn with ``rng``.

  Args:
    real: the real features (``real_features``), or None without features.
  Returns:
    images (n, S, S, C) float32 in [-1, 1] (host). A conditional model gets
    the attributes of the real images of ``data.train_split``, in order, as y.
  """
  y = None
  if sampler.arch.num_attributes:
    attrs = (real["attributes"] if real is not None
             else load_images(config.data, config.data.train_split, n)["attributes"])
    y = attrs[np.arange(n) % len(attrs)]
  images, _ = sampling.sample(sampler, rng, n, y=y)
  return np.asarray(images)


def _heldout_sections(state: Any, config: Any, split: str, n: int, *, conditional: bool,
                      real: Optional[dict[str, np.ndarray]],
                      fake: Optional[dict[str, np.ndarray]], reference: dict[str, float],
                      extractor: Optional[feats_lib.FeatureExtractor], seed: int,
                      use_cache: bool, rng: jax.Array) -> dict[str, Any]:
  """The report's fields on the held-out ``split`` (its first n images at most).

  Args:
    conditional: whether the model takes attributes y (the held-out images' own).
    real, fake: the features of the real images and of the samples (None
      without an extractor).
    reference: ``real_sharpness`` of the real images.
    rng: the key of the ELBO's eps.
  Returns:
    'num_heldout', 'heldout_real' [, 'samples_at_heldout_n' with features]
    [, 'reconstructions' for a model with an encoder], in that order.
  """
  data = config.data
  held = load_images(data, split, n)
  out: dict[str, Any] = {"num_heldout": int(held["image"].shape[0])}
  y = held.get("attributes") if conditional else None
  held_sharpness = metrics.sharpness_metrics(held["image"], reference)
  out["heldout_real"] = dict(held_sharpness)
  if extractor is not None:
    held_feats = real_features(extractor, data, split, n, use_cache=use_cache)
    out["heldout_real"].update(feature_metrics(real, held_feats, seed=seed,
                                               labels=held.get("label")))
    out["samples_at_heldout_n"] = _samples_at_n(real, fake, held_feats["features"].shape[0])
  if "encoder" in state.params:
    out["reconstructions"] = _reconstruction_metrics(state, config, held, y, rng,
                                                     held_sharpness, real, extractor, seed)
  return out


def _samples_at_n(real: dict[str, np.ndarray], fake: dict[str, np.ndarray],
                  m: int) -> dict[str, float]:
  """FID, precision and recall of the first m samples' features (m, D) against all
  the real ones (n, D): the samples' scores at the held-out set's n."""
  sub = fake["features"][:m]
  return {"fid": metrics.fid_from_features(real["features"], sub),
          **metrics.precision_recall(real["features"], sub, k=3)}


def _reconstruction_metrics(state: Any, config: Any, held: dict[str, np.ndarray],
                            y: Optional[np.ndarray], rng: jax.Array,
                            held_sharpness: dict[str, float],
                            real: Optional[dict[str, np.ndarray]],
                            extractor: Optional[feats_lib.FeatureExtractor],
                            seed: int) -> dict[str, float]:
  """The 'reconstructions' section: Dec(mu(x)) of the held-out images.

  Args:
    held: the held-out images, 'image' (m, S, S, C) [, 'label' (m,)].
    y: their attributes (m, A) for a conditional model, else None.
    held_sharpness: ``metrics.sharpness_metrics`` of the held-out images, the
      reference of the reconstructions' sharpness.
    real: the real features against which the reconstructions' feature
      metrics (all but KID's std) are computed; None without an extractor.
  """
  rec, rec_metrics = reconstruct_heldout(state, config, held["image"], y, rng)
  rec_metrics.update(metrics.sharpness_metrics(rec, held_sharpness))
  if extractor is not None:
    rec_feats = extract(extractor, rec)
    fm = feature_metrics(real, rec_feats, seed=seed, labels=held.get("label"))
    rec_metrics.update({k: fm[k] for k in fm if not k.startswith("kid_")})
  return rec_metrics


def evaluate_checkpoint(workdir: str, step: Optional[int] = None, *, num: int = 10_000,
                        extractor: Optional[feats_lib.FeatureExtractor] = None,
                        no_features_reason: str = "", seed: int = 0) -> dict[str, Any]:
  """Restores checkpoint ``step`` (default latest) of ``workdir`` and evaluates it."""
  state, config = sampling.restore_for_inference(workdir, step)
  return evaluate_state(state, config, num=num, extractor=extractor,
                        no_features_reason=no_features_reason, seed=seed)


def is_finite_report(report: dict) -> bool:
  """True if every number in the report is finite."""
  def ok(v):
    if isinstance(v, dict):
      return all(ok(x) for x in v.values())
    if isinstance(v, float):
      return math.isfinite(v)
    return True
  return ok(report)


def _same_settings(path: str, num: int, features: Optional[str], seed: int) -> bool:
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError):
    return False
  return (old.get("num_requested") == num and old.get("features") == features
          and old.get("seed") == seed)


def evaluate_workdir(workdir: str, step: Any = None, *, num: int = 10_000,
                     features: str = "auto", inception_weights: Optional[str] = None,
                     seed: int = 0, classifier_dir: Optional[str] = None,
                     writer: Any = None) -> list[dict[str, Any]]:
  """Evaluates checkpoints of ``workdir``; writes their JSON and TensorBoard scalars.

  Args:
    step: None (the newest usable one: corrupt newer ones are skipped with a
      warning), an int, 'best' (``config.keep_best``'s record), or 'all': every
      checkpoint without a report made with the same (num, features, seed);
      corrupt ones are skipped with a warning.
    features: 'auto' | 'inception' | 'classifier' (see ``features.resolve``).
    writer: a ``metric_writer.MetricWriter`` for the scalars (default: one on
      ``workdir``, closed at the end).
  Returns:
    The reports, in step order.
  Raises:
    CheckpointError, DataError, FeatureError with one-line messages.
  """
  steps, config = _steps_to_evaluate(workdir, step)
  extractor, why = feats_lib.resolve(features, config.data, inception_weights=inception_weights,
                                     classifier_dir=classifier_dir)
  name = extractor.name if extractor else None
  if step == "all":
    steps = [s for s in steps
             if not _same_settings(reports.report_path(workdir, s), num, name, seed)]
    if not steps:
      logging.info("Every checkpoint of %s already has a report; nothing to do.", workdir)
  done, unusable = _evaluate_and_write(workdir, steps, skip_corrupt=(step == "all"),
                                       writer=writer, num=num, extractor=extractor,
                                       no_features_reason=why, seed=seed)
  if unusable and not done:
    raise checkpoint.CheckpointError(
        f"None of the checkpoints {unusable} in {checkpoint.checkpoint_dir(workdir)} is "
        "readable (see the warnings above); train again or use another --workdir.")
  return done


def _steps_to_evaluate(workdir: str, step: Any) -> tuple[list[int], Any]:
  """The checkpoints ``evaluate_workdir(workdir, step)`` evaluates, and the config
  that sets up the features.

  Returns:
    (steps, config): for None/'latest' (and 'best', resolved first) the newest
    usable step and its config; for 'all' every step and the newest readable
    config; for an int that step and its config, checked (so that a corrupt
    checkpoint fails before the features are set up).
  Raises:
    CheckpointError: no checkpoint, no such step, or a corrupt one.
  """
  mngr = checkpoint.manager(workdir, read_only=True)
  available = sorted(mngr.all_steps())
  mngr.close()
  if not available:
    raise checkpoint.no_checkpoint(workdir)
  if step == "best":
    step = checkpoint.resolve_step(workdir, step)
  if step is None or step == "latest":
    # The newest usable checkpoint: corrupt newer ones are skipped with a warning.
    config, latest = checkpoint.read_config(workdir)
    return [latest], config
  if step == "all":
    return available, _newest_readable_config(workdir, available)
  if int(step) not in available:
    raise checkpoint.CheckpointError(
        f"No checkpoint for step {step} in {checkpoint.checkpoint_dir(workdir)}; "
        f"available: {available}.")
  steps = [int(step)]
  # A corrupt checkpoint fails here, before the features are set up.
  config, _ = checkpoint.read_config(workdir, steps[-1], verify=True)
  return steps, config


def _evaluate_and_write(workdir: str, steps: list[int], *, skip_corrupt: bool, writer: Any,
                        num: int, extractor: Optional[feats_lib.FeatureExtractor],
                        no_features_reason: str, seed: int) -> tuple[list[dict], list[int]]:
  """Evaluates each of ``steps``; writes its JSON report and its scalars to ``writer``.

  Args:
    skip_corrupt: a corrupt checkpoint is skipped with a warning (else it raises).
    writer: the scalars' MetricWriter; None: one on ``workdir``, opened only if
      there are steps, and closed at the end.
  Returns:
    (the reports in step order, the steps skipped as corrupt).
  """
  own_writer = writer is None and steps
  if own_writer:
    from vaegan_jax.runtime import metric_writer  # pylint: disable=g-import-not-at-top
    writer = metric_writer.MetricWriter(workdir)
  done, unusable = [], []
  try:
    for s in steps:
      try:
        report = evaluate_checkpoint(workdir, s, num=num, extractor=extractor,
                                     no_features_reason=no_features_reason, seed=seed)
      except checkpoint.CorruptCheckpointError as e:
        if not skip_corrupt:
          raise
        logging.warning("Skipping checkpoint %d: %s", s, e)
        unusable.append(s)
        continue
      reports.write_report(workdir, report)
      if writer is not None:
        writer.write_eval(report["step"], reports.scalars(report))
      done.append(report)
  finally:
    if own_writer:
      writer.close()
  return done, unusable


def _newest_readable_config(workdir: str, steps: list[int]) -> Any:
  """The config of the newest of ``steps`` whose config can be read (for the features)."""
  for s in reversed(steps):
    try:
      return checkpoint.read_config(workdir, s)[0]
    except checkpoint.CorruptCheckpointError:
      continue  # Warned about when its evaluation is skipped.
  raise checkpoint.CheckpointError(
      f"None of the checkpoints {steps} in {checkpoint.checkpoint_dir(workdir)} has a readable "
      "config; train again or use another --workdir.")
