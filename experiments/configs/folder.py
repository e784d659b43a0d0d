"""VAE-GAN on a folder of your own images: the defaults of a first run.

  python -m experiments.train --config=folder --config.data.folder=/path/to/images \
      --workdir=/tmp/folder --dry_run      # checks the folder, prints the size; then without --dry_run

Images are center-cropped to a square and resized; every 20th file is held out
(``test``), the rest is ``train``. The defaults are for a first look, not the
paper's CelebA set-up:
  * 64x64x3 with the default config's narrow networks (widths 16-64, z 16):
    about 4x the digits model's cost per step (2 MB checkpoints, not 361 MB);
  * 5,000 steps of 64, a sample grid every 250 steps, a checkpoint every 500,
    an evaluation every 1,000 (reconstruction metrics; FID needs
    ``--config.eval_inception_weights``, as the folder has no labels);
  * the default config's short-run choices (balance rule, gamma 1e-2, lr 1e-3).
``--config.data.image_size=32`` (or 128) sets the model's size too. The paper's
networks on your images: ``--config=celeba_vaegan --config.data.name=folder
--config.data.folder=DIR``.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.data.update(dict(name="folder", image_size=64, channels=3, hflip=True,
                     train_split="train", eval_split="test"))
  c.num_train_steps = 5_000
  c.log_every = 50
  c.sample_every = 250
  c.checkpoint_every = 500
  c.eval_every = 1_000
  c.eval_num = 1_000
  return c
