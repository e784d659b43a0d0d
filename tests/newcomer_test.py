"""A newcomer's first hour (issue 12): a quiet console, config names, --dry_run,
one-line flag errors, and a workdir opened in one call."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vaegan_jax import sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(args, cwd=REPO):
  # The binaries are not installed (a top-level `experiments` package would shadow
  # users' own): outside the checkout they are reached through PYTHONPATH.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 4-step tiny run started by config *name* from outside the repository."""
  wd = str(tmp_path_factory.mktemp("run") / "wd")
  r = _train([f"--workdir={wd}", "--config=tiny", "--config.model.conv_impl=xla",
              "--config.num_train_steps=4", "--config.log_every=2",
              "--config.checkpoint_every=2"], cwd=str(tmp_path_factory.mktemp("elsewhere")))
  assert r.returncode == 0, r.stderr[-3000:]
  return wd, r.stderr


def test_console_shows_the_projects_lines_only(run):
  _, err = run
  lines = err.strip().splitlines()
  assert not [l for l in lines if "orbax" in l or "checkpoint_manager" in l or "libtpu" in l]
  assert ("Training vaegan for 4 steps of batch 16 (2 per device, float32 compute, 1 step(s) "
          "per dispatch) on digits") in lines[0]
  assert "Compiled and ran step 1 in" in err
  assert len(lines) <= 6, lines  # intro, compiled, 2 progress lines (+ resume/warnings)
  # --verbose brings the libraries' INFO lines back.
  wd2 = run[0] + "_verbose"
  r = _train([f"--workdir={wd2}", "--config=tiny", "--config.model.conv_impl=xla",
              "--config.num_train_steps=2", "--config.log_every=2", "--verbose"])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "checkpoint_manager" in r.stderr


def test_dry_run_checks_and_writes_nothing(tmp_path):
  wd = str(tmp_path / "wd")
  r = _train([f"--workdir={wd}", "--config=tiny", "--dry_run"])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "dry run: vaegan on digits split 'train': 1433 examples" in r.stdout
  assert "num_train_steps: 20" in r.stdout  # the resolved config
  assert not os.path.exists(wd)
  r = _train([f"--workdir={wd}", "--config=tiny", "--dry_run", "--config.batch_size=4096"])
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "Traceback" not in r.stderr


