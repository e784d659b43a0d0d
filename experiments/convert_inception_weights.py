r"""Converts pytorch-fid's FID Inception-v3 weights (.pth) to the .npz that vaegan_jax loads.

  pip install torch        # or: pip install -e '.[convert]'; only this step needs torch
  python -m experiments.convert_inception_weights \
      --pth=pt_inception-2015-12-05-6726825d.pth --out=fid_inception.npz

The input is the state_dict that pytorch-fid downloads for its FID Inception
(``pt_inception-2015-12-05-6726825d.pth``, from
https://github.com/mseitzer/pytorch-fid/releases; this program downloads
nothing). Every tensor is checked against the Flax network
(``vaegan_jax/evaluation/inception.py``) and written under its Flax variable
path: conv kernels OIHW -> HWIO, the fc weight transposed, BN running
statistics under ``batch_stats/``, ``num_batches_tracked`` dropped (see that
module's docstring for the key scheme). The .pth's file name and SHA-256 go
into ``meta/``. Then, e.g.:

  python -m experiments.evaluate ... --inception_weights=fid_inception.npz
"""

from __future__ import annotations

import os
import re
from typing import Any

from absl import app
from absl import flags
from absl import logging

from vaegan_jax.runtime import cli  # pylint: disable=g-bad-import-order
import numpy as np

from vaegan_jax.evaluation import inception
from vaegan_jax.runtime.errors import UserError

FLAGS = flags.FLAGS
# torch.hub names files <name>-<first 8 hex digits of the SHA-256>.<ext>.
EXPECTED_SHA256_PREFIX = "6726825d"


def _define_flags():
  """Defines the flags, only when run as a program (tests import ``convert``)."""
  flags.DEFINE_string("pth", None, f"pytorch-fid's weights file ({inception.FID_WEIGHTS_FILE}).")
  flags.DEFINE_string("out", None, "The .npz to write (read by inception.load_npz / "
                      "InceptionFeatures.from_npz).")
  flags.mark_flags_as_required(["pth", "out"])


class ConversionError(UserError, ValueError):
  """A .pth that can't be converted; one-line message naming the fix."""


def _load_state_dict(path: str) -> dict[str, np.ndarray]:
  """torch.load (tensors only, on the CPU) -> {name: numpy array}."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError("Reading a .pth needs PyTorch (only for this conversion): "
                          "pip install torch (or pip install -e '.[convert]').") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # Truncated, not a torch file, a pickled module, ...
    if "weights only" in str(e).lower():
      why = "it holds pickled Python objects (a whole module?), not only tensors"
    else:
      first = re.sub(r"\x1b\[[0-9;]*m", "", (str(e).strip().splitlines() or [""])[0])
      why = f"{type(e).__name__}: {first[:160]}"
    raise ConversionError(f"Could not read {path} as a PyTorch state_dict ({why}): "
                          f"give pytorch-fid's {inception.FID_WEIGHTS_FILE}.") from e
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors: "
                          f"give pytorch-fid's {inception.FID_WEIGHTS_FILE}.")
  return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}


def convert(pth: str, out: str) -> dict[str, Any]:
  """Converts ``pth`` to ``out``; returns facts about it.

  Returns:
    {'out', 'sha256' (of the .pth), 'num_arrays', 'num_params', 'expected_file'
     (whether the SHA-256 starts like pytorch-fid's file name says)}.
  Raises:
    ConversionError / inception.WeightsError: one line, naming the fix.
  """
  pth = os.path.expanduser(pth)
  out = os.path.expanduser(out)
  if not os.path.isfile(pth):
    raise ConversionError(f"No file {pth}: download pytorch-fid's {inception.FID_WEIGHTS_FILE} "
                          f"({inception.FID_WEIGHTS_URL}) and pass it as --pth.")
  if os.path.isdir(out) or not out:
    raise ConversionError(f"--out={out!r} must be a file path, e.g. fid_inception.npz.")
  out_dir = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(out_dir):
    raise ConversionError(f"The folder of --out ({out_dir}) does not exist: create it first.")
  state_dict = _load_state_dict(pth)
  arrays = inception.convert_state_dict(state_dict, source=pth)
  sha = inception.file_sha256(pth)
  expected = sha.startswith(EXPECTED_SHA256_PREFIX)
  if not expected:
    logging.warning("%s has SHA-256 %s..., not %s... as in pytorch-fid's file name: the "
                    "network fits, but FID values are comparable to published ones only with "
                    "pytorch-fid's weights.", pth, sha[:16], EXPECTED_SHA256_PREFIX)
  inception.save_npz(arrays, out, meta={"source_file": os.path.basename(pth),
                                        "source_sha256": sha})
  n = sum(int(a.size) for k, a in arrays.items() if k.startswith("params/"))
  return dict(out=out, sha256=sha, num_arrays=len(arrays), num_params=n, expected_file=expected)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  info = convert(FLAGS.pth, FLAGS.out)
  print(f"Wrote {info['out']}: {info['num_arrays']} arrays, {info['num_params']:,} parameters "
        f"(source SHA-256 {info['sha256'][:16]}...).")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
