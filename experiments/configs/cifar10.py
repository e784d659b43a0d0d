"""VAE-GAN on TFDS cifar10 with the authors' 32x32 variant (z=256, gamma ~1e-5).

Needs a prepared TFDS cifar10 in ``data.data_dir`` (array_record format).
"""

import dataclasses

import ml_collections

from experiments.configs import default
from vaegan_jax import models


def get_config():
  c = default.get_config()
  arch = dataclasses.asdict(models.Architecture.small32(channels=3))
  c.model = ml_collections.ConfigDict(arch)
  c.gamma = 1e-5
  c.learning_rate = 3e-4  # paper
  c.data.update(dict(name="cifar10", image_size=32, channels=3, hflip=True,
                     train_split="train", eval_split="test"))
  default.link_image_shape(c)
  c.num_train_steps = 50_000
  c.eval_every = 5_000
  c.eval_num = 5_000
  return c
