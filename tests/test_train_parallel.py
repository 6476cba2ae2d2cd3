"""Data parallelism gives the same numbers on 1 device, 4 fake devices and 2 real processes."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "helpers" / "parallel_steps.py"


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=str(ROOT))
  env.pop("XLA_FLAGS", None)
  return env


def _run_processes(out, devices_per_process, num_processes, model="isnet", timeout=600):
  port = portpicker.pick_unused_port()
  procs = []
  for pid in range(num_processes):
    extra = [] if num_processes == 1 else [
        "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(num_processes),
        "--process-id", str(pid)]
    procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--model", model, *extra],
                                  env=_env(devices_per_process), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, text in zip(procs, outputs):
    assert p.returncode == 0, text[-3000:]
  return np.load(out)


def _assert_same(a, b):
  np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
  names = [k for k in a.files if k != "losses"]
  assert names and names == [k for k in b.files if k != "losses"]
  for name in names:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_four_fake_devices_and_two_processes_match_one_device(tmp_path):
  one = _run_processes(tmp_path / "one.npz", devices_per_process=1, num_processes=1)
  four = _run_processes(tmp_path / "four.npz", devices_per_process=4, num_processes=1)
  two_processes = _run_processes(tmp_path / "two.npz", devices_per_process=2, num_processes=2)
  assert np.all(np.isfinite(one["losses"]))
  _assert_same(one, four)
  _assert_same(one, two_processes)
