"""Huge pages for the host buffers of XLA's CPU programs (docs/cpu-speed.md, "Huge pages").

XLA's CPU runtime allocates each execution's temporary buffer (75 MB for the default config's training step,
1.4 GB for MSRF-Net's) with `posix_memalign` on a worker thread. glibc serves an allocation that large with a
fresh `mmap` and returns it with `munmap` when the step ends, so every step faults its temporaries in again, 4 KiB
at a time: 19,000 page faults per step of the default config, 343,000 per MSRF-Net step. Where the kernel gives
transparent huge pages only to memory that asks for them (`/sys/kernel/mm/transparent_hugepage/enabled` is
`madvise`, the common default), glibc's tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc ask, and
those faults become a few hundred 2 MiB ones.

glibc reads its tunables once, when a process starts, so a lensjax command (`python -m lensjax.X`,
`python -m benchmarks.X`) that finds the tunable missing starts itself again at once with it added to
`GLIBC_TUNABLES` (`os.execve`: same process id, same arguments, before JAX has run anything). `import lensjax`
in a program of one's own changes nothing: set `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` before starting it.
`LENSJAX_HUGE_PAGES=0` keeps glibc's defaults.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

ENV_SWITCH = "LENSJAX_HUGE_PAGES"      # "0": leave glibc's malloc as it is
TUNABLES = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
COMMAND_PACKAGES = ("lensjax", "benchmarks")   # `python -m` modules of these packages are lensjax commands
MIN_GLIBC = (2, 35)                            # the first glibc with glibc.malloc.hugetlb


def _huge_pages_value(tunables: str) -> str | None:
  """The value a GLIBC_TUNABLES string gives glibc.malloc.hugetlb, or None where it gives none."""
  for item in tunables.split(":"):
    name, _, value = item.partition("=")
    if name == HUGE_PAGES_TUNABLE:
      return value
  return None


def tunables_with_huge_pages(environ: Mapping[str, str]) -> str | None:
  """The GLIBC_TUNABLES value that adds `glibc.malloc.hugetlb=1` to `environ`'s, or None where nothing is to add:
  switched off by LENSJAX_HUGE_PAGES=0, or the variable already sets glibc.malloc.hugetlb (to any value)."""
  current = environ.get(TUNABLES, "")
  if environ.get(ENV_SWITCH, "1") == "0" or _huge_pages_value(current) is not None:
    return None
  return ":".join(filter(None, (current, f"{HUGE_PAGES_TUNABLE}=1")))


def huge_pages_on_request(setting_path: str = THP_SETTING) -> bool:
  """Whether this machine gives transparent huge pages to memory that asks for them and only to that: the
  kernel's setting reads `[madvise]` (with `[always]` every large mapping has them already, with `[never]` none
  can) and the C library is glibc >= 2.35."""
  try:
    with open(setting_path, encoding="ascii") as setting:
      if "[madvise]" not in setting.read():
        return False
  except OSError:                       # not Linux, or no THP support
    return False
  try:
    name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")   # "glibc 2.36"
    return name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= MIN_GLIBC
  except (AttributeError, OSError, ValueError):   # no confstr, or a C library that does not name itself
    return False


def command_module(orig_argv: list[str]) -> str | None:
  """The module a `python [options] -m MODULE ...` command line runs, or None for any other command line."""
  arguments = iter(orig_argv[1:])
  for argument in arguments:
    if argument == "-m":
      return next(arguments, None)
    if argument.startswith("-m"):
      return argument[2:]
    if argument in ("-W", "-X"):            # options whose value is the next argument
      next(arguments, None)
    elif argument in ("-c", "-") or not argument.startswith("-"):   # code, stdin or a script: no -m
      return None
  return None


def restart_with_huge_pages() -> None:
  """Restarts this process with glibc's huge-page tunable when it is a lensjax command that lacks it on a machine
  where it applies (module docstring); returns where nothing is to do. Called by `import lensjax`."""
  module = command_module(getattr(sys, "orig_argv", []))
  if not sys.executable or module is None or module.split(".")[0] not in COMMAND_PACKAGES:
    return
  tunables = tunables_with_huge_pages(os.environ)
  if tunables is None or not huge_pages_on_request():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, TUNABLES: tunables})


def status() -> str:
  """One line: whether this process's malloc asks for huge pages, and why (not)."""
  tunables = os.environ.get(TUNABLES, "")
  value = _huge_pages_value(tunables)
  if value == "1":
    return f"huge pages requested ({TUNABLES}={tunables})"
  if value is not None:
    return f"as the user set it ({TUNABLES}={tunables})"
  if os.environ.get(ENV_SWITCH, "1") == "0":
    return f"glibc's defaults ({ENV_SWITCH}=0)"
  if not huge_pages_on_request():
    return f"glibc's defaults (the kernel's {THP_SETTING} is not 'madvise', or the C library is not glibc >= 2.35)"
  return f"glibc's defaults (not started as a lensjax command: set {TUNABLES}={HUGE_PAGES_TUNABLE}=1 to ask)"
