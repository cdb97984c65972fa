#!/usr/bin/env bash
# Install what is missing for motia, keeping an already-installed torch.
# Users bring their own (CUDA) torch; only where none is present do we install
# torch==2.13.0 (on these machines a local CPU build; a bare `torch` would pull CUDA).
# pip's progress is shown one line per package (Collecting / Installing / Successfully).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-test}"

pip_install() {
  # `|| true`: grep finding nothing is not a failure; pipefail still reports pip's own status.
  if ! "$PYTHON" -m pip install --progress-bar off "$@" 2>&1 \
      | { grep --line-buffered -E '^(Collecting|Installing|Successfully|Building|ERROR|error:)' || true; } \
      | sed -u 's/^/[motia]   /'; then
    echo "[motia] pip failed; for its full output run: $PYTHON -m pip install $*" >&2
    return 1
  fi
}

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "[motia] no torch found: installing torch==2.13.0 (a large download; this can take several minutes)"
  pip_install "torch==2.13.0"
fi
# Reinstall only when the package or its requirements changed (stamp = hash of pyproject.toml).
stamp=".deps-stamp-${EXTRAS}"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PYTHON" -c "import motia, diffusers, transformers, peft, accelerate, av" >/dev/null 2>&1; then
  echo "[motia] installing motia and its requirements with pip (extras: $EXTRAS; the first time takes a few minutes)"
  pip_install -e ".[${EXTRAS}]"
  echo "$want" > "$stamp"
  echo "[motia] installed"
fi
