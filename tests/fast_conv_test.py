"""Tests that vaegan_jax.fast_conv computes exactly the XLA reference convs.

Every case compares the forward output and the gradients w.r.t. the input and
the kernel (via ``jax.vjp`` with a random cotangent) against
``layers.conv2d_xla`` / ``layers.conv2d_transpose_xla``, for both forms of
``fast_conv`` ('auto' and the all-matmul 'matmul').
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaegan_jax import layers
from vaegan_jax.cpu import fast_conv

FORMS = fast_conv.FORMS

# (H, C_in, C_out) per op kind; H is the input height (= width).
# Stride-2 convs of the 64x64 model (encoder, discriminator) and the 32x32
# model with 1 or 3 image channels.
STRIDE2 = [
    (64, 3, 64), (32, 64, 128), (16, 128, 256),  # 64x64 encoder.
    (64, 32, 128), (32, 128, 256), (16, 256, 256),  # 64x64 discriminator.
    (32, 1, 64), (32, 3, 64), (16, 64, 128), (8, 128, 256),  # 32x32 encoder.
    (32, 32, 128), (16, 128, 192), (8, 256, 256),  # 32x32 discriminator.
]
# Stride-1 convs: discriminator input convs and decoder output convs.
STRIDE1 = [
    (64, 3, 32), (64, 32, 3),
    (32, 1, 32), (32, 3, 32), (32, 32, 1), (32, 32, 3),
]
# Transposed convs: decoder, 64x64 and 32x32 models.
TRANSPOSED = [
    (8, 256, 256), (16, 256, 128), (32, 128, 32),
    (4, 256, 256), (8, 256, 128), (16, 128, 32),
]
# Small channel counts with the same shape logic; odd spatial sizes for the
# stride-2 crop; other odd kernel sizes.
SMALL = [
    # (kind, H, W, C_in, C_out, k)
    ("s1", 6, 7, 7, 2, 5), ("s1", 5, 5, 1, 1, 3),
    ("s2", 7, 9, 4, 3, 5), ("s2", 9, 8, 2, 3, 7),
    ("t", 3, 4, 7, 2, 5), ("t", 2, 2, 1, 1, 3), ("t", 3, 2, 2, 3, 7),
]


def _ops(kind):
  """(fast op, reference op) as functions of (x, kernel)."""
  if kind == "t":
    return fast_conv.conv2d_transpose, layers.conv2d_transpose_xla
  stride = int(kind[1])
  return (lambda x, k: fast_conv.conv2d(x, k, stride),
          lambda x, k: layers.conv2d_xla(x, k, stride))


def _inputs(kind, n, h, w, c_in, c_out, k, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, h, w, c_in))
  shape = (k, k, c_out, c_in) if kind == "t" else (k, k, c_in, c_out)
  kernel = rng.normal(size=shape) / np.sqrt(k * k * c_in)
  return jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)


def _vjp_all(op, x, kernel, seed=1):
  """(y, dx, dkernel) for a fixed random cotangent of y's shape."""
  y, vjp = jax.vjp(op, x, kernel)
  g = jax.random.normal(jax.random.PRNGKey(seed), y.shape, y.dtype)
  return (y, *vjp(g))


def _vjp_with(op, x, kernel, g):
  y, vjp = jax.vjp(op, x, kernel)
  return (y, *vjp(g))


def _assert_close(actual, expected, tol):
  """Elementwise closeness, relative to the magnitude of ``expected``."""
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  scale = float(np.max(np.abs(expected))) or 1.0
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _check(kind, x, kernel, tol=1e-4):
  """Checks both forms against the reference, in one jit (one compile)."""
  fast, ref = _ops(kind)

  @jax.jit
  def run(x, kernel):
    outs = {"ref": _vjp_all(ref, x, kernel)}
    for form in FORMS:
      with fast_conv.use_form(form):  # Read at trace time.
        outs[form] = _vjp_all(fast, x, kernel)
    return outs

  outs = run(x, kernel)
  for form in FORMS:
    for name, a, b in zip(("y", "dx", "dkernel"), outs[form], outs["ref"]):
      assert a.dtype == b.dtype, (form, name)
      try:
        _assert_close(a, b, tol)
      except AssertionError as e:
        raise AssertionError(f"form={form}, {name}") from e


