"""The BatchNorm-statistics measurement (experiments/bn_statistics.py) runs and reports each set."""

import numpy as np
import pytest

from experiments.configs import tiny
from vaegan_jax.studies import bn_statistics


@pytest.mark.slow  # ~1.5-3 min on 2 cores: trains, then the digits classifier's FID
def test_measure_compares_every_set_of_statistics():
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  r = bn_statistics.measure(c, steps=3, num=32)
  assert r["config"]["steps"] == 3
  mse = r["heldout_recon_mse"]
  assert {"kept", "prior_pass", "recon_pass", "train_mode"} <= set(mse)
  assert all(np.isfinite(v) for v in mse.values())
  # The per-pass statistics are really different from the blend after 3 steps.
  assert max(r["mean_abs_pixel_difference"].values()) > 0
  assert set(r["dis_l_error_heldout"]) == {"kept", "dis_l_pass", "gan_pass"}
