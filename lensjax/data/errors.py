"""The error every data problem raises: which file (and index), what is wrong, and what to do."""

from __future__ import annotations

# A DataError lists at most this many problems in its message; `problems` keeps them all.
_MAX_LISTED = 20


class DataError(ValueError):
  """Bad input data: a wrong shape or dtype, NaN/inf pixels, an image without its mask, ...

  Each problem reads `<file>[index]: <what is wrong>. <what to do>`. Sources raise one DataError for all
  the problems they find while validating, so `python -m lensjax.data check` can report them together.
  """

  def __init__(self, problems: str | list[str]):
    self.problems = [problems] if isinstance(problems, str) else list(problems)
    listed = self.problems[:_MAX_LISTED]
    more = len(self.problems) - len(listed)
    message = "\n".join(listed)
    if len(self.problems) > 1:
      message = f"{len(self.problems)} problems in the dataset:\n" + message
    if more:
      message += f"\n... and {more} more (run `python -m lensjax.data check PATH` to list them all)"
    super().__init__(message)


def raise_if_any(problems: list[str]) -> None:
  """Raises one DataError listing `problems`, if there are any."""
  if problems:
    raise DataError(problems)
