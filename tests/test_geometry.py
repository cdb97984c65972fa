"""Tests for motia.geometry: canvas planning, masks, control video, insertion map, feathered paste.

(torch.testing.assert_close is avoided: its first call spends seconds on lazy imports.)
"""

import math
import random

import pytest
import torch

from motia.errors import ConfigError
from motia.geometry import (
    Canvas,
    box_distance,
    control_video,
    downsample_mask,
    grid_box,
    insertion_map,
    known_mask,
    latent_known_mask,
    pad_to_grid,
    paste_known,
    place_on_canvas,
    plan_canvas,
    resample_canvas,
    resize_map,
    sample_border_mask,
    sample_border_widths,
    scale_canvas,
)


def _assert_valid(canvas: Canvas, src_h: int, src_w: int, multiple: int = 8):
    assert canvas.height % multiple == 0 and canvas.width % multiple == 0
    assert (canvas.src_h, canvas.src_w) == (src_h, src_w)
    top, left, bottom, right = canvas.box
    assert 0 <= top and 0 <= left and bottom <= canvas.height and right <= canvas.width
    assert bottom - top == src_h and right - left == src_w
    assert all(v >= 0 for v in canvas.expansion.values())


# ----------------------------------------------------------------------------- planning


def test_half_and_half_on_512_gives_512x1024_exactly():
    canvas = plan_canvas(512, 512, left=0.5, right=0.5)
    assert (canvas.height, canvas.width) == (512, 1024)
    assert canvas.box == (0, 256, 512, 768)
    assert canvas.expansion == {"left": 256, "right": 256, "top": 0, "bottom": 0}
    assert canvas.max_expansion == 256
    assert canvas.latent_size() == (64, 128)


def test_random_fraction_combos_fit_and_round_to_multiple():
    rng = random.Random(0)
    for _ in range(300):
        src_h, src_w = rng.randint(1, 700), rng.randint(1, 700)
        fr = {s: rng.choice([0.0, 0.0, rng.uniform(0, 1.5)]) for s in ("left", "right", "top", "bottom")}
        if not any(v > 0 for v in fr.values()):
            fr["left"] = 0.25
        canvas = plan_canvas(src_h, src_w, **fr)
        _assert_valid(canvas, src_h, src_w)
        ex = canvas.expansion
        for side, f in fr.items():
            length = src_w if side in ("left", "right") else src_h
            if f > 0:
                # At least the requested pixels, at most 7 more (the rounding).
                assert ex[side] >= max(1, round(f * length)) and ex[side] <= max(1, round(f * length)) + 7
        # Rounding goes only to expanded sides when a dimension is expanded.
        if fr["left"] == 0 and fr["right"] > 0:
            assert ex["left"] == 0
        if fr["top"] > 0 and fr["bottom"] == 0:
            assert ex["bottom"] == 0


def test_odd_source_without_expansion_in_one_dimension_splits_extra_evenly():
    canvas = plan_canvas(255, 301, left=0.5)
    _assert_valid(canvas, 255, 301)
    assert canvas.expansion["right"] == 0
    assert (canvas.expansion["top"], canvas.expansion["bottom"]) == (0, 1)
    canvas = plan_canvas(250, 64, right=0.25)  # 250 -> 256: 3 above, 3 below
    assert (canvas.expansion["top"], canvas.expansion["bottom"]) == (3, 3)


def test_random_target_and_aspect_combos():
    rng = random.Random(1)
    for _ in range(200):
        src_h, src_w = rng.randint(1, 600), rng.randint(1, 600)
        th, tw = src_h + rng.randint(1, 300), src_w + rng.randint(0, 300)
        canvas = plan_canvas(src_h, src_w, target_size=(th, tw))
        _assert_valid(canvas, src_h, src_w)
        assert th <= canvas.height < th + 8 and tw <= canvas.width < tw + 8
        # Centred up to the split of odd pixels and the rounding.
        assert abs(canvas.expansion["left"] - canvas.expansion["right"]) <= 8
        a, b = rng.randint(1, 21), rng.randint(1, 21)
        if a * src_h == b * src_w:
            continue  # already at that aspect: nothing to outpaint (tested elsewhere)
        canvas = plan_canvas(src_h, src_w, aspect=f"{a}:{b}")
        _assert_valid(canvas, src_h, src_w)
        # Exactly one dimension grows past the rounding, to within the rounding of the aspect.
        grew_w = canvas.width - src_w >= 8
        grew_h = canvas.height - src_h >= 8
        assert not (grew_w and grew_h)
        ideal = (src_h, math.ceil(src_h * a / b)) if a * src_h > b * src_w else (math.ceil(src_w * b / a), src_w)
        assert ideal[0] <= canvas.height < ideal[0] + 8 and ideal[1] <= canvas.width < ideal[1] + 8


