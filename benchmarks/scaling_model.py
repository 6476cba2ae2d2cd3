"""A model, not a measurement: data-parallel training efficiency of lensjax on Perlmutter, 1 to 128 GPU nodes.

  python -m benchmarks.scaling_model                              # IS-Net and MSRF-Net of configs/default.py
  python -m benchmarks.scaling_model --flops-per-image isnet=27.5e9,msrfnet=98e9 --out-dir runs/benchmarks/model
  python -m benchmarks.scaling_model --records runs/benchmarks/perlmutter/records   # measured points beside it

Perlmutter GPU node: 4 A100 joined by NVLink 3 (12 links x 25 GB/s per direction per GPU), 4 Slingshot-11 NICs
(25 GB/s each, one per GPU). Data parallelism with one process per GPU and a fixed batch per GPU (weak scaling,
as `slurm/scaling_sweep.sbatch` measures): every step computes on the local batch, then all-reduces the gradients
(parameters x 4 bytes, float32) over every GPU.

The all-reduce is modelled as NCCL's hierarchical ring, alpha-beta style:
  one node of g GPUs:  2 (g-1)/g x G / B_nvlink                        + 2 (g-1) alpha_nvlink
  N > 1 nodes:         reduce-scatter in the node  (g-1)/g x G / B_nvlink      + (g-1) alpha_nvlink
                       ring all-reduce of each GPU's 1/g shard between nodes, on its own NIC:
                                                   2 (N-1)/N x (G/g) / B_nic    + 2 (N-1) alpha_net
                       all-gather in the node      (g-1)/g x G / B_nvlink      + (g-1) alpha_nvlink
with G the gradient bytes. XLA combines gradients into all-reduces of up to 30 MiB (its default combine
threshold), so the latency terms count once per bucket. Without overlap the step is compute + all-reduce. With
overlap (`--overlap`; both are reported), the buckets all-reduce while the backward pass (2/3 of the compute:
backward costs twice the forward) still runs; the last bucket can never hide, so the exposed time is
max(all-reduce - backward, all-reduce / buckets). Efficiency = compute / step: 1.0 is linear scaling.

Per-step compute per GPU is not measurable on this project's CPU machines. Two sources, both reported:
  * `logged`: the original project's logged IS-Net step on one Perlmutter A100, 0.083 s at batch 8 (PyTorch,
    data loading included; docs/networks.md), scaled linearly with the batch and, for the other
    network, by its FLOPs per image relative to IS-Net's (i.e. the same achieved FLOP/s);
  * `flops`: XLA's FLOPs per training image / (`--utilisation` x the A100 TF32 peak, 156 TFLOP/s; 312 for
    bfloat16), with the utilisation an assumption (default 0.3).
The two bracket the truth: a slow step hides communication (high efficiency), a fast one exposes it.
Bandwidths are nominal peaks and latencies assumed (`--nvlink-gbs`, `--nic-gbs`, `--nvlink-latency-us`,
`--network-latency-us`); NCCL reaches perhaps 70-90 % of nominal bandwidth. The model ignores input loading,
the BatchNorm statistics (a few KB per step), stragglers and the network's congestion at scale.

FLOPs per image: `--flops-per-image`, else from throughput records of the full-width network (`--records`),
else XLA's cost analysis of the training step (`lensjax.models` summary; compiles each network once on this
machine, a minute or two on CPU). Parameter counts come from the networks themselves (`nnx.eval_shape`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
from typing import Any

from benchmarks import report, throughput
from lensjax import cli, registry
from lensjax import config as cfg

LOGGED_ISNET_STEP_S = 0.083          # s per iteration, original IS-Net, batch 8, one Perlmutter A100
LOGGED_ISNET_BATCH = 8
A100_PEAK_FLOPS = dict(throughput.GPU_PEAK_FLOPS)["A100"]   # dense TF32 / bf16 tensor-core peaks
XLA_ALL_REDUCE_COMBINE_BYTES = 30 * 2**20 + 7               # xla/service/collective_utils.h
BACKWARD_SHARE = 2 / 3               # backward = 2 x forward FLOPs: the share of compute that can hide comms
DEFAULT_NODES = (1, 2, 4, 8, 16, 32, 64, 128)
MODELS = registry.TRAINABLE_MODEL_NAMES


@dataclasses.dataclass(frozen=True)
class Machine:
  """The interconnect of Perlmutter GPU nodes (bandwidths in bytes/s per GPU and direction, latencies in s)."""
  gpus_per_node: int = 4
  nvlink_bandwidth: float = 300e9    # 12 NVLink-3 links x 25 GB/s
  nic_bandwidth: float = 25e9        # one Slingshot-11 NIC (200 Gb/s) per GPU
  nvlink_latency: float = 5e-6       # per ring step inside a node (assumed)
  network_latency: float = 10e-6     # per ring step between nodes (assumed, NCCL over libfabric)
  bucket_bytes: int = XLA_ALL_REDUCE_COMBINE_BYTES


@dataclasses.dataclass(frozen=True)
class Workload:
  """One network's data-parallel step on one GPU."""
  model: str
  parameters: int
  flops_per_image: float
  per_gpu_batch: int
  compute_s: float                   # forward + backward + update, per GPU and step
  compute_source: str

  @property
  def gradient_bytes(self) -> int:
    return 4 * self.parameters


