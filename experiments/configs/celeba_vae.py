"""The paper's CelebA 'vae' baseline: same networks and data as celeba_vaegan.py."""

from experiments.configs import celeba_vaegan


def get_config():
  c = celeba_vaegan.get_config()
  c.kind = "vae"
  return c
