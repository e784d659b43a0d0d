"""The Flax FID Inception-v3 (vaegan_jax/evaluation/inception.py) and its converter.

Everywhere (no torch): the resize weights against ATen's formula written out
per pixel, output shapes, the parameter count of pytorch-fid's network,
batching with a padded last batch, the npz key scheme and round trip, and the
one-line errors.

With torch and pytorch-fid installed (skipped where they are not; ``.ci/run``
installs them after the default suite and runs this file with
``VAEGAN_REQUIRE_TORCH=1``, which turns the skip into a failure), the proof of
the port: pytorch-fid's own FID Inception module with random weights
and calibrated, randomised BN statistics, saved as a .pth, converted by
``experiments/convert_inception_weights.py``, loaded in Flax: pool3 features
and logits agree with pytorch-fid's ``InceptionV3`` (resize and
normalisation included) on 32x32x1, 64x64x3 and 320x320x3 images, and the
resize alone agrees with ``F.interpolate``. To run it:

  python -m venv --system-site-packages /work/venv_torch
  /work/venv_torch/bin/pip install torch torchvision pytorch-fid  # e.g. 2.14.1 / 0.29.1 / 0.3.0
  /work/venv_torch/bin/python -m pytest tests/inception_test.py -q
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import convert_inception_weights as converter
from vaegan_jax.evaluation import inception as inc

# Computed once with torch 2.14.1 / torchvision 0.29.1 / pytorch-fid 0.3.0:
# sum(p.numel() for p in pytorch_fid.inception.fid_inception_v3().parameters()),
# fc (2048 x 1008 + 1008 = 2,065,392) included; pytorch-fid's InceptionV3
# wrapper (no fc) has 21,785,568. BN running_mean + running_var: 34,432.
# 472 arrays = 566 state_dict entries - 94 num_batches_tracked.
TORCH_NUM_PARAMS = 23_850_960
TORCH_NUM_FC_PARAMS = 2048 * 1008 + 1008
TORCH_NUM_BN_STATS = 34_432
NUM_ARRAYS = 472


@pytest.fixture(scope="module")
def variables():
  return inc.random_variables(seed=0)


def _flat(variables):
  return inc._flat(variables)  # pylint: disable=protected-access


def _torch_layout(variables):
  """The inverse of convert_state_dict: Flax variables -> a torch-named state_dict."""
  sd = {}
  for k, a in _flat(variables).items():
    coll, *path, leaf = k.split("/")
    name = ".".join(path)
    if name == "fc":
      sd[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = a.T if leaf == "kernel" else a
    elif leaf == "kernel":
      sd[f"{name}.weight"] = a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    else:
      torch_leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                    "var": "running_var"}[leaf]
      sd[f"{name}.{torch_leaf}"] = a
      if leaf == "var":
        sd[f"{name}.num_batches_tracked"] = np.asarray(0)
  return sd


# ----------------------------------------------------------------------------
# Without torch.


def _aten_linear_weights(in_size, out_size):
  """ATen's upsample_bilinear2d (align_corners=False) index/weight rule, per pixel."""
  m = np.zeros((out_size, in_size))
  scale = in_size / out_size
  for i in range(out_size):
    src = max(scale * (i + 0.5) - 0.5, 0.0)
    i0 = int(np.floor(src))
    i1 = i0 + 1 if i0 < in_size - 1 else i0
    lam = src - i0
    m[i, i0] += 1 - lam
    m[i, i1] += lam
  return m


@pytest.mark.parametrize("in_size", [1, 7, 32, 64, 299, 320, 512])
def test_resize_matrix_is_atens_rule(in_size):
  m = inc.resize_matrix(in_size, 299)
  assert m.shape == (299, in_size) and m.dtype == np.float32
  # float32 source coordinates vs float64 here: up to ~3e-5 apart at 320 -> 299.
  np.testing.assert_allclose(m, _aten_linear_weights(in_size, 299), atol=1e-4)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
  assert ((m != 0).sum(axis=1) <= 2).all()  # No antialiasing: 2 taps when shrinking too.
  if in_size == 299:
    np.testing.assert_array_equal(m, np.eye(299))


