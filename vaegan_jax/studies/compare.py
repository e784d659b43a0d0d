"""The paper's comparison: VAE, VAE_Dis_l, VAE-GAN and GAN side by side (Figs. 3-4),
and the attribute-conditional table (Table 1), trained and scored by this code.

``run_comparison(base_config, outdir)`` trains every (kind, seed) with the same
architecture, data, step budget and seeds, evaluates the final checkpoint of
each (and the intermediate ones of seed 0) with ``evaluator.evaluate_state``,
and writes ``outdir/results.json``, ``outdir/report.md`` and its PNGs. Runs
live in ``outdir/runs/<kind>[_cond]_s<seed>``: rerunning the command resumes
unfinished runs and reuses finished ones.

Sharpness, two measures (``metrics.sharpness_metrics``, in every evaluation
report): the variance of the 4-neighbour Laplacian of the grey image (a focus
measure) and the mean power at high spatial frequencies, 0.25-0.5
cycles/pixel (the upper half up to Nyquist, ``metrics.HIGH_FREQUENCY_BAND``,
from the Hann-windowed 2-D spectrum). Each as a ratio to real images: samples
to the real training images, reconstructions to their own held-out inputs
(1.0 = as sharp as real; blur scores below 1, noise and ringing above). The
report also tabulates the radially averaged power spectrum of each model's
samples and reconstructions relative to real images, in four frequency bands.

Conditional scores (Table 1 of the paper, Sec. 5.3): images generated for a
target attribute vector y (here a one-hot class, ``data.label_attributes``),
classified by the dataset's own classifier (``features.classifier_features``):
the mean cosine similarity between y and the predicted class probabilities p,
and the mean squared error mean_j (y_j - p_j)^2. Held-out real images with
their true labels are the reference row.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from vaegan_jax import data as data_lib
from vaegan_jax import sampling
from vaegan_jax import train
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import features as feats_lib
from vaegan_jax.evaluation import metrics
from vaegan_jax.runtime import checkpoint
from vaegan_jax.runtime import image_grid

KINDS = ("vae", "vae_dis_l", "vaegan", "gan")
CONDITIONAL_KINDS = ("gan", "vae", "vaegan")
NAMES = {"vae": "VAE", "vae_dis_l": "VAE_Dis_l", "vaegan": "VAE-GAN", "gan": "GAN"}
FIGURE_IMAGES = 8
FIGURE_SCALE = 4  # nearest-neighbour enlargement of the report's figures: detail stays visible
# Bands of the radial spectrum table, as fractions of Nyquist (0.5 cycles/pixel).
SPECTRUM_BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))

# (key in the run's results, column title, format, better)
COLUMNS = (("fid", "FID", "{:.2f}", "lower"), ("kid", "KID", "{:.3f}", "lower"),
           ("precision", "precision", "{:.2f}", "higher"),
           ("recall", "recall", "{:.2f}", "higher"),
           ("confidence", "confidence", "{:.3f}", "higher"),
           ("class_coverage", "class coverage", "{:.2f}", "higher"),
           ("sample_sharpness", "sample sharpness (Laplacian)", "{:.2f}", "closer to 1"),
           ("sample_hf", "sample HF energy", "{:.2f}", "closer to 1"),
           ("recon_mse", "recon. MSE [0,1]", "{:.4f}", "lower"),
           ("recon_psnr", "recon. PSNR dB", "{:.2f}", "higher"),
           ("recon_sharpness", "recon. sharpness (Laplacian)", "{:.2f}", "closer to 1"),
           ("recon_hf", "recon. HF energy", "{:.2f}", "closer to 1"),
           ("wall_s", "wall s", "{:.0f}", ""))
COND_COLUMNS = (("cosine", "cosine similarity", "{:.3f}", "higher"),
                ("mse", "MSE", "{:.4f}", "lower"),
                ("accuracy", "accuracy", "{:.3f}", "higher"))


# ----------------------------------------------------------------------------
# Metrics.


laplacian_variance = metrics.laplacian_variance


def sharpness(images: Any) -> float:
  """Mean Laplacian variance of ``images`` (N, H, W, C) in [-1, 1] (``metrics.laplacian_variance``)."""
  return float(metrics.laplacian_variance(images).mean())


def spectrum_bands(images: Any, reference: Any) -> list[float]:
  """Mean radial power of ``images`` relative to ``reference`` in each of SPECTRUM_BANDS."""
  f, p = metrics.radial_power_spectrum(images)
  _, q = metrics.radial_power_spectrum(reference)
  nyquist = f / 0.5
  out = []
  for lo, hi in SPECTRUM_BANDS:
    m = (nyquist > lo) & (nyquist <= hi)
    out.append(float(p[m].mean() / q[m].mean()))
  return out


def conditional_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
  """The paper's Table 1 scores of predicted probabilities ``probs`` (N, K) for targets y (N, K).

  'cosine' and 'mse' as ``metrics.attribute_similarity``; 'accuracy': how
  often the most probable class is the target's.
  """
  y, p = np.asarray(y, np.float64), np.asarray(probs, np.float64)
  similarity = metrics.attribute_similarity(y, p)
  return {"cosine": similarity["cosine"], "mse": similarity["mse"],
          "accuracy": float((y.argmax(1) == p.argmax(1)).mean())}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


# ----------------------------------------------------------------------------
# Runs.


def run_config(base: ml_collections.ConfigDict, kind: str, seed: int, steps: int,
               conditional: bool = False, evaluations: int = 4) -> ml_collections.ConfigDict:
  """``base`` with one kind, seed and step budget; conditional: y = one-hot class.

  A checkpoint is kept every ``steps // evaluations`` steps: the FID curve's points.
  """
  c = copy.deepcopy(base)
  with c.unlocked():
    c.kind, c.seed, c.num_train_steps = kind, int(seed), int(steps)
    c.eval_every = 0  # Evaluated here, after training, all alike.
    c.checkpoint_every = max(1, steps // evaluations)
    c.keep_checkpoints = evaluations
    c.sample_every = steps
    c.log_every = max(1, min(int(base.log_every), steps))
    if conditional:
      c.data.label_attributes = True
      c.model.num_attributes = data_lib.validate(base.data).num_classes
  return c


def run_name(kind: str, seed: int, conditional: bool) -> str:
  return f"{kind}{'_cond' if conditional else ''}_s{seed}"


def _train(config, workdir: str) -> float:
  """Trains (or resumes) one run; returns its training wall time, kept across reruns."""
  path = os.path.join(workdir, "wall_time.json")
  before = json.load(open(path))["seconds"] if os.path.exists(path) else 0.0
  t0 = time.time()
  state = train.train_and_evaluate(config, workdir)
  del state
  total = before + (time.time() - t0)
  if time.time() - t0 > 5 or not os.path.exists(path):
    feats_lib.write_json_atomic(path, {"seconds": total})
  return total


def _images(state, config, held: dict, n: int, seed: int, y: Optional[np.ndarray]):
  sampler = sampling.Sampler.from_state(config, state, chunk_size=feats_lib.inference_chunk())
  samples, _ = sampling.sample(sampler, jax.random.PRNGKey(seed), n, y=y)
  rec = None
  if "encoder" in state.params:
    yh = None
    if config.model.num_attributes:  # The held-out images' own classes.
      yh = np.eye(config.model.num_attributes, dtype=np.float32)[held["label"]]
    rec, _ = sampling.reconstruct(sampler, held["image"], y=yh)
    rec = np.asarray(rec)
  return np.asarray(samples), rec


def evaluate_run(workdir: str, config, extractor, *, num: int, seed: int, held: dict,
                 real: np.ndarray, all_steps: bool = False) -> dict[str, Any]:
  """Metrics of the final (and, with ``all_steps``, every kept) checkpoint of a run.

  ``held``: held-out real images (and labels) to reconstruct; ``real``: real
  training images, the spectrum's reference for samples.
  """
  mngr = checkpoint.manager(workdir, read_only=True)
  steps = sorted(mngr.all_steps()) if all_steps else [mngr.latest_step()]
  out = {}
  for step in steps:
    state, _ = sampling.restore_for_inference(workdir, step)
    report = evaluator.evaluate_state(state, config, num=num, extractor=extractor, seed=seed)
    s, r = report.get("samples", {}), report.get("reconstructions", {})
    row = {"step": int(step), "fid": s.get("fid"), "kid": s.get("kid"),
           "precision": s.get("precision"), "recall": s.get("recall"),
           "confidence": s.get("confidence"), "class_coverage": s.get("class_coverage"),
           "sample_sharpness": s.get("sharpness_laplacian"),
           "sample_hf": s.get("sharpness_spectral"),
           "recon_mse": r.get("mse"), "recon_psnr": r.get("psnr"),
           "recon_sharpness": r.get("sharpness_laplacian"),
           "recon_hf": r.get("sharpness_spectral"),
           "heldout_sharpness": report.get("heldout_real", {}).get("sharpness_laplacian"),
           "heldout_hf": report.get("heldout_real", {}).get("sharpness_spectral")}
    out[int(step)] = row
    if step != steps[-1]:
      continue
    n = report["num"]
    y = None
    if config.model.num_attributes:  # Classes in equal numbers, as the Table 1 targets.
      k = int(config.model.num_attributes)
      y = np.eye(k, dtype=np.float32)[np.arange(n) % k]
    samples, rec = _images(state, config, held, n, seed, y)
    if y is not None:
      row.update(conditional_scores(y, evaluator.extract(extractor, samples)["probs"]))
    row["sample_spectrum"] = spectrum_bands(samples, real)
    if rec is not None:
      row["recon_spectrum"] = spectrum_bands(rec, held["image"])
    out["figure"] = {"samples": samples[:FIGURE_IMAGES],
                     "reconstructions": None if rec is None else rec[:FIGURE_IMAGES]}
  return out


def _kind_figure(path: str, rows: list[np.ndarray]) -> None:
  grid = image_grid.make_grid(np.concatenate(rows), ncols=FIGURE_IMAGES)
  image_grid.save_png(path, np.repeat(np.repeat(grid, FIGURE_SCALE, 0), FIGURE_SCALE, 1))


def run_comparison(base: ml_collections.ConfigDict, outdir: str, *, seeds: int = 3,
                   steps: int = 400, kinds: Sequence[str] = KINDS,
                   conditional_kinds: Sequence[str] = CONDITIONAL_KINDS, num: int = 1000,
                   features: str = "auto", inception_weights: Optional[str] = None,
                   evaluations: int = 4) -> dict[str, Any]:
  """Trains and evaluates the comparison; writes results.json, report.md and PNGs.

  ``evaluations``: points of seed 0's FID curve (checkpoints every
  ``steps // evaluations`` steps). Returns the results dict (also in
  ``outdir/results.json``).
  """
  t_start = time.time()
  os.makedirs(outdir, exist_ok=True)
  data = base.data
  extractor, why = feats_lib.resolve(features, data, inception_weights=inception_weights)
  if extractor is None:
    raise feats_lib.FeatureError(f"The comparison needs a feature space: {why}")
  held = evaluator.load_images(data, data.eval_split, num)
  real = evaluator.load_images(data, data.train_split, num)["image"]
  results = {"dataset": data.name, "features": extractor.name, "steps": int(steps),
             "seeds": int(seeds), "num": int(num), "batch_size": int(base.batch_size),
             "heldout_spectrum": spectrum_bands(held["image"], real),
             "runs": {}, "cond_runs": {}}
  figures = {}
  if conditional_kinds and not data_lib.validate(data).num_classes:
    # Class-conditional needs class labels; CelebA's attribute-conditional
    # Table 1 is experiments.evaluate_attributes (README).
    logging.warning("%s has no class labels: skipping the conditional models %s.", data.name,
                    ", ".join(conditional_kinds))
    results["conditional_skipped"] = f"{data.name} has no class labels"
    conditional_kinds = ()
  plan = [(k, s, False) for k in kinds for s in range(seeds)]
  plan += [(k, s, True) for k in conditional_kinds for s in range(seeds)]
  for kind, seed, cond in plan:
    name = run_name(kind, seed, cond)
    workdir = os.path.join(outdir, "runs", name)
    config = run_config(base, kind, seed, steps, cond, evaluations)
    logging.info("Comparison run %s (%d steps).", name, steps)
    wall = _train(config, workdir)
    ev = evaluate_run(workdir, config, extractor, num=num, seed=seed, held=held, real=real,
                      all_steps=(seed == 0 and not cond))
    fig = ev.pop("figure")
    if seed == 0:
      figures[(kind, cond)] = fig
    final = ev[max(ev)]
    final["wall_s"] = wall
    (results["cond_runs"] if cond else results["runs"])[name] = {
        "kind": kind, "seed": seed, "final": final,
        "curve": [ev[s] for s in sorted(ev)]}
  if conditional_kinds:
    hp = evaluator.extract(extractor, held["image"])["probs"]
    labels = held["label"]
    results["real_heldout_conditional"] = conditional_scores(
        np.eye(hp.shape[1])[labels], hp)
  results["total_wall_s"] = time.time() - t_start
  _figures(outdir, figures, held, real, kinds, conditional_kinds)
  feats_lib.write_json_atomic(os.path.join(outdir, "results.json"), results)
  with open(os.path.join(outdir, "report.md"), "w") as f:
    f.write(report_markdown(results, kinds, conditional_kinds))
  return results


def _figures(outdir, figures, held, real, kinds, conditional_kinds) -> None:
  """fig_samples.png: real training images, then one row per kind; fig_reconstructions.png:
  the held-out real images, then a row per kind with an encoder; fig_conditional.png: one
  row per conditional kind (column j is class j mod 10)."""
  _kind_figure(os.path.join(outdir, "fig_samples.png"),
               [real[:FIGURE_IMAGES]] + [figures[(k, False)]["samples"] for k in kinds
                                         if (k, False) in figures])
  rows = [held["image"][:FIGURE_IMAGES]] + [
      figures[(k, False)]["reconstructions"] for k in kinds
      if (k, False) in figures and figures[(k, False)]["reconstructions"] is not None]
  _kind_figure(os.path.join(outdir, "fig_reconstructions.png"), rows)
  cond = [figures[(k, True)]["samples"] for k in conditional_kinds if (k, True) in figures]
  if cond:
    _kind_figure(os.path.join(outdir, "fig_conditional.png"), cond)


# ----------------------------------------------------------------------------
# The report.


def _cell(values, fmt) -> str:
  m, s = mean_std(values)
  if not np.isfinite(m):
    return "–"
  return f"{fmt.format(m)} ± {fmt.format(s)}"


def table_rows(runs: dict, kinds: Sequence[str], columns) -> list[tuple[str, list[str]]]:
  rows = []
  for kind in kinds:
    finals = [r["final"] for r in runs.values() if r["kind"] == kind]
    if finals:
      rows.append((NAMES[kind], [_cell([f.get(key) for f in finals], fmt)
                                 for key, _, fmt, _ in columns]))
  return rows


def _means(runs: dict, kind: str, key: str) -> float:
  return mean_std([r["final"].get(key) for r in runs.values() if r["kind"] == kind])[0]


def _stats(runs: dict, kind: str, key: str) -> tuple[float, float]:
  return mean_std([r["final"].get(key) for r in runs.values() if r["kind"] == kind])


def _compare(runs: dict, a: str, b: str, key: str, better: str) -> str:
  """'holds' if ``a`` beats ``b`` on ``key`` by more than a seed-to-seed std, 'fails' if
  it loses by more, else 'within the seed spread'. ``better``: 'lower' or 'higher'."""
  (ma, sa), (mb, sb) = _stats(runs, a, key), _stats(runs, b, key)
  if abs(ma - mb) <= max(sa, sb):
    return "within the seed spread"
  return "holds" if (ma < mb) == (better == "lower") else "fails"


def _below(runs: dict, kind: str, key: str, level: float = 1.0) -> str:
  """'holds' if ``kind``'s mean is below ``level`` by more than its std, 'fails' if above."""
  m, sd = _stats(runs, kind, key)
  if abs(m - level) <= sd:
    return "within the seed spread"
  return "holds" if m < level else "fails"


