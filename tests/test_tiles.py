"""Spatial tiles in the sampler: layout, weights, a hand-written MultiDiffusion oracle, skipped known boxes."""

import math

import pytest
import torch

from motia.models.tiny import build_scheduler
from motia.sampler import ddim_step, known_blend, sample
from motia.tiles import Box, blend_boxes, box_weights, boxes, known_boxes, spatial_tiles, tile_profile
from motia.windows import temporal_windows

SHAPE = (1, 4, 12, 10, 14)  # (B, C, F, h, w)


class TileModel:
    """eps from x, t, the global frame and the global cell position (so a wrong crop changes the result)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond, window):
        start, end = window
        top, left, bottom, right = cond.get("tile") or (0, 0, x.shape[-2], x.shape[-1])
        assert x.shape[2:] == (end - start, bottom - top, right - left)
        self.calls.append((window, (top, left, bottom, right), cond["guided"]))
        f = torch.arange(start, end, dtype=torch.float32).view(1, 1, -1, 1, 1)
        y = torch.arange(top, bottom, dtype=torch.float32).view(1, 1, 1, -1, 1)
        xx = torch.arange(left, right, dtype=torch.float32).view(1, 1, 1, 1, -1)
        eps = 0.3 * torch.tanh(x) + 0.001 * t.float() * torch.cos(f + 0.7 * y - 0.3 * xx)
        if cond["guided"]:
            eps[x.shape[0] // 2 :] += 0.2
        return eps


def test_tiles_cover_the_grid_on_cell_edges_with_the_overlap():
    tiles = spatial_tiles(30, 50, 16, 4)
    rows = sorted({(t[0], t[2]) for t in tiles})
    cols = sorted({(t[1], t[3]) for t in tiles})
    assert rows == [(0, 16), (12, 28), (14, 30)] and cols == [(0, 16), (12, 28), (24, 40), (34, 50)]
    assert all(b - a == 16 for a, b in rows + cols)
    covered = torch.zeros(30, 50)
    for top, left, bottom, right in tiles:
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    assert spatial_tiles(8, 9, 16, 4) == [(0, 0, 8, 9)]  # a canvas smaller than a tile is one tile
    assert spatial_tiles(8, 40, (8, 16), 4) == [(0, 0, 8, 16), (0, 12, 8, 28), (0, 24, 8, 40)]
    with pytest.raises(ValueError, match="overlap"):
        spatial_tiles(30, 30, 8, 8)


@pytest.mark.parametrize("kind", ["gaussian", "pyramid", "flat"])
def test_blend_weights_sum_to_one_per_cell(kind):
    wins = temporal_windows(12, 8, 4)
    tiles = spatial_tiles(10, 14, 6, 2)
    run = boxes(wins, tiles)
    total = torch.zeros(12, 10, 14)
    for box in run:
        total[box.window[0] : box.window[1], box.tile[0] : box.tile[2], box.tile[1] : box.tile[3]] += box_weights(
            box, "pyramid", kind)
    normalised = torch.zeros(12, 10, 14)
    for box in run:
        (s, e), (t, l, b, r) = box
        normalised[s:e, t:b, l:r] += box_weights(box, "pyramid", kind) / total[s:e, t:b, l:r]
    torch.testing.assert_close(normalised, torch.ones(12, 10, 14), rtol=0, atol=1e-6)
    assert tile_profile(9, kind).min() > 0
    # a constant prediction comes back exactly constant: the blend is an average
    out = blend_boxes((torch.full((1, 2, e - s, b - t, r - l), 3.0) for (s, e), (t, l, b, r) in run), run,
                      (1, 2, 12, 10, 14), "pyramid", kind)
    torch.testing.assert_close(out, torch.full((1, 2, 12, 10, 14), 3.0), rtol=1e-6, atol=0)


def _setup(steps=6):
    scheduler = build_scheduler()
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(SHAPE, generator=g)
    known = torch.randn(SHAPE, generator=g)
    mask = torch.zeros(SHAPE[-2:])
    mask[2:8, 4:10] = 1.0
    return scheduler, noise, known, mask


def _gaussian(n):  # MultiDiffusion's profile, written out independently of motia.tiles
    return torch.tensor([math.exp(-((i - (n - 1) / 2) ** 2) / (2 * 0.01 * n * n)) for i in range(n)],
                        dtype=torch.float64).float()


def _pyramid(n):
    return torch.tensor([min(i + 1, n - i) for i in range(n)], dtype=torch.float32)


def test_one_tile_covering_the_canvas_is_the_untiled_sampler_bit_for_bit():
    scheduler, noise, known, mask = _setup()
    kw = dict(windows=temporal_windows(12, 8, 4), guidance_scale=3.0, guidance_steps=3, known_latents=known,
              known_mask=mask, known_noise=noise, regret_repeats=1, regret_jump=2,
              generator=torch.Generator().manual_seed(1))
    plain = sample(TileModel(), noise, scheduler.timesteps, scheduler.alphas_cumprod, **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    model = TileModel()
    one = sample(model, noise, scheduler.timesteps, scheduler.alphas_cumprod, tiles=spatial_tiles(10, 14, 64, 16), **kw)
    assert torch.equal(plain, one)
    assert all(tile == (0, 0, 10, 14) for _, tile, _ in model.calls)


def test_two_by_two_tiles_equal_a_hand_written_multidiffusion_loop():
    """The oracle: explicit per-box calls, weights written out here, weighted average, DDIM, known blend."""
    scheduler, noise, known, mask = _setup()
    wins = temporal_windows(12, 8, 4)
    tiles = spatial_tiles(10, 14, (6, 8), 2)
    assert len(tiles) == 4 and len(wins) == 2
    kw = dict(windows=wins, guidance_scale=2.0, guidance_steps=2, known_latents=known, known_mask=mask,
              known_noise=noise)
    got = sample(TileModel(), noise, scheduler.timesteps, scheduler.alphas_cumprod, tiles=tiles, **kw)

    model = TileModel()
    alphas = scheduler.alphas_cumprod[scheduler.timesteps].tolist() + [float(scheduler.alphas_cumprod[0])]
    alphas = torch.tensor(alphas, dtype=torch.float32)
    x = noise.clone()
    for i, t in enumerate(scheduler.timesteps):
        acc = torch.zeros(SHAPE)
        wsum = torch.zeros(SHAPE[2:])
        for s, e in wins:
            for top, left, bottom, right in tiles:
                crop = x[:, :, s:e, top:bottom, left:right]
                guided = i < 2
                cond = {"guided": guided, "step": i, "move": i, "tile": (top, left, bottom, right)}
                if guided:
                    u, c = model(torch.cat([crop, crop]), t, cond, (s, e)).chunk(2)
                    eps = u + 2.0 * (c - u)
                else:
                    eps = model(crop, t, cond, (s, e))
                wgt = _pyramid(e - s).view(-1, 1, 1) * (_gaussian(bottom - top).view(-1, 1)
                                                        * _gaussian(right - left).view(1, -1))
                acc[:, :, s:e, top:bottom, left:right] += eps * wgt
                wsum[s:e, top:bottom, left:right] += wgt
        eps = acc / wsum
        x = ddim_step(x, eps, alphas[i], alphas[i + 1])
        x = known_blend(x, known, mask, None if i + 1 == len(scheduler.timesteps) else alphas[i + 1], None, noise)
    assert torch.equal(got, x)


def test_a_wrong_crop_in_the_oracle_is_caught():
    """The oracle test can fail: a tile off by one cell gives other latents."""
    scheduler, noise, known, mask = _setup(3)
    tiles = spatial_tiles(10, 14, (6, 8), 2)
    a = sample(TileModel(), noise, scheduler.timesteps, scheduler.alphas_cumprod, tiles=tiles,
               windows=temporal_windows(12, 8, 4))
    shifted = [(t, l + (1 if l else 0), b, r) for t, l, b, r in tiles]
    b = sample(TileModel(), noise, scheduler.timesteps, scheduler.alphas_cumprod, tiles=shifted,
               windows=temporal_windows(12, 8, 4))
    assert not torch.equal(a, b)


def test_all_known_boxes_are_skipped_without_changing_a_bit(monkeypatch):
    import motia.sampler

    scheduler, noise, known, mask = _setup()
    mask = torch.zeros(SHAPE[-2:])
    mask[:, 6:] = 1.0  # the right tiles lie wholly in the known region
    tiles = spatial_tiles(10, 14, (6, 6), 2)
    kw = dict(windows=temporal_windows(12, 8, 4), tiles=tiles, known_latents=known, known_mask=mask,
              known_noise=noise, guidance_scale=2.0, guidance_steps=2, regret_repeats=1, regret_jump=2,
              generator=torch.Generator().manual_seed(5))
    skipping = TileModel()
    got = sample(skipping, noise, scheduler.timesteps, scheduler.alphas_cumprod, **kw)
    run = boxes(kw["windows"], tiles)
    assert known_boxes(run, mask) == {i for i, b in enumerate(run) if b.tile[1] >= 6}
    monkeypatch.setattr(motia.sampler, "known_boxes", lambda run, mask: set())
    kw["generator"] = torch.Generator().manual_seed(5)
    calling = TileModel()
    ref = sample(calling, noise, scheduler.timesteps, scheduler.alphas_cumprod, **kw)
    assert len(skipping.calls) < len(calling.calls)
    assert not any(tile[1] >= 6 for _, tile, _ in skipping.calls)
    assert torch.equal(got, ref)


def test_per_frame_known_mask_skips_only_windows_known_on_every_frame():
    run = [Box((0, 4), (0, 0, 4, 4)), Box((4, 8), (0, 0, 4, 4))]
    mask = torch.zeros(1, 1, 8, 4, 4)
    mask[:, :, :4] = 1.0
    mask[:, :, 5] = 1.0
    assert known_boxes(run, mask) == {0}
    assert known_boxes(run, None) == set()
