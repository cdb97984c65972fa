"""Canvas geometry for outpainting: where the source sits, masks, control video, insertion map, paste.

The same picture has a canvas per scale: the model's (``video.size``, multiples of
8) and the written one (the source's native scale, or a delivery size).
``resample_canvas`` redraws frames from one onto another, box onto box, and
``paste_known`` puts the known pixels back at the written scale.

Conventions used throughout:

* Pixel frames are ``(F, C, H, W)`` float in [0, 1] (C = 3 for RGB).
* A *known* mask is 1 where source pixels are known and 0 where pixels must be
  generated (the opposite polarity of an inpainting mask).
* The canvas is the output size; the *known box* is where the source frame sits on it.
  Box coordinates are ``(top, left, bottom, right)`` with bottom/right exclusive.

Everything is vectorised tensor code: distances come from broadcast row/column
clamps, the feathered seam from edge replication (a per-frame known mask: an exact
separable distance transform), resampling from two banded-weight matmuls.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F_nn

from motia.errors import ConfigError

SIDES = ("left", "right", "top", "bottom")
DEFAULT_BORDER_RANGES: dict[str, tuple[float, float]] = {side: (0.0, 0.4) for side in SIDES}

# Tolerance for "fully known" after averaging a 0/1 mask: float32 means of ones are exact,
# anything with a zero in it is at most 1 - 1/N for N < 2**20 pixels per cell.
_FULL_TOL = 1e-6


@dataclass(frozen=True)
class Canvas:
    """An output canvas of ``height x width`` with the ``src_h x src_w`` source at ``(top, left)``."""

    src_h: int
    src_w: int
    height: int
    width: int
    top: int
    left: int

    def __post_init__(self):
        for name in ("src_h", "src_w", "height", "width", "top", "left"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Canvas.{name} must be an int, got {value!r}")
        if self.src_h < 1 or self.src_w < 1:
            raise ValueError(f"Canvas source must be at least 1x1, got {self.src_h}x{self.src_w}")
        if self.top < 0 or self.left < 0 or self.top + self.src_h > self.height or self.left + self.src_w > self.width:
            raise ValueError(
                f"Canvas box {self.box} does not fit a {self.height}x{self.width} canvas"
            )

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the known box; bottom and right are exclusive."""
        return self.top, self.left, self.top + self.src_h, self.left + self.src_w

    @property
    def expansion(self) -> dict[str, int]:
        """Pixels added on each side: left/right/top/bottom."""
        top, left, bottom, right = self.box
        return {"left": left, "right": self.width - right, "top": top, "bottom": self.height - bottom}

    @property
    def max_expansion(self) -> int:
        """D in the insertion map: the largest side expansion, at least 1 (so d / D is defined)."""
        return max(1, *self.expansion.values())

    def latent_size(self, scale: int = 8) -> tuple[int, int]:
        """(h, w) of the latent grid; the canvas must be a multiple of ``scale``."""
        if self.height % scale or self.width % scale:
            raise ValueError(f"canvas {self.height}x{self.width} is not a multiple of the latent scale {scale}")
        return self.height // scale, self.width // scale

    def to_dict(self) -> dict:
        """Plain dict for run summaries (fields, box and expansion)."""
        out = asdict(self)
        out["box"] = list(self.box)
        out["expansion"] = self.expansion
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "Canvas":
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        return cls(**{k: int(data[k]) for k in ("src_h", "src_w", "height", "width", "top", "left")})


# ----------------------------------------------------------------------------- planning


def _parse_aspect(aspect) -> Fraction:
    """'9:16', '16/9', '1.5' or a number (width / height) -> exact positive Fraction."""
    bad = ConfigError(
        f"outpaint.aspect: cannot parse {aspect!r}; use width:height like '16:9' or '9:16', or a number width/height"
    )
    try:
        if isinstance(aspect, bool):
            raise bad
        if isinstance(aspect, (int, float)):
            value = Fraction(aspect).limit_denominator(10_000)
        elif isinstance(aspect, str):
            text = aspect.strip()
            for sep in (":", "/"):
                if sep in text:
                    num, den = text.split(sep)
                    value = Fraction(num.strip()) / Fraction(den.strip())
                    break
            else:
                value = Fraction(text).limit_denominator(10_000)
        else:
            raise bad
    except (ValueError, ZeroDivisionError, OverflowError, TypeError):
        raise bad from None
    if value <= 0:
        raise bad
    return value


