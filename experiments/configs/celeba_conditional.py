"""Attribute-conditional VAE-GAN on CelebA (paper Sec. 5.3).

The paper conditions Enc, Dec and Dis on an attribute vector y and trains on
LFW (Labeled Faces in the Wild, with its attribute scores). LFW is not
available offline here, so this config uses CelebA and its 40 binary
attributes (y in {0, 1}^40), otherwise the networks, losses and data of
``celeba_vaegan.py``. As in the authors' early code, y is tiled spatially and
appended to the inputs of Enc and Dis (and to their dense inputs), and
appended to z for Dec (``vaegan_jax/models.py``).

The paper compares GAN, VAE and VAE-GAN, all conditional: train one workdir
per kind and score them together with an attribute classifier:

  python -m experiments.train --workdir=/tmp/cond_vaegan \
      --config=experiments/configs/celeba_conditional.py
  python -m experiments.train --workdir=/tmp/cond_gan \
      --config=experiments/configs/celeba_conditional.py --config.kind=gan
  python -m experiments.train --workdir=/tmp/cond_vae \
      --config=experiments/configs/celeba_conditional.py --config.kind=vae
  python -m experiments.train_attribute_classifier --workdir=/tmp/attr_clf
  python -m experiments.evaluate_attributes --classifier_workdir=/tmp/attr_clf \
      --workdir=/tmp/cond_gan,/tmp/cond_vae,/tmp/cond_vaegan --outdir=/tmp/attr_eval
"""

import ml_collections

from experiments.configs import celeba_vaegan


def get_config() -> ml_collections.ConfigDict:
  c = celeba_vaegan.get_config()
  c.model.num_attributes = 40  # all of list_attr_celeba.txt, in file order.
  return c
