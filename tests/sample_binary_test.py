"""The sampling binary (experiments/sample.py) and its library call on a tiny checkpoint.

One tiny VAE-GAN is trained for 4 steps on the embedded digits (16x16x1) with
``train.train_and_evaluate``; the binary then runs as a subprocess (flag
parsing, exit status), and the library call it makes,
``sampling_outputs.write_samples``, in-process (cheaper): both must write the
same files, byte for byte. Other
checkpoints (a 'gan', a conditional model, missing data) are derived from that
one by editing its state or config: compiling another model would be slow.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments.configs import tiny
from vaegan_jax import data as data_lib
from vaegan_jax import sampling
from vaegan_jax import sampling_outputs
from vaegan_jax import train
from vaegan_jax.runtime import checkpoint
from vaegan_jax.runtime import image_grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S, Z, PAD = 16, 8, 2  # tiny config: image size, z_dim; make_grid padding.
NUM, PATHS, STEPS, SEED = 16, 3, 5, 3
FLAGS = dict(num=NUM, num_interpolations=PATHS, interpolation_steps=STEPS, seed=SEED)
OUTPUTS = ("samples.png", "samples_z.npy", "reconstructions.png", "reconstructions_z.npy",
           "interpolations.png", "interpolations_z.npy")


def _config(model=None, data=None, **kw):
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.num_train_steps, c.checkpoint_every, c.log_every, c.sample_every = 4, 4, 2, 4
  c.model.update(model or {})
  c.data.update(data or {})
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("vaegan"))
  train.train_and_evaluate(_config(), wd)
  return wd


def _derived_checkpoint(workdir, wd, drop=(), **changes):
  """Copies ``workdir``'s checkpoint into ``wd`` with groups dropped / config changed.

  Cheaper than training or initialising another model (no compilation).
  ``changes`` maps 'model.x' / 'data.x' / 'x' to new config values.
  """
  state, config = sampling.restore_for_inference(workdir)
  keep = lambda d: {g: v for g, v in d.items() if g not in drop}
  state = state.replace(params=keep(state.params), batch_stats=keep(state.batch_stats),
                        opt_state=keep(state.opt_state))
  for key, value in changes.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  mngr = checkpoint.manager(wd, async_save=False)
  checkpoint.save(mngr, state, config)
  mngr.wait_until_finished()
  mngr.close()


def _grid_size(rows, cols, s=S):
  """(width, height) of a make_grid image."""
  return (cols * (s + PAD) + PAD, rows * (s + PAD) + PAD)


def _tile(grid, r, c, s=S):
  top, left = PAD + r * (s + PAD), PAD + c * (s + PAD)
  return grid[top:top + s, left:left + s]


def _run_subprocess(*args):
  cmd = [sys.executable, "-m", "experiments.sample", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_outputs_shapes_content_and_determinism(workdir, tmp_path):
  out1, out2, out3 = (str(tmp_path / d) for d in ("sub", "inproc", "mean"))
  proc = _run_subprocess(f"--workdir={workdir}", f"--outdir={out1}",
                         *(f"--{k}={v}" for k, v in FLAGS.items()))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(os.listdir(out1)) == sorted(OUTPUTS)
  written = sampling_outputs.write_samples(workdir, out2, **FLAGS)
  assert sorted(written) == sorted(OUTPUTS)
  # Fixed seed -> identical files, byte for byte, across processes.
  for name in OUTPUTS:
    with open(os.path.join(out1, name), "rb") as a, open(os.path.join(out2, name), "rb") as b:
      assert a.read() == b.read(), name

  grids = {n: np.asarray(Image.open(os.path.join(out1, f"{n}.png")))
           for n in ("samples", "reconstructions", "interpolations")}
  codes = {n: np.load(os.path.join(out1, f"{n}_z.npy"))
           for n in ("samples", "reconstructions", "interpolations")}
  sizes = {"samples": _grid_size(4, 4), "reconstructions": _grid_size(8, 4),
           "interpolations": _grid_size(PATHS, STEPS)}
  for n, grid in grids.items():
    img = Image.open(os.path.join(out1, f"{n}.png"))
    assert img.mode == "L" and img.size == sizes[n], n
    assert grid.dtype == np.uint8
    assert (grid[:PAD] == 255).all() and (grid[:, :PAD] == 255).all(), n  # padding
    tiles = np.stack([_tile(grid, 0, c) for c in range(2)])
    assert tiles.std() > 1.0, n  # not blank
  assert codes["samples"].shape == (NUM, Z)
  assert codes["reconstructions"].shape == (NUM, Z)
  assert codes["interpolations"].shape == (PATHS, STEPS, Z)
  for z in codes.values():
    assert z.dtype == np.float32 and np.isfinite(z).all()
  assert 0.6 < codes["samples"].std() < 1.4  # z ~ N(0, I)

  # reconstructions.png: rows of held-out inputs (the eval split's first
  # images, unflipped) above rows of Dec(z) of the saved codes.
  state, config = sampling.restore_for_inference(workdir)
  sampler = sampling.Sampler.from_state(config, state)
  x = next(iter(sampling.dataset_batches(config.data, "test", NUM, NUM)))["image"]
  rec = image_grid.to_uint8(sampler.decode(codes["reconstructions"]))
  grid = grids["reconstructions"]
  for i in range(NUM):
    r, c = divmod(i, 4)
    np.testing.assert_array_equal(_tile(grid, 2 * r, c)[..., None], image_grid.to_uint8(x[i]))
    assert np.abs(_tile(grid, 2 * r + 1, c).astype(int) - rec[i, ..., 0]).max() <= 1
  # Encoder noise (no --use_mean): codes differ from mu but stay near it.
  mu = np.asarray(sampler.encode(x))
  assert not np.allclose(codes["reconstructions"], mu, atol=1e-4)

  # --use_mean and --temperature: codes are mu, paths join mu's, z scales.
  sampling_outputs.write_samples(workdir, out3, use_mean=True, temperature=0.5, interpolation="linear", **FLAGS)
  np.testing.assert_allclose(np.load(os.path.join(out3, "reconstructions_z.npy")), mu,
                             atol=1e-5)
  path = np.load(os.path.join(out3, "interpolations_z.npy"))
  np.testing.assert_allclose(path[:, 0], mu[:PATHS], atol=1e-5)
  np.testing.assert_allclose(path[:, -1], mu[PATHS:2 * PATHS], atol=1e-5)
  np.testing.assert_allclose(path[:, 2], 0.5 * (mu[:PATHS] + mu[PATHS:2 * PATHS]), atol=1e-5)
  np.testing.assert_allclose(np.load(os.path.join(out3, "samples_z.npy")),
                             0.5 * codes["samples"], rtol=1e-6)


def test_library_arrays_from_a_workdir_or_a_sampler_and_nothing_written(workdir, tmp_path):
  """A notebook: ``sample_outputs`` gives the binary's files as arrays, from the
  workdir or from a Sampler already in memory, and writes nothing;
  ``write_outputs`` then writes what ``write_samples`` writes in one call."""
  from_workdir = sampling_outputs.sample_outputs(workdir, **FLAGS)
  sampler = sampling.Sampler.from_workdir(workdir)
  from_sampler = sampling_outputs.sample_outputs(sampler, **FLAGS)
  assert os.listdir(tmp_path) == []
  assert from_workdir.step == from_sampler.step == 4
  assert sorted(from_workdir.files) == sorted(from_sampler.files) == sorted(OUTPUTS)
  for name in OUTPUTS:
    np.testing.assert_array_equal(from_workdir.files[name], from_sampler.files[name])
  assert from_workdir.files["samples_z.npy"].shape == (NUM, Z)
  assert from_workdir.files["samples.png"].dtype == np.uint8
  out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
  written = sampling_outputs.write_outputs(from_sampler, out_a)
  assert written == {n: os.path.join(out_a, n) for n in OUTPUTS}
  sampling_outputs.write_samples(workdir, out_b, **FLAGS)
  for name in OUTPUTS:
    with open(os.path.join(out_a, name), "rb") as a, open(os.path.join(out_b, name), "rb") as b:
      assert a.read() == b.read(), name
  # A Sampler must know its config; it holds one step.
  state, _ = sampling.restore_for_inference(workdir)
  bare = sampling.Sampler(sampler.arch, state.params, state.batch_stats)
  with pytest.raises(sampling_outputs.SampleError, match="no config"):
    sampling_outputs.sample_outputs(bare)
  with pytest.raises(sampling_outputs.SampleError, match="holds step 4"):
    sampling_outputs.sample_outputs(sampler, step=2)


def test_bad_workdir_one_line_error(tmp_path):
  out = tmp_path / "out"
  proc = _run_subprocess(f"--workdir={tmp_path / 'missing'}", f"--outdir={out}")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: No checkpoint in "), proc.stderr
  assert not out.exists()


def test_user_errors_write_nothing(workdir, tmp_path):
  out = tmp_path / "out"
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint for step 7"):
    sampling_outputs.write_samples(workdir, str(out), step=7)
  # --attributes on a dataset without attributes fails before decoding.
  with pytest.raises(sampling_outputs.SampleError, match="'digits' has none"):
    sampling_outputs.write_samples(workdir, str(out), attributes=True)
  # A checkpoint whose saved config no longer matches its state.
  bad = str(tmp_path / "bad")
  shutil.copytree(workdir, bad)
  meta = os.path.join(bad, "checkpoints", "4", "config", "metadata")
  with open(meta) as f:
    saved = json.load(f)
  saved["model"]["z_dim"] = 12
  with open(meta, "w") as f:
    json.dump(saved, f)
  with pytest.raises(checkpoint.CheckpointError, match="does not match") as e:
    sampling_outputs.write_samples(bad, str(out))
  assert "\n" not in str(e.value)
  # A conditional checkpoint whose data have no attributes (a config-only
  # check: it fires before the arrays are read).
  cond = str(tmp_path / "cond")
  _derived_checkpoint(workdir, cond, **{"model.num_attributes": 3})
  with pytest.raises(sampling_outputs.SampleError, match="conditional on 3 attributes"):
    sampling_outputs.write_samples(cond, str(out))
  # Data that went missing since training (one DataError line).
  folder = str(tmp_path / "folder")
  _derived_checkpoint(workdir, folder, **{"data.name": "folder",
                                          "data.folder": str(tmp_path / "gone")})
  with pytest.raises(data_lib.DataError, match="does not exist"):
    sampling_outputs.write_samples(folder, str(out))
  # Attribute vectors of another model.
  np.savez(str(tmp_path / "v.npz"), vectors=np.zeros((2, Z + 1)), names=np.array(["a", "b"]))
  with pytest.raises(sampling_outputs.SampleError, match="another model"):
    sampling_outputs.load_attribute_vectors(str(tmp_path / "v.npz"), Z)
  assert not out.exists()


def test_gan_kind_skips_reconstructions(workdir, tmp_path, caplog):
  wd, out = str(tmp_path / "gan"), str(tmp_path / "out")
  _derived_checkpoint(workdir, wd, drop=("encoder",), kind="gan")
  with caplog.at_level(logging.INFO):
    written = sampling_outputs.write_samples(wd, out, **FLAGS)
  assert sorted(written) == ["interpolations.png", "interpolations_z.npy", "samples.png",
                             "samples_z.npy"]
  assert "no encoder: skipping reconstructions" in caplog.text
  path = np.load(os.path.join(out, "interpolations_z.npy"))
  assert path.shape == (PATHS, STEPS, Z)
  # Between prior samples: endpoints are N(0, I) draws, distinct per path.
  assert np.abs(path[:, 0] - path[:, -1]).min() > 0
  with pytest.raises(sampling_outputs.SampleError, match="needs an encoder"):
    sampling_outputs.write_samples(wd, str(tmp_path / "out2"), attributes=True)


def test_save_images_writes_each_image_and_an_array(workdir, tmp_path):
  out = str(tmp_path / "out")
  written = sampling_outputs.write_samples(workdir, out, num=5, seed=SEED, save_images=True)
  arr = np.load(os.path.join(out, "samples.npy"))
  grid_z = np.load(os.path.join(out, "samples_z.npy"))
  assert arr.shape[0] == grid_z.shape[0] == 5 and arr.dtype == np.float32
  assert arr.min() >= -1 and arr.max() <= 1
  pngs = sorted(f for f in os.listdir(os.path.join(out, "samples")))
  assert pngs == [f"{i:05d}.png" for i in range(5)]
  for i in (0, 4):
    png = np.asarray(Image.open(os.path.join(out, "samples", pngs[i])))
    np.testing.assert_array_equal(png.reshape(arr.shape[1:]), image_grid.to_uint8(arr[i]))
  rec = np.load(os.path.join(out, "reconstructions.npy"))
  assert rec.shape[1:] == arr.shape[1:] and len(os.listdir(os.path.join(out, "reconstructions"))) == len(rec)
  assert "samples/00004.png" in written
