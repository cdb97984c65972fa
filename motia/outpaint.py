"""Pattern-aware outpainting of a clip of any length: canvas, known latents, windowed sampling, decode, paste.

``outpaint`` takes a clip and loaded models and returns the outpainted frames;
``outpaint_from_config`` is the `motia outpaint` verb around it (read the clip,
load the models, run, write the outputs). The pieces are small functions:
``encode_prompt``, ``encode_frames``, ``decode_latents`` and ``make_denoiser``
(the sampler's model call: ControlNet per frame + UNetMotionModel per window).

Memory. Only latent-sized tensors of the whole clip (noise, latents, known
latents, the window blend) live on the device. Control frames are built per
temporal window from the source frames when that window runs, the ControlNet and
UNet see one window at a time, and the VAE encodes/decodes chunks of frames, so
device memory depends on the window and the chunk, not on the clip length.

Propagation (``outpaint.propagate``, ``motia.known``): pixels of the new region that
other frames show count as known, per frame: the control frames show them, the known
latents cover the latent cells they complete (a per-frame mask), and the paste puts them
back. When no pixel is propagated everything runs as without it.

Conventions: frames (F, 3, H, W) float in [0, 1] on the CPU; latents
(B, 4, F, h, w) float32, B = 1; the known-latent mask is 1 where every pixel of a
latent cell is known: source (``geometry.latent_known_mask``, (h, w)) or, with
propagated pixels, source or propagated (``encode_known_frames``, (1, 1, F, h, w)).
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
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from motia.config import JobConfig
from motia.errors import ConfigError, InputError, MotiaError

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"

Control = torch.Tensor | Callable[[int, int], torch.Tensor]


@dataclass
class OutpaintResult:
    """What ``outpaint`` returns. ``frames`` is None when a ``sink`` consumed the decoded chunks."""

    frames: torch.Tensor | None  # (F, 3, H, W) float32 CPU in [0, 1]
    latents: torch.Tensor  # (1, 4, F, h, w) float32 CPU, the clean sampled latents
    canvas: object  # motia.geometry.Canvas
    timings: dict[str, float] = field(default_factory=dict)  # seconds: propagate, encode, sample, decode, total
    work: dict = field(default_factory=dict)  # planning.work_estimate: frames, windows, UNet calls, ...
    peak_memory: dict[str, int] = field(default_factory=dict)  # bytes: after sampling, at the end
    prompt: str = ""
    propagation: object | None = None  # motia.known.ClipPropagation (None only when built by hand)


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


def encode_frames(vae, frames: torch.Tensor, chunk: int) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1] -> (F, 4, H/8, W/8) float32 CPU latents: posterior mean x scaling_factor, chunked."""
    from motia.adapt import encode_frames as _encode  # same latents as adaptation cached

    return _encode(vae, frames, chunk, next(vae.parameters()).device)


