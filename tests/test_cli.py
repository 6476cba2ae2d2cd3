"""Every command ends an expected fault with one line on stderr and exit status 2 (real subprocesses)."""

import subprocess
import sys

import pytest

from tests.helpers import tiny_run


def _command(module: str, args: list[str], tmp_path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, capture_output=True, text=True,
                        timeout=300, env=tiny_run.command_env(tmp_path / "cache"))


@pytest.mark.parametrize("module, args, message", [
    ("lensjax.train", ["--workdir", "run", "--config.optim.learning_rate=-1"],
     "config.optim.learning_rate=-1.0: expected > 0"),
    ("lensjax.train", ["--workdir", "run", "--wokdir", "x"], "unrecognized arguments: --wokdir x"),
    ("lensjax.train", ["--workdir", "run", "--config.data.source=npy", "--config.data.path=missing"], "missing"),
    ("lensjax.evaluate", ["no_such_run"], "neither a run directory"),
    ("lensjax.predict", ["no_such_run", "missing.npy", "--out", "out"], "missing.npy"),
    ("lensjax.simulate", ["--n", "0", "--out", "out"], "--n must be a positive number of images"),
    ("lensjax.data", ["check", "missing"], "missing: no such file or folder"),
    ("lensjax.models", ["isnet", "--size", "1", "--params-only"], "--size must be at least 2"),
    ("benchmarks.simulator", ["--bacth-sizes", "4"], "unrecognized arguments: --bacth-sizes"),
    ("benchmarks.throughput", ["--steps", "5"], "--steps=5: time at least 20 steps"),
    ("benchmarks.report", ["missing.json"], "missing.json"),
    ("benchmarks.scaling_model", ["--config.train.batch_size=0"], "config.train.batch_size=0: expected >= 1"),
    ("benchmarks.input_pipeline", ["--sources=sim", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_an_expected_fault_prints_one_line_and_exits_2(module, args, message, tmp_path):
  result = _command(module, args, tmp_path)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-3000:]
  assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
  result = _command("lensjax.train", ["--workdir", "run", "--config.optim.learning_rate=-1", "--debug"], tmp_path)
  assert result.returncode == 1
  assert "Traceback (most recent call last)" in result.stderr and "ConfigError" in result.stderr
