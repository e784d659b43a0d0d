"""Default config: VAE-GAN on the embedded digits (scikit-learn, 1,797 images).

Needs no download. 32x32x1 images and a narrow version of the paper's
networks (same layers, widths / 4 to / 2) so that 2 CPU cores reach
recognisable samples of all ten digits within minutes (all ten classes in
every grid from step 200 on; timings in docs/performance.md).

Three choices differ from the paper's defaults because the short run needs
them: ``learning_rate=1e-3`` (paper 3e-4; see below), and two taken from the
authors' released code:
  * ``balance=True``: the equilibrium rule. Without it the saturating
    decoder loss vanishes within 100 steps (Dis accuracy 0.9999 measured here).
  * ``recon_in_gan=False``: Dis sees [x; Dec(z_p)] only, as in the released
    CelebA run; a third fewer decoder/discriminator images per step.
Every field is overridable, e.g. ``--config.batch_size=128 --config.gamma=1e-5``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Model kind: 'vaegan' | 'vae' | 'gan' | 'vae_dis_l'.
  c.kind = "vaegan"

  # Losses and routing (see vaegan_jax/train_step.py).
  # Weight of L_llike in Dec's loss, against the GAN term. The paper's 1e-6 (CelebA,
  # 8x8x256 Dis_l) leaves the short digits run with samples of few classes; 1e-2
  # covered all ten (measured: 10/10 classes at step 800 vs 9/10, no 7s, at 1e-6).
  c.gamma = 1e-2
  c.gan_form = "saturating"  # paper; or 'non_saturating' (-log D).
  c.recon_in_gan = False  # paper's Algorithm 1: True; the authors' CelebA run: False.
  c.pixel_sigma = 1.0  # 'vae' kind only: pixel-wise Gaussian std.
  c.weight_decay = 0.0  # authors' code: 1e-5 (L2 on conv/dense kernels).
  c.balance = True  # authors' equilibrium rule (code only; paper configs: False).
  c.balance_equilibrium = 0.68
  c.balance_margin = 0.35

  # Optimizer: RMSProp, one per network. The paper's 3e-4 leaves the short run's
  # prior samples far behind its reconstructions; 1e-3 measured better at 1,000
  # steps (digits-classifier FID 10.5 -> 5.9, class coverage 0.9 -> 1.0).
  c.learning_rate = 1e-3
  c.lr_schedule = "constant"  # or 'authors'
  c.rmsprop_decay = 0.9
  c.rmsprop_eps = 1e-8
  c.rmsprop_eps_in_sqrt = False  # authors: eps outside the sqrt.

  # model.dtype: 'float32' | 'bfloat16'. bfloat16 is a supported training mode on GPU/TPU:
  # the convs and hidden dense layers compute in bf16 (float32 accumulation); params,
  # optimizer state, BatchNorm (statistics, normalisation, backward), bias adds, the
  # mu/logvar/logit heads, all losses and the KL stay float32, and checkpoints hold the
  # same float32 state. Per network its gradient is 0.6-28 % (cosine >= 0.96) from
  # float32's, about what float32's own gradient moves under a 2**-9 parameter change
  # (tests/bf16_test.py). On CPU it is 1.15-1.25x slower than float32.
  c.model = ml_collections.ConfigDict(dict(
      image_size=32, channels=1, z_dim=16,
      enc_widths=(16, 32, 64), enc_dense=128,
      dec_dense_channels=64, dec_widths=(64, 32, 16),
      dis_first=16, dis_widths=(32, 64, 64), dis_dense=128,
      num_attributes=0, bn_momentum=0.9, bn_eps_conv=1e-5, bn_eps_dense=1e-5,
      init="default", conv_impl="auto", dtype="float32"))

  c.data = ml_collections.ConfigDict(dict(
      name="digits", image_size=32, channels=1, hflip=False, train_split="train",
      eval_split="test", num_examples=0,
      # Class labels as the attribute vector y (one-hot) of conditional models:
      # with model.num_attributes=10 on digits, mnist or cifar10.
      label_attributes=False,
      # Input workers: 0 reads in grain's threads; N > 0 decodes in N spawned
      # processes (for JPEG folders or CelebA on a fast accelerator). Same batches.
      worker_processes=0))
  # Typed placeholders (None by default) so --config.data.manual_dir=DIR works.
  c.data.data_dir = config_dict.placeholder(str)  # TFDS data dir (mnist, cifar10)
  c.data.manual_dir = config_dict.placeholder(str)  # CelebA's manual files
  c.data.folder = config_dict.placeholder(str)  # 'folder' dataset

  c.batch_size = 64
  # k > 1 runs k steps per dispatch (one lax.scan): the same updates, for the host
  # that can't keep a GPU busy one small step at a time. Logs, grids, evaluations
  # and checkpoints stay on their steps (blocks end there; a k that divides every
  # *_every compiles once); a stop waits for the block in flight.
  c.steps_per_dispatch = 1
  c.num_train_steps = 2000
  c.log_every = 50
  c.checkpoint_every = 250
  c.keep_checkpoints = 3
  # Resuming with another kind or data is refused unless this is True
  # (vaegan_jax/train_config.py EXPERIMENT_FIELDS); other changes are logged.
  c.allow_config_change = False
  c.sample_every = 100
  c.num_sample_images = 64
  # Evaluation during training (vaegan_jax/evaluation): FID/KID/precision/recall
  # of eval_num samples in the features of eval_features ('auto': Inception if
  # eval_inception_weights is set, else the dataset's own classifier), and the
  # held-out reconstruction metrics; workdir/eval/step_<N>.json, TensorBoard eval/.
  # 0 turns it off.
  c.eval_every = 500
  # Keep the best checkpoint by this metric of the evaluation report (SECTION.KEY,
  # lower or higher is better by the metric) beside the newest keep_checkpoints:
  # GAN training is not monotone. Open it with --step=best. '' keeps none.
  c.keep_best = "samples.fid"
  c.eval_num = 1000
  c.eval_features = "auto"
  c.eval_inception_weights = config_dict.placeholder(str)
  link_image_shape(c)
  return c


def link_image_shape(c: ml_collections.ConfigDict) -> None:
  """One value drives both ``data.image_size/channels`` and ``model.image_size/channels``:
  the model's fields become references to the data's, so ``--config.data.image_size=64``
  (or ``model.``) sets both. Call again after replacing ``c.model``."""
  c.model.image_size = c.data.get_ref("image_size")
  c.model.channels = c.data.get_ref("channels")
