"""Coarse-to-fine outpainting (tiny bundle): the refine stage at the output's scale, in spatial tiles.

Each box of a tiled stage must see its own crop of the control frames, of the LoRA's
insertion map and of the latents its window attention partitions; the written frames
keep the source's own pixels; strength 0 is the coarse result upsampled, bit for bit.
"""

import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch

from motia.config import load_config
from written import png_frames, portrait, source_frames

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CHEAP = ["outpaint.refine.mode=auto", "sample.steps=2", "sample.guidance_scale=1.0", "sample.regret.repeats=0", "outpaint.left=0",
         "outpaint.right=0", "outpaint.propagate=off", "outpaint.refine.coarse_size=64", "outpaint.refine.steps=4",
         "outpaint.refine.strength=0.5", "sample.tiles.size=256", "sample.tiles.overlap=64"]


def write_clip(path, num_frames, h, w):
    from motia.video import write_video

    return write_video(path, portrait(num_frames, h, w), fps=8)


def make_cfg(video, *overrides):
    return load_config(CONFIGS / "tiny.yaml", CHEAP + [f"video.path={video}", *overrides])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 96x160 (W x H) portrait clip of 3 frames: 16:9 writes 284x160, refined at 288x160 (2.5x the coarse)."""
    return write_clip(tmp_path_factory.mktemp("refine") / "small.mp4", 3, 160, 96)


@pytest.mark.slow
def test_a_720p_portrait_to_16_9_is_refined_at_the_output_scale_in_flat_memory(tmp_path):
    """Written at 2276x1280; the refine stage's UNet calls run on latents at that scale; the source kept exactly;
    peak memory (VmHWM of a fresh process each) within 1.2x of the same clip asked for 4:3 (1712x1280).

    Slow (minutes): the tiny models are cheap only at their own 64 px scale; at 128 px tiles a
    2280x1280 canvas is ~300 model calls a step. tests below check the same paths on a small clip.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from bench_refine import make_clip, run_case

    clip = tmp_path / "phone.mp4"
    make_clip(clip, 2, 1280, 720)
    extra = ["sample.tiles.size=128", "sample.tiles.overlap=32", "output.frames=true"]
    wide = run_case(clip, tmp_path / "wide", "16:9", 2, 1, extra)
    narrow = run_case(clip, tmp_path / "narrow", "4:3", 2, 1, extra)
    refine = wide["stages"]["refine"]
    assert refine["canvas"] == "2280x1280 (W x H)" and refine["latent"] == "4x2x160x285 (C x F x H x W)"
    assert refine["tiles"] > 1 and refine["unet_calls"] > 0
    assert (wide["output"]["width"], wide["output"]["height"]) == (2276, 1280)
    frames = png_frames(tmp_path / "wide" / "phone" / "frames")
    assert frames.shape == (2, 1280, 2276, 3)
    top, left, bottom, right = wide["output"]["box"]
    assert np.array_equal(frames[:, top:bottom, left:right], source_frames(clip, 2))
    assert narrow["stages"]["refine"]["canvas"] == "1712x1280 (W x H)"
    assert wide["peak_rss"] <= 1.2 * narrow["peak_rss"], (wide["peak_rss"], narrow["peak_rss"])


def _cache(components, cfg):
    """A ModelCache holding the module's tiny components for this config's models (no second load)."""
    from motia.job import ModelCache

    cache = ModelCache()
    real_get = cache.get

    def get(models, device=None, progress=False):
        if models == cfg.models:
            return components
        return real_get(models, device, progress)

    cache.get = get
    return cache


