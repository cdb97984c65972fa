"""Pattern-aware outpainting of a clip of any length and size: plan, coarse stage, refine stage, write.

``outpaint`` takes a clip and loaded models and returns the outpainted frames;
``outpaint_from_config`` is the `motia outpaint` verb around it (read the clip,
load the models, run, write the outputs). ``outpaint`` reads top down as its stages:

* ``plan_outpaint``: every stage's canvas, temporal windows, spatial tiles and
  schedule, before any model runs (``motia.planning``);
* ``coarse_stage``: the whole canvas, every frame, at the scale the models were
  trained for, from noise (the paper's method: guidance, noise regret, the known-region
  blend), which fixes the layout;
* ``refine_stage`` (coarse-to-fine, ``outpaint.refine``): the decoded coarse frames
  upsampled to the output's scale, the known pixels pasted there, encoded, noised part
  way (SDEdit) and denoised again in spatial tiles, so the new regions get the output's
  detail instead of an upsampling's;
* ``write_stage``: decode in chunks, paste the known pixels back, hand each chunk on.

Both sampling stages go through ``sample_stage``: the sampler (``motia.sampler``)
around one model call (``make_denoiser``: ControlNet per frame + UNetMotionModel per
box), with the LoRA's insertion map, window attention and RAU-Net installed for that
stage's canvas. What each frame knows (source and propagated pixels, control frames,
known latents, paste) comes from one ``motia.known.KnownFrames`` per stage, at its scale.

Memory. Only latent-sized tensors of the whole clip live on the device. The model sees
one box (temporal window x spatial tile) at a time, its control frames read for that
box alone; the VAE encodes and decodes chunks of frames, in tiles at the refine scale
(``motia.vae.tiled``); frames at the output's scale pass through one chunk at a time.

Conventions: frames (F, 3, H, W) float in [0, 1] on the CPU; latents
(B, 4, F, h, w) float32, B = 1; the known-latent mask is 1 where every pixel of a
latent cell is known ((h, w) for the source box alone, (1, 1, F, h, w) with
propagated pixels).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from motia.config import JobConfig
from motia.errors import ConfigError, InputError
from motia.planning import OutpaintPlan, StagePlan
from motia.vae import decode_latents, encode_frames, tiled, vae_scale

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
# Frames at the refine scale handled at once (decode, upsample, paste, encode): bounds every
# float copy of a frame (a 3416x1920 frame is 79 MB in float32).
_REFINE_CHUNK_BYTES = 32 << 20

Control = torch.Tensor | Callable[..., torch.Tensor]


@dataclass
class OutpaintResult:
    """What ``outpaint`` returns. ``frames`` is None when a ``sink`` consumed the decoded chunks."""

    frames: torch.Tensor | None  # (F, 3, H, W) float32 CPU in [0, 1], on ``canvas``
    latents: torch.Tensor  # (1, 4, F, h, w) float32 CPU, the clean sampled latents of the last stage
    canvas: object  # motia.geometry.Canvas of the coarse stage (the model's scale)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: propagate, encode, sample, refine, decode, total
    work: dict = field(default_factory=dict)  # the coarse stage's planning.work_estimate (each stage's: ``stages``)
    peak_memory: dict[str, int] = field(default_factory=dict)  # bytes: after sampling, at the end
    prompt: str = ""
    propagation: object | None = None  # motia.known.ClipPropagation (None only when built by hand)
    final_canvas: object | None = None  # the canvas ``frames``/``latents`` are on (the refine one when it ran)
    stages: dict = field(default_factory=dict)  # per stage: canvas, tiles, calls, seconds


# ----------------------------------------------------------------------------- small pieces


def resolve_prompt(cfg: JobConfig, clip) -> str:
    """The text prompt: ``cfg.prompt``, or a caption of the clip for ``prompt: auto`` (motia.caption)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("motia.caption") is not None:
        caption = importlib.import_module("motia.caption")
        if hasattr(caption, "resolve_prompt"):
            return caption.resolve_prompt(cfg, clip)
    if cfg.prompt == "auto":
        raise ConfigError("prompt: 'auto' needs the captioning module (motia.caption), which is missing; write a prompt")
    return cfg.prompt


@torch.no_grad()
def encode_prompt(components, prompt: str, negative: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) CLIP hidden states, each (1, 77, D), on the components' device and dtype; computed once per run."""
    from motia.adapt import encode_prompt as _encode  # the same tokenisation adaptation trained with

    device, dtype = components.device, components.dtype
    cond = _encode(components.tokenizer, components.text_encoder, prompt, device)
    uncond = _encode(components.tokenizer, components.text_encoder, negative, device)
    return cond.to(dtype), uncond.to(dtype)


def encode_known(vae, source: torch.Tensor, canvas, chunk: int) -> torch.Tensor:
    """Known latents (F, 4, h, w) float32 CPU on the canvas's latent grid, from the source (F, 3, sh, sw) alone.

    ``motia.known.KnownFrames.latents`` without propagated pixels: the source edge-padded to
    the latent grid, encoded ``chunk`` frames at a time, placed at its cells; 0 outside.
    """
    from motia.known import KnownFrames

    known = KnownFrames.at_model_scale(canvas, source)
    try:
        return known.latents(vae, chunk)[0]
    finally:
        known.close()


