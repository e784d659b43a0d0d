r"""Scores attribute-conditional generators with an attribute classifier (Sec. 5.3).

  python -m experiments.evaluate_attributes --classifier_workdir=/tmp/attr_clf \
      --workdir=/tmp/cond_gan,/tmp/cond_vae,/tmp/cond_vaegan --outdir=/tmp/attr_eval \
      [--split=test] [--num_examples=0] [--seed=0] [--temperature=1.0]

For every example i of the held-out split (default: the first generator's
``data.eval_split``, i.e. CelebA 'test'), each conditional generator decodes
one image Dec(z_i, y_i) with z_i ~ N(0, T^2 I) and y_i the example's attribute
vector; the classifier (trained on real images with
``experiments/train_attribute_classifier.py``) predicts attribute
probabilities p_i in [0, 1] for it. As in the paper, the table reports, per
generator and for the real test images themselves (the reference row):

  cosine = mean over examples of cos(y_i, p_i)   (y_i in {0, 1}^A, p_i in
           [0, 1]^A; an example with an all-zero y_i or p_i counts as 0)
  mse    = mean over all examples and attributes of (y_ia - p_ia)^2

plus the accuracy of the thresholded predictions (p > 0.5). See
``vaegan_jax.evaluation.metrics.attribute_similarity``. The paper used LFW;
the comparison across model kinds (GAN, VAE, VAE-GAN) is one row per
``--workdir``. Writes ``outdir/attribute_similarity.json`` and prints the table.

The work is one library call, ``vaegan_jax.evaluation.attributes.evaluate_attributes``.
"""

from __future__ import annotations


from absl import app
from absl import flags

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order

from vaegan_jax.evaluation import attributes

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the flags, only when run as a program (tests import other binaries' flags)."""
  flags.DEFINE_string("workdir", None, "Conditional generator workdir(s), comma-separated.")
  flags.DEFINE_string("classifier_workdir", None, "Workdir of the attribute classifier.")
  flags.DEFINE_string("outdir", None, f"Where to write {attributes.OUTPUT_FILE}.")
  flags.DEFINE_string("split", None, "Held-out split (default: the data's eval_split).")
  flags.DEFINE_integer("num_examples", 0, "Use the first N examples of the split (0: all).")
  flags.DEFINE_integer("seed", 0, "Seed of the z draws (the same z for every generator).")
  flags.DEFINE_float("temperature", 1.0, "Prior std T of z.")
  flags.DEFINE_integer("batch_size", 256, "Images per decode/classify call.")
  flags.DEFINE_integer("step", None, "Generator checkpoint step (default: latest each).")
  flags.DEFINE_string("manual_dir", None, "Override data.manual_dir of the saved configs.")
  flags.mark_flags_as_required(["workdir", "classifier_workdir", "outdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = attributes.evaluate_attributes(
      FLAGS.workdir.split(","), FLAGS.classifier_workdir, FLAGS.outdir, split=FLAGS.split,
      num_examples=FLAGS.num_examples, seed=FLAGS.seed, temperature=FLAGS.temperature,
      batch_size=FLAGS.batch_size, step=FLAGS.step, manual_dir=FLAGS.manual_dir)
  print(attributes.format_table(result))


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
