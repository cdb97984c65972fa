"""A new user's path through run folders: no silent overwrites, resume that extends, adapters that fit the run."""

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from motia.cli import main
from motia.errors import InputError
from motia.job import REPO_CONFIGS
from motia.lora import read_lora_metadata

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO_CONFIGS / "tiny.yaml")
# The bundled clip, short and cheap: 8 frames, 3 adaptation steps, 2 sampling steps.
FAST = ["video.max_frames=8", "adapt.frames=4", "adapt.steps=3", "adapt.log_every=1", "adapt.checkpoint_every=2",
        "sample.steps=2", "sample.guidance_steps=1", "sample.regret.repeats=0", "output.side_by_side=true"]  # fmt: skip


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def cli(capsys, *argv) -> tuple[int, list[str]]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A finished 3-step adaptation of the bundled clip (read only: tests must not write into it)."""
    out = tmp_path_factory.mktemp("adapted")
    assert main(["adapt", TINY, f"output.dir={out}", *FAST]) == 0
    return out / "sample" / "adapter" / "adapter.safetensors"


def test_another_config_refuses_and_leaves_every_file_same_config_reruns(tmp_path, capsys):
    out = tmp_path / "out"
    run = out / "sample"
    assert main(["run", TINY, f"output.dir={out}", *FAST]) == 0
    capsys.readouterr()
    adapter = run / "adapter" / "adapter.safetensors"
    assert (run / "outpaint.mp4").is_file() and adapter.is_file()
    before = snapshot(run)
    assert any(k.startswith("adapter/checkpoints/") for k in before)

    tries = [
        (["adapt", TINY, f"output.dir={out}", *FAST, "adapt.steps=5"], "adapt.steps (3 -> 5)"),
        (["outpaint", TINY, f"output.dir={out}", *FAST, "sample.steps=3", "--lora", adapter], "sample.steps (2 -> 3)"),
        (["outpaint", TINY, f"output.dir={out}", *FAST], "--lora"),  # the baseline over an adapted run
        (["run", TINY, f"output.dir={out}", *FAST, "seed=1"], "seed (0 -> 1)"),
    ]
    for argv, needle in tries:
        rc, err = cli(capsys, *argv)
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith("error: ") and "--overwrite" in err[0] and needle in err[0], err[0]
        assert snapshot(run) == before, argv  # nothing written, nothing deleted

    # The same config again (`make demo` twice) replaces its outputs without asking.
    assert main(["run", TINY, f"output.dir={out}", *FAST]) == 0
    assert snapshot(run).keys() == before.keys()

    # --overwrite replaces another config's run, and none of the old run's outputs stay beside the new ones.
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={out}", *FAST, "sample.steps=3", "output.side_by_side=false",
                  "--lora", adapter, "--overwrite")  # fmt: skip
    assert rc == 0, err
    assert not (run / "side_by_side.mp4").exists() and (run / "outpaint.mp4").is_file()
    assert json.loads((run / "summary.json").read_text())["work"]["steps"] == 3
    assert adapter.is_file()  # the adapter folder is adaptation's, not outpainting's


def test_demo_replaces_earlier_demo_runs_but_not_a_users_run(tmp_path, capsys):
    """An upgrade that changes a default (or other demo overrides) must not stop `make demo`; a user's run still does."""
    out = tmp_path / "out"
    run = out / "sample"
    assert main(["demo", f"output.dir={out}", *FAST]) == 0
    capsys.readouterr()
    rc = main(["demo", f"output.dir={out}", *FAST, "seed=1"])  # another demo config, same folder
    said = capsys.readouterr()
    assert rc == 0, said.err[-2000:]
    assert f"demo: replacing the earlier demo outputs in {run}" in said.out
    assert json.loads((run / "summary.json").read_text())["seed"] == 1

    # A run of the user's own clip written into the demo's folder is theirs: refused, untouched.
    user = tmp_path / "user.png"
    from PIL import Image

    Image.new("RGB", (48, 64), (120, 40, 200)).save(user)
    assert main(["outpaint", TINY, f"output.dir={out}", *FAST, f"video.path={user}", "output.name=sample",
                 "--overwrite"]) == 0  # fmt: skip
    capsys.readouterr()
    before = snapshot(run)
    rc, err = cli(capsys, "demo", f"output.dir={out}", *FAST)
    assert rc == 2 and len(err) == 1 and "--overwrite" in err[0], err
    assert snapshot(run) == before


