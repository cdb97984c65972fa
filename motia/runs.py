"""Run folders: may a new run write where an earlier run left finished outputs?

A folder with finished outputs belongs to the config recorded beside them
(``config.yaml``). A new run of the *same* config may replace them: re-running is
how ``make demo`` works twice, and the result is the same. A run of another config
refuses with one line naming ``--overwrite`` and leaves every file as it was.

"Same config" compares the keys that decide a stage's outputs, after prompt
captioning, with local paths resolved:

* adaptation (the adapter folder): ``seed``, ``prompt``, ``models``, ``video`` and
  ``adapt``, except the bookkeeping keys ``adapt.checkpoint_every``,
  ``keep_checkpoints``, ``log_every`` and ``output_dir``;
* outpainting (the run folder): ``seed``, ``prompt``, ``models``, ``video``,
  ``outpaint``, ``sample`` and ``output`` (except ``output.dir`` and ``output.name``,
  which name the folder), and the ``--lora`` file. The ``adapt`` section is not
  compared: the adapter file stands for it.

Finished outputs are: for outpainting, ``summary.json`` or ``config.yaml`` (both are
written after the videos); for adaptation, ``adapter.safetensors``, or checkpoints
(an interrupted run: its work would be deleted by a fresh start).

A folder a live run is writing is locked (``lock_run_folder``): another run into it
refuses in one line naming the process that holds it. The lock is ``fcntl.flock`` on
``.motia.lock`` in the folder, so the kernel releases it when its process dies however it
dies; the file records the holder (pid, host, command, since when) for the message, and a
record left by a killed run is taken over with a warning naming it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shlex
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from motia.config import JobConfig, read_yaml
from motia.errors import ConfigError, FolderInUse, MotiaError

log = logging.getLogger(__name__)

ADAPT_KEYS = ("seed", "prompt", "models", "video", "adapt")
OUTPAINT_KEYS = ("seed", "prompt", "models", "video", "outpaint", "sample", "output")
IGNORED = {"adapt.checkpoint_every", "adapt.keep_checkpoints", "adapt.log_every", "adapt.output_dir",
           "output.dir", "output.name"}  # fmt: skip
_PATH_KEYS = ("video.path", "models.")  # string values that may name local files


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def _resolved(value: Any) -> Any:
    """A local path that exists, absolute and resolved (so ``./clip.mp4`` equals ``/abs/clip.mp4``)."""
    if isinstance(value, str) and ":" not in value.split("/")[0]:  # not tiny:, sample:, ...
        path = Path(value).expanduser()
        if path.exists():
            return str(path.resolve())
    return value


def _normal(key: str, value: Any) -> Any:
    return _resolved(value) if key.startswith(_PATH_KEYS) else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_diff(old: dict, new: dict, sections: Iterable[str]) -> list[str]:
    """``key (old -> new)`` for every compared key that differs, in key order."""
    sections = tuple(sections)
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] in sections and k not in IGNORED)
    return [f"{k} ({_short(a.get(k))} -> {_short(b.get(k))})"
            for k in keys if _normal(k, a.get(k)) != _normal(k, b.get(k))]  # fmt: skip


def _recorded(path: Path) -> dict | None:
    """The config a folder's outputs were made with, or None if it is missing or unreadable."""
    try:
        return read_yaml(path)
    except MotiaError:
        return None


# The files outpainting writes in its run folder, by output kind (``output.mp4`` etc.).
OUTPUT_FILES = {"mp4": "outpaint.mp4", "gif": "outpaint.gif", "frames": "frames", "side_by_side": "side_by_side.mp4"}


def _unrecorded(run_dir: Path, cfg: JobConfig) -> list[str]:
    """Files this run would write that exist in ``run_dir`` with no motia record beside them (a user's own)."""
    return [name for kind, name in OUTPUT_FILES.items() if getattr(cfg.output, kind) and (run_dir / name).exists()]


def _refuse(folder: Path, what: str, them: str, diffs: list[str], extra: str = "") -> None:
    shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    raise ConfigError(
        f"{folder} already holds {what} of another config (differs in: {shown}); pass --overwrite to replace "
        f"{them}{extra}, or write elsewhere with output.name=NEW_NAME"
    )


