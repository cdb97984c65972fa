"""Benchmark pixel propagation inside the pipeline: border PSNR on vs off, coverage, and what it adds per frame.

Part 1, quality: synthetic camera moves over scikit-image's astronaut photo
(tests/synthetic_pans.py; the ground truth beyond the source box is known) outpainted
by ``motia.outpaint.outpaint`` with the tiny bundle (random weights), once with
``outpaint.propagate=off`` and once with ``auto``. Border PSNR is over every new-region
pixel of every returned frame (uint8, before any encoding) against the ground truth;
"filled" is the share of new pixels propagated, and their own PSNR. Propagated pixels are
model-free, so the gain shows even with random weights: the rest of the border is noise
from a random model either way.

Part 2, cost at 512 px: propagation at the model's scale (motion + pixels, 512x512 source
on a 512x1024 canvas), at the output scale (the paste's native propagation: a 1024x1024
source on 1024x2048, and a 1080x1920 phone clip written 3414x1920), and the extra VAE
encode of frames with propagated pixels (FLOPs of SD's VAE encoder at 512x1024, counted on
the meta device), next to one UNet + ControlNet call per frame.

    python scripts/bench_propagate_pipeline.py                  # both parts
    python scripts/bench_propagate_pipeline.py --part quality --frames 24 --json out.json
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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from synthetic_pans import SPRITE_RGB, Clip, pan_clip, photo, psnr, zoom  # noqa: E402

from motia.geometry import Canvas  # noqa: E402

# One guided UNet + ControlNet call at 512x1024 x 16 frames (BENCHMARKS.md, "FLOPs of one call"): per frame.
UNET_CALL_TFLOP_PER_FRAME = 100.0 / 16


def quality_clips(frames: int) -> dict[str, Clip]:
    """256 px sources, 128 px added per side (64 for the tilt), the photo enlarged 2x so the camera can travel."""
    big = dict(name="astronaut", upscale=2.0)
    src = (256, 256)

    def sprite(t):  # a 24 px square crossing the box leftwards (3 px/frame against the world)
        return (128 + (-7 * t) % (256 - 24), 100)

    pan = pan_clip(frames, src, (0, 0, 128, 128), (4, 0), (60, 300), **big)
    zoom_canvas = Canvas(src_h=256, src_w=256, height=384, width=384, top=64, left=64)
    return {
        "pan": pan,
        "pan-subpixel": pan_clip(frames, src, (0, 0, 128, 128), (3.5, 0.5), (60, 300), **big),
        "tilt": pan_clip(frames, src, (64, 64, 0, 0), (0, -4), (300, 500), **big),
        "zoom": Clip(photo(**big), zoom_canvas, frames, zoom(512, 450, zoom_canvas, 0.99)),
        "pan+sprite": Clip(pan.image, pan.canvas, frames, pan.path, sprite),
        "static": pan_clip(frames, src, (0, 0, 128, 128), (0, 0), (60, 300), **big),
    }


def quality(frames: int, steps: int) -> list[dict]:
    from motia.config import load_config
    from motia.models import load_components
    from motia.outpaint import outpaint
    from motia.video import Clip as VideoClip

    torch.set_num_threads(max(1, os.cpu_count() // 2))
    components = load_components(load_config(REPO / "configs" / "tiny.yaml").models)
    rows = []
    for name, syn in quality_clips(frames).items():
        c = syn.canvas
        src = torch.stack([torch.from_numpy(syn.read(t)).permute(2, 0, 1) for t in range(frames)]).float() / 255
        clip = VideoClip(frames=src, fps=8.0, source=Path(f"{name}.mp4"), frame_indices=list(range(frames)))
        e = c.expansion
        # every side set: tiny.yaml's own defaults must not add any
        sides = [f"outpaint.{k}={e[k] / (c.src_w if k in ('left', 'right') else c.src_h)}"
                 for k in ("left", "right", "top", "bottom")]
        truth = np.stack([syn.truth(t, with_sprite=False) for t in range(frames)])  # (F, H, W, 3)
        top, left, bottom, right = c.box
        new = np.ones((c.height, c.width), dtype=bool)
        new[top:bottom, left:right] = False
        row = {"clip": name, "frames": frames, "source": f"{c.src_w}x{c.src_h}", "canvas": f"{c.width}x{c.height}"}
        for mode in ("off", "auto"):
            cfg = load_config(REPO / "configs" / "tiny.yaml", [
                "video.resize=none", *sides, f"sample.steps={steps}", "sample.guidance_scale=1.0",
                "sample.regret.repeats=0", "sample.window.frames=16", "sample.window.stride=8",
                "sample.window_attention.enabled=false", f"outpaint.propagate={mode}",
            ])  # fmt: skip
            result = outpaint(cfg, components, clip, progress=False)
            assert result.canvas == c, (result.canvas, c)
            got = (result.frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            row[f"border_psnr_{mode}"] = psnr(got[:, new], truth[:, new])
            row[f"seconds_{mode}"] = result.timings["total"]
            if mode == "auto":
                prop = result.propagation
                row["propagate_s_per_frame"] = result.timings["propagate"] / frames
                row["filled"] = prop.coverage["all"]["mean"] if prop.coverage else 0.0
                row["note"] = prop.note
                if prop.filled:
                    m = prop.masks.numpy()
                    row["filled_psnr"] = psnr(got[m], truth[m])
                    row["filled_psnr_off"] = psnr(prev[m], truth[m])  # the same pixels, generated
                    row["sprite_px"] = int((np.abs(got[m].astype(int) - SPRITE_RGB).sum(axis=1) < 120).sum())
                else:
                    row["identical_to_off"] = bool(np.array_equal(got, prev))
            prev = got
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def vae_encode_tflop(height: int, width: int) -> float:
    """SD1.5's VAE encoder on one height x width frame, counted on the meta device."""
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
        with FlopCounterMode(display=False) as counter:
            vae.encode(torch.zeros(1, 3, height, width))
    return counter.get_total_flops() / 1e12