def _round_up(src: int, before: int, after: int, multiple: int) -> tuple[int, int]:
    """Grow ``before + src + after`` to a multiple; extra pixels go to the sides in proportion to their size.

    A dimension with no expansion splits the extra evenly (the odd pixel goes after).
    """
    total = before + src + after
    extra = -total % multiple
    if before + after > 0:
        extra_before = math.floor(extra * before / (before + after) + 0.5)
    else:
        extra_before = extra // 2
    return before + extra_before, after + extra - extra_before


def plan_canvas(
    src_h: int,
    src_w: int,
    *,
    left: float = 0.0,
    right: float = 0.0,
    top: float = 0.0,
    bottom: float = 0.0,
    target_size: Sequence[int] | None = None,
    aspect: str | float | None = None,
    multiple: int = 8,
) -> Canvas:
    """Plan the output canvas around an ``src_h x src_w`` source; exactly one mode is used.

    Modes:

    * fractions: ``left``/``right`` add that fraction of the source *width*, ``top``/``bottom``
      that fraction of the source *height* (rounded to whole pixels; a positive fraction
      adds at least one pixel).
    * ``target_size=(H, W)``: both at least the source size; the source is centred
      (an odd extra pixel goes right/bottom).
    * ``aspect``: width:height as ``"9:16"``, ``"16/9"`` or a number w/h. The source is kept
      and ONE dimension grows (centred) until the aspect is reached (ceil to whole pixels).

    Rounding: the canvas is then rounded UP to a multiple of ``multiple`` in each dimension
    (8 = the latent scale). The source is never cropped or resized: the extra pixels are
    added to the sides that were already expanded, in proportion to their expansion; in a
    dimension with no expansion they are split evenly (odd pixel right/bottom). So the final
    canvas may be a few pixels wider than asked, and the aspect mode is exact only up to it.

    Raises ConfigError naming the key (``outpaint.left`` ..., ``outpaint.target_size``,
    ``outpaint.aspect``) for negative fractions, a target smaller than the source, an
    unparsable aspect, more than one mode, or nothing to outpaint.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    if src_h < 1 or src_w < 1:
        raise ValueError(f"source must be at least 1x1, got {src_h}x{src_w}")

    fractions = {"left": left, "right": right, "top": top, "bottom": bottom}
    for side, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"outpaint.{side} must be a number (a fraction of the source size), got {value!r}")
        if value < 0:
            raise ConfigError(f"outpaint.{side} must be >= 0 (a fraction of the source size), got {value}")

    modes = []
    if any(v > 0 for v in fractions.values()):
        modes.append("outpaint.left/right/top/bottom")
    if target_size is not None:
        modes.append("outpaint.target_size")
    if aspect is not None:
        modes.append("outpaint.aspect")
    if len(modes) > 1:
        raise ConfigError(f"outpaint: set only one of {', '.join(modes)} (they conflict)")
    if not modes:
        raise ConfigError(
            "outpaint: nothing to outpaint; set outpaint.left/right/top/bottom, outpaint.target_size or outpaint.aspect"
        )

    if target_size is not None:
        try:
            th, tw = target_size
            if any(isinstance(v, bool) or int(v) != v for v in (th, tw)):
                raise TypeError
            th, tw = int(th), int(tw)
        except (TypeError, ValueError):
            raise ConfigError(f"outpaint.target_size must be [height, width] in pixels, got {target_size!r}") from None
        if th < src_h or tw < src_w:
            raise ConfigError(
                f"outpaint.target_size [{th}, {tw}] ([height, width]) is smaller than the source "
                f"(height {src_h}, width {src_w} at the model's scale); it must be at least that in both dimensions"
            )
        if (th, tw) == (src_h, src_w):
            raise ConfigError(f"outpaint.target_size {th}x{tw} equals the source size: nothing to outpaint")
        ex_top, ex_left = (th - src_h) // 2, (tw - src_w) // 2
        ex_bottom, ex_right = th - src_h - ex_top, tw - src_w - ex_left
    elif aspect is not None:
        ratio = _parse_aspect(aspect)
        source_ratio = Fraction(src_w, src_h)
        ex_top = ex_bottom = ex_left = ex_right = 0
        if ratio > source_ratio:  # wider than the source: grow the width
            grow = math.ceil(src_h * ratio) - src_w
            ex_left = grow // 2
            ex_right = grow - ex_left
        elif ratio < source_ratio:  # taller: grow the height
            grow = math.ceil(src_w / ratio) - src_h
            ex_top = grow // 2
            ex_bottom = grow - ex_top
        if ex_top + ex_bottom + ex_left + ex_right == 0:
            raise ConfigError(f"outpaint.aspect {aspect!r}: the {src_h}x{src_w} source already has it; nothing to outpaint")
    else:
        ex_left = max(1, round(left * src_w)) if left > 0 else 0
        ex_right = max(1, round(right * src_w)) if right > 0 else 0
        ex_top = max(1, round(top * src_h)) if top > 0 else 0
        ex_bottom = max(1, round(bottom * src_h)) if bottom > 0 else 0

    ex_top, ex_bottom = _round_up(src_h, ex_top, ex_bottom, multiple)
    ex_left, ex_right = _round_up(src_w, ex_left, ex_right, multiple)
    return Canvas(
        src_h=src_h,
        src_w=src_w,
        height=ex_top + src_h + ex_bottom,
        width=ex_left + src_w + ex_right,
        top=ex_top,
        left=ex_left,
    )


# ----------------------------------------------------------------------------- masks


def known_mask(canvas: Canvas, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(H, W) mask: 1 inside the known box, 0 where pixels are generated."""
    top, left, bottom, right = canvas.box
    mask = torch.zeros(canvas.height, canvas.width, dtype=dtype, device=device)
    mask[top:bottom, left:right] = 1
    return mask


