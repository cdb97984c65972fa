"""What a job config describes before any model runs: the clip, the model's canvas, the output canvas, the work.

Both stages (adaptation reads the clip; outpainting plans its canvases and counts
its work), the batch runner, the app and `motia info` take these from here, the
clip's shots too (``plan_shots``), so every stage treats the same cuts. It imports
only lower modules (config, geometry, video, shots, sampler, windows), never a stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import JobConfig
from .errors import ConfigError, InputError


@dataclass
class StagePlan:
    """One sampling stage, known before it runs: canvas, windows, tiles, schedule, work (``motia.planning``)."""

    name: str  # "coarse" or "refine"
    canvas: object  # motia.geometry.Canvas
    windows: list  # [(start, end)] temporal windows
    tiles: list  # [(top, left, bottom, right)] in latent cells; one covering the canvas = untiled
    first_step: int  # index into the ``steps``-long DDIM schedule where the stage starts
    steps: int  # the schedule's length
    work: dict  # planning.work_estimate
    shots: list = dataclasses.field(default_factory=lambda: [0])  # first frames of the shots (no window crosses a cut)

    @property
    def tiled(self) -> bool:
        h, w = self.canvas.latent_size(self.scale)
        return [tuple(t) for t in self.tiles] != [(0, 0, h, w)]

    @property
    def box(self) -> tuple[int, int]:
        """(H, W) pixels of the largest box one model call sees: the largest tile (the canvas when untiled)."""
        return (max(b - t for t, _, b, _ in self.tiles) * self.scale,
                max(r - left for _, left, _, r in self.tiles) * self.scale)

    @property
    def scale(self) -> int:
        return self.work.get("vae_scale", 8)

    def describe(self) -> dict:
        """For summary.json: size, tiles, calls (seconds are added by the run)."""
        c = self.canvas
        return {"canvas": f"{c.width}x{c.height} (W x H)", "latent": self.work["latent"], "tiles": len(self.tiles),
                "windows": len(self.windows), "steps": self.work["steps"], "unet_calls": self.work["unet_calls"],
                "skipped_boxes": self.work["skipped_boxes"]}


@dataclass
class OutpaintPlan:
    """The run's stages: the coarse one, and the refine one when ``outpaint.refine`` is on for this clip."""

    num_frames: int
    coarse: StagePlan
    refine: StagePlan | None = None

    @property
    def stages(self) -> list[StagePlan]:
        return [self.coarse] + ([self.refine] if self.refine is not None else [])

    @property
    def final(self) -> StagePlan:
        return self.stages[-1]


def plan_stages(cfg: JobConfig, clip, scale: int = 8, shots: Sequence[int] | None = None) -> OutpaintPlan:
    """Every sampling stage of outpainting ``clip``: the coarse one, and the refine one when it runs.

    ``clip`` is the ``motia.video.Clip`` at the models' scale (``load_clip``); the native size
    is probed from its file (or taken as the clip's own when it was built in memory).
    ``shots`` (``plan_shots``, default: resolved here) split the temporal windows at the cuts.
    """
    from .windows import shot_windows

    s = cfg.sample
    num_frames = clip.num_frames
    shots = plan_shots(cfg, clip) if shots is None else list(shots)
    canvas = plan(cfg, clip.height, clip.width)
    windows = shot_windows(shots, num_frames, s.window.frames, s.window.stride)
    tiles = plan_tiles(cfg, canvas, scale)
    coarse = StagePlan("coarse", canvas, windows, tiles, 0, s.steps,
                       work_estimate(cfg, num_frames, canvas, shots, tiles=tiles, scale=scale), shots)
    refine_canvas = None
    if cfg.outpaint.refine.mode != "off":
        # a clip built in memory (no file behind it) is its own native size
        native = native_size(clip) if clip.source is not None and Path(clip.source).exists() else (clip.height,
                                                                                                     clip.width)
        refine_canvas = plan_refine(cfg, canvas, *native, plan_output(cfg, canvas, *native))
    if refine_canvas is None:
        return OutpaintPlan(num_frames, coarse)
    first, length = refine_schedule(cfg)
    rtiles = plan_tiles(cfg, refine_canvas, scale)
    refine = StagePlan("refine", refine_canvas, windows, rtiles, first, length,
                       work_estimate(cfg, num_frames, refine_canvas, shots, tiles=rtiles, stage="refine", scale=scale),
                       shots)
    return OutpaintPlan(num_frames, coarse, refine)


def video_path(cfg: JobConfig) -> Path:
    """The clip's path, with ``sample:clip`` resolved to the bundled sample."""
    p = cfg.video.path
    if not p:
        raise ConfigError("video.path is not set; give it in the config or as an override: video.path=clip.mp4")
    if p.startswith("sample:"):
        from .video import sample_clip_path

        return sample_clip_path()
    path = Path(p)
    if not path.exists():
        raise InputError(f"video.path: {path} does not exist")
    return path


