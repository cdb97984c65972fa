"""Shared machines: a folder a live run writes is locked; a full or read-only disk is one line, nothing half-written."""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from motia.cli import main
from motia.errors import FolderInUse, MotiaError, NoSpaceError
from motia.job import REPO_CONFIGS
from motia.runs import LOCK_FILE, lock_run_folder, main_process
from motia.utils import atomic_path

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO_CONFIGS / "tiny.yaml")
# The bundled clip, short and cheap; PNG frames too, so every kind of writer runs.
FAST = ["video.max_frames=8", "adapt.frames=4", "adapt.steps=2", "adapt.checkpoint_every=2", "sample.steps=2",
        "sample.guidance_steps=1", "sample.regret.repeats=0", "output.frames=true"]  # fmt: skip
HOLDER = """\
import sys
from motia.runs import lock_run_folder

with lock_run_folder(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) by relative path -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def cli(capsys, *argv) -> tuple[int, list[str]]:
    """The exit code and stderr's lines, less the progress bars of a run that loaded models."""
    rc = main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    return rc, [ln for ln in lines if not ln.startswith(("loading models:", "Loading weights:", "outpaint:", "adapt:"))
                and ln.strip()]  # fmt: skip


@contextlib.contextmanager
def held(folder: Path, scripts: Path):
    """Another process (``hold_lock.py FOLDER``) holding ``folder``'s lock until the block ends."""
    script = scripts / "hold_lock.py"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.fixture
def no_models(monkeypatch):
    """Loading models fails the test: what it checks must happen before."""

    def load(*args, **kwargs):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr("motia.models.load_components", load)


def _busy_line(folder: Path, proc) -> str:
    host = socket.gethostname()
    return f"error: {folder} is being written by another run: pid {proc.pid} on host {host} (`hold_lock.py"


# ----------------------------------------------------------------------------- the lock


@pytest.mark.parametrize("verb, sub", [("outpaint", ""), ("run", ""), ("adapt", "adapter")])
def test_a_second_run_into_a_folder_being_written_refuses_naming_the_other(tmp_path, capsys, no_models, verb, sub):
    out = tmp_path / "out"
    folder = out / "sample" / sub if sub else out / "sample"
    with held(folder, tmp_path) as proc:
        before = snapshot(folder)
        assert LOCK_FILE in before  # the holder's record
        rc, err = cli(capsys, verb, TINY, f"output.dir={out}", *FAST)
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith(_busy_line(folder, proc)), err[0]
        assert ", since 2" in err[0] and "wait for it to finish" in err[0]
        assert snapshot(folder) == before  # its record is left as it was, nothing else written


def test_a_batch_clip_whose_folder_is_being_written_fails_naming_the_other(tmp_path, capsys, no_models):
    from motia.video import sample_clip_path

    manifest = tmp_path / "batch.yaml"
    manifest.write_text(yaml.safe_dump({"base": TINY, "overrides": FAST, "clips": [{"path": str(sample_clip_path())}],
                                        "output": str(tmp_path / "out"), "adapter_cache": str(tmp_path / "cache")}))
    folder = tmp_path / "out" / "sample"
    with held(folder, tmp_path) as proc:
        assert main(["batch", str(manifest)]) == 1  # a failed clip: the batch's exit code
    row = json.loads((tmp_path / "out" / "batch_report.json").read_text())["clips"][0]
    assert row["status"] == "failed" and row["error"].startswith(_busy_line(folder, proc).removeprefix("error: "))
    assert snapshot(folder) == {}  # nothing written there


def test_the_app_refuses_to_outpaint_into_a_folder_being_written(tmp_path, no_models, monkeypatch):
    from motia.app import App, Choices
    from motia.video import sample_clip_path

    monkeypatch.setattr("motia.batch.find_adapter", lambda key, cache=None: tmp_path / "adapter.safetensors")
    app = App(TINY, [f"output.dir={tmp_path / 'out'}", *FAST])
    folder = tmp_path / "out" / "sample"
    with held(folder, tmp_path) as proc:
        with pytest.raises(FolderInUse) as e:
            app.outpaint(Choices(video=str(sample_clip_path()), left=0.25, right=0.25))
        assert f"error: {e.value}".startswith(_busy_line(folder, proc))
        assert set(snapshot(folder)) == {LOCK_FILE}  # not even the clip was copied in


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path, capsys, caplog, monkeypatch):
    def load(*args, **kwargs):
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()  # the run holds it now
        raise MotiaError("got past the lock")

    monkeypatch.setattr("motia.models.load_components", load)
    out = tmp_path / "out"
    folder = out / "sample"
    with held(folder, tmp_path) as proc:
        proc.kill()  # SIGKILL: no clean-up; the kernel lets go of the flock, the record stays
        proc.wait()
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == proc.pid
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={out}", *FAST)
    assert rc == 2 and err == ["error: got past the lock"]
    notes = [r.getMessage() for r in caplog.records if "took over the lock" in r.getMessage()]
    assert len(notes) == 1 and f"pid {proc.pid} on host {socket.gethostname()}" in notes[0], notes
    assert notes[0].startswith(f"{folder}: took over the lock") and notes[0].endswith("which is no longer running")
    assert not (folder / LOCK_FILE).exists()  # released at the end


