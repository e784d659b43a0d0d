"""Tests of vaegan_jax.sampling and vaegan_jax.runtime.image_grid (tiny 16x16x1 model)."""

import functools
import os
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.configs import tiny
from vaegan_jax import models
from vaegan_jax import sampling
from vaegan_jax import train_step
from vaegan_jax.runtime import image_grid

ATOL = 1e-5  # Different batch shapes may pick different XLA kernels.


def _config(**model_kw):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.model.update(model_kw)
  return c


def _images(seed, b, s=16, c=1):
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, (b, s, s, c)), jnp.float32)


@pytest.fixture(scope="module")
def trained():
  """(config, state, sampler) after two training steps on random images."""
  config = _config()
  state = train_step.create_train_state(config, jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(train_step.train_step, config=config, axis_name=None))
  for i in range(2):
    state, _ = step(state, {"image": _images(i, 8)})
  # Training moved the BN running averages away from their init (0 / 1), so
  # inference mode is really exercised.
  assert np.abs(np.asarray(state.batch_stats["encoder"]["bn0"]["mean"])).max() > 0
  return config, state, sampling.Sampler.from_state(config, state)


def _check_images(images, shape):
  images = np.asarray(images)
  assert images.shape == shape
  assert images.dtype == np.float32
  assert np.isfinite(images).all()
  assert images.min() >= -1.0 and images.max() <= 1.0


# --- sample / reconstruct / encode ------------------------------------------


def test_sample_shapes_range_and_seeds(trained):
  _, _, sampler = trained
  images, z = sampling.sample(sampler, jax.random.PRNGKey(1), 5)
  _check_images(images, (5, 16, 16, 1))
  assert z.shape == (5, 8)
  again, z_again = sampling.sample(sampler, jax.random.PRNGKey(1), 5)
  np.testing.assert_array_equal(np.asarray(images), np.asarray(again))
  np.testing.assert_array_equal(np.asarray(z), np.asarray(z_again))
  other, z_other = sampling.sample(sampler, jax.random.PRNGKey(2), 5)
  assert not np.allclose(z, z_other)
  assert np.abs(np.asarray(images) - np.asarray(other)).max() > 1e-4
  # Temperature scales the prior draw: same key, z scaled exactly.
  _, z_cold = sampling.sample(sampler, jax.random.PRNGKey(1), 5, temperature=0.5)
  np.testing.assert_allclose(z_cold, 0.5 * np.asarray(z), rtol=1e-6)
  # Decoding the returned z reproduces the images.
  np.testing.assert_allclose(sampler.decode(z), images, atol=ATOL)


def test_reconstruct(trained):
  _, _, sampler = trained
  x = _images(10, 6)
  recon, z = sampling.reconstruct(sampler, x)
  _check_images(recon, x.shape)
  assert z.shape == (6, 8)
  recon2, z2 = sampling.reconstruct(sampler, x)
  np.testing.assert_array_equal(np.asarray(recon), np.asarray(recon2))
  np.testing.assert_array_equal(np.asarray(z), np.asarray(z2))
  # Stochastic encoding: reproducible per key, differs across keys and from mu.
  key = jax.random.PRNGKey(3)
  _, za = sampling.reconstruct(sampler, x, use_mean=False, rng=key)
  _, zb = sampling.reconstruct(sampler, x, use_mean=False, rng=key)
  _, zc = sampling.reconstruct(sampler, x, use_mean=False, rng=jax.random.PRNGKey(4))
  np.testing.assert_array_equal(np.asarray(za), np.asarray(zb))
  assert not np.allclose(za, zc)
  assert not np.allclose(za, z)
  with pytest.raises(ValueError, match="rng"):
    sampler.encode(x, use_mean=False)


