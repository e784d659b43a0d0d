"""Shapes, dtypes and layer structure of the three networks."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegan_jax import models

# Jitted as train_step.create_train_state does: op by op, init takes 5-25 s on CPU.
_init_variables = jax.jit(models.init_variables, static_argnums=(0, 2))


def _shapes(arch, b=2):
  nets = models.Networks.create(arch)
  v = jax.eval_shape(lambda: models.init_variables(arch, jax.random.PRNGKey(0),
                                                   ("encoder", "decoder", "discriminator")))
  s = arch.image_size
  x = jax.ShapeDtypeStruct((b, s, s, arch.channels), jnp.float32)
  z = jax.ShapeDtypeStruct((b, arch.z_dim), jnp.float32)
  run = lambda net, var, *a, **kw: jax.eval_shape(
      lambda var, *a: net.apply(var, *a, train=False, **kw), var, *a)
  return (v, run(nets.encoder, v["encoder"], x), run(nets.decoder, v["decoder"], z),
          run(nets.discriminator, v["discriminator"], x))


@pytest.mark.parametrize("arch,dis_l", [
    (models.Architecture(), (8, 8, 256)),  # the paper's 64x64 CelebA model
    (models.Architecture.small32(), (4, 4, 256)),  # the authors' 32x32 variant
    (models.Architecture.small32(channels=1, z_dim=32), (4, 4, 256)),
])
def test_shapes_and_dtypes(arch, dis_l):
  v, (mu, logvar), x_t, (logit, feats) = _shapes(arch)
  s, c = arch.image_size, arch.channels
  assert mu.shape == logvar.shape == (2, arch.z_dim)
  assert x_t.shape == (2, s, s, c)
  assert logit.shape == (2,)
  assert feats.shape == (2,) + dis_l == (2,) + arch.dis_l_shape
  for a in (mu, logvar, x_t, logit, feats):
    assert a.dtype == jnp.float32
  for p in jax.tree.leaves(v):
    assert p.dtype == jnp.float32


def test_paper_architecture_layers():
  v, *_ = _shapes(models.Architecture())
  flat = {"/".join(k): x.shape for g in v for k, x in
          flax.traverse_util.flatten_dict(v[g]["params"], ).items() for k in [(g,) + k]}
  # Encoder: 5x5 stride-2 convs 64/128/256 without bias, dense 2048, heads 128.
  assert flat["encoder/conv0/kernel"] == (5, 5, 3, 64)
  assert flat["encoder/conv2/kernel"] == (5, 5, 128, 256)
  assert "encoder/conv0/bias" not in flat
  assert flat["encoder/dense/kernel"] == (8 * 8 * 256, 2048)
  assert flat["encoder/mu_head/kernel"] == (2048, 128)
  assert flat["encoder/logvar_head/bias"] == (128,)
  # Decoder: dense 8*8*256, convT 256/128/32 (kernels (k,k,out,in)), conv 3 with bias.
  assert flat["decoder/dense/kernel"] == (128, 8 * 8 * 256)
  assert flat["decoder/convT0/kernel"] == (5, 5, 256, 256)
  assert flat["decoder/convT2/kernel"] == (5, 5, 32, 128)
  assert flat["decoder/out_conv/kernel"] == (5, 5, 32, 3)
  assert flat["decoder/out_conv/bias"] == (3,)
  # Discriminator: conv 32 (bias, no BN), convs 128/256/256, dense 512, logit.
  assert flat["discriminator/conv0/bias"] == (32,)
  assert "discriminator/bn0/scale" not in flat
  assert flat["discriminator/conv3/kernel"] == (5, 5, 256, 256)
  assert flat["discriminator/dense/kernel"] == (8 * 8 * 256, 512)
  assert flat["discriminator/logit_head/kernel"] == (512, 1)


def test_dis_l_is_fourth_conv_before_bn():
  arch = models.Architecture.small32(channels=1, z_dim=8, dis_widths=(8, 8, 8), dis_first=4)
  nets = models.Networks.create(arch)
  var = _init_variables(arch, jax.random.PRNGKey(1), ("discriminator",))["discriminator"]
  x = jax.random.uniform(jax.random.PRNGKey(2), (3, 32, 32, 1), minval=-1, maxval=1)
  feats = nets.discriminator.apply(var, x, train=False, features_only=True)
  # Recompute by hand from the raw ops.
  from vaegan_jax import layers
  p = var["params"]
  h = jax.nn.relu(layers.conv2d_xla(x, p["conv0"]["kernel"], 1) + p["conv0"]["bias"])
  for i in (1, 2):
    h = layers.conv2d_xla(h, p[f"conv{i}"]["kernel"], 2)
    bs, sc = var["batch_stats"][f"bn{i}"], p[f"bn{i}"]
    h = (h - bs["mean"]) / jnp.sqrt(bs["var"] + arch.bn_eps_conv) * sc["scale"] + sc["bias"]
    h = jax.nn.relu(h)
  expected = layers.conv2d_xla(h, p["conv3"]["kernel"], 2)
  np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
  # The features are not ReLU'd (negative values survive).
  assert float(jnp.min(feats)) < 0


def test_conditional_networks_take_attributes():
  arch = models.Architecture.small32(channels=3, z_dim=8, num_attributes=5)
  nets = models.Networks.create(arch)
  v = _init_variables(arch, jax.random.PRNGKey(0), ("encoder", "decoder", "discriminator"))
  x = jnp.zeros((2, 32, 32, 3))
  y = jnp.array([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]], jnp.float32)
  @jax.jit
  def forward(v, x, y):
    mu, _ = nets.encoder.apply(v["encoder"], x, y, train=False)
    xt = nets.decoder.apply(v["decoder"], mu, y, train=False)
    logit, _ = nets.discriminator.apply(v["discriminator"], xt, y, train=False)
    return xt, logit
  xt, logit = forward(v, x, y)
  assert xt.shape == (2, 32, 32, 3) and logit.shape == (2,)
  assert v["encoder"]["params"]["conv0"]["kernel"].shape == (5, 5, 3 + 5, 64)


def test_bad_geometry_is_one_clear_error():
  with pytest.raises(ValueError, match="image_size=36 must be divisible by"):
    models.Architecture(image_size=36).validate()
  with pytest.raises(ValueError, match="Unknown model config field"):
    models.Architecture.from_config({"image_sise": 64})