def load_clip(cfg: JobConfig):
    """Read the configured frames of the clip (resized, aspect kept) at the models' scale (``model_size``)."""
    from .video import probe_video, read_video

    v = cfg.video
    path = video_path(cfg)
    size, resize = v.size, v.resize
    if cfg.outpaint.refine.mode != "off":
        info = probe_video(path)
        size, resize = model_size(cfg, info.height, info.width)
    return read_video(
        path, start=v.start, max_frames=v.max_frames, stride=v.stride,
        size=None if resize == "none" else size, resize=resize,
    )


def refines(cfg: JobConfig, native_h: int, native_w: int) -> bool:
    """Whether this run refines (``outpaint.refine``): on, off, or auto = when the output's canvas is more than
    ``auto_ratio`` times the coarse one (short sides), i.e. the new regions would be upsampled that much."""
    r = cfg.outpaint.refine
    if r.mode != "auto":
        return r.mode == "on"
    explicit = cfg.output.height is not None or cfg.output.width is not None
    if cfg.output.resolution == "model" and not explicit:
        return False  # written at the models' scale: nothing to refine up to
    out = _native_canvas(cfg, native_h, native_w)
    if explicit:
        out = plan_output(cfg, out, native_h, native_w)
    return min(out.height, out.width) > r.auto_ratio * r.coarse_size


def model_size(cfg: JobConfig, native_h: int, native_w: int) -> tuple[int | None, str]:
    """(``video.size``, ``video.resize``) the clip is read at: the config's, or with refine the size that makes
    the coarse canvas's short side ``outpaint.refine.coarse_size`` (the scale SD1.5 was trained at)."""
    v, r = cfg.video, cfg.outpaint.refine
    if not refines(cfg, native_h, native_w):
        return v.size, v.resize
    canvas = _native_canvas(cfg, native_h, native_w)
    factor = r.coarse_size / min(canvas.height, canvas.width)
    return max(8, round(min(native_h, native_w) * factor)), "short_side"


def _native_canvas(cfg: JobConfig, native_h: int, native_w: int):
    """The outpaint section's canvas around the source at its own size (a target size read at the model's scale)."""
    from .geometry import plan_canvas

    o = cfg.outpaint
    if o.target_size:  # given in model pixels: with refine, at the coarse scale; scale by the short sides
        short = min(native_h, native_w) / (cfg.video.size or min(native_h, native_w))
        target = [round(v * short) for v in o.target_size]
        return plan_canvas(native_h, native_w, target_size=[max(t, n) for t, n in zip(target, (native_h, native_w))],
                           multiple=2)
    return plan_canvas(native_h, native_w, left=o.left, right=o.right, top=o.top, bottom=o.bottom, aspect=o.aspect,
                       multiple=2)


def plan_refine(cfg: JobConfig, canvas, native_h: int, native_w: int, out_canvas=None):
    """The refine stage's canvas (multiples of 8), or None when this run does not refine (or runs no refine step).

    Its scale: the output's (``refine.scale: output``; the native one, or a delivery size's),
    or ``refine.scale`` times the coarse ``canvas``'s; capped so that the long side is at most
    ``refine.max_side``. The source sits at that scale in it, the expansion planned as the
    outpaint section says (``plan_output``'s rules, rounded to multiples of 8).
    """
    first, length = refine_schedule(cfg)
    if not refines(cfg, native_h, native_w) or first >= length:  # strength 0: the coarse result as it is
        return None
    r = cfg.outpaint.refine
    out = out_canvas if out_canvas is not None else plan_output(cfg, canvas, native_h, native_w)
    if r.scale == "output":  # the output's own source size: the written pixels, generated at that detail
        src_h, src_w = out.src_h, out.src_w
    else:
        src_h, src_w = canvas.src_h * float(r.scale), canvas.src_w * float(r.scale)
    long_side = max(canvas.height, canvas.width) * src_h / canvas.src_h  # about, before rounding to 8
    if long_side > r.max_side:
        shrink = r.max_side / long_side
        src_h, src_w = src_h * shrink, src_w * shrink
    return _plan_like(cfg, canvas, max(1, round(src_h)), max(1, round(src_w)), multiple=8)


def plan_shots(cfg: JobConfig, clip) -> list[int]:
    """The clip's shots as first frames ``[0, ...]`` under ``video.shots``: detected (auto), one (off), or as listed.

    A listed first frame beyond the clip's frames is a ConfigError naming ``video.shots``.
    """
    from .shots import check_shots, detect_shots

    setting = cfg.video.shots
    if setting == "off":
        return [0]
    if setting == "auto":
        return detect_shots(clip.frames, fps=clip.fps or 25.0)
    return check_shots(setting, clip.num_frames)


