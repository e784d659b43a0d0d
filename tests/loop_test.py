"""loop.Progress: the rate and ETA of each log window, without the compiling step."""

from vaegan_jax.runtime import loop


def test_progress_rates_exclude_compiling_and_reset_each_window(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(loop.time, "time", lambda: clock[0])
  p = loop.Progress(start=10, total=110, batch_size=4)
  clock[0] += 30.0  # Compiling step 11: not part of any rate.
  p.compiled(11)
  assert p.window(11) == ({}, "")  # Only the compiling step so far.
  clock[0] += 2.0  # Steps 12..21: 10 steps of 4 images in 2 s.
  rate, text = p.window(21)
  assert rate == {"images_per_sec": 20.0}
  assert text == f"| 20 img/s, ETA {89 * 0.2 / 60:.1f} min"
  clock[0] += 1.0  # Steps 22..26 in 1 s: the window restarts at 21.
  rate, _ = p.window(26)
  assert rate == {"images_per_sec": 20.0}


def test_a_signal_caught_by_a_nested_stop_request_reaches_the_enclosing_one():
  """The feature classifier's loop runs inside the trainer's: a SIGTERM that its request
  caught as it finished must still stop the trainer (it was lost before)."""
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  with loop.StopRequest() as outer:
    with loop.StopRequest() as inner:
      os.kill(os.getpid(), signal.SIGTERM)
      assert inner.requested
    assert outer.requested and outer.signal_name == "SIGTERM"
  with loop.StopRequest() as outer:
    with loop.StopRequest():
      pass
    assert not outer.requested


def test_progress_reports_the_share_of_the_window_spent_waiting_for_input(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(loop.time, "time", lambda: clock[0])
  p = loop.Progress(start=0, total=100, batch_size=8)
  p.compiled(1)
  clock[0] += 4.0
  p.waited(1.0)
  rate, text = p.window(11)
  assert rate == {"images_per_sec": 20.0, "input_wait_fraction": 0.25}
  assert "input wait 25%" in text
  clock[0] += 1.0
  assert p.window(16)[0]["input_wait_fraction"] == 0.0  # reset each window


def test_an_unused_gpu_or_tpu_is_named_with_the_install_command(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  gpu = lambda path: path == "/dev/nvidiactl"
  assert "pip install -e '.[cuda12]'" in loop.unused_accelerator("cpu", gpu)
  assert loop.unused_accelerator("gpu", gpu) == ""
  tpu = lambda path: path == "/dev/accel0"
  assert "pip install -e '.[tpu]'" in loop.unused_accelerator("cpu", tpu)
  assert loop.unused_accelerator("cpu", lambda path: False) == ""
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert loop.unused_accelerator("cpu", gpu) == ""