def latent_known_mask(canvas: Canvas, scale: int = 8, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(H/scale, W/scale) mask: 1 only for latent cells whose pixels all lie inside the known box.

    A partially known cell is generated (the final pixel paste restores exactness);
    boxes not aligned to ``scale`` are handled by the cell-extent comparison.
    """
    h, w = canvas.latent_size(scale)
    top, left, bottom, right = canvas.box
    rows = torch.arange(h, device=device) * scale
    cols = torch.arange(w, device=device) * scale
    row_in = (rows >= top) & (rows + scale <= bottom)  # (h,)
    col_in = (cols >= left) & (cols + scale <= right)  # (w,)
    return (row_in[:, None] & col_in[None, :]).to(dtype)


def downsample_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Known mask (..., H, W) -> (..., h, w): a cell is known (1) only if every pixel under it is known.

    Uses min-pooling over the adaptive cells, so any output size works (also non-integer
    ratios and ceil-rounded grids); a soft mask counts as known only where it is 1.
    """
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()  # (N, 1, H, W)
    cell_min = -F_nn.adaptive_max_pool2d(-flat, (h, w))  # (N, 1, h, w)
    out = (cell_min >= 1 - _FULL_TOL).to(mask.dtype if mask.is_floating_point() else torch.float32)
    return out.reshape(*lead, h, w)


def sample_border_widths(
    h: int,
    w: int,
    ranges: Mapping[str, Sequence[float]] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, int]:
    """Draw border widths in pixels: each side uniform in its (lo, hi) fraction of the side length.

    ``ranges`` maps side -> (lo, hi); missing sides keep the default (0, 0.4). left/right are
    fractions of ``w``, top/bottom of ``h``. Opposite sides are shrunk together if they would
    leave nothing known, so at least one row and one column stay known. Four uniforms are
    drawn from ``generator`` in the order left, right, top, bottom.
    """
    merged = dict(DEFAULT_BORDER_RANGES)
    for side, pair in (ranges or {}).items():
        if side not in DEFAULT_BORDER_RANGES:
            raise ValueError(f"border mask ranges: unknown side {side!r}; use one of {', '.join(SIDES)}")
        lo, hi = (float(v) for v in pair)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"border mask ranges[{side!r}] must satisfy 0 <= lo <= hi <= 1, got ({lo}, {hi})")
        merged[side] = (lo, hi)

    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(4, generator=generator, device=gen_device, dtype=torch.float64).cpu().tolist()
    widths = {}
    for side, ui in zip(SIDES, u):
        lo, hi = merged[side]
        length = w if side in ("left", "right") else h
        widths[side] = round((lo + (hi - lo) * ui) * length)

    for a, b, length in (("left", "right", w), ("top", "bottom", h)):
        total = widths[a] + widths[b]
        if total > length - 1:
            # Shrink both proportionally; floor keeps the sum <= length - 1.
            keep = length - 1
            widths[a] = widths[a] * keep // total
            widths[b] = widths[b] * keep // total
    return widths


