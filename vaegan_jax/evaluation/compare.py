"""The paper's comparison: VAE, VAE_Dis_l, VAE-GAN and GAN side by side (Figs. 3-4),
and the attribute-conditional table (Table 1), trained and scored by this code.

``run_comparison(base_config, outdir)`` trains every (kind, seed) with the same
architecture, data, step budget and seeds, evaluates the final checkpoint of
each (and the intermediate ones of seed 0) with ``evaluator.evaluate_state``,
and writes ``outdir/results.json``, ``outdir/report.md`` and its PNGs. Runs
live in ``outdir/runs/<kind>[_cond]_s<seed>``: rerunning the command resumes
unfinished runs and reuses finished ones.

Sharpness (``sharpness``): the variance of the 4-neighbour discrete Laplacian of
each image (grey levels in [0, 1]), averaged over images: a standard focus
measure, high for edges and fine detail, low for blur. Reported relative to
held-out real images (1.0 = as sharp as real data; blur scores lower).

Conditional scores (Table 1 of the paper, Sec. 5.3): images generated for a
target attribute vector y (here a one-hot class, ``data.label_attributes``),
classified by the dataset's own classifier (``features.classifier_features``):
the mean cosine similarity between y and the predicted class probabilities p,
and the mean squared error mean_j (y_j - p_j)^2. Held-out real images with
their true labels are the reference row.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from vaegan_jax import checkpoint
from vaegan_jax import image_grid
from vaegan_jax import data as data_lib
from vaegan_jax import sampling
from vaegan_jax import train
from vaegan_jax.evaluation import evaluator
from vaegan_jax.evaluation import features as feats_lib

KINDS = ("vae", "vae_dis_l", "vaegan", "gan")
CONDITIONAL_KINDS = ("gan", "vae", "vaegan")
NAMES = {"vae": "VAE", "vae_dis_l": "VAE_Dis_l", "vaegan": "VAE-GAN", "gan": "GAN"}
FIGURE_IMAGES = 8

# (key in the run's results, column title, format, better)
COLUMNS = (("fid", "FID", "{:.2f}", "lower"), ("kid", "KID", "{:.3f}", "lower"),
           ("precision", "precision", "{:.2f}", "higher"),
           ("recall", "recall", "{:.2f}", "higher"),
           ("confidence", "confidence", "{:.3f}", "higher"),
           ("class_coverage", "class coverage", "{:.2f}", "higher"),
           ("sample_sharpness", "sample sharpness", "{:.2f}", "closer to 1"),
           ("recon_mse", "recon. MSE", "{:.4f}", "lower"),
           ("recon_psnr", "recon. PSNR dB", "{:.2f}", "higher"),
           ("recon_sharpness", "recon. sharpness", "{:.2f}", "closer to 1"),
           ("wall_s", "wall s", "{:.0f}", ""))
COND_COLUMNS = (("cosine", "cosine similarity", "{:.3f}", "higher"),
                ("mse", "MSE", "{:.4f}", "lower"),
                ("accuracy", "accuracy", "{:.3f}", "higher"))


# ----------------------------------------------------------------------------
# Metrics.


def laplacian_variance(images: Any) -> np.ndarray:
  """Per image: variance of the 4-neighbour Laplacian of the grey image in [0, 1].

  Args:
    images: (N, H, W, C) in [-1, 1].
  Returns:
    (N,) float64.
  """
  x = (np.asarray(images, np.float64).mean(axis=-1) + 1.0) / 2.0  # (N, H, W)
  lap = (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]
         - 4.0 * x[:, 1:-1, 1:-1])
  return lap.reshape(len(x), -1).var(axis=1)


def sharpness(images: Any) -> float:
  """Mean Laplacian variance of ``images`` (N, H, W, C) in [-1, 1]; see the module doc."""
  return float(laplacian_variance(images).mean())


def conditional_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
  """The paper's Table 1 scores of predicted probabilities ``probs`` (N, K) for targets y (N, K)."""
  y, p = np.asarray(y, np.float64), np.asarray(probs, np.float64)
  cos = (y * p).sum(1) / np.maximum(np.linalg.norm(y, axis=1) * np.linalg.norm(p, axis=1), 1e-12)
  return {"cosine": float(cos.mean()), "mse": float(((y - p) ** 2).mean()),
          "accuracy": float((y.argmax(1) == p.argmax(1)).mean())}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


# ----------------------------------------------------------------------------
# Runs.


