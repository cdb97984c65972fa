"""Adaptation on the tiny bundle: the loss falls, only the LoRA trains, the adapter reloads, resume is exact."""

import collections
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from motia import adapt as A
from motia.cli import main
from motia.config import load_config
from motia.errors import ConfigError
from motia.lora import load_lora, read_lora_metadata
from motia.planning import load_clip
from motia.video import write_video

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """12 frames of 48x64: drifting sine stripes and a square moving right."""
    n, h, w = 12, 48, 64
    t = torch.arange(n).float()[:, None, None]
    y, x = torch.arange(h).float()[None, :, None], torch.arange(w).float()[None, None, :]
    r = 0.5 + 0.4 * torch.sin((x - 3 * t) / 6)
    g = 0.5 + 0.4 * torch.cos((y + 2 * t) / 5)
    square = ((x - 4 - 3 * t).abs() < 8) & ((y - 24).abs() < 8)
    b = torch.where(square, 0.9, 0.2)
    frames = torch.stack([r.expand(n, h, w), g.expand(n, h, w), b.expand(n, h, w)], 1)  # (F, 3, H, W)
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=8)


def job(clip_path, out, *overrides):
    return load_config(TINY, [f"video.path={clip_path}", "video.resize=none", "adapt.frames=8",
                              f"output.dir={out}", *overrides])


@pytest.fixture(scope="module")
def pristine():
    from motia.models import load_components

    return load_components(load_config(TINY).models)


def fresh(components):
    """The bundle with its own UNet (adapt attaches the LoRA there; the other modules are only read)."""
    return dataclasses.replace(components, unet=copy.deepcopy(components.unet))


def run(cfg, components, out_dir, **kw):
    return A.adapt(cfg, components, load_clip(cfg), out_dir, progress=False, **kw)


def base_state(module):
    """State dict without LoRA tensors and with peft's ``.base_layer`` renaming undone."""
    sd = module.state_dict()
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in sd.items() if "lora_" not in k}


def read_adapter(path):
    import safetensors.torch

    return safetensors.torch.load_file(str(path))


@pytest.fixture(scope="module")
def trained(clip_path, pristine, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    # 2e-3: the reference's LoRA (no ff.net.0.proj) has fewer weights; 30 steps must show the loss falling.
    cfg = job(clip_path, out, "adapt.steps=30", "adapt.lr=2.0e-3", "adapt.checkpoint_every=1000", "adapt.log_every=10")
    comps = fresh(pristine)
    before = {name: base_state(getattr(comps, name)) for name in ("unet", "controlnet", "vae", "text_encoder")}
    losses = []
    path = run(cfg, comps, out / "adapter", callback=lambda d: losses.append(d["loss"]))
    return {"cfg": cfg, "comps": comps, "before": before, "losses": losses, "path": path, "out": out / "adapter"}


def test_loss_falls(trained):
    losses = trained["losses"]
    assert len(losses) == 30
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    assert last < first - 0.1, (first, last)


def test_only_lora_changes(trained):
    comps = trained["comps"]
    for name, before in trained["before"].items():
        after = base_state(getattr(comps, name))
        assert after.keys() == before.keys(), name
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert not changed, f"{name}: {changed[:3]}"
    lora_b = [p for n, p in comps.unet.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # peft initialises B to zero: it trained
    frozen = ("controlnet", "vae", "text_encoder")
    assert all(not p.requires_grad for m in frozen for p in getattr(comps, m).parameters())


def test_outputs_and_metadata(trained):
    out, cfg = trained["out"], trained["cfg"]
    assert trained["path"] == out / "adapter.safetensors"
    meta = read_lora_metadata(trained["path"])
    assert meta["rank"] == meta["alpha"] == cfg.adapt.lora.rank and meta["trained_alpha"] == cfg.adapt.lora.alpha
    assert meta["init_lora"] is None  # a fresh init
    assert meta["targets"] and all("motion_modules" in t for t in meta["targets"])
    assert meta["base_models"]["base"] and meta["base_models"]["motion_adapter"]
    assert meta["source"]["frame_indices"] == list(range(12)) and meta["source"]["path"].endswith("clip.mp4")
    assert meta["adapt"]["steps"] == 30 and meta["seed"] == cfg.seed and meta["prompt"] == cfg.prompt
    assert load_config(out / "config.yaml").to_dict() == cfg.to_dict()
    summary = json.loads((out / "adapt_summary.json").read_text())
    assert summary["steps_run"] == 30 and summary["peak_memory_bytes"] > 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [10, 20, 30]
    assert log[0]["loss"] == pytest.approx(statistics.mean(trained["losses"][:10]))
    cache = torch.load(out / "latents.pt", weights_only=True)
    assert cache["latents"].shape == (12, 4, 6, 8)
    # checkpoint_every > steps: only the final step is checkpointed (so --resume can extend the run)
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 30
    assert [p.name for p in (out / "checkpoints").iterdir() if p.is_dir()] == ["step_000030"]


def test_adapter_reloads_identically(trained, pristine):
    unet = fresh(pristine).unet
    load_lora(unet, trained["path"])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 6, 8, generator=g)  # (B, C, F, h, w)
    text = torch.randn(8, 77, 32, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        want = trained["comps"].unet.eval()(x, t, encoder_hidden_states=text).sample
        got = unet.eval()(x, t, encoder_hidden_states=text).sample
        base = pristine.unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - base).abs().max() > 1e-4  # the adapter does something


def test_resume_matches_uninterrupted(clip_path, pristine, tmp_path, monkeypatch):
    over = ("adapt.steps=4", "adapt.checkpoint_every=2", "adapt.keep_checkpoints=1", "adapt.log_every=1",
            "adapt.gradient_checkpointing=true", "adapt.lr_scheduler=cosine", "adapt.warmup_steps=1")
    ref = run(job(clip_path, tmp_path, *over), fresh(pristine), tmp_path / "ref")

    def stop_at_3(d):
        if d["step"] == 3:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    cfg = job(clip_path, tmp_path, *over)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, fresh(pristine), out, callback=stop_at_3)
    assert not (out / "adapter.safetensors").exists()
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    folder = out / "checkpoints" / latest["path"]
    assert json.loads((folder / "state.json").read_text())["step"] == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == [folder.name]  # rotated
    assert not any("model" in p.name for p in folder.iterdir())  # the frozen base is not in checkpoints

    def no_encode(*a, **k):
        raise AssertionError("resume re-encoded the clip")

    monkeypatch.setattr(A, "encode_frames", no_encode)  # the latent cache must be used
    path = run(cfg, fresh(pristine), out, resume=True)
    want, got = read_adapter(ref), read_adapter(path)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    assert json.loads((out / "adapt_summary.json").read_text())["steps_run"] == 1
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    changed = job(clip_path, tmp_path, *over, "adapt.lr=5.0e-4")  # a different recipe cannot continue this run
    with pytest.raises(ConfigError, match="adapt.lr"):
        run(changed, fresh(pristine), out, resume=True)


