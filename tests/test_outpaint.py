"""Outpainting on the tiny bundle: any clip length, exact known region, determinism, LoRA/insertion, regret, guidance, CLI."""

import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from motia.config import load_config
from motia.errors import ConfigError
from motia.video import unit_frames

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CHEAP = [  # small and fast, every piece on: 2 steps, guidance on step 0, one regret repeat, windows 16/4
    "sample.steps=2", "sample.guidance_scale=7.5", "sample.guidance_steps=1", "sample.negative_prompt=blurry",
    "sample.regret.jump=1", "sample.regret.repeats=1", "sample.regret.fraction=0.5",
    "sample.window.frames=16", "sample.window.stride=4", "video.resize=none",
    "outpaint.left=0.25", "outpaint.right=0.25",
]
CHEAP_MOVES = [2, 2, 1]  # UNet batch per move: levels 0 (guided), regret back to 0 (guided), 1 (plain)
PLAIN = ["sample.guidance_scale=1.0", "sample.regret.repeats=0"]  # where the test is about something else


def unet_batches(components, calls):
    """Forward pre-hook on the UNet appending each call's batch size (the doubled batch of a guided call is 2)."""
    return components.unet.register_forward_pre_hook(lambda m, args: calls.append(int(args[0].shape[0])))


def make_cfg(video, *overrides, tmp=None):
    extra = [f"video.path={video}"] + ([f"output.dir={tmp}"] if tmp is not None else [])
    return load_config(CONFIGS / "tiny.yaml", CHEAP + extra + list(overrides))


def synthetic_frames(num_frames, h, w):
    """(F, 3, h, w) smooth moving colour pattern in [0, 1]."""
    f = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1, 1)
    y = torch.linspace(0, 3, h).view(1, 1, -1, 1)
    x = torch.linspace(0, 4, w).view(1, 1, 1, -1)
    phase = torch.tensor([0.0, 2.0, 4.0]).view(1, 3, 1, 1)
    return 0.5 + 0.4 * torch.sin(x + 0.7 * y + 0.3 * f + phase)


# one_thread and components: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    from motia.video import write_video

    path = tmp_path_factory.mktemp("clips") / "clip100.mp4"
    return write_video(path, synthetic_frames(100, 32, 32), fps=8)


def load(cfg):
    from motia.planning import load_clip

    return load_clip(cfg)


def run(cfg, components, **kw):
    from motia.outpaint import outpaint

    return outpaint(cfg, components, load(cfg), progress=False, **kw)


@pytest.fixture(scope="module")
def baseline(clip_file, components):
    cfg = make_cfg(clip_file, "video.max_frames=7")
    return cfg, run(cfg, components)


def box(frames, canvas):
    top, left, bottom, right = canvas.box
    return frames[:, :, top:bottom, left:right]


@pytest.mark.parametrize("num_frames", [1, 7, 16, 37, 100])
def test_every_frame_is_outpainted_for_any_length(num_frames, clip_file, components):
    # About lengths and windows: plain 2-step sampling keeps 22 windows cheap (tests/test_wiring.py composes
    # windows with guidance and regret).
    cfg = make_cfg(clip_file, f"video.max_frames={num_frames}", *PLAIN)
    frames = []
    hook = components.unet.register_forward_pre_hook(lambda m, args: frames.append(int(args[0].shape[2])))
    try:
        result = run(cfg, components)
    finally:
        hook.remove()
    assert result.frames.shape == (num_frames, 3, 32, 48)
    assert torch.isfinite(result.frames).all()
    assert result.frames.min() >= 0 and result.frames.max() <= 1
    assert result.latents.shape == (1, 4, num_frames, 4, 6)
    expected_windows = {1: 1, 7: 1, 16: 1, 37: 7, 100: 22}[num_frames]
    assert frames == [min(num_frames, 16)] * 2 * expected_windows  # measured: each step calls every window once
    assert result.work["windows"] == expected_windows and result.work["unet_calls"] == len(frames)


