"""motia.propagate on synthetic camera moves over real photos (tests/synthetic_pans.py).

The ground truth beyond the source box is known, so every propagated pixel is checked
against it; integer pans must be exact, sub-pixel moves > 30 dB. Where a pixel must or
must not be filled is checked against an oracle built from the true camera path, not
from the estimated motion.
"""

import json
import os
import subprocess
import sys
import time
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from motia.config import load_config  # noqa: E402
from motia.errors import ConfigError  # noqa: E402
from motia.geometry import Canvas  # noqa: E402
from motia.propagate import (  # noqa: E402
    CameraMotion,
    CoverageStats,
    FrameCache,
    MotionParams,
    PropagationParams,
    estimate_motion,
    frame_coverage,
    motion_gates,
    params_from_config,
    photometric_error,
    propagate,
    propagate_frame,
    require_cv2,
)

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_pans import (  # noqa: E402
    SPRITE_RGB,
    Clip,
    Mover,
    from_movers,
    oracle_horizontal,
    pan_clip,
    person,
    photo,
    psnr,
    translation,
    walking,
    zoom_clip,
)

REPO = Path(__file__).resolve().parents[1]


def run(clip: Clip, motion_params=MotionParams(), params=PropagationParams()):
    motion = estimate_motion(clip.read, clip.num_frames, motion_params)
    return motion, list(propagate(clip.read, motion, clip.canvas, params))


def filled_errors(clip: Clip, results, with_sprite=False):
    """Propagated values and their ground truth, all frames concatenated: (n, 3) each."""
    got, want = [], []
    for p in results:
        truth = clip.truth(p.index, with_sprite=with_sprite)
        got.append(p.image[p.mask])
        want.append(truth[p.mask])
    return np.concatenate(got), np.concatenate(want)


# ----------------------------------------------------------------------------- pans


def test_horizontal_integer_pan_recovers_the_border_exactly():
    clip = pan_clip(frames=24, velocity=(3, 0))  # 160x192 source, 64 px left and right
    motion, results = run(clip)
    assert motion.summary()["segments"] == 1
    assert motion.summary()["models"]["translation"] == 23  # no spurious perspective on a pan
    for t in (5, 23):  # found on the frames upscaled to 256 px (small frames are), used at their size
        np.testing.assert_allclose(motion.relative(0, t, size=(192, 160)), [[1, 0, 3 * t], [0, 1, 0], [0, 0, 1]],
                                   atol=2e-3)
    expected = oracle_horizontal(clip, 3)
    for p, want in zip(results, expected):
        truth = clip.truth(p.index)
        assert np.array_equal(p.mask, want), f"frame {p.index}: filled pixels differ from the true visibility"
        assert np.array_equal(p.image[p.mask], truth[p.mask]), f"frame {p.index}: propagated pixels are not exact"
        top, left, bottom, right = clip.canvas.box
        assert np.array_equal(p.image[top:bottom, left:right], clip.read(p.index))
    assert not results[0].mask[:, : clip.canvas.left].any()  # nothing left of frame 0 was ever seen
    assert results[-1].mask[:, : clip.canvas.left].mean() > 0.8
    assert results[0].mask[:, clip.canvas.left + clip.canvas.src_w :].mean() > 0.8


def test_subpixel_pan_is_above_30_db():
    clip = pan_clip(frames=24, velocity=(2.5, 0.3))
    motion, results = run(clip)
    got, want = filled_errors(clip, results)
    assert psnr(got, want) > 37  # 40.2 dB with bilinear sampling; nearest-neighbour sampling gives 33.3
    stats = CoverageStats(clip.canvas)
    for p in results:
        stats.add(p.mask)
    cov = stats.to_dict()
    assert cov["all"]["mean"] > 0.25 and cov["left"]["max"] > 0.6 and cov["right"]["max"] > 0.6


def test_vertical_pan_fills_top_and_bottom_exactly():
    clip = pan_clip(frames=24, expand=(48, 48, 0, 0), velocity=(0, -3), start=(150, 150))
    motion, results = run(clip)
    got, want = filled_errors(clip, results)
    assert np.array_equal(got, want)
    stats = CoverageStats(clip.canvas)
    for p in results:
        stats.add(p.mask)
    cov = stats.to_dict()
    assert cov["left"] is None and cov["right"] is None
    assert cov["top"]["max"] > 0.9 and cov["bottom"]["max"] > 0.9


