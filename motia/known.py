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

import errno
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

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


# ----------------------------------------------------------------------------- one home for what frames know


class FrameStore:
    """Arrays (F, H, W, C) of one dtype by frame: in memory when small, else in an unlinked temporary file.

    The file is read and written with pread/pwrite (no memory map), so its frames sit in the
    OS page cache, not in this process's memory; a region is read as its rows, then cut to
    its columns. Nothing is left behind, even on a crash (the file has no name).
    """

    RAM_BYTES = 64 << 20  # stores up to this size stay in memory; larger ones go to the page cache, not the process

    def __init__(self, num_frames: int, height: int, width: int, channels: int, dtype=np.uint8,
                 folder: str | None = None, ram_bytes: int | None = None):
        self.shape = (int(num_frames), int(height), int(width), int(channels))
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._array = self._file = None
        if self.nbytes <= (self.RAM_BYTES if ram_bytes is None else ram_bytes):
            self._array = np.zeros(self.shape, self.dtype)
        else:
            import tempfile

            import os

            self._file = tempfile.TemporaryFile(prefix=".motia-frames.", dir=folder)
            try:  # reserved up front: a full disk fails here, once, not in the middle of the sampling
                os.posix_fallocate(self._file.fileno(), 0, self.nbytes)
            except (AttributeError, OSError) as e:
                if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    self._file.close()
                    raise
                self._file.truncate(self.nbytes)  # no fallocate here: sparse, reads as zeros until written

    @property
    def in_file(self) -> bool:
        """Whether the frames live in the temporary file (else in memory)."""
        return self._file is not None

    def _row_bytes(self) -> int:
        return self.shape[2] * self.shape[3] * self.dtype.itemsize

    def write(self, t: int, frame: np.ndarray) -> None:
        """Store frame t, (H, W, C)."""
        frame = np.ascontiguousarray(frame, dtype=self.dtype)
        if frame.shape != self.shape[1:]:
            raise ValueError(f"frame {t} has shape {frame.shape}, the store holds {self.shape[1:]}")
        if self._array is not None:
            self._array[t] = frame
            return
        import os

        os.pwrite(self._file.fileno(), frame.tobytes(), t * self.shape[1] * self._row_bytes())

    def read(self, frames: Sequence[int], region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """(n, h, w, C) of the frames, cut to ``region`` (top, left, bottom, right) if given (a copy)."""
        _, height, width, _ = self.shape
        top, left, bottom, right = region if region is not None else (0, 0, height, width)
        if self._array is not None:
            return self._array[list(frames), top:bottom, left:right].copy()
        import os

        out = np.empty((len(frames), bottom - top, right - left, self.shape[3]), self.dtype)
        row = self._row_bytes()
        for j, t in enumerate(frames):
            raw = os.pread(self._file.fileno(), (bottom - top) * row, (t * height + top) * row)
            out[j] = np.frombuffer(raw, self.dtype).reshape(bottom - top, width, -1)[:, left:right]
        return out

    def close(self) -> None:
        self._array = None
        if self._file is not None:
            self._file.close()
            self._file = None


Region = tuple[int, int, int, int]  # (top, left, bottom, right) in pixels of the canvas


class KnownFrames:
    """What each frame of a clip knows on one canvas, at that canvas's scale: its source box and propagated pixels.

    One home for both stages: the coarse stage builds it at the model's scale
    (``at_model_scale``), the refine stage at the output's (``at_scale``). It serves, for
    any frames and optionally one region (a spatial tile) only: the known mask, the known
    image (0 elsewhere), the ControlNet's control frames (-1 elsewhere), the source; for
    the whole clip the known latents and their mask (``latents``); and the paste of the
    known pixels onto generated frames (``paste``).

    Storage: one ``FrameStore`` (F, H, W, 4) of the clip's dtype (uint8 as read, or
    float32 in [0, 1]): RGB of the known pixels (0 elsewhere) and a known flag, so a
    tile's control frames are read from its rows alone.
    """

    def __init__(self, canvas: Canvas, store: FrameStore, filled_frames: Sequence[bool]):
        self.canvas, self.store = canvas, store
        self.num_frames = store.shape[0]
        self._filled = [bool(f) for f in filled_frames]
        self._unit = 255.0 if store.dtype == np.uint8 else 1.0

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, canvas: Canvas, num_frames: int, source: Callable[[int], np.ndarray],
              propagated: Callable[[int], tuple[np.ndarray, np.ndarray] | None] | None = None,
              dtype=np.uint8, folder: str | None = None) -> "KnownFrames":
        """Frame by frame: ``source(t)`` (src_h, src_w, 3) in its box; ``propagated(t)``: (mask (H, W) bool, values (K, 3)) or None.

        Values are in the store's ``dtype`` units: 0..255 for uint8, [0, 1] for float32.
        """
        c = canvas
        top, left, bottom, right = c.box
        store = FrameStore(num_frames, c.height, c.width, 4, dtype, folder)
        on = 255 if store.dtype == np.uint8 else 1.0
        filled = []
        try:
            for t in range(num_frames):
                frame = np.zeros((c.height, c.width, 4), store.dtype)
                extra = propagated(t) if propagated is not None else None
                if extra is not None and extra[0].any():
                    mask, values = extra
                    frame[mask, :3] = values
                    frame[mask, 3] = on
                filled.append(extra is not None and bool(extra[0].any()))
                frame[top:bottom, left:right, :3] = source(t)
                frame[top:bottom, left:right, 3] = on
                store.write(t, frame)
        except BaseException:
            store.close()
            raise
        return cls(canvas, store, filled)

    @classmethod
    def at_model_scale(cls, canvas: Canvas, frames: torch.Tensor, prop: "ClipPropagation | None" = None,
                       folder: str | None = None) -> "KnownFrames":
        """From the clip's frames (F, 3, src_h, src_w) (uint8, or float in [0, 1]) and its propagation on ``canvas``."""
        uint8 = frames.dtype == torch.uint8

        def source(t):
            return frames[t].permute(1, 2, 0).numpy()

        def propagated(t):
            if prop is None or not prop.frame_filled(t):
                return None
            a, b = int(prop.offsets[t]), int(prop.offsets[t + 1])
            values = prop.values[a:b].numpy()
            return prop.masks[t].numpy(), values if uint8 else values.astype(np.float32) / 255.0

        if prop is not None and prop.filled and prop.canvas != canvas:
            raise ValueError(f"the propagation is on {prop.canvas}, not on {canvas}")
        return cls.build(canvas, int(frames.shape[0]), source, propagated, np.uint8 if uint8 else np.float32, folder)

    @classmethod
    def at_scale(cls, canvas: Canvas, num_frames: int, source: Callable[[int], np.ndarray],
                 prop: "ClipPropagation | None" = None, folder: str | None = None) -> "KnownFrames":
        """At another scale: ``source(t)`` uint8 (src_h, src_w, 3) at ``canvas``'s box size; the clip's propagation
        (found at the model's scale) repeated here (``OutputPropagation``), frame by frame."""
        known = cls.build(canvas, num_frames, source, None, np.uint8, folder)
        if prop is None or not prop.filled:
            return known
        top, left, bottom, right = canvas.box

        def read_source(i):  # the propagation reads other frames' source boxes
            return known.store.read([i], canvas.box)[0, :, :, :3]

        redo = OutputPropagation(prop, canvas, read_source)
        for t in range(num_frames):
            got = redo.frame(t)
            if got is None:
                continue
            mask, image = got[0][0].numpy().copy(), got[1]  # (H, W) bool, (3, H, W) float in [0, 1]
            mask[top:bottom, left:right] = False
            if not mask.any():
                continue
            frame = known.store.read([t])[0]
            frame[mask, :3] = (image.permute(1, 2, 0).numpy()[mask] * 255.0).round().astype(np.uint8)
            frame[mask, 3] = 255
            known.store.write(t, frame)
            known._filled[t] = True
        return known

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ per frame, per region
    @property
    def filled(self) -> bool:
        """Whether any frame has propagated pixels (otherwise only the source box is known)."""
        return any(self._filled)

    def frame_filled(self, t: int) -> bool:
        return self._filled[t]

    def _read(self, frames, region: Region | None) -> torch.Tensor:
        idx = [int(t) for t in (range(*frames.indices(self.num_frames)) if isinstance(frames, slice) else frames)]
        # contiguous NCHW: a channels-last view would take other conv kernels (other float bits) in the VAE
        return torch.from_numpy(self.store.read(idx, region)).permute(0, 3, 1, 2).contiguous()  # (n, 4, h, w)

    def _unit_values(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float().div_(255.0) if raw.dtype == torch.uint8 else raw.float()

    def known(self, frames: Frames, region: Region | None = None) -> torch.Tensor:
        """(n, 1, h, w) float32: 1 where the pixel is known (source box or propagated)."""
        return (self._read(frames, region)[:, 3:] > 0).float()

    def image(self, frames: Frames, region: Region | None = None) -> torch.Tensor:
        """(n, 3, h, w) float32 in [0, 1]: the known pixels, 0 elsewhere."""
        return self._unit_values(self._read(frames, region)[:, :3])

    def control(self, frames: Frames, region: Region | None = None) -> torch.Tensor:
        """Control frames (n, 3, h, w): the known pixels as they are, every other pixel -1."""
        raw = self._read(frames, region)
        return control_video(self._unit_values(raw[:, :3]), (raw[:, 3:] > 0).float())

    def source(self, frames: Frames) -> torch.Tensor:
        """(n, 3, src_h, src_w) float32 in [0, 1]: the source frames at this scale."""
        return self.image(frames, self.canvas.box)

    # ------------------------------------------------------------------ whole clip
    def latents(self, vae, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Known latents (F, 4, h, w) float32 CPU and their mask: (h, w) for the source box alone, else (1, 1, F, h, w).

        The source box's cells take the source encoded alone, edge-padded to the latent grid
        (``geometry.pad_to_grid``); with an 8-aligned box they are exactly ``encode(source)``.
        A frame with propagated pixels is also encoded whole (every unknown pixel filled from
        its nearest known one, ``fill_unknown``: the same edge extension), and its cells whose
        pixels are all known join the mask with those latents. Partly known cells stay
        generated (the paste restores their known pixels). Encoded ``chunk`` frames at a time.
        """
        from motia.geometry import downsample_mask, grid_box, latent_known_mask, pad_to_grid
        from motia.vae import encode_frames, vae_scale

        scale = vae_scale(vae)
        c = self.canvas
        h, w = c.latent_size(scale)
        top, left, bottom, right = (v // scale for v in grid_box(c, scale))
        out = torch.zeros(self.num_frames, vae.config.latent_channels, h, w)  # (F, 4, h, w)
        for i in range(0, self.num_frames, chunk):
            frames = range(i, min(i + chunk, self.num_frames))
            z = encode_frames(vae, pad_to_grid(self.source(frames), c, scale), chunk)  # (n, 4, gh, gw)
            out[i : i + z.shape[0], :, top:bottom, left:right] = z
        box_cells = latent_known_mask(c, scale)  # (h, w), 1 = all source
        if not self.filled:
            return out, box_cells
        mask = box_cells.expand(self.num_frames, h, w).clone()  # (F, h, w)
        todo = [t for t in range(self.num_frames) if self._filled[t]]
        for i in range(0, len(todo), chunk):
            idx = todo[i : i + chunk]
            known = self.known(idx)  # (n, 1, H, W)
            z = encode_frames(vae, fill_unknown(self.image(idx), known), chunk)  # (n, 4, h, w)
            cells = downsample_mask(known[:, 0], h, w) * (1 - box_cells)  # (n, h, w): all known, not the source's own
            out[idx] = torch.where(cells[:, None] > 0, z, out[idx])
            mask[idx] = torch.maximum(mask[idx], cells)
        return out, mask[None, None]  # (F, 4, h, w), (1, 1, F, h, w)

    def paste(self, generated: torch.Tensor, frames: Frames, feather: float) -> torch.Tensor:
        """``generated`` (n, 3, H, W) frames with the known pixels put back (``geometry.paste_known``, feathered seam)."""
        from motia.geometry import paste_known

        source = self.source(frames)
        if not self.filled:
            return paste_known(generated, source, self.canvas, feather)
        return paste_known(generated, source, self.canvas, feather, known=self.known(frames),
                           known_image=self.image(frames))


def source_at_scale(clip, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The clip's source frames at ``size`` (H, W), in order, one uint8 (H, W, 3) at a time.

    Decoded again from the file at its own size (the ``Clip``'s frames are at the models'
    scale) and resampled box onto box (``geometry.resample_canvas``, bicubic, antialiased
    when shrinking) where ``size`` is not the native one; a clip built in memory, or one
    already at ``size``, gives its own frames. The refine stage's known pixels and the
    adaptation's native-scale crops (``motia.crops``) are these frames.
    """
    from motia.geometry import resample_canvas
    from motia.video import iter_frames, to_uint8, unit_frames

    size = (int(size[0]), int(size[1]))
    if clip.source is not None and (clip.height, clip.width) != size:
        frames = iter_frames(clip.source, clip.frame_indices, backend=clip.backend or "auto")
    else:
        frames = (clip.frames[i].permute(1, 2, 0).numpy() for i in range(clip.num_frames))
    try:
        for frame in frames:
            if frame.shape[:2] == size and frame.dtype == np.uint8:
                yield frame
                continue
            x = unit_frames(torch.as_tensor(np.array(frame)).permute(2, 0, 1)[None])  # (1, 3, h, w)
            here = Canvas(x.shape[2], x.shape[3], x.shape[2], x.shape[3], 0, 0)
            yield to_uint8(resample_canvas(x, here, Canvas(*size, *size, 0, 0)))[0]
    finally:
        if hasattr(frames, "close"):
            frames.close()
