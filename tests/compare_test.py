"""The paper's comparison: sharpness and Table 1 scores on known cases, and the
command end to end on a tiny budget (slow)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from vaegan_jax.studies import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n=16, s=32, seed=0):
  rng = np.random.default_rng(seed)
  x = np.zeros((n, s, s, 1))
  for i in range(n):  # bars and squares: edges of known contrast
    a, b = rng.integers(2, s // 2, 2)
    x[i, a:a + s // 3, b:b + s // 4] = 1.0
  return x * 2 - 1


def test_blurred_images_are_less_sharp_and_the_order_follows_the_blur():
  x = _images()
  blurs = [ndimage.gaussian_filter(x, sigma=(0, s, s, 0)) for s in (0.5, 1.0, 2.0)]
  scores = [compare.sharpness(x)] + [compare.sharpness(b) for b in blurs]
  assert all(a > b for a, b in zip(scores, scores[1:])), scores
  # Independent reference: scipy's Laplacian (same 4-neighbour stencil) on the interior.
  g = (x[..., 0] + 1) / 2
  ref = np.mean([ndimage.laplace(im)[1:-1, 1:-1].var() for im in g])
  np.testing.assert_allclose(compare.sharpness(x), ref, rtol=1e-10)
  assert compare.sharpness(np.zeros_like(x)) == 0.0


def test_conditional_scores_on_known_cases():
  y = np.eye(4)[[0, 1, 2, 3]]
  perfect = compare.conditional_scores(y, y)
  assert perfect == {"cosine": 1.0, "mse": 0.0, "accuracy": 1.0}
  uniform = compare.conditional_scores(y, np.full((4, 4), 0.25))
  np.testing.assert_allclose(uniform["cosine"], 0.5)  # 0.25 / (1 * 0.5)
  np.testing.assert_allclose(uniform["mse"], (0.75 ** 2 + 3 * 0.25 ** 2) / 4)
  wrong = compare.conditional_scores(y, np.eye(4)[[1, 2, 3, 0]])
  assert wrong["cosine"] == 0.0 and wrong["accuracy"] == 0.0 and wrong["mse"] == 0.5


@pytest.mark.slow
def test_compare_command_end_to_end_on_a_tiny_budget(tmp_path):
  out = str(tmp_path / "cmp")
  cmd = [sys.executable, "-m", "experiments.compare", f"--outdir={out}",
         "--config=experiments/configs/tiny.py", "--config.model.conv_impl=xla",
         "--steps=4", "--seeds=1", "--num=64"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
  assert r.returncode == 0, r.stderr[-3000:]
  for f in ("report.md", "results.json", "fig_samples.png", "fig_reconstructions.png",
            "fig_conditional.png"):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  report = open(os.path.join(out, "report.md")).read()
  rows = [l for l in report.splitlines() if l.startswith("| ") and not l.startswith("| model")]
  assert len(rows) >= 4 + 3 + 1  # 4 models, 3 conditional, the real row
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    for c in cells:
      if c == "–":  # only where a model has no encoder (GAN's reconstructions)
        assert row.startswith("| GAN"), row
        continue
      for num in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", c):
        assert np.isfinite(float(num)), row
  results = json.load(open(os.path.join(out, "results.json")))
  assert set(results["runs"]) == {"vae_s0", "vae_dis_l_s0", "vaegan_s0", "gan_s0"}
  assert set(results["cond_runs"]) == {"gan_cond_s0", "vae_cond_s0", "vaegan_cond_s0"}
  assert "The paper's claims" in report and "hold" in report
  # Rerunning reuses the finished runs (nothing retrained).
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
  assert r.returncode == 0, r.stderr[-3000:]
  walls = json.load(open(os.path.join(out, "results.json")))
  for name, run in walls["runs"].items():
    assert run["final"]["wall_s"] == pytest.approx(results["runs"][name]["final"]["wall_s"],
                                                   abs=5.0)


def _synthetic(vae_sharp, seeds=3):
  runs = {}
  vals = {"vae": (15.0, vae_sharp), "vae_dis_l": (10.0, 1.0), "vaegan": (8.0, 0.95),
          "gan": (11.0, 0.9)}
  for kind, (fid, sharp) in vals.items():
    for s in range(seeds):
      final = {k: 0.5 for k, _, _, _ in compare.COLUMNS}
      final.update(fid=fid + 0.1 * s, recon_sharpness=sharp, sample_sharpness=sharp,
                   recon_hf=sharp, sample_hf=sharp,
                   recon_mse=0.01 if kind == "vae" else 0.02)
      runs[f"{kind}_s{s}"] = {"kind": kind, "seed": s, "final": final, "curve": [final]}
  return {"dataset": "synthetic", "features": "f", "steps": 1, "seeds": seeds, "num": 2,
          "batch_size": 2, "total_wall_s": 60.0, "runs": runs, "cond_runs": {}}


def _claim(claims, start):
  found = [c for c in claims if c.startswith(start)]
  assert len(found) == 1, (start, claims)
  return found[0]


def test_claims_follow_the_numbers_and_say_when_sharpness_cannot_test_them():
  blurry = compare.claims(_synthetic(vae_sharp=0.6))
  assert _claim(blurry, "The VAE's reconstructions are blurrier than the real images").count(
      "**holds**") == 1
  assert "**holds**" in _claim(blurry, "... and blurrier than VAE_Dis_l's")
  assert "**holds**" in _claim(blurry, "VAE-GAN's samples are sharper than the VAE's")
  assert "**holds**" in _claim(blurry, "The pixel-wise VAE has the lowest pixel error")
  assert all("**fails**" not in c for c in blurry)
  sharp = compare.claims(_synthetic(vae_sharp=1.6))  # VAE not blurrier than real data
  assert "**not testable on this data**" in sharp[0]
  assert "**fails**" in _claim(sharp, "VAE-GAN's samples are sharper than the VAE's")
  worse = _synthetic(vae_sharp=0.6)
  for r in worse["runs"].values():
    if r["kind"] == "vaegan":
      r["final"]["fid"] = 20.0
  text = compare.report_markdown(worse)
  assert "Adding the GAN term improves the samples over VAE_Dis_l: **fails**" in text
  assert "| VAE-GAN | 20.00 ± 0.00 |" in text
  # A difference smaller than the seed-to-seed spread is neither.
  close = _synthetic(vae_sharp=0.6)
  for r in close["runs"].values():
    if r["kind"] == "vaegan":
      r["final"]["fid"] = 10.05 + r["seed"]  # std 1 > |10.05 + 1 - 10.1|
  assert "**within the seed spread**" in _claim(
      compare.claims(close), "Adding the GAN term improves the samples over VAE_Dis_l")
  # One measure says blurrier, the other not: the claim is mixed, not 'holds'.
  mixed = _synthetic(vae_sharp=0.6)
  for r in mixed["runs"].values():
    if r["kind"] == "vae_dis_l":
      r["final"]["recon_hf"] = 0.3
  assert "**mixed**" in _claim(compare.claims(mixed), "... and blurrier than VAE_Dis_l's")


def test_spectrum_bands_on_a_blur():
  x = _images(n=32)
  same = compare.spectrum_bands(x, x)
  np.testing.assert_allclose(same, 1.0)
  blurred = compare.spectrum_bands(ndimage.gaussian_filter(x, (0, 1.0, 1.0, 0)), x)
  assert blurred == sorted(blurred, reverse=True) and blurred[-1] < 0.05 < blurred[0]


def test_figures_put_training_images_above_samples_and_held_out_above_reconstructions(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  n, s = compare.FIGURE_IMAGES, 4
  real = np.ones((n, s, s, 1))  # white
  held = {"image": -np.ones((n, s, s, 1))}  # black
  grey = np.zeros((n, s, s, 1))
  figures = {("vae", False): {"samples": grey, "reconstructions": grey}}
  compare._figures(str(tmp_path), figures, held, real, ("vae",), ())
  scale = compare.FIGURE_SCALE
  for name, top in (("fig_samples.png", 255), ("fig_reconstructions.png", 0)):
    png = np.asarray(Image.open(tmp_path / name))
    assert png.shape[0] == (2 * (s + 2) + 2) * scale  # two rows, enlarged
    first = png[2 * scale:(2 + s) * scale, 2 * scale:(2 + s) * scale]  # first tile
    second = png[(4 + s) * scale:(4 + 2 * s) * scale, 2 * scale:(2 + s) * scale]
    assert (first == top).all(), name
    assert (second == 128).all(), name
