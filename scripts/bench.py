"""One benchmark entry for motia at real model size: adaptation, outpainting vs stock diffusers, VAE, attention, FLOPs.

Sub-benchmarks (``all`` runs every one in turn)::

    flops      FLOPs of one UNet + ControlNet call (16-frame window, guided and not) at the
               measured canvas and at 512x1024, counted on the meta device (no memory, no
               weights); reference-workload totals and the time they take at a chip's peak
    vae        chunked VAE decode vs all frames at once: time and peak memory per chunk size
    outpaint   ours (motia.outpaint) vs diffusers' AnimateDiffControlNetPipeline built from the
               same modules, same canvas/frames/steps/dtype; per-call times of our denoiser
               (plain, channels-last, with a LoRA attached); the long clip (``--long-frames``)
    adapt      seconds per training step and peak memory, gradient checkpointing on and off
               (scripts/bench_adapt.py --fullsize in a subprocess)
    attention  one full-size top-block attention layer, plain vs window attention
               (scripts/bench_attention.py in a subprocess)

Models: the full-size SD1.5 UNet + motion module v2 + ControlNet + SD VAE + a 768-wide CLIP
text encoder with random weights (``bench_outpaint.fullsize_components``; the tiny tokenizer)
-- times and memory do not depend on the weights. ``--long-model tiny`` runs the long clip on
the tiny bundle (full size is far too slow for 256 frames on a CPU).

Every timed case runs in a fresh subprocess, so its peak memory is its own: CUDA
max_memory_allocated on a GPU, the process's resident high-water mark on CPU (reset with
/proc/self/clear_refs once the models are built; "work" = peak - memory of the built models).
Model-call times come from forward hooks: from entering the ControlNet to leaving the UNet.

    PYTHONPATH=. python scripts/bench.py all --size 64 --steps 3 --json bench.json          # CPU
    PYTHONPATH=. python scripts/bench.py all --device cuda --dtype fp16 --size 512 --steps 25 --long-model fullsize
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

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
sys.path[:0] = [str(REPO), str(SCRIPTS)]  # run from a checkout; the sibling bench scripts are modules

RESULT_TAG = "BENCH_RESULT "
REF_SIZE = 512  # the reference workload: 512x512 -> 512x1024, 16 frames
PEAK_TFLOPS = {"H100": 990.0, "H200": 990.0, "A100": 312.0}  # dense bf16/fp16 tensor-core peaks
PUBLISHED = {"adapt": {"gb": 12.70, "s": 309.0}, "outpaint": {"gb": 5.80, "s": 58.0}}  # paper, A100
PROMPT = "a beach at sunset"


# ----------------------------------------------------------------------------- shared small pieces


def _gib(b) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f}"


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def _fmt(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def job_config(model: str, size: int, steps: int, guidance_steps: int, regret_repeats: int, device: str, dtype: str):
    """The job config of a case: configs/base.yaml (full size) or tiny.yaml, a size x size source doubled in width."""
    from motia.config import load_config

    overrides = [
        f"sample.steps={steps}", f"sample.guidance_steps={guidance_steps}", f"sample.regret.repeats={regret_repeats}",
        "sample.window.frames=16", "sample.window.stride=4", "outpaint.left=0.5", "outpaint.right=0.5",
        "outpaint.top=0", "outpaint.bottom=0", f"models.device={device}", f"models.dtype={dtype}", f"prompt={PROMPT}",
        # The reference workload is one shot at the paper's canvas: no cut detection, no refine (512 -> 512x1024
        # is one stage under auto anyway); the GPU machine has neither scenedetect nor OpenCV.
        "video.shots=off", "outpaint.refine=off", "outpaint.propagate=off",
    ]
    return load_config(REPO / "configs" / ("base.yaml" if model == "fullsize" else "tiny.yaml"), overrides)


def reference_work(model: str = "fullsize") -> tuple[dict, object]:
    """work_estimate of the reference workload (configs/base.yaml sampling: 25 steps, guidance 15, regret 3x4) at 16 frames."""
    from motia.planning import plan, work_estimate

    cfg = job_config(model, REF_SIZE, 25, 15, 4, "cpu", "fp32")
    ref = cfg.sample
    if (ref.steps, ref.guidance_steps, ref.regret.jump, ref.regret.repeats) != (25, 15, 3, 4):
        raise SystemExit(f"configs/base.yaml no longer has the reference sampling: {ref}")
    canvas = plan(cfg, REF_SIZE, REF_SIZE)
    return work_estimate(cfg, 16, canvas), cfg


def load_models(spec: dict):
    """Components for a case: the full-size random architecture, or the tiny bundle."""
    if spec["model"] == "fullsize":
        from bench_outpaint import fullsize_components

        return fullsize_components(spec["device"], spec["dtype"])
    from motia.models import load_components

    cfg = job_config("tiny", spec["size"], 1, 0, 0, spec["device"], spec["dtype"])
    return load_components(cfg.models)


def prepare_models(components, spec: dict) -> None:
    """The optional speed switches: channels-last weights, torch.compile of the UNet's forward."""
    import torch

    if spec.get("channels_last"):
        for m in (components.unet, components.controlnet):
            m.to(memory_format=torch.channels_last)
    if spec.get("compile"):
        # Compile forward only: the timing hooks stay in eager mode around it.
        components.unet.forward = torch.compile(components.unet.forward)