def test_encode_is_deterministic_and_batch_independent(trained):
  _, _, sampler = trained
  x = _images(20, 7)
  z = np.asarray(sampler.encode(x))
  np.testing.assert_array_equal(z, np.asarray(sampler.encode(x)))
  # BN in inference mode: a row does not depend on the rest of the batch.
  np.testing.assert_allclose(sampler.encode(x[:1]), z[:1], atol=ATOL)
  np.testing.assert_allclose(sampler.encode(x[::-1]), z[::-1], atol=ATOL)
  images = np.asarray(sampler.decode(z))
  np.testing.assert_allclose(sampler.decode(z[:1]), images[:1], atol=ATOL)
  # Chunking (with a zero-padded last chunk) changes nothing either.
  variables = sampler.variables
  chunked = sampling.Sampler(sampler.arch, {g: v["params"] for g, v in variables.items()},
                             {g: v["batch_stats"] for g, v in variables.items()},
                             chunk_size=3)
  np.testing.assert_allclose(chunked.encode(x), z, atol=ATOL)
  np.testing.assert_allclose(chunked.decode(z), images, atol=ATOL)
  with pytest.raises(ValueError, match="shape"):
    sampler.encode(_images(0, 2, s=8))
  with pytest.raises(ValueError, match="unconditional"):
    sampler.decode(z, y=np.zeros((7, 2)))


def test_from_replicated_state(trained):
  config, state, sampler = trained
  replicated = jax.tree.map(lambda a: jnp.stack([a, a]), state)
  s2 = sampling.Sampler.from_state(config, replicated)
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
  np.testing.assert_array_equal(np.asarray(s2.decode(z)), np.asarray(sampler.decode(z)))


# --- interpolation ----------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_endpoints(trained, method):
  _, _, sampler = trained
  k0, k1 = jax.random.split(jax.random.PRNGKey(5))
  z0 = jax.random.normal(k0, (2, 8))
  z1 = 1.5 * jax.random.normal(k1, (2, 8))
  images, path = sampling.interpolate(sampler, z0, z1, 5, method=method)
  _check_images(images, (2, 5, 16, 16, 1))
  assert path.shape == (2, 5, 8)
  np.testing.assert_array_equal(np.asarray(path[:, 0]), np.asarray(z0))
  np.testing.assert_array_equal(np.asarray(path[:, -1]), np.asarray(z1))
  np.testing.assert_allclose(images[:, 0], sampler.decode(z0), atol=ATOL)
  np.testing.assert_allclose(images[:, -1], sampler.decode(z1), atol=ATOL)
  # Frames in between are distinct from the endpoints.
  assert np.abs(np.asarray(images[:, 2] - images[:, 0])).max() > 1e-4
  if method == "linear":
    np.testing.assert_allclose(path[:, 2], 0.5 * (z0 + z1), rtol=1e-5, atol=1e-6)
  else:  # Norms stay (roughly) between the endpoints' norms.
    norms = np.linalg.norm(np.asarray(path), axis=-1)
    n0, n1 = norms[:, :1], norms[:, -1:]
    assert (norms >= 0.95 * np.minimum(n0, n1)).all()
    assert (norms <= 1.05 * np.maximum(n0, n1)).all()


