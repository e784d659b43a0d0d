"""An evaluation report's files, its TensorBoard scalars and console table, and the
best checkpoint by one of its metrics.

A report (``evaluator.evaluate_state``) is one JSON file per step,
``workdir/eval/step_<N>.json``: sections ``samples``, ``reconstructions``,
``heldout_real`` and ``samples_at_heldout_n`` of metric values, and the
settings it was made with. ``config.keep_best`` ('samples.fid', ...) names the
metric that picks the best checkpoint; its record is
``runtime/best_checkpoint.py``'s.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

from absl import logging

from vaegan_jax.evaluation import features as feats_lib
from vaegan_jax.runtime import best_checkpoint


def eval_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "eval")


def report_path(workdir: str, step: int) -> str:
  return os.path.join(eval_dir(workdir), f"step_{int(step)}.json")


def write_report(workdir: str, report: dict) -> str:
  """Writes ``workdir/eval/step_<N>.json`` atomically; returns its path."""
  path = report_path(workdir, report["step"])
  feats_lib.write_json_atomic(path, report)
  return path


_SECTIONS = (("samples", "eval/"), ("reconstructions", "eval/recon/"),
             ("heldout_real", "eval/heldout_real/"),
             ("samples_at_heldout_n", "eval/samples_at_heldout_n/"))


# Metrics whose value depends on the feature space (their tags name it).
FEATURE_METRICS = ("fid", "kid", "kid_std", "precision", "recall", "inception_score",
                   "inception_score_std", "classifier_score",
                   "confidence", "class_coverage", "class_tv", "accuracy")


def scalars(report: dict) -> dict[str, float]:
  """The report's numbers as TensorBoard tags under ``eval/``.

  A metric computed in a feature space carries it in its tag
  (``eval/digits_classifier/fid``, ``eval/inception_v3_fid/recon/fid``), so
  evaluations in different spaces never share a curve; pixel, ELBO and
  sharpness metrics don't depend on it (``eval/recon/psnr``).
  """
  out = {}
  space = report.get("features") or "no_features"
  for section, prefix in _SECTIONS:
    for k, v in report.get(section, {}).items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        tag = prefix + k
        if k in FEATURE_METRICS:
          tag = f"eval/{space}/" + tag[len("eval/"):]
        out[tag] = float(v)
  return out


_ROWS = (("fid", "FID", "{:.3f}"), ("kid", "KID x 1e3", None), ("precision", "precision", "{:.3f}"),
         ("recall", "recall", "{:.3f}"), ("inception_score", "Inception score", "{:.2f}"),
         ("classifier_score", "classifier score", "{:.2f}"),
         ("confidence", "confidence", "{:.3f}"), ("class_coverage", "class coverage", "{:.2f}"),
         ("accuracy", "label accuracy", "{:.3f}"), ("mse", "MSE [0,1]", "{:.4f}"),
         ("psnr", "PSNR dB", "{:.2f}"), ("dis_l_error", "Dis_l error", "{:.2f}"),
         ("kl", "KL", "{:.2f}"), ("elbo", "ELBO", "{:.2f}"),
         ("sharpness_laplacian", "sharp. Laplacian", "{:.3f}"),
         ("sharpness_spectral", "sharp. spectral", "{:.3f}"))


def format_table(report: dict) -> str:
  """A short console table: samples, reconstructions, held-out real images."""
  cols = [("samples", "samples"), ("reconstructions", "recon"), ("heldout_real", "real held-out")]
  cols = [(k, h) for k, h in cols if k in report]
  head = (f"eval step {report['step']}: {report['kind']} on {report['dataset']}, features "
          f"{report['features'] or 'none'}, n={report['num']} vs {report['real_split']!r}"
          + (f", held-out {report['heldout_split']!r} n={report.get('num_heldout')}"
             if report.get("heldout_split") else ""))
  lines = [head]
  if report.get("no_features_reason"):
    lines.append(f"  ({report['no_features_reason']})")
  lines.append(f"  {'':16s}" + "".join(f"{h:>15s}" for _, h in cols))
  for key, label, fmt in _ROWS:
    vals = [report[c].get(key) for c, _ in cols]
    if all(v is None for v in vals):
      continue
    cells = []
    for v in vals:
      if v is None:
        cells.append(f"{'-':>15s}")
      elif key == "kid":
        cells.append(f"{v * 1e3:>15.3f}")
      else:
        cells.append(f"{fmt.format(v):>15s}")
    lines.append(f"  {label:16s}" + "".join(cells))
  lines.append(f"  ({report['seconds']['total']:.1f} s)")
  return "\n".join(lines)




LOWER_IS_BETTER = ("fid", "kid", "mse", "dis_l_error", "class_tv", "kl", "recon_nll",
                   "pixel_nll")
HIGHER_IS_BETTER = ("precision", "recall", "psnr", "inception_score", "classifier_score",
                    "confidence",
                    "class_coverage", "accuracy", "elbo")
BEST_SECTIONS = ("samples", "reconstructions", "samples_at_heldout_n")


def best_metric(metric: str) -> tuple[str, str, bool]:
  """'section.key' -> (section, key, lower is better). Raises ValueError naming the choices."""
  section, _, key = str(metric).partition(".")
  if section not in BEST_SECTIONS or key not in LOWER_IS_BETTER + HIGHER_IS_BETTER:
    raise ValueError(f"keep_best={metric!r} is not a metric of the evaluation report: use "
                     f'SECTION.KEY with SECTION in {"/".join(BEST_SECTIONS)} and KEY one of '
                     f'{", ".join(LOWER_IS_BETTER + HIGHER_IS_BETTER)} (e.g. samples.fid), or '
                     "'' for none.")
  return section, key, key in LOWER_IS_BETTER


def metric_value(report: dict, metric: str) -> Optional[float]:
  """The report's finite value of ``metric`` ('section.key'), or None."""
  section, key, _ = best_metric(metric)
  value = report.get(section, {}).get(key)
  return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def best_record(report: dict, metric: str, current: Optional[dict]) -> Optional[dict]:
  """The new best-checkpoint record if ``report`` beats ``current``, else None.

  A record of another metric or feature space is no competitor: it is replaced.
  """
  value = metric_value(report, metric)
  if value is None:
    return None
  lower = best_metric(metric)[2]
  if (current and current.get("metric") == metric
      and current.get("features") == report.get("features")):
    old = float(current["value"])
    if not (value < old if lower else value > old):
      return None
  return {"step": int(report["step"]), "metric": metric, "value": value,
          "features": report.get("features")}


def refresh_best(workdir: str, metric: str, steps: list[int]) -> Optional[dict]:
  """Rebuilds the best-checkpoint record when its step is not among ``steps`` (the
  checkpoints that exist): the best of their evaluation reports in the record's
  feature space; none if no report has the metric. Returns the record kept."""
  current = best_checkpoint.read_best(workdir)
  if current is not None and current.get("metric") == metric and current["step"] in steps:
    return current
  best = None
  for step in sorted(steps):
    try:
      with open(report_path(workdir, step)) as f:
        report = json.load(f)
    except (OSError, ValueError):
      continue
    if best is not None and report.get("features") != best["features"]:
      continue
    best = best_record(report, metric, best) or best
  if best != current:
    logging.info("Best checkpoint by %s: %s.", metric,
                 f"step {best['step']} ({best['value']:.4g})" if best else "none yet")
    best_checkpoint.write_best(workdir, best)
  return best