def test_slow_zoom_fills_every_side_from_earlier_frames():
    clip = zoom_clip(frames=24, rate=0.99)  # zooming in: earlier frames saw more
    motion, results = run(clip)
    assert motion.summary()["models"]["similarity"] == 23
    got, want = filled_errors(clip, results)
    assert psnr(got, want) > 39  # 41.5 dB with bilinear sampling; nearest-neighbour sampling gives 36.4
    cov = frame_coverage(results[-1].mask, clip.canvas)
    assert all(cov[side] > 0.3 for side in ("left", "right", "top", "bottom"))
    assert not results[0].mask.any()  # the widest view: nothing beyond it was seen
    assert all(p.origin[p.mask].max() < p.index for p in results if p.mask.any())  # only from earlier frames


def test_static_clip_gives_zero_coverage():
    rng = np.random.default_rng(0)
    base = photo()[100:260, 150:342]

    def read(t):  # a still camera with sensor noise
        return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)

    frames = [read(t) for t in range(12)]
    canvas = Canvas(src_h=160, src_w=192, height=224, width=320, top=32, left=64)
    motion = estimate_motion(frames.__getitem__, len(frames))
    assert motion.summary()["segments"] == 1
    for p in propagate(frames.__getitem__, motion, canvas):
        assert not p.mask.any() and not p.confidence.any()
        assert frame_coverage(p.mask, canvas)["all"] == 0


def wrapping_sprite(t, v=-6, lo=64, span=192 - 24):
    """Sprite moving across the box in canvas coordinates (and 3 px/frame slower in the world)."""
    return (lo + (v * t) % span, 60)


def test_moving_sprite_leaves_no_copies_in_the_border():
    clip = pan_clip(frames=48, velocity=(3, 0), sprite=wrapping_sprite)
    motion, results = run(clip)
    got, want = filled_errors(clip, results, with_sprite=False)  # the border truly shows background
    sprite_like = np.abs(got.astype(int) - SPRITE_RGB).sum(axis=1) < 120
    assert not sprite_like.any(), f"{int(sprite_like.sum())} sprite pixels copied into the border"
    assert psnr(got, want) > 30
    assert np.mean([frame_coverage(p.mask, clip.canvas)["all"] for p in results]) > 0.5


# ----------------------------------------------------------------------------- movers


def walker_pan(reject_movers=True):
    """A 3 px/frame pan (120x160 source, 48 px added left and right, 32 frames) with a person (72 px, magenta
    striped shirt) walking 2 px/frame the same way: 1 px/frame leftwards on the canvas, from just inside the
    box's left edge (canvas x 60 of 48) across it. Each spot of the scene stays under the person ~13 frames,
    longer than the candidates' vote spans near the edge."""
    clip = pan_clip(32, (120, 160), (0, 0, 48, 48), (3, 0), (100, 300), name="astronaut", upscale=2.0)
    clip.movers = [Mover(person(72, seed=1, stride=0.15, shirt_rgb=(220, 40, 200)), walking(160, 330, 2.0))]
    frames = [clip.read(t) for t in range(clip.num_frames)]
    motion = estimate_motion(frames.__getitem__, clip.num_frames, MotionParams(reject_movers=reject_movers))
    return clip, motion, list(propagate(frames.__getitem__, motion, clip.canvas))