def all_reduce_seconds(gradient_bytes: float, nodes: int, gpus_per_node: int, machine: Machine) -> dict[str, float]:
  """Hierarchical ring all-reduce of `gradient_bytes` over `nodes` x `gpus_per_node` GPUs: seconds inside the
  nodes (NVLink) and between them (Slingshot), and the number of buckets."""
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"nodes={nodes}, gpus_per_node={gpus_per_node}: expected at least one of each")
  buckets = max(1, math.ceil(gradient_bytes / machine.bucket_bytes))
  g = gpus_per_node
  if nodes == 1:
    intra = 2 * (g - 1) / g * gradient_bytes / machine.nvlink_bandwidth + buckets * 2 * (g - 1) * machine.nvlink_latency
    inter = 0.0
  else:
    # reduce-scatter then all-gather inside the node, each (g-1)/g of the bytes
    intra = 2 * ((g - 1) / g * gradient_bytes / machine.nvlink_bandwidth + buckets * (g - 1) * machine.nvlink_latency)
    inter = (2 * (nodes - 1) / nodes * (gradient_bytes / g) / machine.nic_bandwidth
             + buckets * 2 * (nodes - 1) * machine.network_latency)
  return {"intra_node_s": intra, "inter_node_s": inter, "total_s": intra + inter, "buckets": buckets}


def predict(workload: Workload, machine: Machine, nodes: int, gpus_per_node: int | None = None) -> dict[str, Any]:
  """Step time, efficiency and images/s at `nodes` x `gpus_per_node` GPUs, without and with overlap."""
  g = machine.gpus_per_node if gpus_per_node is None else gpus_per_node
  comm = all_reduce_seconds(workload.gradient_bytes, nodes, g, machine)
  compute = workload.compute_s
  exposed_overlap = 0.0 if comm["total_s"] == 0 else max(comm["total_s"] - BACKWARD_SHARE * compute,
                                                          comm["total_s"] / comm["buckets"])
  gpus = nodes * g
  result = {"nodes": nodes, "gpus": gpus, "compute_s": compute, **comm}
  for name, exposed in (("no_overlap", comm["total_s"]), ("overlap", exposed_overlap)):
    step = compute + exposed
    result[name] = {"step_s": step, "efficiency": compute / step,
                    "images_per_s": gpus * workload.per_gpu_batch / step}
  return result