@pytest.mark.parametrize("canvas", [["outpaint.target_size=[10,10]"], ["outpaint.left=0", "outpaint.right=0"]])
def test_a_canvas_that_cannot_be_planned_fails_before_the_adaptation(tmp_path, capsys, canvas):
    """`motia run` (and `adapt`) plan the canvases before training: nothing trained, nothing written."""
    for verb in ("run", "adapt"):
        rc, err = cli(capsys, verb, TINY, f"output.dir={tmp_path}", *FAST, *canvas)
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: outpaint"), err
        assert not (tmp_path / "sample").exists(), verb


def test_a_users_own_file_in_the_run_folder_is_not_replaced(tmp_path, capsys):
    run = tmp_path / "sample"
    run.mkdir()
    (run / "outpaint.mp4").write_bytes(b"the user's own video")
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={tmp_path}", *FAST)
    assert rc == 2 and len(err) == 1 and "outpaint.mp4, which no motia run recorded" in err[0], err
    assert (run / "outpaint.mp4").read_bytes() == b"the user's own video" and sorted(os.listdir(run)) == ["outpaint.mp4"]
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={tmp_path}", *FAST, "--overwrite")
    assert rc == 0, err
    assert (run / "outpaint.mp4").read_bytes() != b"the user's own video"


def test_a_missing_init_lora_fails_before_the_models_load(tmp_path, capsys, monkeypatch):
    import motia.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the models were loaded before adapt.init_lora was checked")

    monkeypatch.setattr(motia.models, "load_components", no_loading)
    rc, err = cli(capsys, "adapt", TINY, f"output.dir={tmp_path}", *FAST, f"adapt.init_lora={tmp_path / 'nope.safetensors'}")
    assert rc == 2 and len(err) == 1 and "nope.safetensors: LoRA file not found" in err[0], err
    assert not (tmp_path / "sample").exists()


def test_resume_with_more_steps_extends_a_finished_run(tmp_path, capsys, caplog):
    out = tmp_path / "out"
    folder = out / "sample" / "adapter"
    assert main(["adapt", TINY, f"output.dir={out}", *FAST]) == 0
    assert json.loads((folder / "checkpoints" / "latest.json").read_text())["step"] == 3  # the final step
    caplog.set_level(logging.INFO, logger="motia.adapt")
    rc, err = cli(capsys, "adapt", TINY, f"output.dir={out}", *FAST, "adapt.steps=13", "--resume")
    assert rc == 0, err
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming from")]
    assert len(said) == 1 and said[0].startswith("resuming from step 3 of 13"), said
    steps = [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 14))  # the log goes on at step 4
    assert json.loads((folder / "adapt_summary.json").read_text())["steps_run"] == 10
    assert read_lora_metadata(folder / "adapter.safetensors")["steps"] == 13

    rc, err = cli(capsys, "adapt", TINY, f"output.dir={out}", *FAST, "adapt.steps=5", "--resume")
    assert rc == 2 and "beyond adapt.steps=5" in err[-1]


def _with_metadata(src: Path, dst: Path, **changes) -> Path:
    """A copy of the adapter ``src`` whose motia metadata has ``changes``."""
    import safetensors
    import safetensors.torch

    with safetensors.safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = safetensors.torch.load_file(str(src))
    for key, value in changes.items():
        old = json.loads(meta[f"motia.{key}"])
        meta[f"motia.{key}"] = json.dumps({**old, **value} if isinstance(old, dict) else value)
    safetensors.torch.save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize("key", ["base", "motion_adapter"])
