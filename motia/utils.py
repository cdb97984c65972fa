"""Small shared helpers: atomic file writes, memory readings, seeding, hiding the libraries' loading bars."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the suffix (encoders pick formats by it). On any
    exception the temporary file or folder is removed, so nothing half-written
    is ever left under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def peak_memory_bytes(device=None) -> int:
    """Peak memory so far: CUDA max allocated on a CUDA device, else the process's peak RSS."""
    import torch

    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@contextlib.contextmanager
def _library_progress(enabled: bool) -> Iterator[None]:
    """Show or hide diffusers / transformers / hub loading bars for the duration, then restore."""
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tlog

    before = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled())
    if not enabled:
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
        hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled:
            (dlog.enable_progress_bar if before[0] else dlog.disable_progress_bar)()
            (tlog.enable_progress_bar if before[1] else tlog.disable_progress_bar)()
            if not before[2]:
                hub_utils.enable_progress_bars()
