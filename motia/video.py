"""Video I/O for the whole toolkit: probe, read (with frame selection and resizing), write mp4/gif/png.

Conventions
- A clip in memory (``Clip.frames``) is a torch uint8 tensor ``(F, 3, H, W)``, as decoded and
  resized; the model works on float32 in [0, 1], taken slice by slice with ``unit_frames``.
- ``to_uint8`` and the writers also take uint8 numpy arrays ``(F, H, W, 3)``: torch
  tensors are always channels-first, numpy arrays always channels-last.
- Inputs: video files (mp4, mov, webm, mkv, avi, m4v, gif), a folder of images (sorted
  naturally, ``frame2`` before ``frame10``), or a single image (one frame).
- Video files are decoded by PyAV, else decord, else imageio (``backend="auto"``).
  PyAV streams with flat memory; decord's ``get_batch`` kept growing with the frames
  read (about 1 GB after 300 1080p frames, most of it kept after the reader is
  gone), so it is only the fallback. decord always decodes at full size: its own
  width/height resize returned garbage 4-channel frames for some sizes, so every
  backend resizes here, in float, with torch's antialiased bilinear interpolation.
- H.264 yuv420p needs even sizes. ``write_video`` pads an odd width or height by
  replicating the last column or row, so the mp4 is at most one pixel wider/taller
  than the frames given; ``write_gif`` and ``write_frames`` keep the real size.
- All writers are atomic (``motia.utils.atomic_path``): a failure leaves nothing
  under the final name, and a full or read-only disk is one ``OutputError`` naming
  the file. ``VideoWriter``, ``FrameWriter`` and ``GifWriter`` take
  frames chunk by chunk (``write_video`` & co. are one-call wrappers), so a long
  clip is encoded as it is produced; ``iter_frames`` is the matching reader that
  decodes a source chunk by chunk at its own size.
- Colour: mp4s are BT.709, limited range, converted with the BT.709 matrix and
  tagged so (primaries, transfer, matrix); the readers (decord, PyAV, ffmpeg)
  decode by the file's tags.
- Determinism: the same frames give the same mp4 bytes. x264's AVX-512
  macroblock-tree code (``mbtree_propagate_list``) processes 8 macroblocks at a
  time without masking the tail of the last row, so it reads heap memory past its
  arrays and the rate control (and the bitstream) changed from run to run for most
  frame widths (seen with MALLOC_PERTURB_). The writer gives x264 the CPU
  features it detected minus AVX512 (``_x264_asm``); nothing else changes.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import importlib.resources
import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from motia.errors import ConfigError, InputError
from motia.utils import abort_atomic, atomic_path, raise_write_error

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
WRITE_SUFFIXES = (".mp4", ".mov", ".mkv")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
BACKENDS = ("auto", "decord", "pyav", "imageio")
RESIZE_MODES = ("short_side", "long_side", "none")
IMAGE_FPS = 8.0  # frame rate given to image folders and single images, which carry none

_CHUNK = 16  # frames decoded at once before they are converted and resized
_FLOAT_BYTES = 64 << 20  # full-size frames converted to float at once (two 1080p frames)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class VideoInfo:
    """What a video (file, image folder or image) holds, without decoding its frames."""

    num_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    path: Path
    audio_duration: float | None = None  # seconds of the first audio stream, when known

    @property
    def duration(self) -> float:
        """Seconds of video."""
        return self.num_frames / self.fps


@dataclass
class Clip:
    """Frames read from a source, with where they came from.

    ``frame_indices`` are indices into the source's frames; ``source_fps`` is the
    source's frame rate (``fps`` is the clip's own rate, ``source_fps / stride``).
    """

    # (F, 3, H, W) uint8 as read (a quarter of float32: long clips stay small); clips built by
    # hand may hold float32 in [0, 1]. Consumers take float slices with ``unit_frames``.
    frames: torch.Tensor
    fps: float
    source: Path
    frame_indices: list[int]
    has_audio: bool = False
    source_fps: float | None = None
    backend: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[2])

    @property
    def width(self) -> int:
        return int(self.frames.shape[3])

    @property
    def start_time(self) -> float:
        """Seconds into the source of the first frame used (the audio start to keep)."""
        return self.frame_indices[0] / (self.source_fps or self.fps)

    @property
    def duration(self) -> float:
        """Seconds of the source the clip covers (the audio length to keep)."""
        return self.num_frames / self.fps


@dataclass(frozen=True)
class _Selection:
    """Frame indices start, start+stride, ... (at most max_frames of them)."""

    start: int = 0
    stride: int = 1
    max_frames: int | None = None

    def indices(self, total: int) -> list[int]:
        idx = range(self.start, total, self.stride)
        return list(idx if self.max_frames is None else idx[: self.max_frames])

    def wants(self, i: int, taken: int) -> bool:
        return i >= self.start and (i - self.start) % self.stride == 0 and not self.full(taken)

    def full(self, taken: int) -> bool:
        return self.max_frames is not None and taken >= self.max_frames


class _NoFrames(Exception):
    """The selection is empty: the source has ``total`` frames."""

    def __init__(self, total: int):
        super().__init__(total)
        self.total = total


# ----------------------------------------------------------------------------- probing


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


def _check_path(path: str | Path) -> tuple[Path, str]:
    """Resolve the input kind ("folder", "image" or "video") or raise a one-line InputError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the input video path")
    if path.is_dir():
        if not _image_files(path):
            raise InputError(
                f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}); point to a video or a frame folder"
            )
        return path, "folder"
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return path, "image"
    if suffix in VIDEO_SUFFIXES:
        return path, "video"
    raise InputError(
        f"{path}: unsupported file type {suffix or '(none)'!r}; use a video "
        f"({', '.join(VIDEO_SUFFIXES)}), an image or a folder of images"
    )


