"""The evaluation protocols (``motia eval EVAL.yaml``): outpainting on DAVIS / YouTube-VOS, scored.

Two protocols (``protocol:``), each a list of *tasks*; a method sees the known part of
every frame and must produce the whole frame:

* ``ratios`` (default; MOTIA / Be-Your-Outpainter's table): for each mask ratio r, a
  fraction r of the frame width is removed (half on each side, see :func:`mask_widths`);
  one task per ratio, named by the ratio (``0.25``). The table adds a ``mean`` row per
  method (mean over ratios), as in the paper.
* ``crop`` (HL-OutPaint's table 1, Follow-Your-Canvas): the frames are resized to
  ``frame`` (H, W; 720 x 1280), a method sees their ``crop`` (512 x 512) centre and
  must produce the whole frame: outpainting on all four sides. One task, named
  ``<crop W>x<crop H>-<frame W>x<frame H>`` (``512x512-1280x720``, as the papers write it).

Before scoring, the known part of the prediction is replaced by the ground truth; PSNR
and SSIM are taken on [0, 1], LPIPS (AlexNet) on [-1, 1], and FVD (I3D) over all
sequences of one method and task.

Dataset layout: ``ROOT/JPEGImages/<res>/<sequence>/*.jpg`` (DAVIS, res e.g. ``480p``)
or ``ROOT/JPEGImages/<sequence>/*.jpg`` (YouTube-VOS). The crop protocol reads DAVIS's
``Full-Resolution`` folder when present (downscaled to ``frame``), else ``480p`` upscaled
(a warning, and a note under the table: that ground truth is soft).

A method is either

* ``{results: FOLDER}``: existing results laid out ``FOLDER/<task>/<sequence>/*.png|*.jpg``
  (frames in file-name order) or ``FOLDER/<task>/<sequence>.mp4``; a ratio task's folder
  is the ratio written as a decimal number (``0.25``, ``0.66``; matched by value, so
  ``0.250`` works too). Results may have more frames than scored (the first ones are
  used) and another size (resized to the ground truth's, with a warning); or
* ``{config: CONFIG.yaml, overrides: [...]}``: motia is run on each sequence through the
  ``run_method`` callable given to :func:`run_eval`.

Paths in the eval YAML starting with ``./`` or ``../`` are relative to the YAML's
folder; others (and ``output``) are used as written: absolute or relative to the
working directory.

Outputs in ``output``: ``per_sequence.csv`` (rewritten after each sequence, so a
stopped run keeps what it scored), ``summary.csv``, ``summary.md``, ``eval_config.yaml``,
all written atomically; config methods write their runs under ``output/runs/``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F_nn
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from motia.errors import InputError, MotiaError
from motia.metrics import I3DFeatures, LPIPS, MetricUnavailable, fvd_from_features, psnr, ssim
from motia.utils import atomic_path

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.25, 0.66)
DEFAULT_CROP = (512, 512)  # (H, W) the method sees, in the crop protocol
DEFAULT_FRAME = (720, 1280)  # (H, W) it must produce
FULL_RES = "Full-Resolution"  # DAVIS's folder of the original frames (mostly 1920x1080)
_ASPECT_TOL = 0.01  # ground truth of another aspect than `frame` (beyond 1%) is centre-cropped to it
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
METRICS = ("psnr", "ssim", "lpips", "fvd")
_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "fvd": "FVD"}
_DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "fvd": 2}

# run_method(name, cfg_path, overrides, cropped (F,3,h,w) in [0,1], left_px, right_px, out_dir) -> (F,3,H,W) in [0,1];
# a task that also hides rows (the crop protocol) passes them as keywords top_px=, bottom_px= (only then, so a
# runner written for the horizontal protocol keeps working there).
RunMethod = Callable[..., torch.Tensor]


# ---------------------------------------------------------------- config

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MethodSpec(_Section):
    """One method: a folder of existing results, or a motia config to run on every sequence."""

    results: str | None = None
    config: str | None = None
    overrides: list[str] = []

    @model_validator(mode="after")
    def _one_source(self):
        if (self.results is None) == (self.config is None):
            raise ValueError("give exactly one of 'results: FOLDER' or 'config: CONFIG.yaml'")
        if self.overrides and self.config is None:
            raise ValueError("'overrides' only apply to a 'config' method")
        return self


class EvalConfig(_Section):
    """The eval YAML: dataset, protocol (mask ratios or a centre crop), methods, optional metric weights, output."""

    dataset: str
    protocol: Literal["ratios", "crop"] = "ratios"  # ratios: horizontal mask ratios; crop: a centre crop -> a frame
    # DAVIS resolution folder, e.g. "480p"; default: ratios 480p (or the only one), crop Full-Resolution if present
    res: str | None = None
    sequences: list[str] | None = None  # score only these sequences (default: all)
    ratios: list[float] = list(DEFAULT_RATIOS)  # protocol ratios only
    crop: list[int] = list(DEFAULT_CROP)  # protocol crop: the known centre [H, W] a method sees, in frame pixels
    frame: list[int] = list(DEFAULT_FRAME)  # protocol crop: [H, W] of the ground truth a method must produce
    max_frames: int | None = Field(None, ge=1)  # the first N frames of each sequence
    size: int | None = Field(None, ge=32)  # protocol ratios only: resize the short side to this many pixels
    methods: dict[str, MethodSpec]
    lpips_weights: str | None = None  # file or folder; see motia.metrics.LPIPS.from_path
    i3d_path: str | None = None  # i3d_torchscript.pt
    device: str = "auto"  # for LPIPS / I3D; auto = cuda when available
    output: str

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v):
        if not v or any(not 0 < r < 1 for r in v) or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct fractions in (0, 1)")
        return v

    @field_validator("crop", "frame")
    @classmethod
    def _height_width(cls, v):
        if len(v) != 2 or min(v) < 8:
            raise ValueError("must be [height, width] in pixels, both >= 8")
        return v

    @model_validator(mode="after")
    def _protocol_keys(self):
        # A key of the other protocol would be silently ignored: say so instead.
        if self.protocol == "crop":
            stray = [k for k in ("ratios", "size") if k in self.model_fields_set]
            if stray:
                raise ValueError(f"{' and '.join(stray)} only apply to 'protocol: ratios' (this is 'protocol: crop', "
                                 "which resizes every frame to 'frame' and hides all but its 'crop' centre); "
                                 "remove them")
            (ch, cw), (fh, fw) = self.crop, self.frame
            if ch > fh or cw > fw or (ch, cw) == (fh, fw):
                raise ValueError(f"crop {self.crop} must fit inside frame {self.frame} ([height, width]) "
                                 "and be smaller")
        else:
            stray = [k for k in ("crop", "frame") if k in self.model_fields_set]
            if stray:
                raise ValueError(f"{' and '.join(stray)} only apply to 'protocol: crop'; add 'protocol: crop' "
                                 "or remove them")
        return self

    def protocol_keys_off(self) -> set[str]:
        """The keys the other protocol uses (left out of the recorded ``eval_config.yaml``)."""
        return {"crop", "frame"} if self.protocol == "ratios" else {"ratios", "size"}

    @field_validator("methods")
    @classmethod
    def _names(cls, v):
        if not v:
            raise ValueError("name at least one method")
        for name in v:
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"method name {name!r} must be usable as a folder name")
        return v


_PATH_KEYS = ("dataset", "lpips_weights", "i3d_path")


def _rel(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and value.startswith(("./", "../")):
        return str((folder / value).resolve())
    return value


def load_eval_config(path: str | os.PathLike) -> EvalConfig:
    """Read and validate an eval YAML; problems raise ConfigError naming the dotted key."""
    from motia.config import read_yaml, validate

    path = Path(path)
    data = read_yaml(path)
    folder = path.resolve().parent
    for key in _PATH_KEYS:
        if key in data:
            data[key] = _rel(data[key], folder)
    if isinstance(data.get("methods"), dict):
        for spec in data["methods"].values():
            if isinstance(spec, dict):
                for key in ("results", "config"):
                    if key in spec:
                        spec[key] = _rel(spec[key], folder)
    return validate(data, str(path), EvalConfig)


# ---------------------------------------------------------------- data

def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_sequences(root: str | os.PathLike, res: str | None = None) -> list[Path]:
    """The sequence folders of a DAVIS / YouTube-VOS style dataset, sorted by name.

    ``res`` picks ``JPEGImages/<res>``; without it, a ``JPEGImages`` holding sequence
    folders directly is YouTube-VOS style, else ``480p`` or the only resolution is used.
    """
    root = Path(root)
    jpeg = root / "JPEGImages"
    if not jpeg.is_dir():
        raise InputError(f"dataset {root}: no JPEGImages folder (expected ROOT/JPEGImages/[<res>/]<sequence>/*.jpg)")
    subdirs = sorted(d for d in jpeg.iterdir() if d.is_dir())
    if res is not None:
        base = jpeg / res
        if not base.is_dir():
            raise InputError(f"dataset {root}: no JPEGImages/{res} (found: {', '.join(d.name for d in subdirs) or 'none'})")
    elif any(_images(d) for d in subdirs):
        base = jpeg
    elif (jpeg / "480p").is_dir():
        base = jpeg / "480p"
    elif len(subdirs) == 1:
        base = subdirs[0]
    else:
        raise InputError(
            f"dataset {root}: several resolutions under JPEGImages ({', '.join(d.name for d in subdirs)}): set 'res'"
        )
    seqs = sorted(d for d in base.iterdir() if d.is_dir() and _images(d))
    if not seqs:
        raise InputError(f"dataset {root}: no sequence folders with .jpg/.png frames under {base}")
    return seqs


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(F, 3, H, W)`` so the short side is ``size`` (long side rounded), bilinear + antialias."""
    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    return _resize(frames, new)


