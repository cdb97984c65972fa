"""Shots of a clip: where the hard cuts are, so each shot is treated as its own clip inside one run.

A shot list is the sorted first frames of the shots, starting at 0: ``[0, 30, 76]`` is
three shots, frames 0-29, 30-75 and 76 to the end. Frame numbers count the frames motia
uses (``Clip.frames``, after ``video.start``, ``stride`` and ``max_frames``), not the file's.

Detection (``detect_shots``) is PySceneDetect's ``AdaptiveDetector`` on frames fed from
memory: each frame's score is the mean HSV change from the frame before (its
``ContentDetector`` score), and a cut is a score at least ``ADAPTIVE_THRESHOLD`` times
the mean of the ``WINDOW`` frames on either side and at least ``MIN_CONTENT``. A fast pan
raises its neighbours' scores too, so it is not a cut, where a fixed threshold would fire.
Two decisions on top of the library:

* Frames are shrunk first by the whole factor ``width // ANALYSIS_WIDTH`` (block averages;
  PySceneDetect's own auto-downscale rule): the score is a mean, so small frames give the
  same cuts, faster.
* The detector needs ``WINDOW`` frames on either side of a frame to judge it; the clip is
  padded with copies of its first and last frame (whose scores are 0), so a cut one frame
  from either end is found too. The padding lowers the neighbours' mean there (steady
  motion scores at most 2x its mean), so a clip shorter than ``MIN_FRAMES`` is one shot.

``scenedetect`` (the headless build, ``scenedetect-headless``) is a requirement of motia,
imported here lazily; a missing install is one line naming the package and the way out
(``video.shots: off`` or a list).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from motia.errors import ConfigError, MotiaError

ANALYSIS_WIDTH = 256  # frames are shrunk by the whole factor width // 256 before scoring
ADAPTIVE_THRESHOLD = 3.0  # a cut's score / mean score of its neighbours (PySceneDetect's default)
MIN_CONTENT = 15.0  # and its score itself (mean HSV change, 0-255; PySceneDetect's default)
WINDOW = 2  # neighbours on each side in that mean (PySceneDetect's default)
MIN_SHOT = 1  # frames between two cuts: any; flashes are rare in the clips motia takes
# A shorter clip is one shot: a frame needs WINDOW scored neighbours on a side to be judged, and
# with the padding alone (3 frames of noise, say) any change would stand out as a cut.
MIN_FRAMES = 2 * WINDOW + 1


def _scenedetect():
    try:
        import scenedetect
    except ImportError:
        raise MotiaError(
            "video.shots: auto needs PySceneDetect, which is not installed: pip install scenedetect-headless "
            "(or set video.shots: off for one shot, or list the shots' first frames)"
        ) from None
    return scenedetect


def _bgr(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 or float in [0, 1] -> (h, w, 3) uint8 BGR, shrunk by the whole factor W // ``ANALYSIS_WIDTH``."""
    import cv2

    if frame.dtype != torch.uint8:
        frame = (frame.float().clamp(0, 1) * 255).round().to(torch.uint8)
    planes = frame.numpy()  # (3, H, W): each channel plane is contiguous, no (H, W, 3) copy needed
    k = max(1, planes.shape[2] // ANALYSIS_WIDTH)
    if k == 1:
        return cv2.merge([planes[2], planes[1], planes[0]])
    h, w = planes.shape[1] // k, planes.shape[2] // k
    # A whole factor is OpenCV's fast block average (a fractional INTER_AREA costs 3x more).
    return cv2.merge([cv2.resize(planes[c, : h * k, : w * k], (w, h), interpolation=cv2.INTER_AREA) for c in (2, 1, 0)])


def detect_shots(frames: torch.Tensor, fps: float = 25.0) -> list[int]:
    """The shots' first frames, ``[0, ...]``, of ``frames`` (F, 3, H, W) uint8 (or float in [0, 1]).

    ``fps`` only labels the detector's timecodes (its minimum shot length is given in
    frames); the cuts do not depend on it.
    """
    scenedetect = _scenedetect()
    FrameTimecode = scenedetect.FrameTimecode

    num_frames = int(frames.shape[0])
    if num_frames < MIN_FRAMES:
        return [0]
    detector = scenedetect.AdaptiveDetector(
        adaptive_threshold=ADAPTIVE_THRESHOLD, min_scene_len=MIN_SHOT, window_width=WINDOW,
        min_content_val=MIN_CONTENT,
    )  # fmt: skip
    first, last = _bgr(frames[0]), _bgr(frames[-1])
    padded = [first] * WINDOW + [None] * num_frames + [last] * WINDOW  # None: read frame i - WINDOW
    cuts = []
    for i, img in enumerate(padded):
        if img is None:
            img = first if i == WINDOW else last if i == WINDOW + num_frames - 1 else _bgr(frames[i - WINDOW])
        cuts += detector.process_frame(FrameTimecode(i, fps), img)
    cuts += detector.post_process(FrameTimecode(len(padded) - 1, fps))
    found = sorted({int(c.frame_num) - WINDOW for c in cuts})
    return [0] + [c for c in found if 0 < c < num_frames]


def normalize_shots(shots: Sequence[int]) -> list[int]:
    """A listed ``video.shots`` as stored: ints, strictly increasing, >= 0, with 0 added first when missing.

    Raises ValueError with the reason (the config's validator turns it into a line naming the key).
    """
    out = [int(s) for s in shots]
    if any(isinstance(s, bool) for s in shots):
        raise ValueError("must be first frames (whole numbers), not true/false")
    if any(s < 0 for s in out):
        raise ValueError("first frames must be >= 0")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError("first frames must be strictly increasing")
    return out if out and out[0] == 0 else [0, *out]


def check_shots(shots: Sequence[int], num_frames: int) -> list[int]:
    """``shots`` as a list after checking it against a clip of ``num_frames`` frames (ConfigError naming ``video.shots``)."""
    shots = list(shots)
    if not shots or shots[0] != 0 or any(b <= a for a, b in zip(shots, shots[1:])):
        raise ConfigError(f"video.shots: {shots} must be increasing first frames starting at 0")
    if shots[-1] >= num_frames:
        raise ConfigError(
            f"video.shots: first frame {shots[-1]} is not in the clip, which has {num_frames} frames (numbered "
            f"0-{num_frames - 1} after video.start/stride/max_frames); list first frames below {num_frames}"
        )
    return shots


def shot_spans(shots: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    """Each shot as a [start, end) frame range: ``[0, 30, 76]`` of 100 frames -> (0, 30), (30, 76), (76, 100)."""
    ends = [*shots[1:], num_frames]
    return [(int(s), int(e)) for s, e in zip(shots, ends)]


def describe_shots(shots: Sequence[int], num_frames: int) -> list[dict[str, int]]:
    """The shots as `motia info` and summary.json show them: first frame and length of each."""
    return [{"first": s, "frames": e - s} for s, e in shot_spans(shots, num_frames)]