def check_outpaint_folder(run_dir: str | os.PathLike, cfg: JobConfig, lora: str | os.PathLike | None,
                          overwrite: bool = False) -> list[Path]:  # fmt: skip
    """Refuse (ConfigError) to outpaint into ``run_dir`` over finished outputs of another config.

    Returns the earlier run's files to delete before the new outputs are written: empty
    unless ``overwrite`` replaces another config's run (its outputs would otherwise mix
    with the new ones). ``cfg`` is the config with the prompt already resolved.
    """
    import json

    run_dir = Path(run_dir)
    config, summary = run_dir / "config.yaml", run_dir / "summary.json"
    if not (config.is_file() or summary.is_file()):
        theirs = _unrecorded(run_dir, cfg)
        if theirs and not overwrite:  # not a motia run's: nothing says what made them
            raise ConfigError(
                f"{run_dir} already holds {', '.join(theirs)}, which no motia run recorded there; pass --overwrite "
                "to replace them, or write elsewhere with output.name=NEW_NAME"
            )
        return []
    old = _recorded(config)
    try:
        record = json.loads(summary.read_text()) if summary.is_file() else {}
    except (OSError, ValueError):
        record = {}
    if old is None:
        diffs = ["config.yaml (missing or unreadable)"]
    else:
        diffs = config_diff(old, cfg.to_dict(), OUTPAINT_KEYS)
    if "lora" in record:
        before, now = record["lora"], None if lora is None else str(lora)
        if _resolved(before) != _resolved(now):
            diffs.append(f"--lora ({_short(before)} -> {_short(now)})")
    if not diffs:
        return []
    if not overwrite:
        _refuse(run_dir, "the finished outputs", "them", diffs)
    old_outputs = [Path(p) if Path(p).is_absolute() else run_dir / Path(p).name
                   for p in (record.get("outputs") or {}).values() if isinstance(p, str)]  # fmt: skip
    return [p for p in {*old_outputs, config, summary} if p.parent.resolve() == run_dir.resolve()]


def only_demo_runs(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """The recorded configs under ``folders`` when every one is a demo run (tiny bundle, bundled clip), else [].

    ``motia demo`` replaces such runs without ``--overwrite``: they hold nothing but
    what the demo makes in seconds, and an upgrade that changes a default must not
    stop ``make demo`` from running twice. Any other recorded config (a user's own
    run in the same folder) returns [] and the usual refusal applies.
    """
    found = [p for f in folders for p in sorted(Path(f).rglob("config.yaml")) if Path(f).is_dir()]
    for path in found:
        old = _recorded(path) or {}
        flat = _flatten(old)
        if not (str(flat.get("models.base", "")).startswith("tiny:") and flat.get("video.path") == "sample:clip"):
            return []
    return found


def check_adapter_folder(out_dir: str | os.PathLike, cfg: JobConfig, overwrite: bool = False,
                         adapter: str = "adapter.safetensors", checkpoint_config: Path | None = None) -> bool:  # fmt: skip
    """Refuse (ConfigError) to start adapting afresh in ``out_dir`` over another config's adapter or checkpoints.

    ``checkpoint_config`` is the ``config.yaml`` of the folder's newest checkpoint, if
    any. Returns True when ``overwrite`` replaces another config's adapter (the caller
    then removes its files before training), False when nothing of another config is there.
    """
    out_dir = Path(out_dir)
    if (out_dir / adapter).is_file():
        what, them, recorded = "a finished adapter", "it", out_dir / "config.yaml"
    elif checkpoint_config is not None:
        what, them, recorded = "the checkpoints of an unfinished adaptation", "them", checkpoint_config
    else:
        return False
    old = _recorded(recorded)
    diffs = ["config.yaml (missing or unreadable)"] if old is None else config_diff(old, cfg.to_dict(), ADAPT_KEYS)
    if not diffs:
        return False
    if not overwrite:
        resumable = what == "a finished adapter" and all(d.startswith("adapt.steps ") for d in diffs)
        _refuse(out_dir, what, them, diffs, extra=" (or --resume to continue it to the new adapt.steps)" if resumable else "")
    return True


# ----------------------------------------------------------------------------- the lock of a folder being written

LOCK_FILE = ".motia.lock"
# Locks this process holds: resolved lock path -> the thread holding it. A run that calls another
# stage on the same folder (`motia run`, a batch clip) takes it again; another thread may not.
_held: dict[str, int] = {}
_held_guard = threading.Lock()


def main_process() -> bool:
    """Whether this is the main process of a launch (``RANK`` and ``LOCAL_RANK`` 0), or no launcher ran it."""
    return int(os.environ.get("RANK", "0")) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def _owner_record() -> bytes:
    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = f"python -m {first.parent.name}" if first.name == "__main__.py" else shlex.quote(first.name)
    return json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join([name, shlex.join(sys.argv[1:])]).strip(),
        "since": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
    }).encode() + b"\n"  # fmt: skip


