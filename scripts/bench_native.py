"""Native-scale output: peak host memory and time for a 1080x1920 (W x H) portrait clip at two lengths.

    python scripts/bench_native.py                      # 30, 60 and 300 frames, native and model-scale output
    python scripts/bench_native.py --frames 30 --steps 2 --resolutions native

Each case is one `motia outpaint` run (tiny models, ``configs/tiny.yaml``, ``outpaint.aspect=16:9``)
in a fresh process that reports its peak RSS (VmHWM) and the run summary's time split: the
model part (VAE encode of the known latents, sampling, VAE decode) and the output part (the
source decoded again at native size, the canvas redrawn and pasted, the mp4 + side-by-side
encoded). With native output the canvas written is 3414x1920. The synthetic clip (a moving
texture with the bundled clip's audio) is made chunk by chunk with motia's own writer in a
temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_clip(path: Path, frames: int, fps: int = 30, size: tuple[int, int] = (1920, 1080), audio: bool = True) -> None:
    """A moving texture of ``size`` (H, W; default 1080x1920 W x H), written 30 frames at a time (never held whole),
    with the bundled clip's audio unless ``audio`` is False."""
    import numpy as np

    from motia.video import sample_clip_path, write_video

    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    base = np.stack([np.sin(x / 37 + y / 53 + p) * np.cos(y / 29 - p) for p in (0.0, 2.0, 4.0)], -1)
    base = ((base * 0.4 + 0.5) * 255 + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)  # (H, W, 3)

    def chunks():
        for start in range(0, frames, 30):
            yield np.stack([np.roll(base, (3 * f, 2 * f), axis=(0, 1)) for f in range(start, min(start + 30, frames))])

    write_video(path, chunks(), fps, **({"audio_from": sample_clip_path()} if audio else {}))


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args) -> None:
    from motia.config import load_config
    from motia.outpaint import outpaint_from_config

    cfg = load_config(ROOT / "configs" / "tiny.yaml", args.overrides)
    t0 = time.perf_counter()
    summary = outpaint_from_config(cfg, progress=False)
    print(json.dumps({"wall_s": time.perf_counter() - t0, "peak_rss": peak_rss(), "timings": summary["timings_s"],
                      "output": summary["output_timings_s"], "canvas": summary["output_canvas"]}))


def run_child(script: str, overrides: list[str], env: dict | None = None) -> dict:
    """Run ``script --child OVERRIDES`` in a fresh process (offline hub, this checkout); its last stdout line as JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run([sys.executable, script, "--child", *overrides], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(clip: Path, out: Path, resolution: str, steps: int, extra: list[str]) -> dict:
    overrides = [f"video.path={clip}", "outpaint.left=0", "outpaint.right=0", "outpaint.aspect=16:9",
                 f"sample.steps={steps}", f"output.dir={out}", f"output.resolution={resolution}", *extra]
    return run_child(__file__, overrides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[30, 60, 300])
    p.add_argument("--steps", type=int, default=2, help="sampling steps (the model part is not what is measured)")
    p.add_argument("--resolutions", nargs="+", default=["native", "model"], choices=["native", "model"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides, e.g. output.preset=faster")
    p.add_argument("--child", nargs=argparse.REMAINDER, dest="overrides", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.overrides is not None:
        return child(args)
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; tiny models, steps={args.steps}, 1080x1920 -> 16:9",
          *args.set)
    print("| frames | output | canvas written | peak RSS | total s | model s (encode+sample+decode) | "
          "output s (read / canvas+paste / write) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            clip = Path(tmp) / f"clip{n}.mp4"
            make_clip(clip, n)
            for res in args.resolutions:
                r = run_case(clip, Path(tmp) / f"out{n}{res}", res, args.steps, args.set)
                t, o = r["timings"], r["output"]
                model = t["encode"] + t["sample"] + t["decode"]
                peaks[n, res] = r["peak_rss"]
                print(f"| {n} | {res} | {r['canvas']['width']}x{r['canvas']['height']} | "
                      f"{r['peak_rss'] / 2**30:.2f} GiB | {r['wall_s']:.1f} | {model:.1f} | "
                      f"{t.get('output', 0):.1f} ({o['read']:.1f} / {o['canvas_paste']:.1f} / {o['write']:.1f}) |",
                      flush=True)
    for res in args.resolutions:
        lengths = sorted(n for n, r in peaks if r == res)
        for i, a in enumerate(lengths):
            for b in lengths[i + 1 :]:
                print(f"{res}: peak RSS at {b} frames = {peaks[b, res] / peaks[a, res]:.2f}x the peak at {a} frames")


if __name__ == "__main__":
    main()
