"""What each frame knows: the source box plus the pixels other frames show (pixel propagation in the pipeline).

``propagate_clip`` runs ``motia.propagate`` for a job: the camera motion once per clip
from the model-scale source frames (each shot on its own when the shots are given; what
moves on its own marked, never propagated), then each frame's propagated pixels on the
model's canvas, kept compactly in a ``ClipPropagation`` (a mask per frame and the filled
values only, not whole canvases). Outpainting takes what counts as known from it, per frame:
the ControlNet's control frames (``control``), the known latents and their per-frame
latent mask (``motia.outpaint.encode_known_frames``), and the paste (``known``,
``image``). ``OutputPropagation`` repeats the propagation at the written scale, one
frame at a time, so the paste there puts back the native pixels other frames show.

``outpaint.propagate``: ``off``; ``on`` (OpenCV required); ``auto`` (the default):
propagate where OpenCV is installed and the estimated motion can reveal anything
(``motia.propagate.reachable``), else nothing. Whenever no pixel is filled, the pipeline
runs exactly as with ``off`` (bit for bit): a still camera costs the motion estimate only.

Adaptation never sees propagated pixels (it trains on the source alone), and the LoRA's
fade is measured from the source box, not from the per-frame known region: see
``motia.outpaint._attach_lora``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from motia.config import JobConfig
from motia.geometry import Canvas, control_video, place_on_canvas

log = logging.getLogger(__name__)

Frames = Sequence[int] | range | slice


class Cancelled(Exception):
    """``propagate_clip`` was asked to stop (its caller failed meanwhile)."""


def opencv_available() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def check_propagation(cfg: JobConfig) -> None:
    """Fail fast (before any model loads) when ``outpaint.propagate: on`` cannot run."""
    if cfg.outpaint.propagate == "on" and not opencv_available():
        from motia.propagate import require_cv2

        require_cv2()  # the one-line ConfigError with the install command


@dataclass
class ClipPropagation:
    """One clip's propagated pixels on the model's canvas (``canvas``); inactive (``masks`` None) when off.

    ``masks`` (F, H, W) bool marks the propagated pixels (never inside the source box);
    ``values`` (N, C) uint8 holds their values, frame after frame, each frame's in
    row-major order of its mask (``offsets`` (F + 1,) where each frame's start).
    """

    canvas: Canvas
    num_frames: int
    mode: str  # the configured outpaint.propagate
    note: str  # why nothing ran, or what did
    motion: object | None = None  # motia.propagate.CameraMotion
    params: object | None = None  # motia.propagate.PropagationParams
    masks: torch.Tensor | None = None
    values: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    coverage: dict | None = None  # motia.propagate.CoverageStats.to_dict() at the model's scale
    timings: dict[str, float] = field(default_factory=dict)  # seconds: motion, propagate

    @property
    def active(self) -> bool:
        return self.masks is not None

    @property
    def filled(self) -> bool:
        """Whether any pixel of any frame was propagated (otherwise the run is propagation off, exactly)."""
        return self.masks is not None and bool(self.masks.any())

    def frame_filled(self, t: int) -> bool:
        return self.masks is not None and bool(self.offsets[t + 1] > self.offsets[t])

    def _frames(self, frames: Frames) -> list[int]:
        if isinstance(frames, slice):
            frames = range(*frames.indices(self.num_frames))
        return [int(t) for t in frames]

    def known(self, frames: Frames) -> torch.Tensor:
        """(n, 1, H, W) float32: 1 on the source box and the propagated pixels of each of ``frames``."""
        idx = self._frames(frames)
        c = self.canvas
        top, left, bottom, right = c.box
        out = torch.zeros(len(idx), 1, c.height, c.width)
        if self.masks is not None:
            out[:, 0] = self.masks[idx].float()
        out[:, :, top:bottom, left:right] = 1.0
        return out

    def image(self, source: torch.Tensor, frames: Frames) -> torch.Tensor:
        """(n, C, H, W): ``source`` (n, C, src_h, src_w) in its box, the propagated pixels, 0 elsewhere."""
        idx = self._frames(frames)
        out = place_on_canvas(source, self.canvas, 0.0)  # (n, C, H, W)
        if self.masks is not None:
            for j, t in enumerate(idx):
                a, b = int(self.offsets[t]), int(self.offsets[t + 1])
                if b > a:  # (C, K) in the mask's row-major order
                    out[j][:, self.masks[t]] = self.values[a:b].T.to(out.dtype) / 255.0
        return out

    def control(self, source: torch.Tensor, frames: Frames) -> torch.Tensor:
        """Control frames (n, C, H, W): source and propagated pixels as they are, every other pixel -1."""
        return control_video(self.image(source, frames), self.known(frames))

    def summary(self) -> dict:
        """For ``summary.json`` and `motia info`: mode, whether it ran and filled, why, motion, coverage, seconds."""
        return {
            "mode": self.mode,
            "active": self.active,
            "filled": self.filled,
            "note": self.note,
            "motion": self.motion.summary() if self.motion is not None else None,
            "coverage": self.coverage,
            "time_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


def frame_reader(frames: torch.Tensor, cache_mb: float = 256) -> Callable[[int], np.ndarray]:
    """Frame i of (F, C, h, w) float frames in [0, 1] as the (h, w, C) uint8 array ``motia.propagate`` reads.

    uint8, as the video was: OpenCV's bilinear sampling is fixed-point and exact there (an
    integer move copies pixels bit for bit; on float32 it is off by ~1e-5), and the values
    kept per propagated pixel are a quarter the size. Frames a resize made fractional move
    by at most half a level. Converted frames are kept in an LRU cache of ``cache_mb``:
    each target reads its neighbours, and the next target almost the same ones.
    """
    from motia.propagate import FrameCache

    def read(i: int) -> np.ndarray:
        frame = frames[i]  # (C, h, w): uint8 as a clip holds it, or float in [0, 1]
        if frame.dtype != torch.uint8:
            frame = frame.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return frame.permute(1, 2, 0).contiguous().numpy()

    return FrameCache(read, int(cache_mb * (1 << 20)))


def skip_reason(cfg: JobConfig, canvas: Canvas, num_frames: int) -> str | None:
    """Why this run propagates nothing before any motion is estimated, or None."""
    mode = cfg.outpaint.propagate
    if mode == "off":
        return "outpaint.propagate=off"
    if canvas.height * canvas.width == canvas.src_h * canvas.src_w:
        return "no new region on this canvas"
    if num_frames < 2:
        return "a single frame: no other frame to take pixels from"
    if not opencv_available():
        if mode == "on":
            check_propagation(cfg)
        log.warning("outpaint.propagate=auto: OpenCV is not installed, so no pixels are propagated "
                    "(pip install opencv-python-headless; outpaint.propagate=off silences this)")
        return "OpenCV is not installed (pip install opencv-python-headless)"
    return None


def propagate_clip(
    cfg: JobConfig,
    frames: torch.Tensor,
    canvas: Canvas,
    *,
    shots: Sequence[int] | None = None,
    progress: bool = False,
    cancel: threading.Event | None = None,
) -> ClipPropagation:
    """The job's propagation on the model's canvas from its source ``frames`` (F, C, src_h, src_w) in [0, 1].

    Motion is estimated once on these frames (at ``outpaint.propagation.analysis_size``);
    with ``auto``, a clip whose motion reaches no new pixel (``reachable``) stops there.
    ``shots``: the first frame of each shot (sorted, starting with 0; None: one shot):
    frames of different shots never exchange pixels. ``progress`` shows a bar over the
    frames; ``cancel`` (set by another thread) stops the work between frames with
    ``Cancelled``.
    """
    num_frames = int(frames.shape[0])
    mode = cfg.outpaint.propagate
    why = skip_reason(cfg, canvas, num_frames)
    if why is not None:
        return ClipPropagation(canvas, num_frames, mode, why)
    from tqdm.auto import tqdm

    from motia.propagate import CoverageStats, estimate_motion, params_from_config, propagate_frame, reachable

    motion_params, params = params_from_config(cfg.outpaint.propagation)
    read = frame_reader(frames)

    def check(_t=None):
        if cancel is not None and cancel.is_set():
            raise Cancelled

    t0 = time.perf_counter()
    motion = estimate_motion(read, num_frames, motion_params, shots=shots, callback=check)
    t1 = time.perf_counter()
    reach = reachable(motion, canvas, params)
    if mode == "auto" and not reach.any():
        segments = motion.summary()["segments"]
        why = ("the camera does not move: no other frame shows the new region" if segments == 1 else
               f"no frame links to one that shows its new region ({segments} unlinked segments)")
        return ClipPropagation(canvas, num_frames, mode, why, motion=motion, params=params,
                               timings={"motion": t1 - t0})
    masks = torch.zeros(num_frames, canvas.height, canvas.width, dtype=torch.bool)
    values, counts = [], [0]
    stats = CoverageStats(canvas)
    bar = tqdm(total=num_frames, desc="propagate", unit="frame", leave=False, disable=not progress)
    with bar:
        for t in range(num_frames):
            check()
            if reach[t]:
                p = propagate_frame(t, read, motion, canvas, params)
                mask = torch.from_numpy(p.mask)
                masks[t] = mask
                values.append(torch.from_numpy(p.image[p.mask]))  # (K, C) row-major
            stats.add(masks[t].numpy())
            counts.append(int(masks[t].sum()))
            bar.update()
    t2 = time.perf_counter()
    channels = int(frames.shape[1])
    cov = stats.to_dict()
    share = cov["all"]["mean"] if cov["all"] else 0.0
    note = (f"filled {share:.1%} of the new pixels on average" if masks.any()
            else "the motion revealed no pixel that other frames agree on")
    return ClipPropagation(
        canvas, num_frames, mode, note, motion=motion, params=params, masks=masks,
        values=torch.cat(values) if values else torch.zeros(0, channels, dtype=torch.uint8),
        offsets=torch.tensor(counts, dtype=torch.int64).cumsum(0), coverage=cov,
        timings={"motion": t1 - t0, "propagate": t2 - t1},
    )


class OutputPropagation:
    """The clip's propagation repeated at the written scale, one frame at a time, for the paste there.

    ``read_frame(i)`` gives source frame i at that scale, (src_h, src_w, C) uint8 or float
    in [0, 1]; the model-scale motion is rescaled to it. Frames with nothing propagated at
    the model's scale are skipped (the model generated them freely). ``stats`` collects
    the coverage at this scale.
    """

    def __init__(self, prop: ClipPropagation, canvas: Canvas, read_frame: Callable[[int], np.ndarray]):
        from motia.propagate import CoverageStats

        self.prop, self.canvas, self.read_frame = prop, canvas, read_frame
        self.stats = CoverageStats(canvas)

    def frame(self, t: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Frame t's (known (1, H, W) bool, box included; image (C, H, W) float in [0, 1]), or None if none is filled."""
        from motia.propagate import propagate_frame

        if not self.prop.frame_filled(t):
            self.stats.add(np.zeros((self.canvas.height, self.canvas.width), dtype=bool))
            return None
        p = propagate_frame(t, self.read_frame, self.prop.motion, self.canvas, self.prop.params)
        self.stats.add(p.mask)
        image = torch.from_numpy(p.image).permute(2, 0, 1)  # (C, H, W)
        image = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
        known = torch.from_numpy(p.known(self.canvas))[None]  # (1, H, W)
        return known, image


