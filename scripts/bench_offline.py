"""How long a hub id takes to fail, or to load from the cache, when the Hugging Face hub is unreachable.

Simulates a machine without network the way the tests do: HF_HUB_OFFLINE unset, the
hub (HF_ENDPOINT) at a closed port on 127.0.0.1, so nothing leaves the machine. Each
case runs in a fresh child process (the probe result is cached per process); the
child imports the libraries first and times only ``load_components``:

* ``uncached``: ``models.base`` = a hub id that is not in the cache (must fail, with the hint);
* ``cached``: the tiny SD pipeline placed in a throwaway Hugging Face cache as a hub repo,
  next to the same weights loaded from their local folder.

    python scripts/bench_offline.py                        # this checkout
    PYTHONPATH=/path/to/other/checkout python scripts/bench_offline.py   # another version, for comparison
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time
import diffusers, transformers
from motia.models import load_components

parts = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
print("RESULT motia-from 0.00 " + __import__("motia").__file__, file=sys.stderr)
for case, base in {cases!r}:
    t = time.perf_counter()
    try:
        load_components(base=base, motion_adapter="tiny:motion_adapter", device="cpu", parts=parts)
        outcome = "loaded"
    except Exception as e:
        outcome = "failed: " + str(e).splitlines()[0][:150]
    print(f"RESULT {{case}} {{time.perf_counter() - t:.2f}} {{outcome}}", file=sys.stderr, flush=True)
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from motia.models.tiny import ensure_tiny_bundle

    bundle = ensure_tiny_bundle()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp, "hub", "models--motia-bench--tiny-sd")
        commit = "0" * 40
        shutil.copytree(bundle / "sd", repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        drop = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
        env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HUB_CACHE=str(Path(tmp, "hub")),
                   HF_HOME=str(Path(tmp, "hf")), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        for cases in ([("uncached", "motia-bench/no-such-model")],
                      [("local folder", "tiny:sd"), ("cached hub id", "motia-bench/tiny-sd")]):  # fmt: skip
            # cwd: `python -c` puts it first on sys.path; the motia under test comes from PYTHONPATH or the install.
            proc = subprocess.run([sys.executable, "-c", CHILD.format(cases=cases)], env=env, text=True, cwd=tmp,
                                  capture_output=True, timeout=900)  # fmt: skip
            for case, seconds, outcome in re.findall(r"RESULT (.+?) (\d+\.\d+) (.*)", proc.stderr):
                print(f"{case:14s} {float(seconds):7.2f} s  {outcome}")


if __name__ == "__main__":
    main()
