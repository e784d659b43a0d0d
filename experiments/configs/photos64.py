"""The paper's 64x64 networks on crops of real photographs (``data.name='photos'``), for a GPU.

As ``celeba_vaegan`` (Larsen et al.'s CelebA networks: widths 64-256, z = 128,
dense 2048; gamma 1e-6, RMSProp 3e-4, batch 64, the paper's Algorithm 1
without the balance rule) on the ``photos`` data at 64x64 (crops of 64-353 px,
never enlarged; ``vaegan_jax/data/photos.py``). 5,000 steps take about 2 min on
one H200 in float32 (23.7 ms/step, ``docs/performance.md``); on 2 CPU cores
use ``photos`` instead. Evaluation features: ``photos_classifier``.
"""

from experiments.configs import celeba_vaegan


def get_config():
  c = celeba_vaegan.get_config()
  c.data.update(dict(name="photos", image_size=64, channels=3, hflip=True,
                     train_split="train", eval_split="test"))
  c.data.crop_seed = 0
  c.num_train_steps = 5_000
  c.log_every = 100
  c.sample_every = 500
  c.checkpoint_every = 1_000
  c.eval_every = 2_500
  c.eval_num = 2_000
  return c
