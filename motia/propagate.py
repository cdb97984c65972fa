"""Pixel propagation: camera motion between frames, and new-region pixels taken from frames that saw them.

When the camera moves, much of what a border pixel of frame t should show is
visible inside the source of other frames. This module finds those pixels so
that diffusion has to invent only what no frame saw. It is pure: arrays in,
arrays out, frames read through a ``read_frame(i)`` accessor, no file I/O and
no config reading (``params_from_config`` maps the config section).

Two steps:

* ``estimate_motion``: SIFT features on frames scaled to ``analysis_size`` (frames
  under 256 px upscaled to it: features exist there), ratio-test matches, RANSAC,
  then the simplest model that explains the inliers (translation, similarity,
  affine, homography), refitted robustly; the gates scale with the frame's area
  (``motion_gates``). Every frame is linked to the current keyframe (bounded
  drift: a path between frames d apart has about d / keyframe_interval + 2 links)
  and, if that fit is poor, to the previous frame; where features fail (a plain
  sky), to the previous frame by phase correlation + ECC, kept only if it passes
  the photometric check (``photometric_error``). A frame with no good link, or
  the first frame of a shot (``shots``), starts a new segment, and frames in
  different segments never exchange pixels. Alongside, ``motia.movers`` marks in
  each frame what moves on its own (people walking past). Cost: at most 2 matches
  per frame (3 with the dense fallback), each frame read once, in order. The
  result, ``CameraMotion``, holds per frame a 3x3 transform to its segment's
  reference frame and a mover mask, scales to any frame size and round-trips
  through JSON.
* ``propagate_frame`` / ``propagate``: for every canvas pixel outside the source
  box of frame t, visit frames s in order of temporal distance within
  ``radius``; where the pixel's position warped into s lies inside s's source
  box (shrunk by a margin) and not on a mover of s, sample it bilinearly
  (cv2.remap). Each pixel keeps up to ``samples`` candidates, those on the same
  side of t at least ``spacing`` frames apart (so they span more time than a
  passing object covers); a strict majority (and at least ``min_agree``) within
  ``tolerance`` of their median must agree, else the pixel is left to diffusion.
  The value is the nearest agreeing frame's. Beside a mover that t's own box edge
  cuts, the border is left to diffusion (the mover goes on there). A mover the
  masks miss and that stays over the same background for more than about half
  the candidates' span (samples * spacing / 2 frames) can still win the vote.
  Works at any scale: give frames and canvas at that scale.

Conventions: frames are numpy (h, w, C) or (h, w) arrays, uint8 or float in
[0, 1] (OpenCV's layout, not motia's torch (F, C, H, W)); ``read_frame(i)``
returns the *source* frame i only (features outside it do not exist). Points are
(x, y) in pixel coordinates with pixel centres at integers. A transform
``relative(s, t)`` maps frame t's source coordinates to frame s's.

OpenCV is a requirement of motia, imported lazily; this module
imports without it and asks for it only when motion is estimated or pixels are
propagated.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from motia.errors import ConfigError
from motia.geometry import SIDES, Canvas
from motia.movers import MoverTracker, unpack
from motia.movers import pixel_scale as _pixel_scale

ReadFrame = Callable[[int], np.ndarray]

MODELS = ("translation", "similarity", "affine", "homography")
INSTALL_HINT = "pip install opencv-python-headless"

# A model with fewer degrees of freedom is chosen when its median inlier error is within
# this of the best model's (px at the analysis size, plus a relative share): a pure pan
# then stays an exact translation instead of a homography with noise in its perspective terms.
_MODEL_SLACK_PX = 0.05
_MODEL_SLACK_REL = 0.10
# A link whose transform changes the frame's area by more than this factor is rejected
# as degenerate (neighbouring frames of real footage never zoom 2x).
_MAX_AREA_CHANGE = 2.0
_IRLS_ITERS = 5  # reweighted refits of the chosen model; the residuals settle within a few
_REMAP_COLS = 4096  # cv2.remap needs both map sides below 32767
_NO_OFFSET = np.iinfo(np.int16).min  # an empty candidate slot (frame offsets are int16)
_MAX_RADIUS = 16000
_MIN_ANALYSIS = 256  # frames smaller than this (long side) are analysed upscaled to it
_MAX_UPSCALE = 4.0
_MIN_GATE = 8  # the scaled min_inliers never goes below this
# The photometric check of a dense link (and of a feature link only the scaled gate admits),
# on blurred gray frames at the check size (the analysis size, never upscaled); levels of 255.
_CHECK_BLUR = 1.0  # px: Gaussian sigma, keeps bilinear resampling errors and noise small
_CHECK_OVERLAP = 0.5  # the warped frame must cover this share of the frame
_CHECK_FLAT = 3.0  # median |difference| over the overlap (mostly plain areas: a cut to another sky fails)
_CHECK_RMS = 5.0  # RMS difference over the overlap
_CHECK_MIN_RISE = 300.0  # level^2: a 1 px move of the alignment raises the summed squared difference this much
_CHECK_RISE_NOISE = 4.0  # ... and this many times sqrt(n) x RMS (what noise alone could do)
_EDGE_DEPTH = 0.35  # the border beside a mover cut by the box edge is left this deep, times the cut's length
_EDGE_MAX_DEPTH = 0.15  # ... at most this share of the source's long side
_DENSE_MAX_SHIFT = 0.3  # share of the frame: a dense link to the previous frame moves less


def require_cv2():
    """Import OpenCV or raise a one-line ConfigError naming the install command."""
    try:
        import cv2
    except ImportError:
        raise ConfigError(f"outpaint.propagate needs OpenCV, which is not installed: {INSTALL_HINT}") from None
    return cv2


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class MotionParams:
    """Camera-motion estimation settings (pixel values are at the analysis size)."""

    features: str = "sift"  # "sift" (sub-pixel keypoints, scale invariant) or "orb" (faster, coarser)
    analysis_size: int = 512  # frames are downscaled to this long side (small ones upscaled, see _analysis_size)
    max_features: int = 2000
    match_ratio: float = 0.75  # Lowe's ratio test
    ransac_threshold: float = 2.0  # px
    keyframe_interval: int = 8
    min_inliers: int = 30  # for a 16:9 frame of analysis_size; smaller frames need fewer (see gates)
    min_inlier_ratio: float = 0.3  # inliers / ratio-test matches
    max_error: float = 1.0  # inlier RMS reprojection error of the chosen model, px
    dense_fallback: bool = True  # link by phase correlation + ECC where features fail (photometric check)
    reject_movers: bool = True  # mark independently moving things per frame (motia.movers)
    mover_threshold: float = 0.05  # a pixel differing from its warped neighbours by more is moving ([0, 1] scale)

    def __post_init__(self):
        if self.features not in ("sift", "orb"):
            raise ValueError(f"features must be 'sift' or 'orb', got {self.features!r}")
        if self.analysis_size < 16 or self.keyframe_interval < 1 or self.min_inliers < 4 or self.max_features < 8:
            raise ValueError(f"invalid motion parameters: {self}")
        if not 0 < self.mover_threshold <= 1:
            raise ValueError(f"mover_threshold must be in (0, 1], got {self.mover_threshold}")


@dataclass(frozen=True)
class PropagationParams:
    """Propagation settings. ``margin`` is a fraction of the source's long side, so it means the same at any scale."""

    radius: int = 100  # frames either side that may give pixels
    samples: int = 5  # candidates kept per pixel for the agreement test
    spacing: int = 4  # min frames between a pixel's candidates on one side of t (outlasts short occlusions)
    margin: float = 0.005  # candidates must lie this far inside the source box
    tolerance: float = 0.1  # agreement: mean |candidate - median| over channels, in [0, 1] intensity
    min_agree: int = 2  # agreeing candidates needed; 1 accepts a pixel seen by a single frame

    def __post_init__(self):
        if not (1 <= self.radius <= _MAX_RADIUS and 1 <= self.samples <= 100 and self.spacing >= 1
                and self.min_agree >= 1):
            raise ValueError(f"invalid propagation parameters: {self}")
        if self.min_agree > self.samples:
            raise ValueError(f"min_agree ({self.min_agree}) must be <= samples ({self.samples})")
        if not 0 <= self.margin < 0.5 or not 0 < self.tolerance <= 1:
            raise ValueError(f"invalid propagation parameters: {self}")


