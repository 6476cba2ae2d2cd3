"""Runs three training steps of a tiny network on fixed batches (the training core: `create_train_state` and the
step loop) and saves losses and parameters.

Used by tests/test_train_parallel.py as a real subprocess, so that the device count (JAX_NUM_CPU_DEVICES) and the
process count (jax.distributed over localhost) can differ between runs of the same computation:

  JAX_NUM_CPU_DEVICES=4 python tests/helpers/parallel_steps.py OUT.npz [--model isnet] [--coordinator-address HOST:PORT
      --num-processes 2 --process-id 0]
"""

import argparse
import sys

import numpy as np

from lensjax import parallel

GLOBAL_BATCH, SIZE, STEPS = 8, 64, 3


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("--model", default="isnet")
  parser.add_argument("--coordinator-address")
  parser.add_argument("--num-processes", type=int)
  parser.add_argument("--process-id", type=int)
  args = parser.parse_args(argv)
  parallel.initialize(parallel.options_from_env(coordinator_address=args.coordinator_address,
                                                num_processes=args.num_processes, process_id=args.process_id,
                                                initialization_timeout=60, heartbeat_timeout=30))
  import jax
  from flax import nnx
  from jax.experimental import multihost_utils
  from lensjax import config as cfg, step_loop, train_step

  # SGD, not Adam: the biases of convs feeding a BatchNorm have a zero gradient up to float noise, whose sign
  # differs between reduction orders, and Adam's first steps move every parameter by about ±lr whatever the
  # gradient's size. That is Adam's sensitivity, not the data parallelism under test. Likewise 64 px (the
  # deepest RSU maps are 2x2, not 1x1): BatchNorm over 8 values per channel amplifies float noise.
  config = cfg.load("default", [f"--config.model.name={args.model}", "--config.model.width=0.0625",
                                "--config.model.depth=" + ("2" if args.model == "isnet" else "6"),
                                f"--config.train.batch_size={GLOBAL_BATCH}", "--config.optim.name=sgd",
                                "--config.optim.learning_rate=0.01"])
  mesh = parallel.make_mesh()
  train_state = train_step.create_train_state(config, mesh, seed=0)
  graphdef = train_state.graphdef
  step_fn = train_step.compile_train_step(graphdef, train_step.make_loss_fn(config), mesh, train_state.shardings)

  def batches():
    rng = np.random.default_rng(0)
    per_process = GLOBAL_BATCH // jax.process_count()
    lo = jax.process_index() * per_process
    while True:
      image = rng.normal(size=(GLOBAL_BATCH, SIZE, SIZE, 1)).astype(np.float32)
      mask = (rng.random((GLOBAL_BATCH, SIZE, SIZE, 2)) < 0.2).astype(np.float32)
      batch = {"image": image, "mask": mask}
      if args.model == "msrfnet":
        batch["edge"] = (rng.random((GLOBAL_BATCH, SIZE, SIZE, 1)) < 0.1).astype(np.float32)
        batch["mask_edge"] = (rng.random(mask.shape) < 0.1).astype(np.float32)
      yield parallel.global_batch({k: v[lo:lo + per_process] for k, v in batch.items()}, mesh)

  losses = []
  result = step_loop.run_steps(step_fn, train_state.state, batches(), jax.random.key(0), steps=range(1, STEPS + 1),
                               batch_size=GLOBAL_BATCH, targets=config.data.targets, log_every=1,
                               log=lambda step, values: losses.append(values["loss"]))
  state = result.state
  params = nnx.state(nnx.merge(graphdef, state)[0], nnx.Param)
  leaves = [np.asarray(multihost_utils.process_allgather(x, tiled=True))
            for x in jax.tree.leaves(params)]
  if jax.process_index() == 0:
    np.savez(args.out, losses=np.array(losses), *leaves)
  print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} losses {losses}")


if __name__ == "__main__":
  main(sys.argv[1:])