def _audio_info(path: Path) -> tuple[bool, float | None]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return False, None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return True, float(stream.duration * stream.time_base)
            if container.duration is not None:
                return True, container.duration / 1_000_000
            return True, None
    except Exception:  # noqa: BLE001 - no readable audio is reported as no audio
        return False, None


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _probe_pyav(path: Path) -> VideoInfo:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        total = stream.frames
        if total <= 0:  # webm/mkv carry no frame count: count packets (demux only, no decoding)
            total = sum(1 for p in container.demux(stream) if p.size > 0)
        has_audio = bool(container.streams.audio)
    _, audio_duration = _audio_info(path) if has_audio else (False, None)
    return VideoInfo(total, fps, width, height, has_audio, path, audio_duration)


def _probe_decord(path: Path) -> VideoInfo:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    height, width = vr[0].shape[:2]
    has_audio, audio_duration = _audio_info(path)
    return VideoInfo(len(vr), float(vr.get_avg_fps()), width, height, has_audio, path, audio_duration)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate, size and audio presence of a video file, image folder or image."""
    path, kind = _check_path(path)
    if kind != "video":
        files = _image_files(path) if kind == "folder" else [path]
        from PIL import Image

        try:
            with Image.open(files[0]) as im:
                width, height = im.size
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{files[0]}: cannot read image ({_reason(e)}); replace or remove it") from e
        return VideoInfo(len(files), IMAGE_FPS, width, height, False, path)
    errors = []
    for probe in (_probe_pyav, _probe_decord):
        try:
            info = probe(path)
            if info.num_frames > 0 and info.width > 0 and info.height > 0:
                return info
            errors.append(f"{probe.__name__[7:]}: no frames")
        except Exception as e:  # noqa: BLE001 - try the next reader, report all at the end
            errors.append(f"{probe.__name__[7:]}: {_reason(e)}")
            if _not_a_video(e):
                break
    raise _unreadable(path, "; ".join(errors))


# ----------------------------------------------------------------------------- reading


def _unreadable(path: Path, why: str) -> InputError:
    return InputError(f"{path}: cannot read video ({why}); check that it plays, or re-encode it to H.264 mp4")


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:160]


class _Converted:
    """Decoded uint8 frames turned into clip frames ``_CHUNK`` at a time: only one chunk is ever held at full size."""

    def __init__(self, convert):
        self.convert, self.raw, self.out = convert, [], []

    def add(self, frames: np.ndarray) -> None:  # (n, H, W, 3) uint8, or one frame (H, W, 3)
        self.raw.extend(frames if frames.ndim == 4 else [frames])
        if len(self.raw) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.raw:
            self.out.append(self.convert(np.stack(self.raw)))
            self.raw = []

    def result(self) -> torch.Tensor:
        self.flush()
        return torch.cat(self.out)


def _read_decord(path: Path, sel: _Selection, convert) -> tuple[torch.Tensor, float, list[int]]:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))  # full size: see module docstring
    idx = sel.indices(len(vr))
    if not idx:
        raise _NoFrames(len(vr))
    frames = _Converted(convert)
    for i in range(0, len(idx), _CHUNK):
        batch = vr.get_batch(idx[i : i + _CHUNK]).asnumpy()  # (n, H, W, 3) uint8, decodes only what idx needs
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"decord returned frames of shape {tuple(batch.shape)}")
        frames.add(batch)
    return frames.result(), float(vr.get_avg_fps()), idx


def _read_pyav(path: Path, sel: _Selection, convert) -> tuple[torch.Tensor, float, list[int]]:
    import av

    frames, idx = _Converted(convert), []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream)
        total = 0
        for i, frame in enumerate(container.decode(stream)):
            total = i + 1
            if sel.wants(i, len(idx)):
                frames.add(frame.to_ndarray(format="rgb24"))
                idx.append(i)
            if sel.full(len(idx)):
                break
    if not idx:
        raise _NoFrames(total)
    return frames.result(), fps, idx


def _read_imageio(path: Path, sel: _Selection, convert) -> tuple[torch.Tensor, float, list[int]]:
    import imageio.v3 as iio

    if path.suffix.lower() == ".gif":
        plugin, kwargs = "pillow", {"mode": "RGB"}
        ms = iio.immeta(path, plugin=plugin).get("duration") or 100
        fps = 1000.0 / ms
    else:
        plugin, kwargs = "FFMPEG", {}
        fps = float(iio.immeta(path, plugin=plugin)["fps"])
    frames, idx, total = _Converted(convert), [], 0
    for i, frame in enumerate(iio.imiter(path, plugin=plugin, **kwargs)):
        total = i + 1
        if sel.wants(i, len(idx)):
            frames.add(np.ascontiguousarray(np.asarray(frame)[..., :3]))
            idx.append(i)
        if sel.full(len(idx)):
            break
    if not idx:
        raise _NoFrames(total)
    return frames.result(), fps, idx


_READERS = {"decord": _read_decord, "pyav": _read_pyav, "imageio": _read_imageio}


def _load_image(file: Path) -> np.ndarray:
    """One image as uint8 (H, W, 3)."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{file}: cannot read image ({_reason(e)}); replace or remove it") from e


