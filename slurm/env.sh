# lensjax on Perlmutter: the environment every job script in slurm/ sources after its #SBATCH lines.
#
# Submit the scripts from the repository root (`sbatch slurm/train_1node.sbatch ...`): this file is found as
# $SLURM_SUBMIT_DIR/slurm/env.sh, or under $LENSJAX_ROOT when that is set. It
#   * changes to the repository root, so `python -m lensjax.train` and `python -m benchmarks.throughput` run the
#     checkout you submitted from;
#   * loads the modules and activates the virtual environment (EDIT the lines marked EDIT for your set-up; see
#     docs/perlmutter.md, "Install");
#   * sets one process per GPU: `srun` gets the job's -c (since Slurm 22.05 srun does not inherit
#     --cpus-per-task) and binds tasks to cores (SLURM_CPU_BIND=cores, as NERSC recommends). There is no
#     per-task GPU binding: every task sees the node's 4 GPUs and JAX's Slurm detection gives task i GPU
#     SLURM_LOCALID (--gpus-per-task=1 would make local ranks 1-3 fail with CUDA_ERROR_INVALID_DEVICE).
#
# Variables (all optional):
#   LENSJAX_VENV      virtual environment with lensjax installed (default: $SCRATCH/venvs/lensjax)
#   LENSJAX_PLATFORM  gpu (default) or cpu. cpu is the only switch the CI uses to run these scripts unchanged on
#                     its CPU-only local Slurm: no modules, JAX_PLATFORMS=cpu, LENSJAX_CPU_DEVICES fake JAX
#                     devices per task (default 1: a task stands for one GPU).
#   LENSJAX_ROOT      the repository root (default: $SLURM_SUBMIT_DIR)
#   JAX_COMPILATION_CACHE_DIR  XLA's persistent compilation cache (default: $SCRATCH/lensjax/jax-cache)
set -euo pipefail
: "${SCRATCH:?SCRATCH is not set: runs and checkpoints go under \$SCRATCH/lensjax (Perlmutter sets it)}"
LENSJAX_ROOT=${LENSJAX_ROOT:-$SLURM_SUBMIT_DIR}
cd "$LENSJAX_ROOT"

case "${LENSJAX_PLATFORM:-gpu}" in
  gpu)
    set +u                                          # Lmod's shell functions read unset variables
    module load python                              # EDIT: the Python your venv was made with
    # EDIT (multi-node): NCCL's Slingshot plugin, so inter-node traffic uses libfabric, not TCP sockets;
    # check the job log with NCCL_DEBUG=INFO: "NET/OFI" means the plugin is used, "NET/Socket" that it is not.
    module load nccl 2>/dev/null || echo "lensjax: no nccl module; NCCL falls back to sockets between nodes" >&2
    set -u
    export NCCL_NET_GDR_LEVEL=PHB NCCL_CROSS_NIC=1 FI_CXI_DISABLE_HOST_REGISTER=1 FI_MR_CACHE_MONITOR=userfaultfd
    ;;
  cpu)
    export JAX_PLATFORMS=cpu
    export JAX_NUM_CPU_DEVICES=${LENSJAX_CPU_DEVICES:-1}
    ;;
  *)
    echo "LENSJAX_PLATFORM=$LENSJAX_PLATFORM: expected gpu or cpu" >&2
    exit 2
    ;;
esac
LENSJAX_VENV=${LENSJAX_VENV:-$SCRATCH/venvs/lensjax}
[ -f "$LENSJAX_VENV/bin/activate" ] || { echo "LENSJAX_VENV=$LENSJAX_VENV has no bin/activate: create it (docs/perlmutter.md)" >&2; exit 2; }
set +u
# shellcheck disable=SC1091
source "$LENSJAX_VENV/bin/activate"
set -u

export SLURM_CPU_BIND=cores
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
# XLA's compiled programs are kept on disk: a requeued or repeated run skips the compilation (minutes for the
# full networks). The scaling sweep turns this off, as it measures compile times.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$SCRATCH/lensjax/jax-cache}
echo "lensjax: job ${SLURM_JOB_ID} (${SLURM_JOB_NAME}) run $((${SLURM_RESTART_COUNT:-0} + 1)) on ${SLURM_JOB_NUM_NODES} node(s)" \
     "[${SLURM_JOB_NODELIST}], ${SLURM_NTASKS} tasks, platform ${LENSJAX_PLATFORM:-gpu}, $(python --version 2>&1)"
