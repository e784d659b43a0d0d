"""Attribute classifier on real CelebA images (for the paper's Sec. 5.3 metric).

The classifier scores images made by attribute-conditional generators
(``experiments/evaluate_attributes.py``); it is trained on real images only.
Same data and preprocessing as ``celeba_vaegan.py`` (64x64 crops, h-flips: the
40 CelebA attributes do not change under a horizontal flip). Network: the
discriminator's conv stack with 40 sigmoid outputs (see
``vaegan_jax/classifier/model.py``), Adam 1e-3, batch 64.

  python -m experiments.train_attribute_classifier --workdir=/tmp/attr_clf \
      --config.data.manual_dir=/path/to/celeba
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import celeba_vaegan


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = celeba_vaegan.get_config().data
  # Typed placeholders (None by default) so that --config.data.manual_dir=...
  # works: ml_collections cannot override a plain None field from the command line.
  c.data.manual_dir = config_dict.placeholder(str)
  c.data.data_dir = config_dict.placeholder(str)
  # 'validation' for model selection; the generators are compared on 'test'.
  c.data.eval_split = "validation"
  c.model = ml_collections.ConfigDict(dict(
      num_attributes=40, first=32, widths=(64, 128, 256), dense=512,
      bn_momentum=0.9, conv_impl="auto"))
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.num_train_steps = 20_000  # ~8 epochs of CelebA's 162,770 training images.
  c.log_every = 100
  c.eval_every = 2_000
  c.num_eval_examples = 2_000
  c.checkpoint_every = 2_000
  c.keep_checkpoints = 2
  return c