def encode_known(vae, source: torch.Tensor, canvas, chunk: int) -> torch.Tensor:
    """Known latents (F, 4, h, w) float32 CPU on the canvas's latent grid, from the source alone.

    The source is edge-padded out to the latent grid (``geometry.pad_to_grid``), encoded
    ``chunk`` frames at a time and placed at its cells; cells outside are 0 (the known mask
    discards them). With an 8-aligned box the box's cells are exactly ``encode(source)``.
    """
    from motia.geometry import grid_box, pad_to_grid
    from motia.video import unit_frames

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = canvas.latent_size(scale)
    top, left, bottom, right = (v // scale for v in grid_box(canvas, scale))
    out = torch.zeros(source.shape[0], vae.config.latent_channels, h, w)  # (F, 4, h, w)
    for i in range(0, source.shape[0], chunk):
        z = encode_frames(vae, pad_to_grid(unit_frames(source[i : i + chunk]), canvas, scale), chunk)  # (n, 4, gh, gw)
        out[i : i + z.shape[0], :, top:bottom, left:right] = z
    return out


def encode_known_frames(vae, source: torch.Tensor, canvas, chunk: int, prop) -> tuple[torch.Tensor, torch.Tensor]:
    """Known latents (F, 4, h, w) and their per-frame mask (1, 1, F, h, w), propagated pixels counted as known.

    The source's own cells (``latent_known_mask``) keep the latents of the source encoded
    alone (``encode_known``), as without propagation. A frame with propagated pixels
    (``prop``, a ``motia.known.ClipPropagation``) is also encoded whole: source and
    propagated pixels, every other pixel filled from its nearest known one
    (``known.fill_unknown``, the edge extension the source alone gets); its cells whose
    pixels are all known, source or propagated, take those latents and join the mask.
    Partly known cells stay generated (the paste restores their known pixels).
    """
    from motia.geometry import downsample_mask, latent_known_mask
    from motia.known import fill_unknown
    from motia.video import unit_frames

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = canvas.latent_size(scale)
    latents = encode_known(vae, source, canvas, chunk)  # (F, 4, h, w)
    box_cells = latent_known_mask(canvas, scale)  # (h, w), 1 = all source
    mask = box_cells.expand(source.shape[0], h, w).clone()  # (F, h, w)
    todo = [t for t in range(source.shape[0]) if prop.frame_filled(t)]
    for i in range(0, len(todo), chunk):
        idx = todo[i : i + chunk]
        known = prop.known(idx)  # (n, 1, H, W)
        pixels = fill_unknown(prop.image(unit_frames(source[idx]), idx), known)  # (n, 3, H, W)
        z = encode_frames(vae, pixels, chunk)  # (n, 4, h, w)
        cells = downsample_mask(known[:, 0], h, w) * (1 - box_cells)  # (n, h, w): all known, not the source's own
        latents[idx] = torch.where(cells[:, None] > 0, z, latents[idx])
        mask[idx] = torch.maximum(mask[idx], cells)
    return latents, mask[None, None]  # (F, 4, h, w), (1, 1, F, h, w)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
    """Yield decoded frames (n, 3, H, W) float32 CPU in [0, 1], ``chunk`` frames per VAE call.

    ``latents`` is (B, 4, F, h, w) (frames of every batch row in turn) or (F, 4, h, w),
    scaled by ``scaling_factor`` as the sampler produces them. Only one chunk is
    on the device at a time.
    """
    if latents.dim() == 5:
        b, c, f, h, w = latents.shape
        latents = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (B*F, 4, h, w)
    param = next(vae.parameters())
    scale = vae.config.scaling_factor
    for i in range(0, latents.shape[0], chunk):
        z = latents[i : i + chunk].to(device=param.device, dtype=param.dtype) / scale  # (n, 4, h, w)
        pixels = vae.decode(z).sample.float()  # (n, 3, H, W) in about [-1, 1]
        if not torch.isfinite(pixels).all():
            raise MotiaError(
                f"the VAE decoded non-finite pixels in {param.dtype}; run with models.dtype=fp32 "
                "or models.vae=stabilityai/sd-vae-ft-mse"
            )
        yield (pixels / 2 + 0.5).clamp(0, 1).cpu()


def make_denoiser(
    components,
    text: tuple[torch.Tensor, torch.Tensor],
    control: Control,
    controlnet_scale: float = 1.0,
) -> Callable:
    """The sampler's model call ``denoise(x, t, cond, window) -> eps`` for one temporal window.

    ``text`` is (cond, uncond) from ``encode_prompt``. ``control`` is the control
    video (F, 3, H, W) (CPU or device; pixels to generate = -1) or a callable
    ``control(start, end)`` returning the window's frames. Per call the window's
    control frames go to the device, the ControlNet runs on each frame of the
    window (batch B*f, doubled rows when guided) and the UNetMotionModel on the
    window, with the text repeated per frame as it wants. ``controlnet_scale`` 0
    (or no ControlNet) skips the ControlNet.
    """
    unet, controlnet, device = components.unet, components.controlnet, components.device
    dtype = next(unet.parameters()).dtype
    cond_text, uncond_text = (t.to(device=device, dtype=dtype) for t in text)  # (1, 77, D) each
    use_cn = controlnet is not None and controlnet_scale > 0
    cn_dtype = next(controlnet.parameters()).dtype if use_cn else dtype
    window_control = control if callable(control) else (lambda s, e: control[s:e])

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
            ctl = window_control(*window).to(device=device, dtype=cn_dtype)  # (f, 3, H, W)
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


def _window_attention(cfg: JobConfig, components, canvas, stack: contextlib.ExitStack) -> list:
    """Install window attention on the UNet (and on the ControlNet's matching down blocks) when the config asks."""
    from motia.attention import install_window_attention, should_enable

    wa = cfg.sample.window_attention
    if not should_enable(wa.enabled, canvas.height, canvas.width):
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


def _attach_lora(cfg: JobConfig, components, canvas, lora_path, stack: contextlib.ExitStack) -> dict:
    """Load the adapter into the UNet, scaled by ``sample.lora_scale`` and the insertion map; undone by ``stack``."""
    from peft.tuners.lora import LoraLayer

    from motia.geometry import insertion_map
    from motia.insertion import spatial_lora_scale
    from motia.lora import ADAPTER_NAME, load_lora, remove_lora

    unet = components.unet
    meta = load_lora(unet, lora_path)
    stack.callback(remove_lora, unet)
    for m in unet.modules():
        if isinstance(m, LoraLayer):
            m.set_scale(ADAPTER_NAME, cfg.sample.lora_scale)
    # Distance from the source box, also with propagated pixels: the LoRA learnt the source, one
    # map serves every frame of a window (motion-module rows mix frames), and a per-frame known
    # region would make the strength flicker; fully propagated cells are overwritten anyway.
    scale_map = insertion_map(canvas, cfg.sample.insertion.k)  # (H, W), 1 on the known box
    stack.enter_context(spatial_lora_scale(unet, scale_map, ADAPTER_NAME))
    return meta


# ----------------------------------------------------------------------------- the stage


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
) -> OutpaintResult:
    """Outpaint ``clip`` (a motia.video.Clip) onto the canvas the config plans, with an optional adapted LoRA.

    Steps: plan the canvas; encode the source (alone, edge-padded to the latent grid) to known latents;
    sample from noise drawn from ``generator`` (default: CPU, ``cfg.seed``) with
    temporal windows, guidance, noise regret and the known-region blend; decode in
    chunks; paste the source back (``paste``, default ``output.paste``). The LoRA, its spatial scaling,
    window attention, RAU-Net and the speed switches (channels-last, compile) are
    installed for the sampling only and removed again, so ``components`` are
    unchanged afterwards. ``sink`` receives each decoded chunk
    (n, 3, H, W) instead of the result keeping all frames (``motia.output.OutputWriter``
    pastes at the output scale itself, so it takes them with ``paste=False``); the
    time spent in it is ``timings["output"]``, not ``"decode"``. ``callback({"step", "total"})``
    observes every denoising move (regret repeats count; ``total`` is all of them).
    ``observe`` sees every sampler move (``motia.sampler.sample``'s ``observe``: levels, eps, latents).
    ``propagation`` (a ``motia.known.ClipPropagation`` for this clip and canvas) is the
    pixel propagation already computed; by default it is computed here (``outpaint.propagate``).
    """
    from motia.geometry import feather_pixels, known_mask, latent_known_mask, paste_known, place_on_canvas
    from motia.geometry import control_video as make_control
    from motia.known import propagate_clip
    from motia.planning import plan, work_estimate
    from motia.rau import active_at
    from motia.sampler import sample
    from motia.utils import peak_memory_bytes
    from motia.video import unit_frames
    from motia.windows import temporal_windows

    t_start = time.perf_counter()
    s = cfg.sample
    device = components.device
    check_window(cfg, components.unet)
    source = clip.frames  # (F, 3, h_src, w_src) uint8 (or float in [0, 1]), CPU: float slices by unit_frames
    num_frames = int(source.shape[0])
    canvas = plan(cfg, int(source.shape[2]), int(source.shape[3]))
    vae_scale = 2 ** (len(components.vae.config.block_out_channels) - 1)
    h, w = canvas.latent_size(vae_scale)
    windows = temporal_windows(num_frames, s.window.frames, s.window.stride)
    work = work_estimate(cfg, num_frames, canvas)
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(cfg.seed)
    prompt = resolve_prompt(cfg, clip)
    show = progress and _is_main_process()

    # --- pixels other frames show (nothing when off or when no pixel can be propagated)
    t_prop = time.perf_counter()
    prop = propagation
    if prop is None:
        prop = propagate_clip(cfg, source, canvas, progress=show)
    elif prop.canvas != canvas or prop.num_frames != num_frames:
        raise ValueError(f"propagation is for {prop.num_frames} frames on {prop.canvas}, this run has "
                         f"{num_frames} on {canvas}")
    t_prop = time.perf_counter() - t_prop
    filled = prop.filled
    if filled:
        log.info("propagation: %s", prop.note)

    # --- conditions: text once, known latents chunk by chunk, control frames per window (lazily)
    text = encode_prompt(components, prompt, s.negative_prompt)
    chunk = s.decode_chunk
    if filled:  # per frame: source + propagated pixels
        known_latents, latent_mask = encode_known_frames(components.vae, source, canvas, chunk, prop)
        latent_mask = latent_mask.to(device)  # (1, 1, F, h, w), 1 = known
    else:
        known_latents = encode_known(components.vae, source, canvas, chunk)  # (F, 4, h, w)
        latent_mask = latent_known_mask(canvas, vae_scale, device=device)  # (h, w), 1 = known
    known_latents = known_latents.permute(1, 0, 2, 3).unsqueeze(0).to(device)  # (1, 4, F, h, w)
    pixel_known = known_mask(canvas)  # (H, W)

    def control(start: int, end: int) -> torch.Tensor:  # (f, 3, H, W), generated pixels = -1
        if filled:
            return prop.control(unit_frames(source[start:end]), range(start, end))
        return make_control(place_on_canvas(unit_frames(source[start:end]), canvas, 0.0), pixel_known)

    # --- schedule and initial noise (a private scheduler copy: the shared one keeps its state)
    scheduler = type(components.scheduler).from_config(components.scheduler.config)
    scheduler.set_timesteps(s.steps)
    shape = (1, components.unet.config.in_channels, num_frames, h, w)  # (1, 4, F, h, w)
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    latents = noise.to(device) * scheduler.init_noise_sigma
    t_encoded = time.perf_counter()

    moves, calls = work["model_moves"], work["unet_calls"]
    regret_moves = moves - s.steps
    log.info(
        "outpaint: %d frames, canvas %dx%d (W x H, latent %dx%d), %d window(s) of %d (stride %d), %d steps%s, "
        "%d UNet calls (%d guided)", num_frames, canvas.width, canvas.height, w, h, len(windows),
        min(s.window.frames, num_frames), s.window.stride, s.steps,
        f" + {regret_moves} noise-regret re-runs" if regret_moves else "", calls, work["guided_calls"],
    )
    with contextlib.ExitStack() as stack:
        if lora_path is not None:
            _attach_lora(cfg, components, canvas, lora_path, stack)
        attention = _window_attention(cfg, components, canvas, stack)
        rau = _rau(cfg, components, stack)
        _speed_switches(cfg, components, stack)
        model = make_denoiser(components, text, control, s.controlnet_scale)
        # The bar counts denoising steps (regret re-runs included, as its label says); a step
        # runs the model once per temporal window, shown in the postfix with the calls so far.
        label = f"outpaint ({s.steps} steps + {regret_moves} regret)" if regret_moves else "outpaint"
        bar = stack.enter_context(tqdm(total=moves, disable=not show, desc=label, unit="step", leave=False))
        done_calls = 0

        def denoise(x, t, cond, window):
            nonlocal done_calls
            for handle in attention:  # shift the attention windows at every model move
                handle.set_step(cond["move"])
            if rau is not None:
                rau.set_active(active_at(cond["step"], s.steps, s.rau.fraction))
            eps = model(x, t, cond, window)
            done_calls += 1
            if show:
                bar.set_postfix_str(
                    f"window {(done_calls - 1) % len(windows) + 1}/{len(windows)}, model calls {done_calls}/{calls}"
                )
            return eps

        def on_move(i: int, total: int, x: torch.Tensor) -> None:
            bar.update()
            if callback is not None:
                callback({"step": i + 1, "total": total})

        latents = sample(
            denoise, latents, scheduler.timesteps, scheduler.alphas_cumprod,
            windows=windows, weights_kind=s.window.weights,
            guidance_scale=s.guidance_scale, guidance_steps=s.guidance_steps,
            known_latents=known_latents, known_mask=latent_mask,
            known_noise=noise if s.known_noise == "fixed" else None,  # the initial noise, as the reference
            regret_jump=s.regret.jump, regret_repeats=s.regret.repeats, regret_fraction=s.regret.fraction,
            final_alpha_cumprod=scheduler.final_alpha_cumprod, generator=generator,
            callback=on_move, observe=observe, progress=False,
        )  # (1, 4, F, h, w)
    del known_latents, noise
    t_sampled = time.perf_counter()
    peak_sampling = peak_memory_bytes(device)

    # --- decode chunk by chunk, paste the source pixels back
    paste = cfg.output.paste if paste is None else paste
    feather = feather_pixels(cfg.output.feather, canvas)
    kept = []
    start = 0
    t_sink = 0.0
    for pixels in decode_latents(components.vae, latents, chunk):  # (n, 3, H, W)
        end = start + pixels.shape[0]
        if paste and filled:
            frames_here, src = range(start, end), unit_frames(source[start:end])
            pixels = paste_known(pixels, src, canvas, feather, known=prop.known(frames_here),
                                 known_image=prop.image(src, frames_here))
        elif paste:
            pixels = paste_known(pixels, unit_frames(source[start:end]), canvas, feather)
        if sink is not None:
            t0 = time.perf_counter()
            sink(pixels)
            t_sink += time.perf_counter() - t0
        else:
            kept.append(pixels)
        start = end
    frames = torch.cat(kept) if kept else None  # (F, 3, H, W)
    t_end = time.perf_counter()
    timings = {"propagate": t_prop, "encode": t_encoded - t_start - t_prop, "sample": t_sampled - t_encoded,
               "decode": t_end - t_sampled - t_sink, "total": t_end - t_start}
    if sink is not None:
        timings["output"] = t_sink
    return OutpaintResult(
        frames=frames,
        latents=latents.cpu(),
        canvas=canvas,
        timings=timings,
        work=work,
        peak_memory={"sampling": peak_sampling, "total": peak_memory_bytes(device)},
        prompt=prompt,
        propagation=prop,
    )


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
    with OutputWriter(cfg, clip, result.canvas, out_canvas, run_dir, native, propagation=result.propagation) as writer:
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
    models=None, callback: Callable[[dict], None] | None = None,
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
    """
    from motia.runs import lock_run_folder

    with lock_run_folder(cfg.run_dir(), enabled=_is_main_process()):
        return _outpaint_locked(cfg, lora, overwrite=overwrite, progress=progress, models=models, callback=callback)


def _outpaint_locked(cfg: JobConfig, lora, *, overwrite: bool, progress: bool, models, callback) -> dict:
    """``outpaint_from_config`` with its run folder locked."""
    from motia.config import dump_config
    from motia.known import check_propagation, propagate_clip
    from motia.lora import read_lora_metadata
    from motia.models import load_components
    from motia.output import OutputWriter, check_output_space
    from motia.planning import load_clip, native_size, plan, plan_output, upsampling_warning
    from motia.runs import check_outpaint_folder
    from motia.utils import peak_memory_bytes

    t0 = time.perf_counter()
    clip = load_clip(cfg)
    canvas = plan(cfg, clip.height, clip.width)  # geometry errors before the models load
    native = native_size(clip)
    out_canvas = plan_output(cfg, canvas, *native)
    warning = upsampling_warning(cfg, clip.height, native[0])
    if warning:
        log.warning(warning)
    meta = read_lora_metadata(lora) if lora is not None else None
    prompt = resolve_prompt(cfg, clip)
    if prompt != cfg.prompt:
        cfg = cfg.model_copy(update={"prompt": prompt})  # config.yaml records the prompt actually used
    run_dir = cfg.run_dir()
    replaced = check_outpaint_folder(run_dir, cfg, lora, overwrite)
    check_output_space(cfg, clip, out_canvas, run_dir, freed=replaced)
    if meta is not None:
        check_adapter_fits(meta, cfg, clip, lora)
    check_propagation(cfg)
    # Propagation needs no model: it runs (numpy and OpenCV, which release the GIL) while the
    # models load. If loading fails, or Ctrl-C comes while loading or waiting, it is told to
    # stop at its next frame (else leaving the pool would wait for the whole clip).
    cancel = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="motia-propagate") as pool:
        pending = pool.submit(propagate_clip, cfg, clip.frames, canvas, cancel=cancel)
        try:
            if models is None:
                components = load_components(cfg.models, progress=progress)
            else:
                components = models.get(cfg.models, progress=progress)
            t_loaded = time.perf_counter()
            if not pending.done():
                log.info("models loaded; waiting for the pixel propagation (%d frames)", clip.num_frames)
            propagation = pending.result()
        except BaseException:
            cancel.set()
            raise
    t_propagated = time.perf_counter()
    # --overwrite of another config's run: none of its files may stay beside ours. Removed
    # before any new output exists, so nothing this run writes can be taken for the old one's.
    for path in replaced:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    generator = torch.Generator("cpu").manual_seed(cfg.seed)
    # The outputs are written as the frames are decoded, pasted at the output scale.
    with OutputWriter(cfg, clip, canvas, out_canvas, run_dir, native, propagation=propagation) as writer:
        result = outpaint(cfg, components, clip, lora_path=lora, generator=generator, progress=progress,
                          sink=writer, paste=False, callback=callback, propagation=propagation)
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
        "windows": result.work["windows"],
        "unet_calls": result.work["unet_calls"],
        "work": result.work,
        "prompt": result.prompt,
        "seed": cfg.seed,
        "lora": str(Path(lora).resolve()) if lora is not None else None,
        "models": components.sources,
        # wait_s: how long sampling waited for the propagation after the models had loaded
        "propagation": {**propagation.summary(), "coverage_output": writer.propagation_coverage,
                        "wait_s": round(t_propagated - t_loaded, 3)},
        "outputs": outputs,
    }
    _write_json(run_dir / SUMMARY_FILE, summary)
    log.info("outpaint: wrote %s", run_dir)
    return summary
