"""Batch runner: failures recorded and survived, resume, sharding over 2 processes, adapter cache, manifest errors.

One real batch (tiny models, 1 adaptation step, 1 sampling step, 4 frames of 32x48)
runs once per module; the tests read its outputs, rerun it, shard it and manage its
adapter cache.
"""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from motia import adapt as adapt_mod
from motia import batch
from motia import outpaint as outpaint_mod
from motia.cli import main as cli_main
from motia.errors import ConfigError
from motia.video import read_video, write_video

REPO = Path(__file__).resolve().parent.parent
FAST = ["adapt.steps=1", "adapt.frames=4", "sample.steps=1", "sample.guidance_steps=1", "video.size=32",
        "video.max_frames=4", "caption.model=tiny:blip", "caption.max_new_tokens=5"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is shared: two intra-op threads per process on 2 busy cores ran the tiny models 5x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _clip(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 12, generator=g), size=(32, 48), mode="bilinear")
    return torch.cat([x.roll(i, dims=-1) for i in range(4)])  # (4, 3, 32, 48), a slow pan


def _manifest(folder: Path, clips: list, name: str = "batch.yaml", **extra) -> Path:
    data = {"base": str(REPO / "configs" / "tiny.yaml"), "overrides": FAST, "clips": clips,
            "output": str(folder / "out"), "adapter_cache": str(folder / "cache"), **extra}  # fmt: skip
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


CLIPS = [
    {"path": "a.mp4"},
    {"path": "a.mp4", "name": "a_tall", "outpaint": {"top": 0.25, "bottom": 0.25}},  # same clip, other canvas
    {"path": "b.mp4", "prompt": "auto"},
    {"path": "c.mp4"},  # corrupt
]


