"""Huge pages for XLA's host buffers: the tunable a lensjax command adds, when, and that a real command restarts
itself with it (lensjax.host_memory)."""

from __future__ import annotations

import os

import pytest

from lensjax import host_memory
from tests.helpers import tiny_run


@pytest.mark.parametrize("environ, expected", [
    ({}, "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, None),                 # the user's own choice stays
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"}, None),
    ({"LENSJAX_HUGE_PAGES": "0"}, None),
    ({"LENSJAX_HUGE_PAGES": "1", "GLIBC_TUNABLES": ""}, "glibc.malloc.hugetlb=1"),
])
def test_tunables_add_huge_pages_once_and_keep_the_users(environ, expected):
  assert host_memory.tunables_with_huge_pages(environ) == expected


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "lensjax.train", "--config", "default"], "lensjax.train"),
    (["python", "-u", "-X", "dev", "-W", "ignore", "-m", "benchmarks.vs_torch"], "benchmarks.vs_torch"),
    (["python", "-mlensjax.evaluate", "runs/x"], "lensjax.evaluate"),
    (["python", "script.py", "-m", "lensjax.train"], None),              # a script's own -m
    (["python", "-c", "import lensjax"], None),
    (["python"], None),
])
def test_command_module_reads_python_command_lines(argv, expected):
  assert host_memory.command_module(argv) == expected


@pytest.mark.parametrize("setting, applies", [
    ("always [madvise] never\n", True), ("[always] madvise never\n", False), ("always madvise [never]\n", False)])
def test_huge_pages_only_where_memory_must_ask_for_them(tmp_path, setting, applies):
  path = tmp_path / "enabled"
  path.write_text(setting)
  glibc = os.confstr("CS_GNU_LIBC_VERSION").split()
  new_glibc = glibc[0] == "glibc" and tuple(int(p) for p in glibc[1].split(".")[:2]) >= (2, 35)
  assert host_memory.huge_pages_on_request(str(path)) == (applies and new_glibc)
  assert not host_memory.huge_pages_on_request(str(tmp_path / "absent"))


def test_a_lensjax_command_restarts_itself_with_huge_pages(tmp_path_factory):
  """`python -m lensjax.train`, started without the tunable (tiny_run.command_env drops it), reports it in its
  own environment: the process started itself again with it. Where the machine gives huge pages to every
  mapping already, or to none, it says so and keeps glibc's defaults."""
  tiny_run.trained_run(tmp_path_factory)
  log = (tmp_path_factory.getbasetemp() / "tiny_run.log").read_text()
  if host_memory.huge_pages_on_request():
    assert "host memory: huge pages requested (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)" in log
  else:
    assert "host memory: glibc's defaults (the kernel's" in log


@pytest.mark.parametrize("environ, expected", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "huge pages requested"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"}, "as the user set it"),
    ({"LENSJAX_HUGE_PAGES": "0"}, "glibc's defaults (LENSJAX_HUGE_PAGES=0)"),
])
def test_status_names_who_chose_the_setting(monkeypatch, environ, expected):
  for name in ("GLIBC_TUNABLES", "LENSJAX_HUGE_PAGES"):
    monkeypatch.delenv(name, raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  assert host_memory.status().startswith(expected)
