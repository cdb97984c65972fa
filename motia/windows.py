"""Overlapping temporal windows for long clips, and the per-frame blend of per-window predictions.

The model only ever sees one window of frames (the motion module allows at most
32 per call, and memory grows with the window), so a long clip is denoised as
overlapping windows whose outputs are averaged per frame with weights. Every
frame must be covered by at least one window: a gap would divide by a zero
weight sum (the reference's NaN frames). A clip with hard cuts is windowed shot by
shot (``shot_windows``): no window holds frames of two shots.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

Window = tuple[int, int]  # [start, end) frame range


def temporal_windows(num_frames: int, size: int = 16, stride: int = 4) -> list[Window]:
    """[start, end) windows at 0, stride, 2*stride, ... plus one aligned to the clip end.

    A clip no longer than ``size`` is one window ``[0, num_frames)``. Windows are
    distinct and together cover every frame. Raises ValueError (with the reason)
    for ``num_frames < 1``, ``size < 1`` or a stride outside ``[1, size]`` (a
    larger stride would leave frames between windows uncovered).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    if not 1 <= stride <= size:
        raise ValueError(f"window stride must be between 1 and the window size {size}, got {stride}")
    if num_frames <= size:
        return [(0, num_frames)]
    windows = [(s, s + size) for s in range(0, num_frames - size + 1, stride)]
    if windows[-1][1] < num_frames:
        windows.append((num_frames - size, num_frames))
    return windows


def shot_windows(shots: Sequence[int], num_frames: int, size: int = 16, stride: int = 4) -> list[Window]:
    """``temporal_windows`` within each shot, offset to the shot's first frame, shot after shot.

    ``shots`` are the shots' sorted first frames, starting at 0 (``motia.shots``), so no
    window straddles a cut: a 5-frame shot is one 5-frame window. One shot (``[0]``) gives
    exactly ``temporal_windows(num_frames, size, stride)``.
    """
    shots = [int(s) for s in shots]
    if not shots or shots[0] != 0 or any(b <= a for a, b in zip(shots, shots[1:])) or shots[-1] >= num_frames:
        raise ValueError(f"shots {shots} must be increasing first frames from 0, all below {num_frames}")
    ends = [*shots[1:], num_frames]
    return [(start + s, start + e) for start, end in zip(shots, ends)
            for s, e in temporal_windows(end - start, size, stride)]  # fmt: skip


def window_weights(length: int, kind: str = "pyramid", *, device=None) -> torch.Tensor:
    """(length,) float32 blend weights, all > 0.

    ``pyramid``: 1, 2, ... up to the middle and back down, so frames near a window's
    edge (least temporal context) count least where windows overlap.
    ``flat``: all ones (a plain average).
    """
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    i = torch.arange(length, device=device, dtype=torch.float32)
    if kind == "pyramid":
        return torch.minimum(i + 1, length - i)
    if kind == "flat":
        return torch.ones(length, device=device, dtype=torch.float32)
    raise ValueError(f"window weights kind must be 'pyramid' or 'flat', got {kind!r}")


def check_coverage(windows: Sequence[Window], num_frames: int) -> None:
    """Raise ValueError unless the windows lie within [0, num_frames) and cover every frame."""
    covered_to = 0
    for start, end in sorted(windows):
        if not 0 <= start < end <= num_frames:
            raise ValueError(f"window [{start}, {end}) is empty or outside the clip of {num_frames} frames")
        if start > covered_to:
            break
        covered_to = max(covered_to, end)
    if covered_to < num_frames:
        raise ValueError(f"windows {list(windows)} leave frame {covered_to} of {num_frames} uncovered")


def blend_windows(
    preds: Iterable[torch.Tensor], windows: Sequence[Window], num_frames: int, kind: str = "pyramid"
) -> torch.Tensor:
    """out[f] = sum_w weight_w[f] * pred_w[f] / sum_w weight_w[f], in float32.

    ``preds`` yields one (B, C, f_w, H, W) tensor per window, in the order of
    ``windows``; it may be a generator, so only one window's prediction is alive
    at a time besides the (B, C, F, H, W) accumulator.
    """
    check_coverage(windows, num_frames)
    out = None
    weight_sum = None
    for (start, end), pred in zip(windows, preds, strict=True):
        if pred.shape[2] != end - start:
            raise ValueError(f"prediction for window [{start}, {end}) has {pred.shape[2]} frames")
        if out is None:
            out = pred.new_zeros(pred.shape[:2] + (num_frames,) + pred.shape[3:], dtype=torch.float32)
            weight_sum = torch.zeros(num_frames, device=pred.device, dtype=torch.float32)
        w = window_weights(end - start, kind, device=pred.device)
        out[:, :, start:end] += pred.float() * w.view(1, 1, -1, 1, 1)  # (B, C, f_w, H, W)
        weight_sum[start:end] += w
    if out is None:
        raise ValueError("no windows to blend")
    return out / weight_sum.view(1, 1, -1, 1, 1)