def test_known_region_is_the_input_and_seed_decides(baseline, clip_file, components):
    cfg, first = baseline
    source = unit_frames(load(cfg).frames)
    assert torch.equal(box(first.frames, first.canvas), source)  # pasted back bit for bit
    calls = []
    hook = unet_batches(components, calls)
    try:
        again = run(cfg, components)
    finally:
        hook.remove()
    assert calls == CHEAP_MOVES  # the shared baseline runs guidance and a regret repeat
    assert torch.equal(again.frames, first.frames)
    assert torch.equal(again.latents, first.latents)
    other = run(make_cfg(clip_file, "video.max_frames=7", "seed=1"), components)
    assert (other.frames - first.frames).abs().max() > 1e-3  # the generated border depends on the seed
    assert torch.equal(box(other.frames, other.canvas), source)


def test_without_paste_the_known_latents_are_the_source_latents(baseline, clip_file, components):
    from motia.geometry import latent_known_mask
    from motia.outpaint import encode_frames

    cfg = make_cfg(clip_file, "video.max_frames=7", "output.paste=false")
    result = run(cfg, components)
    source = unit_frames(load(cfg).frames)
    mask = latent_known_mask(result.canvas).bool()  # (h, w)
    assert mask.any() and not mask.all()
    # An 8-aligned box (32x32 source at left 8 of 48): its cells are encode(source) alone, exactly,
    # not the source pasted on a filler canvas (the VAE would leak the fill into them).
    top, left, bottom, right = (v // 8 for v in result.canvas.box)
    assert mask[top:bottom, left:right].all() and mask.sum() == (bottom - top) * (right - left)
    expected = encode_frames(components.vae, source, cfg.sample.decode_chunk).permute(1, 0, 2, 3)  # (4, F, 4, 4)
    assert torch.equal(result.latents[0][:, :, top:bottom, left:right], expected)
    assert not torch.equal(result.latents[0][..., ~mask], torch.zeros_like(result.latents[0][..., ~mask]))
    # The VAE is lossy: without the paste the known pixels are close to, but not, the input.
    assert not torch.equal(box(result.frames, result.canvas), source)
    assert torch.equal(result.latents, baseline[1].latents)  # the paste comes after sampling


def _save_lora(unet, path, random_b):
    from motia.lora import _adapter_parameters, add_lora, remove_lora, save_lora

    add_lora(unet, "temporal", rank=4, alpha=4)
    if random_b:
        g = torch.Generator().manual_seed(0)
        for name, p in sorted(_adapter_parameters(unet, "motia").items()):
            if ".lora_B." in name:
                p.data = torch.randn(p.shape, generator=g) * 0.5
    path = save_lora(path, unet)
    remove_lora(unet)
    return path


def _assert_clean(components, processors):
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = components.unet
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    assert not getattr(unet, "peft_config", None)
    for model in (unet, components.controlnet):
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert components.unet.attn_processors == processors["unet"]
    assert components.controlnet.attn_processors == processors["controlnet"]


def test_lora_and_insertion_map(baseline, clip_file, components, tmp_path, monkeypatch):
    processors = {"unet": components.unet.attn_processors, "controlnet": components.controlnet.attn_processors}
    cfg, plain = baseline
    zero = _save_lora(components.unet, tmp_path / "zero.safetensors", random_b=False)
    lora = _save_lora(components.unet, tmp_path / "lora.safetensors", random_b=True)

    # A LoRA whose lora_B is all zero adds nothing.
    out = run(cfg, components, lora_path=zero)
    torch.testing.assert_close(out.frames, plain.frames, rtol=0, atol=1e-6)
    _assert_clean(components, processors)

    # K = 0 makes the insertion map all ones: the plain LoRA (no spatial hooks at all).
    cfg_k0 = make_cfg(clip_file, "video.max_frames=7", "sample.insertion.k=0")
    k0 = run(cfg_k0, components, lora_path=lora)
    with monkeypatch.context() as m:
        m.setattr("motia.insertion.spatial_lora_scale", lambda *a, **k: nullcontext())
        uniform = run(cfg_k0, components, lora_path=lora)
    torch.testing.assert_close(k0.frames, uniform.frames, rtol=0, atol=1e-6)
    assert (k0.frames - plain.frames).abs().max() > 1e-3  # the LoRA does act

    # K = 2 fades the LoRA into the new region: a different result; window attention on too,
    # and afterwards nothing of either is left on the shared models.
    cfg_k2 = make_cfg(clip_file, "video.max_frames=7", "sample.window_attention.enabled=true")
    during = []

    def look(module, args):
        from peft.tuners.lora import LoraLayer

        top = module.attn_processors["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"]
        during.append((type(top).__name__, sum(isinstance(m, LoraLayer) for m in module.modules())))

    hook = components.unet.register_forward_pre_hook(look)
    try:
        k2 = run(cfg_k2, components, lora_path=lora)
    finally:
        hook.remove()
    assert during and all(name == "WindowAttnProcessor" and layers > 0 for name, layers in during)
    assert (k2.frames - k0.frames).abs().max() > 1e-3
    _assert_clean(components, processors)


def test_noise_regret_off_is_the_plain_loop(baseline, clip_file, components):
    calls = []
    hook = unet_batches(components, calls)
    try:
        off = run(make_cfg(clip_file, "video.max_frames=7", "sample.regret.repeats=0"), components)
    finally:
        hook.remove()
    assert calls == [2, 1]  # M = 0: one call per step, as the plain loop (guided on step 0)
    assert (baseline[1].frames - off.frames).abs().max() > 1e-4  # the baseline's regret repeat changes the result


def test_callback_observes_every_denoising_move(baseline, clip_file, components):
    seen = []
    regret = ["video.max_frames=7", "sample.regret.jump=1", "sample.regret.fraction=1.0", "sample.regret.repeats=1"]
    result = run(make_cfg(clip_file, *regret), components, callback=seen.append)
    assert seen == [{"step": i, "total": 3} for i in (1, 2, 3)] and result.work["model_moves"] == 3
    seen.clear()
    assert torch.equal(run(baseline[0], components, callback=seen.append).frames, baseline[1].frames)  # it only observes
    moves = baseline[1].work["model_moves"]
    assert seen == [{"step": i, "total": moves} for i in range(1, moves + 1)]


def test_window_longer_than_the_motion_module_is_rejected(clip_file, components):
    cfg = make_cfg(clip_file, "sample.window.frames=33", "sample.window.stride=4")
    with pytest.raises(ConfigError, match=r"sample\.window\.frames"):
        run(cfg, components)


def test_odd_source_end_to_end_with_audio(tmp_path):
    from motia.job import ModelCache
    from motia.outpaint import outpaint_from_config
    from motia.video import probe_video, read_video

    # The bundled clip (96x64, audio) resized to a 37-pixel short side: 37x56, written at that scale.
    cfg = load_config(CONFIGS / "tiny.yaml", CHEAP + [
        "video.path=sample:clip", "video.resize=short_side", "video.size=37", "video.start=3",
        "video.max_frames=5", f"output.dir={tmp_path}", "output.name=odd", "output.gif=true", "output.frames=true",
        "output.resolution=model",
    ])
    models = ModelCache()
    calls = []
    hook = unet_batches(models.get(cfg.models), calls)
    try:
        summary = outpaint_from_config(cfg, models=models)
    finally:
        hook.remove()
    run_dir = tmp_path / "odd"
    out = summary["outputs"]
    assert set(out) == {"mp4", "gif", "frames", "side_by_side", "config", "summary"}
    assert all(Path(p).exists() for p in out.values())
    info = probe_video(out["mp4"])
    canvas = summary["canvas"]
    assert (canvas["src_h"], canvas["src_w"]) == (37, 56) and (canvas["height"], canvas["width"]) == (40, 88)
    assert (info.num_frames, info.height, info.width) == (5, 40, 88)
    assert info.has_audio
    assert read_video(out["frames"]).num_frames == 5
    assert probe_video(out["side_by_side"]).num_frames == 5
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["frames"] == 5 and saved["unet_calls"] == len(calls) == len(CHEAP_MOVES) and saved["lora"] is None
    assert load_config(run_dir / "config.yaml").video.max_frames == 5
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_missing_video_exits_2_and_writes_nothing(tmp_path, capsys):
    from motia.cli import main

    code = main(["outpaint", str(CONFIGS / "tiny.yaml"), f"video.path={tmp_path / 'nope.mp4'}",
                 f"output.dir={tmp_path / 'out'}"])
    assert code == 2
    assert "nope.mp4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rau_and_channels_last_run_deterministic_and_leave_nothing(baseline, clip_file, components):
    processors = {"unet": components.unet.attn_processors, "controlnet": components.controlnet.attn_processors}
    cfg = make_cfg(clip_file, "video.max_frames=7", "sample.rau.enabled=true", "sample.rau.fraction=0.5",
                   "sample.channels_last=true", "sample.window_attention.enabled=true")
    grids = []
    hook = components.unet.down_blocks[1].register_forward_pre_hook(
        lambda m, args, kwargs: grids.append(tuple((args[0] if args else kwargs["hidden_states"]).shape[-2:])),
        with_kwargs=True,
    )
    try:
        first = run(cfg, components)
    finally:
        hook.remove()
    assert grids == [(1, 2), (1, 2), (2, 3)]  # latent 4x6: half resolution on step 0 of 2 (and its regret repeat)
    assert torch.isfinite(first.frames).all()
    assert (first.frames - baseline[1].frames).abs().max() > 1e-4
    assert torch.equal(run(cfg, components).frames, first.frames)
    _assert_clean(components, processors)
    assert all(not m._forward_hooks for m in components.unet.modules())
    assert all(p.is_contiguous() for p in components.unet.parameters())
    assert torch.equal(run(baseline[0], components).frames, baseline[1].frames)


@pytest.mark.slow
def test_compiled_unet_matches_eager_and_is_undone(clip_file, components):
    # Plain sampling: inductor's fused kernels differ from eager by ~1e-6 per call, and on the random
    # tiny weights guidance 7.5 with a guided regret repeat (the shared baseline) amplifies that to
    # 0.06 in the frames (measured; 6e-4 without the repeat, 3e-5 plain), which says nothing of compile.
    cfg = make_cfg(clip_file, "video.max_frames=7", *PLAIN)
    eager = run(cfg, components)
    out = run(cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"compile": True})}), components)
    torch.testing.assert_close(out.frames, eager.frames, atol=1e-4, rtol=0)
    assert "forward" not in components.unet.__dict__  # the eager forward is back
    assert torch.equal(run(cfg, components).frames, eager.frames)