def _all(verdicts: Sequence[str]) -> str:
  """One verdict for a claim made of parts: holds / fails only if every part agrees."""
  if all(v == "holds" for v in verdicts):
    return "holds"
  if all(v == "fails" for v in verdicts):
    return "fails"
  if "fails" not in verdicts:
    return "holds or within the seed spread" if "holds" in verdicts else "within the seed spread"
  return "mixed"


def claims(results: dict) -> list[str]:
  """The paper's comparative claims, each checked against this run's numbers.

  A verdict is **holds** or **fails** when the means differ by more than one
  seed-to-seed standard deviation, else **within the seed spread**. Sharpness
  ratios are to real images; a model that is not blurrier than real data
  (ratio >= 1) can't show the claim that a loss removes blur.
  """
  runs, out = results["runs"], []
  kinds = {r["kind"] for r in runs.values()}
  m = functools.partial(_means, runs)
  has_hf = all(m(k, "recon_hf") == m(k, "recon_hf") for k in kinds - {"gan"})  # not NaN
  if {"vae", "vae_dis_l"} <= kinds:
    out += _reconstruction_blur_claims(runs, kinds, has_hf)
    v = _compare(runs, "vae_dis_l", "vae", "fid", "lower")
    out.append(f"Learned similarity gives better samples than the VAE: **{v}** (sample FID "
               f"{m('vae_dis_l', 'fid'):.2f} vs {m('vae', 'fid'):.2f}).")
  if {"vaegan", "vae_dis_l"} <= kinds:
    v = _compare(runs, "vaegan", "vae_dis_l", "fid", "lower")
    out.append(f"Adding the GAN term improves the samples over VAE_Dis_l: **{v}** (FID "
               f"{m('vaegan', 'fid'):.2f} vs {m('vae_dis_l', 'fid'):.2f}; precision "
               f"{m('vaegan', 'precision'):.2f} vs {m('vae_dis_l', 'precision'):.2f}).")
  if {"vaegan", "vae"} <= kinds:
    out += _vaegan_vs_vae_claims(runs, kinds, has_hf)
  if {"gan", "vaegan"} <= kinds:
    out.append(_plain_gan_claim(runs, has_hf))
  cond = results.get("cond_runs") or {}
  if cond and "real_heldout_conditional" in results:
    out.append(_conditional_claim(cond, results["real_heldout_conditional"]))
  return out


