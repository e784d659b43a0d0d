r"""Trains VAE-GAN (or a baseline) and writes checkpoints, metrics and sample grids.

  python -m experiments.train --workdir=/tmp/vaegan                  # digits, no download
  python -m experiments.train --workdir=/tmp/celeba \
      --config=celeba_vaegan --config.batch_size=128        # a name in experiments/configs/
  python -m experiments.train --workdir=/tmp/x --config=folder --config.data.folder=DIR --dry_run

Running the same command again resumes from the latest checkpoint in workdir.
Multi-host: pass --jax_coordinator/--num_processes/--process_id, or
--jax_distributed_auto for jax.distributed's cluster auto-detection.
"""

import os

from absl import app
from absl import flags

from vaegan_jax.cpu import host_memory
from vaegan_jax.runtime import cli

FLAGS = flags.FLAGS
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                               "default.py")
cli.define_config_file(
    "config", _DEFAULT_CONFIG, "Training config file; fields are overridable with "
    "--config.field=value.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_string("jax_coordinator", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "Index of this process in a multi-host run.")
flags.DEFINE_bool("jax_distributed_auto", False,
                  "Call jax.distributed.initialize() with cluster auto-detection.")
flags.DEFINE_bool("dry_run", False, "Check everything that can fail before compiling (config, "
                  "data, workdir), print the resolved config and the dataset, and exit.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.jax_coordinator or FLAGS.jax_distributed_auto:
    if FLAGS.jax_coordinator:
      jax.distributed.initialize(coordinator_address=FLAGS.jax_coordinator,
                                 num_processes=FLAGS.num_processes,
                                 process_id=FLAGS.process_id)
    else:
      jax.distributed.initialize()
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  from vaegan_jax import train_config  # pylint: disable=g-import-not-at-top
  if FLAGS.dry_run:
    print(train_config.dry_run(FLAGS.config, FLAGS.workdir))
    return
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()  # Before JAX allocates anything.
  cli.run(main)
