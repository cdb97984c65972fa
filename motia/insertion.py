"""Spatial-aware insertion: scale every LoRA layer's contribution per spatial position by a map.

During outpainting the LoRA acts at full strength over the known region and fades
into the new one (DESIGN.md "Spatial-aware insertion"). Given a map ``s`` (H, W) at
pixel resolution, every LoRA layer of the adapter computes

    base(x) + s(p) * delta(x)          instead of          base(x) + delta(x)

where p is the spatial position of each output element.

Plug-in point. peft 0.21's vanilla LoRA ``Linear``/``Conv2d`` forward is
``result + lora_B(lora_A(dropout(x))) * scaling``: the delta passes through the
``lora_B[adapter]`` submodule. A forward hook on that submodule multiplies its output
by the map laid out on the rows/tokens of its input, which scales exactly the delta,
leaves peft's code untouched and is removed on exit (outputs are then bit-identical
to before). Merged adapters (delta folded into the weights) and peft's LoRA variants
(DoRA, ...: a different path) are refused. peft's mixed-batch path
(``adapter_names=``) splits the batch and is not supported.

Where the positions are, per layer kind of a diffusers UNetMotionModel:

* ``tokens`` - spatial transformers (``*.attentions.*``: attention q/k/v/out,
  feed-forward, linear proj_in/out). Input (B*F, h_k*w_k, C): positions are the
  tokens, row-major on the layer's grid; the same map for every batch row.
* ``rows`` - motion modules (``*.motion_modules.*``). AnimateDiffTransformer3D folds
  space into the batch: input (B*h_k*w_k, F, C) ordered (b, y, x), so positions are
  batch rows; the map is repeated once per video of the call.
* ``conv`` - LoRA on a Conv2d: output (N, C, h, w), positions are pixels.
* none - layers whose inputs carry no spatial position (cross-attention to_k/to_v
  read text tokens; time-embedding projections). They keep full strength; the
  context lists them in ``unplaced`` and logs a warning.

Token grids. A forward pre-hook on the model reads the latent of each call, 5-D
(B, C, F, h, w) (or 4-D (N, C, h, w) for an image UNet), so the map follows the
call's latent size, batch (doubled for classifier-free guidance) and frame count
(temporal windows). SD's downsamplers are stride-2 convs with padding 1, so level k
has the grid (ceil(h/2^k), ceil(w/2^k)), and the up path restores the same sizes.
A layer with n positions (tokens: n = N; rows: n = rows / B) is at the level k with
ceil(h/2^k) * ceil(w/2^k) == n. The product strictly decreases with k until the grid
is 1x1, so the match is unique. The map is area-resized to that grid with
``motia.geometry.resize_map`` (adaptive average pooling), cached per grid for the
duration of the context. No global state: everything lives on the context object.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping

import torch
from torch import nn

from motia.geometry import resize_map
from motia.lora import ADAPTER_NAME

log = logging.getLogger(__name__)

TOKENS, ROWS, CONV = "tokens", "rows", "conv"
_LAYOUTS = (TOKENS, ROWS, CONV, None)


def _classify(name: str, layer, modules: Mapping[str, nn.Module]) -> str | None:
    base = layer.get_base_layer()
    if isinstance(base, nn.Conv2d):
        return CONV
    if not isinstance(base, nn.Linear):
        return None
    parts = name.split(".")
    if "motion_modules" in parts:
        return ROWS
    if "attentions" in parts:
        parent = modules.get(".".join(parts[:-1]))
        if parts[-1] in ("to_k", "to_v") and getattr(parent, "is_cross_attention", False):
            return None  # keys/values of the text tokens
        return TOKENS
    return None


def lora_layouts(model: nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, str | None]:
    """Position layout (``tokens``/``rows``/``conv``/None) of each layer carrying the adapter."""
    from peft.tuners.lora import LoraLayer

    modules = dict(model.named_modules())
    return {
        name: _classify(name, m, modules)
        for name, m in modules.items()
        if isinstance(m, LoraLayer) and adapter_name in m.lora_A
    }


def level_grid(h: int, w: int, n: int) -> tuple[int, int] | None:
    """The grid (ceil(h/2^k), ceil(w/2^k)) with n cells, or None if no level has n cells."""
    k = 0
    while True:
        gh, gw = math.ceil(h / 2**k), math.ceil(w / 2**k)
        if gh * gw == n:
            return gh, gw
        if gh * gw < n or (gh == 1 and gw == 1):
            return None
        k += 1


class SpatialLoraScale:
    """Context manager scaling an adapter's LoRA delta per spatial position by ``scale_map`` (H, W).

    ``scale_map`` is a 2-D tensor in [0, 1] at pixel (or any) resolution; a map of ones
    gives the plain LoRA output, zeros the base model. ``latent_size`` / ``batch_size``
    override what the pre-hook reads from each call (needed only when the hooked layers
    are driven without going through ``model``'s forward, e.g. in unit tests).
    ``layouts`` overrides the per-layer layout chosen by name (see the module doc).
    """

    def __init__(
        self,
        model: nn.Module,
        scale_map: torch.Tensor,
        adapter_name: str = ADAPTER_NAME,
        *,
        latent_size: tuple[int, int] | None = None,
        batch_size: int | None = None,
        layouts: Mapping[str, str | None] | None = None,
    ):
        self.model = model
        self.adapter_name = adapter_name
        self.latent_size = tuple(latent_size) if latent_size is not None else None
        self.batch_size = batch_size
        self.layouts = lora_layouts(model, adapter_name)
        if not self.layouts:
            raise ValueError(f"no LoRA layers of adapter {adapter_name!r} in the model")
        for name, layout in (layouts or {}).items():
            if name not in self.layouts:
                raise ValueError(f"layouts: {name!r} is not a LoRA layer of adapter {adapter_name!r}")
            if layout not in _LAYOUTS:
                raise ValueError(f"layouts: unknown layout {layout!r} for {name!r}")
            self.layouts[name] = layout
        self.unplaced = sorted(n for n, lay in self.layouts.items() if lay is None)
        self.set_map(scale_map)
        self._handles: list = []
        self._call_hw: tuple[int, int] | None = None
        self._call_batch: int | None = None

    def set_map(self, scale_map: torch.Tensor) -> None:
        """Replace the map (allowed inside the context; grids are recomputed lazily)."""
        m = torch.as_tensor(scale_map).detach()
        if m.dim() != 2:
            raise ValueError(f"scale_map must be 2-D (H, W), got shape {tuple(m.shape)}")
        m = m.float()
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError("scale_map values must be finite and in [0, 1]")
        self.scale_map = m  # (H, W)
        self._grids: dict = {}

    # ------------------------------------------------------------------ install / remove
    def __enter__(self) -> "SpatialLoraScale":
        if self._handles:
            raise RuntimeError("SpatialLoraScale is already active")
        modules = dict(self.model.named_modules())
        for name, layout in self.layouts.items():
            layer = modules[name]
            if getattr(layer, "merged", False) and self.adapter_name in getattr(layer, "merged_adapters", []):
                raise ValueError(f"{name}: the LoRA is merged into the weights; unmerge it before spatial scaling")
            if self.adapter_name in getattr(layer, "lora_variant", {}):
                raise ValueError(f"{name}: LoRA variants (DoRA, ...) are not supported by spatial scaling")
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._read_call, with_kwargs=True))
            for name, layout in self.layouts.items():
                if layout is not None:
                    lora_b = modules[name].lora_B[self.adapter_name]
                    self._handles.append(lora_b.register_forward_hook(self._make_hook(name, layout)))
        except BaseException:
            self._remove()
            raise
        if self.unplaced:
            log.warning(
                "spatial LoRA scale: %d LoRA layer(s) have no spatial positions and keep full strength (e.g. %s)",
                len(self.unplaced), self.unplaced[0],
            )
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._grids = {}
        self._call_hw = self._call_batch = None

    # ------------------------------------------------------------------ hooks
    def _read_call(self, module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        if torch.is_tensor(sample) and sample.dim() in (4, 5):
            self._call_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
            self._call_batch = int(sample.shape[0])
        return None

    def _make_hook(self, name: str, layout: str):
        def hook(module, args, output):
            return output * self._scale_for(name, layout, output)

        return hook

    def _grid(self, gh: int, gw: int, like: torch.Tensor) -> torch.Tensor:
        key = (gh, gw, like.device, like.dtype)
        g = self._grids.get(key)
        if g is None:
            g = resize_map(self.scale_map, gh, gw).to(device=like.device, dtype=like.dtype)  # (gh, gw)
            self._grids[key] = g
        return g

    def _latent(self, name: str) -> tuple[int, int]:
        hw = self.latent_size or self._call_hw
        if hw is None:
            raise RuntimeError(
                f"spatial LoRA scale: {name} ran before the latent size was known; "
                "call the model itself inside the context or pass latent_size"
            )
        return hw

    def _find(self, name: str, n: int) -> tuple[int, int]:
        h, w = self._latent(name)
        grid = level_grid(h, w, n)
        if grid is None:
            raise RuntimeError(
                f"spatial LoRA scale: {name} has {n} positions, which matches no downsampling level of the {h}x{w} latent"
            )
        return grid

    def _scale_for(self, name: str, layout: str, out: torch.Tensor) -> torch.Tensor:
        if layout == CONV:  # out (N, C, gh, gw)
            gh, gw = out.shape[-2:]
            return self._grid(gh, gw, out).view(1, 1, gh, gw)
        if layout == TOKENS:  # out (B*F, N, C)
            n = out.shape[-2]
            gh, gw = self._find(name, n)
            return self._grid(gh, gw, out).reshape(n, 1)
        # ROWS: out (B*gh*gw, F, C), rows ordered (b, y, x)
        rows = out.shape[0]
        b = self.batch_size or self._call_batch
        if b is None or rows % b:
            raise RuntimeError(f"spatial LoRA scale: {name} has {rows} rows, not a multiple of the batch {b}")
        gh, gw = self._find(name, rows // b)
        s = self._grid(gh, gw, out).reshape(1, gh * gw).expand(b, -1).reshape(rows)
        return s.view(rows, *([1] * (out.dim() - 1)))


def spatial_lora_scale(
    unet: nn.Module, scale_map: torch.Tensor, adapter_name: str = ADAPTER_NAME, **kwargs
) -> SpatialLoraScale:
    """``with spatial_lora_scale(unet, map):`` - every UNet call inside scales the LoRA delta by ``map`` (H, W)."""
    return SpatialLoraScale(unet, scale_map, adapter_name, **kwargs)
