"""Sample-quality metrics on feature vectors, and pixel reconstruction metrics.

Every function here is pure numerics: it takes feature arrays (N, D) that a
feature extractor (``features.py``) produced from real and generated images,
and returns floats. The reductions that cost O(N^2 D) (KID's kernels,
precision/recall's pairwise distances) run jitted in row blocks, so 10k x 10k
never materialises at once; the small D x D linear algebra of FID runs in
float64 on the host (SciPy), as the reference implementations do.

* ``frechet_distance``: FID (Heusel et al. 2017) between Gaussians fitted to
  two feature sets, ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
  ``method='sqrtm'`` is the route of pytorch-fid / TTUR (scipy's ``sqrtm`` of
  the product; when it is not finite, both covariances get ``eps * I``);
  ``method='eigh'`` computes Tr((S1 S2)^(1/2)) as the sum of the square roots of
  the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric PSD and so has
  no complex round-off. ``sqrtm`` falls back to ``eigh`` when the product's
  root has a large imaginary part (the references raise there).
* ``kernel_inception_distance``: KID (Binkowski et al. 2018), the unbiased
  MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, mean and
  std over random subsets.
* ``precision_recall``: improved precision and recall (Kynkaanniemi et al.
  2019): the k-NN balls (k = 3) of each set approximate its manifold;
  precision is the fraction of generated points inside the real manifold,
  recall the fraction of real points inside the generated manifold.
* ``classifier_scores``: from class probabilities (N, C): the Inception-score
  formula in the classifier's classes, exp(E_x KL(p(y|x) || p(y))), named
  ``classifier_score`` (not comparable with published Inception scores), the mean confidence, class coverage
  and the total-variation distance between predicted class histograms.
* ``attribute_similarity``: the paper's Sec. 5.3 scores of attribute vectors
  y (N, A) against a classifier's predicted probabilities p (N, A): the mean
  cosine similarity and the MSE; ``binary_accuracy`` of p thresholded at 0.5.
* ``pixel_metrics``: MSE on the [0, 1] scale and PSNR (peak 1).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

Array = jax.Array

# Row block of the O(N^2) reductions: bounds memory at block x N distances.
_BLOCK = 1024


# ----------------------------------------------------------------------------
# FID.


def gaussian_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
  """(mu (D,), sigma (D, D)) in float64, sigma the unbiased covariance (N - 1)."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"Need features of shape (N, D) with N >= 2, got {f.shape}.")
  return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), all real."""
  w, v = np.linalg.eigh(sigma1)
  root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  m = root1 @ sigma2 @ root1
  ev = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))


def _trace_sqrt_product_sqrtm(sigma1, sigma2, eps: float) -> Optional[float]:
  """The reference implementations' route; None where its root is complex."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # scipy warns on singular products.
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      return None
    covmean = covmean.real
  if not np.isfinite(covmean).all():
    return None
  return float(np.trace(covmean))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *,
                     eps: float = 1e-6, method: str = "sqrtm") -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances.
    eps: the diagonal offset of the reference code when sqrtm is not finite.
    method: 'sqrtm' (the references' route) or 'eigh' (see module docstring).
  Returns:
    ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)), a float >= 0 up to
    round-off.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"Mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma "
                     f"{s1.shape} vs {s2.shape}.")
  if method not in ("sqrtm", "eigh"):
    raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}.")
  tr = _trace_sqrt_product_sqrtm(s1, s2, eps) if method == "sqrtm" else None
  if tr is None:
    tr = _trace_sqrt_product_eigh(s1, s2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr)


def fid_from_features(real: Any, fake: Any, **kw) -> float:
  """FID of two feature sets (N1, D), (N2, D)."""
  return frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake), **kw)


# ----------------------------------------------------------------------------
# KID.


@jax.jit
def _kernel_sums(x: Array, y: Array) -> tuple[Array, Array, Array]:
  """Sums of k(x_i, x_j) (i != j), k(y_i, y_j) (i != j) and k(x_i, y_j)."""
  d = x.shape[1]
  k = lambda a, b: (a @ b.T / d + 1.0) ** 3
  kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
  return (jnp.sum(kxx) - jnp.trace(kxx), jnp.sum(kyy) - jnp.trace(kyy), jnp.sum(kxy))


