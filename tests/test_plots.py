"""The figures a run writes are valid PNGs with content; outlines and TensorBoard events are right."""

import struct

import numpy as np
import pytest
from PIL import Image

from lensjax import plots, run_directory
from tests.helpers import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return tiny_run.trained_run(tmp_path_factory)


def _open_png(path) -> np.ndarray:
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.load()
    return np.asarray(image.convert("RGB"))


def test_the_training_run_wrote_its_curves_and_prediction_panels(run_dir):
  curves = _open_png(run_dir / plots.CURVES_FILE)
  panels = _open_png(run_dir / plots.PREDICTIONS_FILE)
  assert curves.shape[1] > 1000 and curves.std() > 10
  # figure_images=2 rows of image + (truth, prediction) x 2 targets.
  assert panels.shape[0] > 300 and panels.shape[1] > 800 and panels.std() > 10


def test_curves_show_every_split_and_target(tmp_path):
  records = ([{"step": s, "split": "train", "loss": 1 / s, "iou/lens": s / 10, "iou/arcs": s / 20}
              for s in range(1, 11)]
             + [{"step": s, "split": "val", "loss": 2 / s, "iou/lens": s / 11, "iou/arcs": s / 21} for s in (5, 10)])
  path = plots.plot_curves(records, ("lens", "arcs"), tmp_path / "curves.png", title="test")
  pixels = _open_png(path)
  colours = {tuple(c) for c in pixels.reshape(-1, 3)}
  assert all(colour in colours for colour in plots.TARGET_COLORS[:2])   # the IoU lines of both targets
  assert plots.read_metrics(tmp_path / "missing.jsonl") == []


def test_prediction_panels_check_their_inputs(tmp_path):
  images = np.random.default_rng(0).random((2, 16, 16, 1))
  masks = np.zeros((2, 16, 16, 2))
  plots.plot_predictions(images, masks, masks + 0.2, ("lens", "arcs"), tmp_path / "p.png")
  assert _open_png(tmp_path / "p.png").std() > 5
  with pytest.raises(ValueError, match="do not describe the same 1 targets"):
    plots.plot_predictions(images, masks, masks, ("lens",), tmp_path / "q.png")


def test_overlay_draws_each_targets_outline_in_its_colour_and_leaves_the_rest_grey():
  image = np.linspace(0, 1, 32 * 32).reshape(32, 32)
  masks = np.zeros((32, 32, 2), bool)
  masks[8:16, 8:16, 0] = True                 # a square lens
  masks[20:30, 4:28, 1] = True                # a band of arcs
  rgb = plots.overlay(image, masks, min_size=0)
  assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[8, 8:16], np.tile(plots.TARGET_COLORS[0], (8, 1)))
  np.testing.assert_array_equal(rgb[29, 4:28], np.tile(plots.TARGET_COLORS[1], (24, 1)))
  interior, outside = rgb[12, 12], rgb[2, 2]
  assert interior[0] == interior[1] == interior[2] and outside[0] == outside[1] == outside[2]
  assert plots.overlay(image, masks).shape == (256, 256, 3)      # enlarged x8 for visible outlines


def _events(directory):
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top  # the optional extra
  (path,) = directory.glob("events.out.tfevents.*")
  data, offset, events = path.read_bytes(), 0, []
  while offset < len(data):                   # TFRecord framing: length, its CRC, the record, its CRC
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
    offset += 12 + length + 4
  return events


def test_tensorboard_gets_the_same_scalars_and_a_resumed_run_purges_the_later_ones(tmp_path):
  log = run_directory.MetricsLog(tmp_path / "metrics.jsonl", tmp_path / "tensorboard")
  log.write(1, "train", {"loss": 0.5, "iou/arcs": 0.25})
  log.write(2, "val", {"loss": 0.75})
  log.close()
  scalars = [(e.step, v.tag, v.simple_value) for e in _events(tmp_path / "tensorboard") for v in e.summary.value]
  assert scalars == [(1, "train/loss", 0.5), (1, "train/iou/arcs", 0.25), (2, "val/loss", 0.75)]
  assert len(plots.read_metrics(tmp_path / "metrics.jsonl")) == 2
  resumed = run_directory.MetricsLog(tmp_path / "metrics2.jsonl", tmp_path / "resumed", start_step=7)
  resumed.close()
  starts = [e for e in _events(tmp_path / "resumed") if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in starts] == [(8, 1)]    # SessionLog.START at step 8


def test_loss_panels_use_a_log_axis_so_later_losses_are_not_flattened():
  records = ([{"step": s, "split": "train", "loss": 2.8 / (1 + s), "iou/arcs": 0.5} for s in range(0, 100, 10)]
             + [{"step": s, "split": "val", "loss": 2.8 / (1 + s), "iou/arcs": 0.5} for s in range(0, 100, 25)])
  train_loss, val_loss, iou = plots.curves_figure(records, ("arcs",)).axes
  assert train_loss.get_yscale() == val_loss.get_yscale() == "log" and iou.get_yscale() == "linear"
  # A loss that is zero or negative somewhere (a custom loss) keeps a linear axis rather than losing points.
  records[-1]["loss"] = 0.0
  assert plots.curves_figure(records, ("arcs",)).axes[1].get_yscale() == "linear"


def test_contact_sheet_lays_out_rows_of_overlays(tmp_path):
  for name, value in (("a", 40), ("b", 200)):
    Image.fromarray(np.full((30, 40, 3), value, np.uint8)).save(tmp_path / f"{name}.png")
  path = plots.plot_contact_sheet({"most confident": [(tmp_path / "a.png", "a")],
                                   "least confident": [(tmp_path / "b.png", "b"), (tmp_path / "a.png", "a")]},
                                  tmp_path / "sheet.png", title="2 rows")
  pixels = _open_png(path)
  assert pixels.shape[0] > 400 and pixels.shape[1] > 400
  assert {40, 200} <= set(np.unique(pixels[..., 0]).tolist())     # both images drawn
