r"""Samples, reconstructions, interpolations and attribute edits of a checkpoint, as files.

What ``python -m experiments.sample`` writes, in one call from a notebook::

  from vaegan_jax import sampling_outputs
  written = sampling_outputs.write_samples('/tmp/vaegan', '/tmp/vaegan/out', num=64)
  # {'samples.png': '/tmp/vaegan/out/samples.png', ...}

or, to look at the arrays without writing anything::

  out = sampling_outputs.sample_outputs('/tmp/vaegan', num=16, use_mean=True)
  out.files['samples_z.npy']            # (16, Z) float32
  out.files['reconstructions.png']      # uint8 grid (H', W', C)
  sampling_outputs.write_outputs(out, '/tmp/vaegan/out')

The source is a training workdir (its newest usable checkpoint, or ``step``,
with the config saved beside it; nothing is retrained, a corrupt newer
checkpoint is skipped with a warning) or a ``sampling.Sampler`` that knows its
config (``Sampler.from_workdir``, or set ``sampler.config`` and
``sampler.step``).

Files (names relative to ``outdir``; N = ``num``, Z = the model's z_dim, S the
image size, C its channels, P = ``num_interpolations``, T =
``interpolation_steps``; grids are uint8 PNGs with ceil(sqrt(N)) columns unless
said otherwise):

  samples.png          N decodes of z ~ N(0, T^2 I) (temperature T, fixed
                       ``seed``); ``samples_z.npy`` (N, Z) float32.
                       With ``save_images`` also ``samples.npy`` (N, S, S, C)
                       float32 in [-1, 1] and ``samples/00000.png``... (and the
                       same for reconstructions), for other tools.
  reconstructions.png  held-out inputs (the config's eval split, its first
                       images) in rows, each row followed by a row of their
                       reconstructions; ``reconstructions_z.npy`` (n, Z),
                       n <= N a whole number of rows. Not for the 'gan' kind,
                       which has no encoder.
  interpolations.png   one row per path, T frames from one held-out image's
                       code to another's (prior samples for the 'gan' kind);
                       ``interpolations_z.npy`` (P, T, Z) float32.
  attributes.png       (``attributes``) row 0 held-out inputs, row 1 their
                       reconstructions, then one row per attribute of the
                       paper's 18 (Sec. 5.2): the reconstructions with that
                       visual attribute vector added to the codes;
                       ``attribute_columns`` columns.
  attribute_vectors.npz  (``attributes``, unless ``attribute_vectors`` names a
                       file to reuse) vectors (18, Z), names (18,), valid,
                       num_positive, num_negative (18,), num_images, step. A
                       vector is the mean encoder mean mu of the
                       ``num_attribute_images`` random training images with
                       the attribute minus that of those without.
  samples_y.npy        (conditional models) (N, A): the y the samples were
                       decoded with.

Held-out images are encoded to z = mu + sigma * eps (eps from ``seed``), or to
mu with ``use_mean``. Conditional models (``model.num_attributes > 0``) are
decoded with the held-out images' attribute vectors y (samples take the y of
the first held-out images; interpolations interpolate y linearly as well).

Every input is checked before anything is decoded (``sample_outputs``), and
``write_samples`` writes nothing unless everything succeeded. Errors (no
checkpoint, a corrupt ``step``, a checkpoint that does not match its config, a
conditional model whose data have no attributes, ``attributes`` on data without
attributes or a model without encoder, a bad ``attribute_vectors`` file) are
a ``UserError``, with a one-line message naming the fix.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, NamedTuple, Optional, Union

import jax
import numpy as np
from absl import logging

from vaegan_jax import data
from vaegan_jax import models
from vaegan_jax import sampling
from vaegan_jax import train_step
from vaegan_jax.runtime import image_grid
from vaegan_jax.runtime.errors import UserError

ATTRIBUTE_VECTORS_FILE = "attribute_vectors.npz"


class SampleError(UserError, ValueError):
  """A request that cannot be served; the message is one line naming the fix."""


class SampleOutputs(NamedTuple):
  """What ``sample_outputs`` computed; nothing written yet.

  files: {file name relative to outdir: value}, where a '.png' value is a
    uint8 image (H, W, C) or (H, W), a '.npy' value an array and a '.npz'
    value a dict of arrays.
  step: the checkpoint step they come from.
  """
  files: dict[str, Any]
  step: int


def _grid_cols(n: int) -> int:
  return max(1, math.ceil(math.sqrt(n)))


def load_attribute_vectors(path: str, z_dim: int) -> tuple[np.ndarray, tuple[str, ...]]:
  """(vectors (K, Z) float32, K names) from an .npz as ``sample_outputs`` writes it.

  Raises SampleError (one line) for a missing or unreadable file, or vectors
  of another z_dim.
  """
  if not os.path.isfile(path):
    raise SampleError(f"--attribute_vectors file {path} does not exist; write one with "
                      f"--attributes (it is saved as {ATTRIBUTE_VECTORS_FILE}).")
  try:
    with np.load(path, allow_pickle=False) as f:
      vectors, names = np.asarray(f["vectors"], np.float32), tuple(str(n) for n in f["names"])
  except (OSError, ValueError, KeyError) as e:
    raise SampleError(f"Cannot read attribute vectors from {path} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); it needs arrays "
                      "'vectors' (K, Z) and 'names' (K,).") from e
  if vectors.ndim != 2 or vectors.shape[1] != z_dim or vectors.shape[0] != len(names):
    raise SampleError(f"Attribute vectors in {path} have shape {vectors.shape} with "
                      f"{len(names)} names, but this model needs (K, {z_dim}): were they "
                      "computed for another model?")
  if not np.isfinite(vectors).all():
    raise SampleError(f"Attribute vectors in {path} are not finite.")
  return vectors, names


def _individual(outputs: dict, name: str, images) -> None:
  """``name.npy`` (N, H, W, C) float32 in [-1, 1] and ``name/NNNNN.png``, for other tools."""
  images = np.asarray(images, np.float32)
  outputs[f"{name}.npy"] = images
  for i, im in enumerate(image_grid.to_uint8(images)):
    outputs[f"{name}/{i:05d}.png"] = im


def _check_options(num, temperature, interpolation, num_interpolations, interpolation_steps,
                   num_attribute_images, attribute_columns) -> None:
  for name, value, low in (("num", num, 1), ("num_interpolations", num_interpolations, 1),
                           ("interpolation_steps", interpolation_steps, 2),
                           ("num_attribute_images", num_attribute_images, 2),
                           ("attribute_columns", attribute_columns, 1)):
    if int(value) < low:
      raise SampleError(f"--{name} must be >= {low}, got {value}.")
  if not temperature >= 0:
    raise SampleError(f"--temperature must be >= 0, got {temperature}.")
  if interpolation not in ("slerp", "linear"):
    raise SampleError(f"--interpolation must be 'slerp' or 'linear', got {interpolation!r}.")


def _source_config(source: Union[str, sampling.Sampler], step: Union[int, str, None]):
  """(config, step, where) of a workdir's checkpoint or of a Sampler (config only)."""
  if isinstance(source, sampling.Sampler):
    if source.config is None:
      raise SampleError("This Sampler has no config: build it with Sampler.from_workdir, or "
                        "set sampler.config (the training config) first.")
    if step is not None and source.step is not None and int(step) != int(source.step):
      raise SampleError(f"step={step} was asked for, but the Sampler holds step "
                        f"{source.step}; pass the workdir to sample another step.")
    return copy.deepcopy(source.config), int(source.step or 0), "the Sampler"
  workdir = str(source)
  config, step = sampling.read_config(workdir, step)
  return config, step, workdir