def _read_images(files: list[Path], sel: _Selection, convert) -> tuple[torch.Tensor, list[int]]:
    idx = sel.indices(len(files))
    if not idx:
        raise _NoFrames(len(files))
    frames, first = _Converted(convert), None
    for i in idx:
        frame = _load_image(files[i])
        first = frame.shape if first is None else first
        if frame.shape != first:
            raise InputError(
                f"{files[i]}: size {frame.shape[1]}x{frame.shape[0]} differs from the first frame's "
                f"{first[1]}x{first[0]}; give every frame in the folder the same size"
            )
        frames.add(frame)
    return frames.result(), idx


def _decode(path: Path, sel: _Selection, backend: str, convert) -> tuple[torch.Tensor, float, list[int], str]:
    """Run the chosen reader, or in "auto" the first of PyAV, decord, imageio that works."""
    if backend == "auto":
        # decord cannot measure GIFs ("broken metadata"), so it is not even tried there.
        names = ["pyav", "imageio"] if path.suffix.lower() == ".gif" else ["pyav", "decord", "imageio"]
    else:
        names = [backend]
    errors = []
    for name in names:
        try:
            frames, fps, idx = _READERS[name](path, sel, convert)
            return frames, fps, idx, name
        except _NoFrames as e:
            if e.total > 0 or name == names[-1]:
                raise
            errors.append(f"{name}: no frames")
        except ImportError as e:
            if backend != "auto":
                raise ConfigError(
                    f"video backend {name!r} is not installed ({_reason(e)}); install it or use backend='auto'"
                ) from e
            errors.append(f"{name}: not installed")
        except Exception as e:  # noqa: BLE001 - fall back to the next reader, report all at the end
            logger.debug("video reader %s failed on %s: %s", name, path, e)
            errors.append(f"{name}: {_reason(e)}")
            if _not_a_video(e):
                break  # the other readers sit on the same FFmpeg: they would only print its complaints again
    raise _unreadable(path, "; ".join(errors))


def _not_a_video(e: BaseException) -> bool:
    """PyAV's verdict that the file is no container FFmpeg can parse (truncated, not a video at all)."""
    return type(e).__name__ == "InvalidDataError"


def target_size(height: int, width: int, size: int | None, resize: str = "short_side") -> tuple[int, int]:
    """(H, W) after scaling so the short (or long) side equals ``size``, keeping the aspect ratio."""
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize={resize!r} is not one of {', '.join(RESIZE_MODES)}; pick one of them")
    if size is None or resize == "none":
        return height, width
    if size < 1:
        raise ConfigError(f"size={size} must be a positive number of pixels")
    scale = size / (min(height, width) if resize == "short_side" else max(height, width))
    # round() lands the chosen side exactly on ``size``; the other side never drops below a pixel.
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return h, w