def make_denoiser(
    components,
    text: tuple[torch.Tensor, torch.Tensor],
    control: Control,
    controlnet_scale: float = 1.0,
    scale: int = 8,
) -> Callable:
    """The sampler's model call ``denoise(x, t, cond, window) -> eps`` for one box (temporal window x spatial tile).

    ``text`` is (cond, uncond) from ``encode_prompt``. ``control`` is the control
    video (F, 3, H, W) (CPU or device; pixels to generate = -1) or a callable
    ``control(start, end)`` returning the window's frames, called as
    ``control(start, end, region)`` for a spatial tile (``cond["tile"]``, latent cells;
    ``region`` in pixels, ``scale`` per cell). Per call the box's control frames go to
    the device, the ControlNet runs on each frame of the box (batch B*f, doubled rows
    when guided) and the UNetMotionModel on the box, with the text repeated per frame
    as it wants. ``controlnet_scale`` 0 (or no ControlNet) skips the ControlNet.
    """
    unet, controlnet, device = components.unet, components.controlnet, components.device
    dtype = next(unet.parameters()).dtype
    cond_text, uncond_text = (t.to(device=device, dtype=dtype) for t in text)  # (1, 77, D) each
    use_cn = controlnet is not None and controlnet_scale > 0
    cn_dtype = next(controlnet.parameters()).dtype if use_cn else dtype

    def box_control(window, tile) -> torch.Tensor:  # (f, 3, th, tw)
        start, end = window
        if tile is None:
            return control(start, end) if callable(control) else control[start:end]
        region = tuple(v * scale for v in tile)
        if callable(control):
            return control(start, end, region)
        top, left, bottom, right = region
        return control[start:end, :, top:bottom, left:right]

    @torch.no_grad()
    def denoise(x: torch.Tensor, t: torch.Tensor, cond: dict, window) -> torch.Tensor:
        n, c, f, h, w = x.shape  # (B, C, f, h, w); B doubled (uncond rows first) when guided
        if cond.get("guided", False):
            half = n // 2
            emb = torch.cat([uncond_text.expand(half, -1, -1), cond_text.expand(n - half, -1, -1)])
        else:
            emb = cond_text.expand(n, -1, -1)
        emb = emb.repeat_interleave(f, dim=0)  # (B*f, 77, D), batch-major like the frames below
        t = t.to(device)
        sample = x.to(device=device, dtype=dtype)
        residuals = {}
        if use_cn:
            ctl = box_control(window, cond.get("tile")).to(device=device, dtype=cn_dtype)  # (f, 3, H, W)
            down, mid = controlnet(
                sample.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w).to(cn_dtype),  # (B*f, C, h, w)
                t,
                encoder_hidden_states=emb.to(cn_dtype),
                controlnet_cond=ctl.repeat(n, 1, 1, 1),  # (B*f, 3, H, W)
                conditioning_scale=controlnet_scale,
                return_dict=False,
            )
            residuals = {"down_block_additional_residuals": [r.to(dtype) for r in down],
                         "mid_block_additional_residual": mid.to(dtype)}
        return unet(sample, t, encoder_hidden_states=emb, return_dict=False, **residuals)[0]  # (B, C, f, h, w)

    return denoise


def check_window(cfg: JobConfig, unet) -> None:
    """Reject a ``sample.window.frames`` longer than the motion module's positional encoding allows."""
    limit = getattr(unet.config, "motion_max_seq_length", None)
    if limit is not None and cfg.sample.window.frames > limit:
        raise ConfigError(
            f"sample.window.frames={cfg.sample.window.frames} is longer than the motion module allows "
            f"({limit} frames per call); use sample.window.frames={min(16, limit)} or less"
        )


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def _window_attention(cfg: JobConfig, components, box: tuple[int, int], stack: contextlib.ExitStack) -> list:
    """Install window attention on the UNet (and the ControlNet's matching down blocks) when the config asks.

    ``auto`` decides on what one model call sees: ``box`` (H, W) pixels, a stage's largest
    tile (its canvas when untiled, ``StagePlan.box``).
    """
    from motia.attention import install_window_attention, should_enable

    wa = cfg.sample.window_attention
    if not should_enable(wa.enabled, *box):
        return []
    handles = [stack.enter_context(install_window_attention(components.unet, wa.blocks, wa.grid, wa.shift))]
    # The ControlNet is the UNet's encoder half: window the same down blocks there.
    cn_blocks = [b for b in wa.blocks if b.startswith(("down_blocks", "mid_block"))]
    if components.controlnet is not None and cn_blocks and cfg.sample.controlnet_scale > 0:
        handles.append(stack.enter_context(install_window_attention(components.controlnet, cn_blocks, wa.grid, wa.shift)))
    log.info("window attention on %s (grid %dx%d)", ", ".join(wa.blocks), *wa.grid)
    return handles


def _rau(cfg: JobConfig, components, stack: contextlib.ExitStack):
    """Install RAU-Net on the UNet when ``sample.rau.enabled``; the caller switches it per step."""
    if not cfg.sample.rau.enabled:
        return None
    from motia.rau import install_rau

    rau = stack.enter_context(install_rau(components.unet))
    log.info("RAU-Net on the first %.0f%% of the steps", 100 * cfg.sample.rau.fraction)
    return rau


