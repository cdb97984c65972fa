"""Benchmark motia.propagate on synthetic camera moves at 512 px: coverage, accuracy, time per frame.

Each clip is a camera path over a real photo (scikit-image's astronaut, enlarged 3x
bicubic so a 512x512 source can move across it; tests/synthetic_pans.py), so the
ground truth beyond the source box is known. For each clip: motion estimation and
propagation timed separately (wall and process-CPU ms per frame, one process, frames
made beforehand; OpenCV may use several threads, numpy one), the
share of new-region pixels filled (min / mean / max over frames), and the PSNR of the
propagated pixels against the ground truth (uint8, before any encoding). Everything
here is model-free: no diffusion model is involved.

    python scripts/bench_propagate.py                       # all clips, SIFT and ORB
    python scripts/bench_propagate.py --frames 24 --clips pan --features sift --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic_pans import SPRITE_RGB, Clip, pan_clip, photo, psnr, zoom  # noqa: E402

from motia.geometry import Canvas  # noqa: E402
from motia.propagate import CoverageStats, MotionParams, PropagationParams, estimate_motion, propagate  # noqa: E402


def clips(frames: int) -> dict[str, Clip]:
    src = (512, 512)
    big = dict(name="astronaut", upscale=3.0)

    def sprite(t):  # 32 px square crossing the box leftwards at 9 px/frame (6 px/frame in the world)
        return (256 + (-9 * t) % (512 - 32), 200)

    zoom_canvas = Canvas(src_h=512, src_w=512, height=768, width=768, top=128, left=128)
    pan = pan_clip(frames, src, (0, 0, 256, 256), (4, 0), (300, 500), **big)
    return {
        "pan": pan,
        "pan-subpixel": pan_clip(frames, src, (0, 0, 256, 256), (3.5, 0.5), (300, 450), **big),
        "tilt": pan_clip(frames, src, (128, 128, 0, 0), (0, -4), (500, 400), **big),
        "zoom": Clip(photo(**big), zoom_canvas, frames, zoom(768, 700, zoom_canvas, 0.995)),
        "pan+sprite": Clip(pan.image, pan.canvas, frames, pan.path, sprite, sprite_size=32),
    }


def bench(name: str, clip: Clip, features: str, params: PropagationParams) -> dict:
    frames = [clip.read(t) for t in range(clip.num_frames)]
    truths = [clip.truth(t, with_sprite=False) for t in range(clip.num_frames)]
    t0, c0 = time.perf_counter(), time.process_time()
    motion = estimate_motion(frames.__getitem__, clip.num_frames, MotionParams(features=features))
    t1, c1 = time.perf_counter(), time.process_time()
    results = list(propagate(frames.__getitem__, motion, clip.canvas, params))
    t2, c2 = time.perf_counter(), time.process_time()
    stats = CoverageStats(clip.canvas)
    got, want = [], []
    for p in results:
        stats.add(p.mask)
        got.append(p.image[p.mask])
        want.append(truths[p.index][p.mask])
    got, want = np.concatenate(got), np.concatenate(want)
    ghost = int((np.abs(got.astype(int) - SPRITE_RGB).sum(axis=1) < 120).sum()) if clip.sprite else None
    cov = stats.to_dict()
    return {
        "clip": name, "features": features, "frames": clip.num_frames,
        "canvas": f"{clip.canvas.width}x{clip.canvas.height}", "source": f"{clip.canvas.src_w}x{clip.canvas.src_h}",
        "motion_ms": 1000 * (t1 - t0) / clip.num_frames, "propagate_ms": 1000 * (t2 - t1) / clip.num_frames,
        "motion_cpu_ms": 1000 * (c1 - c0) / clip.num_frames, "propagate_cpu_ms": 1000 * (c2 - c1) / clip.num_frames,
        "coverage": cov["all"], "psnr": psnr(got, want), "exact_share": float(np.mean(np.all(got == want, axis=1))),
        "models": {k: v for k, v in motion.summary()["models"].items() if v}, "segments": motion.summary()["segments"],
        "sprite_pixels": ghost,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--clips", nargs="*", default=None, help="subset of: pan pan-subpixel tilt zoom pan+sprite")
    ap.add_argument("--features", nargs="*", default=["sift", "orb"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import cv2

    rows = []
    for name, clip in clips(args.frames).items():
        if args.clips and name not in args.clips:
            continue
        for features in args.features:
            row = bench(name, clip, features, PropagationParams())
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), numpy {np.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          "(all clips' frames and ground truth are held by the script)")
    print("\n| clip | features | frames | source -> canvas | motion ms/frame (CPU) | propagate ms/frame (CPU) "
          "| filled min / mean / max | PSNR dB | exact share | models | sprite px |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        c = r["coverage"]
        cov = f"{c['min']:.3f} / {c['mean']:.3f} / {c['max']:.3f}" if c else "-"
        models = ", ".join(f"{k} {v}" for k, v in r["models"].items())
        print(f"| {r['clip']} | {r['features']} | {r['frames']} | {r['source']} -> {r['canvas']} "
              f"| {r['motion_ms']:.0f} ({r['motion_cpu_ms']:.0f}) "
              f"| {r['propagate_ms']:.0f} ({r['propagate_cpu_ms']:.0f}) "
              f"| {cov} | {r['psnr']:.1f} | {r['exact_share']:.3f} | {models} "
              f"| {'-' if r['sprite_pixels'] is None else r['sprite_pixels']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
