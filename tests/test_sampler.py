"""Sampler pieces with a recording fake model (exact math, call counts) and one tiny UNetMotionModel run."""

import pytest
import torch

from motia.models.tiny import build_scheduler
from motia.sampler import (
    cfg,
    count_model_calls,
    ddim_step,
    known_blend,
    regret_schedule,
    renoise,
    sample,
    windowed,
)
from motia.windows import temporal_windows

SHAPE = (1, 4, 20, 4, 6)  # (B, C, F, h, w)


class FakeModel:
    """Deterministic eps from x, t and the global frame index; conditional rows get +cond_shift."""

    def __init__(self, cond_shift=0.25, dtype=torch.float32):
        self.calls = []
        self.cond_shift = cond_shift
        self.dtype = dtype

    def __call__(self, x, t, cond, window):
        assert x.dtype == torch.float32 and t.ndim == 0
        start, end = window
        assert x.shape[2] == end - start
        self.calls.append(dict(batch=x.shape[0], t=int(t), guided=cond["guided"], step=cond["step"], window=window))
        frame = torch.arange(start, end, dtype=torch.float32).view(1, 1, -1, 1, 1)
        eps = 0.3 * torch.tanh(x) + 0.001 * t.float() * torch.cos(frame)
        shift = torch.full((x.shape[0], 1, 1, 1, 1), self.cond_shift)
        if cond["guided"]:
            shift[: x.shape[0] // 2] = 0.0  # uncond half
        return (eps + shift).to(self.dtype)


def setup(num_steps=10, seed=0):
    scheduler = build_scheduler()
    scheduler.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=g)
    known = torch.randn(SHAPE, generator=g)
    mask = torch.zeros(SHAPE[-2:])
    mask[1:3, 2:5] = 1.0
    return scheduler, noise, known, mask


def test_windowed_calls_each_window_and_blends():
    x = torch.randn(SHAPE)
    t = torch.tensor(500)
    windows = temporal_windows(20, 8, 4)
    model = FakeModel()
    out = windowed(model, windows, "pyramid")(x, t, {"guided": False, "step": 0})
    assert [c["window"] for c in model.calls] == windows
    whole = FakeModel()(x, t, {"guided": False, "step": 0}, (0, 20))  # eps depends on the frame only through x
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-6)
    def frame_only(x, t, cond, window):  # (B, C, f, h, w) filled with the global frame index
        return torch.arange(*window, dtype=torch.float32).view(1, 1, -1, 1, 1).expand_as(x)

    for wins in (windows, temporal_windows(20, 6, 1), [(0, 20), (3, 9)]):
        assert torch.equal(windowed(frame_only, wins)(x, t, {}), frame_only(x, t, {}, (0, 20)))
    with pytest.raises(ValueError, match="uncovered"):
        windowed(model, [(0, 8), (10, 20)])(x, t, {"guided": False})


def test_cfg_math():
    x = torch.randn(SHAPE)
    t = torch.tensor(300)
    model = FakeModel(cond_shift=0.25)
    c = {"guided": False, "step": 0}
    eps_cond = model(x, t, c, (0, 20))
    eps_uncond = FakeModel(cond_shift=0.0)(x, t, c, (0, 20))
    model.calls.clear()

    plain = cfg(model, 7.5)(x, t, c, (0, 20))
    assert [call["batch"] for call in model.calls] == [1]
    assert torch.equal(plain, eps_cond)

    guided = cfg(model, 7.5)(x, t, {"guided": True, "step": 0}, (0, 20))
    assert model.calls[-1]["batch"] == 2
    torch.testing.assert_close(guided, eps_uncond + 7.5 * (eps_cond - eps_uncond))
    torch.testing.assert_close(guided - eps_cond, torch.full_like(x, 6.5 * 0.25))
    g1 = cfg(model, 1.0)(x, t, {"guided": True, "step": 0}, (0, 20))
    torch.testing.assert_close(g1, eps_cond, rtol=0, atol=1e-6)


