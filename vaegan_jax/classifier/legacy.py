"""Classifier checkpoints of the layout before checksums: read, never written.

Old runs saved ``<step>/{state,config}`` right in ``classifier_dir(workdir)``
(no ``integrity`` item, no ``checkpoints/`` folder). They are still restored
(unverified, with a warning) and resumed from; every new checkpoint goes to
``checkpoints/`` (``train.py``).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from vaegan_jax.classifier.inference import Classifier
from vaegan_jax.classifier.model import ClassifierError
from vaegan_jax.classifier.model import state_template
from vaegan_jax.runtime import checkpoint


def steps(root: str) -> list[int]:
  """Steps in the layout before checksums: ``root/<step>/{state,config}``."""
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root)
                if d.isdigit() and os.path.isdir(os.path.join(root, d, "state")))


def read_config(root: str, step: int) -> dict:
  """The config dict saved with a legacy checkpoint."""
  checkpointer = ocp.Checkpointer(ocp.JsonCheckpointHandler())
  try:
    return checkpointer.restore(epath.Path(root) / str(step) / "config",
                                args=ocp.args.JsonRestore())
  except Exception as e:  # pylint: disable=broad-except
    raise ClassifierError(f"Attribute classifier: the config of checkpoint {root}/{step} is "
                          f"unreadable ({type(e).__name__}); train again in a fresh "
                          "--workdir.") from e
  finally:
    checkpointer.close()


def restore_state(root: str, template: Any, step: int) -> Any:
  """The state of a legacy checkpoint in ``template``'s structure (read unverified)."""
  options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=False)
  mngr = ocp.CheckpointManager(root, options=options, item_names=("state", "config"))
  try:
    return checkpoint.restore_state(mngr, template, step)
  except checkpoint.CheckpointError as e:
    raise ClassifierError(f"Attribute classifier: {e}") from e
  finally:
    mngr.close()


def restore(root: str, step: int) -> tuple[Classifier, ml_collections.ConfigDict]:
  """(Classifier, its training config) of legacy checkpoint ``root/<step>``."""
  raw = dict(read_config(root, step))
  names = tuple(raw.pop("attribute_names", ()))
  config = ml_collections.ConfigDict(checkpoint.lists_to_tuples(raw))
  arch, template = state_template(config)
  state = restore_state(root, template, step)
  return Classifier(arch, state.params, state.batch_stats, attribute_names=names,
                    step=int(state.step)), config