def test_clip_shorter_than_window(clip_path, pristine, tmp_path):
    cfg = job(clip_path, tmp_path, "video.max_frames=5", "adapt.frames=16", "adapt.steps=2")
    path = run(cfg, fresh(pristine), tmp_path / "a")
    meta = read_lora_metadata(path)
    assert meta["source"]["frame_indices"] == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "a" / "adapt_summary.json").read_text())["frames"] == [5, 48, 64]


def test_training_batch_shapes_and_determinism():
    lat, frames = torch.randn(10, 4, 6, 8), torch.rand(10, 3, 48, 64)
    kw = dict(window=4, batch_size=2, mask_ranges={s: (0.1, 0.4) for s in ("left", "right", "top", "bottom")},
              num_train_timesteps=1000)
    b1 = A.training_batch(lat, frames, generator=torch.Generator().manual_seed(0), **kw)
    b2 = A.training_batch(lat, frames, generator=torch.Generator().manual_seed(0), **kw)
    assert b1["latents"].shape == b1["noise"].shape == (2, 4, 4, 6, 8)
    assert b1["control"].shape == (8, 3, 48, 64) and b1["t"].shape == (2,)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    ctl = b1["control"][:4]  # first sample's frames
    known = b1["known"][0].bool()
    assert (ctl[:, :, ~known] == -1).all() and (ctl[:, :, known] >= 0).all()
    assert 0 < known.float().mean() < 1  # border of at least 10% per side
    assert A.sample_window(3, 8, torch.Generator()) == (0, 3)


def _cli(capsys, *argv):
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["video.path={missing}"], "does not exist"),
        (["video.path={clip}", "video.start=100"], "no frames selected"),
        (["video.path={clip}", "adapt.stepz=3"], "did you mean 'adapt.steps'"),
        (["video.path={clip}", "adapt.lora.targets=[nomatch]"], "adapt.lora.targets"),
    ],
    ids=["missing-video", "zero-frames", "bad-config", "bad-lora-target"],
)
def test_bad_input_is_one_line_and_writes_nothing(clip_path, tmp_path, capsys, overrides, needle):
    out = tmp_path / "out"
    fmt = {"missing": tmp_path / "nope.mp4", "clip": clip_path}
    rc, err = _cli(capsys, "adapt", str(TINY), f"output.dir={out}", *[o.format(**fmt) for o in overrides])
    assert rc == 2
    errors = [line for line in err if line.startswith("error")]  # model loading may draw progress bars first
    assert len(errors) == 1 and err[-1] == errors[0] and needle in errors[0], err
    assert not any("Traceback" in line for line in err)
    assert not out.exists()