def compute_seconds(source: str, flops_per_image: float, per_gpu_batch: int, dtype: str, utilisation: float,
                    isnet_flops_per_image: float | None) -> tuple[float, str]:
  """(per-GPU step compute in seconds, a sentence saying where it comes from)."""
  if source == "logged":
    if not isnet_flops_per_image:
      raise ValueError("compute source 'logged' scales IS-Net's logged step by FLOPs: IS-Net's FLOPs per image "
                       "are needed (include isnet in --models or give --flops-per-image isnet=...)")
    ratio = flops_per_image / isnet_flops_per_image
    seconds = LOGGED_ISNET_STEP_S * per_gpu_batch / LOGGED_ISNET_BATCH * ratio
    return seconds, (f"original IS-Net's logged {LOGGED_ISNET_STEP_S} s/step at batch {LOGGED_ISNET_BATCH} on an "
                     f"A100, x batch {per_gpu_batch}/{LOGGED_ISNET_BATCH} x FLOPs ratio {ratio:.3g}")
  if source == "flops":
    if not 0 < utilisation <= 1:
      raise ValueError(f"--utilisation={utilisation}: expected a fraction of the peak in (0, 1]")
    peak = A100_PEAK_FLOPS[dtype]
    seconds = flops_per_image * per_gpu_batch / (utilisation * peak)
    return seconds, (f"{flops_per_image / 1e9:.3g} GFLOP/image x {per_gpu_batch} at {utilisation:.0%} of the A100 "
                     f"{'TF32' if dtype == 'float32' else dtype} peak {peak / 1e12:.0f} TFLOP/s (assumed)")
  raise ValueError(f"compute source {source!r}: expected 'logged' or 'flops'")


# ---------------------------------------------------------------------------------------------------------------
# Inputs from the project: parameter counts, FLOPs per image, measured records


def model_config(config: cfg.Config, name: str) -> cfg.Config:
  """`config` with the reference network `name` (full width and depth): the scaling question is about those."""
  changed = cfg.from_dict(cfg.Config, cfg.to_dict(config))
  reference = cfg.ModelConfig()
  changed.model.name, changed.model.width, changed.model.depth = name, reference.width, reference.depth
  return changed


def image_side(config: cfg.Config) -> int:
  """Pixels per side of the pipeline's images for `config` (after resizing and padding), read without rendering."""
  from lensjax import data
  source = data.make_source(config, "train")
  return int(source.preprocessor.output_size(*source.raw.image_shape[:2])[0])


def network_summary(config: cfg.Config, params_only: bool) -> dict[str, float]:
  """Parameters (and, unless `params_only`, XLA's training FLOPs per image) of the config's network."""
  from lensjax import data
  from lensjax.models.__main__ import summarize
  return summarize(config.model.name, in_channels=data.input_channels(config),
                   out_channels=data.num_targets(config), width=config.model.width, depth=config.model.depth,
                   wiring=config.model.wiring, dtype=config.model.dtype, size=image_side(config),
                   batch=config.train.batch_size, params_only=params_only)


def flops_from_records(records: list[dict[str, Any]], name: str) -> float | None:
  """Training FLOPs per image of the full-width network `name` in throughput records, if any has them."""
  for record in records:
    model = record["config"]["model"]
    if model["name"] == name and model["width"] == 1.0:
      return float(record["points"][0]["train"]["flops_per_image"])
  return None


def measured_gpu_points(records: list[dict[str, Any]], name: str) -> list[tuple[int, float]]:
  """(nodes, efficiency) of full-width `name` measured on GPUs, relative to the 1-node point (4 GPUs)."""
  by_nodes: dict[int, float] = {}
  for record in records:
    model = record["config"]["model"]
    if record["hardware"]["platform"] != "gpu" or model["name"] != name or model["width"] != 1.0:
      continue
    for point in record["points"]:
      if point["devices"] == point["nodes"] * Machine().gpus_per_node:
        by_nodes[point["nodes"]] = point["train"]["images_per_s_per_device"]
  if 1 not in by_nodes:
    return []
  return sorted((nodes, rate / by_nodes[1]) for nodes, rate in by_nodes.items())


def parse_flops_option(text: str | None) -> dict[str, float]:
  if not text:
    return {}
  values = {}
  for item in text.split(","):
    name, sep, value = item.partition("=")
    if not sep or name not in MODELS:
      raise ValueError(f"--flops-per-image item {item!r}: expected NAME=FLOPS with NAME in {', '.join(MODELS)}")
    try:
      values[name] = float(value)
    except ValueError:
      raise ValueError(f"--flops-per-image item {item!r}: {value!r} is not a number") from None
  return values