class CallTimer:
    """Times every model call, from entering ``first`` (the ControlNet) to leaving ``last`` (the UNet)."""

    def __init__(self, first, last, device):
        import torch

        self.calls: list[tuple[float, int]] = []  # (seconds, batch rows of the UNet input)
        self._t0 = None
        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self._handles = [first.register_forward_pre_hook(self._start), last.register_forward_hook(self._stop)]

    def _start(self, module, args):
        self._sync()
        self._t0 = time.perf_counter()

    def _stop(self, module, args, output):
        self._sync()
        self.calls.append((time.perf_counter() - self._t0, int(args[0].shape[0])))

    def mean(self, rows: int | None = None) -> float | None:
        ts = [t for t, r in self.calls if rows is None or r == rows]
        return sum(ts) / len(ts) if ts else None

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def synthetic_clip(frames: int, size: int):
    import torch

    from motia.video import Clip

    g = torch.Generator().manual_seed(0)
    return Clip(frames=torch.rand(frames, 3, size, size, generator=g), fps=8.0, source=Path("synthetic"),
                frame_indices=list(range(frames)))


# ----------------------------------------------------------------------------- cases (each in its own process)


def case_ours(spec: dict) -> dict:
    """motia.outpaint.outpaint end to end (encode, sample, chunked decode, paste); decoded frames are discarded."""
    from bench_outpaint import _peak, _reset_peak

    from motia.outpaint import outpaint

    t0 = time.perf_counter()
    components = load_models(spec)
    prepare_models(components, spec)
    build_s = time.perf_counter() - t0
    cfg = job_config(spec["model"], spec["size"], spec["steps"], spec["guidance_steps"], spec["regret_repeats"],
                     spec["device"], spec["dtype"])
    clip = synthetic_clip(spec["frames"], spec["size"])
    timer = CallTimer(components.controlnet, components.unet, components.device)
    before = _reset_peak(components.device)
    seen = []
    result = outpaint(cfg, components, clip, progress=False, sink=lambda chunk: seen.append(chunk.shape[0]))
    peak = _peak(components.device)
    assert sum(seen) == spec["frames"] and len(timer.calls) == result.work["unet_calls"], (seen, len(timer.calls))
    call_s = sum(t for t, _ in timer.calls)
    return {
        **spec, "name": "ours", "canvas": f"{result.canvas.height}x{result.canvas.width}", "build_s": build_s,
        "unet_calls": len(timer.calls), "guided_calls": result.work["guided_calls"], "windows": result.work["windows"],
        "call_s_guided": timer.mean(2), "call_s_unguided": timer.mean(1), "calls_s": call_s,
        "encode_s": result.timings["encode"], "decode_s": result.timings["decode"], "total_s": result.timings["total"],
        "other_s": result.timings["total"] - call_s, "models_bytes": before, "peak_bytes": peak,
        "work_bytes": None if peak is None or before is None else peak - before,
    }


def case_stock(spec: dict) -> dict:
    """diffusers' AnimateDiffControlNetPipeline on the same modules: all frames in one call, guidance every step."""
    import numpy as np
    import torch
    from bench_outpaint import _peak, _reset_peak
    from diffusers import AnimateDiffControlNetPipeline
    from PIL import Image

    from motia.geometry import place_on_canvas
    from motia.planning import plan

    t0 = time.perf_counter()
    c = load_models(spec)
    prepare_models(c, spec)
    pipe = AnimateDiffControlNetPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                         motion_adapter=None, controlnet=c.controlnet,
                                         scheduler=type(c.scheduler).from_config(c.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t0
    cfg = job_config(spec["model"], spec["size"], spec["steps"], spec["steps"], 0, spec["device"], spec["dtype"])
    canvas = plan(cfg, spec["size"], spec["size"])
    clip = synthetic_clip(spec["frames"], spec["size"])
    placed = place_on_canvas(clip.frames, canvas, 0.0)  # (F, 3, H, W) in [0, 1]
    control = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for f in placed]
    timer = CallTimer(c.controlnet, c.unet, c.device)
    before = _reset_peak(c.device)
    t1 = time.perf_counter()
    out = pipe(prompt=PROMPT, num_frames=spec["frames"], height=canvas.height, width=canvas.width,
               num_inference_steps=spec["steps"], guidance_scale=7.5, conditioning_frames=control,
               output_type="pt", generator=torch.Generator().manual_seed(0)).frames  # (1, F, 3, H, W)
    total = time.perf_counter() - t1
    peak = _peak(c.device)
    assert out.shape[1] == spec["frames"], out.shape
    call_s = sum(t for t, _ in timer.calls)
    return {
        **spec, "name": "stock", "canvas": f"{canvas.height}x{canvas.width}", "build_s": build_s,
        "unet_calls": len(timer.calls), "guided_calls": sum(r == 2 for _, r in timer.calls), "windows": 1,
        "call_s_guided": timer.mean(2), "call_s_unguided": timer.mean(1), "calls_s": call_s,
        "encode_s": 0.0, "decode_s": None, "total_s": total, "other_s": total - call_s,
        "models_bytes": before, "peak_bytes": peak, "work_bytes": None if peak is None or before is None else peak - before,
    }


