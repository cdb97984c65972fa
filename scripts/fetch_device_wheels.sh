#!/usr/bin/env bash
# Download (here, where PyPI is reachable) the wheels the GPU machine lacks, into .whl/ (git-ignored).
# That machine has torch, accelerate, peft, transformers, safetensors, numpy, pillow, tqdm, pyyaml,
# imageio and huggingface-hub, for CPython 3.12 on x86_64; the benchmarks need these on top
# (video I/O is imported lazily and not used there: PyAV and imageio-ffmpeg stay behind, as
# the working tree that travels is capped at 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pkgs=(
  "diffusers==$($PY -c 'import diffusers; print(diffusers.__version__)')"
  "pydantic==$($PY -c 'import pydantic; print(pydantic.VERSION)')"
  "pydantic-core==$($PY -c 'import pydantic_core; print(pydantic_core.__version__)')"
  "annotated-types" "typing-inspection" "importlib-metadata" "zipp"
)
rm -rf .whl
mkdir -p .whl
for p in "${pkgs[@]}"; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$p"
done
ls -la .whl