def kernel_inception_distance(real: Any, fake: Any, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
  """KID: unbiased MMD^2, cubic polynomial kernel, over random subsets.

  Each subset draws m = min(subset_size, N_real, N_fake) rows of each set
  without replacement; MMD^2_u = [sum_{i!=j} k(x_i,x_j) + sum_{i!=j} k(y_i,y_j)]
  / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m^2.

  Returns:
    {'kid': mean over subsets, 'kid_std': their std, 'kid_subset_size': m}.
  """
  x = np.asarray(real, np.float32)
  y = np.asarray(fake, np.float32)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"Need (N, D) features of the same D, got {x.shape} and {y.shape}.")
  m = min(int(subset_size), x.shape[0], y.shape[0])
  if m < 2:
    raise ValueError(f"KID needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}.")
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(int(num_subsets)):
    xs = x[rng.choice(x.shape[0], m, replace=False)]
    ys = y[rng.choice(y.shape[0], m, replace=False)]
    sxx, syy, sxy = (float(v) for v in _kernel_sums(xs.astype(np.float32), ys.astype(np.float32)))
    values.append((sxx + syy) / (m * (m - 1)) - 2.0 * sxy / (m * m))
  values = np.asarray(values)
  return {"kid": float(values.mean()), "kid_std": float(values.std()),
          "kid_subset_size": m}


# ----------------------------------------------------------------------------
# Precision and recall.


@jax.jit
def _sq_dists(a: Array, b: Array) -> Array:
  """Squared Euclidean distances (na, nb), clipped at 0."""
  d = (jnp.sum(a * a, axis=1)[:, None] - 2.0 * a @ b.T + jnp.sum(b * b, axis=1)[None, :])
  return jnp.maximum(d, 0.0)


def _blocks(n: int):
  for s in range(0, n, _BLOCK):
    yield s, min(s + _BLOCK, n)


def knn_radii(features: Any, k: int = 3) -> np.ndarray:
  """Distance of each row to its k-th nearest other row: (N,) float32."""
  f = jnp.asarray(features, jnp.float32)
  n = f.shape[0]
  if n <= k:
    raise ValueError(f"Need more than k={k} samples, got {n}.")
  out = []
  for s, e in _blocks(n):
    # k: the row itself is its own nearest neighbour at distance 0 (index 0).
    # numpy's partition: XLA:CPU's top_k took 20x longer at N = 10k.
    d = np.asarray(_sq_dists(f[s:e], f))
    out.append(np.partition(d, k, axis=1)[:, k])
  return np.sqrt(np.concatenate(out))


def _fraction_inside(query: Any, support: Any, radii: np.ndarray) -> float:
  """Fraction of query rows within radii[j] of some support row j."""
  q = jnp.asarray(query, jnp.float32)
  s = jnp.asarray(support, jnp.float32)
  r2 = jnp.asarray(radii, jnp.float32) ** 2
  inside = []
  for a, b in _blocks(q.shape[0]):
    inside.append(np.asarray(jnp.any(_sq_dists(q[a:b], s) <= r2[None, :], axis=1)))
  return float(np.mean(np.concatenate(inside)))


def precision_recall(real: Any, fake: Any, *, k: int = 3) -> dict[str, float]:
  """Improved precision/recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

  Returns:
    {'precision': fraction of fake rows inside the real manifold,
     'recall': fraction of real rows inside the fake manifold}.
  """
  real = np.asarray(real, np.float32)
  fake = np.asarray(fake, np.float32)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"Need (N, D) features of the same D, got {real.shape} and {fake.shape}.")
  return {"precision": _fraction_inside(fake, real, knn_radii(real, k)),
          "recall": _fraction_inside(real, fake, knn_radii(fake, k))}


# ----------------------------------------------------------------------------
# Classifier-based scores.


def classifier_scores(probs: Any, reference_probs: Optional[Any] = None) -> dict[str, float]:
  """Scores of class probabilities p (N, C) of one image set.

  * 'classifier_score': exp(mean_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x)
    over the set (one split), in the classifier's C classes: ranges over [1, C].
    Not an Inception score (``inception_score`` is).
  * 'confidence': mean over images of max_y p(y|x).
  * 'class_coverage': fraction of the C classes that are the argmax of at
    least half their fair share, N / (2 C), of the images.
  * with ``reference_probs`` (real images): 'class_tv', the total-variation
    distance between the argmax class histograms of the two sets (0: same
    class balance; 1: disjoint classes).
  """
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or p.shape[0] < 1:
    raise ValueError(f"Need probabilities of shape (N, C), got {p.shape}.")
  n, c = p.shape
  p = np.clip(p, 1e-12, 1.0)
  p = p / p.sum(axis=1, keepdims=True)
  marginal = p.mean(axis=0)
  kl = np.sum(p * (np.log(p) - np.log(marginal)[None, :]), axis=1)
  hist = np.bincount(np.argmax(p, axis=1), minlength=c) / n
  out = {"classifier_score": float(np.exp(kl.mean())),
         "confidence": float(p.max(axis=1).mean()),
         "class_coverage": float(np.mean(hist >= 1.0 / (2 * c)))}
  if reference_probs is not None:
    r = np.asarray(reference_probs, np.float64)
    ref_hist = np.bincount(np.argmax(r, axis=1), minlength=c) / r.shape[0]
    out["class_tv"] = float(0.5 * np.abs(hist - ref_hist).sum())
  return out