def test_run_loads_the_models_once_and_matches_separate_stages(clip_file, tmp_path):
    import safetensors.torch

    from motia.adapt import adapt_from_config
    from motia.job import ModelCache, adapt_and_outpaint
    from motia.outpaint import outpaint_from_config
    from motia.video import read_video

    common = [f"video.path={clip_file}", "video.max_frames=7", "adapt.steps=4", "adapt.frames=4",
              "output.side_by_side=false", "output.mp4=false", "output.frames=true"]

    def cfg(name):
        return load_config(CONFIGS / "tiny.yaml", CHEAP + common + [f"output.dir={tmp_path / name}"])

    models = ModelCache()
    shared = adapt_and_outpaint(cfg("shared"), models)  # adapt, release, outpaint on one loaded set
    assert models.loads == 1 and shared["models_reused"] is True
    assert shared["processes"] == {"num_processes": 1, "calls_per_process": [shared["unet_calls"]]}
    separate = cfg("separate")
    outpaint_from_config(separate, lora=str(adapt_from_config(separate, progress=False)), progress=False)
    a = safetensors.torch.load_file(tmp_path / "shared/clip100/adapter/adapter.safetensors")
    b = safetensors.torch.load_file(tmp_path / "separate/clip100/adapter/adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    frames = read_video(shared["outputs"]["frames"]).frames
    assert frames.shape[0] == 7
    assert torch.equal(frames, read_video(tmp_path / "separate/clip100/frames").frames)
    unet = models.get(cfg("x").models).unet
    assert not getattr(unet, "peft_config", None) and not unet.is_gradient_checkpointing and not unet.training


def test_progress_bar_counts_steps_with_windows_and_calls_in_the_postfix(clip_file, components, monkeypatch):
    from tqdm.auto import tqdm

    import motia.outpaint as O

    shown = []

    class Recording(tqdm):  # the real bar, remembering what it showed last
        def close(self):
            if not self.disable:
                shown.append((self.desc, self.total, self.n, self.unit, self.postfix))
            super().close()

    monkeypatch.setattr(O, "tqdm", Recording)
    # 20 frames in windows of 16 / stride 4: 2 windows; 4 steps, regret re-runs levels 1-2 once.
    cfg = make_cfg(clip_file, "video.max_frames=20", "sample.steps=4", "sample.regret.jump=2",
                   "sample.regret.repeats=1", "sample.regret.fraction=0.5")  # fmt: skip
    result = O.outpaint(cfg, components, load(cfg), progress=True)
    assert result.work["model_moves"] == 6 and result.work["unet_calls"] == 12
    assert shown == [("outpaint (4 steps + 2 regret)", 6, 6, "step", "window 2/2, model calls 12/12")]