def sample_border_mask(
    h: int,
    w: int,
    ranges: Mapping[str, Sequence[float]] | None = None,
    generator: torch.Generator | None = None,
    *,
    dtype=torch.float32,
    device=None,
) -> torch.Tensor:
    """(h, w) known mask for pseudo-outpainting training: 1 inside, 0 on a random border.

    Widths come from :func:`sample_border_widths` (same generator, same result); the known
    area is never empty.
    """
    widths = sample_border_widths(h, w, ranges, generator)
    mask = torch.zeros(h, w, dtype=dtype, device=device)
    mask[widths["top"] : h - widths["bottom"], widths["left"] : w - widths["right"]] = 1
    return mask


# ----------------------------------------------------------------------------- frames


def _check_frames(frames: torch.Tensor, h: int, w: int, name: str) -> None:
    if frames.dim() != 4 or frames.shape[-2:] != (h, w):
        raise ValueError(f"{name} must be (F, C, {h}, {w}), got {tuple(frames.shape)}")


def place_on_canvas(frames: torch.Tensor, canvas: Canvas, fill: float = 0.5) -> torch.Tensor:
    """(F, C, src_h, src_w) -> (F, C, H, W): the source in its box, ``fill`` everywhere else."""
    _check_frames(frames, canvas.src_h, canvas.src_w, "frames")
    top, left, bottom, right = canvas.box
    out = frames.new_full((frames.shape[0], frames.shape[1], canvas.height, canvas.width), fill)  # (F, C, H, W)
    out[:, :, top:bottom, left:right] = frames
    return out


def grid_box(canvas: Canvas, scale: int = 8) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the smallest ``scale``-aligned box that covers the known box.

    Every latent cell the source touches lies inside it; for an aligned box it is the box.
    """
    top, left, bottom, right = canvas.box
    return top - top % scale, left - left % scale, bottom + (-bottom) % scale, right + (-right) % scale


def pad_to_grid(frames: torch.Tensor, canvas: Canvas, scale: int = 8) -> torch.Tensor:
    """(F, C, src_h, src_w) -> the source alone on ``grid_box(canvas, scale)``, padded by edge replication.

    What the VAE encodes for the known latents: the source's own pixels, no canvas fill,
    so fully known latent cells carry the source's latents (the reference encodes the
    source by itself). The replicated margin only reaches partially known cells.
    """
    _check_frames(frames, canvas.src_h, canvas.src_w, "frames")
    top, left, bottom, right = canvas.box
    g_top, g_left, g_bottom, g_right = grid_box(canvas, scale)
    pad = (left - g_left, g_right - right, top - g_top, g_bottom - bottom)  # F.pad order: W then H
    if not any(pad):
        return frames
    return F_nn.pad(frames, pad, mode="replicate")  # (F, C, g_bottom - g_top, g_right - g_left)


def control_video(canvas_frames: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Inpainting-ControlNet condition: known pixels keep their value, pixels to generate become -1.0.

    ``canvas_frames`` is (F, C, H, W) in [0, 1]; ``known`` is (H, W) or (F, 1, H, W), and a
    pixel counts as known where ``known > 0.5``.
    """
    if canvas_frames.dim() != 4:
        raise ValueError(f"canvas_frames must be (F, C, H, W), got {tuple(canvas_frames.shape)}")
    if known.dim() == 2:
        known = known[None, None]  # (1, 1, H, W)
    if known.dim() != 4 or known.shape[1] != 1 or known.shape[-2:] != canvas_frames.shape[-2:]:
        raise ValueError(
            f"known must be (H, W) or (F, 1, H, W) matching frames {tuple(canvas_frames.shape)}, got {tuple(known.shape)}"
        )
    keep = known > 0.5
    return torch.where(keep, canvas_frames, torch.full_like(canvas_frames, -1.0))  # (F, C, H, W)


