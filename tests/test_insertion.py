"""Spatial-aware insertion: per-position LoRA scaling on single peft layers and on a tiny UNetMotionModel."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from motia import lora
from motia.insertion import SpatialLoraScale, level_grid, lora_layouts, spatial_lora_scale

H, W = 6, 10  # latent size with odd, ceil-rounded levels: 6x10, 3x5, 2x3, 1x2


def peft_layer(base: nn.Module, seed: int = 0) -> nn.ModuleDict:
    """``base`` wrapped by peft under the name "proj", with nonzero random LoRA weights."""
    from peft import LoraConfig, inject_adapter_in_model

    model = nn.ModuleDict({"proj": base})
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=6, target_modules=["proj"]), model, adapter_name="motia")
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters()):
        p.data = torch.randn(p.shape, generator=g)
    return model.eval()


def pixel_map(seed: int = 0) -> torch.Tensor:
    return torch.rand(8 * H, 8 * W, generator=torch.Generator().manual_seed(seed))  # (H, W) in [0, 1]


def expected_grid(m: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(m[None, None], (gh, gw))[0, 0]


@torch.no_grad()
def _check_layer(model, x, layout, positions, batch_size=None):
    layer = model["proj"]
    plain = layer(x)
    base = layer.base_layer(x)
    kw = dict(latent_size=(H, W), batch_size=batch_size, layouts={"proj": layout})
    with SpatialLoraScale(model, torch.ones(8 * H, 8 * W), **kw):
        assert torch.equal(layer(x), plain)
    with SpatialLoraScale(model, torch.zeros(8 * H, 8 * W), **kw):
        assert torch.equal(layer(x), base)
    m = pixel_map()
    with SpatialLoraScale(model, m, **kw):
        scaled = layer(x)
    assert torch.equal(layer(x), plain)  # hooks gone
    assert not layer.lora_B["motia"]._forward_hooks
    for index, s in positions(m):
        layer.set_scale("motia", float(s))
        try:
            torch.testing.assert_close(scaled[index], layer(x)[index], rtol=1e-5, atol=1e-5)
        finally:
            layer.set_scale("motia", 1.0)
    assert not torch.allclose(scaled, plain) and not torch.allclose(scaled, base)


def test_tokens_layout_scales_each_token_like_a_global_lora_scale():
    model = peft_layer(nn.Linear(6, 5))
    gh, gw = 3, 5  # level 1 of the 6x10 latent
    x = torch.randn(4, gh * gw, 6, generator=torch.Generator().manual_seed(1))  # (B*F, tokens, C)

    def positions(m):
        grid = expected_grid(m, gh, gw)
        for y, xx in [(0, 0), (1, 3), (2, 4), (2, 0)]:
            yield (slice(None), y * gw + xx), grid[y, xx]

    _check_layer(model, x, "tokens", positions)


def test_rows_layout_scales_each_batch_row_with_doubled_batch():
    model = peft_layer(nn.Linear(6, 5), seed=2)
    gh, gw, b, frames = 2, 3, 2, 3  # level 2; batch doubled as for guidance
    x = torch.randn(b * gh * gw, frames, 6, generator=torch.Generator().manual_seed(3))  # (B*h*w, F, C)

    def positions(m):
        grid = expected_grid(m, gh, gw)
        for bb, y, xx in [(0, 0, 0), (0, 1, 2), (1, 0, 1), (1, 1, 2)]:
            yield bb * gh * gw + y * gw + xx, grid[y, xx]

    _check_layer(model, x, "rows", positions, batch_size=b)


def test_conv_layout_scales_each_pixel():
    model = peft_layer(nn.Conv2d(3, 4, 3, padding=1), seed=4)
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(5))  # (N, C, h, w)

    def positions(m):
        grid = expected_grid(m, H, W)
        for y, xx in [(0, 0), (3, 7), (5, 9)]:
            yield (slice(None), slice(None), y, xx), grid[y, xx]

    _check_layer(model, x, "conv", positions)


def test_level_grid_and_errors():
    assert [level_grid(H, W, n) for n in (60, 15, 6, 2, 7)] == [(6, 10), (3, 5), (2, 3), (1, 2), None]
    assert level_grid(8, 8, 1) == (1, 1)
    model = peft_layer(nn.Linear(6, 5))
    layer = model["proj"]
    with pytest.raises(RuntimeError, match="latent size"):
        with SpatialLoraScale(model, pixel_map(), layouts={"proj": "tokens"}):
            layer(torch.randn(1, 15, 6))
    assert not layer.lora_B["motia"]._forward_hooks  # removed despite the error
    with pytest.raises(RuntimeError, match="7 positions"):
        with SpatialLoraScale(model, pixel_map(), latent_size=(H, W), layouts={"proj": "tokens"}):
            layer(torch.randn(1, 7, 6))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SpatialLoraScale(model, pixel_map() * 2, layouts={"proj": "tokens"})


# --------------------------------------------------------------------------- whole model


@pytest.fixture(scope="module")
def lora_unet():
    from diffusers import UNetMotionModel

    from motia.models.tiny import build_motion_adapter, build_unet2d

    unet = UNetMotionModel.from_unet2d(build_unet2d(), build_motion_adapter()).eval()
    lora.add_lora(unet, "temporal+spatial", rank=4, alpha=32)
    g = torch.Generator().manual_seed(0)
    for _, p in sorted(lora._adapter_parameters(unet, "motia").items()):
        p.data = torch.randn(p.shape, generator=g) * 0.2
    return unet


def _call(unet, b, frames, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(b, 4, frames, h, w, generator=g)  # (B, C, F, H, W)
    text = torch.randn(b * frames, 5, 32, generator=g)  # (B*F, tokens, dim)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=text).sample


def test_model_ones_is_plain_zeros_is_base_and_exit_restores(lora_unet):
    plain = _call(lora_unet, 1, 2, 8, 8)
    with spatial_lora_scale(lora_unet, torch.ones(64, 64)) as ctx:
        assert ctx.unplaced == []
        ones = _call(lora_unet, 1, 2, 8, 8)
    with spatial_lora_scale(lora_unet, torch.zeros(64, 64)):
        zeros = _call(lora_unet, 1, 2, 8, 8)
    with lora.lora_disabled(lora_unet):
        base = _call(lora_unet, 1, 2, 8, 8)
    after = _call(lora_unet, 1, 2, 8, 8)
    assert torch.equal(ones, plain)
    torch.testing.assert_close(zeros, base, rtol=0, atol=1e-5)
    assert (plain - base).abs().max() > 1e-2
    assert torch.equal(after, plain)


def _level(name: str) -> int:
    """Downsampling level of a block in the tiny (SD1.5-shaped) UNet, from its name alone."""
    block, index = name.split(".")[:2]
    if block == "mid_block":
        return 3
    return int(index) if block == "down_blocks" else 3 - int(index)


def test_model_every_layer_gets_its_grid_with_guidance_batch_and_window(lora_unet):
    b, frames = 2, 3  # doubled batch (guidance), a frame count other than the last call's
    layouts = lora_layouts(lora_unet)
    assert set(layouts.values()) == {"tokens", "rows"}
    modules = dict(lora_unet.named_modules())
    before, after, handles = {}, {}, []

    def keep(store, name):
        return lambda mod, args, out: store.__setitem__(name, out.detach().clone())

    for name in layouts:  # runs before the insertion hook: the unscaled delta
        handles.append(modules[name].lora_B["motia"].register_forward_hook(keep(before, name)))
    m = pixel_map(7)
    try:
        with spatial_lora_scale(lora_unet, m):
            for name in layouts:  # runs after it: the scaled delta
                handles.append(modules[name].lora_B["motia"].register_forward_hook(keep(after, name)))
            _call(lora_unet, b, frames, H, W, seed=1)
    finally:
        for h in handles:
            h.remove()
    assert set(after) == set(layouts)
    for name, layout in layouts.items():
        k = _level(name)
        gh, gw = math.ceil(H / 2**k), math.ceil(W / 2**k)
        s = expected_grid(m, gh, gw).reshape(-1)  # (gh*gw,)
        if layout == "rows":  # (B*gh*gw, F, C)
            want = (before[name].view(b, gh * gw, frames, -1) * s[None, :, None, None]).view_as(before[name])
        else:  # (B*F, gh*gw, C)
            want = before[name] * s[None, :, None]
        torch.testing.assert_close(after[name], want, rtol=1e-6, atol=1e-6, msg=name)
