#!/usr/bin/env bash
# Distributed training with torchrun (as mmpretrain's tools/dist_train.sh).
#   bash tools/dist_train.sh CONFIG GPUS [train.py args]
# From any directory: CONFIG is a file, configs/... of this checkout or
# PACKAGE::PATH (tools/train.py resolves it); other paths are the caller's.
# Works on GPUs (nccl) and on CPU-only machines (gloo, one process per "GPU").
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on each.
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}
[[ -x "${ROOT}/.venv/bin/python" && -z "${VIRTUAL_ENV:-}" ]] && PYTHON="${ROOT}/.venv/bin/python"

PYTHONPATH="${ROOT}:${PYTHONPATH:-}" \
"${PYTHON}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "${ROOT}/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