def test_preprocess_maps_like_pytorch_fid():
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 24, 1)).astype(np.float32)
  y = inc.preprocess(jnp.asarray(x))
  assert y.shape == (2, 299, 299, 3)
  # Gray repeated to RGB; constant images stay constant (rows of weights sum to 1).
  np.testing.assert_array_equal(y, inc.preprocess(jnp.repeat(jnp.asarray(x), 3, axis=-1)))
  c = inc.preprocess(jnp.full((1, 40, 40, 3), 0.5))
  np.testing.assert_allclose(c, 0.5, atol=1e-6)
  with pytest.raises(ValueError, match="1 or 3"):
    inc.preprocess(jnp.zeros((1, 8, 8, 2)))


def test_shapes_and_parameter_count():
  model = inc.FIDInceptionV3()
  v = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))
  for shape in [(2, 32, 32, 1), (2, 64, 64, 3), (2, 320, 320, 3)]:
    out = jax.eval_shape(model.apply, v, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out["pool3"].shape == (2, 2048) and out["pool3"].dtype == jnp.float32
    assert out["logits"].shape == (2, 1008)
  shapes = inc.variable_shapes()
  assert len(shapes) == NUM_ARRAYS
  assert inc.num_params() == TORCH_NUM_PARAMS
  assert int(np.prod(shapes["params/fc/kernel"])) + 1008 == TORCH_NUM_FC_PARAMS
  assert sum(int(np.prod(s)) for k, s in shapes.items()
             if k.startswith("batch_stats/")) == TORCH_NUM_BN_STATS
  # Spot checks of the layout: HWIO kernels, torch's module names.
  assert shapes["params/Conv2d_1a_3x3/conv/kernel"] == (3, 3, 3, 32)
  assert shapes["params/Mixed_6b/branch7x7_2/conv/kernel"] == (1, 7, 128, 128)
  assert shapes["params/Mixed_7c/branch3x3dbl_3b/conv/kernel"] == (3, 1, 384, 384)
  assert shapes["batch_stats/Mixed_7c/branch_pool/bn/var"] == (192,)


def test_features_batched_with_padding(variables):
  # Random He-scaled weights: features of O(1), finite. batch_size=2 and 3
  # images: the last batch is padded, one executable serves all three calls.
  net = inc.InceptionFeatures(variables, batch_size=2)
  x = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)
  f, logits = net.features_and_logits(x)
  assert f.shape == (3, 2048) and f.dtype == np.float32 and logits.shape == (3, 1008)
  assert np.isfinite(f).all() and f.std() > 0.1 and (f >= 0).all()  # Mean of ReLUs.
  # The same images in another order and batch: the same rows (no leak from padding).
  g = net(x[[2, 1]])
  np.testing.assert_allclose(g, f[[2, 1]], rtol=1e-5, atol=1e-5 * np.abs(f).max())
  assert net.features(x[:0]).shape == (0, 2048)
  assert net.name == "inception_v3_fid" and net.dim == 2048
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    net(np.zeros((1, 8, 8, 3), np.uint8))


def test_features_64x64x3(variables):
  net = inc.InceptionFeatures(variables, batch_size=2)
  x = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  f = net(x)
  assert f.shape == (2, 2048) and np.isfinite(f).all()
  assert np.abs(f[0] - f[1]).max() > 1e-3  # Different images, different features.