def _speed_switches(cfg: JobConfig, components, stack: contextlib.ExitStack) -> None:
    """``sample.channels_last`` and ``sample.compile`` for this run only; both undone by ``stack``."""
    s = cfg.sample
    if s.channels_last:
        models = [m for m in (components.unet, components.controlnet) if m is not None]
        # Keep the original storages: converting back would leave 1x1 conv weights with
        # channels-last strides (still "contiguous"), which changes conv kernels and bits.
        saved = [(p, p.data) for m in models for p in m.parameters()]
        for m in models:
            m.to(memory_format=torch.channels_last)

        def restore():
            for p, data in saved:
                p.data = data

        stack.callback(restore)
    if s.compile:
        unet = components.unet
        # An instance attribute shadows the class's forward; putting back what was there
        # (usually nothing) restores the eager one. The submodule hooks (LoRA map, window
        # attention, RAU) are traced into the compiled forward; their per-step state (shift,
        # RAU on/off) becomes guards, so the first steps compile a few variants.
        had, previous = "forward" in unet.__dict__, unet.__dict__.get("forward")
        unet.forward = torch.compile(unet.forward, dynamic=False)

        def eager():
            if had:
                unet.forward = previous
            else:
                unet.__dict__.pop("forward", None)

        stack.callback(eager)


def _attach_lora(cfg: JobConfig, components, canvas, lora_path, stack: contextlib.ExitStack):
    """Load the adapter into the UNet, scaled by ``sample.lora_scale`` and the insertion map of ``canvas``.

    Returns the ``SpatialLoraScale`` (its map is replaced per stage and per tile); undone by ``stack``.
    """
    from peft.tuners.lora import LoraLayer

    from motia.geometry import insertion_map
    from motia.insertion import spatial_lora_scale
    from motia.lora import ADAPTER_NAME, load_lora, remove_lora

    unet = components.unet
    load_lora(unet, lora_path)
    stack.callback(remove_lora, unet)
    for m in unet.modules():
        if isinstance(m, LoraLayer):
            m.set_scale(ADAPTER_NAME, cfg.sample.lora_scale)
    # Distance from the source box, also with propagated pixels: the LoRA learnt the source, one
    # map serves every frame of a window (motion-module rows mix frames), and a per-frame known
    # region would make the strength flicker; fully propagated cells are overwritten anyway.
    scale_map = insertion_map(canvas, cfg.sample.insertion.k)  # (H, W), 1 on the known box
    return stack.enter_context(spatial_lora_scale(unet, scale_map, ADAPTER_NAME))