def test_a_person_crossing_the_box_edge_is_never_copied_into_the_border():
    clip, motion, results = walker_pan()
    assert motion.summary()["segments"] == 1 and motion.movers is not None
    copied = sum(int(from_movers(clip, p).sum()) for p in results)  # from the true path and the true coverage
    assert copied == 0, f"{copied} propagated pixels came from where the person was"
    # Nor is background put where the person really is at that frame (beside the cut at the box edge).
    assert not any((clip.mover_mask(p.index) & p.mask).any() for p in results)
    got, want = filled_errors(clip, results, with_sprite=True)
    assert np.array_equal(got, want)  # integer pan: every pixel propagated is the true scene, exactly
    # The static background still is propagated: away from the person as much as a still scene gives.
    revealed = oracle_horizontal(clip, 3)
    c = clip.canvas
    right, above = np.s_[:, c.left + c.src_w :], np.s_[:25, : c.left]  # the person is rows 30-102, left
    for region in (right, above):
        want_px = sum(int(r[region].sum()) for r in revealed)
        got_px = sum(int(p.mask[region].sum()) for p in results)
        assert want_px > 1000 and got_px >= 0.95 * want_px, (region, got_px, want_px)
    assert np.mean([frame_coverage(p.mask, c)["all"] for p in results]) > 0.3

    # Without the mover masks the vote alone copies the person (the failure this guards against).
    clip, _, results = walker_pan(reject_movers=False)
    assert sum(int(from_movers(clip, p).sum()) for p in results) > 5000


def test_mover_masks_mark_the_walker_and_not_the_scene():
    clip, motion, _ = walker_pan()
    c = clip.canvas
    w, h = motion.movers_size
    assert (w, h) == (80, 60)  # half the source: the analysis (256 px, upscaled) adds no detail
    people = []
    for t in range(clip.num_frames):
        box = clip.mover_mask(t)[c.top : c.top + c.src_h, c.left : c.left + c.src_w].astype(np.uint8)
        people.append(cv2.resize(box, (w, h), interpolation=cv2.INTER_AREA) > 0)
    people = np.stack(people)
    marked = np.stack([motion.mover_mask(t) for t in range(clip.num_frames)])
    assert marked[people].all()  # every cell the person touches, in every frame
    # Where frames 8 or more away on both sides see the frame, only the person and a margin are marked;
    # nearer the clip's ends also where the person will be (or was) in the frames that remain: the safe side.
    near = cv2.dilate(np.any(people, axis=0).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    middle = slice(8, clip.num_frames - 8)
    assert not marked[middle][:, ~near].any()
    assert marked[middle].mean() < 2.5 * people[middle].mean() and marked.mean() < 3.5 * people.mean()
    still = estimate_motion(pan_clip(24, velocity=(2.5, 0.3)).read, 24)  # a sub-pixel pan: nothing moves
    assert still.summary()["mover_share"] == 0


def test_scene_cut_splits_the_clip_and_nothing_crosses_it():
    a = pan_clip(frames=12, velocity=(3, 0))
    b = pan_clip(frames=12, velocity=(3, 0), name="chelsea", start=(100, 60))
    clip = Clip(a.image, a.canvas, 24, a.path)
    clip.read = lambda t: a.read(t) if t < 12 else b.read(t - 12)
    motion = estimate_motion(clip.read, 24)
    assert motion.links[12] is None and motion.summary()["segments"] == 2
    assert motion.relative(3, 15) is None
    for p in propagate(clip.read, motion, clip.canvas, frames=range(12, 24)):
        assert p.mask.any()
        assert p.origin[p.mask].min() >= 12
        truth = b.truth(p.index - 12)
        assert np.array_equal(p.image[p.mask], truth[p.mask])


def test_shots_never_link_across_a_cut():
    """A jump cut: the second shot continues over the same photo a little further on, so features would link it."""
    a = pan_clip(frames=12, velocity=(3, 0))
    b = pan_clip(frames=12, velocity=(3, 0), start=(150 + 3 * 11 + 6, 124))
    clip = Clip(a.image, a.canvas, 24, a.path)
    clip.read = lambda t: a.read(t) if t < 12 else b.read(t - 12)
    unhinted = estimate_motion(clip.read, 24)
    assert unhinted.links[12] is not None and unhinted.summary()["segments"] == 1  # what happens without the hint

    motion = estimate_motion(clip.read, 24, shots=[0, 12])
    assert motion.links[12] is None and motion.summary()["segments"] == 2 and motion.relative(11, 12) is None
    assert [link is not None for link in motion.links] == [False] + [True] * 11 + [False] + [True] * 11
    for p in propagate(clip.read, motion, clip.canvas):
        shot = p.origin[p.mask] >= 12
        assert p.mask.any() and (shot == (p.index >= 12)).all(), f"frame {p.index} took pixels from the other shot"
        truth = a.truth(p.index) if p.index < 12 else b.truth(p.index - 12)
        assert np.array_equal(p.image[p.mask], truth[p.mask])
    assert estimate_motion(clip.read, 24, shots=[0]).links == unhinted.links  # one shot: as without the hint
    for bad in ([], [3, 12], [0, 12, 12], [0, 30], [0, 14, 12]):
        with pytest.raises(ValueError, match="shots"):
            estimate_motion(clip.read, 24, shots=bad)


def test_unmatchable_frames_contribute_nothing():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(6)]
    motion = estimate_motion(frames.__getitem__, 6)
    assert motion.summary()["linked_frames"] == 0 and motion.summary()["segments"] == 6
    canvas = Canvas(src_h=96, src_w=128, height=96, width=192, top=0, left=32)
    assert not any(p.mask.any() for p in propagate(frames.__getitem__, motion, canvas))


