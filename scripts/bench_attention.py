"""Benchmark window attention (motia.attention) against plain SDPA attention, side by side in one run.

Layer mode (default): ONE full-size SD1.5 top-block spatial self-attention layer
(``Attention(query_dim=320, heads=8, dim_head=40)``, as in down_blocks.0), on the
token grid of each canvas (canvas / 8), fp32, no_grad. Plain and windowed (2x2)
runs alternate repeat by repeat so machine load hits both alike; the windowed
repeat i uses denoising step i (repeats=4 covers the whole shift cycle).

``--unet``: the whole full-size SD1.5 UNet2DConditionModel (random init from the
SD1.5 config, cross_attention_dim=768, sample_size=64) at 64 px (8x8 latents),
batch 2, plain vs window attention installed on down_blocks.0 / up_blocks.3.

Memory: peak resident memory of the timed call minus the resident memory just
before it (Linux: the process's high-water mark is reset through
/proc/self/clear_refs before each call; CUDA: max_memory_allocated). Frames default
to 16 or fewer if an estimate of the layer's working set (12 activations of
N x 320 fp32 per frame) exceeds --mem-gb; the frames used are printed.

    python scripts/bench_attention.py --frames 1 --sizes 1024x1024 --json bench.json
    python scripts/bench_attention.py --unet
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from motia.attention import WindowAttnProcessor, WindowState, attention_flops, install_window_attention, shift_offsets

CHANNELS, HEADS, HEAD_DIM = 320, 8, 40
ACTIVATIONS_PER_FRAME = 12  # x, q, k, v, their window gathers, SDPA out and its reorders, to_out


def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure(fn, device: torch.device) -> tuple[float, int | None]:
    """Seconds and peak extra bytes of one call of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            base = _proc_kb("VmRSS") * 1024
        except OSError:
            base = None
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = None if base is None else _proc_kb("VmHWM") * 1024 - base
    return dt, peak


def parse_size(s: str) -> tuple[int, int]:
    w, h = (int(v) for v in s.lower().split("x"))
    return w, h


