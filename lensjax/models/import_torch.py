"""Imports the weights of an upstream PyTorch `ISNetDIS` into `lensjax.models.ISNet` and writes an Orbax checkpoint.

  python -m lensjax.models.import_torch isnet-general-use.pth --out checkpoints/isnet_general_use
  python -m lensjax.models.import_torch small.pth --out DIR --width 0.125   # a width-scaled ISNetDIS

A .pth file is untrusted input: it is read with `torch.load(path, map_location="cpu", weights_only=True)`,
which restores tensors and plain containers and never runs pickled code. torch is needed by this command
only (the optional `torch` extra); loading the written checkpoint needs JAX, Flax and Orbax alone.

Accepted contents: a state_dict (name -> tensor), or a dict holding one under "state_dict",
"model_state_dict", "model", "net" or "params"; a "module." prefix on every name (`nn.DataParallel`) is
dropped. Names map one-to-one onto ISNet's attribute paths, which are upstream's:
  conv_in.weight                    (O, I, 3, 3) -> conv_in/kernel (3, 3, I, O)    (every conv: OIHW -> HWIO)
  stage1.rebnconvin.conv_s1.bias                 -> stage1/rebnconvin/conv_s1/bias
  stage1.rebnconvin.bn_s1.weight, .bias          -> .../bn_s1/scale, .../bn_s1/bias
  stage1.rebnconvin.bn_s1.running_mean, _var     -> .../bn_s1/mean, .../bn_s1/var
  side1.weight, side1.bias                       -> side1/kernel, side1/bias
`*.num_batches_tracked` is ignored (Flax's BatchNorm uses a fixed momentum). ISNetDIS has no 1x1 convs.
The input and output channels are read from `conv_in.weight` and `side1.weight`; every tensor must then
have exactly the shape ISNet expects and finite values. The first unexpected, wrongly shaped or non-finite
name (in file order), else the first missing one, is reported, and nothing is written. An empty, cut short
or non-PyTorch file is reported as such.

Checkpoint layout of DIR (read it back with `load_isnet_checkpoint(DIR)`):
  DIR/model.json  the `lensjax.models.build` options {"name": "isnet", "in_channels", "out_channels",
                  "width", "depth"} and "source", the .pth path it came from;
  DIR/state/      an Orbax `StandardCheckpointer` checkpoint of `nnx.to_pure_dict(nnx.state(model))`: nested
                  dicts keyed by attribute path ({"stage1": {"rebnconvin": {"conv_s1": {"kernel": ...}}}}) of
                  float32 arrays, parameters (kernel, bias, scale) and BatchNorm statistics (mean, var) together.
To start training from it, restore DIR/state onto `nnx.to_pure_dict(nnx.state(model))` of a model built with
the same options and `nnx.replace_by_pure_dict` it, as `load_isnet_checkpoint` does.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import sys
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lensjax.models import build, count_parameters
from lensjax.models.isnet import MAX_DEPTH, ISNet

NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")
DATA_PARALLEL_PREFIX = "module."
IGNORED_SUFFIX = ".num_batches_tracked"
# How a .pth file starts: a zip archive (torch.save since PyTorch 1.6) or a pickle (the legacy format, protocol 2+).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80
# Flax variable name -> PyTorch parameter or buffer name.
TORCH_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads the state_dict in .pth file `path` without unpickling code: name -> array (floats as float32)."""
  import torch  # Optional dependency, needed only to read .pth files.

  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"{path}: no such file; pass the path of a PyTorch .pth state_dict")
  with open(path, "rb") as f:
    head = f.read(len(ZIP_MAGIC))
  if not head:
    raise ValueError(f"{path}: is empty (0 bytes); the download or copy did not finish: fetch the .pth again")
  if head != ZIP_MAGIC and head[0] != PICKLE_PROTO:
    raise ValueError(f"{path}: is not a PyTorch .pth file (neither a torch.save zip archive nor a pickle); "
                     "pass the file written by torch.save(model.state_dict(), path)")
  try:
    contents = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as error:
    raise ValueError(f"{path}: refused by torch.load(weights_only=True), which loads tensors and plain "
                     f"containers only; save the model's state_dict() instead. ({error})") from None
  except (EOFError, RuntimeError, OSError) as error:   # a cut-short or damaged archive
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ValueError(f"{path}: cannot be read as a .pth file, it is cut short or damaged ({detail}); fetch or "
                     "save it again") from None
  state_dict = _find_state_dict(contents, path)
  if all(name.startswith(DATA_PARALLEL_PREFIX) for name in state_dict):
    state_dict = {name[len(DATA_PARALLEL_PREFIX):]: tensor for name, tensor in state_dict.items()}
  return {name: (tensor.detach().to(torch.float32) if tensor.is_floating_point() else tensor.detach()).numpy()
          for name, tensor in state_dict.items()}