# ----------------------------------------------------------------------------- distance maps


def _box_offsets(canvas: Canvas, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row dy (H,) and per-column dx (W,) pixel distances to the box (0 inside)."""
    top, left, bottom, right = canvas.box
    ys = torch.arange(canvas.height, device=device, dtype=torch.float32)
    xs = torch.arange(canvas.width, device=device, dtype=torch.float32)
    dy = (top - ys).clamp(min=0) + (ys - (bottom - 1)).clamp(min=0)
    dx = (left - xs).clamp(min=0) + (xs - (right - 1)).clamp(min=0)
    return dy, dx


def box_distance(canvas: Canvas, *, device=None) -> torch.Tensor:
    """(H, W) Euclidean distance in pixels from each pixel centre to the nearest known-box pixel (0 inside)."""
    dy, dx = _box_offsets(canvas, device)
    return torch.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)


def insertion_map(canvas: Canvas, K: float = 2.0, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(H, W) LoRA strength: exp(-K * d / D), d = distance to the known box, D = ``canvas.max_expansion``.

    1 inside the box; exp(-K) at distance D; K = 0 gives all ones.
    """
    if not math.isfinite(K) or K < 0:
        raise ValueError(f"insertion K must be a finite number >= 0, got {K}")
    d = box_distance(canvas, device=device)
    return torch.exp(d * (-K / canvas.max_expansion)).to(dtype)


def resize_map(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Area-resize a map (..., H, W) in [0, 1] to any (h, w) token grid.

    Adaptive average pooling: the plain area filter for integer ratios, and overlapping
    area cells for non-integer ones (e.g. 13x21 grids from ceil-downsampling). Cells that
    see only ones stay exactly 1; the result stays in [0, 1].
    """
    lead = m.shape[:-2]
    flat = m.reshape(-1, 1, *m.shape[-2:])  # (N, 1, H, W)
    dtype = flat.dtype
    if not flat.is_floating_point() or dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # pooling sums in full precision so interior cells stay exactly 1
    H, W = flat.shape[-2:]
    if H % h == 0 and W % w == 0:
        out = F_nn.interpolate(flat, size=(h, w), mode="area")
    else:
        out = F_nn.adaptive_avg_pool2d(flat, (h, w))
    out = out.clamp(0.0, 1.0)
    if dtype.is_floating_point:
        out = out.to(dtype)
    return out.reshape(*lead, h, w)


# ----------------------------------------------------------------------------- output scale


def scale_canvas(canvas: Canvas, height: int, width: int) -> Canvas:
    """``canvas`` scaled to a ``height x width`` frame: each side's extent (before, box, after) scaled and rounded.

    The box keeps its place in proportion; rounding moves any edge by at most half a pixel.
    """
    if height < 1 or width < 1:
        raise ValueError(f"scaled canvas must be at least 1x1, got {height}x{width}")
    fy, fx = height / canvas.height, width / canvas.width
    top, left = round(canvas.top * fy), round(canvas.left * fx)
    bottom, right = round((canvas.top + canvas.src_h) * fy), round((canvas.left + canvas.src_w) * fx)
    bottom, right = min(max(bottom, top + 1), height), min(max(right, left + 1), width)
    top, left = min(top, bottom - 1), min(left, right - 1)
    return Canvas(src_h=bottom - top, src_w=right - left, height=height, width=width, top=top, left=left)


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel with a = -0.5 (Pillow's BICUBIC)."""
    a, x = -0.5, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resample_matrix(n: int, size: int, start: float, scale: float) -> torch.Tensor:
    """(size, n) weights taking n input samples to ``size`` outputs; output i covers input [start + i*scale, start + (i+1)*scale).

    Pillow's separable resampling (``Image.resize(box=...)``): bicubic taps around
    each output centre, widened by the scale when shrinking (antialiasing); taps
    outside the input are dropped and the rest renormalised. Centres beyond the
    input are moved onto its edge (Pillow refuses such boxes).
    """
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    taps = math.ceil(support) * 2 + 1
    centre = start + (torch.arange(size, dtype=torch.float64) + 0.5) * scale  # (size,)
    # Output pixels beyond the input's edges (a rounding pixel or so) take the edge's taps.
    centre = centre.clamp(0.0, float(n))
    lo = torch.trunc(centre - support + 0.5).clamp(min=0)
    hi = torch.trunc(centre + support + 0.5).clamp(max=n)
    pos = lo[:, None] + torch.arange(taps, dtype=torch.float64)  # (size, taps)
    weight = _bicubic((pos - centre[:, None] + 0.5) / fscale) * (pos < hi[:, None])
    total = weight.sum(1, keepdim=True)
    weight = torch.where(total != 0, weight / total, weight)
    matrix = torch.zeros(size, n + taps, dtype=torch.float64)  # spare columns take the dropped taps
    matrix.scatter_add_(1, pos.long(), weight)
    return matrix[:, :n].float()


def resample_canvas(frames: torch.Tensor, src: Canvas, dst: Canvas) -> torch.Tensor:
    """Frames (F, C, H, W) on canvas ``src`` redrawn on canvas ``dst`` (another scale of the same picture).

    The two canvases' known boxes are the same place of the picture: the map from
    ``dst`` pixels to ``src`` pixels is the affine one that takes box onto box (per
    axis), so what the model generated next to its box lands next to the native
    source. Bicubic (Pillow's kernel; antialiased when shrinking), clamped to [0, 1];
    ``dst`` pixels beyond ``src``'s edges (at most about a pixel from rounding) take
    the edge pixels. ``src == dst`` returns ``frames`` itself.
    """
    _check_frames(frames, src.height, src.width, "frames")
    if src == dst:
        return frames
    if (src.src_h, src.src_w) == (dst.src_h, dst.src_w) and _inside(src, dst):  # one scale (refine -> written)
        return _shifted(frames, src, dst)
    sy, sx = src.src_h / dst.src_h, src.src_w / dst.src_w  # source pixels per output pixel
    rows = _resample_matrix(src.height, dst.height, src.top - dst.top * sy, sy).to(frames)  # (H', H)
    cols = _resample_matrix(src.width, dst.width, src.left - dst.left * sx, sx).to(frames).T  # (W, W')
    # Banded weights as dense matmuls: from a model-size canvas that is a few GFLOP per native
    # frame, far faster than per-tap gathers. The cheaper order goes first.
    (h, w), (h2, w2) = frames.shape[-2:], (dst.height, dst.width)
    if h2 * h * w + h2 * w * w2 <= h * w * w2 + h2 * h * w2:
        out = torch.matmul(torch.matmul(rows, frames), cols)  # (F, C, H', W) -> (F, C, H', W')
    else:
        out = torch.matmul(rows, torch.matmul(frames, cols))  # (F, C, H, W') -> (F, C, H', W')
    return out.clamp_(0.0, 1.0)


def _inside(src: Canvas, dst: Canvas) -> bool:
    """Whether ``dst``, laid box onto box over ``src`` at the same scale, lies wholly within it."""
    dy, dx = src.top - dst.top, src.left - dst.left
    return dy >= 0 and dx >= 0 and dy + dst.height <= src.height and dx + dst.width <= src.width


def _shifted(frames: torch.Tensor, src: Canvas, dst: Canvas) -> torch.Tensor:
    """``resample_canvas`` between two canvases of one scale, ``dst`` within ``src``: a whole-pixel crop, box onto box.

    The bicubic kernel at whole-pixel offsets is 1 at its centre and 0 elsewhere, so this is
    exactly what the matmuls compute, without them (a frame at the output's scale is tens of MB).
    """
    dy, dx = src.top - dst.top, src.left - dst.left  # dst pixel (y, x) is src pixel (y + dy, x + dx)
    return frames[..., dy : dy + dst.height, dx : dx + dst.width].clamp(0.0, 1.0)


def _nearest_known(known: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared distance (F, H, W) to the nearest known pixel and its row/column indices, exact within ``radius``.

    Separable exact Euclidean distance (Felzenszwalb-Huttenlocher, with the row pass
    limited to ``radius`` columns): per column the nearest known row above and below
    (cumulative max/min), then per row the best column within ``radius``. Beyond
    ``radius`` the distance is inf (the indices are then meaningless).
    """
    f, h, w = known.shape
    big = h + w + radius + 1
    rows = torch.arange(h, device=known.device).view(1, h, 1).expand(f, h, w)
    above = torch.where(known, rows, rows.new_full((), -big)).cummax(dim=1).values  # nearest known row <= y
    below = torch.where(known, rows, rows.new_full((), 2 * big)).flip(1).cummin(dim=1).values.flip(1)  # >= y
    up, down = rows - above, below - rows
    gap = torch.minimum(up, down).float()  # (F, H, W) rows to the nearest known pixel in this column
    gap = torch.where(gap > radius, torch.full_like(gap, math.inf), gap)
    qrow = torch.where(up <= down, above, below)
    pad = (radius, radius)
    gap_p = F_nn.pad(gap, pad, value=math.inf)
    qrow_p = F_nn.pad(qrow, pad)
    best = torch.full_like(gap, math.inf)
    best_row = torch.zeros_like(qrow)
    best_col = torch.zeros_like(qrow)
    cols = torch.arange(w, device=known.device).view(1, 1, w)
    for dx in sorted(range(-radius, radius + 1), key=lambda d: (abs(d), d)):  # ties go to the nearer column
        g = gap_p[..., radius + dx : radius + dx + w]
        d2 = g * g + float(dx * dx)
        better = d2 < best
        best = torch.where(better, d2, best)
        best_row = torch.where(better, qrow_p[..., radius + dx : radius + dx + w], best_row)
        best_col = torch.where(better, (cols + dx).expand_as(best_col), best_col)
    return best, best_row, best_col


# ----------------------------------------------------------------------------- paste


def feather_pixels(feather: float, canvas: Canvas) -> float:
    """``output.feather`` in pixels of ``canvas``: pixels as given (>= 1, or 0), a fraction (< 1) of the box's short side."""
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    return float(feather) if feather >= 1 or feather == 0 else feather * min(canvas.src_h, canvas.src_w)


def paste_known(
    generated: torch.Tensor,
    source: torch.Tensor,
    canvas: Canvas,
    feather: float = 8,
    *,
    known: torch.Tensor | None = None,
    known_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paste the known pixels back: exact where known, a feathered seam on the generated side.

    ``generated`` is (F, C, H, W), ``source`` (F, C, src_h, src_w), both in [0, 1]. The
    source box is always known. ``known`` (F, 1, H, W) or (H, W), optional, marks more
    known pixels (> 0.5), whose values come from ``known_image`` (F, C, H, W): pixels
    other frames already show, say. Outside the known pixels, within ``feather``
    pixels (any float >= 0), the residual ``known - generated`` of the nearest known
    pixel is added with a weight falling linearly from 1 at the edge to 0 at distance
    ``feather``, which removes the colour step at the seam; 0 is a hard paste. The
    result is clamped to [0, 1], and known pixels hold their values bit for bit.
    Only the band around the box is touched when ``known`` is None.
    """
    _check_frames(generated, canvas.height, canvas.width, "generated")
    _check_frames(source, canvas.src_h, canvas.src_w, "source")
    if generated.shape[:2] != source.shape[:2]:
        raise ValueError(f"generated {tuple(generated.shape)} and source {tuple(source.shape)} differ in frames/channels")
    if not feather >= 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    if known is not None:
        return _paste_mask(generated, source, canvas, float(feather), known, known_image)
    if known_image is not None:
        raise ValueError("known_image needs the known mask that says where it applies")
    top, left, bottom, right = canvas.box
    dtype = torch.promote_types(generated.dtype, source.dtype)
    out = generated.to(dtype).clone()  # (F, C, H, W)
    src = source.to(dtype=dtype, device=out.device)  # (F, C, h, w)

    if feather > 0:
        # Pixels farther than `feather` from the box keep weight 0: work on the box grown by it.
        r = math.ceil(feather)
        y0, y1 = max(top - r, 0), min(bottom + r, canvas.height)
        x0, x1 = max(left - r, 0), min(right + r, canvas.width)
        dy, dx = _box_offsets(canvas, out.device)
        dist = torch.sqrt(dy[y0:y1, None] ** 2 + dx[None, x0:x1] ** 2)  # (h', w')
        weight = (1.0 - dist / feather).clamp(min=0.0).to(dtype)  # 1 inside the box
        residual = src - out[:, :, top:bottom, left:right]  # (F, C, h, w)
        # The nearest box pixel of a pixel outside is its coordinates clamped into the box: edge replication.
        nearest = F_nn.pad(residual, (left - x0, x1 - right, top - y0, y1 - bottom), mode="replicate")  # (F, C, h', w')
        out[:, :, y0:y1, x0:x1] += weight * nearest
    out = out.clamp_(0.0, 1.0)
    out[:, :, top:bottom, left:right] = src
    return out


def _paste_mask(generated, source, canvas: Canvas, feather: float, known, known_image) -> torch.Tensor:
    """``paste_known`` with a per-frame known mask: the same seam, nearest known pixel by exact distance."""
    n, c, h, w = generated.shape
    if known.dim() == 2:
        known = known[None, None].expand(n, 1, h, w)
    if known.dim() != 4 or known.shape[1] != 1 or known.shape[-2:] != (h, w) or known.shape[0] not in (1, n):
        raise ValueError(f"known must be (H, W) or (F, 1, H, W) matching {tuple(generated.shape)}, got {tuple(known.shape)}")
    if known_image is None:
        raise ValueError("known_image (F, C, H, W) must give the values of the known pixels")
    _check_frames(known_image, h, w, "known_image")
    top, left, bottom, right = canvas.box
    dtype = torch.promote_types(generated.dtype, source.dtype)
    gen = generated.to(dtype)
    target = known_image.to(dtype=dtype, device=gen.device).expand(n, c, h, w).clone()  # (F, C, H, W)
    target[:, :, top:bottom, left:right] = source.to(dtype=dtype, device=gen.device)
    mask = (known.to(gen.device) > 0.5).expand(n, 1, h, w).clone()  # (F, 1, H, W)
    mask[:, :, top:bottom, left:right] = True
    out = gen.clone()
    if feather > 0:
        d2, row, col = _nearest_known(mask[:, 0], math.ceil(feather))  # (F, H, W) each
        weight = (1.0 - torch.sqrt(d2) / feather).clamp(min=0.0).to(dtype)[:, None]  # (F, 1, H, W)
        residual = (target - gen).flatten(2)  # (F, C, H*W)
        index = (row * w + col).clamp_(0, h * w - 1).flatten(1)[:, None].expand(n, c, h * w)
        nearest = residual.gather(2, index).view(n, c, h, w)
        out = out + weight * nearest
    out = out.clamp_(0.0, 1.0)
    return torch.where(mask, target, out)