def cost(frames: int) -> list[dict]:
    """Seconds per frame of each propagation stage, wall and process CPU."""
    from motia.config import load_config
    from motia.known import OutputPropagation, propagate_clip

    cfg = load_config()
    rows = []
    # model scale: 512x512 -> 512x1024, 4 px/frame
    syn = pan_clip(frames, (512, 512), (0, 0, 256, 256), (4, 0), (300, 500), name="astronaut", upscale=3.0)
    src = torch.stack([torch.from_numpy(syn.read(t)).permute(2, 0, 1) for t in range(frames)]).float() / 255
    t0, c0 = time.perf_counter(), time.process_time()
    prop = propagate_clip(cfg, src, syn.canvas)
    t1, c1 = time.perf_counter(), time.process_time()
    rows.append({"stage": "model scale: motion + propagation", "canvas": "1024x512",
                 "ms": 1000 * (t1 - t0) / frames, "cpu_ms": 1000 * (c1 - c0) / frames,
                 "motion_ms": 1000 * prop.timings["motion"] / frames, "filled": prop.coverage["all"]["mean"]})
    # output scale: the same camera path at 2x (1024 source), and a 1080x1920 phone clip to 16:9
    for label, scale, canvas in (
        ("output scale, 2x", 2.0, Canvas(src_h=1024, src_w=1024, height=1024, width=2048, top=0, left=512)),
        ("output scale, 1080x1920 -> 3414x1920", 1920 / 512,
         Canvas(src_h=1920, src_w=1080, height=1920, width=3414, top=0, left=1167)),
    ):
        native = Clip(photo("astronaut", upscale=3.0 * scale), canvas, frames,
                      lambda t, s=scale: np.array([[1, 0, s * (300 + 4 * t)], [0, 1, s * 500]], dtype=np.float64))
        reads = [native.read(t) for t in range(frames)]
        model = Canvas(src_h=512, src_w=round(512 * canvas.src_w / canvas.src_h), height=512,
                       width=round(512 * canvas.width / canvas.src_h) // 8 * 8, top=0,
                       left=round(512 * canvas.left / canvas.src_h))
        small = torch.nn.functional.interpolate(
            torch.stack([torch.from_numpy(r).permute(2, 0, 1) for r in reads]).float() / 255,
            size=(model.src_h, model.src_w), mode="area")
        p = propagate_clip(cfg, small, model)
        out = OutputPropagation(p, canvas, reads.__getitem__)
        t0, c0 = time.perf_counter(), time.process_time()
        for t in range(frames):
            out.frame(t)
        t1, c1 = time.perf_counter(), time.process_time()
        rows.append({"stage": label, "canvas": f"{canvas.width}x{canvas.height}", "ms": 1000 * (t1 - t0) / frames,
                     "cpu_ms": 1000 * (c1 - c0) / frames, "filled": out.stats.to_dict()["all"]["mean"]})
    tflop = vae_encode_tflop(512, 1024)
    rows.append({"stage": "extra VAE encode (SD1.5, whole canvas)", "canvas": "1024x512", "tflop": tflop,
                 "vs_unet_call": tflop / UNET_CALL_TFLOP_PER_FRAME})
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["quality", "cost", "all"], default="all")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--cost-frames", type=int, default=24)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import cv2

    out = {}
    if args.part in ("quality", "all"):
        out["quality"] = rows = quality(args.frames, args.steps)
        print("\n| clip | source -> canvas | border PSNR off | border PSNR auto | filled | filled px PSNR off -> auto "
              "| sprite px | propagation ms/frame | run s off / auto |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")

        def db(v):
            return "-" if v is None else ("inf" if v == float("inf") else f"{v:.1f}")

        for r in rows:
            fp = r.get("filled_psnr")
            print(f"| {r['clip']} | {r['source']} -> {r['canvas']} | {r['border_psnr_off']:.2f} | "
                  f"{r['border_psnr_auto']:.2f} | {r['filled']:.3f} | "
                  f"{'-' if fp is None else db(r['filled_psnr_off']) + ' -> ' + db(fp)} | "
                  f"{r.get('sprite_px', '-')} | {1000 * r['propagate_s_per_frame']:.0f} | "
                  f"{r['seconds_off']:.1f} / {r['seconds_auto']:.1f} |"
                  + (" identical to off" if r.get("identical_to_off") else ""))
    if args.part in ("cost", "all"):
        out["cost"] = rows = cost(args.cost_frames)
        print("\n| stage | canvas | ms/frame (CPU ms) | filled |")
        print("| --- | --- | --- | --- |")
        for r in rows:
            if "tflop" in r:
                print(f"| {r['stage']} | {r['canvas']} | {r['tflop']:.2f} TFLOP/frame = {r['vs_unet_call']:.2f} of one "
                      f"guided UNet + ControlNet call | - |")
            else:
                print(f"| {r['stage']} | {r['canvas']} | {r['ms']:.0f} ({r['cpu_ms']:.0f}) | {r['filled']:.3f} |")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}, load average {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
