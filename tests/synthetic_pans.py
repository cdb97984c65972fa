"""Synthetic camera moves over real photos (scikit-image samples) with ground truth beyond the source box.

A clip is a camera path: for frame t an affine map from canvas pixel coordinates to
photo coordinates. The ground-truth canvas is the photo warped through it, and the
source frame is that canvas's box, so source and ground truth share one resampling
and the new region's truth is known exactly. A sprite can be drawn that moves in
canvas coordinates inside the box: it is never truly in the new region, so any sprite
colour found there was copied from another time.

``cut_clip`` joins such pans of different photos (or of one photo far apart) with hard
cuts, for shot detection; its truth is the list of the shots' first frames.

Used by tests/test_propagate.py, tests/test_propagation_pipeline.py, tests/test_shots.py,
scripts/bench_propagate.py and scripts/bench_shots.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from motia.geometry import Canvas

SPRITE_RGB = (255, 0, 255)


def photo(name: str = "astronaut", upscale: float = 1.0) -> np.ndarray:
    """A scikit-image sample photo as (H, W, 3) uint8, optionally enlarged (bicubic)."""
    import cv2
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    if upscale != 1.0:
        img = cv2.resize(img, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    return img


@dataclass
class Clip:
    """A synthetic clip: ``read(t)`` gives the source frame, ``truth(t)`` the whole canvas."""

    image: np.ndarray
    canvas: Canvas
    num_frames: int
    path: Callable[[int], np.ndarray]  # t -> 2x3 map canvas (x, y) -> photo (x, y)
    sprite: Callable[[int], tuple[int, int]] | None = None  # t -> (x, y) canvas top-left of the sprite
    sprite_size: int = 24

    def truth(self, t: int, with_sprite: bool = True) -> np.ndarray:
        import cv2

        c = self.canvas
        out = cv2.warpAffine(self.image, self.path(t), (c.width, c.height),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        if with_sprite and self.sprite is not None:
            x, y = self.sprite(t)
            k = self.sprite_size
            out[y : y + k, x : x + k] = SPRITE_RGB
            out[y + k // 3 : y + 2 * k // 3, x + k // 3 : x + 2 * k // 3] = (255, 255, 0)  # texture for features
        return out

    def read(self, t: int) -> np.ndarray:
        top, left, bottom, right = self.canvas.box
        return np.ascontiguousarray(self.truth(t)[top:bottom, left:right])


def translation(x0: float, y0: float, vx: float, vy: float):
    return lambda t: np.array([[1, 0, x0 + vx * t], [0, 1, y0 + vy * t]], dtype=np.float64)


def zoom(cx: float, cy: float, canvas: Canvas, rate: float):
    """Camera zooming in by ``rate`` per frame (scale photo px per canvas px = rate**t) about the canvas centre."""
    ccx, ccy = (canvas.width - 1) / 2, (canvas.height - 1) / 2

    def path(t):
        s = rate**t
        return np.array([[s, 0, cx - s * ccx], [0, s, cy - s * ccy]], dtype=np.float64)

    return path


def pan_clip(frames=24, src=(160, 192), expand=(0, 0, 64, 64), velocity=(3, 0), start=(150, 120),
             name="astronaut", upscale=1.0, sprite=None) -> Clip:
    """A pan: ``expand`` = (top, bottom, left, right) pixels, ``velocity`` (vx, vy) photo px per frame.

    ``start`` is the photo position of the canvas's top-left pixel at frame 0.
    """
    sh, sw = src
    top, bottom, left, right = expand
    canvas = Canvas(src_h=sh, src_w=sw, height=sh + top + bottom, width=sw + left + right, top=top, left=left)
    return Clip(photo(name, upscale), canvas, frames, translation(*start, *velocity), sprite)


def zoom_clip(frames=24, src=(128, 160), expand=32, rate=0.99, name="astronaut") -> Clip:
    sh, sw = src
    canvas = Canvas(src_h=sh, src_w=sw, height=sh + 2 * expand, width=sw + 2 * expand, top=expand, left=expand)
    img = photo(name)
    return Clip(img, canvas, frames, zoom(img.shape[1] / 2, img.shape[0] / 2 - 20, canvas, rate))


def oracle_horizontal(clip: Clip, vx: int, params=None) -> list[np.ndarray]:
    """Which canvas pixels must be filled in an integer horizontal pan, from the true path.

    A pixel (column x, row y) of frame t sits at (x - left + vx (t - s), y - top) in frame s;
    candidates are the frames that see it inside the margin, taken nearest first with the
    same-side spacing; with nothing moving they all agree, so it is filled iff >= min_agree.
    """
    from motia.propagate import PropagationParams

    params = params or PropagationParams()
    c = clip.canvas
    m = params.margin * max(c.src_h, c.src_w)
    rows_ok = (np.arange(c.height) - c.top >= m) & (np.arange(c.height) - c.top <= c.src_h - 1 - m)
    out = []
    for t in range(clip.num_frames):
        count = np.zeros(c.width, dtype=int)
        for x in range(c.width):
            if c.left <= x < c.left + c.src_w:
                continue
            for side in (-1, 1):
                last = None
                for d in range(1, params.radius + 1):
                    s = t + side * d
                    if not 0 <= s < clip.num_frames:
                        break
                    u = x - c.left + vx * (t - s)
                    if m <= u <= c.src_w - 1 - m and (last is None or abs(s - last) >= params.spacing):
                        count[x] += 1
                        last = s
        out.append(rows_ok[:, None] & (count >= params.min_agree)[None, :])
    return out


# Each shot: (photo, frames, start (x, y) in the photo, velocity (vx, vy) photo px per frame).
CUT_SHOTS = (
    ("astronaut", 12, (150, 120), (3, 0)),
    ("coffee", 9, (100, 60), (-4, 1)),
    ("chelsea", 5, (40, 30), (0, 3)),
    ("astronaut", 10, (20, 300), (5, -2)),  # the same photo again, elsewhere: a jump cut
    ("rocket", 14, (200, 80), (-6, 0)),  # a fast pan
    ("immunohistochemistry", 2, (60, 60), (2, 2)),  # a two-frame shot at the end
)


def cut_clip(shots=CUT_SHOTS, src=(128, 160)) -> tuple[np.ndarray, list[int]]:
    """Pans over photos joined by hard cuts: (F, H, W, 3) uint8 frames and the shots' first frames (the truth)."""
    canvas = Canvas(src_h=src[0], src_w=src[1], height=src[0], width=src[1], top=0, left=0)
    frames, firsts = [], []
    for name, n, start, velocity in shots:
        firsts.append(len(frames))
        pan = Clip(photo(name), canvas, n, translation(*start, *velocity))
        frames += [pan.read(t) for t in range(n)]
    return np.stack(frames), firsts


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of uint8 values (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
