"""Native-scale crops for adaptation (``adapt.crops``): the source at the refine scale as training data.

With coarse-to-fine outpainting (``outpaint.refine``) the refine stage generates at the
output's scale, in spatial tiles of ``sample.tiles.size`` px, while adaptation trains on the
clip at the models' (coarse) scale: the LoRA would never have seen the clip's textures at
the size the refine stage draws them. With crops, a share of the training steps
(``adapt.crop_share``) trains on a tile-sized crop of the source at the refine scale
instead; a crop step is otherwise an ordinary step (a window within a shot, a border mask
within the crop, the ControlNet sees the crop with that border set to -1).

The data, made once per run (``load_crops``): the source frames at the refine scale
(``motia.known.source_at_scale``, the pixels the refine stage knows), centre-cropped to the
latent grid and kept as uint8 in a ``motia.known.FrameStore`` (in memory when small, else an
unlinked temporary file: 300 frames of 1080x1920 are 1.9 GB, kept out of the process); and
their latents, encoded whole by the VAE in tiles (``motia.vae.tiled``) and cached in
``<adapter folder>/latents_refine.pt`` under their own key (4 float32 per 8x8 pixels: 155 MB
for that clip, kept on the CPU; a step moves its crop to the device). A crop's latents are
the crop of these latents, its box aligned to the latent grid.

``plan_crops`` says whether a run trains on crops and records what (the adapter's
metadata, its summary and its resume fingerprint): ``{"size": tile px, "scale": [h, w]
of the source at the refine scale, "share": p}``, or None when the run does not refine
(``auto``), ``crops: off`` or ``crop_share: 0``; then adaptation draws and trains exactly
as without this module.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from motia.config import JobConfig

CROP_LATENTS_FILE = "latents_refine.pt"
# At most this many bytes of float frames per VAE call (``adapt.encode_chunk`` frames at most): 8 frames of
# 1080x1920 would be 200 MB of input alone, and the tiled encoder's activations grow with the frames per call.
_CHUNK_BYTES = 96 << 20
Box = tuple[int, int, int, int]  # (top, left, bottom, right) in pixels of the refine-scale frame


def plan_crops(cfg: JobConfig, clip, scale: int = 8, shots: Sequence[int] | None = None) -> dict | None:
    """What this run's adaptation trains on besides the clip: ``{"size", "scale", "share"}``, or None.

    ``auto``: crops when outpainting ``clip`` under ``cfg`` refines (``planning.plan_stages``'s
    refine stage), of ``sample.tiles.size`` px from the source at that stage's scale.
    ``shots`` (``planning.plan_shots``) only saves detecting the cuts again.
    """
    from motia.planning import plan_stages

    a = cfg.adapt
    if a.crops == "off" or a.crop_share == 0:
        return None
    refine = plan_stages(cfg, clip, scale, shots).refine
    if refine is None:
        return None
    return {"size": int(cfg.sample.tiles.size), "scale": [int(refine.canvas.src_h), int(refine.canvas.src_w)],
            "share": float(a.crop_share)}


def sample_crop_box(height: int, width: int, size: int, generator: torch.Generator, multiple: int = 8) -> Box:
    """A random ``size`` x ``size`` box (clipped to the frame) with its corner on the ``multiple`` grid.

    ``height`` and ``width`` are multiples of ``multiple``; two draws (top, then left) whatever the sizes.
    """
    h, w = min(size, height), min(size, width)
    top = multiple * int(torch.randint(0, (height - h) // multiple + 1, (1,), generator=generator))
    left = multiple * int(torch.randint(0, (width - w) // multiple + 1, (1,), generator=generator))
    return top, left, top + h, left + w


@dataclass
class CropSource:
    """The refine-scale source of one run's crops: its frames (``FrameStore``), latents, tile size and share."""

    store: object  # motia.known.FrameStore (F, H, W, 3) uint8, H and W multiples of ``multiple``
    latents: torch.Tensor  # (F, 4, H / multiple, W / multiple) float32, on the CPU
    size: int  # the crop's side in pixels (the refine stage's tile)
    share: float  # the chance that a step trains on a crop
    multiple: int = 8  # pixels per latent cell

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.store.shape[1], self.store.shape[2]

    def is_crop_step(self, generator: torch.Generator) -> bool:
        """One draw: whether this step trains on a crop (chance ``share``)."""
        return bool(torch.rand(1, generator=generator).item() < self.share)

    def box(self, generator: torch.Generator) -> Box:
        return sample_crop_box(*self.frame_size, self.size, generator, self.multiple)

    def take(self, start: int, end: int, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [start, end) cut to ``box``: latents (f, 4, h, w) and uint8 pixels (f, 3, H, W)."""
        top, left, bottom, right = box
        m = self.multiple
        latents = self.latents[start:end, :, top // m : bottom // m, left // m : right // m]
        pixels = torch.from_numpy(self.store.read(range(start, end), box)).permute(0, 3, 1, 2)  # (f, 3, H, W)
        return latents, pixels

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "CropSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def store_source(clip, size: Sequence[int], multiple: int = 8, folder: str | None = None):
    """The clip's source at ``size`` (H, W), centre-cropped to multiples of ``multiple``, in a ``FrameStore``.

    Returns (store, sha256 hex of its frames' bytes), frame by frame: the whole clip at that
    scale is never in this process's memory unless it is small.
    """
    from motia.errors import InputError
    from motia.known import FrameStore, source_at_scale

    h, w = int(size[0]), int(size[1])
    ch, cw = h - h % multiple, w - w % multiple
    if ch == 0 or cw == 0:
        raise InputError(f"the source at the refine scale is {h}x{w} pixels; crops need at least {multiple}x{multiple}")
    top, left = (h - ch) // 2, (w - cw) // 2  # as adaptation crops the clip (adapt.crop_to_multiple)
    store = FrameStore(clip.num_frames, ch, cw, 3, np.uint8, folder)
    digest = hashlib.sha256()
    try:
        if store.in_file:  # the file is sparse: a full disk would only show half-way through the clip
            import tempfile

            from motia.utils import check_free_space

            check_free_space(folder or tempfile.gettempdir(), store.nbytes,
                             "free some space there, set TMPDIR to a larger disk, or set adapt.crops=off")
        for t, frame in enumerate(source_at_scale(clip, (h, w))):
            frame = np.ascontiguousarray(frame[top : top + ch, left : left + cw])
            store.write(t, frame)
            digest.update(frame.tobytes())
    except BaseException:
        store.close()
        raise
    return store, digest.hexdigest()


def crop_latent_key(digest: str, shape: Sequence[int], vae_source: str, vae_dtype: torch.dtype, tile: int) -> str:
    """Cache key of the refine-scale latents: the frames' bytes (``digest``), the VAE, its precision, its tiles."""
    text = f"refine|{tuple(int(s) for s in shape)}|{digest}|{vae_source}|{vae_dtype}|tiles {int(tile)}"
    return hashlib.sha256(text.encode()).hexdigest()


@torch.no_grad()
def encode_store(vae, store, tile: int, chunk: int, device=None) -> torch.Tensor:
    """(F, 4, H/8, W/8) float32 CPU latents of every frame of ``store`` in VAE tiles, ``chunk`` frames per call at
    most (fewer when the frames are large)."""
    from motia.vae import encode_frames, tiled

    chunk = max(1, min(chunk, _CHUNK_BYTES // (3 * 4 * store.shape[1] * store.shape[2])))
    out = []
    with tiled(vae, tile):
        for i in range(0, store.shape[0], chunk):
            frames = torch.from_numpy(store.read(range(i, min(i + chunk, store.shape[0])))).permute(0, 3, 1, 2)
            out.append(encode_frames(vae, frames, chunk, device))  # (n, 4, h, w)
    return torch.cat(out)


def load_crops(
    crops: dict, clip, vae, out_dir: str | Path, *, vae_source: str, chunk: int, device=None,
    cached: Callable[[Path, str, Callable[[], torch.Tensor]], torch.Tensor], together=None,
) -> CropSource:
    """The ``CropSource`` of a run (``plan_crops``'s ``crops``): the frames stored, their latents cached.

    ``cached`` is ``motia.adapt.cached_latents`` (read ``<out_dir>/latents_refine.pt`` if it
    was written for this key, else encode and write it); ``together`` (a context manager
    factory) lets the main process of a launch encode first and the others read its cache.
    """
    import contextlib

    from motia.vae import vae_scale

    multiple = vae_scale(vae)
    store, digest = store_source(clip, crops["scale"], multiple)
    try:
        key = crop_latent_key(digest, store.shape, vae_source, next(vae.parameters()).dtype, crops["size"])
        with (together or contextlib.nullcontext)():
            latents = cached(Path(out_dir) / CROP_LATENTS_FILE, key,
                             lambda: encode_store(vae, store, crops["size"], chunk, device))  # fmt: skip
    except BaseException:
        store.close()
        raise
    return CropSource(store, latents, int(crops["size"]), float(crops["share"]), multiple)
