"""User-facing errors: one clear line for the CLI, exit code 2, no traceback unless --debug."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class MotiaError(Exception):
    """A problem with the user's input (file, config key, checkpoint) that they can fix.

    The message is one line naming the file or key and the fix. The CLI prints it
    as ``error: <message>`` and exits with code 2.
    """


class ConfigError(MotiaError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class InputError(MotiaError):
    """An input file (video, checkpoint, adapter) is missing, unreadable or of the wrong kind."""


class OutputError(MotiaError):
    """An output cannot be written: its disk is full or read-only, or the folder is not writable by this user."""


class NoSpaceError(OutputError):
    """Not enough free space for an output: refused before the work (``needed`` known) or hit while writing.

    ``path`` is the file or folder, ``free`` the bytes free on its disk (None: measured when
    the message is made, after the half-written file is gone), ``needed`` the bytes the
    outputs take (estimated; None when unknown), ``writing`` True when the disk filled up
    while the file was being written (nothing of it is kept), ``fix`` the way out.
    """

    def __init__(self, path, free: int | None = None, needed: int | None = None, writing: bool = False,
                 fix: str = "free some space there or write elsewhere"):  # fmt: skip
        super().__init__(path, free, needed, writing, fix)
        self.path, self.free, self.needed, self.writing, self.fix = path, free, needed, writing, fix

    def __str__(self) -> str:
        free = format_bytes(free_bytes(self.path) if self.free is None else self.free)
        need = f", the outputs need about {format_bytes(self.needed)}" if self.needed is not None else ""
        if self.writing:
            return (f"{self.path}: the disk filled up while writing it ({free} free{need}); nothing of it was kept; "
                    f"{self.fix}")  # fmt: skip
        return f"{self.path}: not enough space: {free} free{need}; {self.fix}"


class FolderInUse(MotiaError):
    """An output folder is being written by another live run (its lock is held)."""


# The two measures NoSpaceError's message needs (here, the bottom module; motia.utils re-exports them).
def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB' (binary units, as ``df -h`` counts)."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free to this user on the disk holding ``path`` (or its nearest existing parent folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free