def test_aspect_portrait_from_landscape():
    canvas = plan_canvas(720, 1280, aspect="9:16")
    _assert_valid(canvas, 720, 1280)
    assert canvas.width == 1280  # only the height grows
    assert canvas.height == 2280  # ceil(1280 * 16 / 9) = 2276 -> 2280
    assert canvas.expansion["top"] == pytest.approx(canvas.expansion["bottom"], abs=1)
    assert canvas.width / canvas.height == pytest.approx(9 / 16, rel=0.005)


def test_aspect_widescreen_from_4_3_and_float_and_slash():
    canvas = plan_canvas(480, 640, aspect="16:9")
    assert canvas.height == 480 and canvas.width == 856  # ceil(853.3) = 854 -> 856
    assert canvas.expansion["left"] == canvas.expansion["right"] == 108
    assert plan_canvas(480, 640, aspect=16 / 9) == canvas
    assert plan_canvas(480, 640, aspect="16/9") == canvas
    # Exact aspect needs no float slack: 1080x1920 is already 16:9.
    with pytest.raises(ConfigError, match=r"outpaint\.aspect"):
        plan_canvas(1080, 1920, aspect=16 / 9)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(left=-0.1), "outpaint.left"),
        (dict(bottom=-1.0), "outpaint.bottom"),
        (dict(target_size=(100, 512)), "outpaint.target_size"),
        (dict(target_size=(512, 100)), "outpaint.target_size"),
        (dict(target_size=(256, 256)), "outpaint.target_size"),
        (dict(target_size="big"), "outpaint.target_size"),
        (dict(aspect="wide"), "outpaint.aspect"),
        (dict(aspect="16:0"), "outpaint.aspect"),
        (dict(aspect=-1.0), "outpaint.aspect"),
        (dict(aspect="1:1"), "outpaint.aspect"),
        (dict(left=0.5, aspect="16:9"), "outpaint.aspect"),
        (dict(target_size=(512, 512), aspect="16:9"), "outpaint.target_size"),
        (dict(), "outpaint.left"),
    ],
)
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        plan_canvas(256, 256, **kwargs)
    assert key in str(info.value)
    assert "\n" not in str(info.value)


def test_conflicting_modes_message_names_both():
    with pytest.raises(ConfigError) as info:
        plan_canvas(64, 64, right=0.2, target_size=(64, 128))
    assert "outpaint.target_size" in str(info.value) and "outpaint.left/right/top/bottom" in str(info.value)


def test_canvas_dict_roundtrip_and_validation():
    canvas = plan_canvas(100, 60, top=0.3, right=1.0)
    d = canvas.to_dict()
    assert d["box"] == list(canvas.box) and d["expansion"] == canvas.expansion
    assert Canvas.from_dict(d) == canvas
    with pytest.raises(ValueError):
        Canvas(src_h=10, src_w=10, height=16, width=16, top=8, left=0)
    with pytest.raises(ValueError):
        Canvas(src_h=10, src_w=10, height=20, width=20, top=0, left=0).latent_size(8)


# ----------------------------------------------------------------------------- masks


def test_known_mask_and_latent_mask_fully_inside_only():
    canvas = Canvas(src_h=21, src_w=30, height=40, width=48, top=3, left=10)  # not aligned to 8
    mask = known_mask(canvas)
    assert mask.shape == (40, 48)
    assert mask.sum() == 21 * 30 and mask[3:24, 10:40].min() == 1
    lat = latent_known_mask(canvas)
    assert lat.shape == (5, 6)
    # Reference: a cell is known iff its 8x8 pixel block is all known.
    ref = mask.reshape(5, 8, 6, 8).amin(dim=(1, 3))
    assert torch.equal(lat, ref)
    assert lat.sum() == 2 * 3  # rows 1..2 (8..23), columns 2..4 (16..39)
    aligned = plan_canvas(64, 64, left=0.5)
    assert torch.equal(latent_known_mask(aligned), known_mask(aligned)[::8, ::8])


