"""Where training metrics go: console, TensorBoard events, metrics.jsonl, PNG grids.

Only process 0 writes (``enabled=False`` elsewhere). TensorBoard event files
are written with tensorboardX, so no TensorFlow is needed. Nothing is created
before the first write: a run refused before its first step (bad data found
while setting up) leaves no empty event file or ``metrics.jsonl`` behind.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import numpy as np
from absl import logging

from vaegan_jax.runtime import image_grid


class MetricWriter:
  """Writes scalars and image grids for one workdir."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb_writer = None
    self._jsonl_file = None
    if enabled:  # fail early where tensorboardX is missing, but create no file yet
      import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import

  @property
  def _tb(self):
    if self._tb_writer is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb_writer = SummaryWriter(logdir=self.workdir, flush_secs=30)
    return self._tb_writer

  @property
  def _jsonl(self):
    if self._jsonl_file is None:
      os.makedirs(self.workdir, exist_ok=True)
      self._jsonl_file = open(os.path.join(self.workdir, "metrics.jsonl"), "a", encoding="utf-8")
    return self._jsonl_file

  def write_scalars(self, step: int, scalars: Mapping[str, float],
                    console_extra: Optional[str] = None) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self._jsonl.flush()
    keys = [k for k in ("kl_prior", "llike", "gan_bce", "dec_gan", "dis_accuracy")
            if k in clean]
    text = " ".join(f"{k}={clean[k]:.4g}" for k in keys)
    logging.info("step %d %s %s", step, text, console_extra or "")

  def write_eval(self, step: int, scalars: Mapping[str, float]) -> None:
    """Evaluation scalars (tags under ``eval/``): TensorBoard and metrics.jsonl, no console."""
    if not self.enabled or not scalars:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), step)
    self._tb.flush()
    self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}})
                      + "\n")
    self._jsonl.flush()

  def write_grid(self, step: int, name: str, images: np.ndarray, ncols: int) -> str:
    """Writes images (N, H, W, C) in [-1, 1] as samples/<name>_<step>.png and to TensorBoard."""
    if not self.enabled:
      return ""
    grid = image_grid.make_grid(np.asarray(images), ncols)
    path = os.path.join(self.workdir, "samples", f"{name}_{step:07d}.png")
    image_grid.save_png(path, grid)
    self._tb.add_image(name, grid, step, dataformats="HWC")
    return path

  def close(self) -> None:
    if self._tb_writer is not None:
      self._tb_writer.close()
    if self._jsonl_file is not None:
      self._jsonl_file.close()
