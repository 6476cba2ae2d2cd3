"""Builds lensjax's optional native extension; pyproject.toml holds everything else about the package.

`lensjax.models._onednn_conv` is the oneDNN convolution kernels of lensjax/models/onednn_conv.cc, XLA FFI
handlers compiled against jax's FFI headers (`jax.ffi.include_dir()`) and the oneDNN wheels that
`[build-system] requires` installs. The extension is optional: where oneDNN or jax is missing from the build
environment, or the compiler fails, lensjax installs without it and keeps XLA's convolutions
(docs/cpu-speed.md, "oneDNN convolutions").
"""

import importlib.metadata
import os
import pathlib
import sysconfig

from setuptools import Extension, setup

ONEDNN_RUNTIME = "onednn-cpu-gomp"          # libdnnl.so.3, the OpenMP (libgomp) build
ONEDNN_HEADERS = "onednn-devel-cpu-gomp"    # its headers


def _file_of(distribution: str, name: str) -> pathlib.Path | None:
  """Where the installed `distribution` put its file called `name`, or None."""
  try:
    files = importlib.metadata.files(distribution) or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    if file.name == name:
      return pathlib.Path(file.locate()).resolve()
  return None


def _extensions() -> list[Extension]:
  header = _file_of(ONEDNN_HEADERS, "dnnl.hpp")
  library = _file_of(ONEDNN_RUNTIME, "libdnnl.so.3")
  try:
    import jax
    ffi_include = jax.ffi.include_dir()
  except ImportError:
    ffi_include = None
  if header is None or library is None or ffi_include is None:
    print(f"lensjax: building without the oneDNN convolutions ({ONEDNN_HEADERS}, {ONEDNN_RUNTIME} or jax missing "
          "from the build environment)")
    return []
  include = header.parent if header.parent.name != "dnnl" else header.parents[2]
  # At run time libdnnl.so.3 is the runtime wheel's copy in the environment lensjax is installed into: the wheel
  # puts it in <data>/lib, two levels above site-packages (the build environment's copy is a temporary one).
  runtime_library_dirs = [os.path.join(sysconfig.get_path("data"), "lib"), "$ORIGIN/../../../.."]
  return [Extension(
      "lensjax.models._onednn_conv",
      sources=["lensjax/models/onednn_conv.cc"],
      include_dirs=[str(include), ffi_include],
      library_dirs=[str(library.parent)],
      libraries=[":libdnnl.so.3"],
      runtime_library_dirs=runtime_library_dirs,
      extra_compile_args=["-std=c++17"],
      language="c++",
      optional=True,
  )]


setup(ext_modules=_extensions())
