r"""Which BatchNorm statistics should inference-mode sampling use? A measurement.

  python -m experiments.bn_statistics                      # digits, 300 steps, ~5 min on 2 CPUs
  python -m experiments.bn_statistics --steps=600 --config.gamma=1e-6 --out=/tmp/bn.json

The measurement is ``vaegan_jax.studies.bn_statistics.measure``; see its
docstring for what is compared.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags

from vaegan_jax.runtime import cli
from vaegan_jax.studies import bn_statistics

FLAGS = flags.FLAGS
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                               "default.py")
cli.define_config_file("config", _DEFAULT_CONFIG, "Training config; fields overridable.")
flags.DEFINE_integer("steps", 300, "Training steps.")
flags.DEFINE_integer("num", 1000, "Prior samples decoded with each set of statistics.")
flags.DEFINE_string("out", None, "Optional JSON file for the numbers.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = bn_statistics.measure(FLAGS.config, FLAGS.steps, FLAGS.num)
  text = json.dumps(result, indent=1)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  cli.run(main)
