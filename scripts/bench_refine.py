"""Coarse-to-fine at the output's scale: peak memory against canvas size, and the full-size FLOPs and H100 bound.

    python scripts/bench_refine.py memory                  # tiny models, CPU: 1x vs 4x the canvas area, and 16:9 vs 4:3
    python scripts/bench_refine.py memory --frames 4 --steps 1 --untiled
    python scripts/bench_refine.py flops                   # full-size SD1.5 + ControlNet + motion module, meta device

``memory``: each case is one `motia outpaint configs/tiny.yaml` run with ``outpaint.refine=on``
in a fresh process on a synthetic portrait clip, reporting its peak RSS (VmHWM), the refine
canvas, its tiles and UNet calls and the seconds per stage. Cases: a 360x640 (W x H) clip to
16:9 (refine canvas 1144x640) against a 720x1280 one to 16:9 (2280x1280: 4x the area), the
720x1280 clip to 4:3 (1712x1280), and the 720x1280 clip to 16:9 with tiles off (the whole
refine canvas per model call: what the tiles save). The tiny models make the model part small,
so what the peak shows is everything that grows with the canvas outside the model (latents,
frames at the output's scale, the VAE's decoded tiles, the store of what frames know).

``flops``: the work of a 1080x1920 (W x H) phone clip of 16 frames written at 16:9
(3414x1920) with configs/base.yaml: the stages motia plans (coarse 912x512, refine 3416x1920
in 512 px tiles), the FLOPs of one UNet + ControlNet call on each stage's box and of the VAE
on the refine's frames, counted on the meta device (no memory, no weights), and the time
that work needs at least on an H100 at its dense bf16 peak (990 TFLOP/s): a bound, not a
measurement (no GPU is lent here).
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

H100_TFLOPS = 990.0  # dense bf16 peak, as BENCHMARKS.md reads GPU times against


def make_clip(path: Path, frames: int, h: int, w: int, fps: int = 8) -> None:
    """A moving texture of ``frames`` frames at h x w, no audio (``bench_native.make_clip``)."""
    from bench_native import make_clip as texture

    texture(path, frames, fps, size=(h, w), audio=False)


def child(overrides: list[str]) -> None:
    from motia.config import load_config
    from motia.outpaint import outpaint_from_config

    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    t0 = time.perf_counter()
    summary = outpaint_from_config(cfg, progress=False)
    from bench_native import peak_rss

    print(json.dumps({"wall_s": time.perf_counter() - t0, "peak_rss": peak_rss(), "stages": summary["stages"],
                      "output": summary["output_canvas"]}))


def run_case(clip: Path, out: Path, aspect: str, frames: int, steps: int, extra: list[str]) -> dict:
    overrides = [f"video.path={clip}", "outpaint.left=0", "outpaint.right=0", f"outpaint.aspect={aspect}",
                 "outpaint.refine.mode=on", f"sample.steps={steps}", "sample.regret.repeats=0",
                 f"outpaint.refine.steps={2 * steps}", "outpaint.refine.strength=0.5", "outpaint.propagate=off",
                 f"video.max_frames={frames}", "sample.window.frames=8", f"output.dir={out}", "output.side_by_side=false",
                 *extra]
    from bench_native import run_child

    return run_child(__file__, overrides, {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})


def bench_memory(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, large = tmp / "small.mp4", tmp / "large.mp4"
        make_clip(small, args.frames, 640, 360)
        make_clip(large, args.frames, 1280, 720)
        tiles = [f"sample.tiles.size={args.tile}", f"sample.tiles.overlap={args.tile // 4}"]
        cases = [("360x640 -> 16:9", small, "16:9", []), ("720x1280 -> 16:9", large, "16:9", []),
                 ("720x1280 -> 4:3", large, "4:3", [])]
        if args.untiled:
            cases.append(("720x1280 -> 16:9, tiles off", large, "16:9", ["sample.tiles.enabled=false"]))
        for name, clip, aspect, extra in cases:
            r = run_case(clip, tmp / name.replace(" ", "_").replace(":", ""), aspect, args.frames, args.steps,
                         tiles + extra)
            refine = r["stages"]["refine"]
            rows.append({"case": name, "refine_canvas": refine["canvas"], "tiles": refine["tiles"],
                         "refine_calls": refine["unet_calls"], "peak_rss_mb": round(r["peak_rss"] / 2**20),
                         "coarse_s": r["stages"]["coarse"]["seconds"], "refine_s": refine["seconds"],
                         "wall_s": round(r["wall_s"], 1)})
            print(json.dumps(rows[-1]), flush=True)
    base = {r["case"]: r["peak_rss_mb"] for r in rows}
    print(f"peak 4x area / 1x: {base['720x1280 -> 16:9'] / base['360x640 -> 16:9']:.3f}; "
          f"16:9 / 4:3: {base['720x1280 -> 16:9'] / base['720x1280 -> 4:3']:.3f}"
          + (f"; tiles off / on at 2280x1280: {base['720x1280 -> 16:9, tiles off'] / base['720x1280 -> 16:9']:.3f}"
             if args.untiled else ""))
    return rows


def bench_flops(args) -> dict:
    """FLOPs of the planned stages of a 1080x1920, 16-frame clip written 3414x1920 (base.yaml), and the H100 bound."""
    import torch
    from bench_adapt import build_fullsize
    from torch.utils.flop_counter import FlopCounterMode

    from motia.config import load_config
    from motia.models import Components
    from motia.outpaint import make_denoiser
    from motia.planning import plan_stages
    from motia.video import Clip

    cfg = load_config(ROOT / "configs" / "base.yaml", ["outpaint.left=0", "outpaint.right=0", "outpaint.aspect=16:9",
                                                        "video.shots=off"])
    native_h, native_w, frames = 1920, 1080, 16
    from motia.planning import model_size

    size, _ = model_size(cfg, native_h, native_w)
    h, w = round(native_h * size / native_w), size
    with tempfile.TemporaryDirectory() as tmp:  # a file of the native size, so the plan probes what a user's would
        path = Path(tmp) / "phone.mp4"
        make_clip(path, 2, native_h, native_w)
        clip = Clip(frames=torch.zeros(frames, 3, h, w, dtype=torch.uint8), fps=8.0, source=path,
                    frame_indices=list(range(frames)))
        plan = plan_stages(cfg, clip)
    meta = torch.device("meta")
    unet, controlnet = build_fullsize(meta, torch.float32)
    comp = Components(unet=unet, controlnet=controlnet, device=meta, dtype=torch.float32)
    text = (torch.zeros(1, 77, 768, device=meta), torch.zeros(1, 77, 768, device=meta))
    out = {"stages": {}}
    total = 0
    for st in plan.stages:
        bh, bw = st.box  # the largest box one call sees
        denoise = make_denoiser(comp, text, torch.zeros(frames, 3, bh, bw, device=meta), 1.0)
        per = {}
        for guided in (False, True):
            x = torch.zeros(2 if guided else 1, 4, frames, bh // 8, bw // 8, device=meta)
            with FlopCounterMode(display=False) as counter:
                denoise(x, torch.tensor(500), {"guided": guided}, (0, frames))
            per["guided" if guided else "unguided"] = counter.get_total_flops()
        work = st.work
        flops = work["guided_calls"] * per["guided"] + (work["unet_calls"] - work["guided_calls"]) * per["unguided"]
        total += flops
        out["stages"][st.name] = {"canvas": f"{st.canvas.width}x{st.canvas.height}", "box": f"{bw}x{bh}",
                                  "tiles": len(st.tiles), "skipped_boxes_per_move": work["skipped_boxes"],
                                  "unet_calls": work["unet_calls"], "guided_calls": work["guided_calls"],
                                  "flops_per_call": per, "flops": flops}
    # The VAE at the refine scale: decode the coarse (coarse canvas), encode + decode at the refine canvas.
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                            sample_size=512)
    tile = cfg.sample.tiles.size
    with FlopCounterMode(display=False) as counter:
        vae.decode(torch.zeros(1, 4, tile // 8, tile // 8, device="meta"))
    dec_tile = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        vae.encode(torch.zeros(1, 3, tile, tile, device="meta"))
    enc_tile = counter.get_total_flops()
    rc, cc = plan.refine.canvas, plan.coarse.canvas
    tiles_r = (rc.height * rc.width) / (tile * 0.75) ** 2  # diffusers' tiles overlap by a quarter
    vae_flops = frames * ((cc.height * cc.width) / tile**2 * dec_tile + tiles_r * (enc_tile + dec_tile))
    out["vae_flops"] = int(vae_flops)
    total += vae_flops
    out["total_flops"] = int(total)
    out["h100_seconds_at_peak"] = total / (H100_TFLOPS * 1e12)
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", choices=["memory", "flops"], default="memory")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="coarse steps (the refine runs as many: strength 0.5 of twice)")
    p.add_argument("--tile", type=int, default=128,
                   help="tile px (the tiny models' 64 px scale x 2; at 512 px a tiny call is ~20 s on a CPU: attention)")
    p.add_argument("--untiled", action="store_true", help="also the 2280x1280 refine with tiles off (slow: minutes)")
    p.add_argument("--child", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.child is not None:
        child(args.child)
    elif args.part == "memory":
        bench_memory(args)
    else:
        bench_flops(args)


if __name__ == "__main__":
    main()
