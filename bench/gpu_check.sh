#!/usr/bin/env bash
# The training GPU check (#15), for one H100/H200 lent by the device tool; about 8 minutes:
#   1. the small model at 256 and 1024 px, packed sequences, torch.compile: tokens/s, MFU, peak memory
#   2. one 6B step with the single-GPU default recipe (LoRA rank 32 on a bf16 frozen base): peak memory
#   3. the data-wait fraction of a real loader over real shards (curate train on the demo shards)
#   4. FAISS on the GPU for the index, k-NN and dedup candidate search (bench/faiss_gpu.py)
# Each part prints its own figures; a part that fails does not stop the others. Record the output in
# docs/benchmarks.md. The 6B base is built on the host in fp32 before it moves to the GPU (minutes):
# meta-device construction is not built yet, so part 2 is the one to drop when time is short.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "## 1. small model, packed, compiled"
timeout 240 "$PY" bench/train.py --model small --resolution 256 1024 --steps 30 --compile || echo "part 1 failed: $?"
echo "## 2. 6B, one step, LoRA rank 32"
timeout 300 "$PY" bench/train.py --model 6b --resolution 1024 --steps 2 --lora 32 --token-budget 4096 || echo "part 2 failed: $?"
echo "## 3. data wait over real shards"
if [ ! -d demo/shards ]; then timeout 300 make demo >/dev/null 2>&1 || echo "demo shards could not be made"; fi
timeout 180 "$PY" -m cli train --shards demo/shards --model small --steps 40 --gpu --out /tmp/gpu-check-train 2>&1 | tail -5 || echo "part 3 failed: $?"
grep -h data_wait_fraction /tmp/gpu-check-train/metrics.jsonl 2>/dev/null | tail -1
echo "## 4. FAISS on the GPU"
timeout 180 "$PY" bench/faiss_gpu.py || echo "part 4 failed: $?"
