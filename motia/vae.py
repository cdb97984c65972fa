"""The VAE's two directions for both stages: frames to latents and back, chunked, optionally in spatial tiles.

Adaptation caches the clip's latents with ``encode_frames``; outpainting encodes the
known frames and decodes the sampled latents with the same functions. For frames larger
than a tile (the refine stage works at the output's scale) the VAE runs tile by tile, so its
activations stay those of one tile however large the canvas: ``tiled`` turns on diffusers'
tiled encode (``AutoencoderKL.enable_tiling``: overlapping tiles, blended), and
``decode_latents(..., tile=)`` decodes with ``decode_tiled``, the same blend accumulated into
one output frame (diffusers' tiled decode keeps every decoded tile until it blends them:
three times a frame's size, at 3416x1920 some 240 MB a frame).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from motia.errors import InputError, MotiaError
from motia.video import unit_frames


def vae_scale(vae) -> int:
    """Pixels per latent cell: 2 ** (number of VAE levels - 1), 8 for SD."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor, chunk: int, device=None) -> torch.Tensor:
    """(F, 3, H, W) uint8, or float in [0, 1] -> (F, 4, H/8, W/8) float32 CPU latents: posterior mean x scaling_factor."""
    param = next(vae.parameters())
    device = param.device if device is None else device
    out = []
    for i in range(0, frames.shape[0], chunk):
        x = unit_frames(frames[i : i + chunk]).to(device=device, dtype=param.dtype) * 2 - 1  # (n, 3, H, W) in [-1, 1]
        out.append(vae.encode(x).latent_dist.mean.float().cpu())
    latents = torch.cat(out) * vae.config.scaling_factor  # (F, 4, h, w)
    if not torch.isfinite(latents).all():
        raise InputError(f"the VAE gave non-finite latents in {param.dtype}; run with models.dtype=fp32")
    return latents


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, chunk: int, tile: int | None = None) -> Iterator[torch.Tensor]:
    """Yield decoded frames (n, 3, H, W) float32 CPU in [0, 1], ``chunk`` frames per VAE call.

    ``latents`` is (B, 4, F, h, w) (frames of every batch row in turn) or (F, 4, h, w),
    scaled by ``scaling_factor`` as the sampler produces them. Only one chunk is
    on the device at a time. ``tile`` (pixels): frames larger than a tile are decoded tile
    by tile (``decode_tiled``).
    """
    if latents.dim() == 5:
        b, c, f, h, w = latents.shape
        latents = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (B*F, 4, h, w)
    param = next(vae.parameters())
    scale = vae.config.scaling_factor
    cells = None if tile is None else max(1, tile // vae_scale(vae))
    for i in range(0, latents.shape[0], chunk):
        z = latents[i : i + chunk].to(device=param.device, dtype=param.dtype) / scale  # (n, 4, h, w)
        if cells is not None and max(z.shape[-2:]) > cells:
            pixels = decode_tiled(vae, z, cells)
        else:
            pixels = vae.decode(z).sample.float()  # (n, 3, H, W) in about [-1, 1]
        if not torch.isfinite(pixels).all():
            raise MotiaError(
                f"the VAE decoded non-finite pixels in {param.dtype}; run with models.dtype=fp32 "
                "or models.vae=stabilityai/sd-vae-ft-mse"
            )
        yield pixels.div_(2).add_(0.5).clamp_(0, 1).cpu()  # in place: a frame at the refine scale is tens of MB


def decode_tiled(vae, z: torch.Tensor, cells: int, overlap: float = 0.25) -> torch.Tensor:
    """(n, 3, H, W) float32 frames of latents ``z`` (n, 4, h, w), decoded in overlapping tiles of ``cells`` cells.

    Each tile's pixels are added into one output with weights that ramp linearly across the
    overlap (1 inside, falling towards a tile's edge, never 0 at the frame's edge) and the sum is
    divided by the weights: the blend of diffusers' tiled decode, but holding the output and one
    tile instead of every decoded tile (a frame at the output's scale is tens of MB in float32).
    """
    n, _, h, w = z.shape
    px = vae_scale(vae)
    step = max(1, int(cells * (1 - overlap)))
    ramp = max(1, (cells - step) * px)  # overlap in pixels
    out = None
    weight = torch.zeros(h * px, w * px, dtype=torch.float32, device=z.device)
    rows = list(range(0, max(h - cells, 0) + 1, step)) + ([h - cells] if h > cells and (h - cells) % step else [])
    cols = list(range(0, max(w - cells, 0) + 1, step)) + ([w - cells] if w > cells and (w - cells) % step else [])
    for y in rows:
        for x in cols:
            tile = vae.decode(z[:, :, y : y + cells, x : x + cells]).sample.float()  # (n, 3, th, tw)
            th, tw = tile.shape[-2:]
            wy = _edge_ramp(th, ramp, first=y == 0, last=y + cells >= h, device=tile.device)
            wx = _edge_ramp(tw, ramp, first=x == 0, last=x + cells >= w, device=tile.device)
            wgt = wy[:, None] * wx[None, :]  # (th, tw)
            if out is None:
                out = torch.zeros(n, tile.shape[1], h * px, w * px, dtype=torch.float32, device=tile.device)
            out[:, :, y * px : y * px + th, x * px : x * px + tw] += tile * wgt
            weight[y * px : y * px + th, x * px : x * px + tw] += wgt
            del tile
    return out.div_(weight)


def _edge_ramp(length: int, ramp: int, *, first: bool, last: bool, device) -> torch.Tensor:
    """(length,) weights: linear from 1/(ramp+1) up to 1 over ``ramp`` pixels at an inner edge, flat 1 at a frame edge."""
    w = torch.ones(length, dtype=torch.float32, device=device)
    up = torch.arange(1, ramp + 1, dtype=torch.float32, device=device) / (ramp + 1)
    k = min(ramp, length)
    if not first:
        w[:k] = torch.minimum(w[:k], up[:k])
    if not last:
        w[length - k :] = torch.minimum(w[length - k :], up[:k].flip(0))
    return w


_TILING = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")


@contextlib.contextmanager
def tiled(vae, tile: int | None, overlap: float = 0.25) -> Iterator[None]:
    """Within the context, the VAE encodes (and its own ``decode``, decodes) frames larger than ``tile`` pixels in tiles.

    diffusers' own tiling (``enable_tiling``): tiles of ``tile`` pixels (``tile / scale``
    latent cells) overlapping by ``overlap`` of a tile, blended linearly; frames no larger
    than a tile go through the VAE whole, exactly as without the context. ``tile=None``
    changes nothing. The VAE's settings are restored on exit.
    """
    if tile is None or not all(hasattr(vae, name) for name in _TILING):
        yield
        return
    saved = {name: getattr(vae, name) for name in _TILING}
    vae.use_tiling = True
    vae.tile_sample_min_size = int(tile)
    vae.tile_latent_min_size = int(tile) // vae_scale(vae)
    vae.tile_overlap_factor = float(overlap)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)
