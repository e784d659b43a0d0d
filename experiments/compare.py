r"""The paper's comparison (Figs. 3-4, Table 1): four models and the conditional ones, trained and scored.

  python -m experiments.compare --outdir=/tmp/compare                  # digits, 3 seeds
  python -m experiments.compare --outdir=/tmp/compare --steps=20 --seeds=1   # a smoke run
  python -m experiments.compare --outdir=/tmp/cmp_photos --config=photos --seeds=2 --steps=1500 \
      --evaluations=6 --conditional_kinds=          # real photographs: the sharpness claims
  python -m experiments.compare --outdir=/tmp/celeba_cmp --config=experiments/configs/celeba_vaegan.py \
      --steps=62500 --features=inception --inception_weights=pt_inception.npz --conditional_kinds=

Trains VAE, VAE_Dis_l, VAE-GAN and GAN (and class-conditional GAN, VAE and
VAE-GAN where the data have labels) with the same architecture, data, steps
and seeds, evaluates them, and writes ``outdir/report.md`` with its PNGs and
``outdir/results.json``. Rerunning resumes unfinished runs and reuses finished
ones. See ``vaegan_jax/studies/compare.py`` for the metrics.
"""

import os

from absl import app
from absl import flags

from vaegan_jax.runtime import cli
from vaegan_jax.runtime.errors import FlagError

FLAGS = flags.FLAGS
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                               "default.py")
cli.define_config_file("config", _DEFAULT_CONFIG, "Base training config (architecture, "
                       "data, optimizer); kind, seed and steps are set per run.")
flags.DEFINE_string("outdir", None, "Directory for the runs, results.json and report.md.")
flags.DEFINE_integer("seeds", 3, "Seeds per model (0, 1, ...).")
flags.DEFINE_integer("steps", 400, "Training steps of every run (400: the digits report in about an hour on 2 CPU cores).")
flags.DEFINE_list("kinds", ["vae", "vae_dis_l", "vaegan", "gan"], "Unconditional models.")
flags.DEFINE_list("conditional_kinds", ["gan", "vae", "vaegan"],
                  "Class-conditional models (y = one-hot class); empty for none.")
flags.DEFINE_integer("num", 1000, "Samples and real images per evaluation.")
flags.DEFINE_integer("evaluations", 4, "Points of seed 0's FID curve (a checkpoint every "
                     "steps // evaluations steps).")
flags.DEFINE_enum("features", "auto", ["auto", "inception", "classifier"], "Feature space.")
flags.DEFINE_string("inception_weights", None, "The .npz of convert_inception_weights.py.")
flags.mark_flags_as_required(["outdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  # Seeds of one model compile the same step: load it from disk after the first.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(FLAGS.outdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  from vaegan_jax.studies import compare  # pylint: disable=g-import-not-at-top
  bad = [k for k in FLAGS.kinds + FLAGS.conditional_kinds if k not in compare.NAMES]
  if bad or FLAGS.seeds < 1 or FLAGS.steps < 1 or not 1 <= FLAGS.evaluations <= FLAGS.steps:
    raise FlagError(f"need kinds among {sorted(compare.NAMES)} (got {bad}), --seeds >= 1, "
                        "--steps >= 1 and 1 <= --evaluations <= --steps.")
  compare.run_comparison(FLAGS.config, FLAGS.outdir, seeds=FLAGS.seeds, steps=FLAGS.steps,
                         kinds=FLAGS.kinds, conditional_kinds=FLAGS.conditional_kinds,
                         num=FLAGS.num, features=FLAGS.features,
                         inception_weights=FLAGS.inception_weights,
                         evaluations=FLAGS.evaluations)
  print(open(os.path.join(FLAGS.outdir, "report.md")).read())


if __name__ == "__main__":
  cli.run(main)
