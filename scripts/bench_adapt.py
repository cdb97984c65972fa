"""Benchmark adaptation: seconds per training step and peak memory.

Two modes, both timing the training step exactly as ``motia.adapt`` runs it:

* a job config (default): the real ``adapt()`` on the config's models and clip,
  timed from its step callback after ``--warmup`` steps::

      python scripts/bench_adapt.py --config configs/tiny.yaml --steps 10

* ``--fullsize``: the full SD1.5 UNet + AnimateDiff v2 motion modules + ControlNet
  architecture with random weights (no downloads), random latents instead of the VAE
  and random 77x768 text embeddings, at ``--size`` pixels and ``--frames`` frames, with
  adapt's own ``training_batch`` / ``diffusion_loss`` / ``optimizer_step``::

      python scripts/bench_adapt.py --fullsize --size 64 --steps 2 --warmup 1          # CPU
      python scripts/bench_adapt.py --fullsize --size 512 --steps 10 --flops            # GPU

The recipe (LoRA targets/rank, lr, gradient checkpointing, mixed precision, ...) is the
config's ``adapt`` section (``configs/base.yaml`` for ``--fullsize``) plus overrides.
Peak memory is CUDA max allocated on a GPU, the process's peak RSS on CPU. ``--flops`` (fullsize)
counts the executed FLOPs of one step (torch FlopCounterMode, recomputation included).
Prints one markdown table row; ``--json PATH`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from motia import adapt as A  # noqa: E402
from motia.config import load_config  # noqa: E402
from motia.utils import peak_memory_bytes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HEADER = "| mode | device | canvas | frames | precision | grad ckpt | s/step | peak GB | TFLOP/step | TFLOP/s |"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="job config (default: configs/tiny.yaml, or configs/base.yaml with --fullsize)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. adapt.gradient_checkpointing=false")
    p.add_argument("--steps", type=int, default=5, help="measured steps")
    p.add_argument("--warmup", type=int, default=2, help="steps run before measuring (at least 1)")
    p.add_argument("--fullsize", action="store_true", help="full-size SD1.5 architecture with random weights")
    p.add_argument("--size", type=int, default=64, help="--fullsize: square canvas in pixels (multiple of 8)")
    p.add_argument("--frames", type=int, default=None, help="--fullsize: frames per step (default adapt.frames)")
    p.add_argument("--device", default=None, help="override models.device (cpu, cuda)")
    p.add_argument("--flops", action="store_true", help="--fullsize: also count the FLOPs of one step")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    return args


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def bench_config(cfg, args) -> dict:
    """Time the real adapt() through its step callback."""
    from motia.models import load_components
    from motia.planning import load_clip

    cfg = cfg.model_copy(deep=True)
    cfg.adapt.steps = args.warmup + args.steps
    cfg.adapt.checkpoint_every = 10**9
    clip = load_clip(cfg)
    accelerator = A.make_accelerator(cfg)
    components = load_components(cfg.models, device=accelerator.device)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        A.adapt(cfg, components, clip, out, accelerator=accelerator, progress=False,
                callback=lambda d: stamps.append(time.perf_counter()))
    h, w = A.crop_to_multiple(clip.frames[:1], 8).shape[-2:]
    return {
        "mode": f"config {Path(args.config).name}", "device": str(accelerator.device), "canvas": f"{h}x{w}",
        "frames": min(cfg.adapt.frames, clip.num_frames), "precision": accelerator.mixed_precision,
        "grad_ckpt": cfg.adapt.gradient_checkpointing,
        "s_per_step": (stamps[-1] - stamps[args.warmup - 1]) / args.steps,
        "peak_bytes": peak_memory_bytes(accelerator.device), "flops": None,
    }


def build_fullsize(device, dtype):
    """SD1.5 UNet + motion modules v2 (32 positions) + ControlNet, random weights, frozen, on ``device``."""
    from diffusers import ControlNetModel, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with torch.device(device):  # build in place: random init of ~1.7B parameters is much faster on a GPU
        unet = UNetMotionModel.from_unet2d(
            UNet2DConditionModel(cross_attention_dim=768, sample_size=64), MotionAdapter(motion_max_seq_length=32)
        )
        controlnet = ControlNetModel(cross_attention_dim=768)
    return (unet.to(dtype).requires_grad_(False), controlnet.to(dtype).requires_grad_(False))


def bench_fullsize(cfg, args) -> dict:
    """adapt's step (training_batch, diffusion_loss, optimizer_step) on the full-size architecture."""
    from accelerate import Accelerator

    from motia import lora
    from motia.models import animatediff_scheduler, resolve_device, resolve_dtype

    if args.size % 8:
        raise SystemExit("--size must be a multiple of 8")
    a = cfg.adapt
    device = resolve_device(cfg.models.device)
    dtype = resolve_dtype(cfg.models.dtype, device)
    mp = A.resolve_mixed_precision(a.mixed_precision, device.type, cfg.models.dtype)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mp)
    unet, controlnet = build_fullsize(accelerator.device, dtype)
    if mp == "no" and dtype != torch.float32:
        unet.to(torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        lora.add_lora(unet, a.lora.targets, a.lora.rank, a.lora.alpha, a.lora.dropout)
    unet, params, optimizer, lr_scheduler = A.prepare_training(unet, controlnet, a, accelerator)
    scheduler = animatediff_scheduler()  # what load_components gives by default

    f = args.frames or a.frames
    g = torch.Generator().manual_seed(cfg.seed)
    latents = torch.randn(f, 4, args.size // 8, args.size // 8, generator=g).to(accelerator.device)  # (F, 4, h, w)
    frames = torch.rand(f, 3, args.size, args.size, generator=g)  # (F, 3, H, W)
    text = torch.randn(1, 77, 768, generator=g).to(accelerator.device)
    mask_ranges = {side: tuple(r) for side, r in a.mask.model_dump().items()}
    batch_args = dict(window=f, batch_size=a.batch_size, mask_ranges=mask_ranges,
                      num_train_timesteps=1000, generator=g, device=accelerator.device)

    def step():
        batch = A.training_batch(latents, frames, **batch_args)
        loss = A.diffusion_loss(unet, controlnet, batch, text, scheduler)
        accelerator.backward(loss)
        A.optimizer_step(accelerator, params, optimizer, lr_scheduler, a.grad_clip)
        return loss.item()  # syncs the device, as adapt's loop does

    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    peak = peak_memory_bytes(accelerator.device)
    return {
        "mode": "fullsize SD1.5+MM+CN", "device": str(accelerator.device), "canvas": f"{args.size}x{args.size}",
        "frames": f, "precision": mp if mp != "no" else str(dtype).removeprefix("torch."),
        "grad_ckpt": a.gradient_checkpointing, "s_per_step": seconds, "peak_bytes": peak,
        "flops": count_flops(step) if args.flops else None,
    }


def row(r: dict) -> str:
    tflop = r["flops"] / 1e12 if r["flops"] else None
    cells = [r["mode"], r["device"], r["canvas"], r["frames"], r["precision"], "on" if r["grad_ckpt"] else "off",
             f"{r['s_per_step']:.3f}", f"{r['peak_bytes'] / 2**30:.2f}",
             f"{tflop:.3g}" if tflop else "-", f"{tflop / r['s_per_step']:.3g}" if tflop else "-"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.config = args.config or str(REPO / "configs" / ("base.yaml" if args.fullsize else "tiny.yaml"))
    overrides = list(args.overrides) + ([f"models.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    result = bench_fullsize(cfg, args) if args.fullsize else bench_config(cfg, args)
    result.update(torch=torch.__version__, threads=torch.get_num_threads(), steps=args.steps, warmup=args.warmup)
    if torch.cuda.is_available() and result["device"].startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    print(row(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