def test_downsample_mask_known_only_where_fully_known():
    canvas = Canvas(src_h=21, src_w=30, height=40, width=48, top=3, left=10)
    mask = known_mask(canvas)
    assert torch.equal(downsample_mask(mask, 5, 6), latent_known_mask(canvas))
    # Non-integer ratio: every known cell must be fully known, and interior cells are known.
    small = downsample_mask(mask, 13, 21)
    assert small.shape == (13, 21) and set(small.unique().tolist()) <= {0.0, 1.0}
    area = resize_map(mask, 13, 21)
    assert torch.all(area[small == 1] == 1)
    assert small.sum() > 0
    # Leading dims pass through.
    batched = downsample_mask(mask[None, None].expand(2, 1, 40, 48), 5, 6)
    assert batched.shape == (2, 1, 5, 6)


def test_border_sampler_deterministic_in_range_never_empty():
    h, w = 64, 96
    a = sample_border_mask(h, w, generator=torch.Generator().manual_seed(7))
    b = sample_border_mask(h, w, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    masks = [sample_border_mask(h, w, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert len({m.sum().item() for m in masks}) > 5  # seeds actually vary the border
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        m = sample_border_mask(h, w, generator=gen)
        rows = torch.nonzero(m.amax(dim=1)).flatten()
        cols = torch.nonzero(m.amax(dim=0)).flatten()
        assert rows.numel() > 0 and cols.numel() > 0
        left, right = cols[0].item(), w - 1 - cols[-1].item()
        top, bottom = rows[0].item(), h - 1 - rows[-1].item()
        for px, length in ((left, w), (right, w), (top, h), (bottom, h)):
            assert -0.5 <= px <= 0.4 * length + 0.5
        # Known area is exactly the box between the borders.
        assert m.sum() == (h - top - bottom) * (w - left - right)


def test_border_sampler_custom_ranges_and_clamp():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        widths = sample_border_widths(32, 40, {"left": (0.2, 0.3), "right": (0, 0), "top": (0, 0)}, gen)
        assert 0.2 * 40 - 0.5 <= widths["left"] <= 0.3 * 40 + 0.5
        assert widths["right"] == 0 and widths["top"] == 0 and widths["bottom"] <= 0.4 * 32 + 0.5
    # Ranges that would cover everything still leave one row and column known.
    full = {s: (1.0, 1.0) for s in ("left", "right", "top", "bottom")}
    m = sample_border_mask(9, 7, full, torch.Generator().manual_seed(0))
    assert m.sum() >= 1
    with pytest.raises(ValueError):
        sample_border_widths(8, 8, {"middle": (0, 1)})
    with pytest.raises(ValueError):
        sample_border_widths(8, 8, {"left": (0.5, 0.1)})


# ----------------------------------------------------------------------------- frames


def test_place_on_canvas_and_control_video():
    canvas = plan_canvas(5, 7, left=1.0, top=0.4)
    frames = torch.rand(2, 3, 5, 7)
    placed = place_on_canvas(frames, canvas, fill=0.25)
    top, left, bottom, right = canvas.box
    assert placed.shape == (2, 3, canvas.height, canvas.width)
    assert torch.equal(placed[:, :, top:bottom, left:right], frames)
    known = known_mask(canvas)
    assert torch.all(placed[:, :, known == 0] == 0.25)
    ctrl = control_video(placed, known)
    assert torch.all(ctrl[:, :, known == 0] == -1.0)
    assert torch.equal(ctrl[:, :, top:bottom, left:right], frames)
    # Per-frame masks: frame 1 fully generated.
    per_frame = torch.stack([known, torch.zeros_like(known)])[:, None]  # (F, 1, H, W)
    ctrl2 = control_video(placed, per_frame)
    assert torch.equal(ctrl2[0], ctrl[0]) and torch.all(ctrl2[1] == -1.0)
    with pytest.raises(ValueError):
        place_on_canvas(torch.rand(2, 3, 6, 7), canvas)


def test_pad_to_grid_replicates_the_source_edges_out_to_the_latent_grid():
    canvas = Canvas(src_h=30, src_w=29, height=40, width=48, top=5, left=10)  # box (5, 10, 35, 39)
    assert grid_box(canvas) == (0, 8, 40, 40)
    frames = torch.rand(2, 3, 30, 29)
    padded = pad_to_grid(frames, canvas)  # (2, 3, 40, 32): 5 rows above, 5 below, 2 cols left, 1 right
    assert padded.shape == (2, 3, 40, 32)
    assert torch.equal(padded[:, :, 5:35, 2:31], frames)
    assert torch.equal(padded[:, :, :5, 2:31], frames[:, :, :1].expand(-1, -1, 5, -1))
    assert torch.equal(padded[:, :, 35:, 2:31], frames[:, :, -1:].expand(-1, -1, 5, -1))
    assert torch.equal(padded[:, :, 5:35, :2], frames[:, :, :, :1].expand(-1, -1, -1, 2))
    assert torch.equal(padded[:, :, 5:35, 31:], frames[:, :, :, -1:])
    # Every fully known latent cell lies inside the grid box.
    cells = latent_known_mask(canvas).nonzero()
    g_top, g_left, g_bottom, g_right = grid_box(canvas)
    assert cells[:, 0].min() * 8 >= g_top and (cells[:, 0].max() + 1) * 8 <= g_bottom
    assert cells[:, 1].min() * 8 >= g_left and (cells[:, 1].max() + 1) * 8 <= g_right
    aligned = Canvas(src_h=32, src_w=32, height=32, width=48, top=0, left=8)
    square = torch.rand(2, 3, 32, 32)
    assert grid_box(aligned) == aligned.box and pad_to_grid(square, aligned) is square  # nothing to pad


# ----------------------------------------------------------------------------- insertion map


def test_insertion_map_matches_per_pixel_reference():
    canvas = Canvas(src_h=5, src_w=6, height=16, width=24, top=4, left=10)
    K = 2.0
    m = insertion_map(canvas, K)
    top, left, bottom, right = canvas.box
    D = canvas.max_expansion
    assert D == 10
    ref = []
    for y in range(canvas.height):
        row = []
        for x in range(canvas.width):
            ny = min(max(y, top), bottom - 1)
            nx = min(max(x, left), right - 1)
            row.append(math.exp(-K * math.hypot(y - ny, x - nx) / D))
        ref.append(row)
    ref = torch.tensor(ref)
    assert (m - ref).abs().max() <= 1e-6


def test_insertion_map_properties():
    canvas = plan_canvas(32, 32, left=0.5, right=0.25)
    top, left, bottom, right = canvas.box
    m = insertion_map(canvas, K=2.0)
    assert torch.all(m[top:bottom, left:right] == 1)
    assert m.max() == 1 and m.min() > 0
    row = m[top + 3]  # along a row crossing the box
    assert torch.all(row[1:left + 1] > row[:left])  # rising towards the box on the left
    assert torch.all(row[right:-1] > row[right + 1:])  # falling away on the right
    D = canvas.max_expansion
    assert canvas.expansion["left"] == D
    assert m[top, left - D].item() == pytest.approx(math.exp(-2.0), rel=1e-6)
    assert torch.all(insertion_map(canvas, K=0.0) == 1)
    d = box_distance(canvas)
    assert torch.all((d == 0) == (known_mask(canvas) == 1))


def test_resize_map_grids_stay_in_range_and_interior_exact():
    canvas = Canvas(src_h=40, src_w=60, height=104, width=168, top=32, left=56)
    m = insertion_map(canvas, K=2.0)
    for h, w in ((13, 21), (7, 3), (26, 42), (52, 84), (200, 300)):
        r = resize_map(m, h, w)
        assert r.shape == (h, w)
        assert r.min() >= 0 and r.max() <= 1
        # Token cells fully inside the box are exactly 1 (fully-known cells by min-pooling).
        inside = downsample_mask(known_mask(canvas), h, w) == 1
        assert torch.all(r[inside] == 1)
    # Integer ratio equals the plain 8x8 average.
    r8 = resize_map(m, 13, 21)
    assert (r8 - m.reshape(13, 8, 21, 8).mean(dim=(1, 3))).abs().max() <= 1e-6
    assert (resize_map(m, 13, 21) == 1).sum() > 0
    # Non-integer 7x3: each value lies between the map's min and max over its area cell.
    r = resize_map(m, 7, 3)
    assert r[3, 1] == pytest.approx(m[int(3 * 104 / 7):math.ceil(4 * 104 / 7), 56:112].mean().item(), rel=1e-5)
    assert resize_map(m[None].half(), 13, 21).dtype == torch.float16


# ----------------------------------------------------------------------------- paste


def test_paste_known_exact_inside_and_feathered_seam():
    canvas = Canvas(src_h=16, src_w=16, height=32, width=48, top=8, left=16)
    top, left, bottom, right = canvas.box
    gen = torch.Generator().manual_seed(0)
    source = torch.rand(2, 3, 16, 16, generator=gen)
    # Smooth along rows so the only step across the left seam is the one paste_known makes.
    generated = (0.2 + 0.01 * torch.arange(32.0)[:, None]).expand(2, 3, 32, 48).clone()
    out = paste_known(generated, source, canvas, feather=8)
    assert torch.equal(out[:, :, top:bottom, left:right], source)
    assert out.min() >= 0 and out.max() <= 1
    # Far from the box (>= feather), the generated pixels are untouched.
    d = box_distance(canvas)
    far = d >= 8
    assert torch.equal(out[:, :, far], generated[:, :, far])
    # The seam: the step across the box edge is a fraction (1/feather) of the hard-paste step.
    hard = paste_known(generated, source, canvas, feather=0)
    assert torch.equal(hard[:, :, top:bottom, left:right], source)
    assert torch.equal(hard[:, :, d > 0], generated[:, :, d > 0])
    # Generated is smooth across the seam, so the soft step is exactly 1/feather of the hard one.
    step_soft = (out[:, :, top:bottom, left] - out[:, :, top:bottom, left - 1]).abs()
    step_hard = (hard[:, :, top:bottom, left] - hard[:, :, top:bottom, left - 1]).abs()
    assert step_hard.mean() > 0.2
    assert (step_soft - step_hard / 8).abs().max() <= 1e-6
    # The residual fades linearly along a row leaving the box to the left.
    r = source[0, 0, 5, 0] - generated[0, 0, top + 5, left]
    for k in range(1, 9):
        expected = generated[0, 0, top + 5, left - k] + r * max(0.0, 1 - k / 8)
        assert out[0, 0, top + 5, left - k].item() == pytest.approx(expected.item(), abs=1e-6)
    # Corners take the residual of the box corner pixel.
    rc = source[1, 2, 0, 0] - generated[1, 2, top, left]
    w = 1 - math.hypot(2, 3) / 8
    expected = (generated[1, 2, top - 2, left - 3] + w * rc).clamp(0, 1)
    assert out[1, 2, top - 2, left - 3].item() == pytest.approx(expected.item(), abs=1e-6)


def test_paste_known_clamps_and_checks_shapes():
    canvas = plan_canvas(8, 8, left=1.0, right=1.0)
    source = torch.ones(1, 3, 8, 8)
    generated = torch.full((1, 3, canvas.height, canvas.width), 0.9)
    generated[:, :, :, canvas.left:canvas.left + 8] = 0.0  # residual +1 at the seam
    out = paste_known(generated, source, canvas, feather=4)
    assert out.max() == 1.0 and out.min() >= 0
    with pytest.raises(ValueError):
        paste_known(generated, torch.ones(1, 3, 8, 9), canvas)
    with pytest.raises(ValueError):
        paste_known(generated, source, canvas, feather=-1)


def test_paste_with_a_box_mask_equals_the_box_paste():
    canvas = Canvas(src_h=9, src_w=11, height=24, width=40, top=6, left=13)
    gen = torch.Generator().manual_seed(1)
    generated, source = torch.rand(3, 3, 24, 40, generator=gen), torch.rand(3, 3, 9, 11, generator=gen)
    nothing_more = torch.zeros(3, 1, 24, 40)
    for feather in (0, 1, 3, 7.5, 30):
        box = paste_known(generated, source, canvas, feather)
        general = paste_known(generated, source, canvas, feather, known=nothing_more, known_image=generated)
        assert torch.equal(general, box), feather


def test_paste_takes_per_frame_known_pixels_with_the_same_seam():
    canvas = Canvas(src_h=8, src_w=8, height=20, width=40, top=6, left=4)
    gen = torch.Generator().manual_seed(2)
    generated = torch.full((2, 3, 20, 40), 0.3)
    source = torch.rand(2, 3, 8, 8, generator=gen)
    image = torch.rand(2, 3, 20, 40, generator=gen)
    known = torch.zeros(2, 1, 20, 40)
    known[0, :, 4:16, 26:30] = 1  # frame 0 also knows a 12x4 patch right of the box
    out = paste_known(generated, source, canvas, 4, known=known, known_image=image)
    assert torch.equal(out[0, :, 4:16, 26:30], image[0, :, 4:16, 26:30])  # exact where known
    assert torch.equal(out[:, :, 6:14, 4:12], source)  # the box is always the source
    # Left of the patch, 2 px away: half the residual of the patch's nearest pixel (row 10, column 26).
    r = image[0, :, 10, 26] - 0.3
    assert torch.allclose(out[0, :, 10, 24], (0.3 + 0.5 * r).clamp(0, 1), atol=1e-6)
    # Diagonal from the patch corner (3, 25) -> (4, 26): distance sqrt(2).
    r = image[0, :, 4, 26] - 0.3
    assert torch.allclose(out[0, :, 3, 25], (0.3 + (1 - math.sqrt(2) / 4) * r).clamp(0, 1), atol=1e-6)
    assert torch.equal(out[0, :, 10, 34:], generated[0, :, 10, 34:])  # beyond the feather: untouched
    assert torch.equal(out[1], paste_known(generated, source, canvas, 4)[1])  # frame 1 knows only the box
    with pytest.raises(ValueError, match="known_image"):
        paste_known(generated, source, canvas, 4, known=known)


def _pillow_resample(frames, size, box):
    from PIL import Image

    import numpy as np

    out = [[np.asarray(Image.fromarray(ch.numpy()).resize(size, Image.BICUBIC, box=box)) for ch in f] for f in frames]
    return torch.from_numpy(np.array(out)).clamp(0, 1)


def test_resample_canvas_maps_box_onto_box_like_pillow():
    gen = torch.Generator().manual_seed(3)
    src = Canvas(src_h=10, src_w=14, height=16, width=30, top=3, left=8)
    frames = torch.rand(2, 3, 16, 30, generator=gen)
    # Up 2.5x: dst pixel X sits at src 8 + (X - 19) * 0.4, so the dst canvas covers src [0.4, 29.6) x [0.2, 15.8).
    up = Canvas(src_h=25, src_w=35, height=39, width=73, top=7, left=19)
    out = resample_canvas(frames, src, up)
    assert out.shape == (2, 3, 39, 73)
    assert (out - _pillow_resample(frames, (73, 39), (0.4, 0.2, 29.6, 15.8))).abs().max() < 1e-5
    # Down 0.5x (antialiased): the box 10x14 -> 5x7.
    down = Canvas(src_h=5, src_w=7, height=7, width=15, top=1, left=4)
    out = resample_canvas(frames, src, down)
    assert (out - _pillow_resample(frames, (15, 7), (0.0, 1.0, 30.0, 15.0))).abs().max() < 1e-5
    assert resample_canvas(frames, src, src) is frames
    # A dst canvas reaching a pixel beyond src's edges (rounding) takes the edge, not black.
    flat = torch.full((1, 3, 8, 8), 0.5)
    wide = resample_canvas(flat, Canvas(4, 4, 8, 8, 2, 2), Canvas(src_h=4, src_w=4, height=10, width=10, top=3, left=3))
    assert (wide - 0.5).abs().max() < 1e-6
    assert torch.equal(wide[..., 1:9, 1:9], flat)  # the same scale, shifted by whole pixels: a plain copy


def test_scale_canvas_keeps_the_box_in_proportion():
    canvas = Canvas(src_h=1920, src_w=1080, height=1920, width=3414, top=0, left=1167)
    out = scale_canvas(canvas, 1080, 1920)
    assert (out.height, out.width, out.top, out.left) == (1080, 1920, 0, 656)
    assert (out.src_h, out.src_w) == (1080, 608)  # round(1167 * 0.5624), round(2247 * 0.5624)


def test_resampling_between_canvases_of_one_scale_is_the_bicubic_matmul_bit_for_bit():
    """The refine canvas to the written one (same box size, the written canvas inside): a crop, what the matmuls give."""
    import motia.geometry as G

    src, dst = Canvas(20, 12, 24, 40, 2, 14), Canvas(20, 12, 22, 36, 1, 12)
    x = torch.rand(2, 3, src.height, src.width, generator=torch.Generator().manual_seed(0))
    rows = G._resample_matrix(src.height, dst.height, float(src.top - dst.top), 1.0)
    cols = G._resample_matrix(src.width, dst.width, float(src.left - dst.left), 1.0).T
    assert torch.equal(G.resample_canvas(x, src, dst), torch.matmul(torch.matmul(rows, x), cols).clamp(0, 1))
    wider = Canvas(20, 12, 26, 44, 3, 16)  # beyond src's edges: the matmuls' edge taps, not a crop
    assert not G._inside(src, wider) and G.resample_canvas(x, src, wider).shape == (2, 3, 26, 44)
