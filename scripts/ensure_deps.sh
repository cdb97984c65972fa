#!/usr/bin/env bash
# Install what is missing for motia, keeping an already-installed torch.
# Users bring their own (CUDA) torch; only where none is present do we install
# torch==2.13.0 (on these machines a local CPU build; a bare `torch` would pull CUDA).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-test}"
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "[motia] no torch found: installing torch==2.13.0"
  "$PYTHON" -m pip install -q "torch==2.13.0"
fi
# Reinstall only when the package or its requirements changed (stamp = hash of pyproject.toml).
stamp=".deps-stamp-${EXTRAS}"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PYTHON" -c "import motia, diffusers, transformers, peft, accelerate, av" >/dev/null 2>&1; then
  echo "[motia] installing motia and its requirements (extras: $EXTRAS)"
  "$PYTHON" -m pip install -q -e ".[${EXTRAS}]"
  echo "$want" > "$stamp"
fi
