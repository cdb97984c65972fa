"""Glue between a job config and the stages: `motia info`, preview, the model cache, adapt-then-outpaint, demo.

The stages (adapt, outpaint) take tensors and configs; the clip, canvas and work
estimate a config describes are ``motia.planning``'s. This module sits on top of
the stages: the CLI, app, batch and evaluation import it, no stage does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

from .config import JobConfig
from .errors import ConfigError
from .planning import (load_clip, plan, plan_output, plan_shots, plan_stages, shots_argument, upsampling_warning,
                       video_path, wxh)

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def describe_canvas(canvas) -> dict:
    """The canvas for `motia info`: sizes as W x H, where the source sits, what each side adds."""
    top, left, _, _ = canvas.box
    return {"size": wxh(canvas.width, canvas.height), "source": wxh(canvas.src_w, canvas.src_h),
            "source_at": f"x={left}, y={top} (left, top)", "expansion_px": canvas.expansion}  # fmt: skip


def describe_speedups(cfg: JobConfig, canvas) -> dict:
    """Whether window attention and RAU-Net run for this canvas, and why."""
    from .attention import should_enable

    wa, rau = cfg.sample.window_attention, cfg.sample.rau
    on = should_enable(wa.enabled, canvas.height, canvas.width)
    why = (f"auto, canvas long side {max(canvas.height, canvas.width)} px" if wa.enabled == "auto"
           else f"sample.window_attention.enabled={str(wa.enabled).lower()}")  # fmt: skip
    return {
        "window_attention": f"{'on' if on else 'off'} ({why})",
        "rau": (f"on for the first {rau.fraction:.0%} of the steps" if rau.enabled else "off")
        + f" (sample.rau.enabled={str(rau.enabled).lower()})",
    }


def describe_stages(cfg: JobConfig, plan) -> dict:
    """`motia info`'s stages: each one's canvas, scale, tiles and UNet calls; the refine's noise level and steps."""
    from .planning import refine_schedule

    coarse = plan.coarse
    out = {}
    for st in plan.stages:
        c, work = st.canvas, st.work
        row = {"canvas": wxh(c.width, c.height), "source_at_scale": wxh(c.src_w, c.src_h)}
        if st.tiled:
            t = cfg.sample.tiles
            row["tiles"] = (f"{len(st.tiles)} of {t.size} px (overlap {t.overlap} px, {t.weights} weights); "
                            f"{work['skipped_boxes']} window x tile boxes inside the source are skipped")
        else:
            row["tiles"] = "1 (the whole canvas)"
        row["unet_calls"] = work["unet_calls"]
        if st.name == "refine":
            first, length = refine_schedule(cfg)
            r = cfg.outpaint.refine
            row["scale"] = f"{c.src_h / coarse.canvas.src_h:.2f}x the coarse canvas"
            row["steps"] = f"{length - first} of {length} (strength {r.strength}, SDEdit from timestep index {first})"
        out[st.name] = row
    if plan.refine is None:
        r = cfg.outpaint.refine
        out["refine"] = (f"off (outpaint.refine.mode={r.mode}"
                         + (f": the output is within {r.auto_ratio}x the coarse scale)" if r.mode == "auto" else
                            ", or strength 0)"))  # fmt: skip
    return out


def describe_shots(cfg: JobConfig, shots: list[int], num_frames: int) -> dict:
    """The shots for `motia info`: how they were found, and each one's first frame and length."""
    from .shots import describe_shots as each

    setting = cfg.video.shots
    how = {"auto": "detected (video.shots: auto)", "off": "one shot (video.shots: off)"}.get(setting, "as listed in video.shots")
    return {"count": len(shots), "found": how, "shots": each(shots, num_frames)}


