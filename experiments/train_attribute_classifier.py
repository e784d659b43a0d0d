r"""Trains the attribute classifier on real images (paper Sec. 5.3 metric).

  python -m experiments.train_attribute_classifier --workdir=/tmp/attr_clf \
      [--config=experiments/configs/attribute_classifier.py] \
      [--config.data.manual_dir=/path/to/celeba] [--config.num_train_steps=20000]

Writes checksummed Orbax checkpoints (params, BN statistics, Adam state, step,
and the config as JSON with the dataset's attribute names) to
``workdir/classifier/checkpoints``, TensorBoard scalars and ``metrics.jsonl``
to ``workdir/classifier``; running the same command again resumes from the
newest good checkpoint, and SIGTERM/Ctrl-C save the current step and exit 0.
Score conditional generators with it using
``python -m experiments.evaluate_attributes``. The work is one library call,
``vaegan_jax.classifier.train_and_evaluate``.
"""

import os

from absl import app
from absl import flags
from absl import logging

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order

from vaegan_jax import classifier

FLAGS = flags.FLAGS
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                               "attribute_classifier.py")
cli.define_config_file(
    "config", _DEFAULT_CONFIG, "Classifier config file; fields are overridable with "
    "--config.field=value.")
flags.DEFINE_string("workdir", None, "Directory for the classifier checkpoints.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  clf = classifier.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  logging.info("Classifier at step %d of %d; checkpoints in %s.", clf.step,
               FLAGS.config.num_train_steps,
               classifier.classifier_dir(FLAGS.workdir))


if __name__ == "__main__":
  cli.run(main)
