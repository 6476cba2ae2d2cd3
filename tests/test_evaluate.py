"""`python -m lensjax.evaluate` reproduces the training loop's validation numbers from the saved checkpoint,
writes the table and the JSON, and bins IoU by the simulation parameters; a damaged checkpoint or an unwritable
output is one error line."""

import json
import os
import shutil

import numpy as np
import pytest

from lensjax import checkpoint, evaluate
from lensjax import config as cfg
from tests.helpers import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return tiny_run.trained_run(tmp_path_factory)


@pytest.mark.slow
def test_evaluate_the_best_checkpoint_on_the_validation_split_matches_the_training_log(run_dir, tmp_path,
                                                                                      tmp_path_factory):
  out = tmp_path / "evaluation"
  code, output = tiny_run.run("lensjax.evaluate", [str(run_dir), "--split", "val", "--out", str(out)],
                              tiny_run.compile_cache(tmp_path_factory), tmp_path / "evaluate.log")
  assert code == 0, output[-3000:]
  report = json.loads(out.with_suffix(".json").read_text())
  # Evaluation steps with a checkpoint (not step 0, the untrained model).
  validation = {r["step"]: r for r in tiny_run.read_metrics(run_dir) if r["split"] == "val" and r["step"] > 0}
  best = max(validation, key=lambda step: validation[step]["iou/mean"])
  assert report["step"] == best and report["split"] == "val" and report["images"] == 16
  for key, value in validation[best].items():
    if key not in ("step", "split"):
      assert report["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

  table = out.with_suffix(".md").read_text()
  assert table in output
  assert "| Target | Dice | mean fg/bg IoU | per-image min-max IoU | Precision | Recall |" in table
  for target in ("lens", "arcs"):
    row = next(line for line in table.splitlines() if line.startswith(f"| {target} |"))
    assert f"{report['metrics'][f'dice/{target}']:.4f}" == row.split("|")[2].strip()
  lenses = None
  for key in ("theta_E", "arc_snr", "arc_flux"):
    binned = report["iou_bins"][key]
    counted = sum(b["images"] for b in binned["bins"])
    lenses = counted if lenses is None else lenses
    assert counted == lenses and counted + binned["non_lenses"]["images"] == 16
    assert all(b["low"] <= b["high"] for b in binned["bins"]) and f"IoU by" in table


@pytest.mark.slow
def test_the_original_protocol_puts_each_row_beside_the_originals_number_on_a_harder_set(run_dir, tmp_path,
                                                                                      tmp_path_factory):
  out = tmp_path / "original"
  code, output = tiny_run.run("lensjax.evaluate", [str(run_dir), "--split", "val", "--protocol", "original",
                                                   "--source", "irregular", "--crowded", "--noise", "jwst",
                                                   "--out", str(out)],
                              tiny_run.compile_cache(tmp_path_factory), tmp_path / "evaluate.log")
  assert code == 0, output[-3000:]
  report = json.loads(out.with_suffix(".json").read_text())
  assert report["sim"].startswith("irregular sources, crowded field") and "poisson noise" in report["sim"]
  rows = {row["dataset"]: row for row in report["original_protocol"]}
  assert set(rows) == {"lens", "arcs"}
  lenses = report["images"] - report["iou_bins"]["theta_E"]["non_lenses"]["images"]
  assert rows["lens"]["images"] == report["images"] and rows["arcs"]["images"] == lenses
  assert rows["lens"]["original"] == {"dice": 0.9813, "miou": 0.9859, "precision": 0.9867, "recall": 0.9913}
  for row in rows.values():
    for name, value in row["lensjax"].items():
      assert row["difference"][name] == pytest.approx(value - row["original"][name])
  # Over every image, the lens row's mIoU is the per-image min-max IoU the evaluation step computes on the
  # devices (metrics.batch_sums): two implementations of the original's rule.
  assert rows["lens"]["lensjax"]["miou"] == pytest.approx(report["metrics"]["orig_miou/lens"], abs=1e-5)
  # Under MSRF-Net's definitions the mIoU is the global foreground IoU at 0.5 over every image: lensjax's IoU.
  for target, row in rows.items():
    assert row["other_definitions"]["network"] == "msrfnet"
    assert row["other_definitions"]["images"] == report["images"]
    assert row["other_definitions"]["lensjax"]["miou"] == pytest.approx(report["metrics"][f"iou/{target}"],
                                                                         abs=1e-5)
  table = out.with_suffix(".md").read_text()
  lens_row = next(line for line in table.splitlines() if line.startswith("| lenses | IS-Net | lensjax |"))
  assert lens_row.split("|")[5].strip() == f"{rows['lens']['lensjax']['miou']:.4f}"
  other_row = next(line for line in table.splitlines() if "lensjax, MSRF-Net's definitions" in line)
  assert other_row.split("|")[5].strip() == f"{rows['lens']['other_definitions']['lensjax']['miou']:.4f}"
  assert "| | | original | 0.9602 | 0.9547 | 0.9642 | 0.9704 |" in table.replace("|  |  |", "| | |")
  for figure in ("_hardest.png", "_iou.png"):
    assert out.with_name(out.name + figure).stat().st_size > 10_000


def test_binned_iou_averages_per_image_iou_in_quantile_bins_of_the_lenses():
  theta_e = np.array([0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 0.0, 0.0])
  iou = np.stack([np.linspace(0, 0.9, 10), np.linspace(1, 0.1, 10)], axis=1)
  per_image = {"iou": iou, "theta_E": theta_e, "is_lens": (theta_e > 0).astype(np.float32)}
  binned = evaluate.binned_iou(per_image, ("lens", "arcs"), "theta_E", num_bins=4)
  assert [b["images"] for b in binned["bins"]] == [2, 2, 2, 2]
  assert binned["bins"][0]["low"] == pytest.approx(0.6) and binned["bins"][-1]["high"] == pytest.approx(1.3)
  for number, row in enumerate(binned["bins"]):
    assert row["iou"]["lens"] == pytest.approx(iou[2 * number:2 * number + 2, 0].mean())
    assert row["iou"]["arcs"] == pytest.approx(iou[2 * number:2 * number + 2, 1].mean())
  assert binned["non_lenses"] == {"images": 2, "iou": {"lens": pytest.approx(0.85), "arcs": pytest.approx(0.15)}}
  assert evaluate.binned_iou({"iou": iou}, ("lens", "arcs"), "theta_E", 4) is None     # not simulated data


def test_unknown_checkpoint_step_lists_the_saved_ones(run_dir):
  with checkpoint.Checkpoints(run_dir / "checkpoints", cfg.CheckpointConfig(), read_only=True) as store:
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint of step 7; the checkpoints are of steps"):
      evaluate.select_step(store, "7")
    with pytest.raises(ValueError, match="expected best, last or a step number"):
      evaluate.select_step(store, "newest")
    assert evaluate.select_step(store, "last")[0] == tiny_run.NUM_STEPS


def test_only_the_data_can_be_overridden(run_dir):
  run = evaluate.load_run(run_dir, overrides=["--config.sim.noise=gaussian", "--config.data.sim_test_size=8"])
  assert run.config.sim.noise == "gaussian" and run.config.data.sim_test_size == 8
  with pytest.raises(cfg.ConfigError, match="only --config.sim.\\*, --config.data.\\* can be changed here"):
    evaluate.load_run(run_dir, overrides=["--config.model.width=0.5"])


def test_a_directory_without_checkpoints_is_named(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="neither a run directory"):
    evaluate.load_run(tmp_path)


def _copy_of(run_dir, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("evaluation_*"))
  return copy


@pytest.mark.slow
def test_the_table_is_printed_before_the_files_and_an_unwritable_path_is_one_error(run_dir, tmp_path,
                                                                                   tmp_path_factory):
  run = _copy_of(run_dir, tmp_path)
  # As root, a read-only folder is still writable: a directory where the table's file goes fails the same way.
  (run / f"evaluation_val_step{tiny_run.NUM_STEPS}.md").mkdir()
  code, output = tiny_run.run("lensjax.evaluate", [str(run), "--split", "val", "--checkpoint", "last"],
                              tiny_run.compile_cache(tmp_path_factory), tmp_path / "evaluate.log")
  assert code == 2, output[-3000:]
  assert "| Target | Dice | mean fg/bg IoU |" in output and "Traceback" not in output
  last = output.strip().splitlines()[-1]
  assert last.startswith(f"error: cannot write {run / f'evaluation_val_step{tiny_run.NUM_STEPS}.md'}")
  assert "the results are printed above: pass --out PATH" in last


@pytest.mark.parametrize("with_digests", [True, False])
def test_a_damaged_checkpoint_is_one_error_line(run_dir, tmp_path, tmp_path_factory, with_digests):
  run = _copy_of(run_dir, tmp_path)
  step_dir = run / "checkpoints" / str(tiny_run.NUM_STEPS)
  if not with_digests:                          # a checkpoint saved before digests: Orbax meets the damage
    (step_dir / checkpoint.DIGEST_FILE).unlink()
  for array_file in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
    os.truncate(array_file, 100)
  code, output = tiny_run.run("lensjax.evaluate", [str(run), "--checkpoint", "last"],
                              tiny_run.compile_cache(tmp_path_factory), tmp_path / "evaluate.log")
  assert code == 2
  assert output.count("\n") == 1 and output.startswith(f"error: checkpoint {step_dir} "), output[-3000:]
  assert ("cut short" if with_digests else "does not restore") in output
  assert "Traceback" not in output and "Event loop is closed" not in output


def test_test_time_augmentation_averages_views_turned_back_into_the_images_orientation():
  import jax
  import jax.numpy as jnp
  from lensjax import train_step
  from lensjax.models import build
  model = build("isnet", in_channels=1, out_channels=2, width=0.125, depth=2, seed=0)
  model.eval()
  image = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)
  probabilities = lambda x, tta: np.asarray(train_step.predicted_probabilities(model, {"image": x}, tta))
  rotate = lambda a: np.rot90(np.asarray(a), 1, axes=(1, 2))
  mirror = lambda a: np.flip(np.asarray(a), 2)
  plain = probabilities(image, "none")
  np.testing.assert_array_equal(plain, np.asarray(jax.nn.sigmoid(model.prediction(model(image)))))
  assert not np.allclose(probabilities(rotate(image), "none"), rotate(plain), atol=1e-3)    # the network is not
  assert not np.allclose(probabilities(mirror(image), "none"), mirror(plain), atol=1e-3)   # symmetric by itself
  hflip = probabilities(image, "hflip")
  np.testing.assert_allclose(hflip, (plain + mirror(probabilities(mirror(image), "none"))) / 2, atol=1e-6)
  np.testing.assert_allclose(probabilities(mirror(image), "hflip"), mirror(hflip), atol=1e-6)
  d4 = probabilities(image, "d4")
  for turn in (rotate, mirror, lambda a: rotate(mirror(a))):
    np.testing.assert_allclose(probabilities(turn(image), "d4"), turn(d4), atol=1e-6)
  with pytest.raises(ValueError, match="square"):
    probabilities(image[:, :8], "d4")
  with pytest.raises(ValueError, match="tta='flip'"):
    probabilities(image, "flip")


@pytest.mark.slow
def test_evaluate_with_tta_scores_the_averaged_maps_and_says_so(run_dir):
  run = evaluate.load_run(run_dir)
  plain, _ = evaluate.evaluate_run(run, "val")
  report, result = evaluate.evaluate_run(run, "val", tta="d4")
  assert plain["tta"] == "none" and report["tta"] == "d4"
  assert "Test-time augmentation: d4, the mean of 8 views." in evaluate.markdown(report)
  assert "Test-time augmentation" not in evaluate.markdown(plain)
  assert report["metrics"]["loss"] == pytest.approx(plain["metrics"]["loss"], rel=1e-5)   # losses: the image alone
  assert report["metrics"]["dice/arcs"] != plain["metrics"]["dice/arcs"]
  assert 0.0 <= result.maps["probabilities"].min() and result.maps["probabilities"].max() <= 1.0
  with pytest.raises(ValueError, match="--tta"):
    evaluate.evaluate_run(run, "val", tta="flip")
