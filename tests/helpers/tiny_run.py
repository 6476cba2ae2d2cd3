"""A tiny trained run shared by the checkpoint, resume, evaluate, predict and plot tests, and the helpers to
run lensjax commands in real subprocesses.

Every subprocess of a test session shares one JAX persistent compilation cache, so only the first command
compiles the tiny IS-Net (about 20 s on 2 quiet cores, minutes on a busy box); the later ones load it.
The run is trained once per session (`trained_run`), as `python -m lensjax.train` would be by a user.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import datasets as fx

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS = 40
EVERY_STEPS = 5
# IS-Net at width 1/16 and depth 2 on 61 px lenses padded to 64: a fast compile, about 50 ms a step.
TINY = [
    "--config.model.width=0.0625", "--config.model.depth=2", "--config.sim.image_size=61",
    "--config.data.pad_to=64", "--config.train.batch_size=4", "--config.train.eval_batch_size=8",
    "--config.data.sim_val_size=16", "--config.data.sim_test_size=16", f"--config.train.num_steps={NUM_STEPS}",
    "--config.train.log_every=1", "--config.train.eval_every=20", f"--config.checkpoint.every_steps={EVERY_STEPS}",
    "--config.checkpoint.keep=2", "--config.train.figure_images=2",
]


def write_tiny_npy_job(data_dir: pathlib.Path) -> list[str]:
  """Writes 64 lens-like 32 x 32 scenes with masks (the original images.npy / masks.npy layout) to `data_dir`;
  returns the overrides of an IS-Net of width 1/16 reading them unpadded: the Slurm and benchmark jobs' model."""
  fx.write_npy_array(data_dir, count=64, size=32)
  return ["--config.model.width=0.0625", "--config.data.source=npy", f"--config.data.path={data_dir}",
          "--config.data.pad_to=0", "--config.data.read_threads=1"]


def command_env(cache_dir: pathlib.Path) -> dict[str, str]:
  """The environment of a lensjax command: this checkout first, one CPU device, the shared compile cache, the
  host allocator as a user's shell leaves it (a lensjax command adds its tunable itself: lensjax.host_memory)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  for name in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "GLIBC_TUNABLES", "LENSJAX_HUGE_PAGES"):
    env.pop(name, None)
  return env


def start(module: str, args: list[str], cache_dir: pathlib.Path, log: pathlib.Path, *,
          new_session: bool = False) -> subprocess.Popen:
  """Starts `python -m module args...` with its output going to `log`; `new_session`: in a process group of its
  own, as a terminal runs a command (`os.killpg` then reaches it and its children, as Ctrl-C does)."""
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=command_env(cache_dir),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session)


def run(module: str, args: list[str], cache_dir: pathlib.Path, log: pathlib.Path, timeout: float = 900
        ) -> tuple[int, str]:
  """Runs `python -m module args...` to the end; returns (exit code, output)."""
  process = start(module, args, cache_dir, log)
  try:
    code = process.wait(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
  return code, log.read_text()


def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  return tmp_path_factory.getbasetemp() / "jax_compile_cache"


def trained_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """The run directory of `python -m lensjax.train` with TINY, trained once per session (40 steps)."""
  workdir = tmp_path_factory.getbasetemp() / "tiny_run"
  done = workdir / "finished"
  if not done.is_file():
    log = tmp_path_factory.getbasetemp() / "tiny_run.log"
    code, output = run("lensjax.train", ["--workdir", str(workdir), *TINY], compile_cache(tmp_path_factory), log)
    assert code == 0, output[-4000:]
    done.write_text("\n")
  return workdir


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl without the timing entry, which differs between runs."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for record in records:
    record.pop("images_per_sec", None)
  return records
