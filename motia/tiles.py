"""Spatial tiles of the latent canvas, and the (temporal window x spatial tile) boxes the sampler blends.

A canvas larger than the models were trained for is denoised in overlapping spatial
tiles (MultiDiffusion, Follow-Your-Canvas): at every step each box, one temporal
window x one spatial tile, gets its own model call on its crop of the latents, and
the predictions are averaged per latent cell, each weighted by the product of a
temporal profile (over the window's frames, ``motia.windows.window_weights``) and a
spatial one (over the tile's rows and columns). The weights per cell are normalised,
so they sum to one wherever any box covers the cell.

Tiles are laid out per axis like temporal windows (``motia.windows.temporal_windows``):
at 0, stride, 2 * stride, ... plus one aligned to the far edge, stride = size - overlap,
all in latent cells (so their pixel edges fall on the latent grid). An axis no longer
than the tile is one tile; a canvas of one tile is exactly the untiled sampler.

Known boxes. A box whose cells are all known (every frame of its window, every cell
of its tile) needs no model call: its prediction only reaches cells that the
known-region blend overwrites right after the step (``motia.sampler.known_blend``
writes ``mask * source + (1 - mask) * x``, exact where mask is 1), so skipping it
changes no output bit. Cells that only skipped boxes cover get eps 0 (finite, then
overwritten).
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

import torch

from motia.windows import Window, temporal_windows, window_weights

Tile = tuple[int, int, int, int]  # (top, left, bottom, right) in latent cells; bottom/right exclusive
TILE_WEIGHTS = ("gaussian", "pyramid", "flat")
GAUSSIAN_VARIANCE = 0.01  # MultiDiffusion / Tiled Diffusion's profile: exp(-(x - mid)^2 / (2 var n^2))


class Box(NamedTuple):
    """One model call's share of a step: frames ``window`` x latent cells ``tile``."""

    window: Window
    tile: Tile

    def pixels(self, scale: int) -> Tile:
        """The tile in pixels of a canvas whose latent cells are ``scale`` pixels wide."""
        return tuple(v * scale for v in self.tile)  # type: ignore[return-value]


def spatial_tiles(h: int, w: int, size: int | Sequence[int], overlap: int) -> list[Tile]:
    """Tiles of ``size`` (cells; one int or (rows, cols)) overlapping by ``overlap`` cells, covering an h x w grid.

    Row-major order. A side no longer than its tile size is one tile; otherwise the
    last tile of a row/column is aligned to the far edge (it may overlap more).
    """
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(th, tw) < 1:
        raise ValueError(f"tile size must be >= 1 cell, got {th}x{tw}")
    if overlap < 0 or overlap >= min(th, tw):
        raise ValueError(f"tile overlap must be in [0, tile size {min(th, tw)}) cells, got {overlap}")
    rows = temporal_windows(h, th, th - overlap)
    cols = temporal_windows(w, tw, tw - overlap)
    return [(top, left, bottom, right) for top, bottom in rows for left, right in cols]


def whole(h: int, w: int) -> Tile:
    """The one tile that is the whole h x w grid."""
    return (0, 0, h, w)


def boxes(windows: Sequence[Window], tiles: Sequence[Tile]) -> list[Box]:
    """Every window x tile, window-major: the order the sampler calls and blends them in."""
    return [Box(tuple(win), tuple(tile)) for win in windows for tile in tiles]  # type: ignore[arg-type]


def tile_profile(length: int, kind: str = "gaussian", *, device=None) -> torch.Tensor:
    """(length,) float32 weights, all > 0: ``gaussian`` (peak 1), ``pyramid`` (1, 2, ..., back to 1) or ``flat`` (ones)."""
    if kind == "gaussian":
        if length < 1:
            raise ValueError(f"tile length must be >= 1, got {length}")
        i = torch.arange(length, device=device, dtype=torch.float64)
        mid = (length - 1) / 2
        return torch.exp(-((i - mid) ** 2) / (2 * GAUSSIAN_VARIANCE * length**2)).float()
    if kind in ("pyramid", "flat"):
        return window_weights(length, kind, device=device)
    raise ValueError(f"tile weights must be one of {', '.join(TILE_WEIGHTS)}, got {kind!r}")


