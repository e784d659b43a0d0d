"""The sample-quality metrics against independent references.

FID against closed forms of the Fréchet distance of Gaussians and against
scipy's sqrtm route written out here; KID against a direct O(n^2) numpy
MMD^2; precision/recall on point clouds whose answer is known; the classifier
scores, the attribute similarity and PSNR on cases computed by hand; the
sharpness spectrum on white noise (flat, at its variance) and on Gaussian blurs
(power times exp(-4 pi^2 sigma^2 f^2)).
"""

import numpy as np
import pytest
import scipy.linalg
from scipy import ndimage

from vaegan_jax.evaluation import metrics


def _random_spd(rng, d, scale=1.0):
  a = rng.normal(size=(d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_closed_forms(method):
  rng = np.random.default_rng(0)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  # Commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2.
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
  assert got == pytest.approx(want, rel=1e-9)
  # S2 = c^2 S1 (not diagonal): Tr(S1) (1 - c)^2.
  s1 = _random_spd(rng, d)
  for c in (0.5, 2.0):
    got = metrics.frechet_distance(mu1, s1, mu1, c * c * s1, method=method)
    assert got == pytest.approx(np.trace(s1) * (1 - c) ** 2, rel=1e-8)
  # Identical Gaussians: 0.
  assert abs(metrics.frechet_distance(mu1, s1, mu1, s1, method=method)) < 1e-9
  # 1-d: (m1 - m2)^2 + (s1 - s2)^2.
  assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]], method=method) == (
      pytest.approx(4.0 + 1.0))


def test_frechet_distance_matches_scipy_sqrtm_route():
  rng = np.random.default_rng(1)
  for d in (3, 16, 64):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 2.0)
    # The reference implementations' formula, written out independently.
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    for method in ("sqrtm", "eigh"):
      assert metrics.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(
          want, rel=1e-7)


def test_frechet_distance_near_singular_stays_finite():
  rng = np.random.default_rng(2)
  d = 64
  # 20 samples in 64 dimensions: rank-20 covariances, singular products.
  x = rng.normal(size=(20, d))
  y = rng.normal(size=(20, d)) + 0.5
  fid = metrics.fid_from_features(x, y)
  assert np.isfinite(fid) and fid > 0
  assert fid == pytest.approx(metrics.fid_from_features(x, y, method="eigh"), rel=1e-3)
  # Exactly rank-1 covariances (a constant direction) and zero covariance.
  v = rng.normal(size=d)
  s = np.outer(v, v)
  assert np.isfinite(metrics.frechet_distance(np.zeros(d), s, np.zeros(d), 2 * s))
  z = np.zeros((d, d))
  assert metrics.frechet_distance(np.zeros(d), z, np.ones(d), z) == pytest.approx(d)
  # Same features: ~0.
  assert abs(metrics.fid_from_features(x, x)) < 1e-4  # Tr(S) ~ 64: round-off only.


def test_gaussian_statistics_and_fid_of_features():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(500, 4)) * [1, 2, 3, 4] + [0, 1, 0, 1]
  mu, sigma = metrics.gaussian_statistics(x)
  np.testing.assert_allclose(mu, x.mean(0))
  np.testing.assert_allclose(sigma, np.cov(x.T))
  with pytest.raises(ValueError, match="N >= 2"):
    metrics.gaussian_statistics(x[:1])