def case_calls(spec: dict) -> dict:
    """Per-call seconds of our denoiser on one 16-frame window: plain vs channels-last (alternating), then with a LoRA."""
    import contextlib

    import torch

    from motia import lora
    from motia.geometry import control_video, known_mask, place_on_canvas
    from motia.outpaint import _attach_lora, encode_prompt, make_denoiser
    from motia.planning import plan

    c = load_models(spec)
    cfg = job_config(spec["model"], spec["size"], 1, 1, 0, spec["device"], spec["dtype"])
    canvas = plan(cfg, spec["size"], spec["size"])
    frames = spec["frames"]
    h, w = canvas.latent_size()
    clip = synthetic_clip(frames, spec["size"])
    control = control_video(place_on_canvas(clip.frames, canvas, 0.0), known_mask(canvas))  # (F, 3, H, W)
    denoise = make_denoiser(c, encode_prompt(c, PROMPT, ""), control, cfg.sample.controlnet_scale)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, frames, h, w, generator=g)  # (1, 4, F, h, w)
    t = torch.tensor(500)
    sync = (lambda: torch.cuda.synchronize(c.device)) if c.device.type == "cuda" else (lambda: None)

    def timed(guided: bool) -> float:
        sync()
        t0 = time.perf_counter()
        denoise(torch.cat([x, x]) if guided else x, t, {"guided": guided}, (0, frames))
        sync()
        return time.perf_counter() - t0

    def memory_format(fmt) -> None:
        for m in (c.unet, c.controlnet):
            m.to(memory_format=fmt)

    res: dict[str, list[float]] = {}
    if spec.get("warmup"):
        timed(False)
    for _ in range(spec["repeats"]):
        for guided in spec["guided"]:
            tag = "guided" if guided else "unguided"
            res.setdefault(f"plain_{tag}", []).append(timed(guided))
            if spec.get("channels_last_ab"):
                memory_format(torch.channels_last)
                res.setdefault(f"channels_last_{tag}", []).append(timed(guided))
                memory_format(torch.contiguous_format)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        a = cfg.adapt.lora
        lora.add_lora(c.unet, a.targets, a.rank, a.alpha)
        path = lora.save_lora(Path(tmp) / "lora.safetensors", c.unet)
        lora.remove_lora(c.unet)
        _attach_lora(cfg, c, canvas, path, stack)  # the LoRA as outpainting runs it: spatially scaled
        for _ in range(spec["repeats"]):
            for guided in spec["guided"]:
                res.setdefault(f"lora_{'guided' if guided else 'unguided'}", []).append(timed(guided))
    return {**spec, "name": "calls", "canvas": f"{canvas.height}x{canvas.width}",
            "seconds": {k: sorted(v)[len(v) // 2] for k, v in res.items()}, "all_seconds": res}


def case_ab(spec: dict) -> dict:
    """One guided model call, ours vs the stock pipeline, alternating in one process on the same modules.

    Ours: ``motia.outpaint.make_denoiser`` on a 16-frame window (ControlNet per frame +
    UNetMotionModel), doubled batch. Stock: ``AnimateDiffControlNetPipeline`` with one
    step and latent output, timed by the same hooks from entering the ControlNet to
    leaving the UNet (its text encoding and scheduler step stay outside, as ours do).
    The order alternates repeat by repeat, so machine load hits both alike; medians.
    """
    import numpy as np
    import torch
    from diffusers import AnimateDiffControlNetPipeline
    from PIL import Image

    from motia.geometry import control_video, known_mask, place_on_canvas
    from motia.outpaint import encode_prompt, make_denoiser
    from motia.planning import plan

    c = load_models(spec)
    prepare_models(c, spec)
    cfg = job_config(spec["model"], spec["size"], 1, 1, 0, spec["device"], spec["dtype"])
    canvas = plan(cfg, spec["size"], spec["size"])
    frames = spec["frames"]
    h, w = canvas.latent_size()
    clip = synthetic_clip(frames, spec["size"])
    placed = place_on_canvas(clip.frames, canvas, 0.0)  # (F, 3, H, W)
    denoise = make_denoiser(c, encode_prompt(c, PROMPT, ""), control_video(placed, known_mask(canvas)), 1.0)
    pipe = AnimateDiffControlNetPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                         motion_adapter=None, controlnet=c.controlnet,
                                         scheduler=type(c.scheduler).from_config(c.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    control = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for f in placed]
    x = torch.randn(2, 4, frames, h, w, generator=torch.Generator().manual_seed(0)).to(c.device)
    t = torch.tensor(500)
    timer = CallTimer(c.controlnet, c.unet, c.device)

    def ours() -> float:
        denoise(x, t, {"guided": True}, (0, frames))
        return timer.calls[-1][0]

    def stock() -> float:
        pipe(prompt=PROMPT, num_frames=frames, height=canvas.height, width=canvas.width, num_inference_steps=1,
             guidance_scale=7.5, conditioning_frames=control, output_type="latent",
             generator=torch.Generator().manual_seed(0))
        return timer.calls[-1][0]

    ours(), stock()  # warm-up: first-call allocations and kernel selection
    res: dict[str, list[float]] = {"ours": [], "stock": []}
    for i in range(spec["repeats"]):
        for name, fn in (("ours", ours), ("stock", stock)) if i % 2 == 0 else (("stock", stock), ("ours", ours)):
            res[name].append(fn())
    timer.close()
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    return {**spec, "name": "ab", "canvas": f"{canvas.height}x{canvas.width}", "seconds": med, "all_seconds": res}


def vae_decode_flops(vae, size: int) -> int:
    """FLOPs of decoding one frame of a size x 2*size canvas, counted on a meta-device copy of ``vae``'s architecture."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta_vae = type(vae).from_config(vae.config)
    with FlopCounterMode(display=False) as counter:
        meta_vae.decode(torch.zeros(1, meta_vae.config.latent_channels, size // 8, size * 2 // 8, device="meta"))
    return counter.get_total_flops()


def case_vae(spec: dict) -> dict:
    """Decode a clip's latents with motia.outpaint.decode_latents, ``chunk`` frames per VAE call."""
    import torch
    from bench_outpaint import _peak, _reset_peak

    from motia.outpaint import decode_latents

    c = load_models(spec)
    h, w = spec["size"] // 8, spec["size"] * 2 // 8
    latents = torch.randn(1, 4, spec["frames"], h, w, generator=torch.Generator().manual_seed(0))  # (1, 4, F, h, w)
    if spec.get("warmup"):
        next(iter(decode_latents(c.vae, latents[:, :, :1], 1)))
    before = _reset_peak(c.device)
    t0 = time.perf_counter()
    n = sum(chunk.shape[0] for chunk in decode_latents(c.vae, latents, spec["chunk"]))
    seconds = time.perf_counter() - t0
    peak = _peak(c.device)
    assert n == spec["frames"]
    return {**spec, "name": "vae", "canvas": f"{spec['size']}x{spec['size'] * 2}", "decode_s": seconds,
            "gflop_per_frame": {f"{s}x{2 * s}": vae_decode_flops(c.vae, s) / 1e9 for s in dict.fromkeys([spec["size"], REF_SIZE])},
            "models_bytes": before, "peak_bytes": peak, "work_bytes": None if peak is None or before is None else peak - before}


def case_adapt(spec: dict) -> dict:
    """scripts/bench_adapt.py --fullsize (adapt's own training step), with the peak memory taken after the build.

    bench_adapt reports the process's lifetime peak RSS on CPU, which the model build
    (UNetMotionModel.from_unet2d briefly holds two UNets) can exceed; here the
    high-water mark is reset once its models are built, so the peak is the training's.
    """
    import bench_adapt
    from bench_outpaint import _peak, _reset_peak

    marks = {}
    build = bench_adapt.build_fullsize

    def build_then_reset(device, dtype):
        models = build(device, dtype)
        marks["models_bytes"] = _reset_peak(device)
        return models

    bench_adapt.build_fullsize = build_then_reset
    bench_adapt.peak_memory_bytes = _peak  # read after the timed steps; CUDA: max allocated, as before
    argv = ["--fullsize", "--size", str(spec["size"]), "--steps", str(spec["steps"]), "--warmup", str(spec["warmup"]),
            f"adapt.gradient_checkpointing={str(spec['checkpointing']).lower()}"]
    if spec["device"] != "cpu":
        argv += ["--device", spec["device"]]
    if spec.get("threads"):
        argv += ["--threads", str(spec["threads"])]
    if spec["dtype"] != "auto":
        argv.append(f"models.dtype={spec['dtype']}")
    r = bench_adapt.main(argv)
    before = marks.get("models_bytes")
    return {**spec, **r, "name": "adapt", "models_bytes": before,
            "work_bytes": None if before is None else r["peak_bytes"] - before}


CASES = {"adapt": case_adapt, "ours": case_ours, "stock": case_stock, "calls": case_calls, "vae": case_vae,
         "ab": case_ab}


def run_case(spec: dict) -> dict:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    out = CASES[spec["kind"]](spec)
    out.update(torch=torch.__version__, threads=torch.get_num_threads())
    return out


def in_subprocess(spec: dict, timeout: float | None = None) -> dict:
    """Run one case in a fresh interpreter (its own peak memory); its result comes back on stdout."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    print(f"  case {spec['kind']} {spec.get('model', '')} {spec.get('frames', '')}f ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"    done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads(lines[-1][len(RESULT_TAG):])


# ----------------------------------------------------------------------------- sub-benchmarks


def adapt_step_flops(size: int, checkpointing: bool) -> int:
    """FLOPs of one training step (ControlNet forward, UNet forward + backward into the LoRA) on the meta device."""
    import torch
    from bench_adapt import build_fullsize
    from torch.utils.flop_counter import FlopCounterMode

    from motia import adapt as A
    from motia import lora
    from motia.models import animatediff_scheduler

    meta = torch.device("meta")
    a = job_config("fullsize", size, 1, 0, 0, "cpu", "fp32").adapt
    unet, controlnet = build_fullsize(meta, torch.float32)
    lora.add_lora(unet, a.lora.targets, a.lora.rank, a.lora.alpha)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    g = torch.Generator().manual_seed(0)
    batch = A.training_batch(
        torch.zeros(a.frames, 4, size // 8, size // 8, device=meta), torch.rand(a.frames, 3, size, size), window=a.frames,
        batch_size=a.batch_size, mask_ranges={k: tuple(v) for k, v in a.mask.model_dump().items()},
        num_train_timesteps=1000, generator=g, device=meta,
    )
    with FlopCounterMode(display=False) as counter:
        A.diffusion_loss(unet, controlnet, batch, torch.zeros(1, 77, 768, device=meta), animatediff_scheduler()).backward()
    return counter.get_total_flops()


def bench_flops(args) -> dict:
    """FLOPs of one UNet + ControlNet call, counted on the meta device, at the measured canvas and at 512x1024."""
    import torch
    from bench_adapt import build_fullsize
    from torch.utils.flop_counter import FlopCounterMode

    from motia.models import Components
    from motia.outpaint import make_denoiser

    meta = torch.device("meta")
    unet, controlnet = build_fullsize(meta, torch.float32)
    comp = Components(unet=unet, controlnet=controlnet, device=meta, dtype=torch.float32)
    text = (torch.zeros(1, 77, 768, device=meta), torch.zeros(1, 77, 768, device=meta))
    out = {}
    for size in dict.fromkeys([args.size, REF_SIZE]):
        H, W = size, 2 * size
        denoise = make_denoiser(comp, text, torch.zeros(16, 3, H, W, device=meta), 1.0)
        row = {}
        for guided in (False, True):
            x = torch.zeros(2 if guided else 1, 4, 16, H // 8, W // 8, device=meta)  # (B, 4, F, h, w)
            with FlopCounterMode(display=False) as counter:
                denoise(x, torch.tensor(500), {"guided": guided}, (0, 16))
            row["guided" if guided else "unguided"] = counter.get_total_flops()
        out[f"{H}x{W}"] = row
    adapt_flops = {f"{s}x{s}": {ckpt: adapt_step_flops(s, ckpt) for ckpt in (True, False)}
                   for s in dict.fromkeys([args.size, REF_SIZE])}
    work, _ = reference_work()
    ref = out[f"{REF_SIZE}x{2 * REF_SIZE}"]
    ours = work["guided_calls"] * ref["guided"] + (work["unet_calls"] - work["guided_calls"]) * ref["unguided"]
    stock = work["steps"] * ref["guided"]
    adapt_ref = adapt_flops[f"{REF_SIZE}x{REF_SIZE}"][True] * 1000
    return {
        "per_call": out,
        "adapt_step": adapt_flops,
        "adapt_reference": {"flops": adapt_ref, "seconds_at_peak": {c: adapt_ref / (tf * 1e12) for c, tf in PEAK_TFLOPS.items()}},
        "reference": {"work": work, "ours_flops": ours, "stock_flops": stock,
                      "seconds_at_peak": {chip: {"ours": ours / (tf * 1e12), "stock": stock / (tf * 1e12)}
                                          for chip, tf in PEAK_TFLOPS.items()}},
    }


def bench_vae(args) -> list[dict]:
    rows = []
    for chunk in args.vae_chunks:
        spec = dict(kind="vae", model=args.model, size=args.vae_size or args.size, frames=args.frames, chunk=chunk,
                    device=args.device, dtype=args.dtype, threads=args.threads, warmup=True)
        rows.append(in_subprocess(spec))
    return rows


def bench_outpaint(args) -> dict:
    common = dict(model=args.model, size=args.size, frames=args.frames, steps=args.steps, device=args.device,
                  dtype=args.dtype, threads=args.threads, channels_last=args.channels_last, compile=args.compile)
    out: dict = {"runs": []}
    # Equal settings: guidance on every step, no regret, no LoRA; the stock pipeline has neither.
    for kind in ("ours", "stock"):
        out["runs"].append(in_subprocess(dict(common, kind=kind, guidance_steps=args.steps, regret_repeats=0)))
    out["ab"] = in_subprocess(dict(common, kind="ab", repeats=args.ab_repeats))
    if not args.no_calls:
        out["calls"] = in_subprocess(dict(common, kind="calls", repeats=args.call_repeats, guided=[False, True],
                                          channels_last_ab=True, warmup=True))
    long_model = args.long_model
    out["long"] = []
    for frames in (16, args.long_frames):
        spec = dict(common, kind="ours", model=long_model, frames=frames, steps=1, guidance_steps=0, regret_repeats=0)
        out["long"].append(in_subprocess(spec))
    if args.growth:
        # 32 frames is the motion module's limit: the stock pipeline cannot take more in one call.
        for kind in ("ours", "stock"):
            for frames in (16, 32):
                spec = dict(common, kind=kind, frames=frames, steps=1, guidance_steps=1, regret_repeats=0)
                out.setdefault("growth", []).append(in_subprocess(spec))
    return out


def bench_adapt(args) -> list[dict]:
    rows = []
    for ckpt in (True, False):
        spec = dict(kind="adapt", size=args.size, steps=args.adapt_steps, warmup=1, checkpointing=ckpt,
                    device=args.device, dtype=args.dtype, threads=args.threads)
        rows.append(in_subprocess(spec))
    return rows


def bench_attn(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "attention.json"
        cmd = [sys.executable, str(SCRIPTS / "bench_attention.py"), "--sizes", *args.attention_sizes, "--frames", "1",
               "--repeats", "4", "--device", args.device, "--json", str(path)]
        print("  attention layer ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        return json.loads(path.read_text())


# ----------------------------------------------------------------------------- report


def outpaint_tables(res: dict, flops: dict | None, args) -> str:
    ours, stock = res["runs"]
    lines = [
        f"Equal settings: {ours['frames']} frames, canvas {ours['canvas']}, {ours['steps']} steps, guidance 7.5 on every "
        f"step, no regret, no LoRA, {ours['dtype']} on {ours['device']}.",
        "",
        "| run | UNet calls | s/call (guided) | sampling s | total s | models GiB | peak GiB | work MiB | GFLOP/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    per_call = (flops or {}).get("per_call", {}).get(ours["canvas"], {}) if ours["model"] == "fullsize" else {}
    gflop = per_call.get("guided")
    for r in (ours, stock):
        rate = gflop / r["call_s_guided"] / 1e9 if gflop and r["call_s_guided"] else None
        lines.append(f"| {r['name']} | {r['unet_calls']} | {_fmt(r['call_s_guided'])} | {_fmt(r['calls_s'], '.1f')} | "
                     f"{_fmt(r['total_s'], '.1f')} | {_gib(r['models_bytes'])} | {_gib(r['peak_bytes'])} | "
                     f"{_mib(r['work_bytes'])} | {_fmt(rate, '.1f')} |")
    ratio = lambda a, b: None if not a or not b else a / b  # noqa: E731
    lines += ["", f"ours / stock: per UNet call {_fmt(ratio(ours['call_s_guided'], stock['call_s_guided']), '.3f')}x, "
              f"total {_fmt(ratio(ours['total_s'], stock['total_s']), '.3f')}x, "
              f"peak {_fmt(ratio(ours['peak_bytes'], stock['peak_bytes']), '.3f')}x, "
              f"work memory {_fmt(ratio(ours['work_bytes'], stock['work_bytes']), '.3f')}x"]
    ab = res.get("ab")
    if ab:
        s_ab = ab["seconds"]
        r_ab = ratio(s_ab["ours"], s_ab["stock"])
        lines += ["", f"Per guided call, alternating in one process on the same modules (median of {ab['repeats']} each): "
                  f"ours {_fmt(s_ab['ours'])} s, stock {_fmt(s_ab['stock'])} s -> ours / stock {_fmt(r_ab, '.3f')}x "
                  "(the end-to-end runs above are separate processes, one after the other, so load drifts between them)."]
        res["ab_ratio"] = r_ab
    calls = res.get("calls")
    if calls:
        s = calls["seconds"]
        lines += ["", f"Per-call seconds of our denoiser, one {calls['frames']}-frame window, median of {calls['repeats']}:",
                  "", "| variant | unguided (batch 1) | guided (batch 2) |", "| --- | --- | --- |"]
        rate = lambda v, k: None if not per_call.get(k) or not s.get(f"{v}_{k}") else per_call[k] / s[f"{v}_{k}"] / 1e9  # noqa: E731
        lines[-2:] = ["| variant | unguided (batch 1) s | guided (batch 2) s | GFLOP/s unguided / guided |", "| --- | --- | --- | --- |"]
        for v in ("plain", "channels_last", "lora"):
            lines.append(f"| {v} | {_fmt(s.get(f'{v}_unguided'))} | {_fmt(s.get(f'{v}_guided'))} | "
                         f"{_fmt(rate(v, 'unguided'), '.1f')} / {_fmt(rate(v, 'guided'), '.1f')} |")
        work, _ = reference_work()
        tg, tu = s.get("lora_guided"), s.get("lora_unguided")
        if tg and tu:
            est = ours["other_s"] + work["guided_calls"] * tg + (work["unet_calls"] - work["guided_calls"]) * tu
            st = stock["other_s"] + work["steps"] * stock["call_s_guided"]
            lines += ["", f"Reference sampling at this canvas (extrapolated from the per-call times above, LoRA attached): "
                      f"{work['unet_calls']} UNet calls ({work['guided_calls']} guided) -> ours ~{est:.0f} s; "
                      f"stock pipeline at {work['steps']} guided steps ~{st:.0f} s."]
            res["extrapolated"] = {"ours_reference_s": est, "stock_25_steps_s": st, "work": work}
    long = res.get("long", [])
    if len(long) == 2:
        a, b = long
        lines += ["", f"Long clip ({a['model']} models, 1 step, windows of 16 stride 4):", "",
                  "| frames | windows | UNet calls | total s | models MiB | peak MiB | work MiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in long:
            lines.append(f"| {r['frames']} | {r['windows']} | {r['unet_calls']} | {r['total_s']:.1f} | "
                         f"{_mib(r['models_bytes'])} | {_mib(r['peak_bytes'])} | {_mib(r['work_bytes'])} |")
        pr = ratio(b["peak_bytes"], a["peak_bytes"])
        wr = ratio(b["work_bytes"], a["work_bytes"])
        lines += ["", f"peak ratio {b['frames']}/{a['frames']} frames: {_fmt(pr, '.3f')}x "
                  f"({'within' if pr is not None and pr <= 1.3 else 'OVER'} the 1.3x bound); work-memory ratio {_fmt(wr, '.3f')}x"]
        res["long_ratio"] = {"peak": pr, "work": wr}
    growth = res.get("growth")
    if growth:
        lines += ["", "Frames in one run, 1 guided step (ours: windows of 16; stock: all frames in one call):", "",
                  "| run | frames | UNet calls | total s | peak GiB | work MiB |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {r['frames']} | {r['unet_calls']} | {r['total_s']:.1f} | {_gib(r['peak_bytes'])} | "
                  f"{_mib(r['work_bytes'])} |" for r in growth]
    return "\n".join(lines)


def vae_table(rows: list[dict]) -> str:
    lines = ["| canvas | frames | frames per VAE call | decode s | GFLOP/s | models MiB | peak MiB | work MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rate = r["gflop_per_frame"][r["canvas"]] * r["frames"] / r["decode_s"]
        lines.append(f"| {r['canvas']} | {r['frames']} | {r['chunk']} | {r['decode_s']:.1f} | {rate:.1f} | "
                     f"{_mib(r['models_bytes'])} | {_mib(r['peak_bytes'])} | {_mib(r['work_bytes'])} |")
    if rows:
        lines += ["", "VAE decode per frame: " + ", ".join(f"{k} {v:.0f} GFLOP" for k, v in rows[0]["gflop_per_frame"].items())]
    return "\n".join(lines)


def flops_table(res: dict) -> str:
    lines = ["| canvas | frames | unguided TFLOP | guided TFLOP |", "| --- | --- | --- | --- |"]
    for canvas, r in res["per_call"].items():
        lines.append(f"| {canvas} | 16 | {r['unguided'] / 1e12:.2f} | {r['guided'] / 1e12:.2f} |")
    ref = res["reference"]
    w = ref["work"]
    lines += ["", f"Reference sampling at 512x1024 ({w['unet_calls']} calls, {w['guided_calls']} guided): "
              f"ours {ref['ours_flops'] / 1e15:.2f} PFLOP; stock pipeline at {w['steps']} guided steps "
              f"{ref['stock_flops'] / 1e15:.2f} PFLOP. At 100% of peak: "
              + "; ".join(f"{chip} ours {v['ours']:.1f} s / stock {v['stock']:.1f} s" for chip, v in ref["seconds_at_peak"].items())]
    lines += ["", "| adaptation step (16 frames) | grad ckpt on TFLOP | grad ckpt off TFLOP |", "| --- | --- | --- |"]
    for canvas, r in res["adapt_step"].items():
        lines.append(f"| {canvas} | {r[True] / 1e12:.2f} | {r[False] / 1e12:.2f} |")
    ar = res["adapt_reference"]
    lines += ["", f"1000 adaptation steps at 512x512 (grad ckpt on): {ar['flops'] / 1e15:.2f} PFLOP; at 100% of peak "
              + "; ".join(f"{chip} {v:.0f} s" for chip, v in ar["seconds_at_peak"].items())
              + f". Published 309 s (A100) = {ar['flops'] / 309 / 1e12:.0f} TFLOP/s achieved."]
    return "\n".join(lines)


def adapt_table(rows: list[dict], flops: dict | None) -> str:
    lines = ["| grad ckpt | canvas | frames | precision | s/step | 1000 steps s (extrapolated) | models GiB | peak GiB | "
             "work GiB | TFLOP/step | GFLOP/s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        step = (flops or {}).get("adapt_step", {}).get(r["canvas"], {}).get(r["checkpointing"])
        lines.append(f"| {'on' if r['checkpointing'] else 'off'} | {r['canvas']} | {r['frames']} | {r['precision']} | "
                     f"{r['s_per_step']:.1f} | {1000 * r['s_per_step']:.0f} | {_gib(r['models_bytes'])} | "
                     f"{_gib(r['peak_bytes'])} | {_gib(r['work_bytes'])} | {_fmt(step and step / 1e12)} | "
                     f"{_fmt(step and step / r['s_per_step'] / 1e9, '.1f')} |")
    lines += ["", f"s/step: mean of {rows[0]['steps']} measured steps after {rows[0]['warmup']} warmup step(s) "
              "(motia.adapt's training_batch / diffusion_loss / optimizer_step through scripts/bench_adapt.py)."]
    return "\n".join(lines)


def attention_table(res: dict) -> str:
    from bench_attention import table

    return table(res["rows"])


def machine() -> dict:
    import platform

    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    try:
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        info["mem_gib"] = round(next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal")) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench", nargs="?", choices=["adapt", "outpaint", "attention", "vae", "flops", "all"], default="all")
    p.add_argument("--model", choices=["fullsize", "tiny"], default="fullsize", help="tiny: a quick check of the plumbing")
    p.add_argument("--size", type=int, default=64, help="source side in pixels; the canvas is size x 2*size (512 = reference)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="sampling steps actually run (25 = reference)")
    p.add_argument("--adapt-steps", type=int, default=2, help="measured training steps (after 1 warmup)")
    p.add_argument("--long-frames", type=int, default=256)
    p.add_argument("--long-model", choices=["tiny", "fullsize"], default="tiny")
    p.add_argument("--growth", action="store_true", help="also run ours and the stock pipeline at 16 and 32 frames, 1 step")
    p.add_argument("--call-repeats", type=int, default=1)
    p.add_argument("--ab-repeats", type=int, default=6, help="alternating ours/stock guided calls in one process")
    p.add_argument("--no-calls", action="store_true", help="skip the per-call variants (channels-last, LoRA)")
    p.add_argument("--vae-chunks", type=int, nargs="+", default=[16, 8, 4])
    p.add_argument("--vae-size", type=int, default=None, help="source side for the vae benchmark (default --size)")
    p.add_argument("--attention-sizes", nargs="+", default=["512x1024"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--channels-last", action="store_true", help="channels-last UNet/ControlNet weights in the outpaint runs")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet's forward in the outpaint runs")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="write all numbers here")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.case:
        print(RESULT_TAG + json.dumps(run_case(json.loads(args.case)), default=str), flush=True)
        return 0

    info = machine()
    print(f"machine: {info}", file=sys.stderr, flush=True)
    todo = ["flops", "vae", "outpaint", "adapt", "attention"] if args.bench == "all" else [args.bench]
    results: dict = {"machine": info, "args": vars(args)}
    report = []
    for name in todo:
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if name == "flops":
            results["flops"] = bench_flops(args)
            report += ["## FLOPs of one UNet + ControlNet call", "", flops_table(results["flops"])]
        elif name == "vae":
            results["vae"] = bench_vae(args)
            report += ["## VAE decode, chunked vs all at once", "", vae_table(results["vae"])]
        elif name == "outpaint":
            results["outpaint"] = bench_outpaint(args)
            report += ["## Outpainting: ours vs stock diffusers", "", outpaint_tables(results["outpaint"], results.get("flops"), args)]
        elif name == "adapt":
            results["adapt"] = bench_adapt(args)
            report += ["## Adaptation", "", adapt_table(results["adapt"], results.get("flops"))]
        elif name == "attention":
            results["attention"] = bench_attn(args)
            report += ["## Window attention (one top-block layer)", "", attention_table(results["attention"])]
        report.append("")
        print(f"   {name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if args.json:  # after every sub-benchmark, so a late failure keeps the earlier numbers
            from motia.utils import atomic_path

            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print("\n".join(report))
    if args.json:
        from motia.utils import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
