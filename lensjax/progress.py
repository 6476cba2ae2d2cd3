"""Progress display for long work: a live bar on a terminal, plain log lines otherwise (CI, files, Slurm)."""

from __future__ import annotations

from collections.abc import Sequence

from rich import progress as rich_progress
from rich.console import Console

def _fmt(values: dict[str, float], keys: Sequence[str]) -> str:
  return "  ".join(f"{k} {values[k]:.4g}" for k in keys if k in values)


class TrainingProgress:
  """Steps done, loss, main-output loss, images/s and ETA; validation results printed above the bar.

  `main_loss`: the logged term that says whether the model learns (the network's `lensjax.registry` entry).
  """

  def __init__(self, total_steps: int, enabled: bool = True, start_step: int = 0, label: str = "train",
               main_loss: str | None = None):
    self.enabled = enabled
    self.main_loss = main_loss
    self.console = Console(stderr=True, soft_wrap=True)   # log lines stay whole in files and CI logs
    self.live = enabled and self.console.is_terminal
    self.total_steps = total_steps
    self.label = label
    self._progress = rich_progress.Progress(
        rich_progress.TextColumn(f"[bold]{label}"), rich_progress.BarColumn(),
        rich_progress.MofNCompleteColumn(), rich_progress.TextColumn("{task.fields[status]}"),
        rich_progress.TimeRemainingColumn(), console=self.console, disable=not self.live)
    self._task = self._progress.add_task("train", total=total_steps, completed=start_step, status="")

  def __enter__(self):
    self._progress.__enter__()
    return self

  def __exit__(self, *exc):
    return self._progress.__exit__(*exc)

  def update(self, step: int, values: dict[str, float]) -> None:
    """Advances to `step` and shows the training `values` (loss, main-output loss, images/s)."""
    if not self.enabled:
      return
    status = _fmt(values, ["loss"] + ([self.main_loss] if self.main_loss else []) + ["images_per_sec"])
    if self.live:
      self._progress.update(self._task, completed=step, status=status.replace("images_per_sec", "img/s"))
    else:
      self.console.print(f"{self.label} step {step}/{self.total_steps}  {status}", highlight=False)

  def report(self, step: int, values: dict[str, float], targets: Sequence[str], split: str = "val") -> None:
    """Prints one line of evaluation results: IoU and Dice per target, and the loss."""
    if not self.enabled:
      return
    keys = [f"{m}/{t}" for t in targets for m in ("iou", "dice")] + ["loss"]
    self.console.print(f"step {step}  {split}: {_fmt(values, keys)}", highlight=False)