@pytest.mark.parametrize("guidance_steps", [0, 4, 10, None])
def test_guidance_only_first_steps(guidance_steps):
    scheduler, noise, _, _ = setup(10)
    model = FakeModel()
    windows = temporal_windows(20, 8, 4)
    sample(model, noise, scheduler.timesteps, scheduler.alphas_cumprod, windows=windows,
           guidance_scale=7.5, guidance_steps=guidance_steps)
    expected = 10 if guidance_steps is None else guidance_steps
    doubled = [c for c in model.calls if c["batch"] == 2]
    assert len(model.calls) == 10 * len(windows)
    assert len(doubled) == expected * len(windows)
    assert all(c["guided"] == (c["step"] < expected) and c["batch"] == (2 if c["guided"] else 1) for c in model.calls)

    model = FakeModel()
    sample(model, noise, scheduler.timesteps, scheduler.alphas_cumprod, guidance_scale=1.0, guidance_steps=5)
    assert [c["batch"] for c in model.calls] == [1] * 10  # scale 1: the conditional branch alone


def test_ddim_step_matches_diffusers():
    scheduler, x, _, _ = setup(25)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ts = scheduler.timesteps
    assert ts[0] == 961 and ts[-1] == 1  # SD "leading" spacing with steps_offset 1
    ac = scheduler.alphas_cumprod
    for i in [0, 12, 24]:
        ref = scheduler.step(eps, ts[i], x).prev_sample
        a_next = ac[ts[i + 1]] if i + 1 < len(ts) else scheduler.final_alpha_cumprod
        assert torch.equal(ddim_step(x, eps, ac[ts[i]], a_next), ref)
    assert scheduler.final_alpha_cumprod == ac[0]  # set_alpha_to_one=False


@pytest.mark.parametrize("alpha_to_one", [False, True])
def test_sample_matches_diffusers_loop(alpha_to_one):
    scheduler, noise, _, _ = setup(8)
    if alpha_to_one:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=True)
        scheduler.set_timesteps(8)
    model = FakeModel()
    cond = {"guided": False, "step": 0}
    ref = noise.clone()
    for t in scheduler.timesteps:
        ref = scheduler.step(model(ref, t, cond, (0, 20)), t, ref).prev_sample
    final = scheduler.final_alpha_cumprod if alpha_to_one else None
    out = sample(model, noise, scheduler.timesteps, scheduler.alphas_cumprod, final_alpha_cumprod=final)
    assert torch.equal(out, ref)


def plain_loop_with_known(model, noise, known, mask, scheduler, generator):
    """The plain loop written out with diffusers' step and add_noise."""
    x = noise.clone()
    ts = scheduler.timesteps
    cond = {"guided": False, "step": 0}
    for i, t in enumerate(ts):
        x = scheduler.step(model(x, t, cond, (0, 20)), t, x).prev_sample
        if i + 1 < len(ts):
            fresh = torch.randn(x.shape, generator=generator)
            source = scheduler.add_noise(known, fresh, ts[i + 1 : i + 2])
        else:
            source = known
        x = mask * source + (1 - mask) * x
    return x


def test_regret_off_equals_plain_loop():
    scheduler, noise, known, mask = setup(10)
    model = FakeModel()
    ref = plain_loop_with_known(model, noise, known, mask, scheduler, torch.Generator().manual_seed(7))
    out = sample(model, noise, scheduler.timesteps, scheduler.alphas_cumprod, known_latents=known,
                 known_mask=mask, regret_jump=3, regret_repeats=0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, ref)
    assert regret_schedule(10, 3, 0) == [(i, i + 1) for i in range(10)]