def _mmd2_unbiased_numpy(x, y):
  """Direct O(n^2) loops over pairs, float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1.0) ** 3
  m, n = len(x), len(y)
  sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
  sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
  return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)


def test_kid_matches_direct_numpy():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(40, 8))
  y = rng.normal(size=(40, 8)) * 1.3 + 0.2
  # One subset of all rows: a permutation, and MMD^2_u ignores order.
  got = metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=40)
  assert got["kid"] == pytest.approx(_mmd2_unbiased_numpy(x, y), rel=1e-4)
  assert got["kid_subset_size"] == 40 and got["kid_std"] == 0.0
  # Subsets: the mean over subsets, each a direct MMD^2 of its rows.
  got = metrics.kernel_inception_distance(x, y, num_subsets=5, subset_size=10, seed=7)
  r = np.random.default_rng(7)
  want = []
  for _ in range(5):
    xs, ys = x[r.choice(40, 10, replace=False)], y[r.choice(40, 10, replace=False)]
    want.append(_mmd2_unbiased_numpy(xs, ys))
  assert got["kid"] == pytest.approx(np.mean(want), rel=1e-3)  # float32 kernels.
  assert got["kid_std"] == pytest.approx(np.std(want), rel=1e-3)


def test_kid_is_unbiased_near_zero_for_one_distribution():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
  same = metrics.kernel_inception_distance(x, y, num_subsets=50, subset_size=100)
  far = metrics.kernel_inception_distance(x, y + 1.0, num_subsets=50, subset_size=100)
  # Unbiased: the same distribution averages to ~0 (can be negative), far above it.
  assert abs(same["kid"]) < 3 * same["kid_std"] / np.sqrt(50) + 1e-3
  assert far["kid"] > 50 * abs(same["kid"]) and far["kid"] > 0.1


def test_precision_recall_known_answers():
  rng = np.random.default_rng(6)
  real = rng.normal(size=(200, 5))
  same = metrics.precision_recall(real, real)
  assert same == {"precision": 1.0, "recall": 1.0}
  far = metrics.precision_recall(real, rng.normal(size=(200, 5)) + 100.0)
  assert far == {"precision": 0.0, "recall": 0.0}
  # Two clusters of real points; the fakes are a subset of one of them.
  two = np.concatenate([rng.normal(size=(100, 5)), rng.normal(size=(100, 5)) + 50.0])
  sub = two[:60]
  got = metrics.precision_recall(two, sub)
  assert got["precision"] == 1.0
  assert 0.3 < got["recall"] < 0.55  # At most the first cluster's half.
  # k-th neighbour radii by brute force.
  pts = rng.normal(size=(30, 3))
  d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
  np.testing.assert_allclose(metrics.knn_radii(pts, 3), np.sort(d, axis=1)[:, 3], rtol=1e-4,
                             atol=1e-5)


def test_classifier_scores_by_hand():
  c = 4
  one_hot = np.eye(c)[np.arange(40) % c]
  got = metrics.classifier_scores(one_hot, one_hot)
  assert got["classifier_score"] == pytest.approx(c, rel=1e-6)
  assert got["confidence"] == pytest.approx(1.0)
  assert got["class_coverage"] == 1.0 and got["class_tv"] == pytest.approx(0.0)
  collapsed = np.eye(c)[np.zeros(40, int)]
  got = metrics.classifier_scores(collapsed, one_hot)
  assert got["classifier_score"] == pytest.approx(1.0, abs=1e-6)
  assert got["class_coverage"] == 1 / c
  assert got["class_tv"] == pytest.approx(0.75)
  unsure = np.full((10, c), 1 / c)
  got = metrics.classifier_scores(unsure)
  assert got["classifier_score"] == pytest.approx(1.0) and got["confidence"] == pytest.approx(0.25)


def test_inception_score_by_hand_over_splits():
  c = 5
  # Splits 0-4 hold every class once (IS = c each); splits 5-9 hold one class (IS = 1).
  spread = np.eye(c)
  collapsed = np.eye(c)[np.zeros(c, int)]
  probs = np.concatenate([spread] * 5 + [collapsed] * 5)
  got = metrics.inception_score(probs, splits=10)
  assert got["inception_score"] == pytest.approx((5 * c + 5 * 1) / 10, rel=1e-6)
  assert got["inception_score_std"] == pytest.approx(np.std([c] * 5 + [1] * 5), rel=1e-6)
  with pytest.raises(ValueError, match="splits"):
    metrics.inception_score(probs[:5], splits=10)


def test_attribute_similarity_by_hand():
  y = [[1, 0, 1], [0, 0, 0], [1, 1, 1]]
  p = [[0.9, 0.2, 0.6], [0.1, 0.3, 0.2], [0.5, 0.5, 0.5]]
  got = metrics.attribute_similarity(y, p)
  # Row 0: <y, p> = 1.5, |y| = sqrt(2), |p| = sqrt(0.81 + 0.04 + 0.36) = 1.1.
  # Row 1: y = 0 -> counts as 0. Row 2: p parallel to y -> 1.
  assert got["cosine"] == pytest.approx((1.5 / (np.sqrt(2) * 1.1) + 0 + 1) / 3, abs=1e-12)
  # Squared errors: .01 .04 .16 | .01 .09 .04 | .25 .25 .25 -> 1.10 / 9.
  assert got["mse"] == pytest.approx(1.10 / 9, abs=1e-12)
  assert got["num_examples"] == 3 and got["num_zero_norm"] == 1
  # Against a plain loop on random data.
  rng = np.random.default_rng(0)
  y = (rng.random((50, 7)) < 0.4).astype(np.float32)
  p = rng.random((50, 7)).astype(np.float32)
  cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if a.any() else 0.0
         for a, b in zip(y.astype(np.float64), p.astype(np.float64))]
  got = metrics.attribute_similarity(y, p)
  assert got["cosine"] == pytest.approx(np.mean(cos), abs=1e-9)
  assert got["mse"] == pytest.approx(np.mean((y.astype(np.float64) - p) ** 2), abs=1e-9)
  perfect = metrics.attribute_similarity(y, y)
  assert perfect["mse"] == 0 and perfect["cosine"] == pytest.approx(
      np.mean(y.any(axis=1)))
  assert metrics.binary_accuracy([[1, 0]], [[0.7, 0.6]]) == 0.5
  # Only an exactly zero norm counts as 0: a tiny one is still a direction.
  tiny = metrics.attribute_similarity([[1e-20, 0.0]], [[1e-20, 0.0]])
  assert tiny["cosine"] == 1.0 and tiny["num_zero_norm"] == 0
  with pytest.raises(ValueError, match="same shape"):
    metrics.attribute_similarity(y, p[:, :3])


def test_pixel_metrics_by_hand():
  x = np.full((2, 4, 4, 1), -1.0)
  y = x.copy()
  y[0] += 0.2  # [0, 1] scale: error 0.1 -> MSE 0.01 -> 20 dB.
  y[1] += 0.02  # error 0.01 -> MSE 1e-4 -> 40 dB.
  got = metrics.pixel_metrics(x, y)
  assert got["mse"] == pytest.approx((0.01 + 1e-4) / 2)
  assert got["psnr"] == pytest.approx(30.0)


# ----------------------------------------------------------------------------
# Sharpness: the radial power spectrum on closed forms.


def _white_noise(n=300, size=64, std=0.2, seed=0):
  """Images in [-1, 1] scale whose grey levels in [0, 1] have variance (std / 2)^2."""
  return np.random.default_rng(seed).normal(0.0, std, (n, size, size, 1))


@pytest.mark.parametrize("window", [None, "hann"])
def test_white_noise_has_a_flat_spectrum_at_its_variance(window):
  x = _white_noise()
  freqs, power = metrics.radial_power_spectrum(x, window=window)
  assert freqs[0] == pytest.approx(1 / 64) and freqs[-1] == pytest.approx(0.5)
  np.testing.assert_allclose(power, 0.1 ** 2, rtol=0.08)  # grey std = 0.2 / 2
  hf = metrics.high_frequency_energy(x, window=window)
  assert hf.shape == (300,)
  np.testing.assert_allclose(hf.mean(), 0.01, rtol=0.02)


def test_gaussian_blur_attenuates_each_frequency_by_its_closed_form():
  """A Gaussian blur of sigma px multiplies the power at |f| by exp(-4 pi^2 sigma^2 f^2)."""
  sigma = 1.5
  x = _white_noise()
  blurred = ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode="wrap", truncate=8.0)
  freqs, p = metrics.radial_power_spectrum(x, window=None)
  _, pb = metrics.radial_power_spectrum(blurred, window=None)
  want = np.exp(-4 * np.pi ** 2 * sigma ** 2 * freqs ** 2)
  low = freqs <= 0.3  # above, the sampled kernel's aliasing is no longer negligible
  np.testing.assert_allclose((pb / p)[low], want[low], rtol=0.1)
  # The band's energy: the closed form averaged over the band's frequencies.
  _, radius = metrics.power_spectrum(x[:1], window=None)
  lo, hi = metrics.HIGH_FREQUENCY_BAND
  band = radius[(radius >= lo) & (radius <= hi)]
  closed = np.exp(-4 * np.pi ** 2 * sigma ** 2 * band ** 2).mean()
  for window, tol in ((None, 0.02), ("hann", 0.15)):
    ratio = (metrics.high_frequency_energy(blurred, window=window).mean() /
             metrics.high_frequency_energy(x, window=window).mean())
    np.testing.assert_allclose(ratio, closed, rtol=tol)
  # More blur, less high-frequency energy; by both measures.
  scores = [metrics.sharpness_metrics(ndimage.gaussian_filter(x, (0, s, s, 0), mode="wrap"))
            for s in (0.5, 1.0, 2.0)]
  for key in ("laplacian_variance", "hf_energy"):
    values = [s[key] for s in scores]
    assert values == sorted(values, reverse=True), (key, values)


def test_sharpness_ratios_and_the_edge_window():
  x = _white_noise(n=20)
  ref = metrics.sharpness_metrics(x)
  same = metrics.sharpness_metrics(x, ref)
  assert same["sharpness_laplacian"] == pytest.approx(1.0)
  assert same["sharpness_spectral"] == pytest.approx(1.0)
  half = metrics.sharpness_metrics(x * 0.5, ref)  # contrast halved: power / 4
  assert half["sharpness_spectral"] == pytest.approx(0.25)
  assert half["sharpness_laplacian"] == pytest.approx(0.25)
  # A smooth ramp is no detail: with the Hann window its crop edges add no HF energy.
  ramp = np.broadcast_to(np.linspace(-1, 1, 32)[None, None, :, None], (1, 32, 32, 1))
  assert metrics.high_frequency_energy(ramp, window="hann")[0] < 1e-3 * metrics.high_frequency_energy(
      ramp, window=None)[0]
  with pytest.raises(ValueError, match="window"):
    metrics.power_spectrum(x, window="kaiser")
