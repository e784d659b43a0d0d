"""The FID Inception-v3 in Flax: pytorch-fid's network, layer for layer.

Which network. FID (Heusel et al. 2017) is defined by the features of one
particular network: the TensorFlow Inception-v3 graph ``inception-2015-12-05``
that the original FID code (TTUR) loads, its 2048-d ``pool_3`` output.
pytorch-fid (``pytorch_fid/inception.py``, ``InceptionV3`` with
``use_fid_inception=True``) reimplements that graph as torchvision's
Inception-v3 with four patched blocks, and ships its weights ported from TF as
``pt_inception-2015-12-05-6726825d.pth``. ``FIDInceptionV3`` below is that
network ported to Flax linen (NHWC), in inference mode:

  * ``BasicConv2d``: conv (no bias, torch's explicit padding) -> BatchNorm with
    the running statistics, eps 1e-3 -> ReLU;
  * the stem ``Conv2d_1a_3x3`` ... ``Conv2d_4a_3x3`` with two 3x3 stride-2
    max pools without padding (299 -> 149 -> 147 -> 147 -> 73 -> 73 -> 71 -> 35);
  * ``Mixed_5b/c/d`` = FIDInceptionA, ``Mixed_6b/c/d/e`` = FIDInceptionC and
    ``Mixed_7b`` = FIDInceptionE_1: their pool branch is a 3x3 stride-1 average
    pool with padding 1 that does not count the padding (TF's 'SAME' average,
    torch ``count_include_pad=False``); ``Mixed_7c`` = FIDInceptionE_2 takes a
    3x3 stride-1 max pool (padding 1) there instead, as the TF graph does;
  * ``Mixed_6a`` / ``Mixed_7a``: torchvision's InceptionB / InceptionD
    (stride-2 convs and a 3x3 stride-2 max pool, no padding);
  * the mean over the remaining 8x8 positions: ``pool3`` (N, 2048), the FID
    features; ``fc`` (2048 -> 1008, with bias) gives the ``logits`` (N, 1008)
    for an Inception score. (OpenAI's original Inception-score code multiplies
    pool3 by the fc weight only, without the bias: ``logits - params['fc']
    ['bias']`` recovers that, and ``features.inception_features`` does so.)

Input convention. Images are NHWC floats in [-1, 1] (this project's
convention), any spatial size, 1 or 3 channels (1 is repeated to 3).
pytorch-fid takes [0, 1] images, resizes them to 299x299 with
``F.interpolate(mode='bilinear', align_corners=False)`` (no antialiasing, also
when shrinking) and maps them to [-1, 1] with ``2 x - 1``. ``preprocess`` does
exactly that to (x + 1) / 2. The resize is ``resize_bilinear``: torch's
interpolation weights written as two (299, H) and (299, W) matrices, so it
matches ``F.interpolate`` for upsampling (32 -> 299) and for downsampling
(512 -> 299) alike, edges included (``tests/inception_test.py`` compares them).

Weights. Nothing is downloaded here. Users supply pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` (a state_dict with torchvision's
Inception3 names) and convert it once, with torch, to an ``.npz`` that this
module loads without torch:

  pip install torch
  python -m experiments.convert_inception_weights \
      --pth=pt_inception-2015-12-05-6726825d.pth --out=fid_inception.npz

The ``.npz`` keys are the Flax variable paths joined by '/', module names being
torch's, e.g. (torch name -> npz key, array layout):

  Mixed_5b.branch1x1.conv.weight     -> params/Mixed_5b/branch1x1/conv/kernel
                                        (O, I, kh, kw) -> (kh, kw, I, O)
  Mixed_5b.branch1x1.bn.weight/.bias -> params/Mixed_5b/branch1x1/bn/scale, .../bn/bias
  ....bn.running_mean/running_var    -> batch_stats/.../bn/mean, batch_stats/.../bn/var
  fc.weight (1008, 2048), fc.bias    -> params/fc/kernel (2048, 1008), params/fc/bias

``...num_batches_tracked`` is dropped; keys under ``meta/`` (the source file's
name and SHA-256) are information only. ``convert_state_dict`` is the mapping
(numpy only); ``load_npz`` checks every key and shape against the network.

API: ``InceptionFeatures.from_npz(path)`` -> ``net``; ``net(images)`` or
``net.features(images)`` -> pool3 (N, 2048) numpy float32, ``net.logits``,
``net.features_and_logits``; batched, jitted, one executable per image shape.
``random_variables(seed)`` gives random weights (tests, timing).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaegan_jax.runtime.errors import UserError

Array = jax.Array

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3  # torchvision's BasicConv2d (TF's Inception-v3 uses 0.001 too).
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILE)
CONVERT_HINT = ("convert pytorch-fid's " + FID_WEIGHTS_FILE + " once with `python -m "
                "experiments.convert_inception_weights --pth=PATH.pth --out=PATH.npz`")


class WeightsError(UserError, ValueError):
  """Unusable Inception weights; one-line message naming the fix."""


# ----------------------------------------------------------------------------
# Resize and input mapping.


@functools.lru_cache(maxsize=32)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Weights (out_size, in_size) of torch's 1-D linear interpolation.

  ``F.interpolate(mode='bilinear', align_corners=False, antialias=False)`` with
  ``size=`` given (ATen ``upsample_bilinear2d``): scale = in / out, source
  coordinate s = scale (i + 0.5) - 0.5 clamped below at 0, i0 = floor(s),
  i1 = min(i0 + 1, in - 1), weights (1 - l, l) with l = s - i0. Float32 as
  in ATen, with s rounded once from the exact value, as its compiled kernels
  do (a fused multiply-add; rounding the product first is off by up to 1.5e-5
  at 320 -> 299): the weights are torch's to the last bit. Each row sums to
  1; downsampling takes 2 taps (no antialiasing), like torch.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f"Sizes must be >= 1, got {in_size} -> {out_size}.")
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  # float32 x (i + 0.5) and the - 0.5 are exact in float64: one rounding, like an FMA.
  src = (np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(f32)
  src = np.maximum(src, f32(0))
  i0 = src.astype(np.int64)  # floor: src >= 0
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam1 = np.clip(src - i0.astype(f32), f32(0), f32(1))
  lam0 = f32(1) - lam1
  m = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  m[rows, i0] += lam0
  m[rows, i1] += lam1  # i1 == i0 at the last pixel: the weights add up to 1.
  return m


def resize_bilinear(images: Array, size: Sequence[int] = (INPUT_SIZE, INPUT_SIZE), *,
                    precision: Any = jax.lax.Precision.HIGHEST) -> Array:
  """Resizes (N, H, W, C) to (N, size[0], size[1], C) like torch's bilinear.

  Separable: two matmuls with ``resize_matrix``; identity sizes are skipped.
  """
  _, h, w, _ = images.shape
  oh, ow = size
  x = images
  if h != oh:
    x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(resize_matrix(h, oh)), x, precision=precision)
  if w != ow:
    x = jnp.einsum("pw,nowc->nopc", jnp.asarray(resize_matrix(w, ow)), x, precision=precision)
  return x


def preprocess(images: Array, *, resize: bool = True,
               precision: Any = jax.lax.Precision.HIGHEST) -> Array:
  """[-1, 1] images (N, H, W, 1 or 3) -> the network's input (N, 299, 299, 3).

  pytorch-fid's path on (x + 1) / 2 in [0, 1]: bilinear resize to 299x299,
  then 2 y - 1. (The resize is affine with rows summing to 1, so this equals
  resizing x directly up to float rounding; the literal path costs nothing.)
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Need images (N, H, W, 1 or 3), got shape {images.shape}.")
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = (x + 1.0) / 2.0
  if resize:
    x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE), precision=precision)
  return 2.0 * x - 1.0