def test_a_lock_file_nobody_holds_is_taken_over_whoever_wrote_it(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    for owner, why in [({"pid": dead.pid, "host": socket.gethostname()}, "is no longer running"),
                       ({"pid": os.getpid(), "host": "elsewhere"}, "no longer holds it")]:  # fmt: skip
        (folder / LOCK_FILE).write_text(json.dumps({**owner, "command": "motia run a.yaml", "since": "2020-01-01"}))
        caplog.clear()
        with lock_run_folder(folder):
            record = json.loads((folder / LOCK_FILE).read_text())
            assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert [r.getMessage().endswith(why) for r in caplog.records] == [True]
        assert f"pid {owner['pid']} on host {owner['host']} (`motia run a.yaml`" in caplog.records[0].getMessage()
    assert not (folder / LOCK_FILE).exists()


def test_the_lock_is_taken_again_by_its_thread_and_refused_to_another(tmp_path):
    folder = tmp_path / "new" / "run"
    errors = []

    def other_job():
        try:
            with lock_run_folder(folder):
                pass
        except FolderInUse as e:
            errors.append(str(e))

    with lock_run_folder(folder):
        with lock_run_folder(folder):  # a stage inside a run (`motia run` -> outpaint)
            pass
        assert (folder / LOCK_FILE).is_file()  # still held: the outer block has not ended
        t = threading.Thread(target=other_job)
        t.start()
        t.join()
    assert len(errors) == 1 and errors[0].startswith(f"{folder} is being written by another job of this process")
    assert not (tmp_path / "new").exists()  # created for the run, left empty: removed


def test_only_the_main_process_of_a_launch_locks(tmp_path, capsys, monkeypatch):
    def load(*args, **kwargs):
        raise MotiaError("got past the lock")

    monkeypatch.setattr("motia.models.load_components", load)
    folder = tmp_path / "out" / "sample"
    with held(folder, tmp_path):
        monkeypatch.setenv("RANK", "1")  # another process of an `accelerate launch`: the main one writes
        assert not main_process()
        rc, err = cli(capsys, "outpaint", TINY, f"output.dir={tmp_path / 'out'}", *FAST)
        assert rc == 2 and err == ["error: got past the lock"]
        monkeypatch.setenv("RANK", "0")
        rc, err = cli(capsys, "outpaint", TINY, f"output.dir={tmp_path / 'out'}", *FAST)
        assert rc == 2 and "is being written by another run" in err[0]


# ----------------------------------------------------------------------------- full and read-only disks


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A finished outpainting of FAST (read only: tests copy it)."""
    out = tmp_path_factory.mktemp("earlier")
    assert main(["outpaint", TINY, f"output.dir={out}", *FAST]) == 0
    return out


def _copy_earlier(earlier: Path, out: Path) -> Path:
    shutil.copytree(earlier, out)
    return out / "sample"


@pytest.mark.parametrize("kind", ["mp4", "frames"])
def test_a_full_disk_while_writing_is_one_line_and_keeps_the_earlier_outputs(earlier, tmp_path, capsys, monkeypatch,
                                                                            kind):  # fmt: skip
    """ENOSPC injected into a writer (the same config again: the earlier outputs would be replaced on success)."""
    from PIL import Image

    from motia.video import VideoWriter

    run = _copy_earlier(earlier, tmp_path / "out")
    before = snapshot(run)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if kind == "mp4":
        real = VideoWriter._yuv

        def encode(self, frame, index):  # the encoder's write of the 4th frame finds the disk full
            if index == 3 and self.path.name == "outpaint.mp4":
                raise full
            return real(self, frame, index)

        monkeypatch.setattr(VideoWriter, "_yuv", encode)
        path = run / "outpaint.mp4"
    else:
        monkeypatch.setattr(Image.Image, "save", lambda *a, **k: (_ for _ in ()).throw(full))
        path = run / "frames"
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={tmp_path / 'out'}", *FAST)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {path}: the disk filled up while writing it ("), err[0]
    assert " free, the outputs need about " in err[0] and "nothing of it was kept" in err[0]
    assert snapshot(run) == before  # no temporary file, no partial mp4, the earlier outputs as they were


def test_a_read_only_folder_is_refused_before_the_models_load(earlier, tmp_path, capsys, monkeypatch, no_models):
    """EROFS injected where the run first writes (its lock file); a real read-only mount is tested below."""
    run = _copy_earlier(earlier, tmp_path / "out")
    before = snapshot(run)
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    for verb in ("outpaint", "adapt", "run"):
        rc, err = cli(capsys, verb, TINY, f"output.dir={tmp_path / 'out'}", *FAST)
        folder = run / "adapter" if verb == "adapt" else run
        assert rc == 2 and err == [f"error: {folder}: its disk is mounted read-only; write elsewhere (output.dir=DIR)"]
    assert snapshot(run) == before


def test_atomic_path_names_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("earlier")
    with pytest.raises(NoSpaceError) as e:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert str(e.value).startswith(f"{target}: the disk filled up while writing it (") and e.value.path == target
    from safetensors import SafetensorError  # a library's own error type saying so

    with pytest.raises(NoSpaceError):
        with atomic_path(tmp_path / "a.safetensors"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(PermissionError):  # reading another file failed: not this write's error
        with atomic_path(tmp_path / "b.txt"):
            raise OSError(errno.EACCES, "Permission denied", "/somewhere/else/input.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"] and target.read_text() == "earlier"


def test_a_full_disk_while_saving_the_adapter_is_one_line(tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def save(tensors, filename, metadata=None):
        if ".adapter." in Path(filename).name:  # the adapter's temporary name; checkpoints save fine
            real(tensors, filename, metadata)  # a part of it written, then the disk is full
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save)
    folder = tmp_path / "out" / "sample" / "adapter"
    rc, err = cli(capsys, "adapt", TINY, f"output.dir={tmp_path / 'out'}", *FAST)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {folder / 'adapter.safetensors'}: the disk filled up while writing it (")
    assert not list(folder.glob("*adapter*"))  # neither the file nor its temporary


def _ring_on(folder: Path, monkeypatch):
    """A SourceRing of 3 frames of 64x64 kept in a file in ``folder`` (as rings past 256 MiB are)."""
    import numpy as np

    from motia import output

    monkeypatch.setattr(output, "_RING_RAM_BYTES", 0)
    frames = iter([np.full((64, 64, 3), i, dtype=np.uint8) for i in range(5)])
    return output.SourceRing(frames, 5, 3, folder)


def test_a_source_ring_on_a_full_disk_is_one_line_not_a_crash(tmp_path, monkeypatch):
    """Its file is reserved before it is mapped: a mapping past a full disk would die of SIGBUS."""

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(NoSpaceError, match=f"^{re.escape(str(tmp_path))}: the disk filled up while writing it"):
        _ring_on(tmp_path, monkeypatch)(0)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- a real small disk (tmpfs)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted at ``tmp_path/disk`` (root and mount needed; else skipped: the injected tests cover it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); the injected-error tests cover the same paths")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected-error tests cover the same paths")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_run_that_will_not_fit_is_refused_before_the_models_load(small_disk, earlier, capsys, no_models):
    run = _copy_earlier(earlier, small_disk / "out")
    _fill(small_disk, 100 << 10)
    before = snapshot(run)
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={small_disk / 'out'}", *FAST)
    assert rc == 2 and len(err) == 1, err
    assert re.match(rf"error: {re.escape(str(run))}: not enough space: 9\d\.\d KiB free, the outputs need about "
                    r"\d+\.\d KiB; ", err[0]), err[0]  # about 100 KiB were left (less the lock file's block)
    assert err[0].endswith("; free some space there or write elsewhere with output.dir=DIR")
    assert snapshot(run) == before


def test_a_disk_that_fills_up_while_writing_is_one_line_and_keeps_the_earlier_outputs(small_disk, earlier, capsys,
                                                                                     monkeypatch):  # fmt: skip
    """The estimate fits; then another program fills the disk while the models load: a real ENOSPC when writing."""
    from motia import models

    run = _copy_earlier(earlier, small_disk / "out")
    before = snapshot(run)
    real = models.load_components

    def load_and_fill(*args, **kwargs):
        components = real(*args, **kwargs)
        _fill(small_disk, 4 << 10)
        return components

    monkeypatch.setattr(models, "load_components", load_and_fill)
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={small_disk / 'out'}", *FAST)
    assert rc == 2 and len(err) == 1, err
    assert re.match(rf"error: {re.escape(str(run))}/[\w.]+: the disk filled up while writing it \(\S+ \w+ free, "
                    r"the outputs need about .*\); nothing of it was kept; ", err[0]), err[0]  # fmt: skip
    assert snapshot(run) == before  # no temporary file, no partial mp4, the earlier outputs as they were


def test_adaptation_that_will_not_fit_is_refused_before_training(small_disk, capsys):
    folder = small_disk / "out" / "sample" / "adapter"
    rc, err = cli(capsys, "adapt", TINY, f"output.dir={small_disk / 'out'}", *FAST)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {folder}: not enough space: ") and "need about" in err[0]
    assert err[0].endswith("write elsewhere with adapt.output_dir=DIR")
    assert not (folder / "adapter.safetensors").exists() and not (folder / "checkpoints").exists()
    assert not (folder / "train_log.jsonl").exists()  # no step ran


def test_a_source_ring_on_a_real_full_disk_is_one_line_not_a_crash(small_disk, monkeypatch):
    _fill(small_disk, 16 << 10)  # less than the ring's 36 KiB
    with pytest.raises(NoSpaceError):
        _ring_on(small_disk, monkeypatch)(0)


def test_a_read_only_disk_is_refused_before_the_models_load(small_disk, earlier, capsys, no_models):
    run = _copy_earlier(earlier, small_disk / "out")
    before = snapshot(run)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={small_disk / 'out'}", *FAST)
    assert rc == 2 and err == [f"error: {run}: its disk is mounted read-only; write elsewhere (output.dir=DIR)"]
    assert snapshot(run) == before