class _Request(NamedTuple):
  """What the config and the options ask for, checked before any array is read.

  paper_cols: the dataset's columns of the paper's 18 attributes, when the
    attribute vectors are to be computed; vectors: (vectors (K, Z), K names)
    loaded from ``attribute_vectors``.
  """
  config: Any
  step: int
  where: str
  arch: models.Architecture
  has_encoder: bool
  paper_cols: Optional[tuple[int, ...]]
  vectors: Optional[tuple[np.ndarray, tuple[str, ...]]]


def _check_request(source, step, manual_dir, attributes: bool,
                   attribute_vectors: Optional[str]) -> _Request:
  """The config-only checks of ``sample_outputs``: a ``UserError`` (one line) or a request."""
  config, step, where = _source_config(source, step)
  if manual_dir:
    with config.unlocked():
      config.data.manual_dir = manual_dir
  arch = sampling.check_config(config, where, step)
  has_encoder = "encoder" in train_step.LossConfig.from_config(config).groups
  conditional = arch.num_attributes > 0
  if attributes and not has_encoder:
    raise SampleError(f"--attributes needs an encoder, but this is a {config.kind!r} "
                      "model; use a vae/vaegan/vae_dis_l checkpoint.")
  info = None
  if has_encoder or conditional or attributes:
    info = data.validate(config.data)  # DataError: one line.
    if conditional and len(info.attribute_names) != arch.num_attributes:
      raise SampleError(
          f"This checkpoint is conditional on {arch.num_attributes} attributes but dataset "
          f"{info.name!r} has {len(info.attribute_names)}; it needs the attribute data it was "
          "trained with (e.g. --manual_dir for CelebA).")
  paper_cols = None
  if attributes:
    if not info.attribute_names:
      raise SampleError(f"--attributes needs a dataset with attributes (CelebA), but "
                        f"{info.name!r} has none.")
    if attribute_vectors is None:
      try:
        paper_cols = sampling.paper_attribute_indices(info.attribute_names)
      except ValueError as e:
        raise SampleError(str(e).splitlines()[0]) from e
  vectors = (load_attribute_vectors(attribute_vectors, arch.z_dim)
             if attributes and attribute_vectors else None)
  return _Request(config, step, where, arch, has_encoder, paper_cols, vectors)