def plain_sky_pan(start=(130, 80), **kw):
    """An 80x96 pan (2, 0.3) px/frame over scikit-image's rocket photo where it is plain evening sky but for a
    tower's tip and faint wires (97% of the pixels have a gradient under 2 levels/px); sensor noise std 2. SIFT
    finds no keypoint on a frame, 4 on it upscaled to 256 px."""
    clip = pan_clip(24, (80, 96), (0, 0, 24, 24), (2, 0.3), start, name="rocket", **kw)
    clip.noise = 2.0
    return clip


def test_mostly_plain_small_pan_is_linked_densely_and_fills_the_border():
    clip = plain_sky_pan()
    frames = [clip.read(t) for t in range(clip.num_frames)]
    motion = estimate_motion(frames.__getitem__, clip.num_frames)
    summary = motion.summary()
    assert summary["linked_frames"] >= 20 and summary["dense_links"] >= 20  # of 23
    for t, link in enumerate(motion.links):  # the true move, within half the check's resolution (1 px)
        if link is not None:
            est = motion.relative(link.to, t, size=(96, 80))
            np.testing.assert_allclose(est[:2, 2], [2 * (t - link.to), 0.3 * (t - link.to)], atol=0.5)
    results = list(propagate(frames.__getitem__, motion, clip.canvas))
    cov = np.mean([frame_coverage(p.mask, clip.canvas)["all"] for p in results])
    got, want = filled_errors(clip, results)
    err = np.abs(got.astype(float) - want).mean(axis=1)
    assert cov > 0.3 and np.percentile(err, 90) <= 3 and err.max() <= 12, (cov, np.percentile(err, [50, 90, 100]))
    # Features alone link nothing here (this was `propagate: on` filling nothing).
    alone = estimate_motion(frames.__getitem__, clip.num_frames, MotionParams(dense_fallback=False))
    assert alone.summary()["linked_frames"] <= 2


def test_dense_links_that_are_not_determined_or_wrong_are_refused():
    # Plain sky with nothing in it: any shift matches; nothing may be linked.
    sky = plain_sky_pan(start=(100, 20))
    assert estimate_motion(sky.read, 24).summary()["linked_frames"] == 0
    # A cut from one plain-sky shot to another (no hint): the fallback must not bridge it.
    a, b = plain_sky_pan(), plain_sky_pan(start=(380, 40))
    motion = estimate_motion(lambda t: a.read(t) if t < 12 else b.read(t - 12), 24)
    assert motion.links[12] is None and motion.segments[11] != motion.segments[12]
    # The check itself: right, off by a pixel, and a horizon shifted along itself.
    from motia.propagate import _check_image

    cur, ref = (_check_image(plain_sky_pan(start=(130, 80)).read(t), (96, 80), cv2) for t in (5, 4))
    true = np.array([[1, 0, 2], [0, 1, 0.3], [0, 0, 1]])
    assert photometric_error(cur, ref, true) < 1.0
    for off in ((1.0, 0), (-1.0, 0), (0, 1.5)):
        assert photometric_error(cur, ref, true @ np.array([[1, 0, off[0]], [0, 1, off[1]], [0, 0, 1.0]])) is None
    horizon = np.zeros((80, 96), np.float32)
    horizon[40:] = 120
    horizon = cv2.GaussianBlur(horizon, (0, 0), 1.0)
    assert photometric_error(horizon, horizon, np.eye(3)) is None  # right, but undetermined along x
    rng = np.random.default_rng(0)
    noise = [cv2.GaussianBlur(rng.uniform(0, 255, (80, 96)).astype(np.float32), (0, 0), 1.0) for _ in range(2)]
    assert photometric_error(noise[0], noise[1], np.eye(3)) is None