def _read_owner(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 8192, 0).decode() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(owner: dict | None) -> str:
    """``pid 123 on host box (`motia run ...`, since 2025-01-02 10:00:00)``."""
    if not owner:
        return "a process that has not written its name yet"
    command = " ".join(str(owner.get("command", "?")).split())
    if len(command) > 100:
        command = command[:97] + "..."
    pid, host, since = (owner.get(k, "?") for k in ("pid", "host", "since"))
    return f"pid {pid} on host {host} (`{command}`, since {since})"


def _gone(owner: dict) -> str:
    """Why a recorded holder no longer holds the lock, for the take-over note."""
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return "is no longer running"
        except PermissionError:
            pass
    return "no longer holds it"


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first. OutputError if not writable."""
    from motia.utils import write_error

    created = []
    p = folder.absolute()
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{folder} is a file, not a folder; write elsewhere (output.dir=DIR)") from None
    except OSError as e:
        err = write_error(e, folder)
        if err is None:
            raise
        raise err from e
    return created


def _acquire(path: Path, folder: Path, fix: str) -> int:
    """Open and flock ``path`` (exclusive, not waiting); the open descriptor. FolderInUse when another holds it."""
    import fcntl

    from motia.utils import write_error

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            err = write_error(e, folder)
            if err is None:
                raise
            raise err from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise FolderInUse(f"{folder} is being written by another run: {_describe(owner)}; wait for it to "
                              f"finish, or {fix}") from None  # fmt: skip
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        st = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
            return fd
        os.close(fd)  # its holder removed the file as it let go: lock the one now there


def _take(fd: int, path: Path, folder: Path) -> None:
    """Write this process into the lock file, noting a record left there by a run that was killed."""
    from motia.utils import write_error

    stale = _read_owner(fd)
    if stale is not None:
        log.warning("%s: took over the lock left by %s, which %s", folder, _describe(stale), _gone(stale))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_record(), 0)
    except OSError as e:
        _release(fd, path, [])
        err = write_error(e, path)
        if err is None:
            raise
        raise err from e


def _release(fd: int, path: Path, created: list[Path]) -> None:
    """Remove the lock file while still holding it (a run waiting on it then retries on a new one), then let go."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)
    _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a run created and left empty (it failed before writing anything), deepest first."""
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def lock_run_folder(folder: str | os.PathLike, enabled: bool = True,
                    fix: str = "write elsewhere with output.name=NEW_NAME") -> Iterator[Path]:  # fmt: skip
    """Hold ``folder``'s lock for the block: the folder (created if missing) is this run's to write.

    Another live run holding it: ``FolderInUse``, one line naming that run (pid, host,
    command, since when) and ``fix``. A folder that cannot be written (read-only disk, no
    permission): ``OutputError``. A lock file left by a killed run is taken over with a
    warning. The same thread may take a lock it holds again (a stage inside a run); the
    lock goes at the end of the outermost block. ``enabled=False`` (the other processes of
    a launch, whose main process writes) holds nothing. Folders created here and left
    empty by the block are removed.
    """
    folder = Path(folder)
    if not enabled:
        yield folder
        return
    path = folder / LOCK_FILE
    created = _make_folder(folder)
    key, me = str(path.resolve()), threading.get_ident()
    with _held_guard:
        holder = _held.get(key)
    if holder == me:  # held by the run around this stage: it lets go at its end
        yield folder
        return
    if holder is not None:
        raise FolderInUse(f"{folder} is being written by another job of this process (pid {os.getpid()}); "
                          f"wait for it to finish, or {fix}")  # fmt: skip
    try:
        fd = _acquire(path, folder, fix)
        _take(fd, path, folder)
    except BaseException:
        _remove_empty(created)
        raise
    with _held_guard:
        _held[key] = me
    try:
        yield folder
    finally:
        with _held_guard:
            del _held[key]
        _release(fd, path, created)