def params_from_config(section) -> tuple[MotionParams, PropagationParams]:
    """Map a ``motia.config.PropagationSection`` (``outpaint.propagation``) onto the two parameter sets."""
    motion = MotionParams(
        features=section.features,
        analysis_size=section.analysis_size,
        keyframe_interval=section.keyframe_interval,
        min_inliers=section.min_inliers,
        min_inlier_ratio=section.min_inlier_ratio,
        max_error=section.max_error,
        dense_fallback=section.dense_fallback,
        reject_movers=section.reject_movers,
        mover_threshold=section.mover_threshold,
    )
    prop = PropagationParams(
        radius=section.radius,
        samples=section.samples,
        spacing=section.spacing,
        margin=section.margin,
        tolerance=section.tolerance,
        min_agree=section.min_agree,
    )
    return motion, prop


# ----------------------------------------------------------------------------- camera motion


@dataclass(frozen=True)
class Link:
    """How a frame was tied to an earlier one: the fit and its quality."""

    to: int  # the earlier frame
    model: str  # one of MODELS
    matches: int  # ratio-test matches (0 for a dense link)
    inliers: int
    rms: float  # inlier RMS reprojection error, px at the analysis size (dense: mean |difference| on texture, levels)
    method: str = "features"  # "features" (keypoints + RANSAC) or "dense" (phase correlation + ECC, checked)

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / max(1, self.matches)

    def to_dict(self) -> dict:
        return {"to": self.to, "model": self.model, "matches": self.matches, "inliers": self.inliers,
                "inlier_ratio": round(self.inlier_ratio, 4), "rms": self.rms, "method": self.method}

    @classmethod
    def from_dict(cls, data: dict) -> "Link":
        return cls(to=int(data["to"]), model=str(data["model"]), matches=int(data["matches"]),
                   inliers=int(data["inliers"]), rms=float(data["rms"]), method=str(data.get("method", "features")))


