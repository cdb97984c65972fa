"""Synthetic camera moves over real photos (scikit-image samples) with ground truth beyond the source box.

A clip is a camera path: for frame t an affine map from canvas pixel coordinates to
photo coordinates. The ground-truth canvas is the photo warped through it, and the
source frame is that canvas's box, so source and ground truth share one resampling
and the new region's truth is known exactly. A sprite can be drawn that moves in
canvas coordinates inside the box: it is never truly in the new region, so any sprite
colour found there was copied from another time.

Movers are the realistic version: person-sized textured figures (a face, a shirt cut
from another photo, plain dark trousers whose legs swing) walking in the photo's
coordinates, so they cross the box's edges and are truly in the border at times; their
coverage per frame (``mover_mask``) is known, so a test can tell which pixel of which
frame showed a mover. ``noise`` adds sensor noise to the source frames only (the truth
stays clean).


``cut_clip`` joins such pans of different photos (or of one photo far apart) with hard
cuts, for shot detection; its truth is the list of the shots' first frames.

Used by tests/test_propagate.py, tests/test_propagation_pipeline.py, tests/test_shots.py,
scripts/bench_propagate.py and scripts/bench_shots.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
class Mover:
    """A figure moving on its own: ``sprite(t)`` (h, w, 4) uint8 RGBA, ``position(t)`` its top-left in photo pixels."""

    sprite: Callable[[int], np.ndarray]
    position: Callable[[int], tuple[float, float]]


@dataclass
class Clip:
    """A synthetic clip: ``read(t)`` gives the source frame, ``truth(t)`` the whole canvas."""

    image: np.ndarray
    canvas: Canvas
    num_frames: int
    path: Callable[[int], np.ndarray]  # t -> 2x3 map canvas (x, y) -> photo (x, y)
    sprite: Callable[[int], tuple[int, int]] | None = None  # t -> (x, y) canvas top-left of the sprite
    sprite_size: int = 24
    movers: list[Mover] = field(default_factory=list)
    noise: float = 0.0  # std of the Gaussian sensor noise added to the source frames (levels)

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
        if with_sprite:
            for mover in self.movers:
                rgb, alpha = self._render(mover, t)
                out[:] = np.rint(out * (1 - alpha) + rgb * alpha).astype(np.uint8)
        return out

    def mover_mask(self, t: int) -> np.ndarray:
        """(H, W) bool: canvas pixels of frame t that a mover touches (any alpha)."""
        mask = np.zeros((self.canvas.height, self.canvas.width), dtype=bool)
        for mover in self.movers:
            mask |= self._render(mover, t)[1][:, :, 0] > 0
        return mask

    def _render(self, mover: Mover, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The mover on frame t's canvas: (H, W, 3) float colour and (H, W, 1) float alpha in [0, 1]."""
        import cv2

        c = self.canvas
        x, y = mover.position(t)
        to_photo = np.vstack([self.path(t), [0, 0, 1]])  # canvas -> photo
        place = np.array([[1, 0, x], [0, 1, y], [0, 0, 1]], dtype=np.float64)  # sprite -> photo
        m = (np.linalg.inv(to_photo) @ place)[:2]  # sprite -> canvas
        rgba = cv2.warpAffine(mover.sprite(t), m, (c.width, c.height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float64)
        return rgba[:, :, :3], rgba[:, :, 3:] / 255.0

    def read(self, t: int) -> np.ndarray:
        top, left, bottom, right = self.canvas.box
        frame = np.ascontiguousarray(self.truth(t)[top:bottom, left:right])
        if self.noise:
            rng = np.random.default_rng(10_000 + t)
            frame = np.clip(np.rint(frame + rng.normal(0, self.noise, frame.shape)), 0, 255).astype(np.uint8)
        return frame


def person(height: int, seed: int = 0, stride: float = 0.0, shirt_rgb: tuple[int, int, int] | None = None):
    """A walking figure ``height`` px tall: t -> (h, w, 4) RGBA (legs swing ``stride`` of the height).

    Textured where people are (face, a shirt cut from scikit-image's coffee photo, or
    striped in ``shirt_rgb`` and a darker shade of it), plain where they often are too
    (dark trousers: little but noise), edges anti-aliased.
    """
    import cv2

    h = int(height)
    w = max(8, int(round(0.36 * h)))
    rng = np.random.default_rng(seed)
    if shirt_rgb is None:
        shirt_src = photo("coffee")
        y0, x0 = rng.integers(0, shirt_src.shape[0] - 120), rng.integers(0, shirt_src.shape[1] - 120)
        shirt = cv2.resize(shirt_src[y0 : y0 + 120, x0 : x0 + 120], (w, h), interpolation=cv2.INTER_AREA).astype(float)
    else:
        stripes = (np.arange(h)[:, None, None] // max(2, h // 16)) % 2  # (h, 1, 1)
        shirt = np.asarray(shirt_rgb, dtype=float) * (1 - 0.3 * stripes) * np.ones((h, w, 1))
    trousers = np.array([40, 45, 80], dtype=float) + rng.normal(0, 3, (h, w, 3))
    skin = np.array([205, 160, 130], dtype=float) + rng.normal(0, 6, (h, w, 3))
    yy = np.mgrid[0:h, 0:w][0].astype(float)
    cx = (w - 1) / 2

    def at(t):
        ss = 4  # draw the shape 4x larger, then average: soft edges as a camera sees them
        Y, X = np.mgrid[0 : h * ss, 0 : w * ss].astype(float) / ss
        head = ((X - cx) / (0.14 * h)) ** 2 + ((Y - 0.09 * h) / (0.09 * h)) ** 2 <= 1
        torso = (np.abs(X - cx) <= 0.45 * w) & (Y >= 0.17 * h) & (Y <= 0.56 * h)
        swing = stride * h * np.sin(0.5 * t)
        legs = np.zeros_like(head)
        for sign in (-1, 1):
            centre = cx + sign * 0.2 * w + sign * swing * (Y - 0.55 * h) / (0.45 * h)
            legs |= (np.abs(X - centre) <= 0.14 * w) & (Y >= 0.55 * h)
        parts = [cv2.resize(p.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) for p in (head, torso, legs)]
        alpha = np.clip(parts[0] + parts[1] + parts[2], 0, 1)
        rgb = np.where(yy[..., None] < 0.17 * h, skin, np.where(yy[..., None] < 0.56 * h, shirt, trousers))
        rgba = np.dstack([np.clip(rgb, 0, 255), 255 * alpha])
        return np.rint(rgba).astype(np.uint8)

    return at


def walking(x0: float, y0: float, vx: float, vy: float = 0.0, bob: float = 1.0):
    """Photo position of a walker: constant velocity, bobbing ``bob`` px up and down with its steps."""
    return lambda t: (x0 + vx * t, y0 + vy * t + bob * abs(np.sin(0.5 * t)))


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


def from_movers(clip: Clip, p) -> np.ndarray:
    """(n,) bool over ``p``'s propagated pixels (``motia.propagate.Propagated``, row-major order of its mask):
    the spot it was taken from showed a mover in its origin frame (the true camera path and the movers' true
    coverage there, dilated by one pixel for the bilinear sample)."""
    import cv2

    ys, xs = np.nonzero(p.mask)
    out = np.zeros(len(ys), dtype=bool)
    to_photo = np.vstack([clip.path(p.index), [0, 0, 1]])
    origins = p.origin[ys, xs]
    for s in np.unique(origins):
        k = origins == s
        mask = cv2.dilate(clip.mover_mask(int(s)).astype(np.uint8), np.ones((3, 3), np.uint8))
        m = np.linalg.inv(np.vstack([clip.path(int(s)), [0, 0, 1]])) @ to_photo  # canvas t -> canvas s
        q = np.stack([xs[k], ys[k], np.ones(int(k.sum()))], axis=1) @ m.T
        u = np.clip(np.rint(q[:, 0]).astype(int), 0, mask.shape[1] - 1)
        v = np.clip(np.rint(q[:, 1]).astype(int), 0, mask.shape[0] - 1)
        out[k] = mask[v, u] > 0
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of uint8 values (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def mover_clip(kind: str, frames: int = 48, noise: float = 2.0) -> Clip:
    """A 3 px/frame pan (240x320 source, 80 px added left and right) over the astronaut enlarged 2x, with walkers.

    ``kind``: ``walkers`` (two people crossing the box's left edge, walking 2 px/frame
    against the pan and 4.5 px/frame with it), ``follow`` (one the camera follows,
    straddling the left edge for the whole clip), ``slow`` (one at 1 px/frame from the
    right edge inwards), ``crowd`` (four at several speeds and distances), ``none`` (the
    pan alone). The table gives each person's height, seed, canvas x and y at frame 0 and
    speed in the photo (px/frame; the camera moves 3); the source box spans canvas x 80..400.
    """
    clip = pan_clip(frames, (240, 320), (0, 0, 80, 80), (3, 0), (100, 300), name="astronaut", upscale=2.0)
    clip.noise = noise
    x0, y0 = 100, 300  # photo position of the canvas's top-left at frame 0
    people = {
        "walkers": [(110, 1, 230, 95, -2.0), (120, 2, 40, 105, 4.5)],
        "follow": [(120, 3, 62, 100, 3.0)],
        "slow": [(120, 4, 380, 100, 1.0)],
        "crowd": [(120, 5, 250, 105, -2.0), (90, 6, 50, 60, 4.0), (100, 7, 390, 80, 1.0), (130, 8, 110, 100, 2.0)],
        "none": [],
    }[kind]
    clip.movers = [Mover(person(h, seed, 0.15), walking(x0 + x, y0 + y, vx)) for h, seed, x, y, vx in people]
    return clip
