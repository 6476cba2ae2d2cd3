"""One pass of a compiled evaluation step over a split: the metrics, the per-image results and a figure panel.

Used by training (the validation split at each evaluation) and by `python -m lensjax.evaluate` (any split of a
trained run); it sits below both, so neither command imports the other.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from lensjax import metrics, parallel, train_step


@dataclasses.dataclass
class Evaluation:
  """One pass over a split."""
  metrics: dict[str, float]               # `metrics.summarize` plus the losses (averaged over images)
  per_image: dict[str, np.ndarray]        # the per_image outputs, real images only, in the split's order
  panel: dict[str, np.ndarray] | None     # `image`, `mask`, `probabilities` of the first images (process 0's)
  maps: dict[str, np.ndarray] | None = None   # from a step compiled with `maps=True`: `probabilities` (N, H, W, K)
                                              # float32, `mask` (N, H, W, K) bool, `image` (N, H, W) float16, real
                                              # images only, in the split's order (every process holds all)


def evaluate_split(eval_step, state, loader, mesh, targets) -> Evaluation:
  """Runs `eval_step` (from `train_step.compile_eval_step`) over every batch of `loader` (a finite loader)."""
  totals, loss_sums, parts, panel, map_parts = None, {}, [], None, []
  for local_batch in loader:
    out = eval_step(state, parallel.global_batch(local_batch, mesh))
    sums, per_image, probabilities = out.pop("sums"), out.pop("per_image"), out.pop("panel", None)
    if "maps" in out:
      batch_maps = jax.device_get(out.pop("maps"))
      map_parts.append({"probabilities": np.asarray(batch_maps["probabilities"], np.float32),
                        "mask": np.asarray(batch_maps["mask"]) >= 0.5,
                        "image": np.asarray(batch_maps["image"][..., 0], np.float16)})
    batch_images = float(sums["images"])
    totals = metrics.accumulate(totals, sums)
    for k, v in train_step.host_scalars(out).items():
      loss_sums[k] = loss_sums.get(k, 0.0) + v * batch_images
    parts.append(jax.device_get(per_image))
    if panel is None and probabilities is not None:
      count = probabilities.shape[0]
      panel = {"image": np.asarray(local_batch["image"][:count]), "mask": np.asarray(local_batch["mask"][:count]),
               "probabilities": np.asarray(probabilities)}
  if totals is None:
    raise ValueError("the evaluation loader yielded no batch")
  images = float(totals["images"])
  summary = metrics.summarize(totals, targets)
  summary.update({k: v / images for k, v in loss_sums.items()})
  per_image = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
  real = per_image["valid"] > 0
  maps = {k: np.concatenate([p[k] for p in map_parts])[real] for k in map_parts[0]} if map_parts else None
  return Evaluation(summary, {k: v[real] for k, v in per_image.items()}, panel, maps)
