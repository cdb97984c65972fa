"""RAU-Net: half-resolution inner blocks while active, exact pass-through while not, ControlNet residuals resized."""

import math

import pytest
import torch
from diffusers import UNetMotionModel

from motia.errors import ConfigError
from motia.models.tiny import TEXT_DIM, build_controlnet, build_motion_adapter, build_unet2d
from motia.rau import active_at, install_rau


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    unet = UNetMotionModel.from_unet2d(build_unet2d(), build_motion_adapter()).eval()
    return unet, build_controlnet().eval()


def inputs(hw, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, frames, *hw, generator=g)  # (B, C, F, h, w)
    ctx = torch.randn(1, 7, TEXT_DIM, generator=g).repeat_interleave(frames, 0)  # (F, 7, D)
    cond = torch.rand(frames, 3, hw[0] * 8, hw[1] * 8, generator=g)  # control frames at pixel size
    return x, ctx, cond


@torch.no_grad()
def call(unet, cn, x, ctx, cond):
    b, c, f, h, w = x.shape
    down, mid = cn(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), 10, encoder_hidden_states=ctx,
                   controlnet_cond=cond, return_dict=False)
    return unet(x, 10, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample


def grids(unet, run):
    """The (h, w) of the input to every down block and the mid block during ``run()``."""
    seen = {}
    blocks = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)} | {"mid_block": unet.mid_block}
    def record(name):
        def hook(module, args, kwargs):
            seen.setdefault(name, tuple((args[0] if args else kwargs["hidden_states"]).shape[-2:]))

        return hook

    hooks = [b.register_forward_pre_hook(record(n), with_kwargs=True) for n, b in blocks.items()]
    try:
        out = run()
    finally:
        for h in hooks:
            h.remove()
    return seen, out


@pytest.mark.parametrize("hw", [(16, 24), (13, 21)])
def test_active_halves_inner_blocks_and_keeps_output_size(models, hw):
    unet, cn = models
    x, ctx, cond = inputs(hw)
    plain_grids, plain = grids(unet, lambda: call(unet, cn, x, ctx, cond))
    with install_rau(unet) as rau:
        rau.set_active(False)
        off = call(unet, cn, x, ctx, cond)
        rau.set_active(True)
        rau_grids, out = grids(unet, lambda: call(unet, cn, x, ctx, cond))
    h, w = hw
    assert plain_grids["down_blocks.1"] == (math.ceil(h / 2), math.ceil(w / 2))
    assert rau_grids["down_blocks.0"] == (h, w)  # the top block is untouched
    for k in (1, 2, 3):  # every level below it runs one level lower
        assert rau_grids[f"down_blocks.{k}"] == (math.ceil(h / 2 ** (k + 1)), math.ceil(w / 2 ** (k + 1)))
    assert out.shape == plain.shape and torch.isfinite(out).all()
    assert (out - plain).abs().max() > 1e-4
    assert torch.equal(off, plain)  # inactive: bit-identical
    assert torch.equal(call(unet, cn, x, ctx, cond), plain)  # removed: bit-identical
    assert not unet._forward_pre_hooks and not unet._forward_hooks
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


def test_residuals_are_area_resized_to_the_rau_grid(models):
    unet, cn = models
    x, ctx, cond = inputs((16, 24))
    seen = {}

    def look(module, args, kwargs):  # runs after RAU's own pre-hook (registered earlier)
        seen["down"] = [tuple(r.shape[-2:]) for r in kwargs["down_block_additional_residuals"]]
        seen["mid"] = tuple(kwargs["mid_block_additional_residual"].shape[-2:])

    with install_rau(unet) as rau:
        rau.set_active(True)
        hook = unet.register_forward_pre_hook(look, with_kwargs=True)
        try:
            call(unet, cn, x, ctx, cond)
        finally:
            hook.remove()
    # conv_in + the top block's layer at 16x24; then 4x6 (the downsampler), 4x6, 2x3, 2x3, 1x2, 1x2 ...
    assert seen["down"][:2] == [(16, 24), (16, 24)]
    assert seen["down"][2:] == [(4, 6), (4, 6), (2, 3), (2, 3), (1, 2), (1, 2)]
    assert seen["mid"] == (1, 2)


def test_fraction_rule_and_bad_model():
    assert [active_at(i, 10, 0.4) for i in range(10)] == [True] * 4 + [False] * 6
    assert not any(active_at(i, 10, 0.0) for i in range(10))
    with pytest.raises(ConfigError, match="sample.rau"):
        install_rau(build_controlnet())  # no up blocks