def fill_unknown(image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) with every unknown pixel (``known`` (n, 1, H, W) <= 0.5) set to its nearest known pixel's value.

    What the VAE encodes for a canvas that is part source, part propagated, part unknown:
    the same edge extension the source alone gets (``geometry.pad_to_grid``), so the fill
    invents no structure; only latent cells whose pixels are all known are used anyway.
    Nearest by OpenCV's labelled distance transform (its 5x5 mask: within a fraction of a
    pixel of the exact Euclidean nearest, which is all the fill needs).
    """
    import cv2

    out = image.clone()
    n, c, h, w = image.shape
    for j in range(n):
        seeds = known[j, 0] > 0.5
        if bool(seeds.all()) or not bool(seeds.any()):
            continue
        # Zero pixels are the seeds; each pixel gets the label of its nearest seed, labels in scan order.
        _, labels = cv2.distanceTransformWithLabels((~seeds).numpy().astype(np.uint8), cv2.DIST_L2,
                                                    cv2.DIST_MASK_PRECISE, labelType=cv2.DIST_LABEL_PIXEL)
        flat_seeds = torch.from_numpy(np.flatnonzero(seeds.numpy()))
        nearest = flat_seeds[torch.from_numpy(labels.astype(np.int64).ravel() - 1)]  # (H*W,)
        out[j] = image[j].reshape(c, h * w)[:, nearest].reshape(c, h, w)
    return out


def describe_propagation(cfg: JobConfig, frames: torch.Tensor, canvas: Canvas, sample: int = 8,
                         shots: Sequence[int] | None = None) -> dict:
    """`motia info`'s view: mode, motion, and coverage over up to ``sample`` evenly spaced frames (model scale).

    Motion is estimated on every frame (it chains), each shot on its own (``shots`` as
    ``propagate_clip``'s); propagation runs on the sampled frames only, so this costs the
    motion estimate plus ``sample`` frames' propagation.
    """
    t0 = time.perf_counter()
    num_frames = int(frames.shape[0])
    why = skip_reason(cfg, canvas, num_frames)
    if why is not None:
        return {"mode": cfg.outpaint.propagate, "runs": False, "note": why}
    from motia.propagate import CoverageStats, estimate_motion, params_from_config, propagate_frame, reachable

    motion_params, params = params_from_config(cfg.outpaint.propagation)
    read = frame_reader(frames)
    motion = estimate_motion(read, num_frames, motion_params, shots=shots)
    reach = reachable(motion, canvas, params)
    out = {"mode": cfg.outpaint.propagate, "runs": bool(reach.any()) or cfg.outpaint.propagate == "on"}
    m = motion.summary()
    dense = f" ({m['dense_links']} by the dense fallback)" if m["dense_links"] else ""
    out["motion"] = (f"{m['linked_frames']} of {num_frames} frames linked{dense}, {m['segments']} segment(s); "
                     + ", ".join(f"{k} {v}" for k, v in m["models"].items() if v)).rstrip("; ")
    if m.get("mover_share"):
        out["movers"] = f"{m['mover_share']:.1%} of the source pixels move on their own (never propagated)"
    if not reach.any():
        out["note"] = "nothing to fill: no other frame shows the new region (a still camera, or no matches)"
        out["coverage"] = "0 (propagation changes nothing)"
    else:
        n = min(sample, num_frames)
        picked = sorted({round(i * (num_frames - 1) / max(1, n - 1)) for i in range(n)})
        stats = CoverageStats(canvas)
        for t in picked:
            stats.add(propagate_frame(t, read, motion, canvas, params).mask if reach[t] else
                      np.zeros((canvas.height, canvas.width), dtype=bool))
        cov = stats.to_dict()
        out["coverage"] = {"frames": f"{len(picked)} of {num_frames} (evenly spaced)", **{
            k: f"{v['min']:.1%} / {v['mean']:.1%} / {v['max']:.1%} (min / mean / max)"
            for k, v in cov.items() if k != "frames" and v is not None}}
        out["note"] = "share of new-region pixels taken from other frames instead of generated"
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
