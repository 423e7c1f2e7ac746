#!/usr/bin/env bash
# One prepared GPU run (about 8 minutes in all): makes N_TRAIN (default 32) + 2 paper-size COLA training runs
# on the CPU cores, trains the styled V-net frame for BUDGET_S (default 240) seconds on CUDA,
# evaluates it against the transfer-function frame, and writes under $OUT:
#   frame_paper_vnet.pt (loads on CPU with cocasbi.frame.load_frame), frame_paper_transfer.npz,
#   train_frame_gpu.json (loss history, frame errors, COCA P(k)/r(k) vs PM-100, timings).
# Usage (repository root):  OUT=/some/dir bash experiments/train_frame_gpu.sh
set -euo pipefail
: "${OUT:=experiments/out/gpu}"
mkdir -p "$OUT"
export OUT WORK="${WORK:-/tmp/frame_gpu}" BUDGET_S="${BUDGET_S:-240}"
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
python -c "import cocasbi" 2>/dev/null || pip install -q --no-deps -e .
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python experiments/train_frame_gpu.py 2>&1 | tee "$OUT/train_frame_gpu.log"