def inception_score(probs: Any, splits: int = 10) -> dict[str, float]:
  """The Inception score as OpenAI's code and torch-fidelity compute it.

  ``probs`` (N, 1008): softmax of Inception-v3's fc logits *without* the fc
  bias (``features.inception_features`` drops it); the images in ``splits``
  consecutive parts, exp(E_x KL(p(y|x) || p(y))) with p(y) each part's mean;
  returns the mean and std over the parts ('inception_score',
  'inception_score_std').
  """
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or p.shape[0] < splits:
    raise ValueError(f"Need probabilities (N, C) with N >= splits={splits}, got {p.shape}.")
  scores = []
  for part in np.array_split(p, splits):
    part = np.clip(part, 1e-12, 1.0)
    marginal = part.mean(axis=0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(marginal)), axis=1))))
  return {"inception_score": float(np.mean(scores)), "inception_score_std": float(np.std(scores))}


# ----------------------------------------------------------------------------
# Attribute similarity (paper Sec. 5.3).
#
# For targets y (N, A) (attribute vectors in {0, 1}, or one-hot classes) and
# predicted probabilities p (N, A) in [0, 1]:
#
#   cosine = (1/N) sum_i  <y_i, p_i> / (|y_i| |p_i|)   (mean of per-example
#            cosines; an example with |y_i| |p_i| = 0, e.g. no positive label,
#            counts as cosine 0 and is reported in ``num_zero_norm``)
#   mse    = (1/(N A)) sum_{i,a} (y_ia - p_ia)^2          (mean over all entries)
#
# Probabilities, not thresholded 0/1 predictions, are compared, so a confident
# wrong prediction costs more than an unsure one.


def attribute_similarity(y: Any, pred: Any) -> dict[str, float]:
  """Cosine similarity and MSE between attribute labels and predictions.

  Args:
    y: (N, A) target attributes, {0, 1} (any reals work).
    pred: (N, A) predicted attribute probabilities in [0, 1].
  Returns:
    dict with 'cosine': mean over examples of cos(y_i, pred_i) (an example
    whose y_i or pred_i is all zero contributes 0); 'mse': mean over all N*A
    entries of (y - pred)^2; 'num_examples': N; 'num_zero_norm': how many
    examples had a zero-norm y_i or pred_i. Computed in float64 on the host.
  """
  y = np.asarray(y, np.float64)
  p = np.asarray(pred, np.float64)
  if y.ndim != 2 or y.shape != p.shape or y.shape[0] == 0:
    raise ValueError(f"Need y and pred of the same shape (N, A), N > 0; got "
                     f"{y.shape} and {p.shape}.")
  dot = np.sum(y * p, axis=1)
  denom = np.linalg.norm(y, axis=1) * np.linalg.norm(p, axis=1)
  zero = denom == 0
  cos = np.where(zero, 0.0, dot / np.where(zero, 1.0, denom))
  return dict(cosine=float(np.mean(cos)), mse=float(np.mean((y - p) ** 2)),
              num_examples=int(y.shape[0]), num_zero_norm=int(np.sum(zero)))


def binary_accuracy(y: Any, pred: Any) -> float:
  """Mean over all entries of [pred > 0.5] == [y > 0.5]; y and pred (N, A)."""
  return float(np.mean((np.asarray(pred) > 0.5) == (np.asarray(y) > 0.5)))


# ----------------------------------------------------------------------------
# Pixels.


def pixel_metrics(x: Any, x_tilde: Any) -> dict[str, float]:
  """MSE and PSNR of reconstructions, images in [-1, 1] (N, H, W, C).

  Both on the [0, 1] scale (MSE_[0,1] = MSE_[-1,1] / 4), PSNR = 10 log10(1 /
  MSE) with the MSE of each image, averaged over images (dB).
  """
  a = (np.asarray(x, np.float64) + 1.0) / 2.0
  b = (np.asarray(x_tilde, np.float64) + 1.0) / 2.0
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"Need two (N, H, W, C) arrays of one shape, got {a.shape} and {b.shape}.")
  per_image = np.mean((a - b) ** 2, axis=(1, 2, 3))
  psnr = 10.0 * np.log10(1.0 / np.maximum(per_image, 1e-10))
  return {"mse": float(per_image.mean()), "psnr": float(psnr.mean())}


# ----------------------------------------------------------------------------
# Sharpness: two measures of high-frequency content.
#
# Both work on the grey image g = mean over channels, scaled to [0, 1], and
# are reported by the evaluation relative to real images (1.0 = as sharp as
# real; blur scores below 1, noise or ringing above).

