"""VAE-GAN on any folder of images (center crop, resize), 64x64 paper model.

  python -m experiments.train --config=experiments/configs/folder.py \
      --config.data.folder=/path/to/images --workdir=/tmp/folder
"""

from experiments.configs import celeba_vaegan


def get_config():
  c = celeba_vaegan.get_config()
  c.data.update(dict(name="folder", hflip=True, train_split="train",
                     eval_split="test"))
  return c