def _sharpness_measures(prefix: str, has_hf: bool) -> list[tuple[str, str]]:
  """(key, name) of the sharpness ratios of 'sample' or 'recon': Laplacian [, HF energy]."""
  return [(f"{prefix}_sharpness", "Laplacian")] + ([(f"{prefix}_hf", "HF energy")]
                                                  if has_hf else [])


def _reconstruction_blur_claims(runs: dict, kinds: set[str], has_hf: bool) -> list[str]:
  """The VAE's reconstructions are blurry, and blurrier than those of the models with
  learned similarity; or why that can't be tested here (no blur to remove)."""
  m = functools.partial(_means, runs)
  measures = _sharpness_measures("recon", has_hf)
  vae_blurs = [_below(runs, "vae", key) for key, _ in measures]
  if "holds" not in vae_blurs:
    # No blur to remove: a higher ratio is then noise, not detail.
    return ["Learned similarity (Dis_l) gives sharper reconstructions than the pixel-wise VAE: "
            "**not testable on this data** (the VAE's reconstructions are not blurrier than "
            "the real images: " + "; ".join(
                f"{name} {m('vae', key):.2f} of real, VAE_Dis_l {m('vae_dis_l', key):.2f}"
                for key, name in measures) + "; above 1 means high-frequency "
            "artefacts rather than detail)."]
  out = ["The VAE's reconstructions are blurrier than the real images: **" + _all(
      vae_blurs) + "** (" + "; ".join(f"{name} {m('vae', key):.2f} of real"
                                      for key, name in measures) + ")."]
  for other in ("vae_dis_l", "vaegan"):
    if other in kinds:
      v = [_compare(runs, other, "vae", key, "higher") for key, _ in measures]
      out.append(f"... and blurrier than {NAMES[other]}'s (learned similarity keeps detail): "
                 f"**{_all(v)}** (" + "; ".join(
                     f"{name} {m(other, key):.2f} vs VAE {m('vae', key):.2f}: {vv}"
                     for (key, name), vv in zip(measures, v)) + ").")
  return out