def _held_out(config, need_images: int, has_encoder: bool) -> Optional[dict[str, np.ndarray]]:
  """The first ``need_images`` images (and attributes) of the eval split, or None for 0."""
  if not need_images:
    return None
  split = config.data.get("eval_split") or config.data.train_split
  batches = list(sampling.dataset_batches(config.data, split, need_images, need_images))
  held_out = {k: np.concatenate([b[k] for b in batches])
              for k in ("image", "attributes") if k in batches[0]}
  n_held = len(held_out["image"])
  if has_encoder and n_held < 2:
    raise SampleError(f"Split {split!r} has {n_held} example(s); interpolating between "
                      "held-out images needs 2: set data.eval_split to a larger split.")
  if n_held < need_images:
    logging.warning("Split %r has %d examples, fewer than the %d requested: using them "
                    "all (cycling y for conditional samples).", split, n_held, need_images)
  return held_out


def _cycled(ys: Optional[np.ndarray], n: int, offset: int = 0) -> Optional[np.ndarray]:
  """ys[offset:offset + n] (N, A), cycled; None for an unconditional model (ys None)."""
  if ys is None:
    return None
  return ys[(offset + np.arange(n)) % len(ys)]


def _samples(outputs: dict, sampler, key, num: int, temperature: float,
             ys: Optional[np.ndarray], save_images: bool) -> None:
  """samples.png, samples_z.npy (num, Z) [, samples_y.npy, the single images]."""
  images, z = sampling.sample(sampler, key, num, temperature=temperature, y=_cycled(ys, num))
  outputs["samples.png"] = image_grid.make_grid(images, ncols=_grid_cols(num))
  outputs["samples_z.npy"] = np.asarray(z)
  if save_images:
    _individual(outputs, "samples", images)
  if ys is not None:
    outputs["samples_y.npy"] = _cycled(ys, num)


def _reconstructions(outputs: dict, sampler, key, held_out: dict, num: int, use_mean: bool,
                     ys: Optional[np.ndarray], save_images: bool) -> None:
  """reconstructions.png (input rows above their reconstructions), reconstructions_z.npy."""
  ncols = min(_grid_cols(num), len(held_out["image"]))
  n_rec = min(num, len(held_out["image"])) // ncols * ncols
  x = held_out["image"][:n_rec]
  recon, z = sampling.reconstruct(sampler, x, rng=key, use_mean=use_mean, y=_cycled(ys, n_rec))
  outputs["reconstructions.png"] = image_grid.make_grid(
      image_grid.interleave_rows(x, np.asarray(recon), ncols), ncols=ncols)
  outputs["reconstructions_z.npy"] = np.asarray(z)
  if save_images:
    _individual(outputs, "reconstructions", recon)