def test_strength_zero_writes_the_coarse_result_upsampled_and_pasted_bit_for_bit(small, tmp_path, components):
    from motia.geometry import paste_known, resample_canvas
    from motia.outpaint import outpaint, outpaint_from_config
    from motia.planning import load_clip, native_size, plan_output
    from motia.video import to_uint8

    cfg = make_cfg(small, "outpaint.aspect=16:9", f"output.dir={tmp_path}", "output.frames=true",
                   "outpaint.refine.mode=on", "outpaint.refine.strength=0", "output.feather=0")
    summary = outpaint_from_config(cfg, progress=False, models=_cache(components, cfg))
    assert "refine" not in summary["stages"]
    written = png_frames(Path(summary["outputs"]["frames"]))
    # By hand: the coarse stage's frames, redrawn on the output canvas, the native source pasted.
    clip = load_clip(cfg)
    result = outpaint(cfg, components, clip, progress=False, paste=False)
    out = plan_output(cfg, result.canvas, *native_size(clip))
    native = torch.from_numpy(source_frames(small, clip.num_frames)).permute(0, 3, 1, 2).float() / 255
    expected = to_uint8(paste_known(resample_canvas(result.frames, result.canvas, out), native, out, 0))
    assert np.array_equal(written, expected)
    assert result.canvas.height == 64  # the coarse canvas's short side is refine.coarse_size


def test_refine_on_writes_the_source_pixels_and_differs_from_the_coarse_upsampling(small, tmp_path, components):
    from motia.outpaint import outpaint_from_config

    runs = {}
    for strength in (0.0, 0.5):
        cfg = make_cfg(small, "outpaint.aspect=16:9", f"output.dir={tmp_path / str(strength)}",
                       "output.frames=true", f"outpaint.refine.strength={strength}")
        runs[strength] = outpaint_from_config(cfg, progress=False, models=_cache(components, cfg))
    refined = runs[0.5]
    assert refined["stages"]["refine"]["canvas"] == "288x160 (W x H)"  # auto: 160 / 64 = 2.5 > 1.5
    frames = png_frames(Path(refined["outputs"]["frames"]))
    top, left, bottom, right = refined["output_canvas"]["box"]
    assert np.array_equal(frames[:, top:bottom, left:right], source_frames(small, 3))
    coarse = png_frames(Path(runs[0.0]["outputs"]["frames"]))
    new = np.ones(frames.shape[1:3], bool)
    new[top:bottom, left:right] = False
    assert np.abs(frames[:, new].astype(int) - coarse[:, new]).mean() > 1  # the refine changed the new regions
    saved = json.loads(Path(refined["outputs"]["summary"]).read_text())
    assert saved["stages"]["refine"]["unet_calls"] == refined["stages"]["refine"]["unet_calls"] > 0
    assert saved["stages"]["coarse"]["seconds"] >= 0 and saved["stages"]["refine"]["seconds"] > 0


# ----------------------------------------------------------------------------- each box sees its own crop


def _stage(components, cfg, canvas, tiles):
    from motia.planning import StagePlan, work_estimate
    from motia.windows import temporal_windows

    windows = temporal_windows(4, 4, 4)
    return StagePlan("refine", canvas, windows, tiles, 0, 2, work_estimate(cfg, 4, canvas, tiles=tiles))


def _known(canvas, frames=4):
    from motia.known import KnownFrames

    src = portrait(frames, canvas.src_h, canvas.src_w)
    return KnownFrames.at_model_scale(canvas, src)


def _run_stage(components, cfg, stage, known, lora=None):
    from motia.outpaint import sample_stage

    g = torch.Generator().manual_seed(0)
    h, w = stage.canvas.latent_size()
    noise = torch.randn((1, 4, known.num_frames, h, w), generator=g)
    text = (torch.zeros(1, 77, components.text_encoder.config.hidden_size),) * 2
    return sample_stage(cfg, components, stage, known, text, noise, noise, generator=g, lora=lora)


@pytest.fixture(scope="module")
def tiled_setup(components):
    from motia.geometry import Canvas
    from motia.tiles import spatial_tiles

    cfg = load_config(CONFIGS / "tiny.yaml", ["sample.steps=2", "sample.guidance_scale=1.0",
                                              "sample.regret.repeats=0"])
    canvas = Canvas(src_h=32, src_w=24, height=48, width=64, top=8, left=16)
    tiles = spatial_tiles(6, 8, 4, 2)  # 4x4-cell tiles (32 px) over the 6x8 latent, overlapping by 2 cells
    return cfg, canvas, _stage(components, cfg, canvas, tiles)


