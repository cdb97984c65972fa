"""The paper's evaluation protocol (``motia eval EVAL.yaml``): horizontal outpainting on DAVIS / YouTube-VOS.

For each sequence and mask ratio r, a fraction r of the frame width is removed
(half on each side, see :func:`make_eval_input`); a method sees the centre and must
produce the full-width frames. Before scoring, the known centre of the prediction is
replaced by the ground truth; PSNR and SSIM are taken on [0, 1], LPIPS (AlexNet) on
[-1, 1], and FVD (I3D) over all sequences of one method and ratio. The summary table
has one row per method and ratio plus a ``mean`` row per method (mean over ratios),
as in the paper.

Dataset layout: ``ROOT/JPEGImages/<res>/<sequence>/*.jpg`` (DAVIS, res e.g. ``480p``)
or ``ROOT/JPEGImages/<sequence>/*.jpg`` (YouTube-VOS).

A method is either

* ``{results: FOLDER}``: existing results laid out ``FOLDER/<ratio>/<sequence>/*.png|*.jpg``
  (frames in file-name order) or ``FOLDER/<ratio>/<sequence>.mp4``; ``<ratio>`` is the
  ratio written as a decimal number (``0.25``, ``0.66``; matched by value, so ``0.250``
  works too). Results may have more frames than scored (the first ones are used) and
  another size (resized to the ground truth's, with a warning); or
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
from typing import Any, Callable, Sequence

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
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
METRICS = ("psnr", "ssim", "lpips", "fvd")
_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "fvd": "FVD"}
_DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "fvd": 2}

# run_method(name, cfg_path, overrides, cropped (F,3,H,w) in [0,1], left_px, right_px, out_dir) -> (F,3,H,W) in [0,1]
RunMethod = Callable[[str, str, list, torch.Tensor, int, int, Path], torch.Tensor]


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
    """The eval YAML: dataset, mask ratios, methods, optional metric weights, output folder."""

    dataset: str
    res: str | None = None  # DAVIS resolution folder, e.g. "480p"; default: 480p, or the only one
    sequences: list[str] | None = None  # score only these sequences (default: all)
    ratios: list[float] = list(DEFAULT_RATIOS)
    max_frames: int | None = Field(None, ge=1)  # the first N frames of each sequence
    size: int | None = Field(None, ge=32)  # resize the short side to this many pixels
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


def load_frames(path: str | os.PathLike, max_frames: int | None = None) -> torch.Tensor:
    """A folder of .jpg/.png frames (name order) or a video file -> ``(F, 3, H, W)`` float in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = _images(path)[:max_frames]
        if not files:
            raise InputError(f"{path}: no .jpg/.png frames")
        arrays = []
        for f in files:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        if len({a.shape for a in arrays}) != 1:
            raise InputError(f"{path}: frames differ in size")
        return _to_frames(np.stack(arrays), path)
    if path.is_file():
        import imageio.v3 as iio

        try:
            arr = iio.imread(path)
        except Exception as e:  # noqa: BLE001 - any decoder failure means the same to the user
            raise InputError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
        return _to_frames(np.asarray(arr)[:max_frames], path)
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


def make_eval_input(frames: torch.Tensor, ratio: float) -> tuple[torch.Tensor, int, int]:
    """(F, 3, H, W) -> (the known centre (F, 3, H, W - left - right), left_px, right_px); see :func:`mask_widths`."""
    w = frames.shape[-1]
    left, right = mask_widths(w, ratio)
    return frames[..., left : w - right], left, right


def paste_ground_truth(gt: torch.Tensor, pred: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """``pred`` with its known centre columns replaced by ``gt``'s, ``(F, 3, H, W)``."""
    out = pred.clone()
    w = gt.shape[-1]
    out[..., left : w - right] = gt[..., left : w - right]
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


def score_sequence(gt: torch.Tensor, pred: torch.Tensor, ratio: float, metrics: Scorers | None = None) -> dict:
    """Score one prediction ``(F, 3, H, W)`` in [0, 1] against the ground truth at mask ``ratio``.

    The known centre of ``pred`` is replaced by ``gt`` first. Returns ``psnr``, ``ssim``,
    ``lpips`` (None when unavailable) and, when I3D is loaded, ``i3d``: this video's
    feature row ``(1, D)`` for the set-level FVD.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != ground truth {tuple(gt.shape)}")
    left, right = mask_widths(gt.shape[-1], ratio)
    pred = paste_ground_truth(gt, pred.clamp(0, 1), left, right)
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


def find_result(folder: str | os.PathLike, ratio: float, sequence: str) -> Path:
    """``FOLDER/<ratio>/<sequence>/`` (frames) or ``FOLDER/<ratio>/<sequence>.mp4``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"results folder {folder} does not exist")
    rdir = _ratio_dir(folder, ratio)
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


