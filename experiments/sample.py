r"""Samples, reconstructions, interpolations and attribute edits from a checkpoint.

  python -m experiments.sample --workdir=/tmp/vaegan --outdir=/tmp/vaegan/out \
      [--step=N|best] [--num=64] [--seed=0] [--temperature=1.0] [--use_mean] \
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

The work is one library call, ``vaegan_jax.sampling_outputs.write_samples``
(its docstring has the same list, with shapes): a notebook gets the same files
with it, or the arrays without writing anything with ``sample_outputs``.
"""

from __future__ import annotations


from absl import app
from absl import flags

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order

from vaegan_jax import sampling_outputs

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the flags, only when run as a program (importing defines none)."""
  flags.DEFINE_string("workdir", None, "Training workdir (with checkpoints/).")
  flags.DEFINE_string("outdir", None, "Where to write the PNGs and .npy/.npz files.")
  flags.DEFINE_string("step", None, "Checkpoint step: N, 'latest' (the default) or 'best' "
                      "(the best by the run's config.keep_best metric).")
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sampling_outputs.write_samples(
      FLAGS.workdir, FLAGS.outdir, step=FLAGS.step, num=FLAGS.num, seed=FLAGS.seed,
      temperature=FLAGS.temperature, use_mean=FLAGS.use_mean,
      interpolation=FLAGS.interpolation, num_interpolations=FLAGS.num_interpolations,
      interpolation_steps=FLAGS.interpolation_steps, attributes=FLAGS.attributes,
      num_attribute_images=FLAGS.num_attribute_images,
      attribute_vectors=FLAGS.attribute_vectors,
      attribute_columns=FLAGS.attribute_columns, manual_dir=FLAGS.manual_dir,
      save_images=FLAGS.save_images)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