def test_train_entry_in_process(clip_path, tmp_path, monkeypatch, capsys):
    """train/adapt.py run as ``accelerate launch`` runs it (as __main__, with its argv), in this process.

    It covers the entry's path (arguments, `motia adapt`, the Accelerator from the config, training,
    the exit codes); the real launcher subprocess is ``test_accelerate_launch`` under ``slow``.
    """
    import runpy

    entry = str(REPO / "train" / "adapt.py")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the entry puts the checkout on sys.path
    out = tmp_path / "entry"
    monkeypatch.setattr(sys, "argv", [entry, "--config", str(TINY), f"video.path={clip_path}", "video.resize=none",
                                      "adapt.steps=2", "adapt.frames=4", f"output.dir={out}"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(entry, run_name="__main__")
    assert done.value.code == 0
    assert read_lora_metadata(out / "clip" / "adapter" / "adapter.safetensors")["steps"] == 2
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [entry, "--config", str(tmp_path / "none.yaml")])
    with pytest.raises(SystemExit) as bad:
        runpy.run_path(entry, run_name="__main__")
    err = capsys.readouterr().err.strip()
    assert bad.value.code == 2 and err.startswith("error: ") and "none.yaml" in err and "\n" not in err


@pytest.mark.slow  # ~20 s of subprocess start-up; test_train_entry_in_process covers the same path in-process
def test_accelerate_launch(clip_path, tmp_path):
    """The launcher's own --mixed_precision is what `adapt.mixed_precision: auto` (tiny.yaml) trains with."""
    out = tmp_path / "launch"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate.yaml"),
         "--cpu", "--num_processes", "1", "--mixed_precision", "bf16",
         str(REPO / "train" / "adapt.py"), "--config", str(TINY), f"video.path={clip_path}", "video.resize=none",
         "adapt.steps=2", "adapt.frames=4", f"output.dir={out}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_lora_metadata(out / "clip" / "adapter" / "adapter.safetensors")["steps"] == 2
    summary = json.loads((out / "clip" / "adapter" / A.SUMMARY_FILE).read_text())
    assert summary["mixed_precision"] == "bf16"
    # Quiet: no launcher defaults block (motia's accelerate config sets them), no library notices.
    for noise in ("had defaults used instead", "torchvision", "[transformers]", "Warning"):
        assert noise not in proc.stderr, proc.stderr[-2000:]
    bad = subprocess.run([sys.executable, str(REPO / "train" / "adapt.py"), "--config", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and "none.yaml" in bad.stderr


def test_mixed_precision_choice():
    assert A.resolve_mixed_precision("auto", "cpu") == "no"
    assert A.resolve_mixed_precision("auto", "cuda", "auto") == "fp16"
    assert A.resolve_mixed_precision("auto", "cuda", "bf16") == "bf16"
    assert A.resolve_mixed_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="adapt.mixed_precision"):
        A.resolve_mixed_precision("fp16", "cpu")
    # Under `accelerate launch --mixed_precision X`: auto follows X; the launcher's "no" is also its default.
    assert A.resolve_mixed_precision("auto", "cpu", launcher="bf16") == "bf16"
    assert A.resolve_mixed_precision("auto", "cuda", launcher="bf16") == "bf16"
    assert A.resolve_mixed_precision("auto", "cuda", launcher="no") == "fp16"
    assert A.resolve_mixed_precision("no", "cuda", launcher="fp16") == "no"  # explicit wins (make_accelerator warns)
    with pytest.raises(ConfigError, match="accelerate launch --mixed_precision fp16 needs a CUDA device"):
        A.resolve_mixed_precision("auto", "cpu", launcher="fp16")
    with pytest.raises(ConfigError, match="--mixed_precision fp8 is not supported"):
        A.resolve_mixed_precision("auto", "cuda", launcher="fp8")


def test_explicit_mixed_precision_against_the_launcher_warns_once(monkeypatch, caplog):
    cfg = load_config(TINY, ["adapt.mixed_precision=no"])
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with caplog.at_level("WARNING", logger="motia.adapt"):
        acc = A.make_accelerator(cfg)
    assert acc.mixed_precision == "no" and acc.split_batches
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["adapt.mixed_precision=no overrides accelerate launch --mixed_precision bf16; "
                     "set adapt.mixed_precision=auto to follow the launcher"]
    caplog.clear()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the launcher's default: nothing to say
    with caplog.at_level("WARNING", logger="motia.adapt"):
        A.make_accelerator(cfg)
    assert not caplog.records


def test_one_accelerator_serves_runs_one_after_another(clip_path, pristine, tmp_path):
    """What a run puts on the accelerator is taken off again: a second run on the same accelerator and the same
    UNet object (as a ModelCache hands it on) trains exactly what a fresh run does; a solo run too."""
    cfg = job(clip_path, tmp_path, "adapt.steps=2", "adapt.checkpoint_every=1", "adapt.frames=4")
    acc = A.make_accelerator(cfg)
    comps = fresh(pristine)
    paths = [run(cfg, comps, tmp_path / "first", accelerator=acc)]
    A.release(comps)
    paths.append(run(cfg, comps, tmp_path / "second", accelerator=acc))
    A.release(comps)
    paths.append(run(cfg, comps, tmp_path / "solo", accelerator=acc, solo=True))
    A.release(comps)
    paths.append(run(cfg, fresh(pristine), tmp_path / "fresh"))
    first = read_adapter(paths[0])
    for p in paths[1:]:
        other = read_adapter(p)
        assert other.keys() == first.keys() and all(torch.equal(other[k], first[k]) for k in first), p
    assert (tmp_path / "second" / A.CHECKPOINTS / A.LATEST).is_file()
    assert not (tmp_path / "solo" / A.CHECKPOINTS).exists()  # a solo run writes no checkpoints
    # Nothing left on the accelerator or the UNet (accelerate's own bookkeeping, read here only to check).
    assert not getattr(acc, "_save_model_state_pre_hook", {}) and not getattr(acc, "_load_model_state_pre_hook", {})
    assert not getattr(acc, "_models", []) and not getattr(acc, "_optimizers", [])
    assert not getattr(comps.unet, "_is_accelerate_prepared", False)
    with pytest.raises(ValueError, match="cannot resume"):
        run(cfg, comps, tmp_path / "solo", accelerator=acc, solo=True, resume=True)


def test_8bit_adam_without_bitsandbytes(clip_path, pristine, tmp_path):
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    cfg = job(clip_path, tmp_path, "adapt.use_8bit_adam=true", "adapt.steps=1")
    with pytest.raises(ConfigError, match="bitsandbytes"):
        run(cfg, fresh(pristine), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_generator_states_are_saved_per_process(tmp_path):
    from motia.adapt import TrainRNG

    rng = TrainRNG(5)
    rng.generator.manual_seed(5)
    torch.rand(3, generator=rng.generator)
    rng.save_all(tmp_path)  # one process: a list of one state
    expected = torch.rand(3, generator=rng.generator)
    fresh = TrainRNG(0)
    fresh.load_own(tmp_path, process_index=0, num_processes=1)
    assert torch.equal(torch.rand(3, generator=fresh.generator), expected)
    with pytest.raises(ConfigError, match="--num_processes 1"):
        TrainRNG(0).load_own(tmp_path, process_index=1, num_processes=2)


def test_borrowed_accelerator_gets_its_scaler_state_back():
    """fp16 training moves the grad scaler's scale; the next run on the same accelerator must start from the
    state the first one found (CPU GradScaler here: a CPU-only machine cannot make an fp16 Accelerator)."""

    class Lent:  # the parts of an Accelerator that _borrowed touches
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        freed = 0

        def free_memory(self):
            self.freed += 1

    acc = Lent()
    table = collections.OrderedDict()  # what accelerate keeps its hooks in (a plain dict is not weak-referenceable)
    with pytest.raises(KeyboardInterrupt):
        with A._borrowed(acc) as hooks:
            from torch.utils.hooks import RemovableHandle

            handle = RemovableHandle(table)
            table[handle.id] = print
            hooks.append(handle)
            acc.scaler.scale(torch.ones(1))  # initialises the scale
            acc.scaler.update(8.0)
            assert acc.scaler.get_scale() == 8.0
            raise KeyboardInterrupt
    assert acc.scaler.get_scale() == 1024.0 and acc.freed == 1 and table == {}


def test_release_casts_only_when_needed(pristine, monkeypatch):
    """Handing the models back after adaptation must not cast an fp32 UNet to fp32 (diffusers warns on every cast)."""
    from motia import lora

    comps = fresh(pristine)
    lora.add_lora(comps.unet, "temporal", 4, 4.0)
    monkeypatch.setattr(comps.unet, "to", lambda *a, **k: pytest.fail(f"unet.to{a}{k} for a UNet already in fp32"))
    A.release(comps)
    assert not any("lora_" in n for n, _ in comps.unet.named_parameters())
    monkeypatch.undo()
    comps.unet.to(torch.float64)  # another dtype: cast back
    A.release(comps)
    assert next(comps.unet.parameters()).dtype == torch.float32