def test_each_tile_gets_its_crop_of_the_control_frames(tiled_setup, components):
    """The ControlNet of the i-th call sees the control frames of the i-th box's tile, cut from the whole canvas's."""
    cfg, canvas, stage = tiled_setup
    known = _known(canvas)
    seen = []
    cn = components.controlnet
    handle = cn.register_forward_pre_hook(lambda m, a, k: seen.append(k["controlnet_cond"].clone()), with_kwargs=True)
    try:
        _run_stage(components, cfg, stage, known)
    finally:
        handle.remove()
    full = known.control(range(4))  # (4, 3, 48, 64): the whole canvas's control frames
    assert len(seen) == 2 * len(stage.tiles)  # 2 steps x every tile (none lies inside the source box)
    for i, ctl in enumerate(seen):
        top, left, bottom, right = (v * 8 for v in stage.tiles[i % len(stage.tiles)])
        assert torch.equal(ctl, full[:, :, top:bottom, left:right])  # the tile's own pixels, -1 where generated
    known.close()


def test_each_tile_gets_its_crop_of_the_insertion_map(tiled_setup, components, tmp_path):
    from motia.geometry import insertion_map
    from motia.lora import _adapter_parameters, add_lora, remove_lora, save_lora
    from motia.outpaint import _attach_lora

    cfg, canvas, stage = tiled_setup
    unet = components.unet
    add_lora(unet, "temporal", rank=4, alpha=4)
    g = torch.Generator().manual_seed(0)
    for name, p in sorted(_adapter_parameters(unet, "motia").items()):
        if ".lora_B." in name:
            p.data = torch.randn(p.shape, generator=g) * 0.5
    path = save_lora(tmp_path / "a.safetensors", unet)
    remove_lora(unet)
    known = _known(canvas)
    maps = []
    with ExitStack() as stack:
        lora = _attach_lora(cfg, components, canvas, path, stack)
        hook = unet.register_forward_pre_hook(lambda m, a, k: maps.append(lora.scale_map.clone()), with_kwargs=True)
        stack.callback(hook.remove)
        _run_stage(components, cfg, stage, known, lora=lora)
    full = insertion_map(canvas, cfg.sample.insertion.k)
    assert len(maps) == 2 * len(stage.tiles)
    for (top, left, bottom, right), m in zip(stage.tiles * 2, maps):
        assert torch.equal(m, full[top * 8 : bottom * 8, left * 8 : right * 8])
    known.close()


def test_window_attention_partitions_each_tiles_own_latent(tiled_setup, components):
    """The windows are laid over the tile's token grid (the call's latent), not the canvas's."""
    from motia.attention import WindowAttnProcessor

    cfg, canvas, stage = tiled_setup
    cfg = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={
        "window_attention": cfg.sample.window_attention.model_copy(update={"enabled": True})})})
    known = _known(canvas)
    grids = []
    real = WindowAttnProcessor.plan

    def plan(self, hw, device):
        grids.append((self.state.latent_hw, hw))
        return real(self, hw, device)

    WindowAttnProcessor.plan = plan
    try:
        _run_stage(components, cfg, stage, known)
    finally:
        WindowAttnProcessor.plan = real
    tile_hw = {(b - t, r - left) for t, left, b, r in stage.tiles}
    assert grids and {latent for latent, _ in grids} <= tile_hw
    assert all(hw[0] <= latent[0] and hw[1] <= latent[1] for latent, hw in grids)
    known.close()


def test_refine_on_as_an_override_or_a_layer_keeps_the_other_refine_keys(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["outpaint.refine=on"])
    assert (cfg.outpaint.refine.mode, cfg.outpaint.refine.coarse_size, cfg.outpaint.refine.steps) == ("on", 64, 8)
    layer = tmp_path / "mine.yaml"
    layer.write_text(f"extends: {CONFIGS / 'tiny.yaml'}\noutpaint: {{refine: on}}\n")
    cfg = load_config(layer, ["outpaint.refine.strength=0.3"])
    assert (cfg.outpaint.refine.mode, cfg.outpaint.refine.coarse_size, cfg.outpaint.refine.strength) == ("on", 64, 0.3)


