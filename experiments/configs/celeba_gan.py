"""The paper's CelebA 'gan' baseline: same networks and data as celeba_vaegan.py."""

from experiments.configs import celeba_vaegan


def get_config():
  c = celeba_vaegan.get_config()
  c.kind = "gan"
  return c
