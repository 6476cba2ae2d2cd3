"""`python -m benchmarks.vs_torch` at tiny sizes: its JSON record, PyTorch in a child process of its own that ends
with the run (also when the parent fails or dies), FLOPs that do not depend on oneDNN, and the PyTorch networks it
times against lensjax's being the same networks (parameter counts at full size, counted without running either)."""

import contextlib
import io
import json
import multiprocessing
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx

from benchmarks import torch_models, vs_torch
from lensjax import cli
from lensjax.models import build, count_parameters, onednn


def _torch_parameters(model) -> int:
  return sum(p.numel() for p in model.parameters())


def _lensjax_parameters(name: str, **options) -> int:
  return count_parameters(nnx.eval_shape(lambda: build(name, seed=0, **options)))[0]


def test_the_pytorch_networks_have_lensjax_parameter_counts_at_every_benchmarked_size():
  parts = vs_torch.parts_table(None, None, None)
  for part in parts.values():
    if part.model == "isnet":
      reference = torch_models.ISNetDIS(part.in_channels, part.out_channels, width=part.width, depth=part.depth)
      expected = _lensjax_parameters("isnet", in_channels=part.in_channels, out_channels=part.out_channels,
                                     width=part.width, depth=part.depth)
    else:
      reference = torch_models.MSRFNet(part.in_channels, part.out_channels, width=part.width)
      expected = _lensjax_parameters("msrfnet", in_channels=part.in_channels, out_channels=part.out_channels,
                                     width=part.width)
    assert _torch_parameters(reference) == expected, part.name
  assert _torch_parameters(torch_models.ISNetDIS(1, 1)) == 44_045_638          # the upstream count
  assert _torch_parameters(torch_models.MSRFNet(1, 1)) == 18_591_821           # the original Keras count


def test_the_keras_msrfnet_has_lensjax_parameter_count():
  from benchmarks import keras_models
  part = vs_torch.parts_table(None, None, None)["msrfnet"]
  for width in (part.width, 0.125):
    model = keras_models.msrfnet(part.size, part.in_channels, part.out_channels, width=width)
    keras_count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert keras_count == _lensjax_parameters("msrfnet", in_channels=part.in_channels,
                                              out_channels=part.out_channels, width=width), width
  assert width == 0.125 and part.width == 1.0 and keras_count == 292_091


def test_the_keras_baseline_trains_and_predicts_in_its_own_process_and_is_refused_for_isnet():
  part = vs_torch.parts_table(0.125, 16, 2)["msrfnet"]
  with vs_torch.BaselineProcess(threads=1, framework="keras") as keras_process:
    started = keras_process.request("start")
    assert started["pid"] == keras_process.pid != os.getpid() and started["version"].startswith("tensorflow ")
    assert keras_process.request("build", part, "float32") == 292_091       # any image size: convs and SE only
    assert all(keras_process.request("call", phase) > 0 for phase in ("train", "infer"))
  assert _gone_within(started["pid"], 10)
  with pytest.raises(cli.UsageError, match="--baseline keras: the original ran only MSRF-Net in Keras"):
    vs_torch.parse_args(["--parts", "isnet", "--baseline", "keras"])


def _running(pid: int) -> bool:
  """Whether process `pid` exists and is not a zombie (an ended child nobody has reaped yet)."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except FileNotFoundError:
    return False
  return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
  deadline = time.monotonic() + seconds
  while _running(pid) and time.monotonic() < deadline:
    time.sleep(0.1)
  return not _running(pid)


TINY = ["--parts", "isnet_default", "--width", "0.125", "--image-size", "16", "--batch-size", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Tiny runs with lensjax's default convolutions and with `--no-onednn`: {name: (record, printed table)}."""
  found = {}
  runs = {"default": ["--repeats", "3"],
          "no_onednn": ["--repeats", "2", "--turn", "1", "--phases", "infer", "--no-onednn"]}
  for name, extra in runs.items():
    out = tmp_path_factory.mktemp(name) / "vs_torch.json"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
      vs_torch.main([*TINY, *extra, "--out", str(out)])
    found[name] = json.loads(out.read_text()), printed.getvalue()
  return found


