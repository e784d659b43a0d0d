"""The best checkpoint's record: ``workdir/best_checkpoint.json``.

``{"step", "metric", "value", "features"}``, written by the trainer when an
evaluation names a new best step (``config.keep_best``); ``checkpoint.py``
never prunes that step, and every loader takes ``step="best"``.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from absl import logging


BEST_FILE = "best_checkpoint.json"


def best_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), BEST_FILE)


def read_best(workdir: str) -> Optional[dict]:
  """The best-checkpoint record of ``workdir``, or None (none, or unreadable: warned)."""
  path = best_path(workdir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
    int(record["step"])
    return record
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning("Ignoring the unreadable best-checkpoint record %s (%s).", path, e)
    return None


def write_best(workdir: str, record: Optional[dict]) -> None:
  """Writes (atomically) or, with None, removes the best-checkpoint record."""
  path = best_path(workdir)
  if record is None:
    if os.path.exists(path):
      os.remove(path)
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