def resize_frames(frames: torch.Tensor, size: int | None, resize: str = "short_side") -> torch.Tensor:
    """Resize (F, 3, H, W) float frames keeping the aspect ratio (antialiased bilinear, clamped to [0, 1])."""
    h, w = target_size(frames.shape[-2], frames.shape[-1], size, resize)
    if (h, w) == tuple(frames.shape[-2:]):
        return frames
    out = F.interpolate(frames, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


def unit_frames(frames: torch.Tensor) -> torch.Tensor:
    """Frames as float in [0, 1]: uint8 (clip frames as read) divided by 255, float frames as they are.

    Take a slice first (``unit_frames(clip.frames[a:b])``): the whole clip in float32 is 4x
    its uint8 size, which is what keeping it in uint8 avoids.
    """
    return frames.float().div_(255.0) if frames.dtype == torch.uint8 else frames


def hash_unit_frames(h, frames: torch.Tensor, chunk: int = 16) -> None:
    """Feed ``frames`` as float32 in [0, 1] (``unit_frames``) to the hash ``h``, a few frames at a time.

    The digest is that of the whole float32 clip's bytes, so keys made before clips were
    kept in uint8 still match, without the whole clip ever being float at once.
    """
    for i in range(0, frames.shape[0], chunk):
        h.update(unit_frames(frames[i : i + chunk].detach().cpu()).float().contiguous().numpy().tobytes())


def _clip_frames(frames: np.ndarray, size: int | None, resize: str) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, H', W'), resized (in float, a few frames at a time) and rounded back.

    Rounding the resized frames to uint8 moves them by at most half a level, what any
    resized video written to disk carries; the clip then takes a quarter of float32's memory.
    """
    n, height, width = frames.shape[:3]
    h, w = target_size(height, width, size, resize)
    if (h, w) == (height, width):
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
    out = torch.empty((n, 3, h, w), dtype=torch.uint8)
    step = max(1, _FLOAT_BYTES // (height * width * 3 * 4))  # the full-size float copy stays small
    for i in range(0, n, step):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[i : i + step]))  # (n, H, W, 3)
        chunk = chunk.permute(0, 3, 1, 2).float().div_(255.0)  # (n, 3, H, W)
        out[i : i + step] = resize_frames(chunk, size, resize).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


def read_video(
    path: str | Path,
    start: int = 0,
    max_frames: int | None = None,
    stride: int = 1,
    size: int | None = None,
    resize: str = "short_side",
    backend: str = "auto",
) -> Clip:
    """Read frames start, start+stride, ... (at most ``max_frames``) of a video, image folder or image.

    ``size`` is the target length of the short or long side (``resize``), aspect ratio
    kept; ``None`` or ``resize="none"`` keeps the source size. ``backend`` picks the
    video decoder ("auto" tries PyAV, decord, imageio in turn). The clip's fps is the
    source fps divided by ``stride``. Frames are decoded and resized ``_CHUNK`` at a
    time, so only the resized clip is ever held whole.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}; pick one of them")
    if start < 0 or stride < 1 or (max_frames is not None and max_frames < 1):
        raise ConfigError(
            f"frame selection start={start}, stride={stride}, max_frames={max_frames} is invalid; "
            "use start >= 0, stride >= 1, max_frames >= 1 or None"
        )
    target_size(1, 1, size, resize)  # validate before decoding anything
    path, kind = _check_path(path)
    sel = _Selection(start, stride, max_frames)

    def convert(raw: np.ndarray) -> torch.Tensor:  # a decoded chunk, resized at once: the full size never piles up
        return _clip_frames(raw, size, resize)

    try:
        if kind == "video":
            frames, source_fps, idx, used = _decode(path, sel, backend, convert)
            has_audio = _audio_info(path)[0]
        else:
            files = _image_files(path) if kind == "folder" else [path]
            frames, idx = _read_images(files, sel, convert)
            source_fps, used, has_audio = IMAGE_FPS, "pillow", False
    except _NoFrames as e:
        if e.total == 0:
            raise _unreadable(path, "no decodable frames") from None
        raise InputError(
            f"{path}: no frames selected: start={start} but the source has {e.total} frame(s); use start < {e.total}"
        ) from None
    if not source_fps or source_fps <= 0:
        logger.warning("%s reports no frame rate; assuming %s fps", path, IMAGE_FPS)
        source_fps = IMAGE_FPS
    return Clip(frames, source_fps / stride, path, idx, has_audio, source_fps, used)  # frames: (F, 3, H, W)


def iter_frames(
    path: str | Path, indices: Sequence[int], backend: str = "auto", chunk: int = _CHUNK
) -> Iterator[np.ndarray]:
    """Yield frames ``indices`` (increasing) of a video, image folder or image, one by one, at the source's own size.

    The streaming twin of ``read_video``: each frame is uint8 ``(H, W, 3)``, decoded
    ``chunk`` frames at a time, and nothing else is kept, so memory does not grow with
    the clip. ``backend`` is one of ``read_video``'s (pass the ``Clip.backend`` that
    read the clip, so both see the same decoder's pixels; "pillow" reads images).
    A source with fewer frames than asked raises InputError.
    """
    idx = [int(i) for i in indices]
    if any(b <= a for a, b in zip(idx, idx[1:])) or (idx and idx[0] < 0):
        raise ValueError(f"indices must be increasing and >= 0, got {idx[:8]}...")
    path, kind = _check_path(path)
    if not idx:
        return
    if kind != "video":
        files = _image_files(path) if kind == "folder" else [path]
        if idx[-1] >= len(files):
            raise InputError(f"{path}: has {len(files)} image(s), frame {idx[-1]} is needed; the folder changed")
        for i in idx:
            yield _load_image(files[i])
        return
    if backend in ("auto", "pillow"):
        backend = "pyav"
    if backend not in _READERS:
        raise ConfigError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}; pick one of them")
    count = 0
    for frame in _STREAMS[backend](path, idx, chunk):
        count += 1
        yield frame
    if count < len(idx):
        raise InputError(f"{path}: decoded {count} of the {len(idx)} frames needed; check that the file is complete")


def _stream_decord(path: Path, idx: list[int], chunk: int) -> Iterator[np.ndarray]:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))  # full size: see module docstring
    idx = [i for i in idx if i < len(vr)]
    for i in range(0, len(idx), chunk):
        yield from vr.get_batch(idx[i : i + chunk]).asnumpy()  # (n, H, W, 3) uint8