def _vaegan_vs_vae_claims(runs: dict, kinds: set[str], has_hf: bool) -> list[str]:
  """VAE-GAN's samples are better and sharper than the VAE's; the VAE has the lowest
  pixel error of the models with an encoder."""
  m = functools.partial(_means, runs)
  v = _compare(runs, "vaegan", "vae", "fid", "lower")
  out = [f"VAE-GAN's samples are better than the VAE's: **{v}** (FID "
         f"{m('vaegan', 'fid'):.2f} vs {m('vae', 'fid'):.2f})."]
  sample_measures = _sharpness_measures("sample", has_hf)
  v = [_compare(runs, "vaegan", "vae", key, "higher") for key, _ in sample_measures]
  above = [name for key, name in sample_measures if m("vaegan", key) > 1.0]
  out.append("VAE-GAN's samples are sharper than the VAE's: **" + _all(v) + "** (" + "; ".join(
      f"{name} {m('vaegan', key):.2f} vs {m('vae', key):.2f} of real: {vv}"
      for (key, name), vv in zip(sample_measures, v)) + ")" + (
          f"; VAE-GAN's {' and '.join(above)} ratio is above real, so part of it is "
          "artefact, not detail" if above else "") + ".")
  encoders = [k for k in ("vae", "vae_dis_l", "vaegan") if k in kinds]
  v = [_compare(runs, "vae", k, "recon_mse", "lower") for k in encoders if k != "vae"]
  out.append("The pixel-wise VAE has the lowest pixel error (it optimises it): **" + _all(v) +
             "** (recon. MSE " + ", ".join(f"{NAMES[k]} {m(k, 'recon_mse'):.4f}"
                                           for k in encoders) + ").")
  return out


