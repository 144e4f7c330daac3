#!/usr/bin/env bash
# The GPU protocol in one prepared run (configs/gpu.yaml): the attacked models, TAC and FT-SAM on
# them, and the report, into docs/results/gpu; every result names the GPU (its provenance).
#
# On a lent device machine (its python3 holds PyTorch and the other dependencies; nothing can be
# installed there), from the repository root:
#   bash scripts/gpu_protocol.sh
# What travels to that machine is limited to 64 MiB, so before the call leave the grid's results
# and the foreign models out of the working tree and bring CIFAR-10 along in an ignored folder:
#   git sparse-checkout set --no-cone '/*' '!/docs/results/' '!/benchmarks/foreign/models/' '!/benchmarks/foreign/holdout*/'
#   echo /data/ >> .git/info/exclude; mkdir -p data && cp -r ../shared/data/cifar10 data/
# and name `data` in the call's carry. Undo with `git sparse-checkout disable` afterwards.
# The test suite runs this script on the CPU with a tiny grid (CONFIG, RESULTS, DEVICE, DATA, WORKERS).
# RESULTS, not OUT: the device machine sets OUT to the folder whose files come back, and a
# results folder of this depth does not; copy or tar RESULTS into $OUT at the end of the call.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${CONFIG:-configs/gpu.yaml}"
RESULTS="${RESULTS:-docs/results/gpu}"
DEVICE="${DEVICE:-cuda}"
DATA="${DATA:-data}"
WORKERS="${WORKERS:-2}"  # two trainings share the GPU: each alone leaves it idle between small kernels
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TACRECON_CACHE="${TACRECON_CACHE:-/tmp/tacrecon-cache}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
start=$(date +%s)
"$PYTHON" -m tacrecon bench "$CONFIG" --out "$RESULTS" --device "$DEVICE" --data-root "$DATA" --workers "$WORKERS"
"$PYTHON" -m tacrecon report "$RESULTS" > /dev/null
echo "gpu protocol: $(( $(date +%s) - start )) s -> $RESULTS"
