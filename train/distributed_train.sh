#!/usr/bin/env bash
# Train a PReLU-net on NUM_GPUS GPUs of this node with timm's own train.py (through torchrun).
#   train/distributed_train.sh NUM_GPUS [timm-prelu train options] -- [train.py flags]
# e.g.
#   train/distributed_train.sh 8 --recipe prelu_model_c -- --data-dir /data/imagenet -b 16
# Set TIMM_TRAIN_SCRIPT (or pass --timm-script) to your pytorch-image-models/train.py. PYTHON picks the interpreter.
set -euo pipefail
if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 NUM_GPUS [--recipe NAME|PATH] [timm-prelu train options] -- [train.py flags]" >&2
    exit 2
fi
NUM_GPUS=$1
shift
exec "${PYTHON:-python}" -m timm_prelu train --nproc-per-node "$NUM_GPUS" "$@"