def describe(cfg: JobConfig, num_processes: int | None = None) -> str:
    """`motia info`: the resolved config, device, source, canvas, shots, stages, speed-ups and work, as readable YAML.

    Device and precision go through the checks outpainting makes, so a CUDA setting on a
    machine without one fails here with the same one-line error. ``processes`` says how
    each step's model calls would split over ``num_processes`` processes (default: as many
    as a launcher started, else 1; ``motia.shard``).
    """
    from .models import resolve_device, resolve_dtype
    from .video import probe_video

    device = resolve_device(cfg.models.device)
    dtype = resolve_dtype(cfg.models.dtype, device)
    names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    dtype_name = str(dtype).removeprefix("torch.")
    out = {"config": cfg.to_dict(), "runs_on": {"device": str(device), "dtype": names.get(dtype_name, dtype_name)}}
    try:
        path = video_path(cfg)
    except ConfigError:
        path = None
    if path is None:
        out["source"] = "video.path is not set: add video.path=CLIP to see the source, canvas and work"
        out["schedule"] = schedule_info(cfg)
        return yaml.safe_dump(out, sort_keys=False, width=1000)
    clip = load_clip(cfg)
    info = probe_video(path)
    f, _, h, w = clip.frames.shape
    canvas = plan(cfg, h, w)
    out["source"] = {"path": str(path), "frames_in_file": info.num_frames, "fps": info.fps,
                     "size_in_file": wxh(info.width, info.height), "audio": info.has_audio,
                     "frames_used": f, "size_used": wxh(w, h)}  # fmt: skip
    out["canvas"] = describe_canvas(canvas)
    written = plan_output(cfg, canvas, info.height, info.width)
    o = cfg.output
    scale = "delivery" if o.height or o.width else ("the model's" if o.resolution == "model" else "native")
    from .planning import refines

    why = ("outpaint.refine.coarse_size: the coarse stage" if refines(cfg, info.height, info.width)
           else "video.size")
    out["canvas_model"] = f"{wxh(canvas.width, canvas.height)}, {why}"
    out["canvas_output"] = f"{wxh(written.width, written.height)}, {scale} scale"
    warning = upsampling_warning(cfg, h, info.height)
    if warning:
        out["warnings"] = [warning]
    shots = plan_shots(cfg, clip)
    out["shots"] = describe_shots(cfg, shots, f)
    out["speedups"] = describe_speedups(cfg, canvas)
    from .known import describe_propagation

    out["propagation"] = describe_propagation(cfg, clip.frames, canvas, **shots_argument(shots))
    stages = plan_stages(cfg, clip, shots=shots)
    out["stages"] = describe_stages(cfg, stages)
    out["work"] = stages.coarse.work if stages.refine is None else {st.name: st.work for st in stages.stages}
    out["processes"] = describe_processes({st.name: st.work for st in stages.stages}, num_processes)
    out["schedule"] = schedule_info(cfg)
    return yaml.safe_dump(out, sort_keys=False, width=1000)