def run_config(base: ml_collections.ConfigDict, kind: str, seed: int, steps: int,
               conditional: bool = False) -> ml_collections.ConfigDict:
  """``base`` with one kind, seed and step budget; conditional: y = one-hot class."""
  c = copy.deepcopy(base)
  with c.unlocked():
    c.kind, c.seed, c.num_train_steps = kind, int(seed), int(steps)
    c.eval_every = 0  # Evaluated here, after training, all alike.
    c.checkpoint_every = max(1, steps // 4)
    c.keep_checkpoints = 4
    c.sample_every = steps
    c.log_every = max(1, min(int(base.log_every), steps))
    if conditional:
      c.data.label_attributes = True
      c.model.num_attributes = 10
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
                 real_sharpness: float, all_steps: bool = False) -> dict[str, Any]:
  """Metrics of the final (and, with ``all_steps``, every kept) checkpoint of a run."""
  mngr = checkpoint.manager(workdir, read_only=True)
  steps = sorted(mngr.all_steps()) if all_steps else [mngr.latest_step()]
  out = {}
  for step in steps:
    state, _ = checkpoint.restore_for_inference(workdir, step)
    report = evaluator.evaluate_state(state, config, num=num, extractor=extractor, seed=seed)
    s, r = report.get("samples", {}), report.get("reconstructions", {})
    n = report["num"]
    y = None
    if config.model.num_attributes:  # Classes in equal numbers, as the Table 1 targets.
      y = np.eye(10, dtype=np.float32)[np.arange(n) % 10]
    samples, rec = _images(state, config, held, n, seed, y)
    row = {"step": int(step), "fid": s.get("fid"), "kid": s.get("kid"),
           "precision": s.get("precision"), "recall": s.get("recall"),
           "confidence": s.get("confidence"), "class_coverage": s.get("class_coverage"),
           "sample_sharpness": sharpness(samples) / real_sharpness,
           "recon_mse": r.get("mse"), "recon_psnr": r.get("psnr"),
           "recon_sharpness": sharpness(rec) / real_sharpness if rec is not None else None}
    if y is not None:
      row.update(conditional_scores(y, evaluator.extract(extractor, samples)["probs"]))
    out[int(step)] = row
    if step == steps[-1]:
      out["figure"] = {"samples": samples[:FIGURE_IMAGES],
                       "reconstructions": None if rec is None else rec[:FIGURE_IMAGES]}
  return out


def _kind_figure(path: str, rows: list[np.ndarray]) -> None:
  images = np.concatenate(rows)
  image_grid.save_png(path, image_grid.make_grid(images, ncols=FIGURE_IMAGES))


def run_comparison(base: ml_collections.ConfigDict, outdir: str, *, seeds: int = 3,
                   steps: int = 400, kinds: Sequence[str] = KINDS,
                   conditional_kinds: Sequence[str] = CONDITIONAL_KINDS, num: int = 1000,
                   features: str = "auto", inception_weights: Optional[str] = None
                   ) -> dict[str, Any]:
  """Trains and evaluates the comparison; writes results.json, report.md and PNGs.

  Returns the results dict (also in ``outdir/results.json``).
  """
  t_start = time.time()
  os.makedirs(outdir, exist_ok=True)
  data = base.data
  extractor, why = feats_lib.resolve(features, data, inception_weights=inception_weights)
  if extractor is None:
    raise feats_lib.FeatureError(f"The comparison needs a feature space: {why}")
  held = evaluator.load_images(data, data.eval_split, num)
  real_sharp = sharpness(held["image"])
  results = {"dataset": data.name, "features": extractor.name, "steps": int(steps),
             "seeds": int(seeds), "num": int(num), "batch_size": int(base.batch_size),
             "real_sharpness": real_sharp, "runs": {}, "cond_runs": {}}
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
    config = run_config(base, kind, seed, steps, cond)
    logging.info("Comparison run %s (%d steps).", name, steps)
    wall = _train(config, workdir)
    ev = evaluate_run(workdir, config, extractor, num=num, seed=seed, held=held,
                      real_sharpness=real_sharp, all_steps=(seed == 0 and not cond))
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
  _figures(outdir, figures, held, kinds, conditional_kinds)
  feats_lib.write_json_atomic(os.path.join(outdir, "results.json"), results)
  with open(os.path.join(outdir, "report.md"), "w") as f:
    f.write(report_markdown(results, kinds, conditional_kinds))
  return results


