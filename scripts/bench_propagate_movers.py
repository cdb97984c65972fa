"""Benchmark propagation with people walking near the box's edges: error percentiles of the propagated pixels, coverage.

Each clip is a camera pan over a real photo (scikit-image's astronaut enlarged 2x,
tests/synthetic_pans.py) with person-sized textured figures walking on their own
(``synthetic_pans.person``: a face, a shirt cut from another photo, plain trousers whose
legs swing, soft edges), crossing the source box's edges; the source frames carry sensor
noise (std 2 levels). The ground truth is the whole canvas with the movers where they
really are at that frame, without noise. For every propagated pixel: its error
(mean absolute difference over RGB, levels of 255) against that truth; reported are the
median, mean, 90th and 99th percentile, the share more than 20 levels off, how many
propagated pixels were taken from a spot a mover covered in the frame they came from
(from the true camera path and the movers' true coverage, dilated by one pixel), and the
coverage (mean share of new-region pixels filled). Model-free: motia.propagate alone.

    python scripts/bench_propagate_movers.py                 # all clips
    python scripts/bench_propagate_movers.py --clips follow --frames 48 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic_pans import Clip, from_movers, mover_clip  # noqa: E402

from motia.propagate import CoverageStats, MotionParams, PropagationParams, estimate_motion, propagate  # noqa: E402

CLIPS = ("walkers", "follow", "slow", "crowd", "none")


def bench(name: str, clip: Clip) -> dict:
    frames = [clip.read(t) for t in range(clip.num_frames)]
    t0 = time.process_time()
    motion = estimate_motion(frames.__getitem__, clip.num_frames, MotionParams())
    t1 = time.process_time()
    results = list(propagate(frames.__getitem__, motion, clip.canvas, PropagationParams()))
    t2 = time.process_time()
    stats = CoverageStats(clip.canvas)
    errs, copied = [], 0
    for p in results:
        stats.add(p.mask)
        truth = clip.truth(p.index)
        errs.append(np.abs(p.image[p.mask].astype(np.float64) - truth[p.mask]).mean(axis=1))
        copied += int(from_movers(clip, p).sum())
    err = np.concatenate(errs) if errs else np.zeros(0)
    pct = (lambda q: float(np.percentile(err, q))) if len(err) else (lambda q: float("nan"))
    return {
        "clip": name, "frames": clip.num_frames, "coverage": stats.to_dict()["all"]["mean"],
        "filled_px": int(len(err)), "median": pct(50), "mean": float(err.mean()) if len(err) else float("nan"),
        "p90": pct(90), "p99": pct(99), "over_20": float((err > 20).mean()) if len(err) else 0.0,
        "from_movers": copied, "segments": motion.summary()["segments"],
        "motion_cpu_ms": 1000 * (t1 - t0) / clip.num_frames, "propagate_cpu_ms": 1000 * (t2 - t1) / clip.num_frames,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--clips", nargs="*", default=list(CLIPS), choices=CLIPS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import cv2

    rows = []
    for name in args.clips:
        row = bench(name, mover_clip(name, args.frames))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, OpenCV {cv2.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("\n| clip | filled | error median / mean / p90 / p99 (levels) | > 20 levels | px from movers "
          "| motion + propagate CPU ms/frame |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['clip']} | {r['coverage']:.3f} | {r['median']:.1f} / {r['mean']:.1f} / {r['p90']:.1f} / "
              f"{r['p99']:.1f} | {r['over_20']:.3f} | {r['from_movers']} "
              f"| {r['motion_cpu_ms']:.0f} + {r['propagate_cpu_ms']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