@dataclass
class CameraMotion:
    """Per-frame transforms to the reference frame of each frame's segment, at ``size`` = (width, height).

    ``transforms[t]`` maps frame t's pixel coordinates to its segment reference's;
    frames in different segments are unrelated. ``links[t]`` is None for the first frame
    of a segment. ``movers`` (packed bits, see ``motia.movers``) marks per frame what
    moves on its own, at ``movers_size`` (w, h); None when not estimated.
    """

    size: tuple[int, int]  # (width, height) the transforms are expressed at
    transforms: np.ndarray  # (F, 3, 3) float64
    segments: np.ndarray  # (F,) int
    links: list[Link | None] = field(default_factory=list)
    features: str = "sift"  # the detector that found it (provenance for summaries)
    movers: np.ndarray | None = None  # (F, h, ceil(w / 8)) uint8: one bit per cell, set where a mover is
    movers_size: tuple[int, int] | None = None  # (w, h) of the mover masks
    _inverse: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def num_frames(self) -> int:
        return len(self.segments)

    def connected(self, s: int, t: int) -> bool:
        return bool(self.segments[s] == self.segments[t])

    def relative(self, s: int, t: int, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """3x3 map from frame t's pixel coordinates to frame s's, for frames of ``size`` (w, h); None if unrelated.

        A transform found at the analysis size (w0, h0) is rescaled as S H S^-1 with the
        pixel-centre map x' = (x + 0.5) * w / w0 - 0.5 (and likewise for y).
        """
        if not self.connected(s, t):
            return None
        return self.maps(s, t, size)

    def maps(self, dst, src, size: tuple[int, int] | None = None) -> np.ndarray:
        """Batched ``relative``: (..., 3, 3) maps from frames ``src`` to frames ``dst`` (broadcast index arrays).

        The caller makes sure the pairs are connected; unrelated pairs give meaningless maps.
        """
        if self._inverse is None:
            self._inverse = np.linalg.inv(self.transforms)
        rel = self._inverse[dst] @ self.transforms[src]
        if size is not None and tuple(size) != tuple(self.size):
            scale = _pixel_scale(self.size, size)
            rel = scale @ rel @ np.linalg.inv(scale)
        return rel / rel[..., 2:3, 2:3]

    def mover_mask(self, t: int) -> np.ndarray | None:
        """Frame t's (h, w) bool mask of independently moving things at ``movers_size``, or None if not estimated."""
        if self.movers is None:
            return None
        return unpack(self.movers, t, self.movers_size)

    def summary(self) -> dict:
        """Counts for run summaries: frames, segments, links per model and method, mean inliers and RMS, movers."""
        used = [link for link in self.links if link is not None]
        keyed = [link for link in used if link.method == "features"]
        out = {
            "features": self.features,
            "frames": self.num_frames,
            "segments": int(len(np.unique(self.segments))) if self.num_frames else 0,
            "linked_frames": len(used),
            "dense_links": len(used) - len(keyed),
            "models": {m: sum(link.model == m for link in used) for m in MODELS},
            "mean_inliers": round(float(np.mean([link.inliers for link in keyed])), 1) if keyed else None,
            "mean_rms": round(float(np.mean([link.rms for link in keyed])), 4) if keyed else None,
        }
        if self.movers is not None and self.num_frames:
            cells = self.movers_size[0] * self.movers_size[1]
            marked = sum(int(np.unpackbits(m, axis=1, count=self.movers_size[0]).sum()) for m in self.movers)
            out["mover_share"] = round(marked / (cells * self.num_frames), 4)  # share of pixels marked as moving
        return out

    def to_dict(self) -> dict:
        """JSON-friendly: size, per-frame transform (row-major 9 floats), segment, link and mover mask (base64 bits)."""
        import base64

        movers = [None] * self.num_frames if self.movers is None else [
            base64.b64encode(m.tobytes()).decode("ascii") for m in self.movers]
        return {
            "size": list(self.size),
            "features": self.features,
            "movers_size": list(self.movers_size) if self.movers_size is not None else None,
            "summary": self.summary(),
            "frames": [
                {"segment": int(seg), "transform": [float(v) for v in tr.ravel()],
                 "link": link.to_dict() if link is not None else None, "movers": mv}
                for tr, seg, link, mv in zip(self.transforms, self.segments, self.links, movers)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CameraMotion":
        import base64

        frames = data["frames"]
        movers = movers_size = None
        if data.get("movers_size") is not None:
            movers_size = (int(data["movers_size"][0]), int(data["movers_size"][1]))
            row = math.ceil(movers_size[0] / 8)
            movers = np.stack([np.frombuffer(base64.b64decode(f["movers"]), dtype=np.uint8).reshape(-1, row)
                               for f in frames])
        return cls(
            size=(int(data["size"][0]), int(data["size"][1])),
            transforms=np.array([f["transform"] for f in frames], dtype=np.float64).reshape(-1, 3, 3),
            segments=np.array([f["segment"] for f in frames], dtype=np.int64),
            links=[Link.from_dict(f["link"]) if f["link"] is not None else None for f in frames],
            features=str(data.get("features", "sift")),
            movers=movers,
            movers_size=movers_size,
        )


def _u8(frame: np.ndarray) -> np.ndarray:
    """A frame as uint8 (float frames are in [0, 1])."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return frame


def _gray_u8(frame: np.ndarray, cv2) -> np.ndarray:
    frame = _u8(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    elif frame.ndim == 3:
        frame = cv2.cvtColor(np.ascontiguousarray(frame[:, :, :3]), cv2.COLOR_RGB2GRAY)
    return frame


def _analysis_size(w: int, h: int, long_side: int) -> tuple[int, int]:
    """(w, h) frames are analysed at: ``long_side`` on the long side when larger; when smaller than
    ``_MIN_ANALYSIS`` (or ``long_side`` if that is smaller) upscaled to it (at most ``_MAX_UPSCALE``x),
    as SIFT finds few keypoints on an 80x96 frame and more on the same frame enlarged."""
    big = max(w, h)
    if big > long_side:
        f = long_side / big
    else:
        f = max(1.0, min(min(_MIN_ANALYSIS, long_side) / big, _MAX_UPSCALE))
    return max(1, round(w * f)), max(1, round(h * f))


@dataclass(frozen=True)
class Gates:
    """The fit-quality gates for one clip's frames: ``MotionParams``'s, scaled to what is analysed."""

    min_inliers: int  # a feature link needs this many RANSAC inliers
    checked_below: int  # a feature link with fewer inliers must also pass the photometric check
    ransac_threshold: float  # px at the analysis size
    max_error: float  # px at the analysis size


def motion_gates(params: MotionParams, native: Sequence[int]) -> Gates:
    """Gates for frames of ``native`` (w, h) size.

    ``min_inliers`` is meant for a 16:9 frame of ``analysis_size``; a smaller frame has
    proportionally less detail, so the gate scales with its area (the native area when
    upscaled: enlarging adds no detail) down to ``_MIN_GATE``. A link admitted only by
    the scaled gate must also pass the photometric check that dense links pass. Pixel
    thresholds grow with the upscale factor (keypoints are as precise as the native frame).
    """
    size = _analysis_size(native[0], native[1], params.analysis_size)
    up = max(1.0, size[0] / native[0])
    detail = native[0] * native[1] if up > 1 else size[0] * size[1]
    full = params.analysis_size**2 * 9 / 16
    min_inliers = max(min(_MIN_GATE, params.min_inliers), round(params.min_inliers * min(1.0, detail / full)))
    return Gates(min_inliers=min_inliers, checked_below=params.min_inliers,
                 ransac_threshold=params.ransac_threshold * up, max_error=params.max_error * up)


class _Features:
    """Keypoints of one analysis frame: positions (N, 2), precision weights (N,), descriptors."""

    def __init__(self, pts: np.ndarray, weights: np.ndarray, desc):
        self.pts, self.weights, self.desc = pts, weights, desc


def _detector(params: MotionParams, cv2):
    if params.features == "sift":
        return cv2.SIFT_create(nfeatures=params.max_features), cv2.NORM_L2
    return cv2.ORB_create(nfeatures=params.max_features), cv2.NORM_HAMMING


def _detect(gray: np.ndarray, detector) -> _Features:
    kps, desc = detector.detectAndCompute(gray, None)
    if not kps or desc is None:
        return _Features(np.zeros((0, 2)), np.zeros(0), None)
    pts = np.array([k.pt for k in kps], dtype=np.float64)
    # A keypoint's localisation error grows with its scale: inverse-variance weights.
    weights = 1.0 / np.maximum(np.array([k.size for k in kps], dtype=np.float64), 1.0) ** 2
    return _Features(pts, weights, desc)


def _apply(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, 2) points through a 3x3 transform."""
    q = pts @ H[:, :2].T + H[:, 2]
    return q[:, :2] / q[:, 2:3]


def _fit_linear(model: str, src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares for translation / similarity / affine; returns 3x3."""
    if model == "translation":
        t = (w[:, None] * (dst - src)).sum(0) / w.sum()
        return np.array([[1, 0, t[0]], [0, 1, t[1]], [0, 0, 1]], dtype=np.float64)
    # Centre on the weighted mean for conditioning.
    cs, cd = (w[:, None] * src).sum(0) / w.sum(), (w[:, None] * dst).sum(0) / w.sum()
    x, y = (src - cs).T
    u, v = (dst - cd).T
    sw = np.sqrt(w)
    if model == "similarity":  # u = a x - b y, v = b x + a y
        A = np.concatenate([np.stack([x, -y], 1), np.stack([y, x], 1)]) * np.concatenate([sw, sw])[:, None]
        (a, b), *_ = np.linalg.lstsq(A, np.concatenate([u, v]) * np.concatenate([sw, sw]), rcond=None)
        M = np.array([[a, -b], [b, a]])
    else:  # affine
        A = np.stack([x, y], 1) * sw[:, None]
        sol, *_ = np.linalg.lstsq(A, np.stack([u, v], 1) * sw[:, None], rcond=None)
        M = sol.T
    H = np.eye(3)
    H[:2, :2] = M
    H[:2, 2] = cd - M @ cs
    return H


def _fit(model: str, src: np.ndarray, dst: np.ndarray, w: np.ndarray, cv2) -> np.ndarray | None:
    """Robust (IRLS, L1-like) fit of ``model`` to inlier correspondences."""
    if model == "homography":
        H, _ = cv2.findHomography(src, dst, 0)  # least squares + Levenberg-Marquardt
        return None if H is None else H / H[2, 2]
    weights = w
    H = _fit_linear(model, src, dst, weights)
    for _ in range(_IRLS_ITERS):
        r = np.linalg.norm(_apply(H, src) - dst, axis=1)
        # L1 reweighting: a few keypoints jittered by the detector's sampling do not pull
        # the fit, so an integer pan is recovered as an (almost exactly) integer translation.
        weights = w / np.maximum(r, 1e-3)
        H = _fit_linear(model, src, dst, weights)
    return H


def _rms(H: np.ndarray, src: np.ndarray, dst: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((_apply(H, src) - dst) ** 2, axis=1))))


def _plausible(H: np.ndarray, w: int, h: int) -> bool:
    """The frame maps to a convex quad of similar area, in front of the camera."""
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    z = corners @ H[2, :2] + H[2, 2]
    if np.any(z <= 1e-6) or not np.all(np.isfinite(H)):
        return False
    q = _apply(H, corners)
    edges = np.roll(q, -1, axis=0) - q
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not (np.all(cross > 0) or np.all(cross < 0)):
        return False
    area = 0.5 * abs(np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1]))
    ratio = area / max((w - 1) * (h - 1), 1)
    return 1 / _MAX_AREA_CHANGE <= ratio <= _MAX_AREA_CHANGE


def _match(cur: _Features, ref: _Features, to: int, size, params: MotionParams, gates: Gates, norm, cv2):
    """Transform from ``cur``'s coordinates to ``ref``'s and its Link, or (None, None) if the fit is poor."""
    if cur.desc is None or ref.desc is None or len(cur.pts) < gates.min_inliers or len(ref.pts) < 2:
        return None, None
    pairs = cv2.BFMatcher(norm).knnMatch(cur.desc, ref.desc, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < params.match_ratio * p[1].distance]
    if len(good) < gates.min_inliers:
        return None, None
    qi = np.array([m.queryIdx for m in good])
    ti = np.array([m.trainIdx for m in good])
    src, dst = cur.pts[qi], ref.pts[ti]
    w = np.sqrt(cur.weights[qi] * ref.weights[ti])
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, gates.ransac_threshold, maxIters=2000, confidence=0.999)
    if mask is None:
        return None, None
    inl = mask.ravel().astype(bool)
    n_in = int(inl.sum())
    if n_in < gates.min_inliers or n_in / len(good) < params.min_inlier_ratio:
        return None, None
    src, dst, w = src[inl], dst[inl], w[inl]
    fits = {}
    for model in MODELS:
        H = _fit(model, src, dst, w, cv2)
        if H is not None and _plausible(H, *size):
            # Median residual: points on a slow moving object that slipped under the RANSAC
            # threshold must not make a bendier model look better.
            fits[model] = (H, float(np.median(np.linalg.norm(_apply(H, src) - dst, axis=1))))
    if not fits:
        return None, None
    best = min(err for _, err in fits.values())
    model = next(m for m in MODELS if m in fits and fits[m][1] <= best * (1 + _MODEL_SLACK_REL) + _MODEL_SLACK_PX)
    H = fits[model][0]
    # The homography RANSAC can bend to take in points of a mover; the chosen (simpler) model
    # keeps only the points it explains within the threshold, and is refitted on them.
    near = np.linalg.norm(_apply(H, src) - dst, axis=1) <= gates.ransac_threshold
    n_in = int(near.sum())
    if n_in < len(src):
        if n_in < gates.min_inliers or n_in / len(good) < params.min_inlier_ratio:
            return None, None
        src, dst, w = src[near], dst[near], w[near]
        H = _fit(model, src, dst, w, cv2)
        if H is None or not _plausible(H, *size):
            return None, None
    err = _rms(H, src, dst)
    if err > gates.max_error:
        return None, None
    return H, Link(to=to, model=model, matches=len(good), inliers=n_in, rms=err)


def _check_image(frame: np.ndarray, size: tuple[int, int], cv2) -> np.ndarray:
    """The blurred float32 gray frame at ``size`` that the photometric check and the dense fallback read."""
    gray = _gray_u8(frame, cv2)
    if (gray.shape[1], gray.shape[0]) != tuple(size):
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(gray.astype(np.float32), (0, 0), _CHECK_BLUR)


def _warp_onto(ref: np.ndarray, H: np.ndarray, shape, cv2) -> tuple[np.ndarray, np.ndarray]:
    """``ref`` sampled at H(x) for every pixel x of a frame of ``shape``, and where that lies inside ``ref``."""
    h, w = shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(ref, H, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ones = np.full(ref.shape, 255, dtype=np.uint8)  # stays 255 only where the bilinear sample is wholly inside
    inside = cv2.warpPerspective(ones, H, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped, inside == 255


def photometric_error(cur: np.ndarray, ref: np.ndarray, H: np.ndarray, cv2=None) -> float | None:
    """Whether H (``cur``'s pixel coordinates -> ``ref``'s) aligns the two check images, and how well.

    Returns the RMS difference in levels over the overlap, or None when the alignment is
    refused: the overlap is small; the frames disagree (median or RMS difference: a cut,
    a wrong shift); or moving the alignment by one pixel left, right, up or down does not
    raise the summed squared difference clearly, i.e. the alignment is not at a minimum,
    or not determined along that axis (a plain sky matches itself at any shift, a
    horizon along itself). "Clearly": by at least ``_CHECK_RISE_NOISE`` times what the
    residual noise could make of it (sqrt(n) x RMS over the n pixels), and
    ``_CHECK_MIN_RISE`` level^2 whatever the noise.
    """
    cv2 = cv2 or require_cv2()
    warped, valid = _warp_onto(ref, H, cur.shape, cv2)
    moved = []
    for axis in (0, 1):
        for sign in (-1.0, 1.0):
            shift = np.eye(3)
            shift[axis, 2] = sign
            image, inside = _warp_onto(ref, H @ shift, cur.shape, cv2)
            moved.append(image)
            valid &= inside
    n = int(valid.sum())
    if n < _CHECK_OVERLAP * valid.size:
        return None
    c = cur[valid]
    diff = c - warped[valid]
    ssd = float(np.dot(diff, diff))
    rms = math.sqrt(ssd / n)
    if float(np.median(np.abs(diff))) > _CHECK_FLAT or rms > _CHECK_RMS:
        return None
    needed = max(_CHECK_MIN_RISE, _CHECK_RISE_NOISE * math.sqrt(n) * rms)
    for image in moved:
        d = c - image[valid]
        if float(np.dot(d, d)) - ssd < needed:
            return None
    return rms


def _dense(cur: np.ndarray, ref: np.ndarray, cv2) -> np.ndarray | None:
    """Translation from ``cur``'s coordinates to ``ref``'s: phase correlation, refined by ECC; None if implausible."""
    h, w = cur.shape
    (dx, dy), _ = cv2.phaseCorrelate(ref, cur, cv2.createHanningWindow((w, h), cv2.CV_32F))  # cur(x) ~ ref(x - d)
    warp = np.array([[1, 0, -dx], [0, 1, -dy]], dtype=np.float32)
    try:  # ECC maximises the correlation of cur(x) and ref(warp(x)): sub-pixel, not biased by the window
        _, warp = cv2.findTransformECC(cur, ref, warp, cv2.MOTION_TRANSLATION,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4), None, 1)
    except cv2.error:
        pass  # did not converge: the phase correlation stands, the check decides
    H = np.eye(3)
    H[:2] = warp
    if abs(H[0, 2]) > _DENSE_MAX_SHIFT * w or abs(H[1, 2]) > _DENSE_MAX_SHIFT * h or not np.all(np.isfinite(H)):
        return None
    return H


def _shot_starts(shots: Sequence[int] | None, num_frames: int) -> set[int]:
    if shots is None:
        return set()
    starts = [int(s) for s in shots]
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= num_frames:
        raise ValueError(f"shots must be the shots' first frames, sorted, starting with 0, each below {num_frames}; "
                         f"got {list(shots)}")
    return set(starts[1:])


@dataclass
class _Seen:
    """What the motion pass keeps of a frame it may link to: index, features, the frame (for a check image)."""

    index: int
    feats: _Features
    frame: np.ndarray
    check: np.ndarray | None = None  # made when a photometric check or the dense fallback first needs it


class _Linker:
    """Links a frame to an earlier one: features to the keyframe, then to the previous frame, then dense."""

    def __init__(self, params: MotionParams, native: tuple[int, int], size: tuple[int, int], cv2):
        self.params, self.size, self.cv2 = params, size, cv2
        self.gates = motion_gates(params, native)
        self.check_size = _analysis_size(native[0], native[1], min(params.analysis_size, max(native)))
        # analysis coordinates <-> check coordinates
        self.to_check = _pixel_scale(size, self.check_size)
        self.from_check = np.linalg.inv(self.to_check)
        self.detector, self.norm = _detector(params, cv2)

    def see(self, t: int, frame: np.ndarray) -> _Seen:
        cv2 = self.cv2
        gray = _gray_u8(frame, cv2)
        if (gray.shape[1], gray.shape[0]) != self.size:
            upscale = self.size[0] > gray.shape[1]
            gray = cv2.resize(gray, self.size, interpolation=cv2.INTER_CUBIC if upscale else cv2.INTER_AREA)
        return _Seen(t, _detect(gray, self.detector), frame)

    def _check(self, seen: _Seen) -> np.ndarray:
        if seen.check is None:
            seen.check = _check_image(seen.frame, self.check_size, self.cv2)
        return seen.check

    def link(self, cur: _Seen, key: _Seen | None, prev: _Seen | None) -> tuple[np.ndarray | None, Link | None]:
        for ref in (key, prev if prev is not None and (key is None or prev.index != key.index) else None):
            if ref is None:
                continue
            H, link = _match(cur.feats, ref.feats, ref.index, self.size, self.params, self.gates, self.norm, self.cv2)
            if H is not None and (link.inliers >= self.gates.checked_below or photometric_error(
                    self._check(cur), self._check(ref), self._in_check(H), self.cv2) is not None):
                return H, link
        if prev is not None and self.params.dense_fallback:
            H = _dense(self._check(cur), self._check(prev), self.cv2)
            err = None if H is None else photometric_error(self._check(cur), self._check(prev), H, self.cv2)
            if err is not None:
                return self.from_check @ H @ self.to_check, Link(to=prev.index, model="translation", matches=0,
                                                                  inliers=0, rms=round(err, 4), method="dense")
        return None, None

    def _in_check(self, H: np.ndarray) -> np.ndarray:
        return self.to_check @ H @ self.from_check


def estimate_motion(
    read_frame: ReadFrame,
    num_frames: int,
    params: MotionParams = MotionParams(),
    *,
    shots: Sequence[int] | None = None,
    callback: Callable[[int], None] | None = None,
) -> CameraMotion:
    """Camera motion of a clip from its source frames, read once each, in order.

    Frames are analysed at ``params.analysis_size`` (long side; small frames upscaled,
    see ``_analysis_size``). Frame t is matched to the current keyframe; if that fit is
    poor (too few inliers, low inlier ratio, high RMS error, or an implausible warp; the
    gates scaled by ``motion_gates``), to frame t - 1; if that fails too, it is linked to
    t - 1 by a dense translation (``dense_fallback``) that must pass the photometric check;
    else t starts a new segment. t becomes the keyframe when it is ``keyframe_interval``
    frames past the last one or when it had to link to t - 1.

    ``shots``: the first frame of each shot (sorted, starting with 0; None: one shot). A
    shot's first frame always starts a new segment: frames of different shots never
    link. With ``params.reject_movers``, each frame's independently moving things are
    marked (``motia.movers``; ``CameraMotion.movers``). ``callback(t)`` is called after
    each frame (progress); it only observes.
    """
    cv2 = require_cv2()
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    cuts = _shot_starts(shots, num_frames)
    transforms = np.zeros((num_frames, 3, 3), dtype=np.float64)
    segments = np.zeros(num_frames, dtype=np.int64)
    links: list[Link | None] = []
    native = size = linker = tracker = None
    key = prev = None  # _Seen
    segment = -1
    for t in range(num_frames):
        frame = np.asarray(read_frame(t))
        h, w = frame.shape[:2]
        if native is None:
            native, size = (w, h), _analysis_size(w, h, params.analysis_size)
            linker = _Linker(params, native, size, cv2)
            if params.reject_movers:
                tracker = MoverTracker(num_frames, size, native, params.mover_threshold * 255, transforms, segments, cv2)
        elif (w, h) != native:
            raise ValueError(f"read_frame({t}) is {w}x{h} but frame 0 was {native[0]}x{native[1]}: "
                             "frames must share one size")
        cur = linker.see(t, frame)
        H = link = None
        if t not in cuts:
            H, link = linker.link(cur, key, prev)
        if H is None:
            segment += 1
            transforms[t] = np.eye(3)
            key = cur
        else:
            transforms[t] = transforms[link.to] @ H
            if t - key.index >= params.keyframe_interval or link.to != key.index:
                key = cur
        segments[t] = segment
        links.append(link)
        prev = cur
        if tracker is not None:
            tracker.push(t, _u8(frame))
        if callback is not None:
            callback(t)
    movers = tracker.finish() if tracker is not None else None
    return CameraMotion(size=size, transforms=transforms, segments=segments, links=links, features=params.features,
                        movers=movers, movers_size=tracker.size if tracker is not None else None)


# ----------------------------------------------------------------------------- propagation


@dataclass
class Propagated:
    """One frame's propagation on the canvas.

    ``image`` (H, W[, C]) holds the source in its box, propagated pixels where ``mask``,
    and ``fill`` elsewhere; ``mask`` is True only for propagated pixels (outside the box);
    ``confidence`` in [0, 1] is the share of ``samples`` candidates that agreed (0 where
    not filled); ``origin`` is the frame each filled pixel came from (-1 elsewhere).
    """

    index: int
    image: np.ndarray
    mask: np.ndarray
    confidence: np.ndarray
    origin: np.ndarray

    def known(self, canvas: Canvas) -> np.ndarray:
        """(H, W) bool: the source box plus the propagated pixels."""
        out = self.mask.copy()
        top, left, bottom, right = canvas.box
        out[top:bottom, left:right] = True
        return out


class FrameCache:
    """``read_frame`` with an LRU cache of at most ``max_bytes`` (and at least 2 frames).

    A target visits the frames around it nearest first, and the next target visits
    almost the same ones, so a cache holding one target's candidates (about
    2 * (samples * spacing + frames a border takes to be revealed)) reads each frame
    about once; a smaller one thrashes (LRU on a repeated scan) but stays correct.
    """

    def __init__(self, read_frame: ReadFrame, max_bytes: int = 256 << 20):
        self.read_frame, self.max_bytes = read_frame, max_bytes
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.misses = 0

    def __call__(self, i: int) -> np.ndarray:
        if i in self._frames:
            self._frames.move_to_end(i)
            return self._frames[i]
        frame = np.asarray(self.read_frame(i))
        self.misses += 1
        self._frames[i] = frame
        self._bytes += frame.nbytes
        while self._bytes > self.max_bytes and len(self._frames) > 2:
            self._bytes -= self._frames.popitem(last=False)[1].nbytes
        return frame


def _candidate_order(t: int, num_frames: int, radius: int) -> Iterator[int]:
    """Frames within ``radius`` of t, nearest first (the earlier one first at equal distance)."""
    for d in range(1, radius + 1):
        for s in (t - d, t + d):
            if 0 <= s < num_frames:
                yield s


def _remap_points(frame: np.ndarray, u: np.ndarray, v: np.ndarray, cv2) -> np.ndarray:
    """Bilinear samples of ``frame`` at n points -> (n, C) in the frame's dtype.

    Positions are rounded to 1/32 px (as OpenCV's fixed-point remap did before version 5),
    so a position within 1/64 px of a pixel centre returns that pixel exactly: integer
    motion copies pixels bit for bit, also when the motion was found on frames scaled
    by a non-integer factor.
    """
    n = len(u)
    cols = min(n, _REMAP_COLS)
    rows = -(-n // cols)
    mu = np.zeros(rows * cols, np.float32)
    mv = np.zeros(rows * cols, np.float32)
    mu[:n], mv[:n] = np.round(np.asarray(u) * 32) / 32, np.round(np.asarray(v) * 32) / 32
    out = cv2.remap(frame, mu.reshape(rows, cols), mv.reshape(rows, cols),
                    interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * cols, -1)[:n]


def _cell(pos: np.ndarray, frame_len: int, cells: int) -> np.ndarray:
    """Index of the mask cell (of ``cells`` across a frame ``frame_len`` px long) holding each pixel position."""
    return np.clip(np.floor((pos + 0.5) * (cells / frame_len)), 0, cells - 1).astype(np.intp)


def _median(x: np.ndarray) -> np.ndarray:
    """Median over axis 0; a sorting network for the few candidates a pixel keeps (5x faster than np.median)."""
    c = len(x)
    if c > 8:
        return np.median(x, axis=0)
    rows = list(x)
    for r in range(c):  # odd-even transposition sort
        for i in range(r % 2, c - 1, 2):
            lo = np.minimum(rows[i], rows[i + 1])
            rows[i + 1] = np.maximum(rows[i], rows[i + 1])
            rows[i] = lo
    return rows[c // 2] if c % 2 else (rows[c // 2 - 1] + rows[c // 2]) / 2


def _value_scale(dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def propagate_frame(
    t: int,
    read_frame: ReadFrame,
    motion: CameraMotion,
    canvas: Canvas,
    params: PropagationParams = PropagationParams(),
    *,
    fill: float = 0,
) -> Propagated:
    """Fill frame t's new region on ``canvas`` from other frames; frames (and canvas) at any one scale.

    ``read_frame(s)`` returns source frame s as (canvas.src_h, canvas.src_w[, C]); the
    motion (found at its analysis size) is rescaled to that size. See the module
    docstring for the candidate and agreement rules.

    Work per candidate frame is limited to where its source box lands in the new
    region (a bounding box), shrunk to the rows and columns that still want candidates.
    """
    cv2 = require_cv2()
    if not 0 <= t < motion.num_frames:
        raise ValueError(f"frame {t} is outside the clip's {motion.num_frames} frames")
    src_h, src_w = canvas.src_h, canvas.src_w
    top, left, bottom, right = canvas.box
    own = np.asarray(read_frame(t))
    if own.shape[:2] != (src_h, src_w):
        raise ValueError(f"read_frame({t}) returned {own.shape[:2]}, the canvas source is {(src_h, src_w)}")
    channels = own.shape[2:]  # () or (C,)
    C = int(np.prod(channels)) if channels else 1
    dtype = own.dtype
    size = (src_w, src_h)
    Hc, Wc, S = canvas.height, canvas.width, params.samples

    # Per canvas pixel: candidates kept, their frame offsets s - t (int16), their values.
    count = np.zeros((Hc, Wc), dtype=np.int8)
    offsets = np.full((S, Hc, Wc), _NO_OFFSET, dtype=np.int16)
    # The last offset kept before (0) and after (1) t; the sentinels pass any spacing test.
    last = np.empty((2, Hc, Wc), dtype=np.int16)
    last[0], last[1] = np.iinfo(np.int16).max, np.iinfo(np.int16).min
    vals = np.zeros((S, Hc, Wc, C), dtype=dtype)
    rects = [(r.start, r.stop, c.start, c.stop) for r, c in side_regions(canvas).values()
             if r.stop > r.start and c.stop > c.start]
    # Rows / columns of each side rectangle that still hold a pixel wanting candidates.
    open_rows = [np.ones(r1 - r0, dtype=bool) for r0, r1, _, _ in rects]
    open_cols = [np.ones(c1 - c0, dtype=bool) for _, _, c0, c1 in rects]

    m = params.margin * max(src_h, src_w)
    lo_u, hi_u, lo_v, hi_v = m, src_w - 1 - m, m, src_h - 1 - m
    shrunk = np.array([[lo_u, lo_v], [hi_u, lo_v], [hi_u, hi_v], [lo_u, hi_v]], dtype=np.float64)
    usable = bool(rects) and hi_u >= lo_u and hi_v >= lo_v and motion.num_frames > 1

    cands = np.fromiter(_candidate_order(t, motion.num_frames, params.radius) if usable else (), dtype=np.int64)
    cands = cands[motion.segments[cands] == motion.segments[t]]  # other segments are unrelated
    fwd = motion.maps(cands, t, size)  # (n, 3, 3): frame t -> frame s, source coordinates
    back = motion.maps(t, cands, size)  # frame s -> frame t
    # Where each s's shrunk source box lands on t's canvas: bounding boxes with 1 px slack;
    # a box crossing the horizon gets no bound.
    q = np.concatenate([shrunk, np.ones((4, 1))], axis=1) @ back.transpose(0, 2, 1)  # (n, 4, 3)
    bounded = np.all(q[..., 2] > 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = q[..., :2] / q[..., 2:3] + (left, top)
    lo = np.where(bounded[:, None], np.floor(np.nan_to_num(xy.min(axis=1))) - 1, 0).clip(-1, None)
    hi = np.where(bounded[:, None], np.ceil(np.nan_to_num(xy.max(axis=1))) + 2, (Wc, Hc)).clip(None, max(Wc, Hc) + 1)
    bounds = np.concatenate([lo, hi], axis=1).astype(np.int64)  # (n, 4): x0, y0, x1, y1
    aligned = (fwd[:, 0, 1] == 0) & (fwd[:, 1, 0] == 0) & (fwd[:, 2, 0] == 0) & (fwd[:, 2, 1] == 0)

    movers = motion.movers_size if motion.movers is not None else None  # (w, h) of the mover masks
    for s, H, (bx0, by0, bx1, by1), axis_aligned in zip(cands.tolist(), fwd, bounds.tolist(), aligned.tolist()):
        if not any(rows.any() for rows in open_rows):
            break
        frame = moving = None
        d = s - t
        for k, (r0, r1, c0, c1) in enumerate(rects):
            if bx1 <= c0 or bx0 >= c1 or by1 <= r0 or by0 >= r1:
                continue
            rr = np.flatnonzero(open_rows[k][max(by0 - r0, 0) : max(min(by1, r1) - r0, 0)]) + max(by0, r0)
            cc = np.flatnonzero(open_cols[k][max(bx0 - c0, 0) : max(min(bx1, c1) - c0, 0)]) + max(bx0, c0)
            if not len(rr) or not len(cc):
                continue
            y0, y1, x0, x1 = rr[0], rr[-1] + 1, cc[0], cc[-1] + 1
            x = np.arange(x0, x1, dtype=np.float64) - left  # frame t's source coordinates
            y = np.arange(y0, y1, dtype=np.float64) - top
            if axis_aligned:  # u depends on x only and v on y only: cut the slice to the inside exactly
                u, v = H[0, 0] * x + H[0, 2], H[1, 1] * y + H[1, 2]
                ci = np.flatnonzero((u >= lo_u) & (u <= hi_u))
                ri = np.flatnonzero((v >= lo_v) & (v <= hi_v))
                if not len(ci) or not len(ri):
                    continue
                u, v = u[ci[0] : ci[-1] + 1], v[ri[0] : ri[-1] + 1]
                y0, y1, x0, x1 = y0 + ri[0], y0 + ri[-1] + 1, x0 + ci[0], x0 + ci[-1] + 1
                ok = count[y0:y1, x0:x1] < S
            else:
                x, y = x[None, :], y[:, None]
                z = H[2, 0] * x + H[2, 1] * y + H[2, 2]
                with np.errstate(divide="ignore", invalid="ignore"):
                    u = (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / z
                    v = (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / z
                ok = (z > 0) & (u >= lo_u) & (u <= hi_u) & (v >= lo_v) & (v <= hi_v)
                ok &= count[y0:y1, x0:x1] < S
            # Keep candidates on one side of t at least `spacing` frames apart (frames on each
            # side are visited nearest first, so the last one kept is the closest).
            if d < 0:
                ok &= last[0, y0:y1, x0:x1] >= d + params.spacing
            else:
                ok &= last[1, y0:y1, x0:x1] <= d - params.spacing
            py, px = np.nonzero(ok)
            if not len(py):
                continue
            if axis_aligned:
                uu, vv = u[px], v[py]
            else:
                uu, vv = u[py, px], v[py, px]
            if movers is not None:  # no candidate from where a mover is in s: the pixel stays open for others
                moving = motion.mover_mask(s) if moving is None else moving
                still = ~moving[_cell(vv, src_h, movers[1]), _cell(uu, src_w, movers[0])]
                py, px, uu, vv = py[still], px[still], uu[still], vv[still]
                if not len(py):
                    continue
            if frame is None:
                frame = np.ascontiguousarray(read_frame(s))
            py, px = py + y0, px + x0
            slot = count[py, px]
            vals[slot, py, px] = _remap_points(frame, uu, vv, cv2).reshape(len(py), C)
            offsets[slot, py, px] = d
            last[int(d > 0), py, px] = d
            count[py, px] += 1
            open_cols[k][x0 - c0 : x1 - c0] = (count[r0:r1, x0:x1] < S).any(axis=0)
            open_rows[k][y0 - r0 : y1 - r0] = (count[y0:y1, c0:c1] < S).any(axis=1)

    # Agreement: a strict majority of a pixel's candidates within tolerance of their median.
    image = np.full((Hc, Wc, C), fill, dtype=dtype)
    image[top:bottom, left:right] = own.reshape(src_h, src_w, C)
    mask = np.zeros((Hc, Wc), dtype=bool)
    confidence = np.zeros((Hc, Wc), dtype=np.float32)
    origin = np.full((Hc, Wc), -1, dtype=np.int32)
    tol = params.tolerance * _value_scale(dtype)
    for c in range(params.min_agree, S + 1):
        py, px = np.nonzero(count == c)
        if not len(py):
            continue
        cand = vals[:c, py, px]  # (c, n, C)
        candf = cand.astype(np.float32)
        agree = np.abs(candf - _median(candf)).mean(axis=2) <= tol  # (c, n)
        n_agree = agree.sum(axis=0)
        accept = (n_agree >= params.min_agree) & (2 * n_agree > c)
        first = np.argmax(agree, axis=0)[accept]  # nearest agreeing candidate (slots are in visiting order)
        py, px, keep = py[accept], px[accept], np.flatnonzero(accept)
        image[py, px] = cand[first, keep]
        mask[py, px] = True
        confidence[py, px] = n_agree[accept] / S
        origin[py, px] = t + offsets[first, py, px]
    if movers is not None:  # where a mover cut by t's own box edge goes on, other frames saw what is behind it
        blocked = _beyond_edge_movers(motion.mover_mask(t), canvas)
        image[blocked] = fill
        mask[blocked], confidence[blocked], origin[blocked] = False, 0, -1
    image = image.reshape(Hc, Wc, *channels)
    return Propagated(index=t, image=image, mask=mask, confidence=confidence, origin=origin)


def _runs(edge: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], edge.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _beyond_edge_movers(moving: np.ndarray, canvas: Canvas) -> np.ndarray:
    """(H, W) bool: the border beside each stretch of the box's edge that a mover of this frame touches.

    A mover cut by the edge goes on into the border, where the other frames (which saw the
    scene there without it) would put background. Beside each run of edge cells it
    touches, the border is left to diffusion as deep as ``_EDGE_DEPTH`` of the run's
    length (a person cut by a side edge is about a third as wide as tall), at most
    ``_EDGE_MAX_DEPTH`` of the source's long side.
    """
    gh, gw = moving.shape
    top, left, bottom, right = canvas.box
    cy, cx = canvas.src_h / gh, canvas.src_w / gw  # px per cell
    cap = _EDGE_MAX_DEPTH * max(canvas.src_h, canvas.src_w)
    out = np.zeros((canvas.height, canvas.width), dtype=bool)
    for side, edge in (("left", moving[:, 0]), ("right", moving[:, -1]), ("top", moving[0, :]),
                       ("bottom", moving[-1, :])):
        cell, along = (cy, top) if side in ("left", "right") else (cx, left)
        for a, b in _runs(edge):
            lo, hi = along + math.floor(a * cell), along + math.ceil(b * cell)
            depth = math.ceil(min(_EDGE_DEPTH * (hi - lo), cap))
            if side == "left":
                out[lo:hi, max(0, left - depth) : left] = True
            elif side == "right":
                out[lo:hi, right : right + depth] = True
            elif side == "top":
                out[max(0, top - depth) : top, lo:hi] = True
            else:
                out[bottom : bottom + depth, lo:hi] = True
    return out


def reachable(motion: CameraMotion, canvas: Canvas, params: PropagationParams = PropagationParams()) -> np.ndarray:
    """(F,) bool: frames whose new region some other frame's shrunk source box reaches (at ``canvas``'s scale).

    A cheap geometric bound, no pixels read: where it is False, ``propagate_frame`` fills
    nothing (no candidate lands there); where True it may still fill nothing (the agreement
    test, too few candidates). A still camera reaches nothing: every other frame's box maps
    onto the frame's own box, inside by the margin.
    """
    out = np.zeros(motion.num_frames, dtype=bool)
    rects = [(r.start, r.stop, c.start, c.stop) for r, c in side_regions(canvas).values()
             if r.stop > r.start and c.stop > c.start]
    src_h, src_w = canvas.src_h, canvas.src_w
    m = params.margin * max(src_h, src_w)
    lo_u, hi_u, lo_v, hi_v = m, src_w - 1 - m, m, src_h - 1 - m
    if not rects or motion.num_frames < 2 or hi_u < lo_u or hi_v < lo_v:
        return out
    shrunk = np.array([[lo_u, lo_v, 1], [hi_u, lo_v, 1], [hi_u, hi_v, 1], [lo_u, hi_v, 1]], dtype=np.float64)
    top, left = canvas.top, canvas.left
    for t in range(motion.num_frames):
        cands = np.fromiter(_candidate_order(t, motion.num_frames, params.radius), dtype=np.int64)
        cands = cands[motion.segments[cands] == motion.segments[t]]
        if not len(cands):
            continue
        q = shrunk @ motion.maps(t, cands, (src_w, src_h)).transpose(0, 2, 1)  # (n, 4, 3) on frame t
        bounded = np.all(q[..., 2] > 0, axis=1)  # a box crossing the horizon may land anywhere
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = np.nan_to_num(q[..., :2] / q[..., 2:3]) + (left, top)
        x0, y0 = xy.min(axis=1).T
        x1, y1 = xy.max(axis=1).T
        for r0, r1, c0, c1 in rects:  # pixel centres c0 .. c1 - 1, r0 .. r1 - 1
            hit = ~bounded | ((x1 >= c0) & (x0 <= c1 - 1) & (y1 >= r0) & (y0 <= r1 - 1))
            if hit.any():
                out[t] = True
                break
    return out


def propagate(
    read_frame: ReadFrame,
    motion: CameraMotion,
    canvas: Canvas,
    params: PropagationParams = PropagationParams(),
    *,
    frames: Iterable[int] | None = None,
    cache_mb: float = 256,
    fill: float = 0,
) -> Iterator[Propagated]:
    """``propagate_frame`` for each of ``frames`` (default: all, in order), sharing one LRU frame cache.

    Memory: the cache (``cache_mb``, or pass a ``FrameCache`` as ``read_frame``) plus one
    target's working set (about 17 + 5 * samples bytes per canvas pixel for uint8 RGB);
    it does not grow with the clip length, so call it chunk by chunk at any scale.
    """
    cached = read_frame if isinstance(read_frame, FrameCache) else FrameCache(read_frame, int(cache_mb * (1 << 20)))
    for t in range(motion.num_frames) if frames is None else frames:
        yield propagate_frame(t, cached, motion, canvas, params, fill=fill)


# ----------------------------------------------------------------------------- coverage


def side_regions(canvas: Canvas) -> dict[str, tuple[slice, slice]]:
    """(rows, cols) of each side's new region: left/right take the full height (corners), top/bottom the box's width."""
    top, left, bottom, right = canvas.box
    return {
        "left": (slice(0, canvas.height), slice(0, left)),
        "right": (slice(0, canvas.height), slice(right, canvas.width)),
        "top": (slice(0, top), slice(left, right)),
        "bottom": (slice(bottom, canvas.height), slice(left, right)),
    }


def frame_coverage(mask: np.ndarray, canvas: Canvas) -> dict[str, float | None]:
    """Share of new-region pixels filled: ``all`` and per side (None for a side with no new pixels)."""
    mask = np.asarray(mask, dtype=bool)
    top, left, bottom, right = canvas.box
    new_px = canvas.height * canvas.width - canvas.src_h * canvas.src_w
    inside = int(mask[top:bottom, left:right].sum())
    out: dict[str, float | None] = {"all": (int(mask.sum()) - inside) / new_px if new_px else None}
    for side, (rows, cols) in side_regions(canvas).items():
        region = mask[rows, cols]
        out[side] = float(region.mean()) if region.size else None
    return out


class CoverageStats:
    """Streaming min/mean/max over frames of ``frame_coverage``; ``to_dict`` is JSON-friendly."""

    KEYS = ("all", *SIDES)

    def __init__(self, canvas: Canvas):
        self.canvas = canvas
        self.frames = 0
        self._sum = dict.fromkeys(self.KEYS, 0.0)
        self._min = dict.fromkeys(self.KEYS, math.inf)
        self._max = dict.fromkeys(self.KEYS, -math.inf)

    def add(self, mask: np.ndarray) -> dict[str, float | None]:
        cov = frame_coverage(mask, self.canvas)
        self.frames += 1
        for k, v in cov.items():
            if v is not None:
                self._sum[k] += v
                self._min[k] = min(self._min[k], v)
                self._max[k] = max(self._max[k], v)
        return cov

    def to_dict(self) -> dict:
        """{"frames": n, "all": {"min", "mean", "max"} | None, "left": ..., ...} (None: no such pixels or no frames)."""
        out: dict = {"frames": self.frames}
        for k in self.KEYS:
            if not self.frames or self._min[k] == math.inf:
                out[k] = None
            else:
                out[k] = {"min": round(self._min[k], 6), "mean": round(self._sum[k] / self.frames, 6),
                          "max": round(self._max[k], 6)}
        return out
