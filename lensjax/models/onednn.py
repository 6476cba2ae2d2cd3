"""Native oneDNN convolutions on CPU through `jax.ffi` (docs/cpu-speed.md, "oneDNN convolutions").

`conv` is `jax.lax.conv_general_dilated` for float32 (or, where the CPU has native bfloat16, bfloat16) NHWC
inputs and HWIO kernels whose forward pass, input gradient and kernel gradient are each one call into oneDNN:
the handlers of `lensjax/models/onednn_conv.cc`, which
`pip install -e .` builds as the optional extension `lensjax.models._onednn_conv`. `conv_transpose` is a transposed
convolution (the input gradient of a strided convolution) through the same three handlers, roles swapped.
`conv_window` and `conv_transpose_window` say whether a convolution can take this path; the layers of
`lensjax.models.layers` ask them only on the CPU backend.
Where the extension is not built, does not load or is switched off (`LENSJAX_ONEDNN=0`), `available()` is False
and the networks keep XLA's convolutions; the reason is logged once at debug level.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

ENV_SWITCH = "LENSJAX_ONEDNN"          # "0": keep XLA's convolutions even where the extension is built
EXTENSION = "lensjax.models._onednn_conv"
_TARGETS = {kind: f"lensjax_onednn_conv_{kind}" for kind in ("forward", "backward_data", "backward_weights")}

logger = logging.getLogger(__name__)


@functools.cache
def _load() -> tuple[bool, str, bool]:
  """Loads the extension and registers its FFI targets, once per process: (loaded, what or why not, whether
  bfloat16 convolutions run natively)."""
  native_bf16 = False
  if os.environ.get(ENV_SWITCH, "1") == "0":
    loaded, status = False, f"switched off by {ENV_SWITCH}=0"
  elif (spec := importlib.util.find_spec(EXTENSION)) is None or spec.origin is None:
    loaded, status = False, (f"{EXTENSION} is not built (`pip install -e .` builds it on Linux x86-64 with a C++17 "
                              "compiler)")
  else:
    try:
      library = ctypes.CDLL(spec.origin)
      threads = library.lensjax_onednn_threads()
      native_bf16 = bool(library.lensjax_onednn_native_bf16())
      handlers = {name: jax.ffi.pycapsule(getattr(library, name)) for name in _TARGETS.values()}
    except (OSError, AttributeError) as error:     # not loadable (no libdnnl.so.3), or a stale build
      loaded, status = False, f"{spec.origin} does not load: {error}"
    else:
      if threads < 0:
        loaded, status = False, "oneDNN found no CPU engine"
      else:
        for name, handler in handlers.items():
          jax.ffi.register_ffi_target(name, handler, platform="cpu")
        loaded, status = True, (f"{spec.origin}, oneDNN on {threads} OpenMP threads, bfloat16 "
                                + ("native" if native_bf16 else "not native (XLA's convolutions for it)"))
  logger.debug("oneDNN convolutions: %s%s", "" if loaded else "not used, XLA's instead: ", status)
  return loaded, status, loaded and native_bf16


def available() -> bool:
  """Whether the oneDNN kernels are built, loaded and switched on in this process."""
  return _load()[0]


def dtypes() -> tuple[jnp.dtype, ...]:
  """The operand dtypes the kernels take in this process: float32, and bfloat16 where the CPU has native
  bfloat16 (AVX-512 BF16 or AMX); none where they are not available."""
  loaded, _, native_bf16 = _load()
  return (jnp.dtype(jnp.float32),) * loaded + (jnp.dtype(jnp.bfloat16),) * native_bf16


def status() -> str:
  """Where the loaded extension is and how many threads oneDNN uses, or why XLA's convolutions are used."""
  return _load()[1]


Window = tuple[tuple[int, int], tuple[tuple[int, int], tuple[int, int]], tuple[int, int]]


def conv_window(lhs: jax.Array, rhs: jax.Array, window_strides, padding, rhs_dilation,
                dimension_numbers: jax.lax.ConvDimensionNumbers, precision) -> Window | None:
  """(strides, ((top, bottom), (left, right)) padding, dilation) for `conv`, or None where it does not apply.

  It applies where the kernels are available, the process has a single device, both operands are of one of
  `dtypes()` and `nhwc_window` gives the window; grouped and input-dilated convolutions are the caller's to
  exclude. With several devices XLA would gather a batch-sharded operand onto every device before the call (it
  cannot split a foreign call), so data-parallel programs keep XLA's convolutions.
  """
  if lhs.dtype != rhs.dtype or lhs.dtype not in dtypes() or jax.device_count() != 1:
    return None
  return nhwc_window(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers, precision)


def nhwc_window(lhs: jax.Array, rhs: jax.Array, window_strides, padding, rhs_dilation,
                dimension_numbers: jax.lax.ConvDimensionNumbers, precision) -> Window | None:
  """(strides, ((top, bottom), (left, right)) padding, dilation) of a 2-D NHWC/HWIO convolution at default
  precision with non-negative padding (explicit or a `lax` padding string) and a non-empty output, else None."""
  if lhs.ndim != 4 or precision is not None:
    return None
  if dimension_numbers != jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")):
    return None
  strides = tuple(int(s) for s in window_strides)
  dilation = (1, 1) if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
  extent = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation)]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], extent, strides, padding)
  padding = tuple((int(low), int(high)) for low, high in padding)
  if any(low < 0 or high < 0 for low, high in padding) or 0 in lhs.shape or 0 in rhs.shape:
    return None
  if any(size + low + high < k for size, (low, high), k in zip(lhs.shape[1:3], padding, extent)):
    return None
  return strides, padding, dilation