def shots_argument(shots: Sequence[int]) -> dict:
    """The ``shots=`` keyword for the pixel propagation (``motia.known``): given only when the clip has cuts.

    A one-shot clip calls the propagation exactly as before shots existed, so its links (and
    output) cannot change.
    """
    return {"shots": list(shots)} if len(shots) > 1 else {}


def plan(cfg: JobConfig, src_h: int, src_w: int):
    """The canvas for a source of this size under the config's ``outpaint`` section.

    ``outpaint.target_size`` is in pixels of the source at ``video.size`` (the models' scale
    without refine); a source read at another scale (with refine, at ``refine.coarse_size``) gets
    the target scaled with it, so the canvas has the same shape around it.
    """
    from .geometry import plan_canvas

    o, v = cfg.outpaint, cfg.video
    target = tuple(o.target_size) if o.target_size else None
    if target is not None and v.resize != "none" and v.size:
        side = min(src_h, src_w) if v.resize == "short_side" else max(src_h, src_w)
        if side != v.size:  # read at another scale than video.size
            factor = side / v.size
            target = (max(src_h, round(target[0] * factor)), max(src_w, round(target[1] * factor)))
            if target == (src_h, src_w):
                target = None if not any((o.left, o.right, o.top, o.bottom)) else target
    return plan_canvas(
        src_h, src_w, left=o.left, right=o.right, top=o.top, bottom=o.bottom,
        target_size=target, aspect=o.aspect, multiple=o.multiple,
    )


def native_size(clip) -> tuple[int, int]:
    """(H, W) of the clip's source frames at their own size (before ``video.size``)."""
    from .video import probe_video

    info = probe_video(clip.source)
    return info.height, info.width


def plan_output(cfg: JobConfig, canvas, native_h: int, native_w: int):
    """The canvas the outputs are written on (a ``motia.geometry.Canvas``), given the model's ``canvas``.

    * ``output.resolution: model``: the model's canvas itself.
    * ``native`` (default): the ``outpaint`` section planned around the source at its own
      ``native_h x native_w`` (a ``target_size``, given in model pixels, scaled to native),
      rounded up to even sizes (H.264) rather than the model's multiples of 8. The box
      is the native source, so its pixels are written untouched.
    * ``output.height`` and/or ``output.width`` (either resolution): that native canvas
      scaled once to a delivery size; one given, the other keeps the aspect (even).
      Both must match the canvas's aspect within 1%.
    """
    from .geometry import scale_canvas

    o = cfg.output
    explicit = o.height is not None or o.width is not None
    if o.resolution == "model" and not explicit:
        return canvas
    native = _plan_like(cfg, canvas, native_h, native_w, multiple=2)
    if not explicit:
        return native
    aspect = native.width / native.height
    if o.height is not None and o.width is not None:
        height, width = o.height, o.width
        if abs(width / height - aspect) > 0.01 * aspect:
            raise ConfigError(
                f"output.width={width} and output.height={height} ({width / height:.3f}:1) do not match the canvas "
                f"{native.width}x{native.height} ({aspect:.3f}:1); set only one of them (the other follows) "
                "or change outpaint.aspect"
            )
    elif o.height is not None:
        height, width = o.height, max(2, 2 * round(o.height * aspect / 2))
    else:
        height, width = max(2, 2 * round(o.width / aspect / 2)), o.width
    return scale_canvas(native, height, width)


def _plan_like(cfg: JobConfig, canvas, src_h: int, src_w: int, multiple: int):
    """The outpaint section planned around an ``src_h x src_w`` source at another scale than the model ``canvas``'s
    (a ``target_size``, given in model pixels, scaled by the source sizes)."""
    from .geometry import plan_canvas

    op, v = cfg.outpaint, cfg.video
    target = None
    if op.target_size:
        th, tw = op.target_size
        fy, fx = src_h / canvas.src_h, src_w / canvas.src_w  # the target's pixels are the model canvas's ...
        model = 1.0  # ... and the model's target is the one given
        side = min(canvas.src_h, canvas.src_w) if v.resize == "short_side" else max(canvas.src_h, canvas.src_w)
        if v.resize != "none" and v.size and side != v.size:  # ... unless that was read at another scale (refine)
            fy = fx = (min(src_h, src_w) if v.resize == "short_side" else max(src_h, src_w)) / v.size
            model = side / v.size
        # At least one pixel more wherever the model's canvas grew, so the mode stays valid.
        target = (max(round(th * fy), src_h + (round(th * model) > canvas.src_h)),
                  max(round(tw * fx), src_w + (round(tw * model) > canvas.src_w)))
    return plan_canvas(src_h, src_w, left=op.left, right=op.right, top=op.top, bottom=op.bottom,
                       target_size=target, aspect=op.aspect, multiple=multiple)


