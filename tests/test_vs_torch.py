"""`python -m benchmarks.vs_torch` at tiny sizes: its JSON record, and the PyTorch networks it times against
lensjax's being the same networks (parameter counts at full size, counted without running either)."""

import json

import pytest
from flax import nnx

from benchmarks import torch_models, vs_torch
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


@pytest.mark.slow
def test_a_tiny_run_writes_a_record_with_both_frameworks_per_phase(tmp_path, capsys):
  out = tmp_path / "vs_torch.json"
  vs_torch.main(["--parts", "isnet_default", "--width", "0.125", "--image-size", "16", "--batch-size", "2",
                 "--repeats", "2", "--warmup", "1", "--out", str(out)])
  record = json.loads(out.read_text())
  assert record["schema"] == vs_torch.SCHEMA
  assert record["threads"]["torch"] == record["threads"]["jax"] >= 1
  assert record["versions"]["onednn"] == onednn.status()        # where lensjax's oneDNN convs load from, or why not
  assert record["matmul_probe"]["lensjax_flops_per_s"] > 0 and record["matmul_probe"]["torch_flops_per_s"] > 0
  assert [(row["part"], row["phase"]) for row in record["rows"]] == [("isnet_default", "train"),
                                                                    ("isnet_default", "infer")]
  for row in record["rows"]:
    assert (row["batch"], row["size"], row["width"], row["depth"], row["out_channels"]) == (2, 16, 0.125, 4, 2)
    assert row["flops_per_call"] > 0
    for side in ("torch", "lensjax"):
      assert row[side]["seconds"]["count"] == 2
      assert 0 < row[side]["seconds"]["min"] <= row[side]["seconds"]["median"] <= row[side]["seconds"]["max"]
      assert row[side]["fraction_of_matmul_probe"] > 0
    assert row["speedup"] == pytest.approx(row["torch"]["seconds"]["median"] / row["lensjax"]["seconds"]["median"])
  assert "| isnet_default train" in capsys.readouterr().out
