"""Merges throughput records (`benchmarks/throughput.py`) into a Markdown table and scaling figures.

  python -m benchmarks.report runs/benchmarks/throughput-*.json            # the table, on stdout
  python -m benchmarks.report RECORDS_OR_FOLDERS... --out-dir runs/benchmarks/report
      # also writes report.md, scaling_devices.png and, when the points span several nodes, scaling_nodes.png

Points are grouped by what must match for a scaling comparison: platform and device kind, the model (name,
width, depth, compute dtype, image size), the scaling mode and the batch option. Within a group, the scaling
efficiency of a point is its images/s per device over that of the group's point with the fewest devices (ties:
fewest processes): 1.0 is ideal (linear) scaling, for strong scaling (fixed global batch) and weak scaling (fixed
per-device batch) alike. The figures draw images/s and efficiency against devices (and nodes), each with its
ideal line. CPU groups are labelled for what they measure: fake devices share the same cores, so their "scaling"
is the overhead of splitting the step, not a speed-up.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterable
from typing import Any

from lensjax import cli, registry

SCHEMA = "lensjax.throughput/1"


def load_records(paths: Iterable[str | pathlib.Path]) -> list[dict[str, Any]]:
  """Reads records from files and from folders (their *.json); a file that is not a record is an error."""
  files: list[pathlib.Path] = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      files += sorted(path.glob("*.json"))
    elif path.is_file():
      files.append(path)
    else:
      raise ValueError(f"{path}: no such record file or folder")
  if not files:
    raise ValueError(f"no *.json records in {', '.join(map(str, paths))}")
  records = []
  for file in files:
    try:
      record = json.loads(file.read_text())
    except json.JSONDecodeError as error:
      raise ValueError(f"{file}: not JSON ({error})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
      raise ValueError(f"{file}: not a throughput record (schema {SCHEMA}); make one with "
                       "`python -m benchmarks.throughput`")
    record["_file"] = str(file)
    records.append(record)
  return records


def model_label(config: dict[str, Any]) -> str:
  model = config["model"]
  label = f"{model['name']} width {model['width']:g}"
  if len(registry.network(model["name"]).depths) > 1:     # the depth is an option of this network
    label += f" depth {model['depth']}"
  return f"{label}, {model['dtype']}, {config['data']['source']} data"


def group_label(record: dict[str, Any]) -> str:
  hardware = record["hardware"]
  device = hardware["device_kind"] if hardware["platform"] != "cpu" else (
      f"CPU {hardware['cpu_model']} ({hardware['cpu_count']} cores)")
  batch = ("global batch" if record["scaling"] == "strong" else "batch per device") + f" {record['batch_size_option']}"
  return f"{model_label(record['config'])} on {device}: {record['scaling']} scaling, {batch}"


def rows_from_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per point, with its group and its scaling efficiency within the group."""
  rows = []
  for record in records:
    hardware, config = record["hardware"], record["config"]
    key = (hardware["platform"], hardware["device_kind"], hardware.get("cpu_model"),
           json.dumps(config["model"], sort_keys=True), json.dumps(config["data"], sort_keys=True),
           record["scaling"], record["batch_size_option"], config["train"].get("fsdp"))
    for point in record["points"]:
      device = "CPU" if hardware["platform"] == "cpu" else hardware["device_kind"]
      rows.append({"group": key, "label": group_label(record), "note": hardware.get("note", ""),
                   "short_label": f"{model_label(config)} ({device}), {record['scaling']}",
                   "file": record["_file"], "command": record["command"], "point": point})
  by_group = groups(rows)
  for group_rows in by_group.values():
    group_rows.sort(key=lambda r: (r["point"]["devices"], r["point"]["nodes"], r["point"]["processes"]))
    base = group_rows[0]["point"]["train"]["images_per_s_per_device"]
    for row in group_rows:
      row["efficiency"] = row["point"]["train"]["images_per_s_per_device"] / base
  return [row for group_rows in by_group.values() for row in group_rows]