def test_slerp_geometry():
  rng = np.random.RandomState(0)
  z0 = jnp.asarray(rng.randn(16, 64), jnp.float32)
  z1 = jnp.asarray(rng.randn(16, 64), jnp.float32)
  path = np.asarray(sampling.interpolation_path(z0, z1, 9, "slerp"))
  norms = np.linalg.norm(path, axis=-1)  # (16, 9)
  n0, n1 = np.linalg.norm(z0, axis=-1), np.linalg.norm(z1, axis=-1)
  lo, hi = np.minimum(n0, n1)[:, None], np.maximum(n0, n1)[:, None]
  # Stays on the prior's shell (the linear midpoint drops to ~|z|/sqrt(2)).
  assert (norms >= 0.97 * lo).all() and (norms <= 1.03 * hi).all()
  lin_mid = np.linalg.norm(
      np.asarray(sampling.interpolation_path(z0, z1, 9, "linear"))[:, 4], axis=-1)
  assert (lin_mid < 0.9 * lo[:, 0]).all()
  # Unit vectors: norm exactly 1 along the path, equal angular steps.
  u0 = z0 / jnp.linalg.norm(z0, axis=-1, keepdims=True)
  u1 = z1 / jnp.linalg.norm(z1, axis=-1, keepdims=True)
  up = np.asarray(sampling.interpolation_path(u0, u1, 9, "slerp"))
  np.testing.assert_allclose(np.linalg.norm(up, axis=-1), 1.0, atol=1e-5)
  steps = np.arccos(np.clip(np.sum(up[:, 1:] * up[:, :-1], -1), -1, 1))
  np.testing.assert_allclose(steps, steps[:, :1] * np.ones_like(steps), atol=1e-3)
  # Parallel and anti-parallel pairs (and a zero vector) fall back to linear.
  a = jnp.asarray([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  b = jnp.asarray([[2.0, 4.0, 6.0], [-1.0, -2.0, -3.0], [1.0, 0.0, 0.0]])
  got = np.asarray(sampling.interpolation_path(a, b, 5, "slerp"))
  want = np.asarray(sampling.interpolation_path(a, b, 5, "linear"))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, rtol=1e-6)


# --- attribute vectors --------------------------------------------------------


def _planted(z_dim=6, seed=0, noise=0.05, scale=1):
  """z = base + attr @ D + noise, with known directions D (A=3, Z).

  The attributes follow an exact factorial design with prevalences 1/2, 1/4
  and 3/4 (every combination appears exactly n * prod(p) times), so they are
  independent *in the sample* too: the mean difference of attribute k then
  equals D_k up to the averaged noise, with no O(1/sqrt(n)) leakage of the
  other directions through chance correlations. n = 3200 * scale.
  """
  rng = np.random.RandomState(seed)
  d = rng.randn(3, z_dim).astype(np.float32)
  base = rng.randn(z_dim).astype(np.float32) * 5.0  # Large offset: shift-invariance.
  p = np.array([0.5, 0.25, 0.75])
  rows = []
  for combo in np.ndindex(2, 2, 2):
    bits = np.array(combo, np.float32)
    count = int(round(3200 * scale * np.prod(np.where(bits == 1, p, 1 - p))))
    rows.append(np.repeat(bits[None], count, axis=0))
  attrs = np.concatenate(rows)[rng.permutation(3200 * scale)]
  z = base + attrs @ d + noise * rng.randn(len(attrs), z_dim).astype(np.float32)
  return z, attrs, d


def test_attribute_vectors_recover_planted_directions():
  z, attrs, d = _planted()
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # All attributes valid: no warning.
    av = sampling.attribute_vectors(z, attrs, names=["a", "b", "c"])
  assert av.vectors.shape == d.shape
  assert av.valid.all()
  np.testing.assert_array_equal(av.num_positive, attrs.sum(0))
  np.testing.assert_array_equal(av.num_negative, (1 - attrs).sum(0))
  np.testing.assert_array_equal(av.num_positive, [1600, 800, 2400])
  # Independent attributes: the mean difference is D plus O(noise/sqrt(n)).
  np.testing.assert_allclose(av.vectors, d, atol=0.01)
  # Exactly the mean-difference estimator, in float64.
  ref = np.stack([z[attrs[:, k] == 1].astype(np.float64).mean(0)
                  - z[attrs[:, k] == 0].astype(np.float64).mean(0) for k in range(3)])
  np.testing.assert_allclose(av.vectors, ref, atol=1e-5)
  # CelebA's raw {-1, 1} labels give the same vectors.
  av_pm = sampling.attribute_vectors(z, 2 * attrs - 1)
  np.testing.assert_allclose(av_pm.vectors, av.vectors, atol=1e-6)


def test_attribute_vectors_degenerate_attribute():
  z, attrs, _ = _planted()
  attrs[:, 1] = 0.0  # No positives.
  attrs[:, 2] = 1.0  # No negatives.
  with pytest.warns(RuntimeWarning, match=r"b \(0\+/3200-\).*c \(3200\+/0-\)"):
    av = sampling.attribute_vectors(z, attrs, names=["a", "b", "c"])
  np.testing.assert_array_equal(av.valid, [True, False, False])
  assert np.isfinite(np.asarray(av.vectors)).all()
  np.testing.assert_array_equal(np.asarray(av.vectors[1:]), 0.0)
  assert np.abs(np.asarray(av.vectors[0])).max() > 0.1


def test_apply_attribute_arithmetic():
  vectors = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
  z = jnp.asarray([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(sampling.apply_attribute(z, vectors, 1),
                             [[1.0, 3.0, 1.0], [0.0, 2.0, 0.0]])
  np.testing.assert_allclose(sampling.apply_attribute(z, vectors, 2, scale=-0.5),
                             [[1.0, 1.0, -0.5], [0.0, 0.0, -1.5]])
  np.testing.assert_allclose(sampling.apply_attribute(z[0], vectors, [0, 2], scale=[2.0, 1.0]),
                             [3.0, 1.0, 4.0])
  av = sampling.AttributeVectors(vectors, np.ones(3, bool), np.ones(3), np.ones(3))
  np.testing.assert_allclose(sampling.apply_attribute(z, av, (0, 1)),
                             [[2.0, 3.0, 1.0], [1.0, 2.0, 0.0]])
  with pytest.raises(ValueError, match="out of range"):
    sampling.apply_attribute(z, vectors, 3)


def test_encode_dataset_identity_encoder_recovers_planted_vectors():
  """Plumbing of encode_dataset with an encoder that reads z off the pixels."""
  z, attrs, d = _planted(z_dim=6)
  n = len(z)
  images = np.zeros((n, 4, 4, 1), np.float32)
  images.reshape(n, -1)[:, :6] = z
  stub = types.SimpleNamespace(
      arch=types.SimpleNamespace(num_attributes=0),
      encode=lambda x, y, use_mean, rng: np.asarray(x).reshape(len(x), -1)[:, :6])
  pulled = []

  def batches():  # Infinite and wrapping around, like batch_iterator.
    i = 0
    while True:
      pulled.append(i)
      s = slice(i * 64 % n, i * 64 % n + 64)
      yield {"image": images[s], "attributes": attrs[s], "label": np.zeros(64)}
      i += 1

  got_z, got_a = sampling.encode_dataset(stub, batches(), 500)
  assert got_z.shape == (500, 6) and got_a.shape == (500, 3)
  assert len(pulled) == 8  # ceil(500 / 64); the 9th batch is never pulled.
  np.testing.assert_array_equal(got_z, z[:500])
  np.testing.assert_array_equal(got_a, attrs[:500])
  pulled.clear()
  got_z, got_a = sampling.encode_dataset(stub, batches(), n)
  assert len(pulled) == n // 64
  av = sampling.attribute_vectors(got_z, got_a)
  np.testing.assert_allclose(av.vectors, d, atol=0.01)


def test_encode_dataset_real_model(trained):
  _, _, sampler = trained
  x = np.asarray(_images(30, 10))
  a = (np.random.RandomState(0).rand(10, 2) > 0.5).astype(np.float32)
  batches = [{"image": x[:4], "attributes": a[:4]}, {"image": x[4:8], "attributes": a[4:8]},
             {"image": x[8:], "attributes": a[8:]}]
  z, attrs = sampling.encode_dataset(sampler, iter(batches), 6)
  np.testing.assert_allclose(z, sampler.encode(x[:6]), atol=ATOL)
  np.testing.assert_array_equal(attrs, a[:6])
  z_plain, none = sampling.encode_dataset(sampler, [x[:3], x[3:]], 100)
  assert none is None and z_plain.shape == (10, 8)


def test_dataset_batches_digits(trained):
  config, _, sampler = trained
  batches = list(sampling.dataset_batches(config.data, "test", 64, 150, seed=0))
  assert [len(b["image"]) for b in batches] == [64, 64, 22]
  assert batches[0]["image"].shape[1:] == (16, 16, 1)
  z, attrs = sampling.encode_dataset(sampler, batches, 150)
  assert z.shape == (150, 8) and attrs is None and np.isfinite(z).all()


def test_paper_attribute_indices():
  assert len(sampling.PAPER_ATTRIBUTES) == 18
  names = ["5_o_Clock_Shadow"] + list(reversed(sampling.PAPER_ATTRIBUTES))
  idx = sampling.paper_attribute_indices(names)
  assert [names[i] for i in idx] == list(sampling.PAPER_ATTRIBUTES)
  with pytest.raises(ValueError, match="Bald"):
    sampling.paper_attribute_indices(names[2:])


# --- conditional model --------------------------------------------------------


def test_conditional_model_needs_y():
  config = _config(num_attributes=3)
  arch = models.Architecture.from_config(config.model)
  # Random weights of the right shapes: compiling the real initializers (RNG
  # heavy) costs far more on a loaded CPU than everything tested here.
  shapes = jax.eval_shape(
      lambda k: models.init_variables(arch, k, ("encoder", "decoder")), jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  fill = lambda path, leaf: (
      np.ones(leaf.shape, np.float32) if path[-1].key == "var" else
      np.zeros(leaf.shape, np.float32) if path[-1].key == "mean" else
      rng.normal(0, 0.2, leaf.shape).astype(np.float32))
  v = jax.tree_util.tree_map_with_path(fill, shapes)
  sampler = sampling.Sampler(config, {g: v[g]["params"] for g in v},
                             {g: v[g]["batch_stats"] for g in v})
  y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
  images, z = sampling.sample(sampler, jax.random.PRNGKey(0), 4, y=y)
  _check_images(images, (4, 16, 16, 1))
  # y conditions the decoder: same z, different y -> different images.
  other = sampler.decode(z, y[::-1])
  assert np.abs(np.asarray(other - images)).max() > 1e-5
  # A single (A,) attribute vector is broadcast; (P, A) applies per path.
  # (2 paths x 2 frames: the batch shape of 4 compiled above.)
  frames, _ = sampling.interpolate(sampler, z[:2], z[2:], 2, y=y[:2])
  np.testing.assert_allclose(frames[:, 1], sampler.decode(z[2:], y[:2]), atol=ATOL)
  np.testing.assert_allclose(frames[:, 0], sampler.decode(z[:2], y[:2]), atol=ATOL)
  zz = sampler.encode(images, y[0])
  assert zz.shape == (4, 8)
  with pytest.raises(ValueError, match="conditional"):
    sampler.decode(z)


# --- image grid ---------------------------------------------------------------


def test_make_grid_shape_and_values():
  x = np.full((10, 16, 16, 1), -1.0, np.float32)
  x[3] = 1.0
  grid = image_grid.make_grid(x, 4, padding=2)
  assert grid.dtype == np.uint8
  assert grid.shape == (3 * 18 + 2, 4 * 18 + 2, 1)
  tile = lambda i: grid[2 + (i // 4) * 18:2 + (i // 4) * 18 + 16, 2 + (i % 4) * 18:2 + (i % 4) * 18 + 16]
  assert (tile(0) == 0).all() and (tile(3) == 255).all() and (tile(9) == 0).all()
  assert (grid[0] == 255).all()  # Padding.
  assert (tile(10) == 255).all()  # Unused trailing cell.
  mid = image_grid.make_grid(np.zeros((1, 2, 2, 3)), 1, padding=1)
  assert mid.shape == (4, 4, 3) and (mid[1:3, 1:3] == 128).all()  # 0 -> 127.5 rounds to 128.
  clipped = image_grid.make_grid(np.array([[[[5.0]], [[-5.0]]]]).reshape(1, 1, 2, 1), 1)
  assert clipped[2, 2, 0] == 255 and clipped[2, 3, 0] == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_save_png_round_trip(tmp_path, channels):
  x = np.random.RandomState(0).uniform(-1, 1, (5, 8, 8, channels))
  grid = image_grid.make_grid(x, 3, padding=1)
  path = tmp_path / "sub" / "grid.png"
  image_grid.save_png(str(path), grid)
  image_grid.save_png(str(path), grid)  # Overwrites in place.
  assert os.listdir(path.parent) == ["grid.png"]  # No temp file left behind.
  with Image.open(path) as img:
    assert img.mode == ("L" if channels == 1 else "RGB")
    back = np.asarray(img)
  np.testing.assert_array_equal(back, grid[..., 0] if channels == 1 else grid)