def _resize(frames: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(frames.shape[-2:]) == tuple(hw):
        return frames
    return F_nn.interpolate(frames, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _to_frames(arr: np.ndarray, where: Path) -> torch.Tensor:
    """(F, H, W, C) uint8 -> (F, 3, H, W) float in [0, 1]."""
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise InputError(f"{where}: expected RGB frames, got an array of shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(0, 3, 1, 2).float() / 255.0


def fit_frames(frames: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """``(F, 3, h, w)`` resized to ``hw`` = (H, W), bilinear + antialias.

    An aspect within 1% of the target's (DAVIS: 854x480 and 1920x1080 to 1280x720) is
    resized directly; another is scaled to cover the target and centre-cropped to it.
    """
    (h, w), (th, tw) = frames.shape[-2:], hw
    if abs((w / h) / (tw / th) - 1) <= _ASPECT_TOL:
        return _resize(frames, (th, tw))
    scale = max(th / h, tw / w)
    big = _resize(frames, (max(th, round(h * scale)), max(tw, round(w * scale))))
    top, left = (big.shape[-2] - th) // 2, (big.shape[-1] - tw) // 2
    return big[..., top : top + th, left : left + tw]


def image_size(folder: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of the first frame of a frame folder."""
    from PIL import Image

    files = _images(Path(folder))
    if not files:
        raise InputError(f"{folder}: no .jpg/.png frames")
    with Image.open(files[0]) as im:
        return im.height, im.width


def load_frames(path: str | os.PathLike, max_frames: int | None = None,
                fit: Sequence[int] | None = None) -> torch.Tensor:  # fmt: skip
    """A folder of .jpg/.png frames (name order) or a video file -> ``(F, 3, H, W)`` float in [0, 1].

    ``fit`` = (H, W) resizes the frames to it (:func:`fit_frames`), each as it is read, so
    that a clip of 1080p frames is never held whole at that size.
    """
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = _images(path)[:max_frames]
        if not files:
            raise InputError(f"{path}: no .jpg/.png frames")
        out, first = None, None
        for i, f in enumerate(files):
            with Image.open(f) as im:
                arr = np.array(im.convert("RGB"))  # a writable copy, as torch.from_numpy wants
            if first is not None and arr.shape != first:
                raise InputError(f"{path}: frames differ in size")
            first = arr.shape
            frame = _to_frames(arr[None], path)  # (1, 3, h, w)
            frame = frame if fit is None else fit_frames(frame, fit)
            if out is None:  # filled in place: one copy of the clip in memory
                out = torch.empty(len(files), *frame.shape[1:])
            out[i] = frame[0]
        return out
    if path.is_file():
        import imageio.v3 as iio

        try:
            arr = iio.imread(path)
        except Exception as e:  # noqa: BLE001 - any decoder failure means the same to the user
            raise InputError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
        frames = _to_frames(np.asarray(arr)[:max_frames], path)
        return frames if fit is None else fit_frames(frames, fit)
    raise InputError(f"{path} does not exist")


# ---------------------------------------------------------------- protocol

def mask_widths(width: int, ratio: float) -> tuple[int, int]:
    """Pixels removed on the left and right for a mask ``ratio`` of ``width``.

    The total is ``round(ratio * width)`` (halves round up); the left side gets the
    smaller half when it is odd: 854 px at 0.25 -> 214 removed, 107 + 107; at 0.66 ->
    564, 282 + 282.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    removed = int(math.floor(ratio * width + 0.5))
    if removed >= width:
        raise ValueError(f"mask ratio {ratio} leaves nothing of a {width}-pixel-wide frame")
    left = removed // 2
    return left, removed - left


class Margins(NamedTuple):
    """Pixels hidden from a method on each side of a frame: what it must generate."""

    top: int
    bottom: int
    left: int
    right: int


def crop_margins(height: int, width: int, crop_h: int, crop_w: int) -> Margins:
    """The margins around a ``crop_h x crop_w`` centre of a ``height x width`` frame.

    The odd pixel goes below and right (as motia centres a source on a ``target_size``
    canvas): 720x1280 around 512x512 -> 104 + 104 rows, 384 + 384 columns.
    """
    if crop_h > height or crop_w > width:
        raise ValueError(f"a {crop_h}x{crop_w} crop does not fit a {height}x{width} frame")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return Margins(top, height - crop_h - top, left, width - crop_w - left)


@dataclass(frozen=True)
class Task:
    """What a method is asked on every frame: a mask ``ratio`` of the width, or a ``crop`` (H, W) centre.

    ``name`` is the results folder and the table's label (see :func:`ratio_task`, :func:`crop_task`).
    """

    name: str
    ratio: float | None = None
    crop: tuple[int, int] | None = None

    def margins(self, height: int, width: int) -> Margins:
        """The hidden margins of a ``height x width`` frame."""
        if self.crop is not None:
            return crop_margins(height, width, *self.crop)
        return Margins(0, 0, *mask_widths(width, self.ratio))


def ratio_task(ratio: float) -> Task:
    """A task of the ratios protocol: its name is the ratio as a decimal (``0.25``)."""
    return Task(ratio_name(ratio), ratio=float(ratio))


def crop_task(crop: Sequence[int], frame: Sequence[int]) -> Task:
    """The crop protocol's task: a ``crop`` (H, W) centre of a ``frame`` (H, W), named as the papers write it,
    width first: ``512x512-1280x720``."""
    (ch, cw), (fh, fw) = crop, frame
    return Task(f"{cw}x{ch}-{fw}x{fh}", crop=(ch, cw))


def eval_tasks(cfg: EvalConfig) -> list[Task]:
    """The config's tasks: one per mask ratio, or the one crop."""
    if cfg.protocol == "crop":
        return [crop_task(cfg.crop, cfg.frame)]
    return [ratio_task(r) for r in cfg.ratios]


def _as_task(task: Task | float) -> Task:
    return task if isinstance(task, Task) else ratio_task(task)


def cut_known(frames: torch.Tensor, m: Margins) -> torch.Tensor:
    """The part of ``(F, 3, H, W)`` frames a method sees: all but the margins."""
    h, w = frames.shape[-2:]
    return frames[..., m.top : h - m.bottom, m.left : w - m.right]


def make_eval_input(frames: torch.Tensor, ratio: float) -> tuple[torch.Tensor, int, int]:
    """(F, 3, H, W) -> (the known centre (F, 3, H, W - left - right), left_px, right_px); see :func:`mask_widths`."""
    m = ratio_task(ratio).margins(*frames.shape[-2:])
    return cut_known(frames, m), m.left, m.right


def paste_ground_truth(gt: torch.Tensor, pred: torch.Tensor, left: int, right: int, top: int = 0,
                       bottom: int = 0) -> torch.Tensor:  # fmt: skip
    """``pred`` with its known part (all but the margins) replaced by ``gt``'s, ``(F, 3, H, W)``."""
    out = pred.clone()
    h, w = gt.shape[-2:]
    out[..., top : h - bottom, left : w - right] = gt[..., top : h - bottom, left : w - right]
    return out


@dataclass
class Scorers:
    """The optional learned metrics, loaded once; ``skipped`` maps a metric's label to why it is off."""

    lpips: LPIPS | None = None
    i3d: I3DFeatures | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def load_scorers(lpips_weights=None, i3d_path=None, device: str | torch.device = "cpu") -> Scorers:
    """Load LPIPS and I3D from local paths; a missing path turns into a 'skipped' reason, not an error."""
    out = Scorers()
    try:
        out.lpips = LPIPS.from_path(lpips_weights, device)
    except MetricUnavailable as e:
        out.skipped["LPIPS"] = str(e)
    try:
        out.i3d = I3DFeatures.from_path(i3d_path, device)
    except MetricUnavailable as e:
        out.skipped["FVD"] = str(e)
    if out.i3d is not None:
        import importlib.util

        if importlib.util.find_spec("scipy") is None:  # the Frechet distance needs it, after all the scoring
            raise InputError("i3d_path is set but FVD needs scipy: pip install 'motia[eval]' (or scipy), "
                             "or remove i3d_path to skip FVD")
    return out


def score_sequence(gt: torch.Tensor, pred: torch.Tensor, task: Task | float, metrics: Scorers | None = None) -> dict:
    """Score one prediction ``(F, 3, H, W)`` in [0, 1] against the ground truth on ``task`` (or a mask ratio).

    The known part of ``pred`` is replaced by ``gt`` first. Returns ``psnr``, ``ssim``,
    ``lpips`` (None when unavailable) and, when I3D is loaded, ``i3d``: this video's
    feature row ``(1, D)`` for the set-level FVD.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != ground truth {tuple(gt.shape)}")
    m = _as_task(task).margins(*gt.shape[-2:])
    pred = paste_ground_truth(gt, pred.clamp(0, 1), m.left, m.right, m.top, m.bottom)
    out: dict[str, Any] = {"psnr": psnr(gt, pred), "ssim": ssim(gt, pred), "lpips": None}
    if metrics is not None and metrics.lpips is not None:
        out["lpips"] = metrics.lpips.score(gt, pred)
    if metrics is not None and metrics.i3d is not None:
        out["i3d"] = metrics.i3d([pred])
    return out


# ---------------------------------------------------------------- results lookup

def ratio_name(ratio: float) -> str:
    """Folder name of a ratio: the shortest decimal that reads back as it (0.25, 0.66)."""
    return repr(float(ratio))


def _ratio_dir(folder: Path, ratio: float) -> Path:
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            if math.isclose(float(d.name), ratio, abs_tol=1e-9):
                return d
        except ValueError:
            continue
    raise InputError(f"results {folder}: no folder for ratio {ratio} (expected {folder / ratio_name(ratio)})")


def _task_dir(folder: Path, task: Task) -> Path:
    if task.ratio is not None:
        return _ratio_dir(folder, task.ratio)
    if not (folder / task.name).is_dir():
        raise InputError(f"results {folder}: no folder for task {task.name} (expected {folder / task.name})")
    return folder / task.name


def find_result(folder: str | os.PathLike, task: Task | float, sequence: str) -> Path:
    """``FOLDER/<task>/<sequence>/`` (frames) or ``FOLDER/<task>/<sequence>.mp4``; a float is a mask ratio."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"results folder {folder} does not exist")
    rdir = _task_dir(folder, _as_task(task))
    if (rdir / sequence).is_dir():
        return rdir / sequence
    if (rdir / f"{sequence}.mp4").is_file():
        return rdir / f"{sequence}.mp4"
    raise InputError(f"results {folder}: no {rdir.name}/{sequence}/ frames or {rdir.name}/{sequence}.mp4")


def _fit_prediction(pred: Any, gt: torch.Tensor, where: str, warned: set) -> torch.Tensor:
    """Frame count and size of a prediction checked against the ground truth; extra frames dropped."""
    if not isinstance(pred, torch.Tensor) or pred.dim() != 4 or pred.shape[1] != 3:
        raise MotiaError(f"{where}: a prediction must be a (F, 3, H, W) tensor, got {getattr(pred, 'shape', type(pred))}")
    pred = pred.detach().float().cpu()
    if pred.shape[0] < gt.shape[0]:
        raise InputError(f"{where}: {pred.shape[0]} frames, the ground truth has {gt.shape[0]}")
    pred = pred[: gt.shape[0]]
    if pred.shape[-2:] != gt.shape[-2:]:
        key = where.rsplit(" ", 1)[0]
        if key not in warned:
            warned.add(key)
            log.warning("%s: results are %dx%d, resized to the ground truth's %dx%d",
                        where, *pred.shape[-2:], *gt.shape[-2:])  # fmt: skip
        pred = _resize(pred, tuple(gt.shape[-2:]))
    return pred


# ---------------------------------------------------------------- tables

def _fmt(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _write_csv(path: Path, header: Sequence[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in rows:
                writer.writerow([_fmt(v) if isinstance(v, float) or (v is None) else v for v in (row[k] for k in header)])


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def summary_markdown(rows: list[dict], notes: list[str], title: str, column: str = "ratio") -> str:
    """The paper-style table: one row per method and task (``column``: ratio or task), ``mean`` rows of the
    ratios protocol; '-' = not computed."""
    lines = [f"# {title}", "", f"| Method | {column.title()} | PSNR | SSIM | LPIPS | FVD |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        cells = ["-" if r[m] is None else f"{r[m]:.{_DIGITS[m]}f}" for m in METRICS]
        lines.append(f"| {r['method']} | {r[column]} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"{n}  " for n in notes]
    return "\n".join(lines) + "\n"


def task_column(cfg: EvalConfig) -> str:
    """The tables' task column: ``ratio`` for the ratios protocol (as before tasks existed), else ``task``."""
    return "ratio" if cfg.protocol == "ratios" else "task"


def _title(cfg: EvalConfig, num_sequences: int) -> str:
    what = f"{Path(cfg.dataset).name} ({num_sequences} sequences, "
    if cfg.protocol == "ratios":
        return f"Evaluation on {what}mask ratios {', '.join(map(ratio_name, cfg.ratios))})"
    (ch, cw), (fh, fw) = cfg.crop, cfg.frame
    return f"Evaluation on {what}{cw}x{ch} centre -> {fw}x{fh}, W x H)"


def _summary_rows(cfg: EvalConfig, tasks: list[Task], per_seq: list[dict], real_feats: list, fake_feats: dict,
                  num_sequences: int) -> list[dict]:  # fmt: skip
    """Per method: a row per task (means over sequences, FVD over the set), and a ``mean`` row for ratios."""
    col = task_column(cfg)
    rows: list[dict] = []
    for name in cfg.methods:
        method_rows = []
        for task in tasks:
            mine = [r for r in per_seq if r["method"] == name and r[col] == task.name]
            row = {"method": name, col: task.name, "sequences": len(mine)}
            row.update({m: _mean([r[m] for r in mine]) for m in ("psnr", "ssim", "lpips")})
            feats = fake_feats.get((name, task.name))
            row["fvd"] = fvd_from_features(np.concatenate(real_feats), np.concatenate(feats)) if feats else None
            method_rows.append(row)
        rows += method_rows
        if cfg.protocol == "ratios":  # the paper reports the mean over its two ratios
            mean = {"method": name, col: "mean", "sequences": num_sequences}
            mean.update({m: _mean([r[m] for r in method_rows]) for m in METRICS})
            rows.append(mean)
    return rows


# ---------------------------------------------------------------- driver

def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def dataset_res(cfg: EvalConfig) -> str | None:
    """The resolution folder read: ``res``; unset, DAVIS's ``Full-Resolution`` for the crop protocol when present
    (else :func:`list_sequences`' default, 480p)."""
    if cfg.res is not None or cfg.protocol != "crop":
        return cfg.res
    if (Path(cfg.dataset) / "JPEGImages" / FULL_RES).is_dir():
        return FULL_RES
    return None


def _sequences(cfg: EvalConfig) -> list[Path]:
    seqs = list_sequences(cfg.dataset, dataset_res(cfg))
    if cfg.sequences is None:
        return seqs
    by_name = {s.name: s for s in seqs}
    unknown = [n for n in cfg.sequences if n not in by_name]
    if unknown:
        raise InputError(f"dataset {cfg.dataset}: no sequence {', '.join(unknown)} (sequences: {', '.join(by_name)})")
    return [by_name[n] for n in cfg.sequences]


class GroundTruth:
    """Each sequence's ground truth as the protocol scores it; notes sequences whose frames had to be upsampled."""

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.upsampled: dict[str, tuple[int, int]] = {}  # sequence -> its frames' (H, W), smaller than `frame`

    def load(self, seq: Path) -> torch.Tensor:
        """``(F, 3, H, W)`` in [0, 1]: the first ``max_frames``, at ``size`` (ratios) or resized to ``frame`` (crop)."""
        cfg = self.cfg
        if cfg.protocol == "crop":
            h, w = image_size(seq)
            if h < cfg.frame[0] or w < cfg.frame[1]:
                self.upsampled[seq.name] = (h, w)
            return load_frames(seq, cfg.max_frames, fit=cfg.frame)
        gt = load_frames(seq, cfg.max_frames)
        return gt if cfg.size is None else resize_short_side(gt, cfg.size)

    def notes(self, num_sequences: int) -> list[str]:
        if not self.upsampled:
            return []
        (fh, fw), sizes = self.cfg.frame, sorted({f"{w}x{h}" for h, w in self.upsampled.values()})
        return [f"Ground truth upsampled to {fw}x{fh} from {', '.join(sizes)} for {len(self.upsampled)} of "
                f"{num_sequences} sequences: soft, so not comparable with scores on DAVIS's {FULL_RES} frames "
                "downscaled"]  # fmt: skip


def _check_methods(cfg: EvalConfig, run_method: RunMethod | None) -> None:
    runs = [n for n, s in cfg.methods.items() if s.config is not None]
    if runs and run_method is None:
        raise MotiaError(f"methods {', '.join(runs)} use 'config:' but this caller gave no run_method to run motia with")
    for name in runs:
        if not Path(cfg.methods[name].config).is_file():
            raise InputError(f"methods.{name}.config: {cfg.methods[name].config} does not exist")


def _predict(name: str, spec: MethodSpec, task: Task, seq: Path, gt: torch.Tensor, results: dict,
             run_method: RunMethod | None, out: Path) -> Any:  # fmt: skip
    """A method's frames for one sequence and task: read from its results, or made by ``run_method``."""
    if spec.results is not None:
        return load_frames(results[name, task.name, seq.name], gt.shape[0])
    m = task.margins(*gt.shape[-2:])
    rows = {"top_px": m.top, "bottom_px": m.bottom} if m.top or m.bottom else {}
    run_dir = out / "runs" / name / task.name / seq.name
    return run_method(name, spec.config, list(spec.overrides), cut_known(gt, m), m.left, m.right, run_dir, **rows)


def run_eval(cfg: EvalConfig, run_method: RunMethod | None = None, progress: bool = True) -> dict:
    """Score every method on every task and sequence; write the CSVs and the summary table.

    Returns ``{"rows": summary rows, "per_sequence": rows, "notes": [...], "output": Path}``;
    each summary row has ``method``, the task (key ``ratio`` for the ratios protocol: its
    folder name, e.g. "0.25", or "mean"; key ``task`` for the crop protocol), ``sequences``
    and the four metrics (None where skipped).
    """
    from tqdm.auto import tqdm

    out = Path(cfg.output)
    tasks, col = eval_tasks(cfg), task_column(cfg)
    seqs = _sequences(cfg)
    if cfg.protocol == "crop" and dataset_res(cfg) != FULL_RES:
        log.warning("dataset %s: no JPEGImages/%s folder; the ground truth is read from %s and upsampled where "
                    "smaller than %dx%d, which makes it soft", cfg.dataset, FULL_RES, seqs[0].parent,
                    cfg.frame[1], cfg.frame[0])  # fmt: skip
    _check_methods(cfg, run_method)
    # Look up every result before any scoring: a missing file should fail in seconds, not hours.
    results = {
        (name, task.name, seq.name): find_result(spec.results, task, seq.name)
        for name, spec in cfg.methods.items() if spec.results is not None
        for task in tasks for seq in seqs
    }  # fmt: skip

    scorers = load_scorers(cfg.lpips_weights, cfg.i3d_path, _resolve_device(cfg.device))
    if scorers.i3d is not None and len(seqs) < 2:
        scorers.i3d = None
        scorers.skipped["FVD"] = f"needs at least 2 sequences, got {len(seqs)}"
    with atomic_path(out / "eval_config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude=cfg.protocol_keys_off()), sort_keys=False))

    truth = GroundTruth(cfg)
    per_seq: list[dict] = []
    real_feats: list[np.ndarray] = []
    fake_feats: dict[tuple[str, str], list[np.ndarray]] = {}
    warned: set = set()
    header = ["method", col, "sequence", "frames", *METRICS]
    bar = tqdm(total=len(seqs) * len(cfg.methods) * len(tasks), disable=not progress, desc="eval")
    for seq in seqs:
        gt = truth.load(seq)  # (F, 3, H, W)
        if scorers.i3d is not None:
            real_feats.append(scorers.i3d([gt]))
        for name, spec in cfg.methods.items():
            for task in tasks:
                where = f"{name} {task.name}/{seq.name}"
                bar.set_postfix_str(where)
                pred = _predict(name, spec, task, seq, gt, results, run_method, out)
                pred = _fit_prediction(pred, gt, where, warned)
                scores = score_sequence(gt, pred, task, scorers)
                if "i3d" in scores:
                    fake_feats.setdefault((name, task.name), []).append(scores.pop("i3d"))
                per_seq.append({"method": name, col: task.name, "sequence": seq.name,
                                "frames": gt.shape[0], **scores, "fvd": None})  # fmt: skip
                bar.update()
        _write_csv(out / "per_sequence.csv", header, per_seq)
    bar.close()

    rows = _summary_rows(cfg, tasks, per_seq, real_feats, fake_feats, len(seqs))
    notes = [f"{label} skipped: {why}" for label, why in scorers.skipped.items()] + truth.notes(len(seqs))
    _write_csv(out / "summary.csv", ["method", col, "sequences", *METRICS], rows)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(rows, notes, _title(cfg, len(seqs)), col))
    for note in notes:
        log.info(note)
    return {"rows": rows, "per_sequence": per_seq, "notes": notes, "output": out}


# ---------------------------------------------------------------- motia as a method

def eval_job_config(cfg_path, overrides: Sequence[str], src_hw: Sequence[int], m: Margins, frames_dir, out_dir,
                    name: str):  # fmt: skip
    """The job config of one evaluation run: ``cfg_path`` and ``overrides``, then the protocol's clip and canvas.

    The clip is the cropped frames in ``frames_dir``, read at their own size. The canvas is
    given as per-side fractions of the source (``outpaint.left = left_px / w``, ...): at the
    source's size they are exactly the protocol's margins, and unlike a ``target_size``
    (read in model pixels) they stay right at every scale, so coarse-to-fine runs
    (``outpaint.refine``) plan their coarse canvas around a smaller source and refine on
    the protocol's own frame.
    """
    from motia.config import load_config

    h, w = src_hw
    sides = {"left": m.left / w, "right": m.right / w, "top": m.top / h, "bottom": m.bottom / h}
    return load_config(cfg_path, [
        *overrides, f"video.path={frames_dir}", "video.resize=none", "video.start=0", "video.stride=1",
        "video.max_frames=null", "outpaint.target_size=null", "outpaint.aspect=null",
        *(f"outpaint.{side}={frac!r}" for side, frac in sides.items()), f"output.dir={out_dir}", f"output.name={name}",
    ])  # fmt: skip


def source_window(canvas, m: Margins) -> tuple[int, int]:
    """(top, left) of the protocol's frame on a motia ``canvas`` around the same source: the margins around its box.

    Equal to (0, 0) when the canvas is the frame; a canvas rounded up to multiples of 8
    holds the frame a few pixels in. A canvas that does not hold the frame around its
    box (the source elsewhere than the crop was cut) raises MotiaError.
    """
    top, left = canvas.top - m.top, canvas.left - m.left
    height, width = canvas.src_h + m.top + m.bottom, canvas.src_w + m.left + m.right
    if top < 0 or left < 0 or top + height > canvas.height or left + width > canvas.width:
        raise MotiaError(
            f"motia planned a {canvas.width}x{canvas.height} canvas with the {canvas.src_w}x{canvas.src_h} source at "
            f"(left {canvas.left}, top {canvas.top}); the protocol cut it at (left {m.left}, top {m.top}) of a "
            f"{width}x{height} frame, which that canvas does not hold: check the config's outpaint section"
        )
    return top, left


def frame_from_canvas(frames: torch.Tensor, canvas, src_hw: Sequence[int], m: Margins) -> torch.Tensor:
    """The protocol's frame ``(F, 3, H, W)`` out of frames on a motia ``canvas`` around the ``src_hw`` crop.

    With the source at its own size on the canvas, the frame is cut out around the box
    (:func:`source_window`). On a canvas at another scale (a refine at a ``refine.scale``
    other than the output's, or ``refine.strength: 0``, whose frames stay at the coarse
    scale), it is redrawn box onto box, as motia writes its outputs (``geometry.resample_canvas``).
    """
    from motia.geometry import Canvas, resample_canvas

    if tuple(frames.shape[-2:]) != (canvas.height, canvas.width):
        raise MotiaError(f"motia returned {tuple(frames.shape[-2:])} frames for its "
                         f"{canvas.height}x{canvas.width} canvas")
    h, w = src_hw
    if (canvas.src_h, canvas.src_w) != (h, w):
        target = Canvas(src_h=h, src_w=w, height=h + m.top + m.bottom, width=w + m.left + m.right, top=m.top,
                        left=m.left)  # fmt: skip
        return resample_canvas(frames, canvas, target)
    top, left = source_window(canvas, m)
    return frames[:, :, top : top + h + m.top + m.bottom, left : left + w + m.left + m.right]


def run_motia(name, cfg_path, overrides, cropped, left_px, right_px, out_dir, models=None, *, top_px: int = 0,
              bottom_px: int = 0) -> torch.Tensor:  # fmt: skip
    """The ``config:`` method runner: adapt a LoRA on the cropped clip, outpaint it back to the whole frame.

    The cropped frames are written as PNGs (lossless) and become ``video.path``; the
    canvas is the protocol's margins around them (:func:`eval_job_config`), checked before
    the adaptation to hold the protocol's frame with the source where the crop was cut
    (:func:`source_window`). Returns (F, 3, H, W) in [0, 1] straight from the decoder (no
    mp4 round trip), cut out of the last stage's canvas (:func:`frame_from_canvas`).
    ``models`` (a ``motia.job.ModelCache``) keeps the models loaded across sequences and tasks.
    """
    from motia.adapt import adapt_from_config
    from motia.job import ModelCache
    from motia.outpaint import outpaint
    from motia.planning import load_clip, plan
    from motia.video import write_frames

    out_dir = Path(out_dir)
    _, _, h, w = cropped.shape
    m = Margins(top_px, bottom_px, left_px, right_px)
    frames_dir = write_frames(out_dir / "input", cropped)
    cfg = eval_job_config(cfg_path, overrides, (h, w), m, frames_dir, out_dir, name)
    source_window(plan(cfg, h, w), m)  # at the source's own scale: a wrong canvas fails before the adaptation
    models = models if models is not None else ModelCache()
    # The runs folder is the evaluation's own scratch space, rewritten on every evaluation (like its tables).
    adapter = adapt_from_config(cfg, overwrite=True, progress=False, models=models)
    clip = load_clip(cfg)
    components = models.get(cfg.models)
    generator = torch.Generator("cpu").manual_seed(cfg.seed)
    result = outpaint(cfg, components, clip, lora_path=adapter, generator=generator, progress=False)
    return frame_from_canvas(result.frames, result.final_canvas or result.canvas, (h, w), m)


def eval_from_file(path: str | os.PathLike, run_method: RunMethod | None = None, progress: bool = True) -> dict:
    """``motia eval EVAL.yaml``: load the eval config and run it (``config:`` methods run motia itself,
    with one model set loaded for the whole evaluation)."""
    if run_method is None:
        import functools

        from motia.job import ModelCache

        run_method = functools.partial(run_motia, models=ModelCache())
    return run_eval(load_eval_config(path), run_method=run_method, progress=progress)