def test_adapter_of_another_base_or_motion_module_is_refused(adapted, tmp_path, capsys, key):
    other = _with_metadata(adapted, tmp_path / "other.safetensors", base_models={key: "someone/another-model"})
    rc, err = cli(capsys, "outpaint", TINY, f"output.dir={tmp_path / 'out'}", *FAST, "--lora", other)
    assert rc == 2 and len(err) == 1 and f"models.{key}=someone/another-model" in err[0], err
    assert not (tmp_path / "out").exists()


def test_adapter_of_another_frame_size_warns_naming_the_key(adapted, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="motia.outpaint")
    assert main(["outpaint", TINY, f"output.dir={tmp_path}", *FAST, "video.size=48", "--lora", str(adapted)]) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "motia.outpaint" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "video.size (adapted on 96x64 frames, here 72x48" in warned[0], warned
    assert "\n" not in warned[0] and "prompt" not in warned[0]


def test_adapter_fit_rules():
    from motia.outpaint import check_adapter_fits
    from motia.config import load_config

    cfg = load_config(TINY)
    clip = SimpleNamespace(height=64, width=96)
    meta = {"base_models": {"base": "tiny:sd", "controlnet": "tiny:controlnet", "motion_adapter": "tiny:motion_adapter"},
            "source": {"size": [64, 96]}, "prompt": cfg.prompt}  # fmt: skip
    log = logging.getLogger("motia.outpaint")
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    log.addHandler(handler)
    try:
        check_adapter_fits(meta, cfg, clip, "a.safetensors")  # the run it was made for: silent
        assert warnings == []
        # A hub id there, a local folder here: maybe the same weights; say so, do not refuse.
        folder = {**meta, "base_models": {**meta["base_models"], "base": "stable-diffusion-v1-5/stable-diffusion-v1-5"}}
        here = cfg.model_copy(update={"models": cfg.models.model_copy(update={"base": str(REPO)})})
        check_adapter_fits(folder, here, clip, "a.safetensors")
        assert len(warnings) == 1 and "models.base" in warnings[0]
        warnings.clear()
        # Another prompt and a separate VAE: one line naming both.
        other = cfg.model_copy(update={"prompt": "a city", "models": cfg.models.model_copy(update={"vae": "x/vae"})})
        check_adapter_fits(meta, other, clip, "a.safetensors")
        assert len(warnings) == 1 and "prompt (" in warnings[0] and "models.vae (" in warnings[0]
        warnings.clear()
        # Keys the file does not record are not compared.
        check_adapter_fits({"base_models": {}}, other, SimpleNamespace(height=8, width=8), "a.safetensors")
        assert warnings == []
        with pytest.raises(InputError, match="models.base=tiny:sd"):
            check_adapter_fits(meta, cfg.model_copy(update={"models": cfg.models.model_copy(update={"base": "a/b"})}),
                               clip, "a.safetensors")  # fmt: skip
    finally:
        log.removeHandler(handler)


def test_entries_pass_overwrite_through():
    sys.path.insert(0, str(REPO))
    try:
        from infer.outpaint import parse_args as infer_args
        from infer.outpaint import to_cli as infer_cli
        from train.adapt import parse_args as train_args
        from train.adapt import to_cli as train_cli
    finally:
        sys.path.remove(str(REPO))
    argv = train_cli(train_args(["--config", TINY, "--resume", "--overwrite", "adapt.steps=9"]))
    assert argv[:3] == ["adapt", TINY, "adapt.steps=9"] and "--overwrite" in argv and "--resume" in argv
    argv = infer_cli(infer_args(["--config", TINY, "--lora", "a.safetensors", "--overwrite"]))
    assert argv[0] == "outpaint" and "--overwrite" in argv
    assert "--overwrite" not in infer_cli(infer_args(["--config", TINY]))