def test_npz_round_trip_and_errors(variables, tmp_path):
  path = str(tmp_path / "w.npz")
  inc.save_npz(variables, path, meta={"source_sha256": "abc"})
  loaded = inc.load_npz(path)
  a, b = _flat(variables), _flat(loaded)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert inc.read_meta(path) == {"source_sha256": "abc"}
  net = inc.InceptionFeatures.from_npz(path)
  assert net.meta == {"source_sha256": "abc"}

  # Wrong shape (a 1000-class fc): one line naming the key and the fix.
  bad = dict(a)
  bad["params/fc/kernel"] = np.zeros((2048, 1000), np.float32)
  bad["params/fc/bias"] = np.zeros((1000,), np.float32)
  bad_path = str(tmp_path / "bad.npz")
  np.savez(bad_path, **bad)
  with pytest.raises(inc.WeightsError) as e:
    inc.load_npz(bad_path)
  msg = str(e.value)
  assert "\n" not in msg and "params/fc" in msg and "convert_inception_weights" in msg
  # A missing key, a missing file, a file that is no npz.
  del bad["params/fc/kernel"]
  np.savez(bad_path, **bad)
  with pytest.raises(inc.WeightsError, match="missing.*convert_inception_weights"):
    inc.load_npz(bad_path)
  with pytest.raises(inc.WeightsError, match="No Inception weights.*convert_inception_weights"):
    inc.load_npz(str(tmp_path / "none.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(inc.WeightsError, match="not a readable .npz") as e:
    inc.load_npz(str(tmp_path / "junk.npz"))
  assert "\n" not in str(e.value)


def test_convert_state_dict_layout(variables):
  sd = _torch_layout(variables)
  assert len(sd) == 566  # As pytorch-fid's state_dict.
  assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  assert sd["fc.weight"].shape == (1008, 2048)
  out = inc.convert_state_dict(sd)
  want = _flat(variables)
  assert out.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(out[k], want[k])
  # torchvision's ImageNet Inception (AuxLogits, 1000 classes) is refused by name.
  aux = dict(sd, **{"AuxLogits.fc.weight": np.zeros((1000, 768))})
  with pytest.raises(inc.WeightsError, match="AuxLogits.*pt_inception"):
    inc.convert_state_dict(aux)
  short = dict(sd)
  del short["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(inc.WeightsError, match="batch_stats/Mixed_7c/branch_pool/bn/var"):
    inc.convert_state_dict(short)


def test_converter_errors(tmp_path, monkeypatch):
  with pytest.raises(converter.ConversionError, match="No file .*pt_inception.*--pth"):
    converter.convert(str(tmp_path / "missing.pth"), str(tmp_path / "o.npz"))
  pth = tmp_path / "w.pth"
  pth.write_bytes(b"whatever")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(converter.ConversionError, match="pip install torch"):
    converter.convert(str(pth), str(tmp_path / "o.npz"))
  # The binary: exit 1, one line on stderr.
  r = subprocess.run([sys.executable, "-m", "experiments.convert_inception_weights",
                      f"--pth={tmp_path / 'missing.pth'}", f"--out={tmp_path / 'o.npz'}"],
                     capture_output=True, text=True, timeout=120,
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert r.returncode == 1, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "--pth" in lines[0], r.stderr


# ----------------------------------------------------------------------------
# Against pytorch-fid (needs torch, torchvision and pytorch-fid).


@pytest.fixture(scope="module")
def torch_fid(tmp_path_factory):
  """(pytorch-fid InceptionV3 with random weights, its Inception3, .npz path)."""
  if os.environ.get("VAEGAN_REQUIRE_TORCH") == "1":  # CI: the claim must be proven, not skipped
    import torch  # pylint: disable=g-import-not-at-top
    import pytorch_fid.inception as pfi  # pylint: disable=g-import-not-at-top
  else:
    torch = pytest.importorskip("torch")
    pfi = pytest.importorskip("pytorch_fid.inception")
  torch.manual_seed(0)
  # The FID blocks only change forward(), so torchvision's 1008-class
  # Inception3 without AuxLogits has exactly their state_dict: build the net
  # as pytorch-fid does, with the "download" returning these random weights.
  template = pfi._inception_v3(  # pylint: disable=protected-access
      num_classes=1008, aux_logits=False, weights=None)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: template.state_dict())
    net = pfi.fid_inception_v3()
  # BN: random scales and biases, then statistics calibrated on a batch like
  # the test's inputs (so activations stay O(1) through 94 layers) and
  # randomised a little: every part of BN is exercised.
  g = torch.Generator().manual_seed(1)
  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
      m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
      m.reset_running_stats()
      m.momentum = None  # Cumulative average: after one batch, that batch's statistics.
    calib = [torch.nn.functional.interpolate(torch.rand(2, 3, s, s, generator=g),
                                             size=(299, 299), mode="bilinear",
                                             align_corners=False) for s in (32, 64, 320)]
    net.train()
    net(torch.cat(calib) * 2 - 1)
    for m in bns:
      m.running_mean += 0.1 * m.running_var.sqrt() * torch.randn(m.num_features, generator=g)
      m.running_var *= 0.9 + 0.2 * torch.rand(m.num_features, generator=g)
  net.eval()
  d = tmp_path_factory.mktemp("fid")
  pth, npz = str(d / "random_fid_inception.pth"), str(d / "random_fid_inception.npz")
  torch.save(net.state_dict(), pth)
  info = converter.convert(pth, npz)
  assert info["num_arrays"] == NUM_ARRAYS and info["num_params"] == TORCH_NUM_PARAMS
  assert not info["expected_file"]  # Random weights: not pytorch-fid's SHA-256.
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: net.state_dict())
    model = pfi.InceptionV3([pfi.InceptionV3.DEFAULT_BLOCK_INDEX]).eval()
  assert model.resize_input and model.normalize_input
  return torch, model, net, npz


@pytest.mark.torch
def test_torch_parameter_count(torch_fid):
  _, model, net, _ = torch_fid
  assert sum(p.numel() for p in net.parameters()) == TORCH_NUM_PARAMS
  assert sum(p.numel() for p in model.parameters()) == TORCH_NUM_PARAMS - TORCH_NUM_FC_PARAMS
  assert sum(b.numel() for n, b in net.named_buffers() if "running" in n) == TORCH_NUM_BN_STATS


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 64, 64, 3), (2, 320, 320, 3),
                                   (1, 512, 512, 3), (2, 40, 100, 3), (1, 1, 7, 1)])
