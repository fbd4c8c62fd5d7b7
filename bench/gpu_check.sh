#!/usr/bin/env bash
# The project's GPU check, one command, under 8 minutes on one H100 (see bench/gpu_check.py):
#   bash bench/gpu_check.sh              # on a GPU machine, from anywhere
#   bash bench/gpu_check.sh --cpu        # smoke run of every part on a CPU
# Needs torch, accelerate, einops, transformers and the package's other requirements; the
# package itself need not be installed (this checkout is put on PYTHONPATH). Results go to
# $OUT if set, else runs/gpu_check/: gpu_check.json, gpu_check.md, and this log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-runs/gpu_check}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
python -c "import phenaki" 2>/dev/null || { echo "phenaki is not importable: missing requirements?" >&2;
  python -c "import phenaki"; exit 3; }
{ nvidia-smi 2>/dev/null || echo "(no nvidia-smi)"; } > "$OUT_DIR/nvidia-smi.txt"
# the parts stop themselves at 460 s; the outer limit only guards against a hang in between
timeout --kill-after=10 475 python -m bench.gpu_check --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
