"""What is declared is what is tested: the installed versions meet pyproject's minimums, and
the libraries' private or version-dependent behaviour the code relies on is still there.

Orbax's side (our own pruning, the commit error that ``wait_until_finished``
re-raises, step listing that skips ``.deleting-*`` and temporary directories)
is exercised by tests/checkpoint_test.py, which forces Orbax's late finalize;
grain's ``_getitems`` read path is guarded here.
"""

import importlib.metadata
import os
import re

import grain
import numpy as np
import pytest

from vaegan_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _declared() -> list[str]:
  text = open(os.path.join(REPO, "pyproject.toml")).read()
  block = text[text.index("dependencies = ["):]
  block = block[:block.index("]\n")]
  return re.findall(r'"([^"]+)"', block)


def test_installed_versions_meet_the_declared_minimums():
  version = pytest.importorskip("packaging.version")
  requirements = pytest.importorskip("packaging.requirements")
  declared = _declared()
  assert any(r.startswith("cloudpickle") for r in declared)  # imported by data/pipeline.py
  for line in declared:
    req = requirements.Requirement(line)
    installed = importlib.metadata.version(req.name)
    assert req.specifier.contains(version.Version(installed), prereleases=True), (
        f"{req.name} {installed} is below the declared {req.specifier}")


def test_epoch_shuffle_reads_the_same_through_grains_getitems():
  """``EpochShuffle`` overrides grain's private ``_getitems`` (the batch-pushdown read, off by
  default in grain 0.2.18, where batches read item by item). Either path must give the
  documented order; if a grain release drops or changes ``_getitems``, fail here."""
  assert hasattr(grain.MapDataset, "_getitems"), "grain.MapDataset._getitems is gone"
  ds = pipeline.EpochShuffle(grain.MapDataset.range(100), seed=3)
  indices = list(range(95, 110))  # straddles epochs 0 and 1
  # Epoch e reads the parent at e * 100 + perm_e[i]; grain's range wraps that to perm_e[i].
  want = [int(np.random.default_rng([3, e]).permutation(100)[i])
          for e, i in (divmod(k, 100) for k in indices)]
  assert want[:5] != want[5:10]
  assert [ds[k] for k in indices] == want
  assert list(ds._getitems(indices)) == want  # pylint: disable=protected-access
  plan = pipeline.batch_plan(100, 10, seed=3)
  np.testing.assert_array_equal(plan[4]["index"],
                                np.random.default_rng([3, 0]).permutation(100)[40:50])
