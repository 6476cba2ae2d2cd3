"""The throughput benchmark, its report and the Perlmutter scaling model.

The slow tests run the real benchmark as subprocesses on a tiny IS-Net over a tiny npy dataset: a sweep over 1 and
2 fake CPU devices in one process, and a point of 2 local processes (jax.distributed on localhost); the report
merges their two records.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import report, scaling_model, throughput
from tests.helpers import tiny_run

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# throughput.py: the parts that need no devices


ASYNC_HLO = """
HloModule jit_step, entry_computation_layout={(f32[64]{0})->f32[64]{0}}
ENTRY %main {
  %p = f32[3,3,16,16]{3,2,1,0} parameter(0)
  %all-reduce-start = (f32[3,3,16,16]{3,2,1,0}, f32[16]{0}) all-reduce-start(%p, %q), channel_id=1, to_apply=%add
  %all-reduce-done = (f32[3,3,16,16]{3,2,1,0}, f32[16]{0}) all-reduce-done(%all-reduce-start)
  %all-reduce.7 = bf16[10]{0} all-reduce(%r), channel_id=2, replica_groups={{0,1}}, to_apply=%add.1
  %all-gather-start = (f32[8]{0}, f32[32]{0}) all-gather-start(%s), dimensions={0}
  %all-gather-done = f32[32]{0} all-gather-done(%all-gather-start)
  ROOT %reduce-scatter.1 = f32[2,5]{1,0} reduce-scatter(%t), dimensions={0}, to_apply=%add.2
  %fusion = f32[4]{0} fusion(%all-reduce.7), kind=kLoop, calls=%all-reduce-like-name
}
"""


def test_hlo_collectives_counts_each_collective_once_and_sizes_it_by_its_result():
  found = throughput.hlo_collectives(ASYNC_HLO)
  # async pair counted at its start, sized by its done: 3*3*16*16*4 + 16*4 bytes; plus 10 bf16
  assert found["all-reduce"] == {"count": 2, "bytes": 3 * 3 * 16 * 16 * 4 + 16 * 4 + 10 * 2}
  assert found["all-gather"] == {"count": 1, "bytes": 32 * 4}
  assert found["reduce-scatter"] == {"count": 1, "bytes": 2 * 5 * 4}
  assert found["all-to-all"] == {"count": 0, "bytes": 0}


def test_hlo_collectives_rejects_an_element_type_of_unknown_size():
  assert throughput.hlo_collectives("%x = f8e4m3fn[4]{0} all-reduce(%y)")["all-reduce"]["bytes"] == 4
  with pytest.raises(ValueError, match="q7"):
    throughput.hlo_collectives("%x = q7[4]{0} all-reduce(%y), to_apply=%add")


def test_step_time_stats_gives_median_and_spread():
  stats = throughput.step_time_stats(np.array([0.3, 0.1, 0.2, 0.4, 10.0]))
  assert stats["median"] == pytest.approx(0.3)
  assert stats["min"] == pytest.approx(0.1) and stats["max"] == pytest.approx(10.0)
  assert stats["p10"] < stats["median"] < stats["p90"]
  assert stats["count"] == 5


def test_sweep_points_pair_each_process_count_with_the_device_counts_it_divides():
  assert throughput.sweep_points("1,2,4", "1", batch_size=8, scaling="strong") == [(1, 1), (1, 2), (1, 4)]
  assert throughput.sweep_points("1,2,4", "1,2", batch_size=8, scaling="strong") == [
      (1, 1), (1, 2), (1, 4), (2, 2), (2, 4)]
  with pytest.raises(ValueError, match="not divisible by 3 devices"):
    throughput.sweep_points("1,3", "1", batch_size=8, scaling="strong")
  assert throughput.sweep_points("3", "1", batch_size=8, scaling="weak") == [(1, 3)]
  assert throughput.sweep_points("2,3", "2", batch_size=12, scaling="weak") == [(2, 2)]
  with pytest.raises(ValueError, match="none of --devices=3 splits over 2 processes"):
    throughput.sweep_points("3", "1,2", batch_size=12, scaling="weak")
  with pytest.raises(ValueError, match="comma-separated positive counts"):
    throughput.sweep_points("two", "1", batch_size=8, scaling="strong")
  with pytest.raises(ValueError, match="--processes='0'"):
    throughput.sweep_points("2", "0", batch_size=8, scaling="strong")


def test_gpu_peaks_follow_the_device_kind_and_the_compute_dtype():
  a100, source = throughput.gpu_peak_flops("NVIDIA A100-SXM4-40GB", "float32")
  assert a100 == 156e12 and "TF32" in source
  assert throughput.gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == 312e12
  assert throughput.gpu_peak_flops("NVIDIA H100 PCIe", "float32")[0] < throughput.gpu_peak_flops(
      "NVIDIA H100 80GB HBM3", "float32")[0]
  peak, source = throughput.gpu_peak_flops("Tesla T4", "float32")
  assert peak is None and "T4" in source


def test_synthetic_batch_keeps_shapes_and_dtypes_binary_maps_and_image_statistics():
  rng = np.random.default_rng(1)
  real = {"image": rng.normal(3.0, 2.0, (4, 16, 16, 1)).astype(np.float32),
          "mask": (rng.random((4, 16, 16, 2)) < 0.3).astype(np.float32),
          "valid": np.ones(4, np.float32), "index": np.arange(4)}
  fake = throughput.synthetic_batch(real, seed=0)
  for key in real:
    assert fake[key].shape == real[key].shape and fake[key].dtype == real[key].dtype
  assert set(np.unique(fake["mask"])) <= {0.0, 1.0} and 0.15 < fake["mask"].mean() < 0.45
  assert np.all(fake["valid"] == 1.0)
  assert abs(fake["image"].mean() - 3.0) < 0.3 and abs(fake["image"].std() - 2.0) < 0.3
  assert not np.array_equal(fake["image"], real["image"])
  np.testing.assert_array_equal(fake["index"], real["index"])


def test_command_line_refuses_too_few_timed_steps(capsys):
  with pytest.raises(SystemExit) as exit_info:
    throughput.main(["--steps", "5"])
  assert exit_info.value.code == 2 and "--steps=5: time at least 20 steps" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# report.py on hand-made records (the arithmetic), then on real ones (slow)


def _record(scaling, points, platform="cpu"):
  return {"schema": report.SCHEMA, "command": ["python", "-m", "benchmarks.throughput"], "scaling": scaling,
          "batch_size_option": 8,
          "config": {"model": {"name": "isnet", "width": 0.0625, "depth": 3, "dtype": "float32"},
                     "data": {"source": "npy"}, "train": {"fsdp": False}},
          "hardware": {"platform": platform, "device_kind": "cpu", "cpu_model": "test CPU", "cpu_count": 2,
                       "note": "fake devices"},
          "points": points}


def _point(devices, images_per_s, processes=1, nodes=1):
  return {"devices": devices, "processes": processes, "devices_per_process": devices // processes, "nodes": nodes,
          "global_batch": 8, "platform": "cpu", "device_kind": "cpu", "peak_source": "probe",
          "memory": {"peak_bytes": 2**20, "source": "analysis"}, "load_average_before": [1.0, 1.0, 1.0],
          "input_pipeline": {"images_per_s": 500.0, "keeps_up": True},
          "train": {"step_s": {"median": 8 / images_per_s, "p10": 0.9 * 8 / images_per_s,
                               "p90": 1.1 * 8 / images_per_s},
                    "images_per_s": images_per_s, "images_per_s_per_device": images_per_s / devices,
                    "flops_per_image": 1e9, "achieved_flops_per_s": 1e9 * images_per_s, "fraction_of_peak": 0.1,
                    "compile_s": 3.0, "collectives": {"all-reduce": {"count": 5, "bytes": 2**20}}}}


def test_report_efficiency_is_per_device_throughput_over_the_smallest_point_of_its_group(tmp_path):
  files = []
  for name, record in (("a", _record("strong", [_point(4, 160.0), _point(1, 100.0)])),
                       ("b", _record("weak", [_point(2, 150.0)]))):
    files.append(tmp_path / f"{name}.json")
    files[-1].write_text(json.dumps(record))
  rows = report.rows_from_records(report.load_records([tmp_path]))
  strong = [r for r in rows if r["group"][5] == "strong"]
  assert [r["point"]["devices"] for r in strong] == [1, 4]
  assert [r["efficiency"] for r in strong] == pytest.approx([1.0, 160.0 / 4 / 100.0])
  weak = [r for r in rows if r["group"][5] == "weak"]
  assert weak[0]["efficiency"] == 1.0
  text = report.markdown(rows)
  assert text.count("| 1 | 1 × 1 |") == 1 and "| 0.40 |" in text
  assert "strong scaling" in text and "weak scaling" in text
  written = report.plot(rows, tmp_path)
  assert [p.name for p in written] == ["scaling_devices.png"] and written[0].stat().st_size > 10_000


def test_report_refuses_a_file_that_is_not_a_record(tmp_path):
  bad = tmp_path / "metrics.json"
  bad.write_text(json.dumps({"loss": 1.0}))
  with pytest.raises(ValueError, match="metrics.json: not a throughput record"):
    report.load_records([bad])
  with pytest.raises(ValueError, match="no such record"):
    report.load_records([tmp_path / "missing.json"])


# ---------------------------------------------------------------------------------------------------------------
# scaling_model.py


def test_ring_all_reduce_costs_follow_the_alpha_beta_formulas():
  machine = scaling_model.Machine(nvlink_bandwidth=100e9, nic_bandwidth=10e9, nvlink_latency=1e-6,
                                  network_latency=2e-6, bucket_bytes=2**40)
  gradient = 4e8
  assert scaling_model.all_reduce_seconds(gradient, 1, 1, machine)["total_s"] == 0.0
  one_node = scaling_model.all_reduce_seconds(gradient, 1, 4, machine)
  assert one_node["total_s"] == pytest.approx(2 * 3 / 4 * gradient / 100e9 + 2 * 3 * 1e-6)
  eight = scaling_model.all_reduce_seconds(gradient, 8, 4, machine)
  assert eight["intra_node_s"] == pytest.approx(one_node["total_s"])
  assert eight["inter_node_s"] == pytest.approx(2 * 7 / 8 * (gradient / 4) / 10e9 + 2 * 7 * 2e-6)
  many = scaling_model.all_reduce_seconds(gradient, 8, 4, scaling_model.Machine(bucket_bytes=10**8))
  assert many["buckets"] == 4


def test_overlap_hides_communication_except_the_last_bucket():
  machine = scaling_model.Machine()
  workload = scaling_model.Workload("isnet", parameters=44_000_000, flops_per_image=30e9, per_gpu_batch=8,
                                    compute_s=0.005, compute_source="test")
  previous = 1.0
  for nodes in (1, 2, 8, 32, 128):
    row = scaling_model.predict(workload, machine, nodes)
    assert row["overlap"]["efficiency"] >= row["no_overlap"]["efficiency"]
    assert row["no_overlap"]["efficiency"] <= previous
    previous = row["no_overlap"]["efficiency"]
    exposed = row["overlap"]["step_s"] - row["compute_s"]
    assert exposed >= row["total_s"] / row["buckets"] - 1e-12
  slow = scaling_model.Workload("isnet", 44_000_000, 30e9, 8, compute_s=100.0, compute_source="test")
  assert scaling_model.predict(slow, machine, 128)["overlap"]["efficiency"] > 0.999


def test_compute_time_from_the_logged_step_and_from_flops():
  seconds, where = scaling_model.compute_seconds("logged", 30e9, 8, "float32", 0.3, isnet_flops_per_image=30e9)
  assert seconds == pytest.approx(0.083) and "0.083" in where
  seconds, _ = scaling_model.compute_seconds("logged", 90e9, 16, "float32", 0.3, isnet_flops_per_image=30e9)
  assert seconds == pytest.approx(0.083 * 2 * 3)
  seconds, where = scaling_model.compute_seconds("flops", 30e9, 8, "float32", 0.5, None)
  assert seconds == pytest.approx(30e9 * 8 / (0.5 * 156e12)) and "assumed" in where
  with pytest.raises(ValueError, match="utilisation"):
    scaling_model.compute_seconds("flops", 30e9, 8, "float32", 1.5, None)


def test_scaling_model_command_line_writes_a_labelled_table_json_and_figure(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.scaling_model", "--flops-per-image", "isnet=30e9,msrfnet=100e9",
       "--nodes", "1,8,32,128", "--out-dir", str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "a model, not a measurement" in result.stdout
  saved = json.loads((tmp_path / "scaling_model.json").read_text())
  assert saved["kind"] == "model (not a measurement)"
  by_key = {(r["workload"]["model"], r["source"]): r for r in saved["results"]}
  assert set(by_key) == {("isnet", "logged"), ("isnet", "flops"), ("msrfnet", "logged"), ("msrfnet", "flops")}
  isnet = by_key["isnet", "logged"]
  assert 40_000_000 < isnet["workload"]["parameters"] < 50_000_000          # the reference IS-Net, not a tiny one
  assert 15_000_000 < by_key["msrfnet", "logged"]["workload"]["parameters"] < 25_000_000
  assert [r["nodes"] for r in isnet["rows"] if r["gpus"] % 4 == 0] == [1, 8, 32, 128]
  assert (tmp_path / "scaling_model.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------------------------
# The real benchmark (slow): a 1-and-2-fake-device sweep and a 2-process point, merged by the report


def _benchmark(tmp_path, name, tiny_job, *args):
  out = tmp_path / f"{name}.json"
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_NUM_CPU", "XLA_FLAGS"))}
  result = subprocess.run([sys.executable, "-m", "benchmarks.throughput", *tiny_job, "--config.model.depth=1",
                           "--batch-size", "4", "--input-batches", "3", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return json.loads(out.read_text()), result.stdout


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("throughput")
  tiny_job = tiny_run.write_tiny_npy_job(tmp_path / "data")
  sweep, sweep_stdout = _benchmark(tmp_path, "sweep", tiny_job, "--devices", "1,2", "--scaling", "strong")
  processes, _ = _benchmark(tmp_path, "processes", tiny_job, "--devices", "2", "--processes", "2", "--scaling",
                            "strong", "--no-eval")
  return tmp_path, sweep, sweep_stdout, processes


@pytest.mark.slow
def test_sweep_record_measures_every_point_of_a_strong_scaling_run(records):
  _, sweep, stdout, _ = records
  assert sweep["schema"] == throughput.SCHEMA and sweep["scaling"] == "strong"
  assert "share this host's" in sweep["hardware"]["note"]          # CPU scaling is labelled as overhead
  assert sweep["versions"]["jax"] and sweep["config"]["model"]["width"] == 0.0625
  one, two = sweep["points"]
  assert (one["devices"], two["devices"]) == (1, 2)
  assert one["global_batch"] == two["global_batch"] == 4 and two["per_device_batch"] == 2
  for point in (one, two):
    train = point["train"]
    assert train["step_s"]["count"] >= throughput.MIN_TIMED_STEPS
    assert train["step_s"]["p10"] <= train["step_s"]["median"] <= train["step_s"]["p90"]
    assert train["images_per_s"] == pytest.approx(4 / train["step_s"]["median"])
    assert train["compile_s"] > 0 and point["eval"]["images_per_s"] > 0
    # against the matmul probe of the same run, which no step of a convolutional network outruns
    assert train["fraction_of_peak"] == pytest.approx(train["achieved_flops_per_s"] / point["peak_flops_per_s"])
    assert 0 < train["fraction_of_peak"] < 1
    assert point["memory"]["peak_bytes"] > 0
    pipeline = point["input_pipeline"]
    assert pipeline["images_per_s"] == min(pipeline["per_process_images_per_s"]) > 0
    assert pipeline["keeps_up"] is (pipeline["images_per_s"] >= train["images_per_s"] / point["processes"])
  # FLOPs per image barely depend on the device count (XLA's figure is per device, times the devices): only the
  # replicated work (the optimizer update, the metrics) is done once more per added device
  assert one["train"]["flops_per_image"] <= two["train"]["flops_per_image"] < 1.2 * one["train"]["flops_per_image"]
  # one device needs no collective; two all-reduce every float32 gradient at least (plus the BatchNorm moments
  # and the metric sums)
  assert one["train"]["collectives"]["all-reduce"]["count"] == 0
  gradients = two["train"]["collectives"]["all-reduce"]
  assert two["parameters"] == one["parameters"] > 1000
  assert gradients["count"] > 0 and gradients["bytes"] >= 4 * two["parameters"]
  assert "images/s" in stdout and "wrote" in stdout


@pytest.mark.slow
def test_two_local_processes_form_one_job_and_process_zero_writes_the_record(records):
  _, sweep, _, processes = records
  (point,) = processes["points"]
  assert (point["processes"], point["devices_per_process"], point["devices"]) == (2, 1, 2)
  assert len(point["train"]["per_process_median_s"]) == 2
  assert point["train"]["collectives"]["all-reduce"]["count"] > 0
  assert "eval" not in point


@pytest.mark.slow
def test_report_merges_the_records_into_one_group_and_draws_the_figures(records, tmp_path):
  folder, *_ = records
  result = subprocess.run([sys.executable, "-m", "benchmarks.report", str(folder / "sweep.json"),
                           str(folder / "processes.json"), "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  table = [line for line in result.stdout.splitlines() if line.startswith("| 1 |")]
  assert len(table) == 3                                     # 1 x 1, 1 x 2, 2 x 1 in one group
  assert result.stdout.count("## ") == 1
  assert table[0].split(" | ")[6] == "1.00"                 # the 1-device point is the baseline
  assert "overhead, not speed-up" in result.stdout
  assert (tmp_path / "report.md").read_text() + "\n" == result.stdout
  assert (tmp_path / "scaling_devices.png").stat().st_size > 10_000