def _stream_pyav(path: Path, idx: list[int], chunk: int) -> Iterator[np.ndarray]:
    import av

    want = iter(idx)
    nxt = next(want)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i == nxt:
                yield frame.to_ndarray(format="rgb24")
                nxt = next(want, None)
                if nxt is None:
                    return


def _stream_imageio(path: Path, idx: list[int], chunk: int) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    plugin, kwargs = ("pillow", {"mode": "RGB"}) if path.suffix.lower() == ".gif" else ("FFMPEG", {})
    want = iter(idx)
    nxt = next(want)
    for i, frame in enumerate(iio.imiter(path, plugin=plugin, **kwargs)):
        if i == nxt:
            yield np.ascontiguousarray(np.asarray(frame)[..., :3])
            nxt = next(want, None)
            if nxt is None:
                return


_STREAMS = {"decord": _stream_decord, "pyav": _stream_pyav, "imageio": _stream_imageio}


# ----------------------------------------------------------------------------- writing


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames as uint8 numpy (F, H, W, 3).

    Torch tensors are (F, 3, H, W) (float in [0, 1] or uint8); numpy arrays are
    (F, H, W, 3) (uint8, or float in [0, 1]). A single frame (3 dims) is accepted too.
    """
    if isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"torch frames must be (F, 3, H, W), got {tuple(frames.shape)}")
        if x.dtype != torch.uint8:
            # One float temporary, updated in place: at native scale every extra copy is tens of MB.
            x = x.float().clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous().numpy()  # (F, H, W, 3)
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"numpy frames must be (F, H, W, 3), got {tuple(np.shape(frames))}")
    if x.dtype != np.uint8:
        x = np.round(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(x)


FrameSource = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]


def _uint8_chunks(frames: FrameSource) -> Iterator[np.ndarray]:
    """uint8 (n, H, W, 3) chunks from a whole clip or an iterable of frames or chunks (streaming)."""
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        for i in range(0, len(frames), _CHUNK):
            yield to_uint8(frames[i : i + _CHUNK])
    else:
        for item in frames:
            yield to_uint8(item)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Replicate the last row/column so H and W are even (H.264 yuv420p needs it)."""
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _fps_fraction(fps: float) -> Fraction:
    if not fps or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _audio_source(audio_from: str | Path | None):
    """(rate, layout) of the first audio stream of ``audio_from``, or None when it has none."""
    if audio_from is None:
        return None
    import av

    src = Path(audio_from)
    if not src.exists():
        raise InputError(f"{src}: audio source not found; check audio_from or leave it empty")
    try:
        with av.open(str(src)) as container:
            if not container.streams.audio:
                return None
            ctx = container.streams.audio[0].codec_context
            return ctx.sample_rate, "mono" if ctx.channels == 1 else "stereo"
    except Exception as e:  # noqa: BLE001
        raise InputError(
            f"{src}: cannot read its audio ({_reason(e)}); check the file or leave audio_from empty"
        ) from e


def _audio_blocks(src: Path, rate: int, layout: str, first: int) -> Iterator[np.ndarray]:
    """Consecutive float32 (channels, n) sample blocks of ``src`` from sample ``first`` on, then silence forever.

    Decoded frames are placed by their timestamps, so a seek that lands early costs
    nothing; the same rate in and out means the resampler adds no delay.
    """
    import av

    channels = 1 if layout == "mono" else 2
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    pos = first  # the next sample to yield
    with av.open(str(src)) as container:
        stream = container.streams.audio[0]
        if first > 0 and stream.time_base:
            container.seek(int(first / rate / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            at = round((frame.time or 0.0) * rate)  # first sample of this frame in the source
            data = np.concatenate([f.to_ndarray() for f in resampler.resample(frame)], axis=1)
            if at + data.shape[1] > pos:
                yield data[:, max(pos - at, 0) :]
                pos = at + data.shape[1]
    # A source that ends early is padded with silence, so the track always spans the video.
    silence = np.zeros((channels, rate), np.float32)
    while True:
        yield silence


class _AudioTrack:
    """Another file's audio from ``start`` seconds, encoded to ``stream`` as far as the video has come.

    Whole AAC frames are encoded after every video chunk (``until``), so the file is
    interleaved and nothing but a frame's worth of samples is buffered; ``finish``
    writes the rest (``duration`` seconds in all, or as long as the video).
    """

    def __init__(self, container, stream, src: Path, spec: tuple[int, str], start: float, duration: float | None):
        self.container, self.stream = container, stream
        self.rate, self.layout = spec
        self.limit = None if duration is None else round(duration * self.rate)
        self.size = stream.codec_context.frame_size or 1024
        self.blocks = _audio_blocks(src, self.rate, self.layout, round(start * self.rate))
        self.buffer = np.zeros((1 if self.layout == "mono" else 2, 0), np.float32)
        self.written = 0  # samples encoded so far

    def _target(self, seconds: float) -> int:
        target = round(seconds * self.rate)
        return target if self.limit is None else min(target, self.limit)

    def _encode(self, n: int) -> None:
        import av

        while self.buffer.shape[1] < n:
            self.buffer = np.concatenate([self.buffer, next(self.blocks)], axis=1)
        samples, self.buffer = self.buffer[:, :n], self.buffer[:, n:]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32), format="fltp",
                                           layout=self.layout)
        frame.sample_rate = self.rate
        frame.pts = self.written
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.written += n

    def until(self, seconds: float) -> None:
        """Encode the whole frames that end by ``seconds`` of the output."""
        target = self._target(seconds)
        while self.written + self.size <= target:
            self._encode(self.size)

    def finish(self, seconds: float) -> None:
        """Encode up to the end (``duration``, else ``seconds``) and flush the encoder."""
        target = self.limit if self.limit is not None else round(seconds * self.rate)
        while self.written < target:
            self._encode(min(self.size, target - self.written))
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.blocks.close()


