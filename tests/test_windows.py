"""Temporal windows: coverage of every frame, blend weights, exact per-frame blending."""

import pytest
import torch

from motia.windows import blend_windows, check_coverage, temporal_windows, window_weights


@pytest.mark.parametrize("num_frames", [1, 7, 16, 37, 100])
def test_windows_cover_every_frame(num_frames):
    windows = temporal_windows(num_frames, size=16, stride=4)
    assert len(set(windows)) == len(windows)
    assert windows == sorted(windows)
    assert windows[0][0] == 0 and windows[-1][1] == num_frames
    covered = torch.zeros(num_frames, dtype=torch.long)
    for start, end in windows:
        assert end - start == min(16, num_frames)
        covered[start:end] += 1
    assert (covered > 0).all()
    starts = [s for s, _ in windows]
    assert all(0 < b - a <= 4 for a, b in zip(starts, starts[1:]))


def test_window_positions():
    assert temporal_windows(7) == [(0, 7)]
    assert temporal_windows(16) == [(0, 16)]
    assert temporal_windows(37) == [(0, 16), (4, 20), (8, 24), (12, 28), (16, 32), (20, 36), (21, 37)]
    hundred = temporal_windows(100)
    assert len(hundred) == 22 and hundred[-1] == (84, 100)  # already aligned: no extra window
    assert temporal_windows(20, size=8, stride=4) == [(0, 8), (4, 12), (8, 16), (12, 20)]
    assert temporal_windows(10, size=4, stride=4) == [(0, 4), (4, 8), (6, 10)]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(num_frames=10, size=0, stride=1), "size"),
        (dict(num_frames=10, size=4, stride=0), "stride"),
        (dict(num_frames=10, size=4, stride=5), "stride"),
        (dict(num_frames=0), "num_frames"),
    ],
)
def test_window_validation(kwargs, word):
    with pytest.raises(ValueError, match=word):
        temporal_windows(**kwargs)


def test_window_weights():
    w = window_weights(16)
    assert w.shape == (16,) and w.dtype == torch.float32
    assert (w > 0).all()
    assert torch.equal(w, w.flip(0))
    assert w[0] < w[7] and w[7] == w.max() and w[0] == w.min()
    assert window_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert window_weights(1).tolist() == [1]
    assert window_weights(6, "flat").tolist() == [1] * 6
    with pytest.raises(ValueError, match="pyramid"):
        window_weights(4, "gauss")


@pytest.mark.parametrize("kind", ["pyramid", "flat"])
def test_blend_reproduces_per_frame_prediction(kind):
    num_frames = 37
    windows = temporal_windows(num_frames, 16, 4)
    target = torch.arange(num_frames, dtype=torch.float32).view(1, 1, -1, 1, 1).expand(2, 3, -1, 4, 5)
    out = blend_windows((target[:, :, s:e] for s, e in windows), windows, num_frames, kind)
    assert torch.equal(out, target)  # integer values and weights: exact
    smooth = torch.sin(torch.arange(num_frames) * 0.37).view(1, 1, -1, 1, 1).expand(1, 2, -1, 3, 3)
    out = blend_windows((smooth[:, :, s:e] for s, e in windows), windows, num_frames, kind)
    torch.testing.assert_close(out, smooth, rtol=0, atol=1e-6)


def test_blend_weights_overlap():
    windows = [(0, 4), (2, 6)]
    preds = [torch.zeros(1, 1, 4, 1, 1), torch.ones(1, 1, 4, 1, 1)]
    out = blend_windows(iter(preds), windows, 6, "pyramid").flatten().tolist()
    # pyramid(4) = 1, 2, 2, 1: frame 2 gets 2*0 + 1*1 over 3; frame 3 gets 1*0 + 2*1 over 3
    assert out == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1])
    out = blend_windows(iter(preds), windows, 6, "flat").flatten().tolist()
    assert out == pytest.approx([0, 0, 0.5, 0.5, 1, 1])


def test_gaps_rejected():
    with pytest.raises(ValueError, match="uncovered"):
        check_coverage([(0, 4), (5, 8)], 8)
    with pytest.raises(ValueError, match="uncovered"):
        check_coverage([(0, 4)], 6)
    with pytest.raises(ValueError, match="outside"):
        check_coverage([(0, 9)], 8)
    with pytest.raises(ValueError, match="uncovered"):
        blend_windows([torch.zeros(1, 1, 4, 1, 1)], [(0, 4)], 5)
