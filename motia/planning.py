"""What a job config describes before any model runs: the clip, the model's canvas, the output canvas, the work.

Both stages (adaptation reads the clip; outpainting plans its canvases and counts
its work), the batch runner, the app and `motia info` take these from here, the
clip's shots too (``plan_shots``), so every stage treats the same cuts. It imports
only lower modules (config, geometry, video, shots, sampler, windows), never a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .config import JobConfig
from .errors import ConfigError, InputError


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
    """Read the configured frames of the clip (resized, aspect kept)."""
    from .video import read_video

    v = cfg.video
    return read_video(
        video_path(cfg), start=v.start, max_frames=v.max_frames, stride=v.stride,
        size=None if v.resize == "none" else v.size, resize=v.resize,
    )


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
    """The canvas for a source of this size under the config's ``outpaint`` section."""
    from .geometry import plan_canvas

    o = cfg.outpaint
    return plan_canvas(
        src_h, src_w, left=o.left, right=o.right, top=o.top, bottom=o.bottom,
        target_size=tuple(o.target_size) if o.target_size else None, aspect=o.aspect, multiple=o.multiple,
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
    from .geometry import plan_canvas, scale_canvas

    o, op = cfg.output, cfg.outpaint
    explicit = o.height is not None or o.width is not None
    if o.resolution == "model" and not explicit:
        return canvas
    target = None
    if op.target_size:
        th, tw = op.target_size
        # At least one native pixel more wherever the model's canvas grew, so the mode stays valid.
        target = (max(round(th * native_h / canvas.src_h), native_h + (th > canvas.src_h)),
                  max(round(tw * native_w / canvas.src_w), native_w + (tw > canvas.src_w)))
    native = plan_canvas(native_h, native_w, left=op.left, right=op.right, top=op.top, bottom=op.bottom,
                         target_size=target, aspect=op.aspect, multiple=2)
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


def work_estimate(cfg: JobConfig, num_frames: int, canvas, shots: Sequence[int] | None = None) -> dict:
    """Frames, windows and model calls of an outpainting run, before it starts.

    ``shots`` (``plan_shots``; default one shot) splits the temporal windows at the cuts.
    ``unet_calls`` counts UNetMotionModel calls (one per window per denoising move,
    regret repeats included; a guided call is one call on a doubled batch),
    ``guided_calls`` those with the doubled batch, ``unet_frames`` the frames all
    calls process (batch rows x window frames: the ControlNet runs once per such frame).
    """
    from .sampler import count_model_calls, regret_schedule
    from .windows import shot_windows

    s = cfg.sample
    windows = shot_windows(shots or [0], num_frames, s.window.frames, s.window.stride)
    regret = dict(jump=s.regret.jump, repeats=s.regret.repeats, fraction=s.regret.fraction)
    moves = [src for src, dst in regret_schedule(s.steps, **regret) if dst > src]  # each move's start level
    guided_moves = sum(src < s.guidance_steps for src in moves) if s.guidance_scale != 1 else 0
    window_frames = sum(e - b for b, e in windows)
    h, w = canvas.latent_size()
    return {
        "frames": num_frames,
        "canvas": wxh(canvas.width, canvas.height),
        "latent": f"4x{num_frames}x{h}x{w} (C x F x H x W)",
        "windows": len(windows),
        "steps": s.steps,
        "model_moves": len(moves),
        "unet_calls": count_model_calls(s.steps, len(windows), **regret),
        "guided_calls": guided_moves * len(windows),
        "unet_frames": (len(moves) + guided_moves) * window_frames,
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