def describe_processes(stages: dict[str, dict], num_processes: int | None = None) -> dict:
    """How `motia outpaint`/`run` under ``accelerate launch --num_processes N`` would split each step's calls
    (``stages``: each sampling stage's ``work_estimate``)."""
    from .shard import describe_split, launched_processes

    world = num_processes or launched_processes()
    out = describe_split([(name, w["unet_calls"] // max(1, w["model_moves"]), w["model_moves"])
                          for name, w in stages.items()], world)  # fmt: skip
    if world == 1:
        out["note"] = "accelerate launch --num_processes N splits them over N processes (motia info --num_processes N)"
    return out


PREVIEW_MIN_SIDE = 512  # previews of smaller canvases are scaled up (nearest neighbour) to this long side


def _overlay_color(heat):
    """The preview's tint for LoRA strength ``heat`` in [0, 1]: red = full strength, blue = none."""
    import torch

    return torch.stack([heat, 0.2 * torch.ones_like(heat), 1 - heat])  # (3, ...)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


PROPAGATED_RGB = (0.0, 1.0, 1.0)  # the preview's wash over pixels other frames show (cyan)
PROPAGATED_WASH = 0.3  # how much of it


def _legend(width: int, k: float, lowest: float, propagated: str | None = None, tiles: str | None = None):
    """A strip explaining the preview's colours: the known box, the propagated pixels, the tint scale of the insertion map."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    lines = [
        "green box: the source, kept as it is; outside: generated",
        f"tint: LoRA strength exp(-K d/D), K={k:g}: red 1.0 to blue 0 (lowest here {lowest:.2f})",
    ]
    if propagated:
        lines.insert(1, propagated)
    if tiles:
        lines.append(tiles)
    size = 14
    font = _font(size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while size > 8 and max(draw.textlength(t, font=font) for t in lines) > width - 16:
        size -= 1
        font = _font(size)
    bar_h, line_h = 14, size + 6
    strip = Image.new("RGB", (width, 12 + bar_h + 16 + line_h * len(lines)), (24, 24, 24))
    ramp = torch.linspace(1, 0, width - 16)  # strength along the bar, full at the left
    bar = 0.65 * _overlay_color(ramp)  # mixed as the tint over the (black) generated area
    arr = (bar.clamp(0, 1).T.numpy() * 255).round().astype(np.uint8)  # (width - 16, 3)
    strip.paste(Image.fromarray(np.repeat(arr[None], bar_h, axis=0)), (8, 8))
    draw = ImageDraw.Draw(strip)
    small = _font(max(8, size - 2))
    draw.text((8, 8 + bar_h + 2), "1.0", fill=(230, 230, 230), font=small)
    draw.text((width - 8, 8 + bar_h + 2), "0", fill=(230, 230, 230), font=small, anchor="ra")
    for i, text in enumerate(lines):
        draw.text((8, 12 + bar_h + 16 + i * line_h), text, fill=(230, 230, 230), font=font)
    return strip


def schedule_info(cfg: JobConfig) -> dict:
    """The noise schedule both stages will use (``models.schedule``), as `motia info` shows it.

    ``animatediff`` needs no model files; ``base`` reads only the base's scheduler config.
    """
    from .errors import MotiaError
    from .models import describe_schedule, load_components

    try:
        scheduler = load_components(cfg.models, parts=("scheduler",), device="cpu", dtype="fp32").scheduler
    except MotiaError as e:
        return {"name": cfg.models.schedule, "note": f"the base's scheduler config is not readable here ({e})"}
    return describe_schedule(scheduler, cfg.models.schedule, cfg.sample.steps)


def _propagated_middle(cfg: JobConfig, frames, canvas, t: int, shots: list[int]):
    """Frame t's propagated pixels on the canvas (``motia.propagate.Propagated``), or None when nothing runs.

    ``shots``: the clip's shots (``planning.plan_shots``); motion is linked within a shot only.
    """
    from .known import frame_reader, skip_reason

    if skip_reason(cfg, canvas, int(frames.shape[0])) is not None:
        return None
    from .propagate import estimate_motion, params_from_config, propagate_frame, reachable

    motion_params, params = params_from_config(cfg.outpaint.propagation)
    read = frame_reader(frames)
    motion = estimate_motion(read, int(frames.shape[0]), motion_params, **shots_argument(shots))
    reach = reachable(motion, canvas, params)
    if not reach[t]:
        return None
    return propagate_frame(t, read, motion, canvas, params)


def preview(cfg: JobConfig, out: str | None = None) -> Path:
    """`motia preview`: a PNG of the canvas: source, known box, propagated pixels, insertion-map tint, and a legend.

    With ``outpaint.propagate`` on (or auto, and the camera moves), the middle frame's pixels
    that other frames show are drawn as they will be kept, under a light cyan wash.
    Canvases smaller than ``PREVIEW_MIN_SIDE`` on their long side are scaled up by a
    whole factor, nearest neighbour, so every canvas pixel stays one sharp block.
    """
    import math

    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from .geometry import insertion_map, place_on_canvas
    from .utils import atomic_path
    from .video import unit_frames

    clip = load_clip(cfg)
    mid = len(clip.frames) // 2
    frame = unit_frames(clip.frames[mid : mid + 1])
    canvas = plan(cfg, frame.shape[-2], frame.shape[-1])
    img = place_on_canvas(frame, canvas, fill=0.0)[0]  # (3, H, W)
    heat = insertion_map(canvas, cfg.sample.insertion.k)  # (H, W), 1 on the known box
    top, left, bottom, right = canvas.box
    known = torch.zeros_like(heat, dtype=torch.bool)
    known[top:bottom, left:right] = True
    blended = torch.where(known, img, 0.35 * img + 0.65 * _overlay_color(heat))
    shots = plan_shots(cfg, clip)
    prop = _propagated_middle(cfg, clip.frames, canvas, mid, shots)
    note = None
    if prop is not None:
        from .propagate import frame_coverage

        mask = torch.from_numpy(prop.mask)  # (H, W) propagated pixels
        seen = torch.from_numpy(prop.image).permute(2, 0, 1).float() / 255.0  # (3, H, W) from uint8
        wash = torch.tensor(PROPAGATED_RGB).view(3, 1, 1)
        blended = torch.where(mask, (1 - PROPAGATED_WASH) * seen + PROPAGATED_WASH * wash, blended)
        note = (f"cyan wash: pixels other frames show, kept like the source "
                f"({frame_coverage(prop.mask, canvas)['all']:.0%} of the new region in this frame)")
    arr = (blended.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    scale = max(1, math.ceil(PREVIEW_MIN_SIDE / max(canvas.height, canvas.width)))
    pic = Image.fromarray(arr).resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
    ImageDraw.Draw(pic).rectangle([left * scale, top * scale, right * scale - 1, bottom * scale - 1],
                                  outline=(0, 255, 0), width=max(1, scale // 2))  # fmt: skip
    tiles_note = _draw_tiles(pic, plan_stages(cfg, clip, shots=shots), canvas, scale)
    width = max(pic.width, PREVIEW_MIN_SIDE)  # a narrow (portrait) canvas still gets a readable legend
    legend = _legend(width, cfg.sample.insertion.k, float(heat.min()), note, tiles_note)
    sheet = Image.new("RGB", (width, pic.height + legend.height), (24, 24, 24))
    sheet.paste(pic, ((width - pic.width) // 2, 0))
    sheet.paste(legend, (0, pic.height))
    path = Path(out) if out else cfg.run_dir() / "preview.png"
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


TILE_RGB = {"coarse": (255, 255, 255), "refine": (255, 210, 0)}


def _tile_size(stage) -> str:
    """A stage's tile size as people read it: the largest tile's W x H in the stage's pixels."""
    h, w = stage.box
    return f"{w}x{h}"


def _draw_tiles(pic, plan, canvas, scale: int) -> str | None:
    """Outline each tiled stage's spatial tiles on the preview (a refine stage's mapped box onto box); the legend line."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(pic)
    notes = []
    for st in plan.stages:
        if not st.tiled:
            continue
        c = st.canvas
        fy, fx = canvas.src_h / c.src_h, canvas.src_w / c.src_w  # stage pixels -> preview canvas pixels
        for top, left, bottom, right in st.tiles:
            y0 = canvas.top + (top * st.scale - c.top) * fy
            y1 = canvas.top + (bottom * st.scale - c.top) * fy
            x0 = canvas.left + (left * st.scale - c.left) * fx
            x1 = canvas.left + (right * st.scale - c.left) * fx
            draw.rectangle([round(x0 * scale), round(y0 * scale), round(x1 * scale) - 1, round(y1 * scale) - 1],
                           outline=TILE_RGB[st.name], width=1)
        colour = "white" if st.name == "coarse" else "yellow"
        notes.append(f"{colour}: {st.name} tiles ({len(st.tiles)} of {_tile_size(st)} px on its "
                     f"{c.width}x{c.height} canvas)")
    return "; ".join(notes) or None


class ModelCache:
    """One loaded model set per process, reused by the stages while ``models`` and the device stay the same.

    Adapting and then outpainting (``motia run``), or many clips in a batch or an
    evaluation, would otherwise load SD1.5 + ControlNet + motion module again for
    every stage. The stages leave the models as they found them (outpainting undoes
    its LoRA, hooks and switches; ``motia.adapt.release`` undoes training's), so a
    reused set computes what a freshly loaded one does. Another ``models`` section
    or device drops the held set before loading the new one.
    """

    def __init__(self):
        self._key = None
        self._components = None
        self.loads = 0  # how many times models were actually loaded

    def get(self, models, device=None, progress: bool = False):
        from .models import load_components, resolve_device

        dev = resolve_device(device if device is not None else models.device)
        if dev.type == "cuda" and dev.index is None:
            import torch

            dev = torch.device("cuda", torch.cuda.current_device())
        key = (models.model_dump_json(), str(dev))
        if key != self._key:
            self._components = self._key = None  # free the old set before loading the next
            self._components = load_components(models, device=dev, progress=progress)
            self._key = key
            self.loads += 1
        return self._components

    def clear(self) -> None:
        """Drop the held set (after a failure left it in an unknown state, say)."""
        self._components = self._key = None


def adapt_and_outpaint(cfg: JobConfig, models: ModelCache | None = None, overwrite: bool = False,
                       sharded: bool = False) -> dict:  # fmt: skip
    """Adapt the clip's LoRA, then outpaint with it, loading the models once; returns the outpainting summary.

    Both output folders are checked (``motia.runs``) before the adaptation starts, so a
    run folder of another config is refused before any work rather than after it. The run
    folder is locked from the first check to the last output (``runs.lock_run_folder``). Under
    ``accelerate launch --num_processes N`` the adaptation trains data-parallel and, with
    ``sharded``, the outpainting splits each step's model calls over the same processes
    (``motia.outpaint.outpaint_from_config``), on the models the adaptation left on each device.
    """
    from .adapt import ADAPTER_FILE, adapt_from_config, adapter_dir, check_adapter_dir
    from .caption import resolve_prompt
    from .outpaint import outpaint_from_config
    from .runs import check_outpaint_folder, lock_run_folder, main_process

    with lock_run_folder(cfg.run_dir(), enabled=main_process()):
        if cfg.prompt == "auto":  # caption once: both stages and both folder checks use the caption
            cfg = cfg.model_copy(update={"prompt": resolve_prompt(cfg, load_clip(cfg))})
        check_adapter_dir(cfg, overwrite=overwrite)
        check_outpaint_folder(cfg.run_dir(), cfg, adapter_dir(cfg) / ADAPTER_FILE, overwrite)
        models = models if models is not None else ModelCache()
        adapter = adapt_from_config(cfg, overwrite=overwrite, models=models)
        return outpaint_from_config(cfg, lora=str(adapter), overwrite=overwrite, models=models, sharded=sharded)


def demo(overrides: Sequence[str] = (), overwrite: bool = False) -> dict:
    """`motia demo` / `make demo`: the whole job on the tiny bundle and the bundled clip, on CPU.

    Running it again with the same overrides replaces its outputs (same config, same result);
    so does running it after other overrides or an upgrade, as long as the folders hold
    demo runs only (``runs.only_demo_runs``), with a line saying so.
    """
    from .adapt import adapter_dir
    from .config import load_config
    from .runs import only_demo_runs

    cfg = load_config(REPO_CONFIGS / "tiny.yaml", list(overrides))
    if not overwrite and only_demo_runs([cfg.run_dir(), adapter_dir(cfg)]):
        print(f"demo: replacing the earlier demo outputs in {cfg.run_dir()}")
        overwrite = True
    summary = adapt_and_outpaint(cfg, overwrite=overwrite)
    print(f"demo finished: outputs in {cfg.run_dir().resolve()}")
    for k, v in summary.get("outputs", {}).items():
        print(f"  {k}: {v}")
    return summary


