"""VAE-GAN on TFDS mnist (28x28 zero-padded to 32x32x1), the digits-sized model.

Needs a prepared TFDS mnist in ``data.data_dir`` (array_record format):
``tfds build mnist --data_dir=DIR --file_format=array_record`` on a machine
with internet access.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.data.update(dict(name="mnist", image_size=32, channels=1, train_split="train",
                     eval_split="test"))
  c.num_train_steps = 20_000
  c.learning_rate = 3e-4  # paper; the default's 1e-3 is tuned for its 2,000 steps only
  c.eval_every = 2_000
  c.eval_num = 5_000
  return c
