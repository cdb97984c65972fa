"""Resolution-aware U-Net (HiDiffusion's RAU-Net) for canvases well above SD1.5's native 512 px.

At a large canvas SD1.5's deeper blocks see objects at a scale they were never
trained on, which shows as duplicated objects. RAU-Net runs every block below the
top one at half the usual resolution during the first denoising steps (where the
layout forms), and at the usual resolution afterwards:

* the first down block's downsampler (a 3x3 stride-2 conv) becomes a stride-4
  conv with dilation 2 and padding 2 (HiDiffusion's choice: the same weights,
  a receptive field scaled like the features), giving ``ceil(h / 4)`` rows;
* the upsampler feeding the last up block (``up_blocks[-2]``) interpolates those
  rows straight back to the top block's size, so the top blocks and their skip
  connections stay at full resolution. Every upsampler is given its skip's size
  (``output_size``, recorded at the mirroring downsampler), so odd grids line up.

Every level k >= 1 then has the grid ``ceil(h / 2**(k+1))`` instead of
``ceil(h / 2**k)``, which is again a grid of the form the LoRA insertion map and
window attention look up, so both work unchanged.

ControlNet. The ControlNet keeps running at the usual resolution; a forward
pre-hook on the UNet area-resizes each ControlNet residual that is not at the
latent size to ``ceil(size / 2)`` (= the RAU grid, since ceil(ceil(x/a)/2) =
ceil(x/2a)) before the UNet adds it. The residuals at the latent size (conv_in and
the top down block) are used as they are.

Plug-in points only: forward hooks on the two resampling modules and a pre-hook
on the model; ``RAUNet.remove()`` takes them off, after which outputs are
bit-identical to before. While installed it is switched with ``set_active``
(``motia.outpaint`` turns it on for the steps with index < ``fraction * steps``);
inactive, the hooks pass everything through untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import ConfigError

DEFAULT_FRACTION = 0.4  # HiDiffusion's T1 ratio for SD1.5: RAU on the first 40% of the steps


@dataclass
class RAUNet:
    """Handle of an installed RAU-Net: ``set_active(bool)`` per step, ``remove()`` to undo (idempotent)."""

    num_levels: int  # down blocks with a downsampler (= up blocks with an upsampler)
    active: bool = False
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # level -> grid entering its downsampler
    _handles: list = field(default_factory=list, repr=False)

    def set_active(self, on: bool) -> None:
        self.active = bool(on)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.active = False

    def __enter__(self) -> "RAUNet":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------ hooks
    def _downsample(self, level: int):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]  # (N, C, h, w), the grid of this level
            self.sizes[level] = (int(x.shape[-2]), int(x.shape[-1]))
            if not self.active or level != 0:
                return None
            conv = module.conv
            if getattr(module, "norm", None) is not None:
                x = module.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return F.conv2d(x, conv.weight, conv.bias, stride=4, padding=2, dilation=2)  # (N, C, ceil(h/4), ceil(w/4))

        return hook

    def _upsample(self, level: int):
        # Every upsampler gets its skip's grid explicitly: under RAU the total downsampling no
        # longer matches the one the UNet checks to decide whether to pass sizes itself.
        def hook(module, args, kwargs):
            if not self.active:
                return None
            if level not in self.sizes:
                raise RuntimeError(f"RAU-Net: the upsampler to level {level} ran before its downsampler")
            x = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "output_size")}
            return (x,), {**rest, "output_size": self.sizes[level]}

        return hook

    def _residuals(self, module, args, kwargs):
        if not self.active:
            return None
        down = kwargs.get("down_block_additional_residuals")
        mid = kwargs.get("mid_block_additional_residual")
        if down is None and mid is None:
            return None
        sample = args[0] if args else kwargs["sample"]
        latent_hw = tuple(sample.shape[-2:])
        if down is not None:
            kwargs["down_block_additional_residuals"] = tuple(_half(r, latent_hw) for r in down)
        if mid is not None:
            kwargs["mid_block_additional_residual"] = _half(mid, latent_hw)
        return args, kwargs


def _half(r: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """A residual below the top level, area-resized from its usual grid to the RAU grid ceil(size / 2)."""
    h, w = r.shape[-2:]
    if (h, w) == latent_hw:
        return r
    return F.adaptive_avg_pool2d(r, (math.ceil(h / 2), math.ceil(w / 2)))


def resampler_names(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Downsamplers of the down blocks (top first) and the upsamplers that mirror them (top last)."""
    down_blocks = getattr(model, "down_blocks", None)
    up_blocks = getattr(model, "up_blocks", None)
    if not down_blocks or not up_blocks:
        raise ConfigError("sample.rau: RAU-Net needs a UNet with down and up blocks (an SD-style UNet)")
    n = len(down_blocks) - 1  # the last down block has no downsampler
    downs = [f"down_blocks.{i}.downsamplers.0" for i in range(n)]
    ups = [f"up_blocks.{len(up_blocks) - 2 - i}.upsamplers.0" for i in range(n)]  # ups[i] restores level i
    modules = dict(model.named_modules())
    missing = [name for name in downs + ups if name not in modules]
    if n < 1 or missing:
        raise ConfigError(f"sample.rau: not an SD-style UNet (missing {missing[:2] or 'downsamplers'})")
    conv = getattr(modules[downs[0]], "conv", None)
    if not isinstance(conv, torch.nn.Conv2d) or conv.kernel_size != (3, 3) or conv.stride != (2, 2):
        raise ConfigError("sample.rau: the first downsampler is not a 3x3 stride-2 conv (not an SD-style UNet)")
    return downs, ups


def install_rau(unet: torch.nn.Module) -> RAUNet:
    """Install RAU-Net hooks on an SD-style UNet (UNetMotionModel or UNet2DConditionModel), inactive."""
    downs, ups = resampler_names(unet)
    modules = dict(unet.named_modules())
    rau = RAUNet(num_levels=len(downs))
    try:
        for level, (d, u) in enumerate(zip(downs, ups)):
            rau._handles.append(modules[d].register_forward_hook(rau._downsample(level), with_kwargs=True))
            rau._handles.append(modules[u].register_forward_pre_hook(rau._upsample(level), with_kwargs=True))
        rau._handles.append(unet.register_forward_pre_hook(rau._residuals, with_kwargs=True))
    except BaseException:
        rau.remove()
        raise
    return rau


def active_at(step: int, num_steps: int, fraction: float) -> bool:
    """Whether RAU-Net runs at denoising step ``step`` (index into the timesteps) of ``num_steps``."""
    return step < fraction * num_steps