# ----------------------------------------------------------------------------
# The network.


def _pairs(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BN (running stats, eps 1e-3) -> ReLU.

  ``padding`` is torch's: (ph, pw) zeros on both sides of H and W.
  """
  features: int
  kernel_size: Any = 1
  strides: Any = 1
  padding: Any = 0
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ph, pw = _pairs(self.padding)
    x = nn.Conv(self.features, _pairs(self.kernel_size), strides=_pairs(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_same(x: Array) -> Array:
  # TF's 'SAME' 3x3 average: the padded zeros don't count (count_include_pad=False).
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_valid(x: Array) -> Array:
  # torch MaxPool2d(3, stride=2): no padding, floor.
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """FIDInceptionA (Mixed_5b/c/d): 64 + 64 + 96 + pool_features channels."""
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """torchvision's InceptionB (Mixed_6a): 35x35x288 -> 17x17x768."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, 3, strides=2, name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC (Mixed_6b/c/d/e): factorised 7x7 convs, 4 x 192 channels."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c7, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """torchvision's InceptionD (Mixed_7a): 17x17x768 -> 8x8x1280."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (``pool='avg'``, Mixed_7b) / FIDInceptionE_2 (``'max'``, Mixed_7c).

  320 + 768 + 768 + 192 = 2048 channels.
  """
  pool: str = "avg"
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                         axis=-1)
    if self.pool == "avg":
      p = _avg_pool_same(x)
    elif self.pool == "max":
      # The TF graph's (and FIDInceptionE_2's) max pool; padding counts as -inf.
      p = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}.")
    bp = conv(192, name="branch_pool")(p)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID Inception-v3 (inference mode), NHWC.

  Attributes:
    resize_input: resize to 299x299 first (pytorch-fid's default). Without it
      the input must be at least 75x75.
    precision: of the convs, the fc and the resize (HIGHEST: true float32 on
      GPUs too, where the default may use TF32).
  """
  resize_input: bool = True
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: Array) -> dict[str, Array]:
    """Features of images (N, H, W, 1 or 3) in [-1, 1].

    Returns:
      {'pool3': (N, 2048) float32, 'logits': (N, 1008) float32}. Under jit, an
      unused 'logits' costs nothing (XLA drops it).
    """
    p = self.precision
    conv = functools.partial(BasicConv2d, precision=p)
    x = preprocess(images, resize=self.resize_input, precision=p)  # (N, 299, 299, 3)
    x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)  # (N, 149, 149, 32)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x)  # (N, 147, 147, 32)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)  # (N, 147, 147, 64)
    x = _max_pool_valid(x)  # (N, 73, 73, 64)
    x = conv(80, name="Conv2d_3b_1x1")(x)  # (N, 73, 73, 80)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x)  # (N, 71, 71, 192)
    x = _max_pool_valid(x)  # (N, 35, 35, 192)
    x = InceptionA(32, precision=p, name="Mixed_5b")(x)  # (N, 35, 35, 256)
    x = InceptionA(64, precision=p, name="Mixed_5c")(x)  # (N, 35, 35, 288)
    x = InceptionA(64, precision=p, name="Mixed_5d")(x)  # (N, 35, 35, 288)
    x = InceptionB(precision=p, name="Mixed_6a")(x)  # (N, 17, 17, 768)
    x = InceptionC(128, precision=p, name="Mixed_6b")(x)
    x = InceptionC(160, precision=p, name="Mixed_6c")(x)
    x = InceptionC(160, precision=p, name="Mixed_6d")(x)
    x = InceptionC(192, precision=p, name="Mixed_6e")(x)  # (N, 17, 17, 768)
    x = InceptionD(precision=p, name="Mixed_7a")(x)  # (N, 8, 8, 1280)
    x = InceptionE("avg", precision=p, name="Mixed_7b")(x)  # (N, 8, 8, 2048)
    x = InceptionE("max", precision=p, name="Mixed_7c")(x)  # (N, 8, 8, 2048)
    pool3 = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1): (N, 2048)
    logits = nn.Dense(NUM_CLASSES, precision=p, name="fc")(pool3)  # (N, 1008)
    return {"pool3": pool3, "logits": logits}