def test_flag_errors_are_one_line(tmp_path):
  for flag, want in (("--config.lerning_rate=1", 'Did you mean "learning_rate"'),
                     ("--config.learning_rate=abc", "could not convert"),
                     ("--config=no_such_config", "no_such_config")):
    r = _train([f"--workdir={tmp_path}", flag])
    assert r.returncode == 2, (flag, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and want in r.stderr, r.stderr


def test_sampler_from_workdir_and_its_input_checks(run):
  wd, _ = run
  sampler = sampling.Sampler.from_workdir(wd)
  assert sampler.step == 4 and sampler.config.kind == "vaegan"
  images, z = sampling.sample(sampler, jax.random.PRNGKey(0), 4)
  assert images.shape == (4, 16, 16, 1) and np.isfinite(np.asarray(images)).all()
  held = next(iter(sampling.dataset_batches(sampler.config.data, "test", 4, 4)))
  recon, _ = sampling.reconstruct(sampler, held["image"])
  assert recon.shape == held["image"].shape
  assert sampling.Sampler.from_workdir(wd, step=2).step == 2
  uint8 = ((held["image"] + 1) * 127.5).astype(np.uint8)
  with pytest.raises(ValueError, match="floats in \\[-1, 1\\], got uint8"):
    sampler.encode(uint8)
  with pytest.raises(ValueError, match="got values in \\[0, 255\\]"):
    sampling.reconstruct(sampler, uint8.astype(np.float32))


def test_early_progress_line_and_rates_exclude_compiling(tmp_path, monkeypatch):
  """With a long log_every, a line comes 10 steps after compiling, and its rate
  counts steps after the first (compiling) one only.

  The progress clock jumps 1000 s while the first step is reported compiled, so
  a rate that counted compiling would be below 12 * 16 / 1000 images/s; real
  wall time (a warm compilation cache makes compiling fast) cannot decide it.
  """
  import json  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top
  from vaegan_jax import train  # pylint: disable=g-import-not-at-top
  from vaegan_jax.runtime import loop  # pylint: disable=g-import-not-at-top
  jump = [0.0]
  monkeypatch.setattr(loop, "time",
                      types.SimpleNamespace(time=lambda: time.time() + jump[0]))
  compiled = loop.Progress.compiled

  def slow_compile(self, *args, **kwargs):
    jump[0] += 1000.0
    compiled(self, *args, **kwargs)

  monkeypatch.setattr(loop.Progress, "compiled", slow_compile)
  c = tiny.get_config()
  c.model.conv_impl = "xla"
  c.log_every, c.num_train_steps, c.checkpoint_every, c.sample_every = 50, 12, 100, 100
  train.train_and_evaluate(c, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [11, 12]
  assert lines[0]["images_per_sec"] > 1.0, lines[0]


def _code_block(text, start):
  """The indented block after the line containing ``start`` (docstring example)."""
  lines = text[text.index(start):].splitlines()[1:]
  block = []
  for line in lines:
    if line.strip() and not line.startswith("  "):
      break
    block.append(line[2:])
  return "\n".join(block).strip("\n")


def test_sampling_docstring_and_readme_recipes_run_as_written(run):
  """The notebook recipes must run: the sampling module's first example and the
  README's Python block, on a real workdir in place of /tmp/vaegan."""
  wd, _ = run
  doc = _code_block(sampling.__doc__, "Typical use")
  ns = {"jax": jax, **{k: getattr(sampling, k) for k in dir(sampling) if not k.startswith("_")}}
  exec(doc.replace("'/tmp/vaegan'", repr(wd)), ns)  # pylint: disable=exec-used
  assert ns["frames"].shape[:2] == (8, 10) and ns["recon"].shape == ns["held"]["image"].shape
  readme = open(os.path.join(REPO, "README.md")).read()
  block = readme[readme.index("```python\n") + len("```python\n"):]
  block = block[:block.index("```")]
  ns = {}
  exec(block.replace('"/tmp/vaegan"', repr(wd)), ns)  # pylint: disable=exec-used
  assert ns["images"].shape == (16, 16, 16, 1)  # the tiny run's 16x16 images
  assert ns["frames"].shape[:2] == (4, 8)


def test_folder_config_one_size_field_drives_data_and_model(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(60):
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
  r = _train([f"--workdir={tmp_path / 'wd'}", "--config=folder", f"--config.data.folder={folder}",
              "--config.data.image_size=32", "--config.batch_size=32", "--dry_run"])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "57 examples of 32x32x3; 5000 steps of batch 32" in r.stdout, r.stdout[-500:]
  assert r.stdout.count("image_size: 32") == 2  # data.* and model.*, one value


def test_every_conv_microbench_flag_has_help():
  r = subprocess.run([sys.executable, "-m", "experiments.conv_microbench", "--help"], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-1000:]
  opts = [l.split()[0] for l in r.stdout.splitlines() if l.startswith("  --")]
  assert opts == ["--batch", "--runs", "--dtype", "--impls", "--pieces", "--model"], opts
  for line in r.stdout.splitlines():
    if line.startswith("  --") and line.split()[0] != "--model":
      assert len(line.split()) > 2, line  # the help text follows the metavar


@pytest.mark.parametrize("binary", ["train", "compare", "sample", "evaluate"])
def test_help_shows_the_key_flags(binary):
  """``--help`` (not only ``--helpfull``) lists --config where there is one, and --verbose."""
  r = subprocess.run([sys.executable, "-m", f"experiments.{binary}", "--help"], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 1 and "Try --helpfull" in r.stdout, r.stderr[-1000:]  # absl's exit
  opts = {l.split(":")[0].strip() for l in r.stdout.splitlines() if l.startswith("  --")}
  assert "--[no]verbose" in opts, opts
  if binary in ("train", "compare"):
    assert "--config" in opts, opts
    assert "photos" in r.stdout and "tiny" in r.stdout  # the config names are listed