@pytest.mark.slow
def test_a_tiny_run_writes_a_record_with_both_frameworks_per_phase(records):
  record, printed = records["default"]
  assert "| isnet_default train" in printed and "| isnet_default infer" in printed
  assert record["schema"] == vs_torch.SCHEMA
  assert record["threads"]["torch"] == record["threads"]["jax"] >= 1
  assert record["versions"]["onednn"] == onednn.status()        # where lensjax's oneDNN convs load from, or why not
  assert record["matmul_probe"]["lensjax_flops_per_s"] > 0 and record["matmul_probe"]["torch_flops_per_s"] > 0
  reporting = record["hardware"]["free_page_reporting"]       # None where the kernel has no free page reporting
  assert reporting is None or "page_reporting_order" in reporting
  assert [(row["part"], row["phase"]) for row in record["rows"]] == [("isnet_default", "train"),
                                                                    ("isnet_default", "infer")]
  for row in record["rows"]:
    assert (row["batch"], row["size"], row["width"], row["depth"], row["out_channels"]) == (2, 16, 0.125, 4, 2)
    assert row["flops_per_call"] > 0
    for side in ("torch", "lensjax"):
      assert row[side]["seconds"]["count"] == 6                  # 3 rounds of 3 calls, the first of each apart
      assert row[side]["seconds_after_switch"]["count"] == 3
      assert 0 < row[side]["seconds"]["min"] <= row[side]["seconds"]["median"] <= row[side]["seconds"]["max"]
      assert row[side]["fraction_of_matmul_probe"] > 0
    assert row["speedup"] == pytest.approx(row["torch"]["seconds"]["median"] / row["lensjax"]["seconds"]["median"])


@pytest.mark.slow
def test_turn_one_times_every_call_alternating(records):
  record, _ = records["no_onednn"]
  assert record["turn"] == 1
  for side in ("torch", "lensjax"):
    assert record["rows"][0][side]["seconds"]["count"] == record["rows"][0][side]["seconds_after_switch"]["count"] == 2


def test_frameworks_take_turns_of_back_to_back_calls_whose_first_call_is_kept_apart():
  calls = []

  def timed(name):
    def call():
      calls.append(name)
      return float(len(calls))                  # the call's position in the whole sequence stands for its seconds
    return call

  seconds = vs_torch.interleaved(timed("torch"), timed("lensjax"), repeats=2, warmup=1, turn=3)
  assert "".join(c[0] for c in calls) == "tl" + "tttlll" * 2
  assert seconds["torch"] == {"after_switch": [3.0, 9.0], "timed": [4.0, 5.0, 10.0, 11.0]}
  assert seconds["lensjax"] == {"after_switch": [6.0, 12.0], "timed": [7.0, 8.0, 13.0, 14.0]}
  plain = vs_torch.interleaved(timed("torch"), timed("lensjax"), repeats=2, warmup=1, turn=1)
  assert plain["torch"]["timed"] == plain["torch"]["after_switch"] == [17.0, 19.0]


@pytest.mark.slow
def test_pytorch_runs_in_a_child_process_that_is_gone_after_the_run(records):
  for record, _ in records.values():
    processes = record["processes"]
    assert processes["separate"] is True
    assert processes["lensjax_pid"] == os.getpid() != processes["torch_pid"]
    assert not _running(processes["torch_pid"])
  assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_flops_per_call_are_the_same_with_and_without_onednn(records):
  with_onednn = {(row["part"], row["phase"]): row["flops_per_call"] for row in records["default"][0]["rows"]}
  without = {(row["part"], row["phase"]): row["flops_per_call"] for row in records["no_onednn"][0]["rows"]}
  assert without.keys() == {("isnet_default", "infer")}
  assert with_onednn[("isnet_default", "infer")] == without[("isnet_default", "infer")]
  # The training step does more work than the forward: about three times its multiply-adds.
  assert 2 * with_onednn[("isnet_default", "infer")] < with_onednn[("isnet_default", "train")]


def test_the_pytorch_process_ends_when_the_block_using_it_raises():
  with pytest.raises(RuntimeError, match="KeyError"):
    with vs_torch.BaselineProcess(threads=1) as torch_process:
      pid = torch_process.pid
      assert torch_process.request("start")["pid"] == pid != os.getpid()
      torch_process.request("call", "train")          # nothing built yet: the child's error comes back here
  assert _gone_within(pid, 10)


def test_the_pytorch_process_ends_when_its_parent_dies_without_cleaning_up(tmp_path):
  script = ("import os, sys\n"
            "from benchmarks import vs_torch\n"
            "if __name__ == '__main__':\n"
            "  torch_process = vs_torch.BaselineProcess(threads=1)\n"
            "  print(torch_process.request('start')['pid'], flush=True)\n"
            "  os._exit(3)\n")                               # no atexit handlers, no close
  parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=pathlib.Path(vs_torch.__file__).parents[1])
  assert parent.returncode == 3, parent.stderr
  assert _gone_within(int(parent.stdout.split()[-1]), 10)