def test_poor_fits_are_dropped():
    """Each fit-quality gate (as scaled to the clip's size), made stricter than some of this clip's fits, drops those links."""
    clip = pan_clip(frames=8, velocity=(2.5, 0.3))  # 160x192, analysed at 256x213: 51-78 inliers, RMS 0.2-0.5 px
    assert estimate_motion(clip.read, 8).summary()["linked_frames"] == 7
    native = (192, 160)
    strict_inliers = MotionParams(min_inliers=400)  # scaled to this clip's area: 400 * 192 * 160 / (512 * 288)
    assert motion_gates(strict_inliers, native).min_inliers == 83
    gates = (
        (dict(min_inliers=400), lambda link: link.inliers >= 83),
        (dict(min_inlier_ratio=1.0), lambda link: link.inliers == link.matches),
        (dict(max_error=0.01), lambda link: link.rms <= 0.01 * 256 / 192),  # px at the analysis size
    )
    for strict, holds in gates:  # features only: a dense link would stand in for a dropped one
        motion = estimate_motion(clip.read, 8, MotionParams(dense_fallback=False, **strict))
        kept = [link for link in motion.links if link is not None]
        assert len(kept) < 7 and all(holds(link) for link in kept), strict
    assert not kept and not any(p.mask.any() for p in propagate(clip.read, motion, clip.canvas))


def test_gates_scale_with_the_analysed_area():
    """min_inliers is for a 16:9 frame at analysis_size: smaller frames need fewer, never under 8; px gates follow the upscale."""
    params = MotionParams()  # 30 inliers, 2 px RANSAC, 1 px RMS at 512
    assert motion_gates(params, (1920, 1080)) == motion_gates(params, (512, 288))
    assert motion_gates(params, (512, 288)).min_inliers == 30 and motion_gates(params, (512, 512)).min_inliers == 30
    assert motion_gates(params, (320, 240)).min_inliers == round(30 * 320 * 240 / (512 * 288))  # 16
    small = motion_gates(params, (96, 80))  # analysed upscaled to 256x213: the detail is still 96x80's
    assert small.min_inliers == 8 and small.checked_below == 30
    assert small.ransac_threshold == pytest.approx(2.0 * 256 / 96) and small.max_error == pytest.approx(256 / 96)
    assert motion_gates(MotionParams(min_inliers=5), (96, 80)).min_inliers == 5  # never above the configured one


def test_orb_features_work_too():
    from motia.propagate import _detector

    assert isinstance(_detector(MotionParams(features="orb"), cv2)[0], cv2.ORB)
    clip = pan_clip(frames=16, velocity=(3, 0))
    motion, results = run(clip, MotionParams(features="orb"))
    assert motion.features == "orb" and motion.summary()["segments"] == 1
    got, want = filled_errors(clip, results)
    assert len(got) > 10000 and psnr(got, want) > 30


# ----------------------------------------------------------------------------- scales and serialisation


def _half(img):
    return cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)