def _figures(outdir, figures, held, kinds, conditional_kinds) -> None:
  """fig_samples.png: one row per kind; fig_reconstructions.png: real row, then a row
  per kind with an encoder; fig_conditional.png: one row per conditional kind
  (column j is class j mod 10)."""
  real = held["image"][:FIGURE_IMAGES]
  _kind_figure(os.path.join(outdir, "fig_samples.png"),
               [figures[(k, False)]["samples"] for k in kinds if (k, False) in figures])
  rows = [real] + [figures[(k, False)]["reconstructions"] for k in kinds
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


def claims(results: dict) -> list[str]:
  """The paper's comparative claims, each checked against the means of this run."""
  runs, out = results["runs"], []
  m = lambda k, key: _means(runs, k, key)  # noqa: E731

  def verdict(ok):
    return "**holds**" if ok else "**does not hold**"

  def weak(a, b, key):
    """A note when two models' means differ by less than a seed-to-seed std."""
    sa = mean_std([r["final"].get(key) for r in runs.values() if r["kind"] == a])[1]
    sb = mean_std([r["final"].get(key) for r in runs.values() if r["kind"] == b])[1]
    return (", but within one std across seeds" if abs(m(a, key) - m(b, key)) < max(sa, sb)
            else "")

  if {"vae", "vae_dis_l"} <= {r["kind"] for r in runs.values()}:
    if m("vae", "recon_sharpness") >= 1.0:
      # No blur to remove: a higher Laplacian variance is then noise, not detail.
      out.append(f"Learned similarity (Dis_l) gives sharper reconstructions than the pixel-wise VAE: "
                 f"**not testable on this data** (the VAE's reconstructions are not blurrier than "
                 f"the real images: sharpness {m('vae', 'recon_sharpness'):.2f} of real; VAE_Dis_l "
                 f"{m('vae_dis_l', 'recon_sharpness'):.2f}, further from real, which here means "
                 "high-frequency artefacts rather than detail).")
    else:
      ok = m("vae_dis_l", "recon_sharpness") > m("vae", "recon_sharpness")
      out.append(f"Learned similarity (Dis_l) gives sharper reconstructions than the pixel-wise "
                 f"VAE: {verdict(ok)} (reconstruction sharpness "
                 f"{m('vae_dis_l', 'recon_sharpness'):.2f} vs {m('vae', 'recon_sharpness'):.2f} "
                 "of real).")
    ok = m("vae_dis_l", "fid") < m("vae", "fid")
    out.append(f"... and better samples than the VAE: {verdict(ok)} (sample FID "
               f"{m('vae_dis_l', 'fid'):.2f} vs {m('vae', 'fid'):.2f}"
               f"{weak('vae_dis_l', 'vae', 'fid')}; sharpness "
               f"{m('vae_dis_l', 'sample_sharpness'):.2f} vs {m('vae', 'sample_sharpness'):.2f}).")
  if {"vaegan", "vae_dis_l"} <= {r["kind"] for r in runs.values()}:
    ok = m("vaegan", "fid") < m("vae_dis_l", "fid")
    out.append(f"Adding the GAN term improves the samples over VAE_Dis_l: {verdict(ok)} "
               f"(FID {m('vaegan', 'fid'):.2f} vs {m('vae_dis_l', 'fid'):.2f}"
               f"{weak('vaegan', 'vae_dis_l', 'fid')}; precision "
               f"{m('vaegan', 'precision'):.2f} vs {m('vae_dis_l', 'precision'):.2f}).")
  if {"vaegan", "vae"} <= {r["kind"] for r in runs.values()}:
    ok = m("vaegan", "fid") < m("vae", "fid")
    out.append(f"VAE-GAN samples beat the plain VAE's: {verdict(ok)} (FID {m('vaegan', 'fid'):.2f} "
               f"vs {m('vae', 'fid'):.2f}{weak('vaegan', 'vae', 'fid')}).")
    ok = m("vaegan", "recon_mse") > m("vae", "recon_mse")
    out.append(f"The pixel-wise VAE has the lowest pixel error (it optimises it), the feature-wise "
               f"models trade pixel accuracy for sharpness: {verdict(ok)} (recon. MSE "
               f"{m('vae', 'recon_mse'):.4f} vs VAE-GAN {m('vaegan', 'recon_mse'):.4f}"
               f"{weak('vae', 'vaegan', 'recon_mse')}).")
  if {"gan", "vaegan"} <= {r["kind"] for r in runs.values()} and min(
      m("gan", "sample_sharpness"), m("vaegan", "sample_sharpness")) >= 1.0:
    out.append(f"A plain GAN gives sharp samples (but has no encoder): **not testable on this "
               f"data** by sharpness (GAN {m('gan', 'sample_sharpness'):.2f}, VAE-GAN "
               f"{m('vaegan', 'sample_sharpness'):.2f} of real: both at or above the real "
               f"images); by FID the GAN's samples are {'better' if m('gan', 'fid') < m('vaegan', 'fid') else 'worse'} "
               f"than VAE-GAN's ({m('gan', 'fid'):.2f} vs {m('vaegan', 'fid'):.2f}).")
  elif {"gan", "vaegan"} <= {r["kind"] for r in runs.values()}:
    ok = m("gan", "sample_sharpness") >= 0.8 * m("vaegan", "sample_sharpness")
    out.append(f"A plain GAN gives sharp samples (but has no encoder): {verdict(ok)} (sample "
               f"sharpness {m('gan', 'sample_sharpness'):.2f} vs VAE-GAN "
               f"{m('vaegan', 'sample_sharpness'):.2f}; FID {m('gan', 'fid'):.2f} vs "
               f"{m('vaegan', 'fid'):.2f}).")
  cond = results.get("cond_runs") or {}
  if cond and "real_heldout_conditional" in results:
    real = results["real_heldout_conditional"]
    best = max(CONDITIONAL_KINDS, key=lambda k: _means(cond, k, "cosine")
               if any(r["kind"] == k for r in cond.values()) else -1)
    ok = _means(cond, "vaegan", "cosine") >= 0.9 * real["cosine"]
    out.append(f"Conditional VAE-GAN images are recognised about as well as real ones (Table 1): "
               f"{verdict(ok)} (cosine {_means(cond, 'vaegan', 'cosine'):.3f} vs real "
               f"{real['cosine']:.3f}; best conditional model here: {NAMES[best]}).")
  return out


def render(outdir: str, kinds: Sequence[str] = KINDS,
           conditional_kinds: Sequence[str] = CONDITIONAL_KINDS) -> str:
  """Rewrites ``outdir/report.md`` from ``outdir/results.json`` (no training)."""
  with open(os.path.join(outdir, "results.json")) as f:
    results = json.load(f)
  text = report_markdown(results, kinds, conditional_kinds)
  with open(os.path.join(outdir, "report.md"), "w") as f:
    f.write(text)
  return text


def report_markdown(results: dict, kinds: Sequence[str] = KINDS,
                    conditional_kinds: Sequence[str] = CONDITIONAL_KINDS) -> str:
  head = ("| model | " + " | ".join(t for _, t, _, _ in COLUMNS) + " |\n|---|" +
          "---|" * len(COLUMNS) + "\n")
  lines = [f"# The paper's comparison on {results['dataset']}", "",
           f"Every model: the same architecture, data and seeds; {results['steps']} steps of batch "
           f"{results['batch_size']}; {results['seeds']} seeds (mean ± std over seeds). Metrics of "
           f"{results['num']} prior samples against the training split in `{results['features']}` "
           "features; reconstructions of the held-out split. Sharpness: mean variance of the "
           "Laplacian, relative to held-out real images (1.0 = as sharp as real). Total wall time "
           f"{results['total_wall_s'] / 60:.1f} min.", "",
           "![prior samples, one row per model: " + ", ".join(NAMES[k] for k in kinds) +
           "](fig_samples.png)", "",
           "Prior samples (seed 0), one row per model: " + ", ".join(NAMES[k] for k in kinds) + ".",
           "", "![held-out reconstructions](fig_reconstructions.png)", "",
           "Held-out reconstructions (seed 0): real images, then one row per model with an "
           "encoder: " + ", ".join(NAMES[k] for k in kinds if k != "gan") + ".", "",
           "## Table: unconditional models", "", head.rstrip("\n")]
  for name, cells in table_rows(results["runs"], kinds, COLUMNS):
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "Better: " + "; ".join(f"{t} {b}" for _, t, _, b in COLUMNS if b) + "."]
  curve_runs = [r for r in results["runs"].values() if r["seed"] == 0]
  if curve_runs and len(curve_runs[0]["curve"]) > 1:
    lines += ["", "Sample FID over training (seed 0):", "",
              "| model | " + " | ".join(f"step {c['step']}" for c in curve_runs[0]["curve"]) +
              " |", "|---|" + "---|" * len(curve_runs[0]["curve"])]
    for r in curve_runs:
      lines.append(f"| {NAMES[r['kind']]} | " + " | ".join(
          "–" if c.get("fid") is None else f"{c['fid']:.2f}" for c in r["curve"]) + " |")
  cond = results.get("cond_runs") or {}
  if cond:
    lines += ["", "## Table 1 on this data: class-conditional models", "",
              "![conditional samples](fig_conditional.png)", "",
              "Conditional prior samples (seed 0), one row per model: " +
              ", ".join(NAMES[k] for k in conditional_kinds) + "; column j is class j.", "",
              "| model | " + " | ".join(t for _, t, _, _ in COND_COLUMNS) + " |",
              "|---|" + "---|" * len(COND_COLUMNS)]
    for name, cells in table_rows(cond, conditional_kinds, COND_COLUMNS):
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    real = results.get("real_heldout_conditional")
    if real:
      lines.append("| held-out real | " + " | ".join(
          fmt.format(real[k]) for k, _, fmt, _ in COND_COLUMNS) + " |")
  if results.get("conditional_skipped"):
    lines += ["", f"Class-conditional models skipped: {results['conditional_skipped']} "
              "(CelebA's attribute-conditional Table 1: `experiments.evaluate_attributes`)."]
  lines += ["", "## The paper's claims on this data", ""]
  lines += [f"- {c}" for c in claims(results)]
  return "\n".join(lines) + "\n"