def test_fixed_known_noise_is_the_same_tensor_at_every_step():
    """The reference re-noises the known latents with one tensor (the initial noise) at every step."""
    scheduler, noise, known, mask = setup(10)
    ts, ac = scheduler.timesteps, scheduler.alphas_cumprod
    region = mask.bool().expand(SHAPE)

    def noise_in_known_region(known_noise, generator):
        seen = {}

        def look(i, total, x):  # after move i the latents sit at level i + 1
            if i + 1 < len(ts):
                a = ac[ts[i + 1]]
                seen[i] = ((x - a**0.5 * known) / (1 - a) ** 0.5)[region]

        stub = lambda x, t, cond, window: torch.zeros_like(x)  # noqa: E731 - the denoiser plays no part here
        sample(stub, noise, ts, ac, known_latents=known, known_mask=mask, known_noise=known_noise,
               generator=generator, callback=look)
        return seen

    fixed = noise_in_known_region(noise, None)  # nothing is drawn: no generator needed
    torch.testing.assert_close(fixed[1], noise[region], rtol=0, atol=1e-4)
    torch.testing.assert_close(fixed[6], noise[region], rtol=0, atol=1e-4)
    fresh = noise_in_known_region(None, torch.Generator().manual_seed(0))
    assert (fresh[1] - fresh[6]).abs().max() > 0.5  # "fresh": new noise at every step
    model = FakeModel()
    with pytest.raises(ValueError, match="known_noise"):
        sample(model, noise, ts, ac, known_latents=known, known_mask=mask, known_noise=noise[:, :, :3])
    assert not model.calls


def test_regret_schedule_shape():
    moves = regret_schedule(25, jump=3, repeats=4, fraction=0.5)
    forward = [m for m in moves if m[1] > m[0]]
    back = [m for m in moves if m[1] < m[0]]
    assert len(forward) == 25 + 4 * 4 * 3  # jumps from levels 3, 6, 9, 12
    assert back == [(k, k - 3) for k in (3, 6, 9, 12) for _ in range(4)]
    assert all(0 <= lvl <= 25 for m in moves for lvl in m)
    assert all(b - a == 1 for a, b in forward)
    assert all(m[1] == n[0] for m, n in zip(moves, moves[1:]))  # a connected path
    assert moves[0] == (0, 1) and moves[-1] == (24, 25)
    assert count_model_calls(25, 7, jump=3, repeats=4, fraction=0.5) == 73 * 7
    assert count_model_calls(25) == 25
    assert regret_schedule(6, jump=3, repeats=1, fraction=1.0).count((6, 3)) == 0  # never from the clean end
    with pytest.raises(ValueError, match="jump"):
        regret_schedule(25, jump=0)


def test_regret_calls_and_timesteps():
    scheduler, noise, known, mask = setup(25)
    model = FakeModel()
    windows = [(0, 12), (8, 20)]
    seen = []
    sample(model, noise, scheduler.timesteps, scheduler.alphas_cumprod, windows=windows,
           guidance_scale=7.5, guidance_steps=15, known_latents=known, known_mask=mask,
           regret_jump=3, regret_repeats=4, regret_fraction=0.5, generator=torch.Generator().manual_seed(0),
           callback=lambda i, total, x: seen.append((i, total)))
    assert len(model.calls) == count_model_calls(25, 2, jump=3, repeats=4, fraction=0.5) == 146
    assert seen == [(i, 73) for i in range(73)]
    assert {c["t"] for c in model.calls} == set(scheduler.timesteps.tolist())
    assert sum(c["batch"] == 2 for c in model.calls) == (15 + 48) * 2  # all regret repeats lie in steps < 15


def test_renoise_reaches_the_earlier_marginal():
    ac = build_scheduler().alphas_cumprod
    a, a_back = ac[400], ac[700]
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.8)
    xt = a**0.5 * x0 + (1 - a) ** 0.5 * torch.randn(x0.shape, generator=g)
    x_back = renoise(xt, a, a_back, torch.randn(x0.shape, generator=g))
    assert abs(x_back.mean() - a_back**0.5 * 0.8) < 0.01
    assert abs(x_back.std() - (1 - a_back) ** 0.5) < 0.01
    assert torch.equal(renoise(xt, a, a, torch.randn(x0.shape)), xt)


