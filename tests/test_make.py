"""`make`'s install step (scripts/ensure_deps.sh), run against a stand-in python so nothing is installed."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Behaves like python for the script's needs: `-c "import motia, ..."` fails until an install
# succeeded, `-m pip install ...` prints what pip prints, and nothing at all under -q, as pip does.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-c" ]; then case "$2" in *motia*) [ -f installed ]; exit;; *) exit 0;; esac; fi
for a in "$@"; do [ "$a" = "-q" ] && exit "${FAKE_RC:-0}"; done
echo "Obtaining file:///repo"
echo "Requirement already satisfied: torch in /site-packages"
echo "Collecting diffusers>=0.35"
echo "  Downloading diffusers-0.42.1-py3-none-any.whl (4.1 MB)"
echo "Installing collected packages: diffusers, motia"
[ -n "${FAKE_RC:-}" ] && { echo "ERROR: Could not install packages"; exit "$FAKE_RC"; }
echo "Successfully installed diffusers-0.42.1 motia-0.1.0"
touch installed
"""


def _run(tmp_path, **env):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return subprocess.run(["bash", str(REPO / "scripts" / "ensure_deps.sh"), "test"], cwd=tmp_path, text=True,
                          capture_output=True, env={**os.environ, "PYTHON": str(fake), **env}, timeout=60)  # fmt: skip


def test_install_step_says_what_pip_is_doing(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("[motia] installing motia and its requirements with pip")
    assert "[motia]   Collecting diffusers>=0.35" in lines
    assert "[motia]   Successfully installed diffusers-0.42.1 motia-0.1.0" in lines
    assert not any("Requirement already satisfied" in line or "Downloading" in line for line in lines)
    assert (tmp_path / ".deps-stamp-test").is_file()
    assert _run(tmp_path).stdout == ""  # installed and unchanged: nothing to do, nothing said


def test_failed_install_says_how_to_see_pip_and_stamps_nothing(tmp_path):
    proc = _run(tmp_path, FAKE_RC="1")
    assert proc.returncode != 0
    assert "[motia]   ERROR: Could not install packages" in proc.stdout
    assert "pip failed; for its full output run:" in proc.stderr
    assert not (tmp_path / ".deps-stamp-test").exists()