def test_motion_found_at_one_scale_propagates_exactly_at_another():
    clip = pan_clip(frames=16, velocity=(4, 0))  # 160x192 source
    # Found at half size (analysis_size 96: 2 px per frame there), used at full size.
    motion = estimate_motion(clip.read, 16, MotionParams(analysis_size=96, min_inliers=15))
    assert motion.size == (96, 80)
    np.testing.assert_allclose(motion.relative(0, 10), [[1, 0, 20], [0, 1, 0], [0, 0, 1]], atol=2e-3)
    np.testing.assert_allclose(motion.relative(0, 10, size=(192, 160)), [[1, 0, 40], [0, 1, 0], [0, 0, 1]], atol=4e-3)
    for p in propagate(clip.read, motion, clip.canvas, frames=[0, 8, 15]):
        assert p.mask.any() and np.array_equal(p.image[p.mask], clip.truth(p.index)[p.mask])

    # Found at full size, used at half size on frames and canvas downscaled by area.
    motion = estimate_motion(clip.read, 16)
    c = clip.canvas
    half = Canvas(src_h=c.src_h // 2, src_w=c.src_w // 2, height=c.height // 2, width=c.width // 2,
                  top=c.top // 2, left=c.left // 2)
    for p in propagate(lambda t: _half(clip.read(t)), motion, half, frames=[0, 8, 15]):
        assert p.mask.any() and np.array_equal(p.image[p.mask], _half(clip.truth(p.index))[p.mask])


def test_rescaling_keeps_pixel_centres():
    """A zoom defined on continuous image coordinates (pixel i covers [i, i + 1) / width) means the same
    map at every resolution; the motion, found at 100x80, must give that map at 250x200 and 40x32."""

    def at(w, h, k=0.8, cx=0.3, cy=0.6):  # zoom by k about (cx, cy) of the unit square, as pixels of w x h
        to_unit = np.array([[1 / w, 0, 0.5 / w], [0, 1 / h, 0.5 / h], [0, 0, 1]])
        zoom_unit = np.array([[k, 0, cx * (1 - k)], [0, k, cy * (1 - k)], [0, 0, 1]])
        return np.linalg.inv(to_unit) @ zoom_unit @ to_unit

    motion = CameraMotion(size=(100, 80), transforms=np.stack([np.eye(3), at(100, 80)]),
                          segments=np.zeros(2, dtype=int), links=[None, None])
    for size in ((100, 80), (250, 200), (40, 32)):
        np.testing.assert_allclose(motion.relative(0, 1, size=size), at(*size), atol=1e-9)


def test_motion_round_trips_through_json():
    clip = zoom_clip(frames=10)
    motion = estimate_motion(clip.read, 10)
    again = CameraMotion.from_dict(json.loads(json.dumps(motion.to_dict())))
    assert again.size == motion.size and again.links == motion.links and again.features == "sift"
    assert np.array_equal(again.transforms, motion.transforms) and np.array_equal(again.segments, motion.segments)
    for s, t in ((0, 9), (7, 2)):
        assert np.array_equal(again.relative(s, t, size=(333, 250)), motion.relative(s, t, size=(333, 250)))
    summary = motion.to_dict()["summary"]
    assert summary["frames"] == 10 and summary["linked_frames"] == 9
    assert again.movers_size == motion.movers_size and np.array_equal(again.movers, motion.movers)
    assert all(np.array_equal(again.mover_mask(t), motion.mover_mask(t)) for t in range(10))


def test_same_input_same_output_and_chunks_equal_one_pass():
    clip = pan_clip(frames=16, velocity=(2.5, 0.3), sprite=wrapping_sprite)
    m1, r1 = run(clip)
    m2 = estimate_motion(clip.read, 16)
    assert np.array_equal(m1.transforms, m2.transforms) and m1.links == m2.links
    chunked = list(propagate(clip.read, m2, clip.canvas, frames=range(0, 7))) + list(
        propagate(clip.read, m2, clip.canvas, frames=range(7, 16)))
    for a, b in zip(r1, chunked):
        for name in ("image", "mask", "confidence", "origin"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_float_frames_and_confidence():
    clip = pan_clip(frames=12, velocity=(3, 0))
    read = lambda t: clip.read(t).astype(np.float32) / 255  # noqa: E731
    motion = estimate_motion(read, 12)
    p = propagate_frame(11, read, motion, clip.canvas)
    assert p.image.dtype == np.float32 and p.mask.any()
    # OpenCV's float remap weights are exact to float rounding only: 1e-4 of the range.
    np.testing.assert_allclose(p.image[p.mask], clip.truth(11)[p.mask] / 255, atol=1e-4)
    assert p.confidence[p.mask].min() >= 2 / 5 and p.confidence.max() <= 1 and not p.confidence[~p.mask].any()
    known = p.known(clip.canvas)
    assert known[p.mask].all() and known[0 : clip.canvas.src_h, 64 : 64 + 192].all()


def test_bad_frame_size_and_index_are_errors():
    clip = pan_clip(frames=4)
    motion = estimate_motion(clip.read, 4)
    with pytest.raises(ValueError, match="canvas source"):
        propagate_frame(0, lambda t: clip.read(t)[:-1], motion, clip.canvas)
    with pytest.raises(ValueError, match="outside the clip"):
        propagate_frame(4, clip.read, motion, clip.canvas)


# ----------------------------------------------------------------------------- long clips


def _long_run(num_frames: int, cache_mb: float = 1.0) -> dict:
    """A 1 px/frame pan of 64x96 frames: time per frame, memory of the motion pass, frames kept alive.

    Every read returns a fresh copy and is tracked by a weak reference, so any frame the
    library keeps shows up as alive; tracemalloc measures the motion pass (cheap there).
    """
    canvas = Canvas(src_h=64, src_w=96, height=64, width=160, top=0, left=32)
    clip = Clip(photo(), canvas, num_frames, translation(10, 200, 1.0, 0))
    frames = [clip.read(t) for t in range(num_frames)]
    alive: list = []

    def read(t):
        frame = frames[t].copy()
        alive.append(weakref.ref(frame))
        return frame

    def live() -> int:
        return sum(ref() is not None for ref in alive)

    # CPU time of this process, not wall time: other processes on a loaded machine do not count.
    t0 = time.process_time()
    tracemalloc.start()
    motion = estimate_motion(read, num_frames, MotionParams(min_inliers=12))
    motion_kept, motion_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    most_alive, coverage = 0, 0.0
    for p in propagate(read, motion, canvas, cache_mb=cache_mb):
        coverage += frame_coverage(p.mask, canvas)["all"]
        most_alive = max(most_alive, live())
    return {"seconds": (time.process_time() - t0) / num_frames, "motion_peak": motion_peak, "motion_kept": motion_kept,
            "most_alive": most_alive, "coverage": coverage / num_frames, "motion": motion,
            "frame_bytes": frames[0].nbytes}


@pytest.mark.parametrize("short_n, long_n", [(40, 120), pytest.param(60, 300, marks=pytest.mark.slow)])
def test_long_pan_has_flat_memory_and_linear_time(short_n, long_n):
    short, long = _long_run(short_n), _long_run(long_n)
    cache_frames = (1 << 20) // long["frame_bytes"]
    assert long["most_alive"] <= cache_frames + 2, "frames are kept beyond the cache"
    # The motion pass keeps a transform and a fit record per frame, nothing frame-sized;
    # its peak is one frame's features and matches, whatever the length.
    kept = (long["motion_kept"] - short["motion_kept"]) / (long_n - short_n)
    assert kept < long["frame_bytes"] / 8, f"the motion pass keeps {kept:.0f} bytes per frame"
    assert long["motion_peak"] < 2 * short["motion_peak"] + 8 * long["frame_bytes"]
    assert long["seconds"] < 2.5 * short["seconds"], f"{short['seconds']:.4f} -> {long['seconds']:.4f} s/frame"
    assert long["coverage"] > 0.3
    motion = long["motion"]
    assert motion.summary()["segments"] == 1
    np.testing.assert_allclose(motion.relative(0, long_n - 1, size=(96, 64)), [[1, 0, long_n - 1], [0, 1, 0], [0, 0, 1]],
                               atol=0.02)


def test_content_seen_far_away_still_counts():
    """Out and back: at frame 150 the left border was last seen more than 100 frames earlier."""
    canvas = Canvas(src_h=64, src_w=96, height=64, width=160, top=0, left=32)

    def path(t):  # right 1 px/frame for 100 frames, then back left
        x = 10 + (t if t <= 100 else 200 - t)
        return np.array([[1, 0, x], [0, 1, 200]], dtype=np.float64)

    clip = Clip(photo(), canvas, 151, path)
    frames = [clip.read(t) for t in range(151)]
    motion = estimate_motion(frames.__getitem__, 151, MotionParams(min_inliers=12))
    assert motion.summary()["segments"] == 1
    near = propagate_frame(150, frames.__getitem__, motion, canvas, PropagationParams(radius=100))
    far = propagate_frame(150, frames.__getitem__, motion, canvas, PropagationParams(radius=150))
    left = np.s_[:, :32]
    assert not near.mask[left].any()
    assert far.mask[left].mean() > 0.5 and 150 - far.origin[left][far.mask[left]].max() > 100
    assert np.array_equal(far.image[far.mask], clip.truth(150)[far.mask])


def test_frame_cache_is_bounded_by_bytes():
    reads = []
    cache = FrameCache(lambda i: reads.append(i) or np.full((4, 4), i, dtype=np.uint8), max_bytes=40)
    for i in (0, 1, 0, 2, 1, 0):
        assert cache(i)[0, 0] == i
    assert reads == [0, 1, 2, 1, 0] and cache.misses == 5  # two 16-byte frames fit


# ----------------------------------------------------------------------------- coverage, config, extras


def test_coverage_per_side_and_over_frames():
    canvas = Canvas(src_h=4, src_w=4, height=8, width=10, top=2, left=4)  # left 4, right 2, top 2, bottom 2
    mask = np.zeros((8, 10), dtype=bool)
    mask[:, :2] = True  # half the left strip (8 x 4)
    mask[0, 4:8] = True  # half the top strip (2 x 4)
    mask[2:6, 4:8] = True  # inside the box: not counted
    cov = frame_coverage(mask, canvas)
    new_px = 80 - 16
    assert cov == {"all": 20 / new_px, "left": 0.5, "right": 0.0, "top": 0.5, "bottom": 0.0}
    stats = CoverageStats(canvas)
    stats.add(mask)
    stats.add(np.zeros_like(mask))
    out = stats.to_dict()
    assert out["frames"] == 2 and out["left"] == {"min": 0.0, "mean": 0.25, "max": 0.5}
    assert json.loads(json.dumps(out)) == out
    no_sides = Canvas(src_h=4, src_w=4, height=4, width=8, top=0, left=4)
    assert frame_coverage(np.ones((4, 8), bool), no_sides)["top"] is None
    assert CoverageStats(no_sides).to_dict()["left"] is None


def test_config_section_defaults_validation_and_mapping():
    cfg = load_config()
    assert cfg.outpaint.propagate == "auto"
    motion, prop = params_from_config(cfg.outpaint.propagation)
    assert motion == MotionParams() and prop == PropagationParams()
    cfg = load_config(overrides=["outpaint.propagate=auto", "outpaint.propagation.radius=30",
                                 "outpaint.propagation.features=orb", "outpaint.propagation.tolerance=1"])
    motion, prop = params_from_config(cfg.outpaint.propagation)
    assert cfg.outpaint.propagate == "auto" and prop.radius == 30 and motion.features == "orb"
    with pytest.raises(ConfigError, match="outpaint.propagate"):
        load_config(overrides=["outpaint.propagate=sometimes"])
    # YAML 1.1 reads on/off (and yes/no, true/false) as booleans: they mean the words
    assert [load_config(overrides=[f"outpaint.propagate={v}"]).outpaint.propagate for v in ("on", "off", "no")] == \
        ["on", "off", "off"]
    with pytest.raises(ConfigError, match="min_agree"):
        load_config(overrides=["outpaint.propagation.min_agree=6"])
    with pytest.raises(ConfigError, match="outpaint.propagation.radius"):
        load_config(overrides=["outpaint.propagation.radius=0"])


def test_library_imports_without_opencv_and_asks_for_it():
    code = (
        "import sys; sys.modules['cv2'] = None\n"
        "import motia.propagate as p, motia.config\n"
        "try:\n"
        "    p.estimate_motion(lambda i: None, 1)\n"
        "except p.ConfigError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("ERR outpaint.propagate needs OpenCV") and "pip install opencv-python-headless" in line
    assert "\n" not in line
    assert require_cv2() is cv2