def _interpolations(outputs: dict, sampler, key, held_out: Optional[dict], p: int, steps: int,
                    method: str, temperature: float, use_mean: bool,
                    ys: Optional[np.ndarray]) -> None:
  """interpolations.png, one row per path; interpolations_z.npy (P, T, Z).

  The endpoints are the codes of held-out images, or prior samples for a model
  without an encoder (``held_out`` None).
  """
  z_dim = sampler.arch.z_dim
  if held_out is not None:
    p = min(p, len(held_out["image"]) // 2)
    x = held_out["image"][:2 * p]
    codes = sampler.encode(x, _cycled(ys, 2 * p), use_mean=use_mean, rng=key)
  else:
    codes = sampling.prior_sample(key, 2 * p, z_dim, temperature)
  path = sampling.interpolation_path(codes[:p], codes[p:2 * p], int(steps), method)
  y_path = None
  if ys is not None:
    # Interpolate y linearly alongside z: both are inputs of Dec.
    y0, y1 = _cycled(ys, p), _cycled(ys, p, offset=p)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    y_path = ((1 - t) * y0[:, None] + t * y1[:, None]).reshape(p * steps, -1)
  frames = sampler.decode(path.reshape(p * steps, z_dim), y_path)
  outputs["interpolations.png"] = image_grid.make_grid(frames, ncols=steps)
  outputs["interpolations_z.npy"] = np.asarray(path)


def _attribute_vectors(outputs: dict, sampler, request: _Request, num_images: int,
                       seed: int, source_file: Optional[str]):
  """(vectors (K, Z), K names): loaded, or computed from training images (and kept as
  ``attribute_vectors.npz`` in ``outputs``)."""
  if request.vectors is not None:
    vectors, names = request.vectors
    logging.info("Using %d attribute vectors from %s.", len(names), source_file)
    return vectors, names
  config = request.config
  logging.info("Encoding %d %r images for the attribute vectors.", num_images,
               config.data.train_split)
  z_ds, attrs = sampling.encode_dataset(
      sampler, sampling.dataset_batches(config.data, config.data.train_split, 256,
                                        num_images, seed=seed),
      num_images)
  av = sampling.attribute_vectors(z_ds, attrs[:, list(request.paper_cols)],
                                  names=sampling.PAPER_ATTRIBUTES)
  vectors, names = np.asarray(av.vectors), sampling.PAPER_ATTRIBUTES
  outputs[ATTRIBUTE_VECTORS_FILE] = dict(
      vectors=vectors, names=np.asarray(names), valid=av.valid,
      num_positive=av.num_positive, num_negative=av.num_negative,
      num_images=np.int64(len(z_ds)), step=np.int64(request.step))
  return vectors, names


def _attribute_edits(outputs: dict, sampler, key, held_out: dict, vectors: np.ndarray,
                     names, columns: int, use_mean: bool, ys: Optional[np.ndarray]) -> None:
  """attributes.png: inputs, their reconstructions, then one row per attribute added."""
  c = min(columns, len(held_out["image"]))
  x = held_out["image"][:c]
  y = _cycled(ys, c)
  z = sampler.encode(x, y, use_mean=use_mean, rng=key)
  rows = [x, np.asarray(sampler.decode(z, y))]
  for a in range(len(names)):
    rows.append(np.asarray(sampler.decode(sampling.apply_attribute(z, vectors, a), y)))
  outputs["attributes.png"] = image_grid.make_grid(np.concatenate(rows), ncols=c)
  logging.info("attributes.png rows: input, reconstruction, then + %s.", ", + ".join(names))


def sample_outputs(source: Union[str, sampling.Sampler], *, step: Union[int, str, None] = None,
                   num: int = 64, seed: int = 0, temperature: float = 1.0,
                   use_mean: bool = False, interpolation: str = "slerp",
                   num_interpolations: int = 8, interpolation_steps: int = 10,
                   attributes: bool = False, num_attribute_images: int = 10_000,
                   attribute_vectors: Optional[str] = None, attribute_columns: int = 8,
                   manual_dir: Optional[str] = None,
                   save_images: bool = False) -> SampleOutputs:
  """Computes every file of the module docstring; writes nothing.

  Args:
    source: a training workdir, or a Sampler with ``config`` (and ``step``).
    step: the workdir's checkpoint (default: the newest usable one).
    num: samples, and at most that many reconstructions.
    seed: seed of z ~ N(0, T^2 I), of the encoder noise and of the training
      images picked for the attribute vectors.
    temperature: the prior std T of the samples (and of the 'gan' kind's
      interpolation endpoints).
    use_mean: encode held-out images to mu instead of mu + sigma * eps.
    interpolation: 'slerp' or 'linear' (see ``sampling.interpolation_path``).
    num_interpolations, interpolation_steps: P paths of T frames.
    attributes: also the attribute vectors and attributes.png (CelebA).
    num_attribute_images: training images encoded for the vectors (paper: 10k).
    attribute_vectors: reuse the vectors of this .npz (implies ``attributes``).
    attribute_columns: held-out images (columns) in attributes.png.
    manual_dir: override ``data.manual_dir`` of the saved config.
    save_images: also every sample and reconstruction alone (.npy and PNGs).
  Returns:
    SampleOutputs(files, step).
  Raises:
    A ``UserError`` (one line), before anything is decoded.
  """
  attributes = attributes or bool(attribute_vectors)
  _check_options(num, temperature, interpolation, num_interpolations, interpolation_steps,
                 num_attribute_images, attribute_columns)
  request = _check_request(source, step, manual_dir, attributes, attribute_vectors)
  config, has_encoder = request.config, request.has_encoder
  conditional = request.arch.num_attributes > 0
  # The config-only checks passed: now the arrays, checked against the config.
  if isinstance(source, sampling.Sampler):
    sampler = source
  else:
    sampler = sampling.Sampler.from_workdir(request.where, request.step, config=config)
  need_images = 0
  if has_encoder:
    need_images = max(num, 2 * num_interpolations, attribute_columns if attributes else 0)
  elif conditional:
    need_images = max(num, 2 * num_interpolations)
  held_out = _held_out(config, need_images, has_encoder)
  ys = held_out["attributes"] if conditional else None  # y of the held-out examples

  key = jax.random.PRNGKey(seed)
  k_sample, k_recon, k_interp, k_attr = (jax.random.fold_in(key, i) for i in range(4))
  outputs: dict[str, Any] = {}  # file name -> uint8 grid or array
  _samples(outputs, sampler, k_sample, num, temperature, ys, save_images)
  if has_encoder:
    _reconstructions(outputs, sampler, k_recon, held_out, num, use_mean, ys, save_images)
  else:
    logging.info("Model kind %r has no encoder: skipping reconstructions, and "
                 "interpolating between prior samples instead of held-out images.",
                 config.kind)
  _interpolations(outputs, sampler, k_interp, held_out if has_encoder else None,
                  num_interpolations, interpolation_steps, interpolation, temperature,
                  use_mean, ys)
  if attributes:
    vectors, names = _attribute_vectors(outputs, sampler, request, num_attribute_images,
                                        seed, attribute_vectors)
    _attribute_edits(outputs, sampler, k_attr, held_out, vectors, names, attribute_columns,
                     use_mean, ys)
  return SampleOutputs(outputs, int(request.step))


def write_outputs(outputs: SampleOutputs, outdir: str) -> dict[str, str]:
  """Writes ``outputs.files`` under ``outdir`` (created); returns {name: path}."""
  os.makedirs(outdir, exist_ok=True)
  written = {}
  for name, value in outputs.files.items():
    path_out = os.path.join(outdir, name)
    if "/" in name:
      os.makedirs(os.path.dirname(path_out), exist_ok=True)
    if name.endswith(".png"):
      image_grid.save_png(path_out, value)
    elif name.endswith(".npz"):
      np.savez(path_out, **value)
    else:
      np.save(path_out, value)
    written[name] = path_out
  grids = [n for n in written if "/" not in n]
  logging.info("Wrote %s%s to %s (checkpoint step %d).", ", ".join(grids),
               f" and {len(written) - len(grids)} single images" if len(grids) < len(written)
               else "", outdir, outputs.step)
  return written


def write_samples(source: Union[str, sampling.Sampler], outdir: str,
                  **options: Any) -> dict[str, str]:
  """``sample_outputs(source, **options)`` written to ``outdir``: what the binary does.

  Nothing is written unless every output was computed.

  Returns:
    {file name: path} of the files written.
  Raises:
    A ``UserError`` (one line), before anything is written.
  """
  return write_outputs(sample_outputs(source, **options), outdir)
