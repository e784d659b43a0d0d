"""Gradient routing by stop_gradient masks: the one place that says which loss
reaches which parameters (Larsen et al. 2016, Algorithm 1).

Each mask has the forward value of its input and a chosen gradient:

* ``scale_grad(a, c)``  = c*a + (1-c)*sg(a): gradient c*g.
* ``reverse_grad(a)``   = 2*sg(a) - a:       gradient -g.
* ``block_grad(a)``     = sg(a):             gradient 0.

Applied in ``train_step.routed_loss`` so that ONE backward pass of
L_prior + L_llike + L_GAN(Dis's BCE) gives, per group:

    Enc:  d/dEnc (L_prior + L_llike)         -- GAN path sees sg(z)
    Dec:  d/dDec (gamma*L_llike - L_GAN)     -- Dec params scaled by gamma on the
                                                reconstruction path only; x_p
                                                reversed before Dis (saturating)
    Dis:  d/dDis L_GAN                       -- Dis params blocked on the Dis_l path
"""

from __future__ import annotations

import jax
from jax import lax


def block_grad(tree):
  return jax.tree.map(lax.stop_gradient, tree)


def scale_grad(tree, c: float):
  """Identity forward; gradient multiplied by ``c`` (``c`` a Python float)."""
  if c == 1.0:
    return tree
  if c == 0.0:
    return block_grad(tree)
  return jax.tree.map(lambda a: c * a + (1.0 - c) * lax.stop_gradient(a), tree)


def reverse_grad(tree):
  """Identity forward; gradient negated."""
  return jax.tree.map(lambda a: 2.0 * lax.stop_gradient(a) - a, tree)
