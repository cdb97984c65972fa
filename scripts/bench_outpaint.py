"""Benchmark outpainting: time and peak memory for the same canvas at growing clip lengths.

Every case runs ``motia.outpaint.outpaint`` in a fresh subprocess, so each peak is
its own. The decoded frames go to a discarding sink (nothing of the output is
kept), so the peak is the one of sampling and chunked decoding: with temporal
windows, per-window control frames and chunked VAE work it must not grow with the
clip (the 256/16 peak ratio should stay within 1.3x).

Memory: on CPU the peak resident memory (VmHWM) after the models are built, with
the high-water mark reset just before the run (/proc/self/clear_refs), and the
resident memory of the loaded models alone; "work" is the difference. On CUDA,
torch.cuda.max_memory_allocated over the run and the allocated memory before it.

Cases:
* tiny (default): the tiny bundle through configs/tiny.yaml, 64x64 canvas
  (a 64x32 source, half its width added on each side), 16, 64 and 256 frames.
* ``--fullsize``: the full-size architecture (SD1.5 UNet + motion module v2 +
  inpainting ControlNet, SD VAE, CLIP ViT-L text encoder) with random weights on
  the same 64 px canvas, 16 and 64 frames. About 7.5 GB of fp32 weights.

Both use windows of 16 frames with stride 4 and guidance on the first step only.
Also reported: the FLOPs of one UNet + ControlNet call on a 16-frame window
(torch.utils.flop_counter), to read a time as a fraction of a chip's peak.

    python scripts/bench_outpaint.py                      # tiny, 16/64/256 frames
    python scripts/bench_outpaint.py --fullsize --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

SOURCE_HW = (64, 32)  # -> 64x64 canvas with outpaint.left = outpaint.right = 0.5
RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------- one case (in its own process)


def _proc_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak(device) -> int | None:
    """Reset the peak counter; return the memory in use now (bytes)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        pass
    rss = _proc_kb("VmRSS")
    return None if rss is None else rss * 1024


def _peak(device) -> int | None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    hwm = _proc_kb("VmHWM")
    if hwm is not None:
        return hwm * 1024
    from motia.utils import peak_memory_bytes

    return peak_memory_bytes(device)


def fullsize_components(device: str, dtype: str):
    """SD1.5 + motion module v2 + inpainting ControlNet architecture with random weights (and the tiny tokenizer)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from motia.models import Components, animatediff_scheduler, resolve_device, resolve_dtype
    from motia.models.loading import assemble_motion_unet
    from motia.models.tiny import resolve_tiny

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    torch.manual_seed(0)
    with torch.device(dev):  # build in place: random init of ~1.8B parameters is much faster on a GPU
        # diffusers' defaults are SD1.5's layout (320/640/1280/1280, 2 layers, 8 heads) except the text width.
        unet2d = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        adapter = MotionAdapter(motion_max_seq_length=32, use_motion_mid_block=True)  # v2: mid-block motion module
        unet = assemble_motion_unet(unet2d, adapter)  # no second copy of the UNet
        del unet2d, adapter
        controlnet = ControlNetModel(cross_attention_dim=768)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
        ))
    tokenizer = CLIPTokenizer.from_pretrained(str(Path(resolve_tiny("tiny:sd")) / "tokenizer"))
    parts = {}
    for name, m in (("unet", unet), ("controlnet", controlnet), ("vae", vae), ("text_encoder", text_encoder)):
        parts[name] = m.to(device=dev, dtype=dt).eval().requires_grad_(False)
    return Components(tokenizer=tokenizer, scheduler=animatediff_scheduler(), device=dev, dtype=dt,
                      sources={"base": "random SD1.5 architecture"}, **parts)


def window_gflop(components, cfg, canvas, frames: int) -> float | None:
    """GFLOP of one unguided UNet + ControlNet call on a window of ``frames`` frames (None if counting fails)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from motia.outpaint import encode_prompt, make_denoiser

    try:
        h, w = canvas.latent_size()
        text = encode_prompt(components, "a beach", "")
        control = torch.zeros(frames, 3, canvas.height, canvas.width)
        denoise = make_denoiser(components, text, control, cfg.sample.controlnet_scale)
        x = torch.zeros(1, 4, frames, h, w, device=components.device)
        with FlopCounterMode(display=False) as counter:
            denoise(x, torch.tensor(500), {"guided": False}, (0, frames))
        return counter.get_total_flops() / 1e9
    except Exception as e:  # noqa: BLE001 - a counting failure must not lose the timing
        print(f"flop count failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def run_case(spec: dict) -> dict:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from motia.config import load_config
    from motia.outpaint import outpaint
    from motia.video import Clip

    overrides = [
        f"sample.steps={spec['steps']}", "sample.guidance_steps=1", "sample.regret.repeats=0",
        "sample.window.frames=16", "sample.window.stride=4", "outpaint.left=0.5", "outpaint.right=0.5",
        f"models.device={spec['device']}",
    ]
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides)
    t0 = time.perf_counter()
    if spec["model"] == "fullsize":
        components = fullsize_components(spec["device"], "auto")
    else:
        from motia.models import load_components

        components = load_components(cfg.models)
    build_s = time.perf_counter() - t0

    num_frames, (sh, sw) = spec["frames"], SOURCE_HW
    g = torch.Generator().manual_seed(0)
    clip = Clip(frames=torch.rand(num_frames, 3, sh, sw, generator=g), fps=8.0, source=Path("synthetic"),
                frame_indices=list(range(num_frames)))
    device = components.device
    before = _reset_peak(device)
    seen = []
    result = outpaint(cfg, components, clip, progress=False, sink=lambda chunk: seen.append(chunk.shape[0]))
    peak = _peak(device)
    assert sum(seen) == num_frames
    gflop = window_gflop(components, cfg, result.canvas, min(16, num_frames)) if spec.get("flops") else None
    return {
        "model": spec["model"],
        "device": str(device),
        "frames": num_frames,
        "canvas": f"{result.canvas.height}x{result.canvas.width}",
        "steps": spec["steps"],
        "windows": result.work["windows"],
        "unet_calls": result.work["unet_calls"],
        "guided_calls": result.work["guided_calls"],
        "build_s": build_s,
        "encode_s": result.timings["encode"],
        "sample_s": result.timings["sample"],
        "decode_s": result.timings["decode"],
        "total_s": result.timings["total"],
        "models_bytes": before,
        "peak_bytes": peak,
        "work_bytes": None if peak is None or before is None else peak - before,
        "gflop_per_window_call": gflop,
    }