def _find_state_dict(contents: Any, path: pathlib.Path) -> Mapping[str, Any]:
  import torch

  def is_state_dict(candidate: Any) -> bool:
    return (isinstance(candidate, Mapping) and len(candidate) > 0
            and all(isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in candidate.items()))

  if is_state_dict(contents):
    return contents
  if isinstance(contents, Mapping):
    for key in NESTED_STATE_DICT_KEYS:
      if is_state_dict(contents.get(key)):
        return contents[key]
    found = ", ".join(repr(key) for key in list(contents)[:10])
    raise ValueError(f"{path}: holds a dict with keys {found}, neither a state_dict (name -> tensor) nor one "
                     f"nested under {', '.join(map(repr, NESTED_STATE_DICT_KEYS))}")
  raise ValueError(f"{path}: holds a {type(contents).__name__}, not a state_dict (name -> tensor)")


def torch_name(path: tuple[str, ...]) -> str:
  """The upstream state_dict name of the Flax variable at attribute `path`: ('side1', 'kernel') -> 'side1.weight'."""
  *modules, variable = path
  return ".".join([*modules, TORCH_NAMES[variable]])


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(flax_shape) == 4:                       # HWIO -> OIHW
    height, width, fan_in, fan_out = flax_shape
    return (fan_out, fan_in, height, width)
  return tuple(flax_shape)


def _from_torch(array: np.ndarray) -> np.ndarray:
  return np.transpose(array, (2, 3, 1, 0)) if array.ndim == 4 else array


def isnet_from_state_dict(state_dict: Mapping[str, np.ndarray], *, width: float = 1.0,
                          dtype: str = "float32", source: str = "state_dict") -> ISNet:
  """An `ISNet` holding the weights and BatchNorm statistics of an upstream `ISNetDIS` state_dict.

  Args:
    state_dict: upstream names -> arrays (as `read_state_dict` returns them).
    width: the channel multiplier the state_dict was made with (1.0 for upstream checkpoints).
    dtype: the model's compute dtype.
    source: what to call the state_dict in error messages (the file name).
  Returns:
    The model in train mode (BatchNorm uses batch statistics); call `.eval()` to use the imported ones.
  Raises:
    ValueError: naming the first unexpected, wrongly shaped or non-finite entry, else the first missing one.
  """
  for name in ("conv_in.weight", "side1.weight"):
    if name not in state_dict or np.ndim(state_dict[name]) != 4:
      raise ValueError(f"{source}: no 4-d '{name}', from which the channel counts are read; this is not an "
                       f"ISNetDIS state_dict")
  in_channels = int(state_dict["conv_in.weight"].shape[1])
  out_channels = int(state_dict["side1.weight"].shape[0])
  described = f"ISNetDIS(in_ch={in_channels}, out_ch={out_channels}) at width {width}"
  abstract_model = nnx.eval_shape(lambda: build("isnet", in_channels=in_channels, out_channels=out_channels,
                                                width=width, depth=MAX_DEPTH, dtype=dtype, seed=0))
  graphdef, state = nnx.split(abstract_model)
  expected = {torch_name(path): (path, _torch_shape(variable.shape)) for path, variable in nnx.to_flat_state(state)}

  pure_state: dict[str, Any] = {}
  for name, array in state_dict.items():
    if name.endswith(IGNORED_SUFFIX) and name[:-len(IGNORED_SUFFIX)] + ".running_mean" in expected:
      continue
    if name not in expected:
      raise ValueError(f"{source}: unexpected entry '{name}', not part of {described}")
    path, shape = expected[name]
    if tuple(np.shape(array)) != shape:
      raise ValueError(f"{source}: '{name}' has shape {tuple(np.shape(array))}, but {described} expects {shape}")
    array = np.asarray(array, np.float32)
    if not np.isfinite(array).all():
      bad = int(array.size - np.isfinite(array).sum())
      raise ValueError(f"{source}: '{name}' holds {bad} NaN or infinite values of {array.size}; these weights "
                       "come from a diverged or damaged run: export them again from a good checkpoint")
    node = pure_state
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(_from_torch(array))
  missing = [name for name in expected if name not in state_dict]
  if missing:
    raise ValueError(f"{source}: missing entry '{missing[0]}' (shape {expected[missing[0]][1]}) of {described}"
                     + (f", and {len(missing) - 1} more" if len(missing) > 1 else ""))
  nnx.replace_by_pure_dict(state, pure_state)
  return nnx.merge(graphdef, state)