class Counter:
    """Wraps a function, counts its calls and still calls it."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _run(manifest: Path, *overrides: str, loads: list | None = None) -> tuple[int, int, int]:
    """(exit code, adaptation calls, outpainting calls) of `motia batch`; model loads appended to ``loads``."""
    from motia.models import loading

    adapt_calls, outpaint_calls = Counter(adapt_mod.adapt_from_config), Counter(outpaint_mod.outpaint_from_config)
    load_calls = Counter(loading.load_components)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapt_mod, "adapt_from_config", adapt_calls)
        mp.setattr(outpaint_mod, "outpaint_from_config", outpaint_calls)
        mp.setattr(loading, "load_components", load_calls)
        code = cli_main(["batch", str(manifest), *overrides])
    if loads is not None:
        loads.append(load_calls.calls)
    return code, adapt_calls.calls, outpaint_calls.calls


def _report(folder: Path) -> dict:
    return json.loads((folder / "out" / batch.REPORT_JSON).read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    write_video(folder / "a.mp4", _clip(1), fps=8)
    write_video(folder / "b.mp4", _clip(2), fps=8)
    (folder / "c.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but not a video")
    manifest = _manifest(folder, CLIPS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the autouse one
    try:
        loads = []
        code, adapts, outpaints = _run(manifest, loads=loads)
    finally:
        torch.set_num_threads(threads)
    return {"folder": folder, "manifest": manifest, "code": code, "adapts": adapts, "outpaints": outpaints,
            "loads": loads[0], "report": _report(folder)}  # fmt: skip


def test_batch_survives_a_corrupt_clip_and_reports_it(first_run):
    folder, report = first_run["folder"], first_run["report"]
    assert first_run["code"] == 1  # a clip failed
    rows = {r["clip"]: r for r in report["clips"]}
    assert [r["clip"] for r in report["clips"]] == ["a", "a_tall", "b", "c"]
    assert {k: r["status"] for k, r in rows.items()} == {"a": "ok", "a_tall": "ok", "b": "ok", "c": "failed"}
    assert report["counts"] == {"ok": 3, "skipped": 0, "failed": 1}
    assert "c.mp4" in rows["c"]["error"] and "\n" not in rows["c"]["error"]
    for name in ("a", "a_tall", "b"):
        r = rows[name]
        assert r["error"] == "" and r["outpaint_s"] > 0 and r["peak_memory_bytes"] > 0
        assert Path(r["outputs"]["mp4"]).is_file() and Path(r["outputs"]["mp4"]).parent == folder / "out" / name
    assert read_video(rows["a_tall"]["outputs"]["mp4"]).frames.shape[-2:] == (48, 48)  # its own canvas
    assert read_video(rows["a"]["outputs"]["mp4"]).frames.shape[-2:] == (32, 72)
    assert not (folder / "out" / "c").exists()

    with open(folder / "out" / batch.REPORT_CSV, newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["clip"], t["status"]) for t in table] == [("a", "ok"), ("a_tall", "ok"), ("b", "ok"), ("c", "failed")]
    assert table[3]["error"] == rows["c"]["error"] and "outpaint.mp4" in table[0]["outputs"]


def test_adapter_is_reused_across_geometries_and_auto_prompt_is_captioned(first_run):
    rows = {r["clip"]: r for r in first_run["report"]["clips"]}
    assert first_run["adapts"] == 2 and first_run["outpaints"] == 3  # a and b trained; a_tall reused a's
    assert first_run["loads"] == 1  # one model set for every stage of every clip
    assert rows["a"]["adapter_reused"] is False and rows["a_tall"]["adapter_reused"] is True
    assert rows["a_tall"]["adapter"] == rows["a"]["adapter"] != rows["b"]["adapter"]
    assert rows["a_tall"]["adapt_s"] < rows["a"]["adapt_s"]
    cache = first_run["folder"] / "cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted([rows["a"]["adapter"], rows["b"]["adapter"]])
    info = json.loads((cache / rows["a"]["adapter"] / batch.INFO_FILE).read_text())
    assert info["clip"].endswith("a.mp4") and info["adapt"]["steps"] == 1

    caption = rows["b"]["caption"]
    assert caption.strip() and caption != "auto" and rows["b"]["prompt"] == caption
    assert rows["a"]["caption"] == "" and rows["a"]["prompt"] == "a sunny beach"
    used = yaml.safe_load((first_run["folder"] / "out" / "b" / "config.yaml").read_text())
    assert used["prompt"] == caption


def test_rerun_skips_finished_clips_and_trains_nothing(first_run):
    folder = first_run["folder"]
    mp4 = folder / "out" / "a" / "outpaint.mp4"
    stamp = mp4.stat().st_mtime_ns
    code, adapts, outpaints = _run(first_run["manifest"])
    assert (code, adapts, outpaints) == (1, 0, 0)
    rows = {r["clip"]: r for r in _report(folder)["clips"]}
    assert {k: r["status"] for k, r in rows.items()} == {"a": "skipped", "a_tall": "skipped", "b": "skipped", "c": "failed"}
    assert rows["b"]["caption"] == {r["clip"]: r for r in first_run["report"]["clips"]}["b"]["caption"]
    assert mp4.stat().st_mtime_ns == stamp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_clips(first_run):
    """`accelerate launch --multi_gpu --num_processes 2` (torchrun; gloo on this CPU-only machine).

    accelerate's `--cpu` launcher starts a single process unless MPI is set up, hence --multi_gpu.
    A fifth entry (a third canvas for clip a) is new work; it lands on rank 1, where it trains a's adapter again
    (an empty adapter cache) alone on that rank: bit for bit the adapter the single-process run trained on rank 0.
    """
    folder = first_run["folder"]
    manifest = _manifest(folder, [*CLIPS, {"path": "a.mp4", "name": "a_left", "outpaint": {"left": 0.5}}], "batch2.yaml",
                         adapter_cache=str(folder / "cache2"))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "motia.batch", str(manifest)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]  # c.mp4 still fails
    ranks = [json.loads((folder / "out" / "reports" / f"rank_{r:04d}.json").read_text()) for r in (0, 1)]
    done = [[row["clip"] for row in rep["rows"]] for rep in ranks]
    assert done == [["a", "a_tall", "b"], ["c", "a_left"]], proc.stderr[-3000:]
    report = _report(folder)
    assert report["num_processes"] == 2
    assert [(r["clip"], r["status"], r["rank"]) for r in report["clips"]] == [
        ("a", "skipped", 0), ("a_tall", "skipped", 0), ("b", "skipped", 0), ("c", "failed", 1), ("a_left", "ok", 1)]
    new = report["clips"][4]
    assert new["adapter_reused"] is False and new["adapter"] == report["clips"][0]["adapter"]
    assert Path(new["outputs"]["mp4"]).is_file()
    import safetensors.torch

    rank1 = safetensors.torch.load_file(folder / "cache2" / new["adapter"] / batch.ADAPTER_FILE)
    rank0 = safetensors.torch.load_file(folder / "cache" / new["adapter"] / batch.ADAPTER_FILE)
    assert rank1.keys() == rank0.keys() and all(torch.equal(rank1[k], rank0[k]) for k in rank0)
    assert "a_left: ok" in proc.stdout and "1 ok, 3 skipped, 1 failed" in proc.stdout


def test_adapters_list_and_rm(first_run, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(first_run["folder"] / "cache", cache)
    keys = sorted(p.name for p in cache.iterdir())
    assert len(keys) == 2
    capsys.readouterr()
    assert cli_main(["adapters", "list", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in keys) and "a.mp4" in out and "b.mp4" in out and "2 adapter(s)" in out

    assert cli_main(["adapters", "rm", "zzzz", "--cache", str(cache)]) == 2
    assert "no cached adapter key starts with 'zzzz'" in capsys.readouterr().err
    assert sorted(p.name for p in cache.iterdir()) == keys  # nothing removed

    assert cli_main(["adapters", "rm", keys[0][:6], "--cache", str(cache)]) == 0
    assert sorted(p.name for p in cache.iterdir()) == keys[1:]
    (cache / f".{keys[1]}.tmp.x").mkdir()  # leftover of a killed training
    assert cli_main(["adapters", "rm", "--all", "--cache", str(cache)]) == 0
    assert list(cache.iterdir()) == []
    capsys.readouterr()
    assert cli_main(["adapters", "list", "--cache", str(cache)]) == 0
    assert "no adapters" in capsys.readouterr().out


def test_adapter_key_covers_pixels_and_recipe_not_canvas(tmp_path):
    from motia.config import load_config
    from motia.planning import load_clip

    write_video(tmp_path / "a.mp4", _clip(1), fps=8)
    base = [*FAST, f"video.path={tmp_path / 'a.mp4'}"]

    def key(*extra):
        cfg = load_config(REPO / "configs" / "tiny.yaml", [*base, *extra])
        return batch.adapter_key(cfg, load_clip(cfg))

    k = key()
    assert len(k) == 16 and k == key()
    assert key("outpaint.aspect='9:16'", "outpaint.left=0", "outpaint.right=0") == k  # canvas
    assert key("sample.steps=3", "adapt.checkpoint_every=7", "output.name=x") == k  # sampling, bookkeeping
    assert len({k, key("adapt.steps=2"), key("prompt=a cat"), key("seed=1"), key("video.start=1"),
                key("adapt.lora.rank=4"), key("models.vae=tiny:vae")}) == 7  # fmt: skip
    with pytest.raises(ValueError, match="resolved prompt"):
        key("prompt=auto")


def test_manifest_errors_name_the_key(tmp_path, capsys):
    (tmp_path / "a.mp4").write_bytes(b"")
    bad = _manifest(tmp_path, [{"path": "a.mp4"}], outptu="x")
    assert cli_main(["batch", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'outptu'" in err and "did you mean 'output'" in err

    with pytest.raises(ConfigError, match=r"clips\.0\.promt"):
        batch.load_manifest(_manifest(tmp_path, [{"path": "a.mp4", "promt": "x"}]))
    with pytest.raises(ConfigError, match=r"clips\.0\.outpaint\.lefft"):
        batch.load_manifest(_manifest(tmp_path, [{"path": "a.mp4", "outpaint": {"lefft": 1.0}}]))
    dup = _manifest(tmp_path, [{"path": "a.mp4"}, {"path": "a.mp4", "outpaint": {"left": 1.0}}])
    with pytest.raises(ConfigError, match=r"clips\.1 and clips\.0 are both named 'a'"):
        batch.expand_jobs(batch.load_manifest(dup), dup)
    typo = _manifest(tmp_path, [{"path": "a.mp4", "overrides": ["sample.stepz=3"]}])
    with pytest.raises(ConfigError, match=r"clips\.0 \(a\): unknown key 'sample\.stepz'"):
        batch.expand_jobs(batch.load_manifest(typo), typo)
    nothing = _manifest(tmp_path, [], globs=["*.mov"])
    with pytest.raises(ConfigError, match=r"globs\.0: '\*\.mov' matches no file"):
        batch.expand_jobs(batch.load_manifest(nothing), nothing)
    missing = _manifest(tmp_path, [{"path": "a.mp4"}, {"path": "gone.mp4"}])
    assert cli_main(["batch", str(missing)]) == 2  # a missing clip is the manifest's error: nothing runs
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clips.1" in err and "gone.mp4 does not exist" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("batch_report*"))


def test_clips_that_adapt_with_different_precision_are_refused_up_front(tmp_path, capsys):
    (tmp_path / "a.mp4").write_bytes(b"")
    manifest = _manifest(tmp_path, [{"path": "a.mp4"}, {"path": "a.mp4", "name": "a_bf16",
                                                         "overrides": ["adapt.mixed_precision=bf16"]}])  # fmt: skip
    assert cli_main(["batch", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clips.0 (a) adapts on cpu with mixed precision no, clips.1 (a_bf16) on cpu " \
        "with bf16; a batch adapts every clip with one setting" in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_jobs_expand_in_order_with_per_clip_settings(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("z.mp4", "b.mp4", "m.mp4"):
        (data / name).write_bytes(b"")
    manifest = _manifest(tmp_path, [
        {"path": "data/m.mp4", "name": "m_tall", "prompt": "a dog", "outpaint": {"aspect": "9:16"},
         "video": {"max_frames": 2}, "overrides": ["sample.steps=3"]},
        {"path": "data/m.mp4"},
    ], globs=["data/*.mp4"], overrides=[*FAST, "outpaint.left=0.5", "outpaint.right=0.5", "sample.steps=2"])  # fmt: skip
    jobs = batch.expand_jobs(batch.load_manifest(manifest), manifest, ["seed=5"])
    assert [(j.name, j.source) for j in jobs] == [("m_tall", "clips.0"), ("m", "clips.1"), ("b", "globs.0"), ("z", "globs.0")]
    tall, m, b = jobs[0].cfg, jobs[1].cfg, jobs[2].cfg
    assert (tall.outpaint.aspect, tall.outpaint.left, tall.outpaint.right) == ("9:16", 0.0, 0.0)  # canvas replaced
    assert (m.outpaint.left, m.outpaint.right, m.outpaint.aspect) == (0.5, 0.5, None)
    assert (tall.video.max_frames, tall.video.size, m.video.max_frames) == (2, 32, 4)  # video merged key by key
    assert (tall.prompt, m.prompt, tall.sample.steps, m.sample.steps, b.seed) == ("a dog", "a sunny beach", 3, 2, 5)
    assert tall.video.path == str((data / "m.mp4").resolve()) and tall.run_dir() == tmp_path / "out" / "m_tall"


def test_example_configs_validate():
    from motia.evaluate import load_eval_config

    spec = batch.load_manifest(REPO / "configs" / "batch_example.yaml")
    assert [c.name for c in spec.clips] == [None, "surf_vertical", None] and spec.reuse_adapters
    assert spec.clips[1].outpaint.aspect == "9:16" and spec.clips[2].video.model_dump(exclude_unset=True) == {
        "stride": 2, "max_frames": 48}
    ev = load_eval_config(REPO / "configs" / "eval_example.yaml")
    assert ev.ratios == [0.25, 0.66] and set(ev.methods) == {"motia", "reference", "motia_base"}
    assert ev.dataset == str((REPO / "data" / "DAVIS").resolve())