def summary_markdown(rows: list[dict], notes: list[str], title: str) -> str:
    """The paper-style table: one row per method and ratio, a ``mean`` row per method; '-' = not computed."""
    lines = [f"# {title}", "", "| Method | Ratio | PSNR | SSIM | LPIPS | FVD |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cells = ["-" if r[m] is None else f"{r[m]:.{_DIGITS[m]}f}" for m in METRICS]
        lines.append(f"| {r['method']} | {r['ratio']} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"{n}  " for n in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- driver

def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_eval(cfg: EvalConfig, run_method: RunMethod | None = None, progress: bool = True) -> dict:
    """Score every method at every ratio on every sequence; write the CSVs and the summary table.

    Returns ``{"rows": summary rows, "per_sequence": rows, "notes": [...], "output": Path}``;
    each summary row has ``method``, ``ratio`` (its folder name, e.g. "0.25", or "mean"), ``sequences`` and
    the four metrics (None where skipped).
    """
    from tqdm.auto import tqdm

    out = Path(cfg.output)
    seqs = list_sequences(cfg.dataset, cfg.res)
    if cfg.sequences is not None:
        by_name = {s.name: s for s in seqs}
        unknown = [n for n in cfg.sequences if n not in by_name]
        if unknown:
            raise InputError(f"dataset {cfg.dataset}: no sequence {', '.join(unknown)} (sequences: {', '.join(by_name)})")
        seqs = [by_name[n] for n in cfg.sequences]
    runs = [n for n, s in cfg.methods.items() if s.config is not None]
    if runs and run_method is None:
        raise MotiaError(f"methods {', '.join(runs)} use 'config:' but this caller gave no run_method to run motia with")
    for name in runs:
        if not Path(cfg.methods[name].config).is_file():
            raise InputError(f"methods.{name}.config: {cfg.methods[name].config} does not exist")
    # Look up every result before any scoring: a missing file should fail in seconds, not hours.
    results = {
        (name, ratio, seq.name): find_result(spec.results, ratio, seq.name)
        for name, spec in cfg.methods.items() if spec.results is not None
        for ratio in cfg.ratios for seq in seqs
    }  # fmt: skip

    scorers = load_scorers(cfg.lpips_weights, cfg.i3d_path, _resolve_device(cfg.device))
    if scorers.i3d is not None and len(seqs) < 2:
        scorers.i3d = None
        scorers.skipped["FVD"] = f"needs at least 2 sequences, got {len(seqs)}"
    with atomic_path(out / "eval_config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    per_seq: list[dict] = []
    real_feats: list[np.ndarray] = []
    fake_feats: dict[tuple[str, float], list[np.ndarray]] = {}
    warned: set = set()
    header = ["method", "ratio", "sequence", "frames", *METRICS]
    bar = tqdm(total=len(seqs) * len(cfg.methods) * len(cfg.ratios), disable=not progress, desc="eval")
    for seq in seqs:
        gt = load_frames(seq, cfg.max_frames)  # (F, 3, H, W)
        if cfg.size is not None:
            gt = resize_short_side(gt, cfg.size)
        if scorers.i3d is not None:
            real_feats.append(scorers.i3d([gt]))
        for name, spec in cfg.methods.items():
            for ratio in cfg.ratios:
                where = f"{name} {ratio_name(ratio)}/{seq.name}"
                bar.set_postfix_str(where)
                if spec.results is not None:
                    pred = load_frames(results[name, ratio, seq.name], gt.shape[0])
                else:
                    cropped, left, right = make_eval_input(gt, ratio)
                    run_dir = out / "runs" / name / ratio_name(ratio) / seq.name
                    pred = run_method(name, spec.config, list(spec.overrides), cropped, left, right, run_dir)
                pred = _fit_prediction(pred, gt, where, warned)
                scores = score_sequence(gt, pred, ratio, scorers)
                if "i3d" in scores:
                    fake_feats.setdefault((name, ratio), []).append(scores.pop("i3d"))
                per_seq.append({"method": name, "ratio": ratio_name(ratio), "sequence": seq.name,
                                "frames": gt.shape[0], **scores, "fvd": None})  # fmt: skip
                bar.update()
        _write_csv(out / "per_sequence.csv", header, per_seq)
    bar.close()

    rows: list[dict] = []
    for name in cfg.methods:
        method_rows = []
        for ratio in cfg.ratios:
            mine = [r for r in per_seq if r["method"] == name and r["ratio"] == ratio_name(ratio)]
            row = {"method": name, "ratio": ratio_name(ratio), "sequences": len(mine)}
            row.update({m: _mean([r[m] for r in mine]) for m in ("psnr", "ssim", "lpips")})
            feats = fake_feats.get((name, ratio))
            row["fvd"] = fvd_from_features(np.concatenate(real_feats), np.concatenate(feats)) if feats else None
            method_rows.append(row)
        mean = {"method": name, "ratio": "mean", "sequences": len(seqs)}
        mean.update({m: _mean([r[m] for r in method_rows]) for m in METRICS})
        rows += [*method_rows, mean]

    notes = [f"{label} skipped: {why}" for label, why in scorers.skipped.items()]
    _write_csv(out / "summary.csv", ["method", "ratio", "sequences", *METRICS], rows)
    title = f"Evaluation on {Path(cfg.dataset).name} ({len(seqs)} sequences, mask ratios {', '.join(map(ratio_name, cfg.ratios))})"
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(rows, notes, title))
    for note in notes:
        log.info(note)
    return {"rows": rows, "per_sequence": per_seq, "notes": notes, "output": out}


def run_motia(name, cfg_path, overrides, cropped, left_px, right_px, out_dir, models=None) -> torch.Tensor:
    """The ``config:`` method runner: adapt a LoRA on the cropped clip, outpaint it back to full width.

    The cropped frames are written as PNGs (lossless) and become ``video.path``;
    the canvas is ``target_size = [H, w + left + right]`` with no resizing, so the
    source sits where the protocol cut it (both centre it, the odd pixel on the
    right). A canvas rounded up to a multiple of 8 is cropped back around the box.
    Returns (F, 3, H, W) in [0, 1] straight from the decoder (no mp4 round trip).
    ``models`` (a ``motia.job.ModelCache``) keeps the models loaded across sequences and ratios.
    """
    from motia.adapt import adapt_from_config
    from motia.config import load_config
    from motia.job import ModelCache
    from motia.outpaint import outpaint
    from motia.planning import load_clip
    from motia.video import write_frames

    out_dir = Path(out_dir)
    _, _, h, w = cropped.shape
    full_w = w + left_px + right_px
    frames_dir = write_frames(out_dir / "input", cropped)
    cfg = load_config(cfg_path, [
        *overrides, f"video.path={frames_dir}", "video.resize=none", "video.start=0", "video.stride=1",
        "video.max_frames=null", "outpaint.left=0", "outpaint.right=0", "outpaint.top=0", "outpaint.bottom=0",
        "outpaint.aspect=null", f"outpaint.target_size=[{h}, {full_w}]", f"output.dir={out_dir}", f"output.name={name}",
    ])  # fmt: skip
    models = models if models is not None else ModelCache()
    # The runs folder is the evaluation's own scratch space, rewritten on every evaluation (like its tables).
    adapter = adapt_from_config(cfg, overwrite=True, progress=False, models=models)
    clip = load_clip(cfg)
    components = models.get(cfg.models)
    generator = torch.Generator("cpu").manual_seed(cfg.seed)
    result = outpaint(cfg, components, clip, lora_path=adapter, generator=generator, progress=False)
    c = result.canvas
    x0 = c.left - left_px
    return result.frames[:, :, c.top : c.top + h, x0 : x0 + full_w]


def eval_from_file(path: str | os.PathLike, run_method: RunMethod | None = None, progress: bool = True) -> dict:
    """``motia eval EVAL.yaml``: load the eval config and run it (``config:`` methods run motia itself,
    with one model set loaded for the whole evaluation)."""
    if run_method is None:
        import functools

        from motia.job import ModelCache

        run_method = functools.partial(run_motia, models=ModelCache())
    return run_eval(load_eval_config(path), run_method=run_method, progress=progress)