# ----------------------------------------------------------------------------
# Weights: state_dict <-> npz <-> Flax variables.


@functools.lru_cache(maxsize=1)
def variable_shapes() -> dict[str, tuple[int, ...]]:
  """{npz key: shape} of every variable of ``FIDInceptionV3`` (no compute)."""
  tree = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def num_params() -> int:
  """Trainable parameters (the 'params' collection, fc included)."""
  return sum(int(np.prod(s)) for k, s in variable_shapes().items() if k.startswith("params/"))


def random_variables(seed: int = 0) -> dict[str, Any]:
  """Random variables in numpy (fast; no init to compile), for tests and timing.

  Conv/fc weights N(0, 2 / fan_in) (He: ReLU keeps the scale), BN scale
  U(0.5, 1.5), bias N(0, 0.1), mean N(0, 0.1), var U(0.5, 1.5).
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for k, shape in variable_shapes().items():
    leaf = k.rsplit("/", 1)[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      a = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    elif leaf in ("scale", "var"):
      a = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      a = rng.normal(0.0, 0.1, shape).astype(np.float32)
    flat[k] = a
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _flat(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def _check_complete(arrays: Mapping[str, np.ndarray], source: str) -> None:
  """One-line WeightsError unless ``arrays`` has exactly the network's keys and shapes."""
  want = variable_shapes()
  missing = sorted(set(want) - set(arrays))
  extra = sorted(set(arrays) - set(want))
  wrong = [f"{k} {tuple(arrays[k].shape)} (want {want[k]})" for k in sorted(want)
           if k in arrays and tuple(arrays[k].shape) != want[k]]
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
  if extra:
    problems.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
  if wrong:
    problems.append(f"{len(wrong)} of the wrong shape (e.g. {', '.join(wrong[:2])})")
  if problems:
    raise WeightsError(f"{source} is not the FID Inception-v3 ({'; '.join(problems)}): "
                       f"{CONVERT_HINT}.")