@functools.lru_cache(maxsize=None)
def _x264_asm() -> str | None:
    """x264's ``asm=`` value: the CPU features x264 detects here, without AVX512; None when it uses no AVX-512.

    x264's AVX-512 ``mbtree_propagate_list`` reads past its arrays at the end of the
    last macroblock row (see the module docstring), which makes its output depend on
    leftover heap bytes. The feature names come from x264's own log line ("using cpu
    capabilities: ..."), so only features this CPU has are ever asked for.
    """
    import io

    import av
    import av.logging

    previous = av.logging.get_level()
    lines = []
    try:
        av.logging.set_level(av.logging.INFO)
        with av.logging.Capture(local=True) as lines:
            container = av.open(io.BytesIO(), mode="w", format="mp4")
            try:
                stream = container.add_stream("libx264", rate=1)
                stream.width = stream.height = 16
                stream.pix_fmt = "yuv420p"
                stream.codec_context.open()
            finally:
                container.close()
    except Exception as e:  # noqa: BLE001 - without the probe x264 keeps its defaults
        logger.debug("could not ask x264 for its CPU features: %s", e)
        return None
    finally:
        av.logging.set_level(previous)
    for _, _, message in lines:
        if message.startswith("using cpu capabilities:"):
            flags = message.split(":", 1)[1].split()
            return ",".join(f for f in flags if f != "AVX512") if "AVX512" in flags else None
    return None


# The most an H.264 stream at crf 18 takes per pixel (bits), for the free-space check before a
# run: about 7x what camera-like pans measured (0.18-0.29 at crf 18, preset medium), below pure
# noise (6.2). x264 roughly halves the rate per 6 crf; 12 bits is raw yuv420p.
MP4_BITS_PER_PIXEL_CRF18 = 2.0


def mp4_bytes_bound(frames: int, height: int, width: int, crf: int = 18) -> int:
    """About the most bytes an mp4 of these frames takes at ``crf`` (camera footage; noise takes more)."""
    bits = min(12.0, MP4_BITS_PER_PIXEL_CRF18 * 2 ** ((18 - crf) / 6))
    return int(frames * (height + height % 2) * (width + width % 2) * bits / 8) + (16 << 10)  # + headers, index