def test_resize_matches_torch(torch_fid, shape):
  torch = torch_fid[0]
  x = np.random.default_rng(3).uniform(0, 1, shape).astype(np.float32)
  t = torch.nn.functional.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
      align_corners=False).permute(0, 2, 3, 1).numpy()
  ours = np.asarray(inc.resize_bilinear(jnp.asarray(x)))
  np.testing.assert_allclose(ours, t, rtol=0, atol=3e-7)  # ~1 float32 ulp of values <= 1.


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 64, 64, 3), (2, 320, 320, 3)])
def test_matches_pytorch_fid(torch_fid, shape):
  torch, model, net, npz = torch_fid
  x = np.random.default_rng(4).uniform(-1, 1, shape).astype(np.float32)  # Ours: [-1, 1].
  xt = torch.from_numpy((x + 1) / 2).permute(0, 3, 1, 2)  # pytorch-fid's: [0, 1], NCHW.
  if shape[-1] == 1:
    xt = xt.repeat(1, 3, 1, 1)
  with torch.no_grad():
    want = model(xt)[0][:, :, 0, 0]
    want_logits = net.fc(want).numpy()
    want = want.numpy()
  got, got_logits = inc.InceptionFeatures.from_npz(npz, batch_size=2).features_and_logits(x)
  scale = np.abs(want).max()
  err = np.abs(got - want).max() / scale
  lerr = np.abs(got_logits - want_logits).max() / np.abs(want_logits).max()
  print(f"\n{shape}: pool3 scale {scale:.3g}, max|diff| {err * scale:.3g} "
        f"({err:.2e} of scale); logits max|diff| / scale {lerr:.2e}")
  # A meaningful comparison: O(1) features like the real network's, mostly > 0.
  assert 1 < scale < 100 and (want > 0).mean() > 0.5
  # float32 through 94 conv+BN layers with other conv algorithms: measured up
  # to 3.5e-5 of the scale (pytorch-fid in float32 is 1e-4 to 7e-4 of the scale
  # from itself in float64 on these inputs); the bound is 1e-4.
  assert err < 1e-4, err
  assert lerr < 1e-4, lerr
