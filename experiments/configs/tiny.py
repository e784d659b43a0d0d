"""Tiny config for tests and smoke runs: 16x16x1 digits, narrow networks."""

from experiments.configs import default


def get_config():
  c = default.get_config()
  # The paper's routing (Algorithm 1), which the tests check in full.
  c.recon_in_gan = True
  c.balance = False
  c.gamma = 1e-6
  c.learning_rate = 3e-4
  c.model.update(dict(image_size=16, channels=1, z_dim=8, enc_widths=(8, 16, 16),
                      enc_dense=32, dec_dense_channels=16, dec_widths=(16, 16, 8),
                      dis_first=8, dis_widths=(16, 16, 16), dis_dense=32))
  c.data.image_size = 16
  c.batch_size = 16
  c.num_train_steps = 20
  c.log_every = 5
  c.checkpoint_every = 10
  c.sample_every = 10
  c.num_sample_images = 16
  c.eval_every = 0  # Tests that want evaluation turn it on.
  c.eval_num = 64
  return c
