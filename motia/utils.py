"""Small shared helpers: atomic file writes, disk-space checks, memory readings, hiding the libraries' loading bars."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from motia.errors import NoSpaceError, OutputError, format_bytes, free_bytes  # noqa: F401 (re-exported)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota used up
# A writer that fails with its own error type (torch.save: "unexpected pos", safetensors:
# SafetensorError) failed for want of space when it says so, or when its disk has less than
# this left: a short write fills the disk to the last block.
FULL_DISK_BYTES = 1 << 20
_NO_SPACE_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def write_error(e: OSError, path: str | os.PathLike, needed: int | None = None) -> OutputError | None:
    """The one-line error for a failed write of ``path`` that the user can fix (full disk, read-only, no
    permission), or None for any other OSError (an internal failure)."""
    if e.errno in NO_SPACE:
        return NoSpaceError(path, None, needed, writing=True)
    if e.errno == errno.EROFS:
        return OutputError(f"{path}: its disk is mounted read-only; write elsewhere (output.dir=DIR)")
    if e.errno in (errno.EACCES, errno.EPERM):
        return OutputError(f"{path}: no permission to write there; write elsewhere (output.dir=DIR) or fix the "
                           "folder's permissions")  # fmt: skip
    return None


def _is_under(name: str | os.PathLike, folder: Path) -> bool:
    name, folder = os.path.abspath(name), os.path.abspath(folder)
    return name == folder or name.startswith(folder.rstrip(os.sep) + os.sep)


def raise_write_error(e: OSError, path: str | os.PathLike) -> None:
    """Raise ``write_error``'s OutputError for a failed write of ``path`` (from ``e``), or ``e`` itself when it is
    another error, or one about a file outside ``path``'s folder (a file being read, say)."""
    err = write_error(e, path)
    if err is None or (e.filename is not None and not _is_under(e.filename, Path(path).parent)):
        raise e
    raise err from e


def check_free_space(folder: str | os.PathLike, needed: int, fix: str, freed: int = 0) -> None:
    """Refuse (NoSpaceError naming ``folder``, the space needed and free) when ``needed`` bytes do not fit.

    ``freed``: bytes the run deletes before it writes (outputs it replaces), counted as free.
    """
    free = free_bytes(folder)
    if free + freed < needed:
        raise NoSpaceError(folder, free, needed, fix=fix)


class _Aborted(Exception):
    """Thrown into a held ``atomic_path`` by ``abort_atomic``: remove the temporary file, and nothing else."""


def abort_atomic(stack: contextlib.ExitStack) -> None:
    """Leave the ``atomic_path`` held by ``stack`` as a failure would: its temporary file or folder is removed."""
    stack.__exit__(_Aborted, _Aborted(), None)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the suffix (encoders pick formats by it). On any
    exception the temporary file or folder is removed, so nothing half-written
    is ever left under the final name. A full disk (also when a library reports it
    its own way), a read-only disk or a folder without write permission is an
    ``OutputError`` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as e:
        raise_write_error(e, path)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise_write_error(e, path)
    except Exception as e:
        if not isinstance(e, (OutputError, _Aborted)) and (any(w in str(e) for w in _NO_SPACE_WORDS)
                                               or free_bytes(path.parent) < FULL_DISK_BYTES):  # fmt: skip
            _remove(tmp)
            raise NoSpaceError(path, writing=True) from e
        raise
    finally:
        _remove(tmp)


def _remove(tmp: Path) -> None:
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
