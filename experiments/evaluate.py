r"""Evaluates checkpoints: FID, KID, precision/recall, classifier scores, reconstructions.

  python -m experiments.evaluate --workdir=/tmp/vaegan                 # latest checkpoint
  python -m experiments.evaluate --workdir=/tmp/vaegan --step=all      # every one without a report
  python -m experiments.evaluate --workdir=/tmp/celeba --features=inception \
      --inception_weights=/path/pt_inception-2015-12-05.npz

Writes ``workdir/eval/step_<N>.json`` and TensorBoard scalars under ``eval/``
in ``workdir``, and prints a short table. The features (and so what the
numbers mean) are named in the JSON: ``inception_v3_fid`` is the standard FID;
``<dataset>_classifier`` is the project's own classifier, trained once on the
dataset's labels and cached. See ``vaegan_jax/evaluation/``.
"""

from absl import app
from absl import flags
from absl import logging

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order
from vaegan_jax.runtime.errors import FlagError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (with checkpoints/).")
flags.DEFINE_string("step", None, "Checkpoint step: N, 'best' (by the run's config.keep_best), "
                    "'all' (every one without a report made with these settings) or unset "
                    "(the latest).")
flags.DEFINE_integer("num", 10_000, "Samples and real images; capped by the real split's size.")
flags.DEFINE_enum("features", "auto", ["auto", "inception", "classifier"],
                  "Feature space: Inception (needs --inception_weights), the dataset's "
                  "classifier, or auto (Inception if weights are given, else the classifier).")
flags.DEFINE_string("inception_weights", None, "The .npz of experiments/"
                    "convert_inception_weights.py (default: $VAEGAN_INCEPTION_WEIGHTS).")
flags.DEFINE_string("classifier_dir", None, "Feature classifier workdir to use (or train) "
                    "instead of the cache ($VAEGAN_CACHE_DIR, ~/.cache/vaegan_jax).")
flags.DEFINE_integer("seed", 0, "Seed of the samples' z, the ELBO's eps and KID's subsets.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vaegan_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from vaegan_jax.evaluation import reports  # pylint: disable=g-import-not-at-top
  step = FLAGS.step
  if step not in (None, "all", "latest", "best"):
    try:
      step = int(step)
    except ValueError:
      raise FlagError(
          f"--step must be an integer, 'best', 'all' or unset, got {step!r}.") from None
  if FLAGS.num < 2:
    raise FlagError(f"--num must be >= 2, got {FLAGS.num}.")
  written = evaluator.evaluate_workdir(
      FLAGS.workdir, step, num=FLAGS.num, features=FLAGS.features,
      inception_weights=FLAGS.inception_weights, seed=FLAGS.seed,
      classifier_dir=FLAGS.classifier_dir)
  for report in written:
    print(reports.format_table(report))
    logging.info("Wrote %s.", reports.report_path(FLAGS.workdir, report["step"]))


if __name__ == "__main__":
  cli.run(main)