# ``sample.tiles.enabled: auto`` leaves a canvas whole up to this many tiles long: SD1.5 and the
# motion module handle 512 x 1024 and a little more whole (the paper's own canvas), and the
# reference attends over it all; beyond, or with a short side above a tile, it is tiled.
AUTO_TILES_LONG = 3


def plan_tiles(cfg: JobConfig, canvas, scale: int = 8) -> list[tuple[int, int, int, int]]:
    """The spatial tiles (latent cells) of a stage on ``canvas`` (``sample.tiles``): one covering it when off, or
    with ``auto`` for a canvas whose short side fits a tile and whose long side fits ``AUTO_TILES_LONG`` tiles
    (a coarse canvas at the models' scale); ``true`` tiles any canvas larger than a tile."""
    from .tiles import spatial_tiles, tile_cells, whole

    t = cfg.sample.tiles
    h, w = canvas.latent_size(scale)
    short, long = sorted((canvas.height, canvas.width))
    fits = short <= t.size and long <= (t.size if t.enabled is True else AUTO_TILES_LONG * t.size)
    if t.enabled is False or fits:
        return [whole(h, w)]
    return spatial_tiles(h, w, tile_cells(t.size, scale), tile_cells(t.overlap, scale))


def refine_schedule(cfg: JobConfig) -> tuple[int, int]:
    """(first step, schedule length) of the refine stage: diffusers img2img's rule, round(strength x steps) run."""
    r = cfg.outpaint.refine
    run = min(int(r.steps * r.strength), r.steps)
    return r.steps - run, r.steps


def work_estimate(cfg: JobConfig, num_frames: int, canvas, shots: Sequence[int] | None = None, *, tiles=None,
                  stage: str = "coarse", scale: int = 8) -> dict:
    """Frames, windows, tiles and model calls of one sampling stage, before it runs.

    ``shots`` (``plan_shots``; default one shot) splits the temporal windows at the cuts.
    ``unet_calls`` counts UNetMotionModel calls: one per box (temporal window x spatial
    tile, ``tiles`` in latent cells, default one covering the canvas) per denoising move,
    regret repeats included (the coarse stage only), a guided call being one call on a
    doubled batch; boxes wholly inside the source box are not called
    (``skipped_boxes`` per move; propagated pixels may skip more at run time).
    ``guided_calls`` counts those with the doubled batch, ``unet_frames`` the frames all
    calls process (batch rows x box frames: the ControlNet runs once per such frame).
    ``stage="refine"`` counts the refine's steps (``refine_schedule``), which run no regret.
    """
    from .geometry import latent_known_mask
    from .sampler import regret_schedule
    from .tiles import boxes, known_boxes, whole
    from .windows import shot_windows

    s = cfg.sample
    h, w = canvas.latent_size(scale)
    tiles = [whole(h, w)] if tiles is None else list(tiles)
    windows = shot_windows(shots or [0], num_frames, s.window.frames, s.window.stride)
    if stage == "coarse":
        regret = dict(jump=s.regret.jump, repeats=s.regret.repeats, fraction=s.regret.fraction)
        moves = [src for src, dst in regret_schedule(s.steps, **regret) if dst > src]  # each move's start level
        first, steps = 0, s.steps
    else:
        first, length = refine_schedule(cfg)
        moves, steps = list(range(first, length)), length - first
    guided = sum(step < s.guidance_steps for step in moves) if s.guidance_scale != 1 else 0
    every = boxes(windows, tiles)
    skipped = known_boxes(every, latent_known_mask(canvas, scale)) if len(tiles) > 1 else set()
    run = [b for i, b in enumerate(every) if i not in skipped]
    box_frames = sum(b.window[1] - b.window[0] for b in run)
    return {
        "frames": num_frames,
        "canvas": wxh(canvas.width, canvas.height),
        "latent": f"4x{num_frames}x{h}x{w} (C x F x H x W)",
        "windows": len(windows),
        "tiles": len(tiles),
        "skipped_boxes": len(skipped),
        "steps": steps,
        "first_step": first,
        "model_moves": len(moves),
        "unet_calls": len(moves) * len(run),
        "guided_calls": guided * len(run),
        "unet_frames": (len(moves) + guided) * box_frames,
        "vae_scale": scale,
    }


def wxh(width: int, height: int) -> str:
    """A size as people read it: width first, labelled."""
    return f"{width}x{height} (W x H)"


def upsampling_warning(cfg: JobConfig, model_h: int, native_h: int) -> str | None:
    """A warning when the model works at more than twice the source's own size (it sees blurred, invented detail)."""
    if model_h <= 2 * native_h:
        return None
    return (f"the model works at {model_h / native_h:.1f}x the source's size (video.size={cfg.video.size}); "
            "upsampled input gives soft results: use a larger source or a smaller video.size")