def _plain_gan_claim(runs: dict, has_hf: bool) -> str:
  """A plain GAN's samples are sharp; are VAE-GAN's better by FID?"""
  m = functools.partial(_means, runs)
  sharp = m("gan", "sample_sharpness")
  return (f"A plain GAN gives sharp samples (but has no encoder): sample sharpness "
          f"{sharp:.2f} (Laplacian)" + (f", {m('gan', 'sample_hf'):.2f} (HF energy)"
                                        if has_hf else "") +
          f" of real; VAE-GAN {m('vaegan', 'sample_sharpness'):.2f}; FID "
          f"{m('gan', 'fid'):.2f} vs VAE-GAN {m('vaegan', 'fid'):.2f}: **" +
          _compare(runs, "vaegan", "gan", "fid", "lower") +
          "** for VAE-GAN's samples being the better ones.")


def _conditional_claim(cond: dict, real: dict) -> str:
  """Conditional VAE-GAN's images are recognised about as well as the held-out real
  images (``real``: their Table 1 scores), within 10 % of their cosine similarity."""
  best = max(CONDITIONAL_KINDS, key=lambda k: _means(cond, k, "cosine")
             if any(r["kind"] == k for r in cond.values()) else -1)
  ok = _means(cond, "vaegan", "cosine") >= 0.9 * real["cosine"]
  return (f"Conditional VAE-GAN images are recognised about as well as real ones (Table 1): "
          f"**{'holds' if ok else 'fails'}** (cosine {_means(cond, 'vaegan', 'cosine'):.3f} "
          f"vs real {real['cosine']:.3f}; best conditional model here: {NAMES[best]}).")


