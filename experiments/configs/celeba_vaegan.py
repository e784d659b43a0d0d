"""The paper's CelebA VAE-GAN: 64x64, z=128, RMSProp 3e-4, batch 64, gamma 1e-6.

Data: TFDS-style manual files of CelebA (img_align_celeba.zip,
list_eval_partition.txt, list_attr_celeba.txt) in ``data.manual_dir``
(default ~/tensorflow_datasets/downloads/manual). Preprocessing as the paper:
crop rows 40:188, cols 15:163, resize to 64x64, scale to [-1, 1], flip.

Paper vs the authors' code (use the overrides to get the code's choices):
  --config.recon_in_gan=False           the released CelebA run shows Dis [x; x_p] only
  --config.model.enc_dense=1024         code's encoder dense width
  --config.model.bn_momentum=0.9 --config.model.bn_eps_conv=1e-6
  --config.model.init=authors           uniform +-1/sqrt(3 fan_in)
  --config.weight_decay=1e-5 --config.lr_schedule=authors --config.balance=True
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.kind = "vaegan"
  c.gamma = 1e-6
  c.recon_in_gan = True  # paper's Algorithm 1
  c.balance = False  # paper: no equilibrium rule
  c.learning_rate = 3e-4  # paper
  c.model = ml_collections.ConfigDict(dict(
      image_size=64, channels=3, z_dim=128,
      enc_widths=(64, 128, 256), enc_dense=2048,
      dec_dense_channels=256, dec_widths=(256, 128, 32),
      dis_first=32, dis_widths=(128, 256, 256), dis_dense=512,
      num_attributes=0, bn_momentum=0.99, bn_eps_conv=1e-5, bn_eps_dense=1e-5,
      init="default", conv_impl="auto", dtype="float32"))
  c.data.update(dict(name="celeb_a", image_size=64, channels=3, hflip=True,
                     train_split="train", eval_split="test"))
  default.link_image_shape(c)
  c.batch_size = 64
  c.num_train_steps = 62_500  # the authors' 250 epochs of 250 batches
  c.log_every = 100
  c.checkpoint_every = 2_000
  c.sample_every = 1_000
  # FID on CelebA: pass the converted Inception weights for the standard one
  # (--config.eval_inception_weights=fid_inception.npz); without them the
  # first evaluation trains the 40-attribute classifier once (cached).
  c.eval_every = 5_000
  c.eval_num = 5_000
  return c
