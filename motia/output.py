"""A run's written outputs: decoded frames put on the output canvas, the known pixels pasted back, streamed to the writers.

``OutputWriter`` is ``outpaint``'s sink. Each decoded chunk of model-canvas frames
(n, 3, H, W) is redrawn on the output canvas (``motia.planning.plan_output``: native
scale by default) with ``geometry.resample_canvas``; the known pixels go back with
``geometry.paste_known`` (at native scale they are the source's own, decoded chunk
by chunk with ``video.iter_frames``, never resampled); and the frames go to every
configured writer (the mp4 with the source's audio, the side-by-side mp4 with it
too, PNG frames) before the next chunk is decoded. Neither the source at native
size nor the outpainted clip is ever held whole, so memory depends on the chunk,
not on the clip length. The GIF is the exception: Pillow writes a GIF at once.

With pixel propagation (``motia.known``) the paste also puts back the pixels other
frames show, propagated again at the output scale (``known.OutputPropagation``), frame
by frame. Those reads reach ``outpaint.propagation.radius`` frames either side, so the
output-scale source frames are then decoded once into a ``SourceRing`` of at most
2 x radius + 1 frames (in memory when small, else in an unlinked file beside the
outputs), which the paste reads too: memory still does not grow with the clip.

Disk: ``output_bytes`` bounds what a run writes (the mp4s by ``video.mp4_bytes_bound``,
PNG and GIF frames uncompressed), and ``check_output_space`` refuses a run that will not
fit before any model loads. A disk that fills up anyway (noise compresses worse than
footage, or another program writes) is one ``NoSpaceError`` naming the file, the space
free and the estimate; every file is first finished under its temporary name and only
then are all renamed into place, so a failure leaves the folder's earlier outputs as they were.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from motia.config import JobConfig
from motia.errors import InputError, NoSpaceError
from motia.runs import OUTPUT_FILES
from motia.utils import check_free_space, raise_write_error
from motia.video import X264_PRESETS, Finishing, mp4_bytes_bound, to_uint8, unit_frames

log = logging.getLogger(__name__)

# The side-by-side is shrunk to fit UHD: wider frames (two native canvases side by side)
# are beyond what most players decode in hardware.
SIDE_BY_SIDE_MAX = (2160, 3840)  # (H, W)
# Output-scale frames handled at once: bounds every float copy (a 3414x1920 frame is 79 MB).
_STEP_BYTES = 64 << 20
PREVIEW_PRESET = "veryfast"  # the side-by-side's x264 preset, unless output.preset is faster still
# A SourceRing up to this size stays in memory; a larger one is memory-mapped from a file.
_RING_RAM_BYTES = 256 << 20
_RECORDS_BYTES = 256 << 10  # config.yaml and summary.json, with room to spare
_AUDIO_BYTES_PER_S = 128_000 // 8 + 2_000  # the AAC track at 128 kbit/s, and its framing


def _side_by_side_size(h: int, w: int, gap: int = 4) -> tuple[int, int]:
    """(H, W) of the side-by-side of an (h, w) output canvas (two halves and a gap, shrunk to ``SIDE_BY_SIDE_MAX``)."""
    scale = min(1.0, SIDE_BY_SIDE_MAX[0] / h, (SIDE_BY_SIDE_MAX[1] - gap) / (2 * w))
    if scale < 1.0:
        h, w = max(2, 2 * int(h * scale / 2)), max(2, 2 * int(w * scale / 2))
    return h, 2 * w + gap


def output_bytes(cfg: JobConfig, num_frames: int, out_canvas, seconds: float | None = None) -> dict[str, int]:
    """About the most bytes each configured output takes (by kind, and ``records`` for the config and summary).

    ``seconds``: the audio kept, if any. Camera footage stays under these; a noise-like
    result (the tiny test models') can take more in the mp4s, found when writing.
    """
    o = cfg.output
    h, w = out_canvas.height, out_canvas.width
    audio = int((seconds or 0.0) * _AUDIO_BYTES_PER_S) if o.keep_audio else 0
    sizes = {"records": _RECORDS_BYTES}
    if o.mp4:
        sizes["mp4"] = mp4_bytes_bound(num_frames, h, w, o.crf) + audio
    if o.side_by_side:
        sizes["side_by_side"] = mp4_bytes_bound(num_frames, *_side_by_side_size(h, w), o.crf) + audio
    if o.gif:
        sizes["gif"] = num_frames * (h * w * 5 // 4 + 1024)  # 8-bit palette indices; LZW can grow noise a little
    if o.frames:
        sizes["frames"] = num_frames * (h * w * 3 + (4 << 10))  # PNG never beats raw on noise; + its chunks
    return sizes


def scratch_bytes(num_frames: int, canvases: Sequence) -> int:
    """Bytes the run keeps in temporary files beside its outputs while it samples: each stage's store of what frames
    know (``motia.known.KnownFrames``, 4 bytes a pixel a frame) that is too large for memory."""
    from motia.known import FrameStore

    sizes = (num_frames * c.height * c.width * 4 for c in canvases)
    return sum(n for n in sizes if n > FrameStore.RAM_BYTES)


def check_output_space(cfg: JobConfig, clip, out_canvas, run_dir: str | Path, freed: Sequence[Path] = (),
                       scratch: Sequence = ()) -> int:
    """Refuse (NoSpaceError: the folder, the space needed and free) a run whose outputs will not fit; their bytes.

    ``freed``: earlier outputs the run deletes before writing (``--overwrite`` of another
    config). Outputs replaced by the same name are not counted as free: each new file is
    complete before the old one goes.
    """
    seconds = clip.duration if cfg.output.keep_audio and clip.has_audio else None
    needed = sum(output_bytes(cfg, clip.num_frames, out_canvas, seconds).values())
    needed += scratch_bytes(clip.num_frames, scratch)  # ``scratch``: the stages' canvases (temporary stores)
    gone = sum(_size(p) for p in freed)
    check_free_space(run_dir, needed, "free some space there or write elsewhere with output.dir=DIR", freed=gone)
    return needed


def _size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0


class SourceRing:
    """Source frames at the output scale by index, each decoded once, in order, into a ring of ``capacity`` frames.

    ``frames`` yields the clip's frames in order (uint8 (H, W, 3), at the source's own
    size); ``convert`` takes one to the output scale (uint8 (h, w, 3)). Frame i can be read
    while it is among the last ``capacity`` decoded; reading ahead decodes up to it. Rings
    above ``_RING_RAM_BYTES`` live in an unlinked temporary file in ``folder`` (nothing is
    left behind, even on a crash) and are memory-mapped, so the page cache, not the
    process, holds them.
    """

    def __init__(self, frames: Iterator[np.ndarray], num_frames: int, capacity: int, folder: str | Path,
                 convert: Callable[[np.ndarray], np.ndarray] = lambda f: f, source: str = "the source"):
        self.frames, self.num_frames, self.convert = frames, num_frames, convert
        self.capacity, self.folder, self.source = max(1, min(capacity, num_frames)), Path(folder), source
        self.decoded = 0
        self._ring: np.ndarray | None = None
        self._file = None

    def _store(self, frame: np.ndarray) -> None:
        if self._ring is None:
            shape = (self.capacity, *frame.shape)
            if np.prod(shape) <= _RING_RAM_BYTES:
                self._ring = np.empty(shape, dtype=np.uint8)
            else:
                try:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self._file = tempfile.TemporaryFile(prefix=".source-ring.", dir=self.folder)
                    # Reserved up front: pages of a mapping past a full disk would kill the process (SIGBUS).
                    os.posix_fallocate(self._file.fileno(), 0, int(np.prod(shape)))
                except OSError as e:
                    self.close()
                    raise_write_error(e, self.folder)
                self._ring = np.memmap(self._file, dtype=np.uint8, mode="w+", shape=shape)
        self._ring[self.decoded % self.capacity] = frame

    def __call__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} is outside the clip's {self.num_frames} frames")
        while self.decoded <= i:
            frame = next(self.frames, None)
            if frame is None:
                raise InputError(f"{self.source}: ran out of frames at {self.decoded} while writing; "
                                 "check that the file is complete")
            self._store(self.convert(frame))
            self.decoded += 1
        if i < self.decoded - self.capacity:
            raise RuntimeError(f"frame {i} already left the ring (frames {self.decoded - self.capacity}.."
                               f"{self.decoded - 1} held)")
        return np.asarray(self._ring[i % self.capacity])

    def close(self) -> None:
        self._ring = None
        if self._file is not None:
            self._file.close()
            self._file = None


class OutputWriter(Finishing):
    """Writes the outputs of one run chunk by chunk; call it with each decoded chunk, then ``close()``.

    ``canvas`` is the model's canvas (what the chunks are on), ``out_canvas`` the
    written one (``motia.planning.plan_output``), ``native_size`` the source's own (H, W).
    ``paste`` (default ``cfg.output.paste``) pastes the source back at the output scale;
    chunks must then be the raw decoded frames. ``propagation`` (a
    ``motia.known.ClipPropagation`` that filled pixels) adds the propagated pixels to the
    paste, propagated again at the output scale (``propagation_coverage`` then holds the
    coverage there). ``known`` (a ``motia.known.KnownFrames`` whose source box has the written
    box's size: the refine stage's at the output's scale) gives those pixels instead, as that
    stage saw them, without propagating again. Files appear complete at ``close()``
    or not at all (``abort()``; a context manager does either). ``timings`` holds the
    seconds spent reading the source, propagating, on the canvas and paste, and writing.
    """

    def __init__(self, cfg: JobConfig, clip, canvas, out_canvas, run_dir: str | Path,
                 native_size: tuple[int, int], paste: bool | None = None, propagation=None, known=None):
        from motia.geometry import feather_pixels
        from motia.video import FrameWriter, GifWriter, VideoWriter, iter_frames

        self.cfg, self.clip, self.canvas, self.out = cfg, clip, canvas, out_canvas
        o = cfg.output
        self.paste = o.paste if paste is None else paste
        self.feather = feather_pixels(o.feather, out_canvas)
        self.count = 0
        self.timings = {"read": 0.0, "propagate": 0.0, "canvas_paste": 0.0, "write": 0.0}
        self.outputs: dict[str, str] = {}
        run_dir = Path(run_dir)
        seconds = clip.duration if o.keep_audio and clip.has_audio else None
        self.needed = sum(output_bytes(cfg, clip.num_frames, out_canvas, seconds).values())  # for a full disk's error
        fps = o.fps or clip.fps
        audio = {}
        if o.keep_audio and clip.has_audio:
            if o.fps is None or abs(o.fps - clip.fps) < 1e-6:
                audio = dict(audio_from=clip.source, audio_start=clip.start_time, audio_duration=clip.duration)
            else:
                log.warning("output.fps=%s differs from the clip's %.3f fps: the audio would not line up, so it is dropped",
                            o.fps, clip.fps)
        self.writers = {}
        files = {kind: run_dir / name for kind, name in OUTPUT_FILES.items()}
        if o.mp4:
            self.writers["mp4"] = VideoWriter(files["mp4"], fps, crf=o.crf, preset=o.preset, **audio)
        if o.gif:
            self.writers["gif"] = GifWriter(files["gif"], fps)
        if o.frames:
            self.writers["frames"] = FrameWriter(files["frames"])
        if o.side_by_side:
            # A comparison preview: x264's veryfast at most (at 3840 px wide, medium buffers
            # about 1 GB of frames and takes twice as long for no visible gain here).
            preset = min(o.preset, PREVIEW_PRESET, key=X264_PRESETS.index)
            self.writers["side_by_side"] = VideoWriter(files["side_by_side"], fps, crf=o.crf, preset=preset,
                                                       **audio)
        # Where the known pixels come from: the clip itself at the model's scale or when it was
        # read at its own size; else the source decoded again at its own size, a chunk at a time.
        # The chunks' canvas is the written one and the clip's frames are its source: the model's scale.
        model = out_canvas == canvas and tuple(clip.frames.shape[-2:]) == (canvas.src_h, canvas.src_w)
        self.from_clip = model or tuple(clip.frames.shape[-2:]) == tuple(native_size)
        self.native = None
        if not self.from_clip:
            self.native = iter_frames(clip.source, clip.frame_indices, backend=clip.backend or "auto")
        self.source_canvas = None if model else _frame_canvas(*native_size)
        # Propagated pixels: the model's own at its scale; else propagated again here, reading
        # source frames around each one (the decoded ones through a ring, each decoded once).
        self.prop = propagation if self.paste and propagation is not None and propagation.filled else None
        self.out_prop = self.ring = self.known = None
        region = _region_of(known, out_canvas) if self.prop is not None and known is not None else None
        if region is not None:  # the refine stage's own propagated pixels, already at this scale
            from motia.propagate import CoverageStats

            self.known, self.region, self.stats = known, region, CoverageStats(out_canvas)
        elif self.prop is not None and not (model and self.prop.canvas == out_canvas):
            from motia.known import OutputPropagation
            from motia.propagate import FrameCache

            if self.from_clip:
                reader = FrameCache(lambda i: to_uint8(self._scaled(unit_frames(self.clip.frames[i : i + 1])))[0])
            else:
                reader = self.ring = SourceRing(self.native, clip.num_frames, 2 * self.prop.params.radius + 1, run_dir,
                                                self._scaled_u8, source=str(clip.source))
            self.out_prop = OutputPropagation(self.prop, out_canvas, reader)

    @property
    def propagation_coverage(self) -> dict | None:
        """Coverage at the output scale (``CoverageStats.to_dict()``), the model's when that is the output scale."""
        if self.out_prop is not None:
            return self.out_prop.stats.to_dict()
        if self.known is not None:
            return self.stats.to_dict()
        return self.prop.coverage if self.prop is not None else None

    def _scaled_u8(self, frame: np.ndarray) -> np.ndarray:
        """One native uint8 (H, W, 3) frame at the output canvas's source size."""
        if frame.shape[:2] == (self.out.src_h, self.out.src_w):
            return frame
        # as_tensor copies a read-only array (PIL's), which from_numpy would warn about
        return to_uint8(self._scaled(torch.as_tensor(np.array(frame)).permute(2, 0, 1)[None].float().div_(255.0)))[0]

    def _scaled(self, frames: torch.Tensor) -> torch.Tensor:
        """Source frames (n, 3, H, W) at the native size -> the output canvas's source size (a delivery size)."""
        from motia.geometry import Canvas, resample_canvas

        if self.source_canvas is not None and tuple(frames.shape[-2:]) != (self.out.src_h, self.out.src_w):
            frames = resample_canvas(frames, self.source_canvas, Canvas(self.out.src_h, self.out.src_w,
                                                                        self.out.src_h, self.out.src_w, 0, 0))
        return frames

    def _source(self, n: int) -> torch.Tensor:
        """The next ``n`` source frames, (n, 3, src_h, src_w) float in [0, 1] at the output scale."""
        if self.from_clip:
            frames = unit_frames(self.clip.frames[self.count : self.count + n])  # (n, 3, h, w)
        else:
            got = list(itertools.islice(self.native, n))
            if len(got) < n:
                raise InputError(f"{self.clip.source}: ran out of frames at {self.count + len(got)} while writing; "
                                 "check that the file is complete")
            raw = np.stack(got)  # (n, H, W, 3) uint8
            frames = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(255.0)  # (n, 3, H, W)
        # A delivery size: the source scaled once from native, like the generated pixels.
        return self._scaled(frames)

    def _source_and_propagated(self, n: int) -> tuple[torch.Tensor, list, float]:
        """The next ``n`` source frames (as ``_source``), each frame's output-scale propagation, and its seconds.

        Frame i is copied out of the ring before frame i's propagation decodes up to
        i + radius: the ring (2 radius + 1 frames) then still holds all frame i reads.
        """
        frames, got, spent = [], [], 0.0
        for i in range(self.count, self.count + n):
            frames.append(torch.from_numpy(self.ring(i).copy()).permute(2, 0, 1))  # (3, h, w) uint8
            t0 = time.perf_counter()
            got.append(self.out_prop.frame(i))
            spent += time.perf_counter() - t0
        return torch.stack(frames).float().div_(255.0), got, spent

    def _known(self, source: torch.Tensor, got: list | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The paste's (known (m, 1, H, W), known image (m, 3, H, W)) for the next frames, or None (the box alone).

        ``got`` holds the frames' output-scale propagation (``OutputPropagation.frame``);
        None: the model's own propagation is at this scale, or it is computed here.
        """
        frames = range(self.count, self.count + source.shape[0])
        if self.known is not None:
            known = self.known.known(frames, self.region)  # (m, 1, H, W) with the box
            top, left, bottom, right = self.out.box
            for mask in known[:, 0] > 0.5:
                mask = mask.clone()
                mask[top:bottom, left:right] = False
                self.stats.add(mask.numpy())
            if not any(self.known.frame_filled(t) for t in frames):
                return None
            return known, self.known.image(frames, self.region)
        if self.out_prop is None:
            if not any(self.prop.frame_filled(t) for t in frames):
                return None
            return self.prop.known(frames), self.prop.image(source, frames)
        if got is None:
            got = [self.out_prop.frame(t) for t in frames]
        if all(g is None for g in got):
            return None
        o = self.out
        known = torch.zeros(len(got), 1, o.height, o.width, dtype=torch.bool)
        image = torch.zeros(len(got), 3, o.height, o.width)
        for j, g in enumerate(got):
            if g is None:  # the box alone (the paste fills it from the source)
                top, left, bottom, right = o.box
                known[j, :, top:bottom, left:right] = True
            else:
                known[j], image[j] = g
        return known, image

    def __call__(self, chunk: torch.Tensor) -> None:
        """Write a chunk of decoded frames (n, 3, H, W) on the model's canvas."""
        from motia.geometry import paste_known, resample_canvas

        step = max(1, _STEP_BYTES // (self.out.height * self.out.width * 3 * 4))
        for i in range(0, chunk.shape[0], step):
            part = chunk[i : i + step]
            t0 = time.perf_counter()
            if self.ring is None:
                source = self._source(part.shape[0])  # (m, 3, src_h, src_w) at the output scale
                got, t_prop = None, 0.0
            else:  # frame by frame: a frame is read before its propagation moves the ring on
                source, got, t_prop = self._source_and_propagated(part.shape[0])
            ta = time.perf_counter()
            known = self._known(source, got) if self.prop is not None else None
            t1 = time.perf_counter()
            t_prop += t1 - ta
            frames = resample_canvas(part, self.canvas, self.out)  # (m, 3, H, W)
            if known is not None:
                frames = paste_known(frames, source, self.out, self.feather, known=known[0], known_image=known[1])
            elif self.paste:
                frames = paste_known(frames, source, self.out, self.feather)
            t2 = time.perf_counter()
            pixels = to_uint8(frames)  # (m, H, W, 3), converted once for every writer
            with self._disk_errors():
                for kind, writer in self.writers.items():
                    writer.write(to_uint8(self._side_by_side(source, frames)) if kind == "side_by_side" else pixels)
            self.timings["read"] += t1 - t0 - t_prop
            self.timings["propagate"] += t_prop
            self.timings["canvas_paste"] += t2 - t1
            self.timings["write"] += time.perf_counter() - t2
            self.count += part.shape[0]

    def _side_by_side(self, source: torch.Tensor, frames: torch.Tensor, gap: int = 4) -> torch.Tensor:
        """Source on the canvas | result, each half shrunk (antialiased) so the pair fits ``SIDE_BY_SIDE_MAX``."""
        from motia.geometry import place_on_canvas, scale_canvas
        from motia.video import side_by_side

        h, w = self.out.height, self.out.width
        scale = min(1.0, SIDE_BY_SIDE_MAX[0] / h, (SIDE_BY_SIDE_MAX[1] - gap) / (2 * w))
        if scale == 1.0:
            return side_by_side(place_on_canvas(source, self.out, 0.0), frames, gap)
        small = scale_canvas(self.out, max(2, 2 * int(h * scale / 2)), max(2, 2 * int(w * scale / 2)))
        left = place_on_canvas(_shrink(source, small.src_h, small.src_w), small, 0.0)
        return side_by_side(left, _shrink(frames, small.height, small.width), gap)

    @contextlib.contextmanager
    def _disk_errors(self):
        """A full disk's error with this run's estimate of its outputs (the writers do not know it)."""
        try:
            yield
        except NoSpaceError as e:
            if e.needed is not None:
                raise
            raise NoSpaceError(e.path, e.free, self.needed, writing=e.writing, fix=e.fix) from e

    def close(self) -> dict[str, str]:
        """Finish every file, then move them all into place; return their paths by kind (mp4, gif, frames, ...)."""
        try:
            t0 = time.perf_counter()
            with self._disk_errors():
                for writer in self.writers.values():  # all complete before any earlier output is replaced
                    writer.finish()
            for kind, writer in self.writers.items():
                self.outputs[kind] = str(writer.close())
            self.timings["write"] += time.perf_counter() - t0
        except BaseException:
            self.abort()
            raise
        finally:
            self._close_sources()
        return self.outputs

    def _close_sources(self) -> None:
        if self.native is not None:
            self.native.close()
        if self.ring is not None:
            self.ring.close()

    def abort(self) -> None:
        """Remove whatever is half-written (files already completed by ``close`` stay)."""
        for writer in self.writers.values():  # every one, even if one fails: the error being raised is the news
            try:
                writer.abort()
            except Exception:  # noqa: BLE001
                log.debug("aborting %s failed", getattr(writer, "path", writer), exc_info=True)
        self._close_sources()


def _region_of(known, out_canvas):
    """The written canvas as a region of ``known``'s canvas (source boxes of one size, so a shift), or None."""
    c = known.canvas
    if (c.src_h, c.src_w) != (out_canvas.src_h, out_canvas.src_w):
        return None
    top, left = c.top - out_canvas.top, c.left - out_canvas.left
    if top < 0 or left < 0 or top + out_canvas.height > c.height or left + out_canvas.width > c.width:
        return None
    return top, left, top + out_canvas.height, left + out_canvas.width


def _frame_canvas(h: int, w: int):
    from motia.geometry import Canvas

    return Canvas(src_h=h, src_w=w, height=h, width=w, top=0, left=0)


def _shrink(frames: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(F, 3, H, W) -> (F, 3, h, w), antialiased bilinear (a preview's resize), clamped to [0, 1]."""
    return F.interpolate(frames, size=(h, w), mode="bilinear", antialias=True, align_corners=False).clamp_(0.0, 1.0)