def convert_state_dict(state_dict: Mapping[str, Any], source: str = "The state_dict"
                       ) -> dict[str, np.ndarray]:
  """pytorch-fid's state_dict (numpy arrays) -> {npz key: float32 array}.

  Args:
    state_dict: torchvision Inception3 names (``Conv2d_1a_3x3.conv.weight``,
      ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight``, ...), values
      array-likes in torch layout.
    source: how to name the input in error messages.
  Returns:
    The key scheme of the module docstring: conv kernels OIHW -> HWIO, fc
    weight (out, in) -> (in, out), BN weight/bias -> scale/bias (params),
    running_mean/var -> mean/var (batch_stats); num_batches_tracked dropped.
  Raises:
    WeightsError: unknown names (e.g. torchvision's ImageNet Inception with
      AuxLogits), missing ones, or wrong shapes.
  """
  out, unknown = {}, []
  for name, value in state_dict.items():
    parts = name.split(".")
    if parts[-1] == "num_batches_tracked":
      continue
    a = np.asarray(value, np.float32)
    path, leaf = "/".join(parts[:-2]), tuple(parts[-2:])
    if leaf == ("conv", "weight") and a.ndim == 4:
      out[f"params/{path}/conv/kernel"] = a.transpose(2, 3, 1, 0)
    elif leaf == ("bn", "weight"):
      out[f"params/{path}/bn/scale"] = a
    elif leaf == ("bn", "bias"):
      out[f"params/{path}/bn/bias"] = a
    elif leaf == ("bn", "running_mean"):
      out[f"batch_stats/{path}/bn/mean"] = a
    elif leaf == ("bn", "running_var"):
      out[f"batch_stats/{path}/bn/var"] = a
    elif name == "fc.weight" and a.ndim == 2:
      out["params/fc/kernel"] = a.T
    elif name == "fc.bias":
      out["params/fc/bias"] = a
    else:
      unknown.append(name)
  if unknown:
    raise WeightsError(f"{source} has {len(unknown)} names that pytorch-fid's FID Inception "
                       f"does not (e.g. {', '.join(unknown[:3])}): give "
                       f"{FID_WEIGHTS_FILE}, not torchvision's ImageNet Inception-v3.")
  _check_complete(out, source)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_npz(variables: Mapping[str, Any], path: str, meta: Optional[Mapping[str, str]] = None
             ) -> None:
  """Writes Flax variables as the npz ``load_npz`` reads (atomically).

  Args:
    variables: {'params': ..., 'batch_stats': ...}, or an already flat
      {npz key: array} mapping (the output of ``convert_state_dict``).
    path: the file to write (used as given; no '.npz' is appended).
    meta: strings stored under ``meta/<key>`` (e.g. the source file's SHA-256).
  """
  flat = dict(variables) if all("/" in k for k in variables) else _flat(variables)
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  _check_complete(flat, "The variables to save")
  for k, v in (meta or {}).items():
    flat[f"meta/{k}"] = np.asarray(str(v))
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **flat)
  os.replace(tmp, path)


def read_meta(path: str) -> dict[str, str]:
  """The ``meta/`` strings of a converted npz (empty if none)."""
  with np.load(path) as z:
    return {k[len("meta/"):]: str(z[k]) for k in z.files if k.startswith("meta/")}


