"""Independently moving things (people, cars): where a frame differs from its neighbours, camera motion undone.

Pixel propagation copies what other frames saw. A person walking past is not part of
the scene the camera moves over; where such a person lingers near the box's edge for
longer than the candidates' vote spans, the vote copies them into the border. So the
motion pass marks them, per frame, and propagation takes no candidate from a marked
spot (``motia.propagate``).

``MoverTracker`` runs inside ``motia.propagate.estimate_motion``: it sees each frame
once, in order, small (``mask_size``: half the analysis resolution, colour). For frame
s it warps the frames s - d and s + d of the same segment (d in ``OFFSETS``) onto s with
the estimated camera motion, blurs the difference a little, and takes per pixel the
largest residual among the earlier frames and among the later ones (a global
per-channel offset removed: exposure drifts). Where frames at least ``_CONFIRM_GAP``
away on both sides overlap s, a pixel is marked if both sides differ by more than the
threshold: a mover's pixel in s differs from the background that the other frames
show there once it has moved on, while a background pixel that the mover covers only
at another time matches the other side. Elsewhere (near the start or end of a
segment, or the strip of s that frames far on one side do not see) any difference
marks it: only nearby frames see it, and they may still show a slow mover where it is
in s. The marks are cleaned up (gaps closed, enclosed holes filled: a plain shirt does
not differ from itself, but its outline does; lone cells dropped) and dilated a little,
and kept as one bit per cell. What the camera model does not explain for other reasons
(parallax of near things, flicker) is marked too: propagation generates those pixels
instead of copying them, the safe side.

Cost per frame: up to 2 x len(OFFSETS) warps of a frame at half the analysis size
and a few morphological passes (a few ms); memory: 2 x max(OFFSETS) + 1 small frames
in a ring, plus the bit masks (mask_size pixels / 8 bytes per frame).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

OFFSETS = (2, 4, 8, 16, 32)  # frames: a walker at 1-2 px/frame against the scene has moved on by the largest
_CONFIRM_GAP = 8  # frames: only a frame this far away can show the background behind a slow mover
_NOISE_FACTOR = 4.0  # the threshold is at least this many times the frame's median residual (noise, resampling)
_BLUR_SIGMA = 1.0  # cells; smooths noise and keeps bilinear resampling errors at edges small
_CLOSE_CELLS = 5  # kernel closing gaps in a mover's outline
_DILATE_CELLS = 2  # radius: the soft edge, a shadow, the lag of a blurred frame


def mask_size(analysis: Sequence[int], native: Sequence[int]) -> tuple[int, int]:
    """(w, h) of the mover masks: half the analysis size, never above half the native size (upscaling adds nothing)."""
    f = 0.5 * min(analysis[0] / native[0], 1.0)
    return max(4, round(native[0] * f)), max(4, round(native[1] * f))


def pixel_scale(src: Sequence[int], dst: Sequence[int]) -> np.ndarray:
    """3x3 map of pixel coordinates at size src (w, h) to size dst, pixel centres kept."""
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


class MoverTracker:
    """Streaming mover masks for a clip: ``push`` each frame after its transform is known, then ``finish``.

    ``transforms`` and ``segments`` are the motion pass's arrays (filled as it goes):
    (F, 3, 3) maps of frame coordinates at ``analysis`` size to the segment's reference,
    and (F,) segment ids. ``threshold`` is in levels (0-255). ``masks`` holds the
    packed result: (F, h, ceil(w / 8)) uint8, one bit per cell, for frames finished.
    """

    def __init__(self, num_frames: int, analysis: Sequence[int], native: Sequence[int], threshold: float,
                 transforms: np.ndarray, segments: np.ndarray, cv2):
        self.cv2 = cv2
        self.size = mask_size(analysis, native)
        w, h = self.size
        self.threshold = float(threshold)
        self.transforms, self.segments = transforms, segments
        # analysis coordinates -> mask coordinates
        self._scale = pixel_scale(analysis, self.size)
        self._unscale = np.linalg.inv(self._scale)
        self.masks = np.zeros((num_frames, h, math.ceil(w / 8)), dtype=np.uint8)
        self._ring: dict[int, np.ndarray] = {}
        self._pending: list[int] = []
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_CLOSE_CELLS, _CLOSE_CELLS))
        self._dilate = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * _DILATE_CELLS + 1, 2 * _DILATE_CELLS + 1))

    def push(self, t: int, frame: np.ndarray) -> None:
        """Frame t (any size, (h, w[, C]) uint8); its transform and segment are already set."""
        cv2 = self.cv2
        small = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self._ring[t] = small.reshape(small.shape[0], small.shape[1], -1)
        self._pending.append(t)
        # A frame is finished once every later frame it compares with is known (or its segment ended).
        while self._pending and (self._pending[0] + OFFSETS[-1] <= t
                                 or self.segments[self._pending[0]] != self.segments[t]):
            self._finish(self._pending.pop(0))
        oldest = self._pending[0] if self._pending else t
        for k in [k for k in self._ring if k < oldest - OFFSETS[-1]]:
            del self._ring[k]

    def finish(self) -> np.ndarray:
        """Finish the frames still waiting for later ones; returns ``masks``."""
        while self._pending:
            self._finish(self._pending.pop(0))
        self._ring.clear()
        return self.masks

    def _residual(self, s: int, o: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Frame o warped onto frame s: per-pixel max-over-channels |difference| and where o covers s, or None."""
        cv2 = self.cv2
        if o not in self._ring or self.segments[o] != self.segments[s]:
            return None
        w, h = self.size
        # s's mask coordinates -> analysis -> segment reference -> o's analysis -> o's mask coordinates
        m = self._scale @ np.linalg.solve(self.transforms[o], self.transforms[s]) @ self._unscale
        warped = cv2.warpPerspective(self._ring[o], m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        warped = warped.reshape(h, w, -1).astype(np.float32)
        ones = np.full((h, w), 255, dtype=np.uint8)  # stays 255 only where the bilinear sample is wholly inside o
        valid = cv2.warpPerspective(ones, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) == 255
        if valid.sum() < 16:
            return None
        weight = valid.astype(np.float32)
        diff = (self._ring[s].astype(np.float32) - warped) * weight[:, :, None]  # (h, w, C)
        # Blur the difference over the overlap only (normalised): both frames are smoothed alike,
        # also at s's own edges, so resampling and noise fade and a mover's body stays.
        weight = cv2.GaussianBlur(weight, (0, 0), _BLUR_SIGMA, borderType=cv2.BORDER_CONSTANT)
        diff = cv2.GaussianBlur(diff, (0, 0), _BLUR_SIGMA, borderType=cv2.BORDER_CONSTANT).reshape(h, w, -1)
        diff /= np.maximum(weight, 1e-3)[:, :, None]
        # Exposure drift between the two frames, per channel (from every third row and column).
        offset = np.median(diff[::3, ::3][valid[::3, ::3]], axis=0)
        channels = [np.abs(diff[:, :, c] - offset[c]) for c in range(diff.shape[2])]
        return np.maximum.reduce(channels), valid

    def _finish(self, s: int) -> None:
        w, h = self.size
        sides = []
        for sign in (-1, 1):
            worst = np.zeros((h, w), dtype=np.float32)
            seen = np.zeros((h, w), dtype=bool)
            far = np.zeros((h, w), dtype=bool)  # seen by a frame at least _CONFIRM_GAP away
            for d in OFFSETS:
                r = self._residual(s, s + sign * d)
                if r is not None:
                    worst = np.where(r[1], np.maximum(worst, r[0]), worst)
                    seen |= r[1]
                    if d >= _CONFIRM_GAP:
                        far |= r[1]
            sides.append((worst, seen, far))
        (back, back_seen, back_far), (fwd, fwd_seen, fwd_far) = sides
        seen = back_seen | fwd_seen
        if not seen.any():
            return  # nothing to compare with: a segment of one frame
        # Where frames far enough on both sides see the pixel, both must differ (a spot the mover
        # covers only at another time matches one side); elsewhere any difference counts: nearby
        # frames alone cannot tell a slow mover from the background, so the mark errs on the safe side.
        both = np.where(back_far & fwd_far, np.minimum(back, fwd), np.maximum(back, fwd))
        noise = float(np.median(both[seen]))
        raw = (both > max(self.threshold, _NOISE_FACTOR * noise)) & seen
        self.masks[s] = np.packbits(self._clean(raw), axis=1)

    def _clean(self, raw: np.ndarray) -> np.ndarray:
        cv2 = self.cv2
        m = cv2.morphologyEx(raw.astype(np.uint8), cv2.MORPH_CLOSE, self._close)
        # Fill enclosed holes: flood the outside from a one-cell frame around the mask.
        h, w = m.shape
        padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
        padded[1:-1, 1:-1] = m
        flood = padded.copy()
        cv2.floodFill(flood, np.zeros((h + 4, w + 4), dtype=np.uint8), (0, 0), 1)
        m = m | (flood[1:-1, 1:-1] == 0)
        m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))  # lone cells: noise
        return cv2.dilate(m, self._dilate).astype(bool)


def unpack(masks: np.ndarray, t: int, size: Sequence[int]) -> np.ndarray:
    """Frame t's (h, w) bool mover mask from ``MoverTracker.masks``."""
    return np.unpackbits(masks[t], axis=1, count=int(size[0])).astype(bool)