class Finishing(abc.ABC):
    """Base of the writers whose files appear complete at ``close()`` or not at all (``abort()``).

    ``finish()`` completes the file under its temporary name, ``close()`` finishes it (if
    not yet) and renames it into place: several outputs can all be finished before any is
    renamed, so a failure while finishing one leaves every earlier file as it was. As a
    context manager: ``close`` when the block succeeds, ``abort`` when it raises.
    """

    def finish(self) -> None:
        """Complete the file under its temporary name (the frames given so far are all of it)."""

    @abc.abstractmethod
    def close(self):
        """Finish the file (if not yet) and rename it into place; return its path."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove whatever is half-written."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoWriter(Finishing):
    """An H.264 yuv420p BT.709 mp4 (or mov/mkv), written chunk by chunk and atomically, optionally with another file's audio.

    ``write(frames)`` takes torch (n, 3, H, W) float in [0, 1] or uint8, or numpy
    (n, H, W, 3) uint8 (or one frame); the first chunk fixes the size, and an odd
    width or height is padded by one replicated column/row. The audio of
    ``audio_from`` from ``audio_start`` is interleaved as the video advances:
    ``audio_duration`` seconds of it, or (None) as long as the video. ``close()``
    finishes the file and moves it into place; ``abort()`` removes it. As a context
    manager it closes on success and aborts on an exception. Nothing touches the
    disk before the first frame. ``crf`` and ``preset`` are x264's.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        *,
        audio_from: str | Path | None = None,
        audio_start: float = 0.0,
        audio_duration: float | None = None,
        crf: int = 18,
        preset: str = "medium",
        audio_bitrate: int = 128_000,
    ):
        self.path = Path(path)
        if self.path.suffix.lower() not in WRITE_SUFFIXES:
            raise InputError(
                f"{self.path}: write_video writes {', '.join(WRITE_SUFFIXES)}; use write_gif or write_frames for other outputs"
            )
        self.rate = _fps_fraction(fps)
        if audio_start < 0 or (audio_duration is not None and audio_duration <= 0):
            raise ValueError(f"audio window start={audio_start}, duration={audio_duration}: need start >= 0, duration > 0")
        if preset not in X264_PRESETS:
            raise ConfigError(f"x264 preset {preset!r} is not one of {', '.join(X264_PRESETS)}")
        self.crf, self.preset, self.audio_bitrate = crf, preset, audio_bitrate
        self.audio_from = None if audio_from is None else Path(audio_from)
        self.audio_start, self.audio_duration = audio_start, audio_duration
        self.audio_spec = _audio_source(audio_from)
        self.frames = 0
        self._shape = None
        self._stack = None  # holds the atomic temporary path once the first frame arrives
        self._container = self._video = self._audio = None
        self._done = self._finished = False

    def _open(self, shape: tuple[int, int, int]) -> None:
        import av
        from av.video.reformatter import ColorRange, Colorspace

        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._container = container = av.open(str(tmp), mode="w")
        video = container.add_stream("libx264", rate=self.rate)
        video.pix_fmt = "yuv420p"
        video.height, video.width = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
        ctx = video.codec_context
        ctx.thread_type = "FRAME"  # x264's frame threads: faster than PyAV's default slices, same bytes every run
        ctx.colorspace, ctx.color_range = Colorspace.ITU709, ColorRange.MPEG
        for name in ("color_primaries", "color_trc"):  # BT.709 = 1 in both FFmpeg enums
            if hasattr(ctx, name):
                setattr(ctx, name, 1)
        options = {"crf": str(self.crf), "preset": self.preset}
        asm = _x264_asm()
        if asm:
            options["x264-params"] = f"asm={asm}"
        video.options = options
        self._video = video
        if self.audio_spec is not None:
            # Streams must all exist before the first packet is muxed (that writes the header).
            stream = container.add_stream("aac", rate=self.audio_spec[0], layout=self.audio_spec[1])
            stream.bit_rate = self.audio_bitrate
            self._audio = _AudioTrack(container, stream, self.audio_from, self.audio_spec, self.audio_start,
                                      self.audio_duration)

    def _yuv(self, frame: np.ndarray, index: int):
        import av
        from av.video.reformatter import ColorRange, Colorspace

        rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
        # BT.709 matrix, limited range: what the stream is tagged with (swscale's default is BT.601).
        out = rgb.reformat(format="yuv420p", src_color_range=ColorRange.JPEG, dst_colorspace=Colorspace.ITU709,
                           dst_color_range=ColorRange.MPEG)
        out.colorspace, out.color_range = Colorspace.ITU709, ColorRange.MPEG
        out.pts = index
        return out

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        """Encode a chunk of frames (and the audio up to its end)."""
        if self._done:
            raise ValueError(f"{self.path}: writer already closed")
        chunk = to_uint8(frames)  # (n, H, W, 3)
        if not len(chunk):
            return
        if self._shape is not None and chunk.shape[1:] != self._shape:
            raise ValueError(f"frame size changed from {self._shape} to {chunk.shape[1:]} in {self.path}")
        try:
            if self._shape is None:
                self._shape = chunk.shape[1:]
                self._open(self._shape)
            for frame in _pad_even(chunk):
                for packet in self._video.encode(self._yuv(frame, self.frames)):
                    self._container.mux(packet)
                self.frames += 1
            if self._audio is not None:
                self._audio.until(self.frames / float(self.rate))
        except OSError as e:
            raise_write_error(e, self.path)

    def finish(self) -> None:
        """Flush the encoders and complete the audio: the file is complete under its temporary name."""
        if self._done or self._finished:
            return
        if self._container is None:
            self._done = True
            raise ValueError(f"no frames to write to {self.path}")
        try:
            for packet in self._video.encode():
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.finish(self.frames / float(self.rate))
            self._container.close()
        except OSError as e:
            self.abort()
            raise_write_error(e, self.path)
        except BaseException:
            self.abort()
            raise
        self._finished = True

    def close(self) -> Path:
        """Finish the file (``finish``) and move it into place."""
        if self._done:
            return self.path
        self.finish()
        self._done = True
        self._stack.close()  # renames the temporary file onto the path
        return self.path

    def abort(self) -> None:
        """Stop and remove what was written; the final path is left as it was."""
        if self._done:
            return
        self._done = True
        if self._container is not None and not self._finished:
            with contextlib.suppress(Exception):  # a half-written file may fail to close; it is removed anyway
                self._container.close()
        if self._audio is not None:
            self._audio.blocks.close()
        if self._stack is not None:
            abort_atomic(self._stack)  # removes the temporary file


