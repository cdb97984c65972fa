"""One clip over several processes (motia.shard): wall time on this machine, and the estimate for 8 GPUs.

Part 1, ``wall``: `motia outpaint configs/tiny.yaml` (16 frames: 3 temporal windows x 4 spatial
tiles of 64 px, the ones inside the source skipped, guidance, noise regret, the known blend)
run as one process and as ``accelerate launch --multi_gpu --num_processes 2`` (gloo on this
CPU-only machine), alternating, each in its own process(es) with one intra-op thread per
process. Printed: the command's wall time, the summary's sampling seconds, each process's
model calls, and whether the written PNG frames are byte-identical.

Part 2, ``estimate``: a long clip refined in tiles at 1280x720 on 8 GPUs. The per-step
boxes come from motia's own planning (windows, tiles, skipped boxes); the gather sends each
box's float32 prediction (1 x 4 x f x h x w) once per step, so its bytes are counted from the
boxes; the FLOPs of one UNet + ControlNet call on a box are counted on the meta device with
the full-size architecture. Time per step on N GPUs = ceil(boxes / N) rounds x (call time +
the round's all_gather). GPU numbers are estimates, not measurements: the call time is the
FLOPs at an assumed fraction of the H100's dense peak, the gather at an assumed bandwidth.

    python scripts/bench_shard.py wall --repeats 2
    python scripts/bench_shard.py estimate --frames 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

OVERRIDES = ["video.max_frames=16", "sample.tiles.enabled=true", "sample.tiles.size=64", "sample.tiles.overlap=32",
             "output.frames=true"]  # the slow test's run (tests/test_shard.py)  # fmt: skip
H100_PEAK_TFLOPS = 990.0  # dense bf16/fp16
ASSUMED_MFU = 0.4  # fraction of peak a UNet call reaches (assumption, not measured here)
ASSUMED_GBPS = {"NVLink (8x H100 SXM)": 100.0, "PCIe 4.0 x16": 10.0}  # all_gather bus bandwidth, assumed


def run_once(processes: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["outpaint", str(REPO / "configs" / "tiny.yaml"), *OVERRIDES, f"output.dir={out}"]
    if processes == 1:
        cmd = [sys.executable, "-m", "motia", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "motia", *args]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    folder = out / "sample"
    summary = json.loads((folder / "summary.json").read_text())
    frames = {p.name: p.read_bytes() for p in sorted((folder / "frames").glob("*.png"))}
    return {"processes": processes, "wall_s": wall, "sample_s": summary["timings_s"]["sample"],
            "calls": summary["processes"]["calls_per_process"], "frames": frames}  # fmt: skip


def bench_wall(repeats: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for n in (1, 2):  # alternating: this machine drifts from minute to minute
                rows.append(run_once(n, Path(tmp) / f"{n}_{r}"))
    same = all(row["frames"] == rows[0]["frames"] for row in rows)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print("| processes | wall s | sample s | calls per process |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['processes']} | {row['wall_s']:.1f} | {row['sample_s']:.1f} | {row['calls']} |")
    for n in (1, 2):
        mine = [r for r in rows if r["processes"] == n]
        print(f"median over {len(mine)}: {n} process(es): wall {statistics.median(r['wall_s'] for r in mine):.1f} s, "
              f"sample {statistics.median(r['sample_s'] for r in mine):.1f} s")
    print(f"written PNG frames byte-identical across all runs: {same}")


def call_flops(frames: int, tile: int) -> dict:
    """FLOPs of one full-size UNet + ControlNet call on a tile x tile x ``frames`` box, unguided and guided."""
    import torch
    from bench_adapt import build_fullsize
    from torch.utils.flop_counter import FlopCounterMode

    from motia.models import Components
    from motia.outpaint import make_denoiser

    meta = torch.device("meta")
    unet, controlnet = build_fullsize(meta, torch.float32)
    comp = Components(unet=unet, controlnet=controlnet, device=meta, dtype=torch.float32)
    text = (torch.zeros(1, 77, 768, device=meta), torch.zeros(1, 77, 768, device=meta))
    denoise = make_denoiser(comp, text, torch.zeros(frames, 3, tile, tile, device=meta), 1.0)
    out = {}
    for guided in (False, True):
        x = torch.zeros(2 if guided else 1, 4, frames, tile // 8, tile // 8, device=meta)  # (B, 4, f, h, w)
        with FlopCounterMode(display=False) as counter:
            denoise(x, torch.tensor(500), {"guided": guided}, (0, frames))
        out["guided" if guided else "unguided"] = counter.get_total_flops()
    return out


def bench_estimate(args) -> None:
    from motia.geometry import Canvas, latent_known_mask
    from motia.tiles import boxes, known_boxes, spatial_tiles, tile_cells
    from motia.windows import temporal_windows

    H, W = args.canvas
    src_h, src_w = args.source
    canvas = Canvas(src_h=src_h, src_w=src_w, height=H, width=W, top=(H - src_h) // 2, left=(W - src_w) // 2)
    h, w = canvas.latent_size(8)
    windows = temporal_windows(args.frames, 16, 4)
    tiles = spatial_tiles(h, w, tile_cells(args.tile, 8), tile_cells(args.overlap, 8))
    every = boxes(windows, tiles)
    skipped = known_boxes(every, latent_known_mask(canvas, 8))
    run = [b for i, b in enumerate(every) if i not in skipped]
    box_bytes = [4 * 4 * (b.window[1] - b.window[0]) * (b.tile[2] - b.tile[0]) * (b.tile[3] - b.tile[1]) for b in run]
    step_bytes = sum(box_bytes)
    flops = call_flops(16, args.tile)
    print(f"clip: {args.frames} frames, canvas {W}x{H} (source {src_w}x{src_h} in the middle), latent {w}x{h}")
    print(f"boxes per step: {len(windows)} windows x {len(tiles)} tiles = {len(every)}, {len(skipped)} all known "
          f"(skipped) -> {len(run)} calls")
    print(f"gather per step: {step_bytes / 2**20:.1f} MiB of float32 predictions ({max(box_bytes) / 2**20:.2f} MiB "
          f"per box); every process receives all of it")
    for kind in ("unguided", "guided"):
        f = flops[kind]
        t_call = f / (H100_PEAK_TFLOPS * 1e12 * ASSUMED_MFU)
        print(f"\n{kind} call on a {args.tile}x{args.tile} x 16-frame box: {f / 1e12:.1f} TFLOP -> "
              f"{1000 * t_call:.0f} ms on an H100 at {ASSUMED_MFU:.0%} of its dense peak (assumed)")
        one = len(run) * t_call
        print(f"  1 GPU: {one:.2f} s per step")
        for link, gbps in ASSUMED_GBPS.items():
            for n in (8,):
                rounds = math.ceil(len(run) / n)
                gather = rounds * n * max(box_bytes) / (gbps * 1e9)  # each round moves n boxes to every process
                step = rounds * t_call + gather
                print(f"  {n} GPUs, {link} at {gbps:.0f} GB/s: {rounds} rounds x {1000 * t_call:.0f} ms + gather "
                      f"{1000 * gather:.1f} ms = {step:.2f} s per step, {one / step:.2f}x one GPU "
                      f"(gather {gather / step:.1%} of the step)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["wall", "estimate"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--canvas", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"))
    p.add_argument("--source", type=int, nargs=2, default=[720, 960], metavar=("H", "W"))
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=128)
    args = p.parse_args(argv)
    if args.part == "wall":
        bench_wall(args.repeats)
    else:
        bench_estimate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