def load_npz(path: str) -> dict[str, Any]:
  """The converted npz -> Flax variables {'params': ..., 'batch_stats': ...}.

  Raises:
    WeightsError (one line, naming the fix): no such file, not an npz, or
    keys/shapes that are not those of ``FIDInceptionV3``.
  """
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise WeightsError(f"No Inception weights at {path}: {CONVERT_HINT}.")
  try:
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files if not k.startswith("meta/")}
  except Exception as e:  # zipfile/pickle/format errors all mean the same here.
    first = (str(e).splitlines() or [type(e).__name__])[0]
    raise WeightsError(f"{path} is not a readable .npz ({first}): {CONVERT_HINT}.") from e
  _check_complete(arrays, path)
  arrays = {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}
  return flax.traverse_util.unflatten_dict(arrays, sep="/")


# ----------------------------------------------------------------------------
# Batched feature extraction.


class InceptionFeatures:
  """Batched, jitted FID Inception-v3: images in [-1, 1] -> numpy features.

  ``net = InceptionFeatures.from_npz(path)``; ``net(images)`` /
  ``net.features(images)`` -> pool3 (N, 2048); ``net.logits(images)`` ->
  (N, 1008); ``net.features_and_logits(images)`` -> both from one pass.
  Images: (N, H, W, 1 or 3) float in [-1, 1], any H, W (resized to 299x299
  inside, like pytorch-fid), numpy or jax. Batches of ``batch_size`` (the last
  one padded with zeros and the padding dropped), so one executable compiles
  per image shape; N < batch_size runs as one batch of N. Runs on the default
  device.

  Attributes:
    name: the feature space's name for reports.
    dim: the feature dimension (2048).
    num_classes: the logits' dimension (1008).
    meta: the npz's ``meta/`` strings (source file name and SHA-256), if any.
  """
  name = "inception_v3_fid"
  dim = FEATURE_DIM
  num_classes = NUM_CLASSES

  def __init__(self, variables: Mapping[str, Any], *, batch_size: int = 50,
               precision: Any = jax.lax.Precision.HIGHEST,
               meta: Optional[Mapping[str, str]] = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    self.variables = jax.device_put(variables)
    self.batch_size = int(batch_size)
    self.meta = dict(meta or {})
    model = FIDInceptionV3(precision=precision)

    @jax.jit
    def run(v, x):
      out = model.apply(v, x)
      return out["pool3"], out["logits"]

    self._run = run

  @classmethod
  def from_npz(cls, path: str, **kwargs) -> "InceptionFeatures":
    """Loads a converted npz (``load_npz``); kwargs go to the constructor."""
    return cls(load_npz(path), meta=read_meta(os.path.expanduser(path)), **kwargs)

  def features_and_logits(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pool3 (N, 2048), logits (N, 1008)), numpy float32."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
      raise ValueError("Got uint8 images: scale them to floats in [-1, 1] (x / 127.5 - 1).")
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
      raise ValueError(f"Need images (N, H, W, 1 or 3) in [-1, 1], got shape {shape}.")
    n = shape[0]
    if n == 0:
      return (np.zeros((0, FEATURE_DIM), np.float32), np.zeros((0, NUM_CLASSES), np.float32))
    b = min(self.batch_size, n)
    pools, logits = [], []
    for start in range(0, n, b):
      x = np.asarray(images[start:start + b], np.float32)
      k = x.shape[0]
      if k < b:  # Pad the last batch: the same executable for every batch.
        x = np.concatenate([x, np.zeros((b - k,) + x.shape[1:], np.float32)])
      p, l = self._run(self.variables, x)  # Async: the next batch is prepared meanwhile.
      pools.append(p[:k])
      logits.append(l[:k])
    return (np.concatenate([np.asarray(p) for p in pools]),
            np.concatenate([np.asarray(l) for l in logits]))

  def features(self, images: Any) -> np.ndarray:
    """pool3 features (N, 2048) float32 of images (N, H, W, 1 or 3) in [-1, 1]."""
    return self.features_and_logits(images)[0]

  def logits(self, images: Any) -> np.ndarray:
    """fc logits (N, 1008) float32 (softmax over them: class probabilities)."""
    return self.features_and_logits(images)[1]

  __call__ = features


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file (the converter records the .pth's in ``meta/``)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