def bench_layer(args, device) -> list[dict]:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=CHANNELS, heads=HEADS, dim_head=HEAD_DIM).to(device).eval()
    plain_proc = AttnProcessor2_0()
    rows = []
    with torch.no_grad():
        # warmup: thread pools and kernels, on a small grid
        state = WindowState(grid=tuple(args.grid), shift=True, latent_hw=(32, 32))
        x = torch.randn(1, 32 * 32, CHANNELS, device=device)
        for proc in (plain_proc, WindowAttnProcessor(state)):
            attn.set_processor(proc)
            attn(x)
        for size in args.sizes:
            cw, ch = parse_size(size)
            th, tw = -(-ch // 8), -(-cw // 8)  # token grid (H, W) of the top blocks
            n = th * tw
            per_frame = ACTIVATIONS_PER_FRAME * n * CHANNELS * 4
            fits = max(1, int(args.mem_gb * 2**30 // per_frame))
            frames = args.frames or min(16, fits)
            x = torch.randn(frames, n, CHANNELS, device=device)  # (F, H*W, C)
            state = WindowState(grid=tuple(args.grid), shift=True, latent_hw=(th, tw))
            win_proc = WindowAttnProcessor(state)
            res = {"plain": [], "window": [], "plain_mem": [], "window_mem": []}
            for r in range(args.repeats):
                attn.set_processor(plain_proc)
                dt, mem = measure(lambda: attn(x), device)
                res["plain"].append(dt)
                res["plain_mem"].append(mem)
                state.step = r
                attn.set_processor(win_proc)
                dt, mem = measure(lambda: attn(x), device)
                res["window"].append(dt)
                res["window_mem"].append(mem)
            wh, ww = -(-th // args.grid[0]), -(-tw // args.grid[1])
            offsets = shift_offsets((wh, ww))
            win_flops = statistics.mean(attention_flops((th, tw), HEADS * HEAD_DIM, tuple(args.grid), o) for o in offsets)
            rows.append(
                dict(
                    case=f"layer {cw}x{ch}",
                    tokens=f"{th}x{tw}",
                    batch=frames,
                    batch_fits_mem=fits,
                    plain_s=statistics.median(res["plain"]),
                    window_s=statistics.median(res["window"]),
                    plain_peak_bytes=_max(res["plain_mem"]),
                    window_peak_bytes=_max(res["window_mem"]),
                    attn_gflop_plain=frames * attention_flops((th, tw), HEADS * HEAD_DIM) / 1e9,
                    attn_gflop_window=frames * win_flops / 1e9,
                    plain_all_s=res["plain"],
                    window_all_s=res["window"],
                )
            )
            print(f"  done {size}: frames={frames}", flush=True)
    return rows


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def bench_unet(args, device) -> list[dict]:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    # UNet2DConditionModel's defaults are SD1.5's layout (320/640/1280/1280, 2 layers, 8 heads)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to(device).eval()
    lat = args.unet_px // 8
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 4, lat, lat, generator=g).to(device)  # (B, C, H, W)
    ctx = torch.randn(2, 77, 768, generator=g).to(device)
    call = lambda: unet(x, 500, encoder_hidden_states=ctx).sample  # noqa: E731
    res = {"plain": [], "window": [], "plain_mem": [], "window_mem": []}
    with torch.no_grad():
        plain_out = call()  # warmup
        with install_window_attention(unet, grid=tuple(args.grid)):
            win_out = call()
        for r in range(args.repeats):
            dt, mem = measure(call, device)
            res["plain"].append(dt)
            res["plain_mem"].append(mem)
            with install_window_attention(unet, grid=tuple(args.grid)) as handle:
                handle.set_step(r)
                dt, mem = measure(call, device)
            res["window"].append(dt)
            res["window_mem"].append(mem)
    return [
        dict(
            case=f"SD1.5 UNet {args.unet_px}px",
            tokens=f"{lat}x{lat}",
            batch=2,
            plain_s=statistics.median(res["plain"]),
            window_s=statistics.median(res["window"]),
            plain_peak_bytes=_max(res["plain_mem"]),
            window_peak_bytes=_max(res["window_mem"]),
            max_abs_diff=float((win_out - plain_out).abs().max()),
            finite=bool(torch.isfinite(win_out).all()),
            plain_all_s=res["plain"],
            window_all_s=res["window"],
        )
    ]


def table(rows: list[dict]) -> str:
    mb = lambda b: "n/a" if b is None else f"{b / 2**20:.0f}"  # noqa: E731
    lines = [
        "| case | tokens (HxW) | batch | plain s | window s | speed-up | plain peak MiB | window peak MiB | attn GFLOP plain / window |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        flops = f"{r['attn_gflop_plain']:.0f} / {r['attn_gflop_window']:.0f}" if "attn_gflop_plain" in r else "-"
        lines.append(
            f"| {r['case']} | {r['tokens']} | {r['batch']} | {r['plain_s']:.3f} | {r['window_s']:.3f} | "
            f"{r['plain_s'] / r['window_s']:.2f}x | {mb(r['plain_peak_bytes'])} | {mb(r['window_peak_bytes'])} | {flops} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["1024x1024", "2048x1024"], help="canvases WxH in pixels")
    p.add_argument("--frames", type=int, default=None, help="batch of frames (default: 16 or what fits --mem-gb)")
    p.add_argument("--mem-gb", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=4, help="timed repeats per variant (median); 4 = one shift cycle")
    p.add_argument("--grid", type=int, nargs=2, default=[2, 2])
    p.add_argument("--unet", action="store_true", help="whole SD1.5 UNet instead of one layer")
    p.add_argument("--unet-px", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, fp32, "
        f"load average {load:.1f}, grid {args.grid[0]}x{args.grid[1]}, {args.repeats} repeats (median)",
        flush=True,
    )
    rows = bench_unet(args, device) if args.unet else bench_layer(args, device)
    for r in rows:
        if "batch_fits_mem" in r:
            print(f"{r['case']}: frames used {r['batch']} (16 or the most fitting {args.mem_gb:g} GB by estimate: {r['batch_fits_mem']})")
    print(table(rows))
    if args.json:
        from motia.utils import atomic_path

        meta = dict(torch=torch.__version__, device=str(device), threads=torch.get_num_threads(), load_average=load)
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))


if __name__ == "__main__":
    main()