def write_video(
    path: str | Path,
    frames: FrameSource,
    fps: float,
    audio_from: str | Path | None = None,
    audio_start: float = 0.0,
    audio_duration: float | None = None,
    crf: int = 18,
    audio_bitrate: int = 128_000,
    preset: str = "medium",
) -> Path:
    """Write an H.264 yuv420p mp4 (or mov/mkv) atomically; optionally keep audio from another file.

    ``frames``: torch (F, 3, H, W) float in [0, 1], numpy uint8 (F, H, W, 3), or an
    iterable of such frames or chunks (written as they come, e.g. from a chunked
    decoder). Odd sizes are padded by one replicated row/column. If ``audio_from``
    has an audio stream, its [audio_start, audio_start + audio_duration) is encoded
    to AAC (``audio_duration=None``: the length of the written video). See ``VideoWriter``.
    """
    writer = VideoWriter(path, fps, audio_from=audio_from, audio_start=audio_start, audio_duration=audio_duration,
                         crf=crf, preset=preset, audio_bitrate=audio_bitrate)
    with writer:
        for chunk in _uint8_chunks(frames):
            writer.write(chunk)
    return writer.path


class GifWriter(Finishing):
    """A looping GIF written atomically at ``close()``: Pillow writes a GIF at once, so the frames (uint8) are kept until then.

    GIF delays are whole centiseconds; Pillow merges identical consecutive frames
    into one longer frame, so a static stretch reads back as fewer frames.
    """

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        _fps_fraction(fps)
        self.fps = fps
        self.chunks: list[np.ndarray] = []
        self._stack = None  # holds the atomic temporary path once finished

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        self.chunks.append(to_uint8(frames))

    def finish(self) -> None:
        """Write the GIF under its temporary name."""
        import imageio.v3 as iio

        if self._stack is not None:
            return
        data = np.concatenate(self.chunks, axis=0) if self.chunks else None  # (F, H, W, 3)
        self.chunks = []
        if data is None or not len(data):
            raise ValueError(f"no frames to write to {self.path}")
        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_path(self.path))
        try:
            iio.imwrite(tmp, data, plugin="pillow", extension=".gif", duration=1000.0 / self.fps, loop=0)
        except BaseException as e:
            stack.__exit__(type(e), e, e.__traceback__)  # removes the temporary file, converts a disk error
            raise
        self._stack = stack

    def close(self) -> Path:
        self.finish()
        self._stack.close()
        return self.path

    def abort(self) -> None:
        self.chunks = []
        if self._stack is not None:
            abort_atomic(self._stack)
            self._stack = None


def write_gif(path: str | Path, frames: FrameSource, fps: float) -> Path:
    """Write a looping GIF atomically (real size kept); see ``GifWriter``."""
    with GifWriter(path, fps) as writer:
        for chunk in _uint8_chunks(frames):
            writer.write(chunk)
    return writer.path


class FrameWriter(Finishing):
    """PNGs frame_00000.png, ... written into ``folder`` chunk by chunk; the folder appears complete at ``close()`` or not at all."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        self.frames = 0
        self._stack = None
        self._tmp = None
        self._done = False

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        from PIL import Image

        try:
            if self._stack is None:
                self._stack = contextlib.ExitStack()
                self._tmp = self._stack.enter_context(atomic_path(self.path))
                self._tmp.mkdir()
            for frame in to_uint8(frames):
                Image.fromarray(frame).save(self._tmp / f"frame_{self.frames:05d}.png")
                self.frames += 1
        except OSError as e:
            raise_write_error(e, self.path)

    def close(self) -> Path:
        if self._done:
            return self.path
        self._done = True
        if self._stack is None:
            raise ValueError(f"no frames to write to {self.path}")
        self._stack.close()
        return self.path

    def abort(self) -> None:
        if not self._done and self._stack is not None:
            abort_atomic(self._stack)
        self._done = True


def write_frames(folder: str | Path, frames: FrameSource) -> Path:
    """Write frames as PNGs frame_00000.png, ... into ``folder`` atomically (a complete folder or none)."""
    with FrameWriter(folder) as writer:
        for chunk in _uint8_chunks(frames):
            writer.write(chunk)
    return writer.path


def side_by_side(a: torch.Tensor, b: torch.Tensor, gap: int = 4, fill: float = 0.0) -> torch.Tensor:
    """Place two clips (F, 3, Ha, Wa) and (F, 3, Hb, Wb) left|right on one canvas, centred vertically."""
    if a.ndim != 4 or b.ndim != 4 or a.shape[:2] != b.shape[:2]:
        raise ValueError(f"side_by_side needs (F, 3, H, W) clips of equal F, got {tuple(a.shape)}, {tuple(b.shape)}")
    (n, c, ha, wa), (hb, wb) = a.shape, b.shape[2:]
    h = max(ha, hb)
    out = torch.full((n, c, h, wa + gap + wb), fill, dtype=a.dtype, device=a.device)  # (F, 3, H, W)
    ya, yb = (h - ha) // 2, (h - hb) // 2
    out[:, :, ya : ya + ha, :wa] = a
    out[:, :, yb : yb + hb, wa + gap :] = b.to(a.dtype)
    return out


def sample_clip_path() -> Path:
    """Path of the bundled sample clip (24 frames, 96x64, 8 fps, with a mono audio track)."""
    return Path(str(importlib.resources.files("motia.assets").joinpath("sample.mp4")))
