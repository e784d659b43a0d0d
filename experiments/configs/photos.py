"""VAE-GAN on crops of real photographs (``data.name='photos'``), 32x32x3, for a 2-core CPU.

The photographs ship inside scikit-image and scikit-learn (nothing is
downloaded; ``pip install -e '.[photos]'``): 16 natural photographs, crops of
64-353 px resized to 32x32, a held-out band of each photograph for ``test``
(``vaegan_jax/data/photos.py``). Unlike the embedded digits they have real
high-frequency detail, so this is the config on which the paper's sharpness
claim can be tested on CPU:

  python -m experiments.compare --config=photos --outdir=/tmp/cmp_photos --seeds=2 --steps=1500

Networks and optimiser as the ``default`` config (narrow: widths 16-64, the
balance rule, gamma 1e-2, lr 1e-3) with z = 32; ``photos64`` has the paper's
64x64 networks, for a GPU. Evaluation features: the in-project classifier of
the 16 photographs (``photos_classifier``), trained once and cached.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.model.z_dim = 32
  c.data.update(dict(name="photos", image_size=32, channels=3, hflip=True,
                     train_split="train", eval_split="test"))
  # Crop i of a split is a pure function of (crop_seed, split, i).
  c.data.crop_seed = 0
  c.num_train_steps = 3_000
  c.log_every = 50
  c.sample_every = 250
  c.checkpoint_every = 500
  c.eval_every = 1_000
  c.eval_num = 1_000
  return c