def render(outdir: str, kinds: Sequence[str] = KINDS,
           conditional_kinds: Sequence[str] = CONDITIONAL_KINDS) -> str:
  """Rewrites ``outdir/report.md`` from ``outdir/results.json`` (no training)."""
  with open(os.path.join(outdir, "results.json")) as f:
    results = json.load(f)
  text = report_markdown(results, kinds, conditional_kinds)
  with open(os.path.join(outdir, "report.md"), "w") as f:
    f.write(text)
  return text


def _spectrum_table(results: dict, kinds: Sequence[str]) -> list[str]:
  """Radial power relative to real images in SPECTRUM_BANDS, mean over seeds."""
  runs = results["runs"]
  if not any("sample_spectrum" in r["final"] for r in runs.values()):
    return []
  bands = [f"{lo:.2f}-{hi:.2f}" for lo, hi in SPECTRUM_BANDS]
  lines = ["", "Radially averaged power spectrum relative to real images (1.0 = real's power; "
           "mean over seeds), in bands of spatial frequency as fractions of Nyquist:", "",
           "| images | " + " | ".join(bands) + " |", "|---|" + "---|" * len(bands)]
  held = results.get("heldout_spectrum")
  if held:
    lines.append("| held-out real / training real | " +
                 " | ".join(f"{v:.2f}" for v in held) + " |")
  for what, key in (("samples", "sample_spectrum"), ("reconstructions", "recon_spectrum")):
    for kind in kinds:
      rows = [r["final"][key] for r in runs.values() if r["kind"] == kind and key in r["final"]]
      if rows:
        lines.append(f"| {NAMES[kind]} {what} | " + " | ".join(
            f"{v:.2f}" for v in np.mean(np.asarray(rows), axis=0)) + " |")
  return lines