@pytest.mark.parametrize("mask_5d", [False, True])
def test_known_region_is_source_at_the_end(mask_5d):
    scheduler, noise, known, mask = setup(10)
    m = mask.view(1, 1, 1, *mask.shape) if mask_5d else mask
    out = sample(FakeModel(), noise, scheduler.timesteps, scheduler.alphas_cumprod, known_latents=known,
                 known_mask=m, regret_repeats=2, guidance_scale=3.0, guidance_steps=5,
                 generator=torch.Generator().manual_seed(3))
    region = mask.bool().expand(SHAPE)
    assert torch.equal(out[region], known[region])
    assert not torch.allclose(out[~region], known[~region], atol=0.1)
    # the blend at an intermediate level is noisy, not the source
    mid = known_blend(noise, known, mask, scheduler.alphas_cumprod[500], torch.Generator().manual_seed(0))
    assert not torch.allclose(mid[region], known[region], atol=0.1)
    assert torch.equal(mid[~region], noise[~region])


def test_seed_determinism():
    scheduler, noise, known, mask = setup(6)

    def run(seed):
        return sample(FakeModel(), noise, scheduler.timesteps, scheduler.alphas_cumprod, known_latents=known,
                      known_mask=mask, regret_jump=1, regret_repeats=1, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    model = FakeModel()
    with pytest.raises(ValueError, match="Generator"):
        sample(model, noise, scheduler.timesteps, scheduler.alphas_cumprod, regret_jump=1, regret_repeats=1)
    with pytest.raises(ValueError, match="noisiest"):
        sample(model, noise, scheduler.timesteps.flip(0), scheduler.alphas_cumprod)
    assert model.calls == []  # rejected before any model call


def test_half_precision_model_float32_update():
    scheduler, noise, _, _ = setup(5)
    out_half = sample(FakeModel(dtype=torch.float16), noise, scheduler.timesteps, scheduler.alphas_cumprod)
    assert out_half.dtype == torch.float32

    class Rounded(FakeModel):  # the same eps values, handed over as float32
        def __call__(self, *args):
            return super().__call__(*args).float()

    ref = sample(Rounded(dtype=torch.float16), noise, scheduler.timesteps, scheduler.alphas_cumprod)
    assert torch.equal(out_half, ref)
    out16 = sample(FakeModel(dtype=torch.float16), noise.half(), scheduler.timesteps, scheduler.alphas_cumprod)
    assert out16.dtype == torch.float16 and torch.isfinite(out16).all()


def test_tiny_unet_motion_integration():
    from diffusers import UNetMotionModel

    from motia.models.tiny import TEXT_DIM, build_motion_adapter, build_unet2d

    unet = UNetMotionModel.from_unet2d(build_unet2d(), build_motion_adapter()).eval()
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 8, TEXT_DIM, generator=g)
    uncond = torch.randn(1, 8, TEXT_DIM, generator=g)
    frames_seen = []

    def denoise(x, t, cond, window):
        emb = torch.cat([uncond, text]) if cond["guided"] else text  # (B', tokens, dim)
        frames_seen.append(x.shape[2])
        emb = emb.repeat_interleave(x.shape[2], dim=0)  # UNetMotionModel wants one row per frame
        return unet(x, t, encoder_hidden_states=emb).sample

    scheduler = build_scheduler()
    scheduler.set_timesteps(3)
    noise = torch.randn(1, 4, 20, 8, 8, generator=g)
    known = torch.randn(1, 4, 20, 8, 8, generator=g)
    mask = torch.zeros(8, 8)
    mask[:, 2:6] = 1
    out = sample(denoise, noise, scheduler.timesteps, scheduler.alphas_cumprod, windows=temporal_windows(20, 8, 4),
                 guidance_scale=7.5, guidance_steps=1, known_latents=known, known_mask=mask,
                 generator=torch.Generator().manual_seed(1))
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert frames_seen == [8] * 12  # 4 windows x 3 steps, never the whole clip
    assert torch.equal(out[..., 2:6], known[..., 2:6])
    assert (out[..., :2] - noise[..., :2]).abs().mean() > 1e-3