# ---------------------------------------------------------------------------------------------------------------
# Report


def markdown(results: list[dict[str, Any]], machine: Machine) -> str:
  lines = ["# Modelled data-parallel scaling on Perlmutter (a model, not a measurement)", "",
           f"Per node {machine.gpus_per_node} A100; NVLink {machine.nvlink_bandwidth / 1e9:.0f} GB/s and Slingshot "
           f"{machine.nic_bandwidth / 1e9:.0f} GB/s per GPU and direction (nominal); latency per ring step "
           f"{machine.nvlink_latency * 1e6:.0f} us in a node, {machine.network_latency * 1e6:.0f} us between nodes "
           f"(assumed); gradients in buckets of {machine.bucket_bytes / 2**20:.0f} MiB. Weak scaling: a fixed batch "
           "per GPU. Efficiency = compute / step time (1.00 = linear).", ""]
  for result in results:
    workload = result["workload"]
    lines += [f"## {workload['model']}: compute from {result['source']}", "",
              f"{workload['parameters']:,} parameters ({workload['parameters'] * 4 / 1e6:.1f} MB of float32 "
              f"gradients), {workload['flops_per_image'] / 1e9:.3g} GFLOP per training image (XLA), batch "
              f"{workload['per_gpu_batch']} per GPU; compute {workload['compute_s'] * 1e3:.1f} ms per step: "
              f"{workload['compute_source']}.", "",
              "| nodes | GPUs | all-reduce ms (in node + between nodes) | step ms | efficiency | step ms, overlap | "
              "efficiency, overlap | images/s, overlap |",
              "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
      lines.append(
          f"| {row['nodes']} | {row['gpus']} | {row['total_s'] * 1e3:.2f} ({row['intra_node_s'] * 1e3:.2f} + "
          f"{row['inter_node_s'] * 1e3:.2f}) | {row['no_overlap']['step_s'] * 1e3:.1f} | "
          f"{row['no_overlap']['efficiency']:.3f} | {row['overlap']['step_s'] * 1e3:.1f} | "
          f"{row['overlap']['efficiency']:.3f} | {row['overlap']['images_per_s']:.0f} |")
    lines.append("")
  return "\n".join(lines)


def plot(results: list[dict[str, Any]], measured: dict[str, list[tuple[int, float]]], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  figure, ax = plt.subplots(figsize=(8, 5))
  colours = {}
  for result in results:
    model = result["workload"]["model"]
    rows = [r for r in result["rows"] if r["gpus"] % 4 == 0]
    nodes = [r["nodes"] for r in rows]
    key = (model, result["source"])
    colour = colours.setdefault(key, f"C{len(colours)}")
    ax.plot(nodes, [r["no_overlap"]["efficiency"] for r in rows], "-", color=colour,
            label=f"{model}, compute {result['source']}: no overlap (model)")
    ax.plot(nodes, [r["overlap"]["efficiency"] for r in rows], "--", color=colour,
            label=f"{model}, compute {result['source']}: overlap (model)")
  for index, (model, points) in enumerate(sorted(measured.items())):
    if points:
      ax.plot([p[0] for p in points], [p[1] for p in points], "ks^"[index % 3], markersize=8, linestyle="none",
              label=f"{model}: measured on GPUs")
  ax.axhline(1.0, color="grey", linestyle=":", label="ideal (linear scaling)")
  ax.set_xscale("log", base=2)
  all_nodes = sorted({r["nodes"] for result in results for r in result["rows"]})
  ax.set_xticks(all_nodes, [str(n) for n in all_nodes])
  ax.set_xlabel("Perlmutter nodes (4 A100 each)")
  ax.set_ylabel("data-parallel efficiency (compute / step time)")
  ax.set_ylim(0, 1.05)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, loc="lower left")
  ax.set_title("lensjax on Perlmutter: modelled weak scaling (lines), measured points (markers)", fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m benchmarks.scaling_model", description=__doc__.split("\n\n")[0])
  cli.add_config_argument(parser, help_text="config whose data and model settings are used (default: default)")
  parser.add_argument("--models", default=",".join(MODELS), help="networks to model (default isnet,msrfnet)")
  parser.add_argument("--nodes", default=",".join(map(str, DEFAULT_NODES)), help="node counts (default 1..128)")
  parser.add_argument("--per-gpu-batch", type=int, default=8, help="images per GPU and step (default 8)")
  parser.add_argument("--compute", default="logged,flops", help="compute sources: logged, flops (default both)")
  parser.add_argument("--utilisation", type=float, default=0.3,
                      help="assumed fraction of the A100 peak for the 'flops' source (default 0.3)")
  parser.add_argument("--flops-per-image", default=None, help="NAME=FLOPS,... training FLOPs per image")
  parser.add_argument("--records", nargs="*", default=[], help="throughput records or folders (GPU ones are plotted)")
  parser.add_argument("--nvlink-gbs", type=float, default=Machine.nvlink_bandwidth / 1e9)
  parser.add_argument("--nic-gbs", type=float, default=Machine.nic_bandwidth / 1e9)
  parser.add_argument("--nvlink-latency-us", type=float, default=Machine.nvlink_latency * 1e6)
  parser.add_argument("--network-latency-us", type=float, default=Machine.network_latency * 1e6)
  parser.add_argument("--out-dir", default=None, help="write scaling_model.md, .json and .png here")
  args, config = cli.parse_with_config(parser, argv)
  machine = machine_from_args(args)
  results, measured = run(args, config, machine)
  text = markdown(results, machine)
  print(text)
  if args.out_dir:
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling_model.md").write_text(text)
    (out_dir / "scaling_model.json").write_text(json.dumps(
        {"kind": "model (not a measurement)", "machine": dataclasses.asdict(machine), "results": results,
         "measured": measured}, indent=2) + "\n")
    plot(results, measured, out_dir / "scaling_model.png")
    print(f"wrote {out_dir}/scaling_model.md, .json, .png", file=sys.stderr)
  return 0


def machine_from_args(args: argparse.Namespace) -> Machine:
  return Machine(nvlink_bandwidth=args.nvlink_gbs * 1e9, nic_bandwidth=args.nic_gbs * 1e9,
                 nvlink_latency=args.nvlink_latency_us * 1e-6, network_latency=args.network_latency_us * 1e-6)


def run(args: argparse.Namespace, config: cfg.Config, machine: Machine
        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Predictions for every (model, compute source) on `machine`, and the measured GPU points per model."""
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  for name in models:
    if name not in MODELS:
      raise ValueError(f"--models: unknown network {name!r}; choose from {', '.join(MODELS)}")
  sources = [s.strip() for s in args.compute.split(",") if s.strip()]
  try:
    nodes = [int(n) for n in args.nodes.split(",")]
  except ValueError:
    raise ValueError(f"--nodes={args.nodes!r}: expected comma-separated node counts") from None
  if args.per_gpu_batch < 1:
    raise ValueError(f"--per-gpu-batch={args.per_gpu_batch}: expected a positive batch")
  records = report.load_records(args.records) if args.records else []
  given = parse_flops_option(args.flops_per_image)

  flops, parameters = {}, {}
  needed = set(models) | ({"isnet"} if "logged" in sources else set())
  for name in sorted(needed):
    network_config = model_config(config, name)
    flops[name] = given.get(name) or flops_from_records(records, name)
    summary = network_summary(network_config, params_only=flops[name] is not None)
    flops[name] = flops[name] or summary["train_flops"]
    parameters[name] = int(summary["parameters"])

  results = []
  for name in models:
    for source in sources:
      seconds, where = compute_seconds(source, flops[name], args.per_gpu_batch, config.model.dtype,
                                       args.utilisation, flops.get("isnet"))
      workload = Workload(name, parameters[name], flops[name], args.per_gpu_batch, seconds, where)
      rows = [predict(workload, machine, 1, g) for g in (1, 2)] + [predict(workload, machine, n) for n in nodes]
      results.append({"source": source, "workload": dataclasses.asdict(workload), "rows": rows})
  measured = {name: measured_gpu_points(records, name) for name in models}
  return results, measured


if __name__ == "__main__":
  sys.exit(main())
