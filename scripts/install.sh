#!/usr/bin/env bash
# Install tacrecon from this checkout (editable), with optional extras: `bash scripts/install.sh test`.
# Where no torch is installed yet, torch==2.13.0 comes first: on the project's CPU machines that
# release is the CPU build and is on disk already, whereas a plain `torch` would pull a
# multi-GB CUDA build. A torch that is already installed (e.g. a CUDA build) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".${extras:+[$extras]}"
