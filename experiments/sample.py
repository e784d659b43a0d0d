r"""Samples, reconstructions, interpolations and attribute edits from a checkpoint.

  python -m experiments.sample --workdir=/tmp/vaegan --outdir=/tmp/vaegan/out \
      [--step=N] [--num=64] [--seed=0] [--temperature=1.0] [--use_mean] \
      [--interpolation=slerp|linear] [--attributes [--num_attribute_images=10000]
      [--attribute_vectors=vectors.npz]]

Reads the newest usable (or the ``--step``) checkpoint of ``workdir`` and the
config saved beside it (nothing is retrained; a corrupt newer checkpoint is
skipped with a warning), and writes to ``outdir``:

  samples.png          ``num`` decodes of z ~ N(0, T^2 I) (fixed ``--seed``),
                       ceil(sqrt(num)) columns; ``samples_z.npy`` (num, Z).
                       With ``--save_images`` also ``samples.npy`` (num, H, W, C)
                       float32 in [-1, 1] and ``samples/00000.png``... (and the
                       same for reconstructions), for other tools.
  reconstructions.png  held-out inputs (the config's eval split, its first
                       images) in rows, each row followed by a row of their
                       reconstructions; ``reconstructions_z.npy`` (n, Z).
  interpolations.png   one row per path, ``--interpolation_steps`` frames from
                       one held-out image's code to another's (prior samples
                       for the 'gan' kind, which has no encoder);
                       ``interpolations_z.npy`` (P, steps, Z).
  attributes.png       (``--attributes``) row 0 held-out inputs, row 1 their
                       reconstructions, then one row per attribute of the
                       paper's 18 (Sec. 5.2): the reconstructions with that
                       visual attribute vector added to the codes;
                       ``attribute_vectors.npz`` (vectors (18, Z), names,
                       valid, num_positive, num_negative, num_images, step).
                       A vector is the mean encoder mean mu of the
                       ``--num_attribute_images`` random training images with
                       the attribute minus that of those without.
                       ``--attribute_vectors=file.npz`` reuses saved vectors
                       (and implies ``--attributes``).
  samples_y.npy        (conditional models) the y the samples were decoded with.

Held-out images are encoded to z = mu + sigma * eps (eps from ``--seed``), or to
mu with ``--use_mean``. Conditional models (``model.num_attributes > 0``) are
decoded with the held-out images' attribute vectors y (samples take the y of
the first held-out images; interpolations interpolate y linearly as well).

Every input is checked before anything is decoded, and nothing is written
unless everything succeeded; errors (no checkpoint, a corrupt ``--step``
checkpoint, a checkpoint that does not match its config, a conditional model
whose data have no attributes, ``--attributes`` on data without attributes or a
model without encoder, a bad ``--attribute_vectors`` file) are one line on
stderr and exit status 1.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging

from vaegan_jax import cli  # pylint: disable=g-bad-import-order
import jax
import numpy as np

from vaegan_jax import checkpoint
from vaegan_jax import image_grid
from vaegan_jax import input_pipeline
from vaegan_jax import models
from vaegan_jax import sampling
from vaegan_jax import train_step as ts

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the flags, only when run as a program.

  Tests import ``run`` next to other binaries that define flags of the same
  names (``--workdir``), which absl would reject at import time.
  """
  flags.DEFINE_string("workdir", None, "Training workdir (with checkpoints/).")
  flags.DEFINE_string("outdir", None, "Where to write the PNGs and .npy/.npz files.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("num", 64, "Number of samples and of reconstructions.")
  flags.DEFINE_integer("seed", 0, "Seed of z ~ N(0, T^2 I) and of encoder noise.")
  flags.DEFINE_float("temperature", 1.0, "Prior std T of the samples.")
  flags.DEFINE_bool("use_mean", False, "Encode held-out images to mu instead of a sample.")
  flags.DEFINE_enum("interpolation", "slerp", ["slerp", "linear"], "Interpolation path.")
  flags.DEFINE_integer("num_interpolations", 8, "Number of interpolation paths (rows).")
  flags.DEFINE_integer("interpolation_steps", 10, "Frames per path, endpoints included.")
  flags.DEFINE_bool("attributes", False, "Also write attribute vectors and attributes.png.")
  flags.DEFINE_integer("num_attribute_images", 10_000,
                       "Training images encoded for the attribute vectors (paper: 10k).")
  flags.DEFINE_string("attribute_vectors", None,
                      "Reuse vectors from this .npz (as written by --attributes).")
  flags.DEFINE_integer("attribute_columns", 8, "Held-out images (columns) in attributes.png.")
  flags.DEFINE_bool("save_images", False, "Also write every sample and reconstruction alone: "
                    "samples/NNNNN.png and samples.npy (N, H, W, C) float32 in [-1, 1], the "
                    "same for reconstructions, for other tools (FID scripts, viewers).")
  flags.DEFINE_string("manual_dir", None, "Override data.manual_dir of the saved config "
                      "(e.g. CelebA moved since training).")
  flags.mark_flags_as_required(["workdir", "outdir"])


ATTRIBUTE_VECTORS_FILE = "attribute_vectors.npz"


class SampleError(ValueError):
  """A request this binary cannot serve; the message is one line naming the fix."""


def _grid_cols(n: int) -> int:
  return max(1, math.ceil(math.sqrt(n)))


def _interleave_rows(top, bottom, ncols: int):
  """Rows of ``top`` each followed by the matching row of ``bottom`` (same length)."""
  rows = []
  for i in range(0, len(top), ncols):
    rows += [top[i:i + ncols], bottom[i:i + ncols]]
  return np.concatenate(rows)


def load_attribute_vectors(path: str, z_dim: int) -> tuple[Any, tuple[str, ...]]:
  """(vectors (K, Z) float32, K names) from an .npz written by ``run``."""
  if not os.path.isfile(path):
    raise SampleError(f"--attribute_vectors file {path} does not exist; write one with "
                      "--attributes (it is saved as attribute_vectors.npz).")
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


def restore_checked(workdir: str, step: int, config) -> tuple[Any, Any]:
  """``checkpoint.restore_for_inference`` after checking that the config is valid here.

  Returns:
    (host TrainState, config).
  Raises:
    checkpoint.CheckpointError: one line naming the first mismatching leaf.
  """
  try:
    models.Architecture.from_config(config.model).validate()
    ts.LossConfig.from_config(config).validate()
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise checkpoint.CheckpointError(
        f"The config saved with checkpoint {step} in {workdir} is not valid here "
        f"({str(e).strip().splitlines()[0]}).") from e
  # Raises a one-line CheckpointError when a leaf's shape or dtype differs.
  return checkpoint.restore_for_inference(workdir, step, config)


def _individual(outputs: dict, name: str, images) -> None:
  """``name.npy`` (N, H, W, C) float32 in [-1, 1] and ``name/NNNNN.png``, for other tools."""
  images = np.asarray(images, np.float32)
  outputs[f"{name}.npy"] = images
  for i, im in enumerate(image_grid.to_uint8(images)):
    outputs[f"{name}/{i:05d}.png"] = im


def run(workdir: str, outdir: str, *, step: Optional[int] = None, num: int = 64,
        seed: int = 0, temperature: float = 1.0, use_mean: bool = False,
        interpolation: str = "slerp", num_interpolations: int = 8,
        interpolation_steps: int = 10, attributes: bool = False,
        num_attribute_images: int = 10_000, attribute_vectors: Optional[str] = None,
        attribute_columns: int = 8, manual_dir: Optional[str] = None,
        save_images: bool = False) -> dict[str, str]:
  """Writes the grids and codes described in the module docstring.

  Returns:
    {output name: path} of the files written.
  Raises:
    SampleError, checkpoint.CheckpointError, input_pipeline.DataError: one-line
    messages, raised before anything is decoded or written.
  """
  # --- Validate everything before decoding anything. ------------------------
  attributes = attributes or bool(attribute_vectors)
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
  if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
    # Checked here so that a typo gives one line, not Orbax's warnings first.
    raise checkpoint.CheckpointError(
        f"No checkpoint in {checkpoint.checkpoint_dir(workdir)}; train first with "
        f"`python -m experiments.train --workdir={workdir}`.")
  # step=None: the newest checkpoint whose state passes its checksum, so that
  # restoring that step below cannot fail on a corrupt newer one.
  config, step = checkpoint.read_config(workdir, step)
  if manual_dir:
    config.data.manual_dir = manual_dir
  try:
    arch = models.Architecture.from_config(config.model)
    has_encoder = "encoder" in ts.LossConfig.from_config(config).groups
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise checkpoint.CheckpointError(
        f"The config saved with checkpoint {step} in {workdir} is not valid here "
        f"({str(e).strip().splitlines()[0]}).") from e
  conditional = arch.num_attributes > 0

  if attributes and not has_encoder:
    raise SampleError(f"--attributes needs an encoder, but this is a {config.kind!r} "
                      "model; use a vae/vaegan/vae_dis_l checkpoint.")
  info = None
  if has_encoder or conditional or attributes:
    info = input_pipeline.validate(config.data)  # DataError: one line.
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
  loaded_vectors = (load_attribute_vectors(attribute_vectors, arch.z_dim)
                    if attributes and attribute_vectors else None)

  # The (config-only) checks passed: now the arrays, checked against the config.
  state, config = restore_checked(workdir, step, config)
  sampler = sampling.Sampler.from_state(config, state)

  held_out = None
  need_images = 0
  if has_encoder:
    need_images = max(num, 2 * num_interpolations, attribute_columns if attributes else 0)
  elif conditional:
    need_images = max(num, 2 * num_interpolations)
  if need_images:
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

  def y_for(n: int, offset: int = 0):
    """y of held-out examples offset..offset+n (cycled) for conditional models."""
    if not conditional:
      return None
    ys = held_out["attributes"]
    return ys[(offset + np.arange(n)) % len(ys)]

  # --- Compute (nothing written yet). ----------------------------------------
  key = jax.random.PRNGKey(seed)
  k_sample, k_recon, k_interp, k_attr = (jax.random.fold_in(key, i) for i in range(4))
  outputs: dict[str, Any] = {}  # file name -> uint8 grid or array

  images, z = sampling.sample(sampler, k_sample, num, temperature=temperature, y=y_for(num))
  outputs["samples.png"] = image_grid.make_grid(images, ncols=_grid_cols(num))
  outputs["samples_z.npy"] = np.asarray(z)
  if save_images:
    _individual(outputs, "samples", images)
  if conditional:
    outputs["samples_y.npy"] = y_for(num)

  if has_encoder:
    ncols = min(_grid_cols(num), len(held_out["image"]))
    n_rec = min(num, len(held_out["image"])) // ncols * ncols
    x = held_out["image"][:n_rec]
    recon, z = sampling.reconstruct(sampler, x, rng=k_recon, use_mean=use_mean,
                                    y=y_for(n_rec))
    outputs["reconstructions.png"] = image_grid.make_grid(
        _interleave_rows(x, np.asarray(recon), ncols), ncols=ncols)
    outputs["reconstructions_z.npy"] = np.asarray(z)
    if save_images:
      _individual(outputs, "reconstructions", recon)
  else:
    logging.info("Model kind %r has no encoder: skipping reconstructions, and "
                 "interpolating between prior samples instead of held-out images.",
                 config.kind)

  p = num_interpolations
  if has_encoder:
    p = min(p, len(held_out["image"]) // 2)
    x = held_out["image"][:2 * p]
    codes = sampler.encode(x, y_for(2 * p), use_mean=use_mean, rng=k_interp)
  else:
    codes = temperature * jax.random.normal(k_interp, (2 * p, arch.z_dim))
  path = sampling.interpolation_path(codes[:p], codes[p:2 * p], int(interpolation_steps),
                                     interpolation)
  y_path = None
  if conditional:
    # Interpolate y linearly alongside z: both are inputs of Dec.
    y0, y1 = y_for(p), y_for(p, offset=p)
    t = np.linspace(0.0, 1.0, interpolation_steps, dtype=np.float32)[None, :, None]
    y_path = ((1 - t) * y0[:, None] + t * y1[:, None]).reshape(p * interpolation_steps, -1)
  frames = sampler.decode(path.reshape(p * interpolation_steps, arch.z_dim), y_path)
  outputs["interpolations.png"] = image_grid.make_grid(frames, ncols=interpolation_steps)
  outputs["interpolations_z.npy"] = np.asarray(path)

  if attributes:
    if loaded_vectors is not None:
      vectors, names = loaded_vectors
      logging.info("Using %d attribute vectors from %s.", len(names), attribute_vectors)
    else:
      logging.info("Encoding %d %r images for the attribute vectors.", num_attribute_images,
                   config.data.train_split)
      z_ds, attrs = sampling.encode_dataset(
          sampler, sampling.dataset_batches(config.data, config.data.train_split, 256,
                                            num_attribute_images, seed=seed),
          num_attribute_images)
      av = sampling.attribute_vectors(z_ds, attrs[:, list(paper_cols)],
                                      names=sampling.PAPER_ATTRIBUTES)
      vectors, names = np.asarray(av.vectors), sampling.PAPER_ATTRIBUTES
      outputs[ATTRIBUTE_VECTORS_FILE] = dict(
          vectors=vectors, names=np.asarray(names), valid=av.valid,
          num_positive=av.num_positive, num_negative=av.num_negative,
          num_images=np.int64(len(z_ds)), step=np.int64(step))
    c = min(attribute_columns, len(held_out["image"]))
    x = held_out["image"][:c]
    y = y_for(c)
    z = sampler.encode(x, y, use_mean=use_mean, rng=k_attr)
    rows = [x, np.asarray(sampler.decode(z, y))]
    for a in range(len(names)):
      rows.append(np.asarray(sampler.decode(sampling.apply_attribute(z, vectors, a), y)))
    outputs["attributes.png"] = image_grid.make_grid(np.concatenate(rows), ncols=c)
    logging.info("attributes.png rows: input, reconstruction, then + %s.", ", + ".join(names))

  # --- Write. ------------------------------------------------------------------
  os.makedirs(outdir, exist_ok=True)
  written = {}
  for name, value in outputs.items():
    path_out = os.path.join(outdir, name)
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
               else "", outdir, step)
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    run(FLAGS.workdir, FLAGS.outdir, step=FLAGS.step, num=FLAGS.num, seed=FLAGS.seed,
        temperature=FLAGS.temperature, use_mean=FLAGS.use_mean,
        interpolation=FLAGS.interpolation, num_interpolations=FLAGS.num_interpolations,
        interpolation_steps=FLAGS.interpolation_steps, attributes=FLAGS.attributes,
        num_attribute_images=FLAGS.num_attribute_images,
        attribute_vectors=FLAGS.attribute_vectors,
        attribute_columns=FLAGS.attribute_columns, manual_dir=FLAGS.manual_dir,
        save_images=FLAGS.save_images)
  except (SampleError, checkpoint.CheckpointError, input_pipeline.DataError) as e:
    # User errors: one clear line, no traceback, no output files.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