# Spatial frequencies are in cycles per pixel, |f| <= 0.5 (Nyquist) along each
# axis. "High frequency" is the upper half of the radial range up to Nyquist,
# 0.25 <= |f| <= 0.5 (the corners beyond 0.5 are left out: only the diagonal
# reaches them). A Gaussian blur of sigma = 1 px keeps exp(-4 pi^2 0.25^2)
# = 8.5 % of the power at its lower edge.
HIGH_FREQUENCY_BAND = (0.25, 0.5)


def grey(images: Any) -> np.ndarray:
  """(N, H, W, C) images in [-1, 1] -> (N, H, W) float64 grey levels in [0, 1]."""
  x = np.asarray(images, np.float64)
  if x.ndim != 4:
    raise ValueError(f"Need images of shape (N, H, W, C), got {x.shape}.")
  return (x.mean(axis=-1) + 1.0) / 2.0


def laplacian_variance(images: Any) -> np.ndarray:
  """Per image: the variance of the 4-neighbour discrete Laplacian of its grey levels.

  A standard focus measure (high for edges and fine detail, low for blur).
  Args: images (N, H, W, C) in [-1, 1]. Returns: (N,) float64.
  """
  g = grey(images)
  lap = (g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:]
         - 4.0 * g[:, 1:-1, 1:-1])
  return lap.reshape(len(g), -1).var(axis=1)


def _window(h: int, w: int, window: Optional[str]) -> np.ndarray:
  if window is None:
    return np.ones((h, w))
  if window != "hann":
    raise ValueError(f"window must be 'hann' or None, got {window!r}.")
  # Periodic Hann (the DFT's own): a sum of three pure frequencies.
  return np.outer(np.hanning(h + 1)[:-1], np.hanning(w + 1)[:-1])


def power_spectrum(images: Any, *, window: Optional[str] = "hann"
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Per image: the 2-D power spectrum of the mean-removed, windowed grey image.

  Normalised by the window's energy, so that white noise of variance s^2 has
  the flat spectrum s^2 in expectation at every frequency (Parseval), with or
  without the window.

  Args:
    images: (N, H, W, C) in [-1, 1].
    window: 'hann' (default: the crop's edges are no discontinuity to the
      DFT, so they add no high-frequency energy of their own) or None.
  Returns:
    (power (N, H, W) float64, radius (H, W): |f| in cycles per pixel).
  """
  g = grey(images)
  _, h, w = g.shape
  win = _window(h, w, window)
  g = (g - g.mean(axis=(1, 2), keepdims=True)) * win
  power = np.abs(np.fft.fft2(g)) ** 2 / np.sum(win ** 2)
  fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
  return power, np.hypot(fy, fx)


def radial_power_spectrum(images: Any, *, window: Optional[str] = "hann"
                          ) -> tuple[np.ndarray, np.ndarray]:
  """The radially averaged power spectrum, averaged over images.

  Bin k holds the frequencies with round(|f| * S) = k, S = min(H, W), for
  k = 1 .. S // 2 (the DC bin 0 is left out: the mean is removed).
  Returns:
    (frequencies (K,) = k / S in cycles per pixel, mean power (K,)).
  """
  power, radius = power_spectrum(images, window=window)
  size = min(power.shape[1:])
  bins = np.rint(radius * size).astype(int)
  mean_power = power.mean(axis=0)
  ks = np.arange(1, size // 2 + 1)
  out = np.array([mean_power[bins == k].mean() for k in ks])
  return ks / size, out


def high_frequency_energy(images: Any, *, band: tuple[float, float] = HIGH_FREQUENCY_BAND,
                          window: Optional[str] = "hann") -> np.ndarray:
  """Per image: the mean power over the frequencies with band[0] <= |f| <= band[1].

  Args: images (N, H, W, C) in [-1, 1]. Returns: (N,) float64.
  """
  power, radius = power_spectrum(images, window=window)
  mask = (radius >= band[0]) & (radius <= band[1])
  return power[:, mask].mean(axis=1)


def sharpness_metrics(images: Any, reference: Optional[dict[str, float]] = None
                      ) -> dict[str, float]:
  """Both sharpness measures of a set of images, and their ratios to a reference set.

  Returns 'laplacian_variance' and 'hf_energy' (means over the images), and
  with ``reference`` (this function's output for real images) the ratios
  'sharpness_laplacian' and 'sharpness_spectral' (1.0 = as sharp as the
  reference; below 1: blurrier).
  """
  out = {"laplacian_variance": float(laplacian_variance(images).mean()),
         "hf_energy": float(high_frequency_energy(images).mean())}
  if reference is not None:
    out["sharpness_laplacian"] = out["laplacian_variance"] / reference["laplacian_variance"]
    out["sharpness_spectral"] = out["hf_energy"] / reference["hf_energy"]
  return out