@pytest.mark.parametrize("h,c_in,c_out", STRIDE2)
def test_conv2d_stride2_model_shapes(h, c_in, c_out):
  x, kernel = _inputs("s2", 2, h, h, c_in, c_out, 5)
  _check("s2", x, kernel)


@pytest.mark.parametrize("h,c_in,c_out", STRIDE1)
def test_conv2d_stride1_model_shapes(h, c_in, c_out):
  x, kernel = _inputs("s1", 2, h, h, c_in, c_out, 5)
  _check("s1", x, kernel)


@pytest.mark.parametrize("h,c_in,c_out", TRANSPOSED)
def test_conv2d_transpose_model_shapes(h, c_in, c_out):
  x, kernel = _inputs("t", 2, h, h, c_in, c_out, 5)
  _check("t", x, kernel)


@pytest.mark.parametrize("kind,h,w,c_in,c_out,k", SMALL)
def test_small_odd_shapes(kind, h, w, c_in, c_out, k):
  x, kernel = _inputs(kind, 3, h, w, c_in, c_out, k)
  _check(kind, x, kernel)


@pytest.mark.parametrize("impl", ["subpixel", "col2im"])
@pytest.mark.parametrize("c_in,c_out,k", [(3, 5, 5), (6, 2, 5), (2, 3, 3),
                                           (4, 4, 7)])
def test_transposed_conv_both_matmul_forms(c_in, c_out, k, impl):
  # The op picks one of the two per shape; check both on every shape.
  op = {"subpixel": fast_conv._conv_t_subpixel,
        "col2im": fast_conv._conv_t_col2im}[impl]
  x, kernel = _inputs("t", 2, 4, 5, c_in, c_out, k)
  _assert_close(jax.jit(op)(x, kernel),
                layers.conv2d_transpose_xla(x, kernel), 1e-5)


@pytest.mark.parametrize("c_in,c_out", [(2, 6), (6, 2)])
def test_stride1_both_matmul_forms(c_in, c_out):
  x, kernel = _inputs("s1", 2, 5, 6, c_in, c_out, 5)
  want = layers.conv2d_xla(x, kernel, 1)
  _assert_close(fast_conv._conv_im2col(x, kernel, 1), want, 1e-5)
  _assert_close(fast_conv._conv_s1_col2im(x, kernel), want, 1e-5)


@pytest.mark.parametrize("kind", ["s1", "s2", "t"])
def test_bfloat16(kind):
  x, kernel = _inputs(kind, 2, 8, 8, 16, 8, 5)
  x16, k16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  fast, ref = _ops(kind)

  @jax.jit
  def run(x, kernel):
    outs = {}
    for form in FORMS:
      with fast_conv.use_form(form):
        outs[form] = _vjp_all(fast, x, kernel)
    return outs

  outs = run(x16, k16)
  # Reference in float32 on the same bf16-rounded values and cotangent.
  g = jax.random.normal(jax.random.PRNGKey(1), outs["auto"][0].shape,
                        jnp.bfloat16)
  want = jax.jit(lambda x, k, g: _vjp_with(ref, x, k, g))(
      x16.astype(jnp.float32), k16.astype(jnp.float32), g.astype(jnp.float32))
  for form in FORMS:
    for a, b in zip(outs[form], want):
      assert a.dtype == jnp.bfloat16
      _assert_close(a, b, 2e-2)


def test_mixed_dtypes_keep_kernel_grad_dtype():
  x, kernel = _inputs("s2", 2, 8, 8, 4, 6, 5)
  x16 = x.astype(jnp.bfloat16)
  y, (dx, dk) = jax.value_and_grad(
      lambda x, k: jnp.sum(fast_conv.conv2d(x, k, 2)), argnums=(0, 1))(
          x16, kernel)
  assert y.dtype == jnp.bfloat16
  assert dx.dtype == jnp.bfloat16
  assert dk.dtype == jnp.float32


def _two_layer_loss(conv, conv_t, params, x):
  """Stride-2 conv -> tanh -> transposed conv -> stride-1 conv; scalar."""
  h = jnp.tanh(conv(x, params["k1"], 2))
  h = jax.nn.relu(conv_t(h, params["k2"]))
  y = conv(h, params["k3"], 1)
  return jnp.mean((y - x) ** 2)


def _two_layer_params(c=3, hidden=8):
  rng = np.random.default_rng(3)
  init = lambda *s: jnp.asarray(rng.normal(size=s) / np.sqrt(25 * s[-2]),
                                jnp.float32)
  return {"k1": init(5, 5, c, hidden), "k2": init(5, 5, hidden, hidden),
          "k3": init(5, 5, hidden, c)}