def report_markdown(results: dict, kinds: Sequence[str] = KINDS,
                    conditional_kinds: Sequence[str] = CONDITIONAL_KINDS) -> str:
  """report.md of ``results`` (as ``run_comparison`` returns them): the set-up, the
  figures, the tables and the paper's claims checked (``claims``)."""
  lines = _report_intro(results, kinds)
  lines += ["## Table: unconditional models", ""]
  lines += _results_table(results["runs"], kinds, COLUMNS)
  lines += ["", "Better: " + "; ".join(f"{t} {b}" for _, t, _, b in COLUMNS if b) + "."]
  lines += _fid_curve_table(results)
  lines += _spectrum_table(results, kinds)
  cond = results.get("cond_runs") or {}
  if cond:
    lines += _conditional_table(results, cond, conditional_kinds)
  if results.get("conditional_skipped"):
    lines += ["", f"Class-conditional models skipped: {results['conditional_skipped']} "
              "(CelebA's attribute-conditional Table 1: `experiments.evaluate_attributes`)."]
  lines += ["", "## The paper's claims on this data", ""]
  lines += [f"- {c}" for c in claims(results)]
  return "\n".join(lines) + "\n"


def _report_intro(results: dict, kinds: Sequence[str]) -> list[str]:
  """The report's title, its set-up (models, steps, seeds, metrics) and the figures."""
  return [f"# The paper's comparison on {results['dataset']}", "",
          f"Every model: the same architecture, data and seeds; {results['steps']} steps of batch "
          f"{results['batch_size']}; {results['seeds']} seeds (mean ± std over seeds). Metrics of "
          f"{results['num']} prior samples against the training split in `{results['features']}` "
          "features; reconstructions of the held-out split. Sharpness, two measures: the mean "
          "variance of the Laplacian and the high-frequency (HF) energy, the mean power at "
          "0.25-0.5 cycles/pixel; both relative to real images (samples: to the training "
          "images; reconstructions: to their held-out inputs; 1.0 = as sharp as real, below 1 "
          f"blurrier). Total wall time {results['total_wall_s'] / 60:.1f} min.", "",
          "![prior samples, one row per model: " + ", ".join(NAMES[k] for k in kinds) +
          "](fig_samples.png)", "",
          "Prior samples (seed 0): real training images, then one row per model: " +
          ", ".join(NAMES[k] for k in kinds) + f"; enlarged {FIGURE_SCALE}x (nearest neighbour).",
          "", "![held-out reconstructions](fig_reconstructions.png)", "",
          "Held-out reconstructions (seed 0): real images, then one row per model with an "
          "encoder: " + ", ".join(NAMES[k] for k in kinds if k != "gan") +
          f"; enlarged {FIGURE_SCALE}x (nearest neighbour).", ""]


def _results_table(runs: dict, kinds: Sequence[str], columns) -> list[str]:
  """A markdown table of ``columns``, one row per kind: mean ± std over seeds."""
  lines = ["| model | " + " | ".join(t for _, t, _, _ in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for name, cells in table_rows(runs, kinds, columns):
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def _fid_curve_table(results: dict) -> list[str]:
  """Sample FID at each kept checkpoint of seed 0, one row per kind; none for one point."""
  curve_runs = [r for r in results["runs"].values() if r["seed"] == 0]
  if not (curve_runs and len(curve_runs[0]["curve"]) > 1):
    return []
  lines = ["", "Sample FID over training (seed 0):", "",
           "| model | " + " | ".join(f"step {c['step']}" for c in curve_runs[0]["curve"]) +
           " |", "|---|" + "---|" * len(curve_runs[0]["curve"])]
  for r in curve_runs:
    lines.append(f"| {NAMES[r['kind']]} | " + " | ".join(
        "–" if c.get("fid") is None else f"{c['fid']:.2f}" for c in r["curve"]) + " |")
  return lines


def _conditional_table(results: dict, cond: dict,
                       conditional_kinds: Sequence[str]) -> list[str]:
  """Table 1 on this data: the conditional models' scores and the held-out real row."""
  lines = ["", "## Table 1 on this data: class-conditional models", "",
           "![conditional samples](fig_conditional.png)", "",
           "Conditional prior samples (seed 0), one row per model: " +
           ", ".join(NAMES[k] for k in conditional_kinds) + "; column j is class j.", ""]
  lines += _results_table(cond, conditional_kinds, COND_COLUMNS)
  real = results.get("real_heldout_conditional")
  if real:
    lines.append("| held-out real | " + " | ".join(
        fmt.format(real[k]) for k, _, fmt, _ in COND_COLUMNS) + " |")
  return lines
