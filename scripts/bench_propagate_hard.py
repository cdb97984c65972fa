"""Benchmark propagation on the clips that were hard: movers at the box's edge, small and plain clips, cuts.

Model-free: motia.propagate alone, on synthetic camera moves over real photos
(tests/synthetic_pans.py; the ground truth beyond the source box is known).

* **movers**: a 3 px/frame pan (240x320 source, 80 px added left and right, 48
  frames) over scikit-image's astronaut enlarged 2x, with person-sized textured figures
  (``synthetic_pans.person``: a face, a shirt cut from another photo, plain trousers
  whose legs swing, soft edges) walking near and across the box's edges; sensor noise
  std 2. The truth is the whole canvas with the movers where they really are at that
  frame, without noise.
* **small / plain**: pans over scikit-image's rocket photo where it is nearly all plain
  evening sky (a tower's tip, faint wires, the rocket's nose), at 80x96 and at 240x320
  (the photo enlarged 2x), and a textured 80x96 pan for comparison; noise std 2.
* **cuts**: two 12-frame pans joined by a hard cut: a jump cut (the same photo, the
  camera 6 px further on), a cut to another photo, a cut from plain sky to plain sky.
  Links and pixels across the cut, without and with ``shots`` (the cut given).

Errors are per propagated pixel: mean absolute difference over RGB, levels of 255;
reported as median / mean / 90th / 99th percentile, with the share more than 20 levels
off. "px from movers": propagated pixels taken from a spot a mover covered in the frame
they came from (from the true camera path and the movers' true coverage, dilated by one
pixel). Coverage: mean share of new-region pixels filled.

    python scripts/bench_propagate_hard.py                      # all three parts
    python scripts/bench_propagate_hard.py --part movers --clips follow crowd --json out.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic_pans import Clip, from_movers, mover_clip, pan_clip  # noqa: E402

from motia.propagate import CoverageStats, estimate_motion, propagate  # noqa: E402

MOVERS = ("walkers", "follow", "slow", "crowd", "none")


def errors(clip: Clip, results, truth=None) -> dict:
    """Coverage and error percentiles of the propagated pixels against ``truth(t)`` (default: the clip's)."""
    truth = truth or clip.truth
    stats = CoverageStats(clip.canvas)
    errs = []
    for p in results:
        stats.add(p.mask)
        errs.append(np.abs(p.image[p.mask].astype(np.float64) - truth(p.index)[p.mask]).mean(axis=1))
    err = np.concatenate(errs) if errs else np.zeros(0)
    out = {"coverage": stats.to_dict()["all"]["mean"], "filled_px": int(len(err))}
    for name, q in (("median", 50), ("p90", 90), ("p99", 99)):
        out[name] = float(np.percentile(err, q)) if len(err) else None
    out["mean"] = float(err.mean()) if len(err) else None
    out["max"] = float(err.max()) if len(err) else None
    out["over_20"] = float((err > 20).mean()) if len(err) else 0.0
    return out


def run(clip: Clip, shots=None):
    frames = [clip.read(t) for t in range(clip.num_frames)]
    kw = {"shots": shots} if shots is not None else {}
    t0 = time.process_time()
    motion = estimate_motion(frames.__getitem__, clip.num_frames, **kw)
    t1 = time.process_time()
    results = list(propagate(frames.__getitem__, motion, clip.canvas))
    t2 = time.process_time()
    return motion, results, 1000 * (t1 - t0) / clip.num_frames, 1000 * (t2 - t1) / clip.num_frames


def movers(frames: int, names) -> list[dict]:
    rows = []
    for name in names:
        clip = mover_clip(name, frames)
        motion, results, motion_ms, prop_ms = run(clip)
        row = {"part": "movers", "clip": name, **errors(clip, results),
               "from_movers": sum(int(from_movers(clip, p).sum()) for p in results),
               "segments": motion.summary()["segments"], "motion_cpu_ms": motion_ms, "propagate_cpu_ms": prop_ms}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def plain_clips() -> dict[str, Clip]:
    def sky(start, src=(80, 96), expand=24, velocity=(2, 0.3), frames=24, **kw):
        clip = pan_clip(frames, src, (0, 0, expand, expand), velocity, start, name="rocket", **kw)
        clip.noise = 2.0
        return clip

    textured = pan_clip(24, (80, 96), (0, 0, 24, 24), (2, 0.3), (150, 120), name="astronaut")
    textured.noise = 2.0
    return {
        "sky 80x96 (tower tip)": sky((130, 80)),
        "sky 80x96 (less of it)": sky((130, 60)),
        "sky 80x96 (nothing in it)": sky((100, 20)),
        "textured 80x96": textured,
        "sky 240x320 (photo 2x)": sky((250, 60), (240, 320), 80, (3, 0.5), 32, upscale=2.0),
    }


def plain(names=None) -> list[dict]:
    rows = []
    for name, clip in plain_clips().items():
        if names and name not in names:
            continue
        motion, results, motion_ms, prop_ms = run(clip)
        s = motion.summary()
        row = {"part": "plain", "clip": name, "source": f"{clip.canvas.src_w}x{clip.canvas.src_h}",
               "linked": s["linked_frames"], "frames": clip.num_frames, "dense": s.get("dense_links", 0),
               "segments": s["segments"], **errors(clip, results), "motion_cpu_ms": motion_ms,
               "propagate_cpu_ms": prop_ms}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def cut_clips() -> dict[str, tuple[Clip, Clip]]:
    a = pan_clip(12, velocity=(3, 0))  # 160x192 over the astronaut, 64 px added left and right
    sky = dict(src=(160, 192), expand=(0, 0, 64, 64), velocity=(3, 0.5), name="rocket", upscale=2.0)
    s1, s2 = pan_clip(12, start=(250, 60), **sky), pan_clip(12, start=(700, 40), **sky)
    for clip in (s1, s2):
        clip.noise = 2.0
    return {
        "jump cut (same photo, 6 px on)": (a, pan_clip(12, velocity=(3, 0), start=(150 + 33 + 6, 124))),
        "cut to another photo": (a, pan_clip(12, velocity=(3, 0), name="chelsea", start=(100, 60))),
        "cut from sky to sky": (s1, s2),
    }


def cuts() -> list[dict]:
    rows = []
    has_shots = "shots" in inspect.signature(estimate_motion).parameters
    for name, (a, b) in cut_clips().items():
        clip = Clip(a.image, a.canvas, 24, a.path)
        clip.read = lambda t, a=a, b=b: a.read(t) if t < 12 else b.read(t - 12)
        row = {"part": "cuts", "clip": name}
        for label, shots in (("no hint", None), ("shots", [0, 12])):
            if shots is not None and not has_shots:
                row[label] = None
                continue
            motion, results, _, _ = run(clip, shots)
            across = sum(int(((p.origin[p.mask] >= 12) != (p.index >= 12)).sum()) for p in results)
            row[label] = {"linked_across": motion.links[12] is not None, "px_across": across,
                          "segments": motion.summary()["segments"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="*", default=["movers", "plain", "cuts"], choices=["movers", "plain", "cuts"])
    ap.add_argument("--frames", type=int, default=48, help="frames of the mover clips")
    ap.add_argument("--clips", nargs="*", default=list(MOVERS), choices=MOVERS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import cv2

    out = {}
    if "movers" in args.part:
        out["movers"] = movers(args.frames, args.clips)
    if "plain" in args.part:
        out["plain"] = plain()
    if "cuts" in args.part:
        out["cuts"] = cuts()
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, OpenCV {cv2.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if "movers" in out:
        print("\n| clip | filled | error median / mean / p90 / p99 (levels) | > 20 levels | px from movers "
              "| motion + propagate CPU ms/frame |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in out["movers"]:
            print(f"| {r['clip']} | {r['coverage']:.3f} | {fmt(r['median'])} / {fmt(r['mean'])} / {fmt(r['p90'])} / "
                  f"{fmt(r['p99'])} | {r['over_20']:.3f} | {r['from_movers']} "
                  f"| {r['motion_cpu_ms']:.0f} + {r['propagate_cpu_ms']:.0f} |")
    if "plain" in out:
        print("\n| clip | linked (dense) / links possible | segments | filled | error median / mean / p90 / max "
              "(levels) | motion + propagate CPU ms/frame |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in out["plain"]:
            print(f"| {r['clip']} | {r['linked']} ({r['dense']}) / {r['frames'] - 1} | {r['segments']} "
                  f"| {r['coverage']:.3f} | {fmt(r['median'])} / {fmt(r['mean'])} / {fmt(r['p90'])} / {fmt(r['max'])} "
                  f"| {r['motion_cpu_ms']:.0f} + {r['propagate_cpu_ms']:.0f} |")
    if "cuts" in out:
        print("\n| cut | no hint: linked across, px across | shots=[0, 12]: linked across, px across |")
        print("| --- | --- | --- |")
        for r in out["cuts"]:
            cells = [("n/a" if r[k] is None else f"{'yes' if r[k]['linked_across'] else 'no'}, {r[k]['px_across']}")
                     for k in ("no hint", "shots")]
            print(f"| {r['clip']} | {cells[0]} | {cells[1]} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