@pytest.mark.parametrize("form", FORMS)
def test_grad_of_two_layer_net(form):
  params = _two_layer_params()
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 8, 8, 3)),
                  jnp.float32)
  fast_loss = functools.partial(_two_layer_loss, fast_conv.conv2d,
                                fast_conv.conv2d_transpose)
  ref_loss = functools.partial(_two_layer_loss, layers.conv2d_xla,
                               lambda x, k: layers.conv2d_transpose_xla(x, k))
  with fast_conv.use_form(form):
    got = jax.jit(jax.value_and_grad(fast_loss, argnums=(0, 1)))(params, x)
  want = jax.jit(jax.value_and_grad(ref_loss, argnums=(0, 1)))(params, x)
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_second_order_grad(form):
  # Gradient-penalty style: grad w.r.t. params of |d loss / d x|^2.
  params = _two_layer_params(c=2, hidden=4)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 6, 2)),
                  jnp.float32)

  def penalty(conv, conv_t, params, x):
    dx = jax.grad(functools.partial(_two_layer_loss, conv, conv_t), 1)(
        params, x)
    return jnp.sum(dx ** 2)

  with fast_conv.use_form(form):
    got = jax.jit(jax.grad(functools.partial(
        penalty, fast_conv.conv2d, fast_conv.conv2d_transpose)))(params, x)
  want = jax.jit(jax.grad(functools.partial(
      penalty, layers.conv2d_xla, layers.conv2d_transpose_xla)))(params, x)
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-7)


def test_pmap():
  params = _two_layer_params()
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 8, 3)),
                  jnp.float32)
  n_dev = jax.local_device_count()
  loss = functools.partial(_two_layer_loss, fast_conv.conv2d,
                           fast_conv.conv2d_transpose)

  def step(params, x):
    return jax.lax.pmean(jax.grad(loss)(params, x), "batch")

  got = jax.pmap(step, axis_name="batch")(
      jax.tree.map(lambda p: jnp.stack([p] * n_dev), params),
      jnp.stack([x] * n_dev))
  want = jax.jit(jax.grad(functools.partial(
      _two_layer_loss, layers.conv2d_xla, layers.conv2d_transpose_xla)))(
          params, x)
  chex.assert_trees_all_close(jax.tree.map(lambda g: g[0], got), want,
                              rtol=1e-4, atol=1e-7)


def test_flax_layers_fast_matches_xla():
  # Same params, impl='fast' vs impl='xla', through layers.Conv/ConvTranspose.
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):
    impl: str

    @nn.compact
    def __call__(self, x):
      h = nn.relu(layers.Conv(8, strides=2, impl=self.impl)(x))
      h = nn.relu(layers.ConvTranspose(4, impl=self.impl)(h))
      return layers.Conv(1, impl=self.impl)(h)

  x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 8, 8, 1)),
                  jnp.float32)
  params = jax.jit(Net("xla").init)(jax.random.PRNGKey(0), x)

  def grads(impl):
    loss = lambda p: jnp.mean(Net(impl).apply(p, x) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  chex.assert_trees_all_close(grads("fast"), grads("xla"), rtol=1e-4,
                              atol=1e-7)


def test_bad_arguments():
  x, kernel = _inputs("s2", 1, 4, 4, 2, 3, 5)
  with pytest.raises(ValueError, match="stride"):
    fast_conv.conv2d(x, kernel, 3)
  with pytest.raises(ValueError, match="channels"):
    fast_conv.conv2d(x[..., :1], kernel, 1)
  with pytest.raises(ValueError, match="odd"):
    fast_conv.conv2d(x, kernel[:4, :4], 1)
  with pytest.raises(ValueError, match="form"):
    fast_conv.set_form("cudnn")
  assert fast_conv.set_form("auto") == "auto"


@pytest.mark.parametrize("kind", ["s1", "s2", "t"])
def test_batch_chunks_with_remainder(kind):
  # 2 full chunks of BATCH_CHUNK plus a partial one: outputs concatenate and
  # kernel gradients sum over chunks.
  n = 2 * fast_conv.BATCH_CHUNK + 3
  x, kernel = _inputs(kind, n, 6, 7, 4, 5, 5, seed=8)
  _check(kind, x, kernel)