def _refine_chunk(cfg: JobConfig, canvas) -> int:
    """Frames per VAE call at the refine scale: ``sample.decode_chunk`` at most, fewer when frames are large."""
    frame_bytes = 3 * 4 * canvas.height * canvas.width
    return max(1, min(cfg.sample.decode_chunk, _REFINE_CHUNK_BYTES // frame_bytes))


# ----------------------------------------------------------------------------- the stages


def plan_outpaint(cfg: JobConfig, components, clip, shots=None) -> OutpaintPlan:
    """Every stage's canvas, windows, tiles and schedule for ``clip`` (``planning.plan_stages``), checked against
    the loaded models (the motion module's window limit, the VAE's scale)."""
    from motia.planning import plan_stages

    check_window(cfg, components.unet)
    return plan_stages(cfg, clip, vae_scale(components.vae), shots)


def sample_stage(
    cfg: JobConfig,
    components,
    stage: StagePlan,
    known,
    text: tuple[torch.Tensor, torch.Tensor],
    latents: torch.Tensor,
    noise: torch.Tensor,
    *,
    generator: torch.Generator,
    lora=None,
    run_boxes=None,
    observe: Callable[[dict], None] | None = None,
    on_move: Callable[[], None] | None = None,
    on_call: Callable[[StagePlan], None] | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` (1, 4, F, h, w), at the noise level of the stage's first step, to clean latents.

    The known latents and their mask come from ``known`` (a ``KnownFrames`` on the stage's
    canvas), the control frames per box too; the known region is re-noised with ``noise``
    (``sample.known_noise: fixed``, the reference) or fresh noise. Guidance applies on the
    steps whose index in the whole schedule is below ``sample.guidance_steps``; noise regret
    runs in the coarse stage only (it starts at the schedule's first step). The LoRA
    insertion map (``lora``, from ``_attach_lora``), window attention and RAU-Net follow the
    stage's canvas and each box's tile.
    """
    from motia.geometry import insertion_map
    from motia.rau import active_at
    from motia.sampler import run_in_order, sample

    s = cfg.sample
    scale = stage.scale
    chunk = s.decode_chunk if stage.name == "coarse" else _refine_chunk(cfg, stage.canvas)
    with tiled(components.vae, s.tiles.size if stage.tiled else None):
        known_latents, mask = known.latents(components.vae, chunk)  # (F, 4, h, w), (h, w) or (1, 1, F, h, w)
    device = components.device
    known_latents = known_latents.permute(1, 0, 2, 3).unsqueeze(0).to(device)  # (1, 4, F, h, w)
    mask = mask.to(device)
    scheduler = type(components.scheduler).from_config(components.scheduler.config)  # private: no shared state
    scheduler.set_timesteps(stage.steps)
    timesteps = scheduler.timesteps[stage.first_step :]
    full_map = insertion_map(stage.canvas, s.insertion.k) if lora is not None else None
    if lora is not None:
        lora.set_map(full_map)
    regret = (dict(regret_jump=s.regret.jump, regret_repeats=s.regret.repeats, regret_fraction=s.regret.fraction)
              if stage.first_step == 0 else dict(regret_repeats=0))
    with contextlib.ExitStack() as stack:
        attention = _window_attention(cfg, components, stage.box, stack)
        rau = _rau(cfg, components, stack)
        model = make_denoiser(components, text, lambda a, b, region=None: known.control(range(a, b), region),
                              s.controlnet_scale, scale)

        def denoise(x, t, cond, window):
            for handle in attention:  # shift the attention windows at every model move
                handle.set_step(cond["move"])
            if rau is not None:
                rau.set_active(active_at(stage.first_step + cond["step"], stage.steps, s.rau.fraction))
            tile = cond.get("tile")
            if lora is not None and tile is not None:  # the insertion map of this tile's pixels
                top, left, bottom, right = (v * scale for v in tile)
                lora.set_map(full_map[top:bottom, left:right])
            return model(x, t, cond, window)

        def counted(run, call):  # every box's prediction, whichever process computed it (motia.shard)
            for eps in (run_boxes or run_in_order)(run, call):
                if on_call is not None:
                    on_call(stage)
                yield eps

        return sample(
            denoise, latents, timesteps, scheduler.alphas_cumprod,
            windows=stage.windows, weights_kind=s.window.weights,
            tiles=stage.tiles, tile_weights=s.tiles.weights, run_boxes=counted,
            guidance_scale=s.guidance_scale, guidance_steps=max(0, s.guidance_steps - stage.first_step),
            known_latents=known_latents, known_mask=mask,
            known_noise=noise if s.known_noise == "fixed" else None,  # the stage's initial noise, as the reference
            final_alpha_cumprod=scheduler.final_alpha_cumprod, generator=generator,
            callback=(lambda i, total, x: on_move()) if on_move is not None else None, observe=observe,
            progress=False, **regret,
        )  # (1, 4, F, h, w)


def _noise(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Standard normal float32 noise from ``generator`` on its own device (so CPU and GPU runs draw the same)."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def coarse_stage(cfg, components, stage: StagePlan, known, text, generator, **kwargs) -> torch.Tensor:
    """The whole canvas from noise at the models' scale: the paper's sampling. Returns (1, 4, F, h, w) latents."""
    h, w = stage.canvas.latent_size(stage.scale)
    shape = (1, components.unet.config.in_channels, known.num_frames, h, w)  # (1, 4, F, h, w)
    noise = _noise(shape, generator, components.device)
    latents = noise * components.scheduler.init_noise_sigma
    return sample_stage(cfg, components, stage, known, text, latents, noise, generator=generator, **kwargs)


def refine_known(cfg: JobConfig, clip, canvas, prop, folder: str | None = None):
    """``KnownFrames`` at the refine scale: the source decoded again at its own size (resampled to the refine
    scale where that differs, ``known.source_at_scale``) in its box, and the propagated pixels found again there."""
    from motia.known import KnownFrames, source_at_scale

    frames = source_at_scale(clip, (canvas.src_h, canvas.src_w))
    try:
        return KnownFrames.at_scale(canvas, clip.num_frames, lambda t: next(frames),
                                    prop if prop is not None and prop.filled else None, folder)
    finally:
        frames.close()


def refine_stage(cfg: JobConfig, components, clip, plan: OutpaintPlan, coarse_latents: torch.Tensor, known_r,
                 text, generator, **kwargs) -> torch.Tensor:
    """SDEdit at the output's scale: the coarse result upsampled, the known pixels pasted, noised to the level of
    the refine's first step and denoised in spatial tiles and temporal windows. Returns (1, 4, F, h, w) latents."""
    from motia.geometry import feather_pixels, resample_canvas
    from motia.sampler import renoise

    stage, coarse = plan.refine, plan.coarse
    vae = components.vae
    h, w = stage.canvas.latent_size(stage.scale)
    init = torch.zeros(clip.num_frames, vae.config.latent_channels, h, w)  # (F, 4, h, w)
    chunk = _refine_chunk(cfg, stage.canvas)
    feather = feather_pixels(cfg.output.feather, stage.canvas)
    start = 0
    for pixels in decode_latents(vae, coarse_latents, chunk):  # (n, 3, Hc, Wc), the coarse canvas
        frames = range(start, start + pixels.shape[0])
        up = known_r.paste(resample_canvas(pixels, coarse.canvas, stage.canvas), frames, feather)  # (n, 3, H, W)
        with tiled(vae, cfg.sample.tiles.size if stage.tiled else None):
            init[frames.start : frames.stop] = encode_frames(vae, up, chunk)
        start = frames.stop
    scheduler = type(components.scheduler).from_config(components.scheduler.config)
    scheduler.set_timesteps(stage.steps)
    alpha = scheduler.alphas_cumprod[scheduler.timesteps[stage.first_step]].float()
    noise = _noise((1, init.shape[1], clip.num_frames, h, w), generator, components.device)
    clean = init.permute(1, 0, 2, 3).unsqueeze(0).to(noise.device)  # (1, 4, F, h, w)
    del init  # one latent-sized tensor fewer while the stage samples
    latents = renoise(clean, torch.tensor(1.0), alpha, noise)  # q(x_t | x_0): from clean to the first step's level
    del clean
    return sample_stage(cfg, components, stage, known_r, text, latents, noise, generator=generator, **kwargs)


def write_stage(cfg: JobConfig, components, stage: StagePlan, latents: torch.Tensor, known, *,
                sink: Callable[[torch.Tensor], None] | None = None, paste: bool = True) -> tuple[torch.Tensor | None, float]:
    """Decode the last stage's latents chunk by chunk (tiled at the refine scale), paste the known pixels back
    (``paste``), and hand each chunk to ``sink`` or keep it. Returns (frames or None, seconds in the sink)."""
    from motia.geometry import feather_pixels

    feather = feather_pixels(cfg.output.feather, stage.canvas)
    chunk = cfg.sample.decode_chunk if stage.name == "coarse" else _refine_chunk(cfg, stage.canvas)
    kept, start, t_sink = [], 0, 0.0
    tile = cfg.sample.tiles.size if stage.tiled else None  # frames larger than a tile decode tile by tile
    for pixels in decode_latents(components.vae, latents, chunk, tile):  # (n, 3, H, W)
        frames = range(start, start + pixels.shape[0])
        if paste:
            pixels = known.paste(pixels, frames, feather)
        if sink is not None:
            t0 = time.perf_counter()
            sink(pixels)
            t_sink += time.perf_counter() - t0
        else:
            kept.append(pixels)
        start = frames.stop
    return (torch.cat(kept) if kept else None), t_sink


def outpaint(
    cfg: JobConfig,
    components,
    clip,
    *,
    lora_path: str | os.PathLike | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    sink: Callable[[torch.Tensor], None] | None = None,
    callback: Callable[[dict], None] | None = None,
    observe: Callable[[dict], None] | None = None,
    paste: bool | None = None,
    propagation=None,
    run_boxes=None,
    shots=None,
    decode: bool = True,
    scratch: str | os.PathLike | None = None,
    known_refine=None,
) -> OutpaintResult:
    """Outpaint ``clip`` (a motia.video.Clip) onto the canvas the config plans, with an optional adapted LoRA.

    Stages: plan; propagate (pixels other frames show); coarse (the whole canvas from noise
    drawn from ``generator``, default CPU ``cfg.seed``, with temporal windows, guidance,
    noise regret and the known-region blend); refine when planned (``outpaint.refine``);
    decode and paste the known pixels back (``paste``, default ``output.paste``). The LoRA,
    its spatial scaling, window attention, RAU-Net and the speed switches are installed for
    the sampling only and removed again, so ``components`` are unchanged afterwards.
    ``sink`` receives each decoded chunk (n, 3, H, W) on the last stage's canvas
    (``result.final_canvas``) instead of the result keeping all frames
    (``motia.output.OutputWriter`` pastes at the output scale itself, so it takes them with
    ``paste=False``); the time spent in it is ``timings["output"]``, not ``"decode"``.
    ``callback({"step", "total"})`` observes every denoising move of both stages (regret
    repeats count). ``observe`` sees every sampler move (``motia.sampler.sample``'s).
    ``propagation`` (a ``motia.known.ClipPropagation`` for this clip and coarse canvas) is
    the pixel propagation already computed; by default it is computed here.
    ``run_boxes`` runs each step's model calls (``motia.sampler.RunBoxes``; default: in order;
    ``motia.shard.Shard`` splits them over processes). ``decode=False`` stops after sampling
    (``frames`` None): a sharded run's other processes leave decoding to the main one.
    ``shots`` (the shots' first frames; default ``planning.plan_shots``): no temporal window crosses a cut.
    ``scratch``: the folder of the temporary files (unnamed, gone when the run ends) that hold what frames
    know when that is too large for memory (``motia.known.FrameStore``); default the system's temp folder.
    ``known_refine``: what frames know at the refine scale (``refine_known``), when the caller built it
    already (the writer pastes from it too); by default built here.
    """
    from motia.known import KnownFrames
    from motia.planning import plan_shots
    from motia.utils import peak_memory_bytes

    t_start = time.perf_counter()
    shots = plan_shots(cfg, clip) if shots is None else list(shots)
    plan = plan_outpaint(cfg, components, clip, shots)
    coarse = plan.coarse
    generator = torch.Generator("cpu").manual_seed(cfg.seed) if generator is None else generator
    prompt = resolve_prompt(cfg, clip)
    show = progress and _is_main_process()
    timings: dict[str, float] = {}

    prop, timings["propagate"] = _propagation(cfg, clip, coarse.canvas, propagation, show, shots)
    text = encode_prompt(components, prompt, cfg.sample.negative_prompt)
    _log_plan(cfg, plan)
    bar, on_move, on_call = _progress(cfg, plan, show, callback)
    with contextlib.ExitStack() as stack:
        stack.enter_context(bar)
        known = KnownFrames.at_model_scale(coarse.canvas, clip.frames, prop, folder=scratch)
        stack.callback(known.close)
        lora = _attach_lora(cfg, components, coarse.canvas, lora_path, stack) if lora_path is not None else None
        _speed_switches(cfg, components, stack)
        common = dict(lora=lora, run_boxes=run_boxes, observe=observe, on_move=on_move, on_call=on_call)
        t0 = time.perf_counter()
        latents = coarse_stage(cfg, components, coarse, known, text, generator, **common)
        t1 = time.perf_counter()
        timings["sample"] = t1 - t0
        if plan.refine is not None:
            known_r = known_refine
            if known_r is None:
                known_r = refine_known(cfg, clip, plan.refine.canvas, prop, folder=scratch)
                stack.callback(known_r.close)
            t2 = time.perf_counter()
            latents = refine_stage(cfg, components, clip, plan, latents, known_r, text, generator, **common)
            timings["refine_known"], timings["refine"] = t2 - t1, time.perf_counter() - t2
            known = known_r
        peak_sampling = peak_memory_bytes(components.device)
        t3 = time.perf_counter()
        frames, t_sink = write_stage(cfg, components, plan.final, latents, known, sink=sink,
                                     paste=cfg.output.paste if paste is None else paste) if decode else (None, 0.0)
    t_end = time.perf_counter()
    timings["decode"] = t_end - t3 - t_sink
    timings["encode"] = t_end - t_start - sum(timings.values())  # prompt, known latents, the refine's init
    timings["total"] = t_end - t_start
    if sink is not None:
        timings["output"] = t_sink
    stages = {st.name: {**st.describe(), "seconds": round(timings["sample" if st.name == "coarse" else "refine"], 3),
                        "work": st.work} for st in plan.stages}
    return OutpaintResult(
        frames=frames, latents=latents.cpu(), canvas=coarse.canvas, timings=timings,
        work=coarse.work,
        peak_memory={"sampling": peak_sampling, "total": peak_memory_bytes(components.device)},
        prompt=prompt, propagation=prop, final_canvas=plan.final.canvas, stages=stages,
    )


def _propagation(cfg: JobConfig, clip, canvas, given, show: bool, shots):
    """The clip's pixel propagation on the coarse canvas (computed here unless ``given``; linked within each of
    ``shots``), and its seconds."""
    from motia.known import propagate_clip
    from motia.planning import shots_argument

    t0 = time.perf_counter()
    prop = given
    if prop is None:
        prop = propagate_clip(cfg, clip.frames, canvas, progress=show, **shots_argument(shots))
    elif prop.canvas != canvas or prop.num_frames != clip.num_frames:
        raise ValueError(f"propagation is for {prop.num_frames} frames on {prop.canvas}, this run has "
                         f"{clip.num_frames} on {canvas}")
    if prop.filled:
        log.info("propagation: %s", prop.note)
    return prop, time.perf_counter() - t0


def _log_plan(cfg: JobConfig, plan: OutpaintPlan) -> None:
    s = cfg.sample
    for st in plan.stages:
        c, work = st.canvas, st.work
        regret = work["model_moves"] - work["steps"]
        log.info(
            "outpaint %s: %d frames, canvas %dx%d (W x H, latent %s), %d window(s) of %d (stride %d)%s, %d steps%s, "
            "%d UNet calls (%d guided)", st.name, plan.num_frames, c.width, c.height, work["latent"].split(" ")[0],
            len(st.windows), min(s.window.frames, plan.num_frames), s.window.stride,
            f" x {len(st.tiles)} tiles" if st.tiled else "", work["steps"],
            f" + {regret} noise-regret re-runs" if regret else "", work["unet_calls"], work["guided_calls"],
        )


def _progress(cfg: JobConfig, plan: OutpaintPlan, show: bool, callback):
    """One bar over both stages' denoising moves (regret re-runs included), model calls in its postfix."""
    s = cfg.sample
    moves = sum(st.work["model_moves"] for st in plan.stages)
    calls = sum(st.work["unet_calls"] for st in plan.stages)
    regret = plan.coarse.work["model_moves"] - s.steps
    label = f"outpaint ({s.steps} steps + {regret} regret)" if regret else "outpaint"
    if plan.refine is not None:
        label = label.rstrip(")") + (", " if regret else " (") + f"refine {plan.refine.work['model_moves']} steps)"
    bar = tqdm(total=moves, disable=not show, desc=label, unit="step", leave=False)
    done = {"moves": 0, "calls": 0, "in_move": 0}

    def on_move() -> None:
        done["moves"] += 1
        done["in_move"] = 0
        bar.update()
        if callback is not None:
            callback({"step": done["moves"], "total": moves})

    def on_call(stage: StagePlan) -> None:
        done["calls"] += 1
        done["in_move"] += 1
        if show:
            per_move = stage.work["unet_calls"] // max(1, stage.work["model_moves"])
            where = f"box {done['in_move']}/{per_move}" if stage.tiled else f"window {done['in_move']}/{per_move}"
            prefix = "refine, " if stage.name == "refine" else ""
            bar.set_postfix_str(f"{prefix}{where}, model calls {done['calls']}/{calls}")

    return bar, on_move, on_call


# ----------------------------------------------------------------------------- the verb


def _write_json(path: Path, data) -> None:
    import json

    from motia.utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_outputs(cfg: JobConfig, clip, result: OutpaintResult, run_dir: Path) -> dict[str, str]:
    """Write the configured outputs of frames already computed (``result.frames``, on the model's canvas); return their paths by kind.

    The same path as a streamed run (``motia.output.OutputWriter``): the frames are
    put on the output canvas (``output.resolution``, ``output.height``/``width``) and
    the source (and the propagated pixels, ``result.propagation``) pasted back there; each
    file is written atomically.
    """
    from motia.output import OutputWriter
    from motia.planning import native_size, plan_output

    native = native_size(clip)
    out_canvas = plan_output(cfg, result.canvas, *native)
    final = result.final_canvas or result.canvas
    with OutputWriter(cfg, clip, final, out_canvas, run_dir, native, propagation=result.propagation) as writer:
        step = cfg.sample.decode_chunk
        for i in range(0, result.frames.shape[0], step):
            writer(result.frames[i : i + step])
    return writer.outputs


def check_adapter_fits(meta: dict, cfg: JobConfig, clip, path) -> None:
    """Compare an adapter's metadata with this run before any model loads.

    A different base model or motion module (as the user names them: tiny refs and hub
    ids as written, local paths resolved) is refused: the LoRA's layers belong to those
    weights. A different prompt, frame size, noise schedule, VAE or ControlNet, or a base
    named one way there and another here (hub id vs local folder: cannot tell), is one
    warning line naming the keys. Keys the file does not record are skipped.
    """
    from motia.models.loading import ANIMATEDIFF_HUB_ID, source_label

    recorded = meta.get("base_models") or {}
    revision = cfg.models.revision

    def label(name: str, ref) -> str | None:
        return source_label(ref, revision.get(name) if isinstance(revision, dict) else revision)

    warn: list[str] = []
    for name, refuse in (("base", True), ("motion_adapter", True), ("vae", False), ("controlnet", False)):
        now = label(name, getattr(cfg.models, name))
        if name == "motion_adapter" and now is None:  # not set: the base's own motion UNet, else AnimateDiff v2
            own = str(recorded.get(name, "")).endswith("/unet")
            now = f"{label('base', cfg.models.base)}/unet" if own else label(name, ANIMATEDIFF_HUB_ID)
        if name in recorded:
            before = recorded[name]
        elif name == "vae" and recorded:
            before = None  # adapted with the base's own VAE
        else:
            continue
        if before == now:
            continue
        # Two ids, or two local paths, are comparable; a hub id and a local folder may be the same weights.
        if refuse and before is not None and now is not None and os.path.isabs(before) == os.path.isabs(now):
            raise InputError(
                f"{path}: adapted on models.{name}={before}, but this run uses {now}; its LoRA belongs to those "
                f"weights: outpaint with models.{name}={before}, or adapt again with this config"
            )
        warn.append(f"models.{name} (adapted on {before or 'the base VAE'}, here {now or 'the base VAE'})")
    if "schedule" in meta and getattr(cfg.models, "schedule", None) not in (None, meta["schedule"]):
        warn.append(f"models.schedule (adapted with {meta['schedule']}, here {cfg.models.schedule})")
    if "prompt" in meta and meta["prompt"] != cfg.prompt:
        warn.append(f"prompt (adapted with {meta['prompt']!r}, here {cfg.prompt!r})")
    size = (meta.get("source") or {}).get("size")
    here = [clip.height - clip.height % 8, clip.width - clip.width % 8]  # adaptation crops to the latent grid
    if isinstance(size, list) and len(size) == 2 and list(size) != here:
        warn.append(f"video.size (adapted on {size[1]}x{size[0]} frames, here {here[1]}x{here[0]}, W x H)")
    if warn:
        log.warning("%s was adapted with other settings: %s; outpainting anyway (adapt again with this config "
                    "for the best match)", path, "; ".join(warn))  # fmt: skip


def outpaint_from_config(
    cfg: JobConfig, lora: str | os.PathLike | None = None, *, overwrite: bool = False, progress: bool = True,
    models=None, callback: Callable[[dict], None] | None = None, sharded: bool = False,
) -> dict:
    """`motia outpaint`: read the clip, load the models, outpaint, write the outputs; return the run summary.

    The run folder is locked for the run (``motia.runs.lock_run_folder``: another live run
    writing there is refused; under a multi-process launch the main process holds it). The
    clip is read (and the canvases planned, the adapter file checked against this
    run, ``check_adapter_fits``, the free space checked against the outputs,
    ``motia.output.check_output_space``) before any model loads, so bad input fails fast and
    writes nothing. A run folder holding the finished outputs of another config is
    refused unless ``overwrite`` (``motia.runs``); then the earlier outputs are removed
    once the models have loaded, before sampling. Outputs go to ``cfg.run_dir()`` as
    the frames are decoded (``motia.output``): outpaint.mp4 and side_by_side.mp4 (with
    the source's audio for the frames used), optional outpaint.gif and frames/, then
    config.yaml and summary.json. ``models`` (a ``motia.job.ModelCache``) reuses models
    already loaded in this process; ``callback`` observes the sampling steps (see ``outpaint``).
    Pixel propagation (``outpaint.propagate``) runs on the CPU in a thread while the models
    load; the summary's ``propagation`` records its motion, coverage and time.

    ``sharded`` (`motia outpaint`/`run` under ``accelerate launch --num_processes N``): every
    process loads the models on its own device and runs the whole loop, each step's model
    calls split between them (``motia.shard``); only the main process removes, decodes and
    writes anything, and its summary's ``processes`` counts every process's calls. The other
    processes return ``{"process": rank, "calls": n}``. Without a multi-process launch it is
    the plain run.
    """
    from motia.runs import lock_run_folder

    with lock_run_folder(cfg.run_dir(), enabled=_is_main_process()):
        return _outpaint_locked(cfg, lora, overwrite=overwrite, progress=progress, models=models, callback=callback,
                                sharded=sharded)


def _outpaint_locked(cfg: JobConfig, lora, *, overwrite: bool, progress: bool, models, callback,
                     sharded: bool = False) -> dict:
    """``outpaint_from_config`` with its run folder locked."""
    from motia.config import dump_config
    from motia.known import check_propagation, propagate_clip
    from motia.lora import read_lora_metadata
    from motia.models import load_components, resolve_device
    from motia.output import OutputWriter, check_output_space
    from motia.planning import (load_clip, native_size, plan, plan_output, plan_refine, plan_shots, shots_argument,
                                upsampling_warning)
    from motia.runs import check_outpaint_folder
    from motia.shots import describe_shots
    from motia.shard import Shard, launched
    from motia.utils import peak_memory_bytes

    t0 = time.perf_counter()
    clip = load_clip(cfg)
    canvas = plan(cfg, clip.height, clip.width)  # geometry errors before the models load
    shots = plan_shots(cfg, clip)  # one list for the windows and the propagation
    if len(shots) > 1:
        log.info("%d shots (video.shots=%s), first frames %s: each is windowed and propagated on its own",
                 len(shots), "auto" if cfg.video.shots == "auto" else "listed", shots)
    native = native_size(clip)
    out_canvas = plan_output(cfg, canvas, *native)
    final_canvas = plan_refine(cfg, canvas, *native, out_canvas) or canvas  # what the last stage samples on
    warning = upsampling_warning(cfg, clip.height, native[0])
    if warning:
        log.warning(warning)
    meta = read_lora_metadata(lora) if lora is not None else None
    prompt = resolve_prompt(cfg, clip)
    if prompt != cfg.prompt:
        cfg = cfg.model_copy(update={"prompt": prompt})  # config.yaml records the prompt actually used
    run_dir = cfg.run_dir()
    replaced = check_outpaint_folder(run_dir, cfg, lora, overwrite)
    check_output_space(cfg, clip, out_canvas, run_dir, freed=replaced, scratch=dict.fromkeys([canvas, final_canvas]))
    if meta is not None:
        check_adapter_fits(meta, cfg, clip, lora)
    check_propagation(cfg)
    state = launched(cpu=resolve_device(cfg.models.device).type == "cpu") if sharded else None
    device = state.device if state is not None else None  # the launcher's device for this process
    main = state is None or state.is_main_process
    # Propagation needs no model: it runs (numpy and OpenCV, which release the GIL) while the
    # models load. If loading fails, or Ctrl-C comes while loading or waiting, it is told to
    # stop at its next frame (else leaving the pool would wait for the whole clip). The submit is
    # inside the try: Ctrl-C can land while it starts the thread, after the work is queued.
    cancel = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="motia-propagate") as pool:
        try:
            pending = pool.submit(propagate_clip, cfg, clip.frames, canvas, cancel=cancel, **shots_argument(shots))
            loads = getattr(models, "loads", None)
            if models is None:
                components = load_components(cfg.models, device=device, progress=progress and main)
            else:
                components = models.get(cfg.models, device=device, progress=progress and main)
            t_loaded = time.perf_counter()
            if not pending.done():
                log.info("models loaded; waiting for the pixel propagation (%d frames)", clip.num_frames)
            propagation = pending.result()
        except BaseException:
            cancel.set()
            raise
    t_propagated = time.perf_counter()
    shard = None
    if state is not None:
        state.wait_for_everyone()  # every process has checked the folder before the main one changes it
        shard = Shard(state.process_index, state.num_processes, components.device)
    if not main:  # a sharded run's other process: its share of the model calls, no file
        outpaint(cfg, components, clip, lora_path=lora, generator=torch.Generator("cpu").manual_seed(cfg.seed),
                 progress=False, propagation=propagation, run_boxes=shard, decode=False, shots=shots)
        return {"process": shard.rank, "calls": shard.calls}
    # --overwrite of another config's run: none of its files may stay beside ours. Removed
    # before any new output exists, so nothing this run writes can be taken for the old one's.
    for path in replaced:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    generator = torch.Generator("cpu").manual_seed(cfg.seed)
    # What frames know at the refine scale serves the refine stage and, at the output's scale, the paste.
    known_r = refine_known(cfg, clip, final_canvas, propagation, folder=run_dir) if final_canvas != canvas else None
    # The outputs are written as the frames are decoded, pasted at the output scale.
    with contextlib.ExitStack() as stack:
        if known_r is not None:
            stack.callback(known_r.close)
        writer = stack.enter_context(OutputWriter(cfg, clip, final_canvas, out_canvas, run_dir, native,
                                                  propagation=propagation, known=known_r))
        result = outpaint(cfg, components, clip, lora_path=lora, generator=generator, progress=progress,
                          sink=writer, paste=False, callback=callback, propagation=propagation, shots=shots,
                          run_boxes=shard, scratch=run_dir, known_refine=known_r)
    outputs = dict(writer.outputs)
    outputs["config"] = str(dump_config(cfg, run_dir / "config.yaml"))
    outputs["summary"] = str(run_dir / SUMMARY_FILE)
    summary = {
        "time_s": round(time.perf_counter() - t0, 3),
        "load_s": round(t_loaded - t0, 3),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "output_timings_s": {k: round(v, 3) for k, v in writer.timings.items()},
        "peak_memory_bytes": peak_memory_bytes(components.device),
        "peak_memory_sampling_bytes": result.peak_memory["sampling"],
        "device": str(components.device),
        "dtype": str(components.dtype).removeprefix("torch."),
        "source": str(clip.source),
        "frames": clip.num_frames,
        "fps": cfg.output.fps or clip.fps,
        "source_size": [clip.height, clip.width],
        "native_size": list(native),
        "canvas": result.canvas.to_dict(),
        "output_canvas": out_canvas.to_dict(),
        "shots": describe_shots(shots, clip.num_frames),
        "windows": result.work["windows"],
        "unet_calls": sum(st["unet_calls"] for st in result.stages.values()),
        # per stage (coarse, and refine when it ran): canvas, latent, tiles, windows, steps, UNet calls, seconds
        "stages": result.stages,
        "work": result.work,
        "prompt": result.prompt,
        "seed": cfg.seed,
        "lora": str(Path(lora).resolve()) if lora is not None else None,
        "models": components.sources,
        "models_reused": loads is not None and models.loads == loads,  # `motia run`: loaded once for both stages
        # model calls per process: counted (sharded, motia.shard), else the plan's
        "processes": {"num_processes": shard.world if shard else 1,
                      "calls_per_process": shard.calls_per_process if shard else [sum(
                          st["unet_calls"] for st in result.stages.values())]},
        # wait_s: how long sampling waited for the propagation after the models had loaded
        "propagation": {**propagation.summary(), "coverage_output": writer.propagation_coverage,
                        "wait_s": round(t_propagated - t_loaded, 3)},
        "outputs": outputs,
    }
    _write_json(run_dir / SUMMARY_FILE, summary)
    log.info("outpaint: wrote %s", run_dir)
    return summary