def _new_directory(directory: str | pathlib.Path) -> pathlib.Path:
  directory = pathlib.Path(directory).resolve()
  if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
    raise ValueError(f"--out {directory} exists and is not an empty directory; choose a new directory")
  return directory


def save_isnet_checkpoint(model: ISNet, directory: str | pathlib.Path, *, source: str = "") -> pathlib.Path:
  """Writes `model`'s parameters and BatchNorm statistics to `directory` (layout in the module docstring)."""
  directory = _new_directory(directory)
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / "state", nnx.to_pure_dict(nnx.state(model)))
  options = {"name": "isnet", "in_channels": model.in_channels, "out_channels": model.out_channels,
             "width": model.width, "depth": model.depth, "source": source}
  # Written last: a directory with model.json holds a complete checkpoint.
  (directory / "model.json").write_text(json.dumps(options, indent=2) + "\n")
  return directory


def load_isnet_checkpoint(directory: str | pathlib.Path, *, dtype: str = "float32") -> ISNet:
  """The `ISNet` saved in `directory` by `save_isnet_checkpoint`, in train mode (call `.eval()` for inference)."""
  directory = pathlib.Path(directory).resolve()
  options_file = directory / "model.json"
  if not options_file.is_file():
    raise ValueError(f"{directory}: no model.json; not a checkpoint written by lensjax.models.import_torch")
  options = json.loads(options_file.read_text())
  if options.get("name") != "isnet":
    raise ValueError(f"{options_file}: holds a {options.get('name')!r} model, not 'isnet'")
  abstract_model = nnx.eval_shape(lambda: build(
      "isnet", in_channels=options["in_channels"], out_channels=options["out_channels"], width=options["width"],
      depth=options["depth"], dtype=dtype, seed=0))
  graphdef, state = nnx.split(abstract_model)
  with ocp.StandardCheckpointer() as checkpointer:            # onto the default device
    restored = checkpointer.restore(directory / "state", nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, restored)
  return nnx.merge(graphdef, state)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m lensjax.models.import_torch",
                                   description="Import an upstream ISNetDIS .pth into an Orbax checkpoint.")
  parser.add_argument("pth", help="the PyTorch state_dict file (e.g. isnet-general-use.pth)")
  parser.add_argument("--out", required=True, help="the checkpoint directory to create (must be new or empty)")
  parser.add_argument("--width", type=float, default=1.0,
                      help="channel multiplier the weights were made with (default 1.0, the upstream network)")
  args = parser.parse_args(argv)
  try:
    _new_directory(args.out)                 # before the work, not after it
    state_dict = read_state_dict(args.pth)
    model = isnet_from_state_dict(state_dict, width=args.width, source=args.pth)
    directory = save_isnet_checkpoint(model, args.out, source=str(pathlib.Path(args.pth).resolve()))
  except ValueError as error:
    parser.exit(2, f"error: {error}\n")
  trainable, batch_stats = count_parameters(model)
  print(f"read {len(state_dict)} entries from {args.pth}: ISNet(in_channels={model.in_channels}, "
        f"out_channels={model.out_channels}, width={model.width}) with {trainable:,} parameters and "
        f"{batch_stats:,} BatchNorm statistics")
  print(f"wrote {directory} (load it with lensjax.models.import_torch.load_isnet_checkpoint)")


if __name__ == "__main__":
  from lensjax import cli  # pylint: disable=g-import-not-at-top
  sys.exit(cli.command(main)(sys.argv[1:]))