def box_weights(box: Box, temporal: str = "pyramid", spatial: str = "gaussian", *, device=None) -> torch.Tensor:
    """(f, h, w) float32 weight of each cell of the box: temporal profile x row profile x column profile."""
    (start, end), (top, left, bottom, right) = box
    wt = window_weights(end - start, temporal, device=device)
    wy = tile_profile(bottom - top, spatial, device=device)
    wx = tile_profile(right - left, spatial, device=device)
    return wt.view(-1, 1, 1) * (wy.view(-1, 1) * wx.view(1, -1))  # (f, h, w)


def crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    """The box's part of (B, C, F, h, w) latents (a view)."""
    (start, end), (top, left, bottom, right) = box
    return x[:, :, start:end, top:bottom, left:right]


def blend_boxes(
    preds: Iterable[torch.Tensor],
    run: Sequence[Box],
    shape: Sequence[int],
    temporal: str = "pyramid",
    spatial: str = "gaussian",
) -> torch.Tensor:
    """Per-cell weighted average of per-box predictions, float32 (B, C, F, h, w) = ``shape``.

    ``preds`` yields one (B, C, f, th, tw) tensor per box of ``run``, in order (it may be a
    generator: one box's prediction is alive at a time besides the accumulator). Cells no
    box covers get 0 (the caller skips only boxes whose cells the known blend overwrites).
    """
    out = None
    weight_sum = None
    for box, pred in zip(run, preds, strict=True):
        (start, end), (top, left, bottom, right) = box
        if tuple(pred.shape[2:]) != (end - start, bottom - top, right - left):
            raise ValueError(f"prediction for box {box} has shape {tuple(pred.shape)}")
        if out is None:
            out = pred.new_zeros(tuple(shape), dtype=torch.float32)
            weight_sum = torch.zeros(tuple(shape[2:]), device=pred.device, dtype=torch.float32)  # (F, h, w)
        wgt = box_weights(box, temporal, spatial, device=pred.device)  # (f, th, tw)
        out[:, :, start:end, top:bottom, left:right] += pred.float() * wgt
        weight_sum[start:end, top:bottom, left:right] += wgt
    if out is None:
        return torch.zeros(tuple(shape), dtype=torch.float32)
    # Cells covered by skipped (all-known) boxes alone: eps 0, overwritten by the known blend.
    return out / torch.where(weight_sum > 0, weight_sum, torch.ones_like(weight_sum))


def check_tiling(tiles: Sequence[Tile], h: int, w: int) -> None:
    """Raise ValueError unless the tiles lie within the h x w grid and cover every cell."""
    covered = torch.zeros(h, w, dtype=torch.bool)
    for top, left, bottom, right in tiles:
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise ValueError(f"tile {(top, left, bottom, right)} is empty or outside the {h}x{w} latent grid")
        covered[top:bottom, left:right] = True
    if not bool(covered.all()):
        y, x = (int(v) for v in (~covered).nonzero()[0])
        raise ValueError(f"tiles {list(tiles)} leave latent cell ({y}, {x}) uncovered")


def known_boxes(run: Sequence[Box], known_mask: torch.Tensor | None) -> set[int]:
    """Indices of boxes whose every cell is known (mask 1) on every frame of their window.

    ``known_mask`` is (h, w) or (B, 1, F, h, w) as the sampler takes it, or None (nothing known).
    """
    if known_mask is None:
        return set()
    m = known_mask.float()
    if m.dim() == 2:
        m = m.view(1, 1, 1, *m.shape)
    full = (m >= 1).all(dim=1).all(dim=0)  # (F or 1, h, w)
    out = set()
    for i, ((start, end), (top, left, bottom, right)) in enumerate(run):
        frames = slice(None) if full.shape[0] == 1 else slice(start, end)
        if bool(full[frames, top:bottom, left:right].all()):
            out.add(i)
    return out


def tiles_in_pixels(tiles: Sequence[Tile], scale: int) -> list[Tile]:
    return [tuple(v * scale for v in t) for t in tiles]  # type: ignore[misc]


def tile_cells(pixels: int, scale: int) -> int:
    """A tile size or overlap given in pixels, in latent cells (rounded to the nearest, at least 0)."""
    return max(0, int(math.floor(pixels / scale + 0.5)))