def output_shape(x_shape, kernel_shape, strides, padding, dilation) -> tuple[int, int, int, int]:
  """(N, OH, OW, O) of an NHWC x HWIO convolution with a window of `nhwc_window`."""
  spatial = [(size + low + high - (k - 1) * d - 1) // s + 1
             for size, k, s, (low, high), d in zip(x_shape[1:3], kernel_shape[:2], strides, padding, dilation)]
  return (x_shape[0], *spatial, kernel_shape[3])


def _ffi(kind: str, shape, a: jax.Array, b: jax.Array, strides, padding, dilation) -> jax.Array:
  """One oneDNN handler: `kind`'s result of `shape` from operands a, b of one dtype, in it (onednn_conv.cc)."""
  # vmap runs the handler once per mapped element: its operands are exactly 4-D.
  call = jax.ffi.ffi_call(_TARGETS[kind], jax.ShapeDtypeStruct(shape, a.dtype), vmap_method="sequential")
  return call(a, b, strides=np.asarray(strides, np.int64), dilation=np.asarray(dilation, np.int64),
              padding_low=np.asarray([low for low, _ in padding], np.int64),
              padding_high=np.asarray([high for _, high in padding], np.int64))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x: jax.Array, kernel: jax.Array, strides, padding, dilation) -> jax.Array:
  """(N, H, W, I) x (KH, KW, I, O) kernel -> (N, OH, OW, O) of their dtype, with the arguments `conv_window`
  returns. In bfloat16, oneDNN accumulates in float32 and rounds the result, as XLA does."""
  return _ffi("forward", output_shape(x.shape, kernel.shape, strides, padding, dilation), x, kernel, strides,
              padding, dilation)


def _conv_forward(x, kernel, strides, padding, dilation):
  return conv(x, kernel, strides, padding, dilation), (x, kernel)


def _conv_backward(strides, padding, dilation, residuals, grad):
  x, kernel = residuals
  grad_x = _ffi("backward_data", x.shape, grad, kernel, strides, padding, dilation)
  grad_kernel = _ffi("backward_weights", kernel.shape, x, grad, strides, padding, dilation)
  return grad_x, grad_kernel


conv.defvjp(_conv_forward, _conv_backward)


def conv_transpose_window(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                          padding: tuple[tuple[int, int], tuple[int, int]]) -> tuple[tuple[int, int], Window] | None:
  """The arguments of `conv_transpose` after x and kernel, or None where it does not apply (as `conv_window`).

  x (N, H, W, I) and kernel (KH, KW, I, O) are a transposed convolution written as XLA computes it: the flipped
  kernel correlated with x dilated by `strides` and padded by `padding` ((before, after) per axis), an
  (N, OH, OW, O) result. That is the input gradient of the convolution of an (N, OH, OW, O) map with kernel
  (KH, KW, O, I) at stride `strides`, padded K - 1 - before on top (left) and what makes its output H x W again
  below (right); oneDNN floors the output size as lax does. A negative top padding takes XLA's path.
  """
  out_spatial = tuple((size - 1) * s + before + after - k + 2
                      for size, s, (before, after), k in zip(x.shape[1:3], strides, padding, kernel.shape[:2]))
  forward_padding = [(k - 1 - before, max(k - 1 - after, 0)) for k, (before, after) in zip(kernel.shape[:2], padding)]
  if any(low < 0 for low, _ in forward_padding) or any(size <= 0 for size in out_spatial):
    return None
  wide = jax.ShapeDtypeStruct((x.shape[0], *out_spatial, kernel.shape[3]), x.dtype)
  forward_kernel = jax.ShapeDtypeStruct((*kernel.shape[:2], kernel.shape[3], kernel.shape[2]), kernel.dtype)
  numbers = jax.lax.conv_dimension_numbers(wide.shape, forward_kernel.shape, ("NHWC", "HWIO", "NHWC"))
  window = conv_window(wide, forward_kernel, strides, forward_padding, None, numbers, None)
  if window is None or output_shape(wide.shape, forward_kernel.shape, *window)[1:3] != tuple(x.shape[1:3]):
    return None
  return out_spatial, window


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_transpose(x: jax.Array, kernel: jax.Array, out_spatial, strides, padding, dilation) -> jax.Array:
  """(N, H, W, I) x (KH, KW, I, O) kernel -> (N, *out_spatial, O), of their dtype: the input gradient of the forward
  convolution (kernel (KH, KW, O, I)) with the arguments `conv_transpose_window` returns."""
  shape = (x.shape[0], *out_spatial, kernel.shape[3])
  return _ffi("backward_data", shape, x, jnp.swapaxes(kernel, 2, 3), strides, padding, dilation)


def _conv_transpose_forward(x, kernel, out_spatial, strides, padding, dilation):
  return conv_transpose(x, kernel, out_spatial, strides, padding, dilation), (x, kernel)


def _conv_transpose_backward(out_spatial, strides, padding, dilation, residuals, grad):
  # The transposed convolution's input gradient is the forward convolution of its output gradient; its kernel
  # gradient is that forward convolution's kernel gradient with the roles of input and output gradient swapped.
  del out_spatial
  x, kernel = residuals
  grad_x = _ffi("forward", x.shape, grad, jnp.swapaxes(kernel, 2, 3), strides, padding, dilation)
  forward_kernel_shape = (*kernel.shape[:2], kernel.shape[3], kernel.shape[2])
  grad_kernel = _ffi("backward_weights", forward_kernel_shape, grad, x, strides, padding, dilation)
  return grad_x, jnp.swapaxes(grad_kernel, 2, 3)


conv_transpose.defvjp(_conv_transpose_forward, _conv_transpose_backward)
