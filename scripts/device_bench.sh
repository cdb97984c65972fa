#!/usr/bin/env bash
# The GPU figures in one go, for a session lent the accelerator machine (one H100/H200):
#   here:   bash scripts/fetch_device_wheels.sh          # diffusers + pydantic wheels into .whl/
#   there:  run(command="bash scripts/device_bench.sh", carry=[".whl"], timeout_s=540)
# Installs the carried wheels, then runs scripts/bench.py on CUDA at the reference workload
# (512x512 -> 512x1024, 16 frames, 25 steps with the reference guidance and regret; adaptation
# steps timed and extrapolated to 1000) next to stock diffusers, the 256-frame clip at full size,
# and window attention at 1024 px; JSON and the printed tables land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# Budget: the whole script must end well inside one 10-minute call.
timeout 500 python3 scripts/bench.py all --device cuda --dtype fp16 --size 512 --steps 25 \
  --adapt-steps 10 --long-frames 256 --long-model fullsize --attention-sizes 512x1024 1024x1024 \
  --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
