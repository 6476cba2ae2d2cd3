"""What every `python -m ...` command of lensjax shares: its argument parser and its one error path.

  @cli.command
  def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(prog="python -m lensjax.x", description=...)
    parser.add_argument(...)
    args, config = cli.parse_with_config(parser, argv)      # commands that take --config and --config.KEY=VALUE
    ...

A fault the user can fix -- a bad flag or config value (`ConfigError`), bad data (`DataError`), a missing or
broken checkpoint (`CheckpointError`), a run directory in use or holding another run, a missing file, a
permission -- ends the command with ONE line on stderr, `error: ...`, naming the file or key and the fix, and
exit status 2. `--debug` (accepted by every command) shows the traceback instead. Anything else is a bug in
lensjax and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence

from lensjax import config as cfg

EXIT_USER_ERROR = 2
DEBUG_FLAG = "--debug"


class UsageError(cfg.ConfigError):
  """A command-line argument the command does not accept."""


def expected_faults() -> tuple[type[BaseException], ...]:
  """The exception classes that mean "the user can fix this" (imported when an error is reported)."""
  from lensjax import checkpoint, run_directory  # pylint: disable=g-import-not-at-top
  from lensjax.data.errors import DataError  # pylint: disable=g-import-not-at-top
  return (cfg.ConfigError, DataError, checkpoint.CheckpointError, run_directory.RunDirectoryError,
          FloatingPointError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
          NotADirectoryError, ValueError)


def one_line(error: BaseException) -> str:
  """The error's message on one line (a multi-line message is joined with '; ')."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = "; ".join(lines) or type(error).__name__
  if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in text:
    text += f": {error.filename}"
  return text


def command(main: Callable[[list[str]], int | None]) -> Callable[[Sequence[str] | None], int]:
  """Wraps a command's `main(argv) -> exit status` in the one error path (see the module docstring).

  The wrapped `main(argv=None)` reads `sys.argv[1:]` by default, returns the status of a successful run (0 for
  None) and raises SystemExit(2) after printing the line for an expected fault, in-process callers included.
  """

  @functools.wraps(main)
  def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
      return main(argv) or 0
    except Exception as error:  # pylint: disable=broad-except  # sorted below: expected faults or bugs
      if DEBUG_FLAG in argv or not isinstance(error, expected_faults()):
        raise
      print(f"error: {one_line(error)} (run with {DEBUG_FLAG} for the traceback)", file=sys.stderr, flush=True)
      raise SystemExit(EXIT_USER_ERROR) from None

  return run


class ArgumentParser(argparse.ArgumentParser):
  """argparse with `--debug`, and usage errors raised as `UsageError` (one line, exit status 2)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an error")

  def error(self, message: str):
    raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the `--config.KEY=VALUE` arguments, the others)."""
  overrides = [a for a in argv if a.startswith("--config.")]
  return overrides, [a for a in argv if not a.startswith("--config.")]


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """`parser`'s arguments and the `--config.KEY=VALUE` overrides among `argv`; any other argument is an error."""
  overrides, rest = split_overrides(argv)
  return parser.parse_args(rest), overrides


def add_config_argument(parser: argparse.ArgumentParser, default: str | None = "default", help_text: str = "") -> None:
  parser.add_argument("--config", default=default,
                      help=help_text or f"config name in configs/ or a path (default: {default})")
  parser.epilog = parser.epilog or ("Any config field can be overridden: --config.SECTION.FIELD=VALUE "
                                    "(e.g. --config.train.num_steps=200).")


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, cfg.Config]:
  """`parse`, then the config `--config` names with the overrides applied and checked (`lensjax.config.load`)."""
  args, overrides = parse(parser, argv)
  return args, cfg.load(args.config, overrides)


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of a multi-process run (see `lensjax.parallel` for the launch modes)."""
  parser.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0, for multi-process runs")
  parser.add_argument("--num-processes", type=int, default=None)
  parser.add_argument("--process-id", type=int, default=None)
  parser.add_argument("--heartbeat-timeout", type=int, default=None,
                      help="seconds after which a silent process counts as dead (default 60)")


def distributed_options(args: argparse.Namespace):
  """`add_process_arguments`' options over the LENSJAX_* environment variables (`parallel.DistributedOptions`)."""
  from lensjax import parallel  # pylint: disable=g-import-not-at-top  # JAX: only for the commands that run it
  return parallel.options_from_env(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id, heartbeat_timeout=args.heartbeat_timeout)