def groups(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
  """The rows by their comparison group, groups and rows in the order given."""
  by_group: dict[tuple, list[dict[str, Any]]] = {}
  for row in rows:
    by_group.setdefault(row["group"], []).append(row)
  return by_group


def _efficiency(value: float) -> str:
  return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def _fmt(value: float | None, spec: str) -> str:
  return "–" if value is None else format(value, spec)


TABLE_HEADER = ("| nodes | processes × devices | global batch | train step ms, median (p10–p90) | images/s | "
                "per device | efficiency | GFLOP/image | achieved GFLOP/s | % of peak | peak memory MiB | "
                "all-reduce n / MiB | compile s | eval images/s | input images/s per process (keeps up) |")


def table_row(row: dict[str, Any]) -> str:
  point = row["point"]
  train = point["train"]
  step = train["step_s"]
  all_reduce = train["collectives"]["all-reduce"]
  pipeline = point["input_pipeline"]
  keeps_up = {True: "yes", False: "no", None: "–"}[pipeline["keeps_up"]]
  fraction = train["fraction_of_peak"]
  cells = [
      str(point["nodes"]), f"{point['processes']} × {point['devices_per_process']}", str(point["global_batch"]),
      f"{step['median'] * 1e3:.1f} ({step['p10'] * 1e3:.1f}–{step['p90'] * 1e3:.1f})",
      f"{train['images_per_s']:.1f}", f"{train['images_per_s_per_device']:.1f}", _efficiency(row["efficiency"]),
      f"{train['flops_per_image'] / 1e9:.3g}", f"{train['achieved_flops_per_s'] / 1e9:.3g}",
      _fmt(None if fraction is None else 100 * fraction, ".2g"), f"{point['memory']['peak_bytes'] / 2**20:.1f}",
      f"{all_reduce['count']} / {all_reduce['bytes'] / 2**20:.2f}", f"{train['compile_s']:.1f}",
      _fmt(point.get("eval", {}).get("images_per_s"), ".1f"),
      f"{_fmt(pipeline['images_per_s'], '.1f')} ({keeps_up})",
  ]
  return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict[str, Any]]) -> str:
  """The report: per group a heading, what the numbers are, and the table."""
  lines = ["# lensjax training throughput", ""]
  for group_rows in groups(rows).values():
    first = group_rows[0]
    point = first["point"]
    lines += [f"## {first['label']}", ""]
    kind = "Measured on CPU" if point["platform"] == "cpu" else f"Measured on {point['device_kind']}"
    lines.append(f"{kind}. {first['note']}." if first["note"] else f"{kind}.")
    lines.append(f"Peak FLOP/s: {point['peak_source']}. Peak memory: {point['memory']['source']}. "
                 "Efficiency: images/s per device relative to the first row (1.00 = linear scaling).")
    loads = sorted({tuple(r["point"]["load_average_before"]) for r in group_rows})
    lines.append(f"Load average (1, 5, 15 min) before the points: {', '.join(str(list(l)) for l in loads)}.")
    lines += ["", TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    lines += [table_row(r) for r in group_rows]
    commands = sorted({" ".join(r["command"]) for r in group_rows})
    lines += ["", "Made by:", ""] + [f"    {c}" for c in commands] + [""]
  return "\n".join(lines)


def launch(point: dict[str, Any]) -> str:
  """How a point's devices were driven: the series it is drawn in."""
  if point["processes"] == 1:
    return "1 process"
  if point["devices_per_process"] == 1:
    return "1 process per device"
  return f"{point['devices_per_process']} devices per process"


def plot(rows: list[dict[str, Any]], out_dir: pathlib.Path) -> list[pathlib.Path]:
  """Images/s and efficiency against devices (and against nodes when a group spans several node counts): one
  colour per group, one marker per launch layout, the group's ideal line dashed."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  from matplotlib import ticker

  by_group = groups(rows)
  axes_specs = [("devices", "devices (GPUs, or fake CPU devices)", "scaling_devices.png")]
  if any(len({r["point"]["nodes"] for r in g}) > 1 for g in by_group.values()):
    axes_specs.append(("nodes", "nodes (the point with the most devices at each node count)", "scaling_nodes.png"))
  markers = {"1 process": "o", "1 process per device": "s"}
  written = []
  for axis, xlabel, filename in axes_specs:
    figure, (ax_rate, ax_eff) = plt.subplots(1, 2, figsize=(12, 4.5))
    ticks = set()
    for index, group_rows in enumerate(by_group.values()):
      colour = f"C{index}"
      chosen = group_rows if axis == "devices" else _most_devices_per_node_count(group_rows)
      base = chosen[0]
      base_x = base["point"][axis]
      base_rate = base["point"]["train"]["images_per_s"]
      xs = sorted({r["point"][axis] for r in chosen})
      ticks.update(xs)
      ax_rate.plot(xs, [base_rate * x / base_x for x in xs], "--", color=colour, alpha=0.5)
      series: dict[str, list[dict[str, Any]]] = {}
      for row in chosen:
        series.setdefault(launch(row["point"]) if axis == "devices" else "nodes", []).append(row)
      for name, series_rows in series.items():
        series_rows = sorted(series_rows, key=lambda r: r["point"][axis])
        x = [r["point"][axis] for r in series_rows]
        label = f"{group_rows[0]['short_label']}: {name}"
        marker = markers.get(name, "^")
        ax_rate.plot(x, [r["point"]["train"]["images_per_s"] for r in series_rows], marker + "-", color=colour,
                     label=label)
        efficiency = [r["point"]["train"]["images_per_s_per_device"] / base["point"]["train"]["images_per_s_per_device"]
                      for r in series_rows]
        ax_eff.plot(x, efficiency, marker + "-", color=colour, label=label)
    ax_eff.axhline(1.0, color="grey", linestyle="--", label="ideal (linear scaling)")
    ax_rate.plot([], [], "--", color="grey", label="ideal: linear from the group's first point")
    for ax in (ax_rate, ax_eff):
      ax.set_xscale("log", base=2)
      ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
      ax.set_xlabel(xlabel)
      ax.grid(True, which="both", alpha=0.3)
      ax.legend(fontsize=7)
    ax_rate.set_yscale("log")
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax_rate.yaxis.set_major_formatter(plain)
    ax_rate.yaxis.set_minor_formatter(plain)
    ax_rate.set_ylabel("training images/s (total)")
    ax_eff.set_ylabel("scaling efficiency (images/s per device / first point's)")
    ax_eff.set_ylim(bottom=0)
    cpu = any(r["point"]["platform"] == "cpu" for r in rows)
    figure.suptitle("lensjax training throughput (measured)" +
                    (" -- CPU fake devices share cores: overhead, not speed-up" if cpu else ""), fontsize=10)
    figure.tight_layout()
    path = out_dir / filename
    figure.savefig(path, dpi=120)
    plt.close(figure)
    written.append(path)
  return written


def _most_devices_per_node_count(group_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  chosen: dict[int, dict[str, Any]] = {}
  for row in group_rows:
    nodes = row["point"]["nodes"]
    if nodes not in chosen or row["point"]["devices"] > chosen[nodes]["point"]["devices"]:
      chosen[nodes] = row
  return [chosen[n] for n in sorted(chosen)]


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
  parser.add_argument("records", nargs="+", help="record files or folders of them")
  parser.add_argument("--out-dir", default=None, help="write report.md and the figures here")
  args = parser.parse_args(argv)
  rows = rows_from_records(load_records(args.records))
  text = markdown(rows)
  print(text)
  if args.out_dir:
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(text)
    for path in plot(rows, out_dir):
      print(f"wrote {path}", file=sys.stderr)
    print(f"wrote {out_dir / 'report.md'}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
