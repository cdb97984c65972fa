"""Window attention: the processor against plain SDPA and a dense masked reference, and installs on tiny models."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNetMotionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from motia.attention import (
    WindowAttnProcessor,
    WindowState,
    attention_flops,
    install_window_attention,
    shift_offsets,
    should_enable,
)
from motia.errors import ConfigError
from motia.models.tiny import TEXT_DIM, build_controlnet, build_motion_adapter, build_unet2d

DIM = 32


@pytest.fixture(scope="module")
def attn():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Attention(query_dim=DIM, heads=2, dim_head=16).eval()


def tokens(h, w, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, h * w, DIM, generator=g)  # (B, H*W, C), row-major grid


def run(attn, processor, x):
    attn.set_processor(processor)
    with torch.no_grad():
        return attn(x)


def windowed(attn, x, hw, grid=(2, 2), shift=True, step=0):
    state = WindowState(grid=grid, shift=shift, step=step, latent_hw=hw)
    return run(attn, WindowAttnProcessor(state), x)


def dense_reference(attn, x, hw, grid, offset):
    """Full attention with a boolean mask: query and key in the same (shifted, border-cut) window."""
    (h, w), (gh, gw), (dy, dx) = hw, grid, offset
    wh, ww = -(-h // gh), -(-w // gw)
    wy = torch.div(torch.arange(h) - dy, wh, rounding_mode="floor")
    wx = torch.div(torch.arange(w) - dx, ww, rounding_mode="floor")
    win = (wy[:, None] * 1000 + wx[None, :]).flatten()
    mask = win[:, None] == win[None, :]
    b, n, _ = x.shape
    with torch.no_grad():
        split = lambda t: t.view(b, n, attn.heads, -1).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(split(attn.to_q(x)), split(attn.to_k(x)), split(attn.to_v(x)), attn_mask=mask)
        return attn.to_out[0](o.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("hw", [(8, 8), (13, 21)])
def test_grid_1x1_equals_plain_even_with_shift(attn, hw):
    x = tokens(*hw)
    plain = run(attn, AttnProcessor2_0(), x)
    for step in range(4):
        out = windowed(attn, x, hw, grid=(1, 1), shift=True, step=step)
        torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)


def test_2x2_unshifted_isolates_windows(attn):
    hw, probe = (8, 8), 1 * 8 + 2  # token (1, 2): top-left window (rows 0-3, cols 0-3)
    x = tokens(*hw)
    base = windowed(attn, x, hw, shift=False)
    other, same = x.clone(), x.clone()
    other[:, 6 * 8 + 6] += 5.0  # bottom-right window
    same[:, 3 * 8 + 3] += 5.0  # same window, another token
    assert torch.allclose(windowed(attn, other, hw, shift=False)[:, probe], base[:, probe], atol=1e-6)
    assert (windowed(attn, same, hw, shift=False)[:, probe] - base[:, probe]).abs().max() > 1e-3
    # and windows are really active: plain attention would see the far token
    assert (run(attn, AttnProcessor2_0(), other)[:, probe] - run(attn, AttnProcessor2_0(), x)[:, probe]).abs().max() > 1e-3


@pytest.mark.parametrize("hw", [(8, 8), (13, 21)])
@pytest.mark.parametrize("step", range(4))
def test_shifted_windows_never_wrap_around(attn, hw, step):
    h, w = hw
    x = tokens(h, w)
    base = windowed(attn, x, hw, step=step).view(2, h, w, DIM)
    right, bottom = x.clone().view(2, h, w, DIM), x.clone().view(2, h, w, DIM)
    right[:, :, -1] += 5.0
    bottom[:, -1, :] += 5.0
    out_r = windowed(attn, right.view(2, h * w, DIM), hw, step=step).view(2, h, w, DIM)
    out_b = windowed(attn, bottom.view(2, h * w, DIM), hw, step=step).view(2, h, w, DIM)
    assert torch.allclose(out_r[:, :, 0], base[:, :, 0], atol=1e-6)
    assert torch.allclose(out_b[:, 0, :], base[:, 0, :], atol=1e-6)
    # the perturbation does reach its own windows
    assert (out_r[:, :, -1] - base[:, :, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("hw,grid", [((13, 21), (2, 2)), ((8, 8), (2, 2)), ((13, 21), (3, 2)), ((9, 5), (4, 3))])
def test_matches_dense_masked_reference_for_every_shift(attn, hw, grid):
    x = tokens(*hw)
    wh, ww = -(-hw[0] // grid[0]), -(-hw[1] // grid[1])
    for step, offset in enumerate(shift_offsets((wh, ww))):
        out = windowed(attn, x, hw, grid=grid, step=step)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, dense_reference(attn, x, hw, grid, offset), atol=1e-5, rtol=0)
    # the shifted steps really differ from the unshifted one
    assert (windowed(attn, x, hw, grid=grid, step=1) - windowed(attn, x, hw, grid=grid, step=0)).abs().max() > 1e-3


def test_cross_attention_is_plain(attn):
    x, ctx = tokens(4, 4), torch.randn(2, 7, DIM)
    proc = WindowAttnProcessor(WindowState(latent_hw=(4, 4)))
    with torch.no_grad():
        torch.testing.assert_close(proc(attn, x, ctx), AttnProcessor2_0()(attn, x, ctx), atol=0, rtol=0)


def test_token_grid_from_latent_size():
    state = WindowState(latent_hw=(9, 13))
    assert [state.token_grid(n) for n in (117, 35, 12, 4)] == [(9, 13), (5, 7), (3, 4), (2, 2)]
    with pytest.raises(RuntimeError, match="50 tokens"):
        state.token_grid(50)
    with pytest.raises(RuntimeError, match="latent size unknown"):
        WindowState().token_grid(16)


def test_should_enable_auto_rule():
    # The paper's 512x512 -> 512x1024 runs full attention, as the reference; only larger canvases window.
    assert not should_enable("auto", 512, 1024) and not should_enable("auto", 1024, 576)
    assert should_enable("auto", 512, 1536) and should_enable("auto", 1032, 512)
    assert not should_enable("auto", 512, 1016)
    assert should_enable(True, 64, 64) and not should_enable(False, 4096, 4096)
    with pytest.raises(ConfigError):
        should_enable("yes", 512, 512)


def test_attention_flops_quarter_for_2x2():
    full = attention_flops((128, 128), 320)
    assert attention_flops((128, 128), 320, (2, 2)) * 4 == full
    # shifted partitions cut border windows smaller: never more work than the unshifted one
    assert attention_flops((128, 128), 320, (2, 2), (32, 32)) < full / 4


# ---- whole models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def motion_unet():
    return UNetMotionModel.from_unet2d(build_unet2d(), build_motion_adapter()).eval()


def motion_inputs(batch=1, frames=2, hw=(9, 13), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, *hw, generator=g)  # (B, C, F, H, W)
    ctx = torch.randn(batch, 7, TEXT_DIM, generator=g).repeat_interleave(frames, 0)  # one per frame, as the pipeline
    return x, ctx


def call(model, x, ctx):
    with torch.no_grad():
        return model(x, 10, encoder_hidden_states=ctx).sample


def test_motion_unet_install_changes_output_and_remove_restores(motion_unet):
    x, ctx = motion_inputs()
    before = dict(motion_unet.attn_processors)
    plain = call(motion_unet, x, ctx)
    handle = install_window_attention(motion_unet)
    assert handle.names == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor",
        "up_blocks.3.attentions.0.transformer_blocks.0.attn1.processor",
        "up_blocks.3.attentions.1.transformer_blocks.0.attn1.processor",
    ]
    now = motion_unet.attn_processors
    assert all(now[k] is before[k] for k in before if k not in handle.names)  # motion modules, attn2, other blocks
    outs = []
    for step in range(4):
        handle.set_step(step)
        outs.append(call(motion_unet, x, ctx))
        assert handle.state.latent_hw == (9, 13)
        assert torch.isfinite(outs[-1]).all()
        assert (outs[-1] - plain).abs().max() > 1e-4
    assert (outs[1] - outs[0]).abs().max() > 1e-5  # the shift acts
    handle.remove()
    assert all(motion_unet.attn_processors[k] is before[k] for k in before)
    assert not motion_unet._forward_pre_hooks
    assert torch.equal(call(motion_unet, x, ctx), plain)


def test_motion_unet_doubled_batch_matches_single(motion_unet):
    x, ctx = motion_inputs()
    with install_window_attention(motion_unet) as handle:
        handle.set_step(1)
        single = call(motion_unet, x, ctx)
        double = call(motion_unet, torch.cat([x, x]), torch.cat([ctx, ctx]))  # CFG-style doubled batch
    torch.testing.assert_close(double[:1], single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(double[1:], single, atol=1e-5, rtol=1e-5)
    assert not motion_unet._forward_pre_hooks


def test_peft_lora_on_qkv_runs_through_windows():
    from peft import LoraConfig

    model = UNetMotionModel.from_unet2d(build_unet2d(), build_motion_adapter()).eval()
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    x, ctx = motion_inputs()
    plain = call(model, x, ctx)
    with install_window_attention(model) as handle:
        handle.set_step(1)
        with_lora = call(model, x, ctx)
        model.disable_adapters()
        without_lora = call(model, x, ctx)
        model.enable_adapters()
    assert torch.isfinite(with_lora).all()
    assert (with_lora - without_lora).abs().max() > 1e-4  # the LoRA layers are used by the processor
    assert (with_lora - plain).abs().max() > 1e-4
    assert torch.equal(call(model, x, ctx), plain)


def test_unet2d_and_controlnet_4d_inputs():
    unet, cn = build_unet2d().eval(), build_controlnet().eval()
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 9, 13, generator=g), torch.randn(2, 7, TEXT_DIM, generator=g)  # (B, C, H, W)
    cond = torch.rand(2, 3, 72, 104, generator=g)

    def cn_call():
        with torch.no_grad():
            down, mid = cn(x, 10, encoder_hidden_states=ctx, controlnet_cond=cond, return_dict=False)
        return torch.cat([d.flatten() for d in down] + [mid.flatten()])

    u_plain, c_plain = call(unet, x, ctx), cn_call()
    with pytest.raises(ConfigError, match="up_blocks.3"):
        install_window_attention(cn)  # a ControlNet has no up blocks: it gets its own block list
    handle = install_window_attention(unet, controlnet=cn)
    assert handle.controlnet_names == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"]
    handle.set_step(3)
    c_win, u_win = cn_call(), call(unet, x, ctx)
    assert torch.isfinite(u_win).all() and torch.isfinite(c_win).all()
    assert (u_win - u_plain).abs().max() > 1e-4 and (c_win - c_plain).abs().max() > 1e-6
    handle.remove()
    assert torch.equal(call(unet, x, ctx), u_plain) and torch.equal(cn_call(), c_plain)
    # a ControlNet on its own works too
    with install_window_attention(cn, blocks=("down_blocks.0",)) as alone:
        alone.set_step(3)
        torch.testing.assert_close(cn_call(), c_win, atol=0, rtol=0)
    assert torch.equal(cn_call(), c_plain)


def test_rejects_unknown_blocks_and_bad_grid(motion_unet):
    before = dict(motion_unet.attn_processors)
    with pytest.raises(ConfigError, match="down_blocks.7"):
        install_window_attention(motion_unet, blocks=("down_blocks.0", "down_blocks.7"))
    with pytest.raises(ConfigError, match="down_blocks.3"):
        install_window_attention(motion_unet, blocks=("down_blocks.3",))  # motion modules only: not spatial
    with pytest.raises(ConfigError, match="grid"):
        install_window_attention(motion_unet, grid=(0, 2))
    assert all(motion_unet.attn_processors[k] is before[k] for k in before)
    assert not motion_unet._forward_pre_hooks