@pytest.mark.parametrize("mode", ["off", "on"])
def test_a_target_size_gives_every_stage_the_same_canvas_around_the_source(mode):
    """target_size is in pixels at video.size: with refine the coarse source is smaller, the canvas shape the same."""
    from motia.planning import model_size, plan, plan_output, plan_refine

    cfg = load_config(CONFIGS / "base.yaml", ["outpaint.left=0", "outpaint.right=0", "outpaint.target_size=[720,1280]",
                                              f"outpaint.refine.mode={mode}"])
    size, _ = model_size(cfg, 512, 512)
    coarse = plan(cfg, size, size)
    out = plan_output(cfg, coarse, 512, 512)
    assert (out.height, out.width, out.top, out.left) == (720, 1280, 104, 384)
    if mode == "on":
        assert (coarse.height, coarse.width, coarse.src_h) == (512, 912, 364)
        refine = plan_refine(cfg, coarse, 512, 512)
        assert (refine.height, refine.width, refine.top, refine.left) == (720, 1280, 104, 384)
    else:
        assert (coarse.height, coarse.width) == (720, 1280)


def test_tiled_decode_blends_tiles_into_one_frame_and_leaves_small_frames_alone(components):
    from motia.vae import decode_latents, tiled

    g = torch.Generator().manual_seed(0)
    small = torch.randn(1, 4, 2, 6, 8, generator=g)
    whole = next(decode_latents(components.vae, small, 2))
    assert torch.equal(next(decode_latents(components.vae, small, 2, tile=64)), whole)  # fits one tile: untouched
    big = torch.randn(1, 4, 1, 20, 28, generator=g) * 0.5
    plain = next(decode_latents(components.vae, big, 1))
    tiles = next(decode_latents(components.vae, big, 1, tile=64))  # 8x8-cell tiles, overlapping by 2
    assert tiles.shape == plain.shape == (1, 3, 160, 224)
    with tiled(components.vae, 64):  # diffusers' own tiled decode: the same blend, every tile held at once
        theirs = next(decode_latents(components.vae, big, 1))
    assert torch.isfinite(tiles).all() and not torch.equal(tiles, plain)
    # Tiles change what the decoder's mid-block attention and norms see: no tiling is exact. Ours stays as close
    # to the whole-frame decode as diffusers' tiled decode, and close to it.
    assert (tiles - plain).abs().mean() <= (theirs - plain).abs().mean()
    assert (tiles - theirs).abs().mean() < 0.05


@pytest.mark.parametrize("override, words", [
    ("sample.tiles.size=100", "override 'sample.tiles.size=100': sample.tiles.size: must be a multiple of 8"),
    ("sample.tiles.overlap=512", "override 'sample.tiles.overlap=512': sample.tiles: sample.tiles.overlap (512)"),
    ("outpaint.refine=sometimes", "override 'outpaint.refine=sometimes': outpaint.refine.mode: Input should be"),
    ("outpaint.refine.scale=-1", "override 'outpaint.refine.scale=-1': outpaint.refine.scale: must be 'output'"),
])
def test_bad_tiles_and_refine_keys_are_one_line_naming_the_override(override, words):
    from motia.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", [override])
    assert str(err.value).startswith(words) and "\n" not in str(err.value)


def test_auto_refines_large_outputs_only_and_never_an_output_at_the_models_scale():
    from motia.planning import refines

    base = ["outpaint.left=0", "outpaint.right=0", "outpaint.aspect=16:9"]
    cfg = load_config(CONFIGS / "base.yaml", base)
    assert refines(cfg, 1920, 1080)  # a phone clip written 3414x1920: 1920 > 1.5 x 512
    assert not refines(cfg, 512, 288)  # written 910x512: the coarse scale itself
    assert not refines(load_config(CONFIGS / "base.yaml", [*base, "output.resolution=model"]), 1920, 1080)
    assert refines(load_config(CONFIGS / "base.yaml", [*base, "output.resolution=model", "output.height=1080"]),
                   1920, 1080)  # a delivery size of 1080 px: refined up to it
    assert not refines(load_config(CONFIGS / "base.yaml", [*base, "output.height=720"]), 1920, 1080)  # 720 < 768