# ----------------------------------------------------------------------------- driver


def run_in_subprocess(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(spec)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | device | frames | canvas | windows | UNet calls (guided) | sample s | total s | models MiB | peak MiB | work MiB | GFLOP/window call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        gf = "-" if r["gflop_per_window_call"] is None else f"{r['gflop_per_window_call']:.1f}"
        lines.append(
            f"| {r['model']} | {r['device']} | {r['frames']} | {r['canvas']} | {r['windows']} | "
            f"{r['unet_calls']} ({r['guided_calls']}) | {r['sample_s']:.1f} | {r['total_s']:.1f} | "
            f"{_mib(r['models_bytes'])} | {_mib(r['peak_bytes'])} | {_mib(r['work_bytes'])} | {gf} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict[str, dict]:
    """Per model: peak (and work) memory of the longest clip over the shortest."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["frames"])
        lo, hi = rs[0], rs[-1]
        if lo is hi or not lo["peak_bytes"]:
            continue
        work = hi["work_bytes"] / lo["work_bytes"] if lo["work_bytes"] and hi["work_bytes"] is not None else None
        out[model] = {"frames": f"{hi['frames']}/{lo['frames']}", "peak_ratio": hi["peak_bytes"] / lo["peak_bytes"],
                      "work_ratio": work, "within_1.3x": hi["peak_bytes"] / lo["peak_bytes"] <= 1.3}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=None, help="clip lengths (tiny: 16 64 256; full size: 16 64)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (tiny: 3, full size: 2)")
    p.add_argument("--fullsize", action="store_true", help="the full-size SD1.5 + motion module + ControlNet architecture")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per case")
    p.add_argument("--no-flops", action="store_true", help="skip counting the FLOPs of one window call")
    p.add_argument("--json", help="also write the rows and ratios to this JSON file")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.case:
        print(RESULT_TAG + json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0

    model = "fullsize" if args.fullsize else "tiny"
    frames = args.frames or ([16, 64] if args.fullsize else [16, 64, 256])
    steps = args.steps or (2 if args.fullsize else 3)
    rows = []
    for n in frames:
        spec = {"model": model, "frames": n, "steps": steps, "device": args.device, "threads": args.threads,
                "flops": not args.no_flops and n == frames[0]}
        print(f"running {model} {n} frames ...", file=sys.stderr, flush=True)
        rows.append(run_in_subprocess(spec))
    print(table(rows))
    found = ratios(rows)
    for m, r in found.items():
        work = "n/a" if r["work_ratio"] is None else f"{r['work_ratio']:.2f}x"
        print(f"\n{m}: peak ratio {r['frames']} frames = {r['peak_ratio']:.3f}x "
              f"({'within' if r['within_1.3x'] else 'OVER'} 1.3x); work-memory ratio {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratios": found}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
