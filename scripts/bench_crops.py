"""Adaptation with native-scale crops (``adapt.crops``): host memory and time of a 1080x1920 clip at two lengths.

    python scripts/bench_crops.py                        # 30 and 120 frames, crops auto and off
    python scripts/bench_crops.py --frames 30 --crops auto

Each case is one `motia adapt` run (tiny models, ``configs/tiny.yaml``, ``outpaint.aspect=16:9``
with ``outpaint.refine.mode=auto``: the output refines at 3414x1920, so ``crops: auto`` trains on
512 px crops of the native 1080x1920 source) in a fresh process that reports its peak RSS
(VmHWM), the time spent preparing the crops (``motia.crops.load_crops``: the source decoded
at its own size into the frame store, and its latents encoded in 512 px VAE tiles) and the
training loop's time. The synthetic clip is ``scripts/bench_native.py``'s, made in a
temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def child(args) -> None:
    from bench_native import peak_rss

    import torch

    import motia.crops
    from motia.adapt import adapt_from_config
    from motia.config import load_config

    prepared = {}
    real = motia.crops.load_crops

    def timed(*a, **k):  # the crops' data: decode + store + tiled encode
        t0 = time.perf_counter()
        source = real(*a, **k)
        prepared.update(seconds=time.perf_counter() - t0, peak_rss=peak_rss(), in_file=source.store.in_file,
                        store_bytes=source.store.nbytes, latent_bytes=source.latents.numel() * 4)
        return source

    motia.crops.load_crops = timed
    torch.set_num_threads(1)  # a shared 2-core box: one thread is as fast and immune to oversubscription
    cfg = load_config(ROOT / "configs" / "tiny.yaml", args.overrides)
    t0 = time.perf_counter()
    path = adapt_from_config(cfg, progress=False)
    summary = json.loads((path.parent / "adapt_summary.json").read_text())
    print(json.dumps({"wall_s": time.perf_counter() - t0, "peak_rss": peak_rss(), "loop_s": summary["seconds"],
                      "crops": summary["crops"], "crop_steps": summary["crop_steps"], "prepared": prepared}))


def run_case(clip: Path, out: Path, crops: str, steps: int, extra: list[str]) -> dict:
    overrides = [f"video.path={clip}", "outpaint.left=0", "outpaint.right=0", "outpaint.aspect=16:9",
                 "outpaint.refine.mode=auto", f"adapt.crops={crops}", f"adapt.steps={steps}",
                 "adapt.checkpoint_every=100000", f"output.dir={out}", *extra]
    from bench_native import run_child

    return run_child(__file__, overrides)


def main() -> None:
    from bench_native import make_clip

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[30, 120])
    p.add_argument("--steps", type=int, default=4, help="training steps (the loop is not what is measured)")
    p.add_argument("--crops", nargs="+", default=["auto", "off"], choices=["auto", "off"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides")
    p.add_argument("--child", nargs=argparse.REMAINDER, dest="overrides", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.overrides is not None:
        return child(args)
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; tiny models, {args.steps} steps, 1080x1920 -> 16:9,"
          " refine auto", *args.set)
    print("| frames | crops | peak RSS | peak RSS after the crops' data | total s | crops prepared s (store) | "
          "loop s (crop steps) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            clip = Path(tmp) / f"clip{n}.mp4"
            make_clip(clip, n)
            for crops in args.crops:
                r = run_case(clip, Path(tmp) / f"out{n}{crops}", crops, args.steps, args.set)
                prep = r["prepared"]
                store = (f"{prep['seconds']:.1f} ({prep['store_bytes'] / 2**30:.2f} GiB in "
                         f"{'a file' if prep['in_file'] else 'memory'}, latents {prep['latent_bytes'] / 2**20:.0f} MiB)"
                         if prep else "-")  # fmt: skip
                after = f"{prep['peak_rss'] / 2**30:.2f} GiB" if prep else "-"
                print(f"| {n} | {crops} | {r['peak_rss'] / 2**30:.2f} GiB | {after} | {r['wall_s']:.1f} | {store} | "
                      f"{r['loop_s']:.1f} ({r['crop_steps']}) |", flush=True)


if __name__ == "__main__":
    main()
