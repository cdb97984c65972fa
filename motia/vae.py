"""The VAE's two directions for both stages: frames to latents and back, chunked, optionally in spatial tiles.

Adaptation caches the clip's latents with ``encode_frames``; outpainting encodes the
known frames and decodes the sampled latents with the same functions. ``tiled`` turns
on diffusers' tiled encode/decode (``AutoencoderKL.enable_tiling``'s overlapping tiles,
blended) for frames larger than a tile, so the VAE's activations stay those of one tile
however large the canvas: the refine stage works at the output's scale.
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
def decode_latents(vae, latents: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
    """Yield decoded frames (n, 3, H, W) float32 CPU in [0, 1], ``chunk`` frames per VAE call.

    ``latents`` is (B, 4, F, h, w) (frames of every batch row in turn) or (F, 4, h, w),
    scaled by ``scaling_factor`` as the sampler produces them. Only one chunk is
    on the device at a time.
    """
    if latents.dim() == 5:
        b, c, f, h, w = latents.shape
        latents = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (B*F, 4, h, w)
    param = next(vae.parameters())
    scale = vae.config.scaling_factor
    for i in range(0, latents.shape[0], chunk):
        z = latents[i : i + chunk].to(device=param.device, dtype=param.dtype) / scale  # (n, 4, h, w)
        pixels = vae.decode(z).sample.float()  # (n, 3, H, W) in about [-1, 1]
        if not torch.isfinite(pixels).all():
            raise MotiaError(
                f"the VAE decoded non-finite pixels in {param.dtype}; run with models.dtype=fp32 "
                "or models.vae=stabilityai/sd-vae-ft-mse"
            )
        yield pixels.div_(2).add_(0.5).clamp_(0, 1).cpu()  # in place: a frame at the refine scale is tens of MB


_TILING = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")


@contextlib.contextmanager
def tiled(vae, tile: int | None, overlap: float = 0.25) -> Iterator[None]:
    """Within the context, the VAE encodes and decodes frames larger than ``tile`` pixels in overlapping tiles.

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
