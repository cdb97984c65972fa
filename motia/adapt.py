"""Input-specific adaptation: train the clip's LoRA by pseudo-outpainting the clip itself.

``adapt`` is one training loop that reads top to bottom (setup, data, model,
optimizer, loop, teardown); the pieces a benchmark or a test needs on their own are
small functions beside it: ``sample_window``, ``training_batch`` (all the step's
randomness), ``diffusion_loss`` (the forward pass) and ``optimizer_step``.

What one step does (DESIGN.md "Adaptation"): take a random window of
``adapt.frames`` frames of the cached latents, draw one border mask for the whole
window, give the frozen ControlNet the window's pixels with that border set to -1,
noise the latents at a timestep uniform in [0, 1000) and regress the noise
(epsilon MSE on the whole latent). Only the LoRA trains.

Decisions worth knowing:

* The latents are the VAE posterior *mean* times ``scaling_factor``, encoded once
  and cached in ``<out_dir>/latents.pt`` (keyed by a hash of the frames and the
  VAE), so a run and its resume see the same data; SD's own training samples the
  posterior, whose spread is tiny for SD's VAE.
* A clip shorter than ``adapt.frames`` trains on all of its frames every step.
* A clip with hard cuts (``video.shots``, ``motia.planning.plan_shots``) trains on windows
  within one shot: each step first draws a shot, with a chance proportional to its
  length (a frame uniform over the clip; the shot holding it), then every sample of
  the step's batch takes its window inside that shot, so the batch's windows have one
  length. A shot shorter than ``adapt.frames`` gives its whole length (a shorter
  window, as a short clip does). A one-shot clip draws no shot: its draws are exactly
  those of a clip without cuts. The adapter's metadata records the shots.
* Frames are centre-cropped to a multiple of the VAE factor (8) before encoding;
  the masks are drawn at that pixel size.
* A run that outpaints coarse-to-fine (``outpaint.refine``) also trains on native-scale
  crops (``adapt.crops: auto``, ``motia.crops``): each step first draws whether it is a crop
  step (chance ``adapt.crop_share``); a crop step takes its window as any step, then a box of
  the refine stage's tile size (``sample.tiles.size``) on the latent grid of the source at
  the refine scale, the same for every frame of the window, and its border mask within the
  box. Those latents are cached in ``latents_refine.pt``. A run without crops draws exactly
  as before they existed. The adapter's metadata and summary record the crops (or None).
* Every random draw (window, mask, timestep, noise) comes from one CPU
  ``torch.Generator`` seeded with ``cfg.seed`` (plus the process index), whose state
  is part of every checkpoint: a resumed run ends with the same adapter as an
  uninterrupted one.
* ``adapt.init_lora`` starts from another LoRA's weights (a motia adapter, a diffusers
  or an AnimateDiff motion LoRA) instead of the fresh gaussian init: its layers and
  rank replace ``adapt.lora.targets``/``rank``, ``adapt.lora.alpha / rank`` stays the
  training's delta multiplier, and the trained adapter records the file it came from.
* Checkpoints hold the LoRA weights only (the base is frozen and comes from the
  model files), the optimizer, LR scheduler and generator states, a ``state.json``
  with the step and the resolved config; ``checkpoints/latest.json`` points to the
  newest one. The final step is checkpointed too, so ``--resume`` with a larger
  ``adapt.steps`` continues a finished run.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from motia.config import JobConfig, dump_config
from motia.errors import ConfigError, InputError
from motia.geometry import control_video, sample_border_mask
from motia.runs import check_adapter_folder
from motia.utils import atomic_path, check_free_space, peak_memory_bytes
from motia.vae import encode_frames
from motia.video import hash_unit_frames, unit_frames

logger = logging.getLogger(__name__)

LATENTS_FILE = "latents.pt"
ADAPTER_FILE = "adapter.safetensors"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "adapt_summary.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
_CKPT_STATE = "state.json"
_CKPT_LORA = "lora.safetensors"
_CKPT_RNG = "generators.pt"

# adapt.* keys that may change between a run and its resume; everything else must match.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "output_dir", "mixed_precision"}
# adapt.* keys that count as what they resolve to (``_fingerprint``).
_RESOLVED = {"crops", "crop_share"}


# ----------------------------------------------------------------------------- small pieces


class TrainRNG:
    """The run's one generator per process (seeded ``seed + process index``).

    Checkpoints hold every process's state (gathered to the main process, which
    alone writes the checkpoint), so each rank resumes its own stream of windows,
    masks and noise rather than all ranks taking rank 0's.
    """

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(int(seed))

    def save_all(self, folder: Path | None) -> None:
        """Gather every process's generator state; the main process (``folder`` not None) writes them."""
        from accelerate.utils import gather_object

        states = gather_object([self.generator.get_state()])
        if folder is not None:
            torch.save(list(states), Path(folder) / _CKPT_RNG)

    def load_own(self, folder: Path, process_index: int, num_processes: int) -> None:
        states = torch.load(Path(folder) / _CKPT_RNG, weights_only=True)
        if len(states) != num_processes:
            raise ConfigError(
                f"cannot resume from {folder}: it was saved by {len(states)} process(es), this run has "
                f"{num_processes}; resume with --num_processes {len(states)}"
            )
        self.generator.set_state(states[process_index])


def launcher_mixed_precision() -> str | None:
    """What ``accelerate launch`` asked for (``--mixed_precision`` or the accelerate config file), if launched.

    The launcher always exports ``ACCELERATE_MIXED_PRECISION``, "no" when neither the
    flag nor a config file names one, so its "no" cannot be told from its default.
    """
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    return value or None


def resolve_mixed_precision(setting: str, device_type: str, model_dtype: str = "auto", launcher: str | None = None) -> str:
    """accelerate's mixed_precision for ``adapt.mixed_precision`` on this device.

    "auto": the launcher's fp16/bf16 when ``accelerate launch`` asked for one
    (``launcher``, see ``launcher_mixed_precision``); otherwise none on CPU and on
    CUDA the half type the models are stored in (fp16 unless ``models.dtype`` is
    bf16), as the reference trained in fp16. The launcher's "no" is also its
    default, so it does not turn the CUDA default off: set ``adapt.mixed_precision: no``.
    An explicit setting wins over the launcher (``make_accelerator`` warns when they differ).
    """
    if setting == "auto" and launcher not in (None, "no"):
        if launcher not in ("fp16", "bf16"):
            raise ConfigError(
                f"accelerate launch --mixed_precision {launcher} is not supported for adaptation; "
                "launch with fp16 or bf16, or set adapt.mixed_precision"
            )
        if launcher == "fp16" and device_type != "cuda":
            raise ConfigError("accelerate launch --mixed_precision fp16 needs a CUDA device; launch with bf16 or no on CPU")
        return launcher
    if setting == "auto":
        if device_type != "cuda":
            return "no"
        return "bf16" if model_dtype == "bf16" else "fp16"
    if setting == "fp16" and device_type != "cuda":
        raise ConfigError("adapt.mixed_precision=fp16 needs a CUDA device; use 'no' (or 'bf16') on CPU")
    return setting


def crop_to_multiple(frames: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop (F, C, H, W) so H and W are multiples of ``multiple`` (the latent grid)."""
    h, w = frames.shape[-2:]
    ch, cw = h - h % multiple, w - w % multiple
    if ch == 0 or cw == 0:
        raise InputError(f"the clip's frames are {h}x{w} pixels; adaptation needs at least {multiple}x{multiple}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return frames[..., top : top + ch, left : left + cw]


def cached_latents(path: Path, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Latents from ``path`` if it was written for ``key``, else ``compute()`` them and write it (atomically)."""
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("key") == key:
                return data["latents"]
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
            logger.warning("ignoring unreadable latent cache %s", path)
    latents = compute()
    with atomic_path(path) as tmp:
        torch.save({"key": key, "latents": latents}, tmp)
    return latents


def latent_key(frames: torch.Tensor, vae_source: str, vae_dtype: torch.dtype) -> str:
    """Cache key of a clip's latents: its exact pixels, the VAE, the VAE's precision."""
    h = hashlib.sha256()
    h.update(f"{tuple(frames.shape)}|{vae_source}|{vae_dtype}".encode())
    hash_unit_frames(h, frames)
    return h.hexdigest()


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompt: str, device) -> torch.Tensor:
    """(1, 77, D) float32 CLIP hidden states of ``prompt``, padded to the tokenizer's max length."""
    ids = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(device))[0].float()


def sample_window(num_frames: int, length: int, generator: torch.Generator, offset: int = 0) -> tuple[int, int]:
    """A random [start, end) of ``length`` frames within ``[offset, offset + num_frames)`` (a shot; by default
    the clip); the whole range (no draw) when it is not longer."""
    if num_frames <= length:
        return offset, offset + num_frames
    start = offset + int(torch.randint(0, num_frames - length + 1, (1,), generator=generator))
    return start, start + length


def sample_shot(shots: Sequence[int], num_frames: int, generator: torch.Generator) -> tuple[int, int]:
    """One shot's [start, end), drawn with a chance proportional to its length; the whole clip (no draw) for one shot.

    ``shots`` are the shots' sorted first frames from 0 (``motia.shots``).
    """
    if len(shots) <= 1:
        return 0, num_frames
    frame = int(torch.randint(0, num_frames, (1,), generator=generator))
    i = bisect.bisect_right(shots, frame) - 1  # the shot holding that frame
    return int(shots[i]), int(shots[i + 1]) if i + 1 < len(shots) else num_frames


def training_batch(
    latents: torch.Tensor,
    frames: torch.Tensor,
    *,
    window: int,
    batch_size: int,
    mask_ranges: Mapping[str, tuple[float, float]],
    num_train_timesteps: int,
    generator: torch.Generator,
    device=None,
    shots: Sequence[int] = (0,),
    crops=None,
) -> dict[str, torch.Tensor]:
    """Draw one step's data: a shot (``sample_shot``), per sample a window in it and a border mask; then timesteps and noise.

    ``latents`` (F, 4, h, w) and ``frames`` (F, 3, H, W) (uint8, or float in [0, 1]) are the whole clip,
    ``shots`` its shots' first frames (one shot, ``(0,)``: no shot is drawn). Returns
    ``latents`` (B, 4, f, h, w), ``control`` (B*f, 3, H, W) with the border = -1, ``known``
    (B, H, W), ``t`` (B,), ``noise`` (B, 4, f, h, w) and ``windows`` (B, 2) (each sample's
    [start, end)), on ``device``. The order of draws is fixed, so the generator state alone
    decides the batch.

    ``crops`` (a ``motia.crops.CropSource``, or None): the step first draws whether it trains
    on a crop (chance ``crops.share``); a crop step draws, per sample after its window, a
    tile-sized box on the latent grid of the refine-scale frames (the same for every frame of
    the window), and its mask within the box, then trains on the box's latents and pixels
    (H, W are then the box's); its batch also holds ``boxes`` (B, 4) (top, left, bottom, right
    pixels). Without ``crops`` nothing more is drawn than before crops existed.
    """
    crop = crops is not None and crops.is_crop_step(generator)
    lat, ctl, known, spans, boxes = [], [], [], [], []
    first, end = sample_shot(shots, frames.shape[0], generator)
    for _ in range(batch_size):
        s, e = sample_window(end - first, window, generator, offset=first)
        if crop:
            box = crops.box(generator)
            x0, pixels = crops.take(s, e, box)  # (f, 4, h, w), (f, 3, H, W) of the box
            boxes.append(box)
        else:
            x0, pixels = latents[s:e], frames[s:e]
        mask = sample_border_mask(*pixels.shape[-2:], mask_ranges, generator)  # (H, W), 1 = known
        lat.append(x0)  # (f, 4, h, w)
        ctl.append(control_video(unit_frames(pixels), mask))  # (f, 3, H, W)
        known.append(mask)
        spans.append((s, e))
    x0 = torch.stack(lat).permute(0, 2, 1, 3, 4)  # (B, 4, f, h, w)
    t = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)  # (B, 4, f, h, w)
    batch = {"latents": x0, "control": torch.cat(ctl), "known": torch.stack(known), "t": t, "noise": noise,
             "windows": torch.tensor(spans)}
    if crop:
        batch["boxes"] = torch.tensor(boxes)
    return {k: v.to(device) for k, v in batch.items()}


def diffusion_loss(
    unet, controlnet, batch: Mapping[str, torch.Tensor], text: torch.Tensor, noise_scheduler
) -> torch.Tensor:
    """Epsilon-prediction MSE of the UNet (with the frozen ControlNet's residuals) on one batch.

    ``text`` is (1, 77, D) (or (B, 77, D)); UNetMotionModel wants it once per frame, batch-major.
    The ControlNet runs per frame under no_grad in its own dtype.
    """
    x0, noise, t = batch["latents"], batch["noise"], batch["t"]
    B, C, f, h, w = x0.shape
    noisy = noise_scheduler.add_noise(x0, noise, t)  # (B, 4, f, h, w)
    text_f = text.expand(B, -1, -1).repeat_interleave(f, dim=0)  # (B*f, 77, D)
    cn_dtype = next(controlnet.parameters()).dtype
    with torch.no_grad():
        down, mid = controlnet(
            noisy.permute(0, 2, 1, 3, 4).reshape(B * f, C, h, w).to(cn_dtype),  # (B*f, 4, h, w)
            t.repeat_interleave(f),
            encoder_hidden_states=text_f.to(cn_dtype),
            controlnet_cond=batch["control"].to(cn_dtype),
            return_dict=False,
        )
    pred = unet(
        noisy, t, encoder_hidden_states=text_f,
        down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
    )[0]  # (B, 4, f, h, w)
    return F.mse_loss(pred.float(), noise.float())


def optimizer_step(accelerator, params, optimizer, lr_scheduler, grad_clip: float) -> None:
    """Clip, step, schedule, clear: the update after ``accelerator.backward(loss)``."""
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def make_optimizer(params, a) -> torch.optim.Optimizer:
    """AdamW (8-bit from bitsandbytes when ``adapt.use_8bit_adam``) over the LoRA parameters."""
    if a.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError(
                "adapt.use_8bit_adam=true needs bitsandbytes (pip install bitsandbytes); "
                "or set adapt.use_8bit_adam=false"
            ) from None
        return bnb.optim.AdamW8bit(params, lr=a.lr, weight_decay=a.weight_decay)
    return torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)


class _Trainee(torch.nn.Module):
    """The UNet as the module one run hands to accelerate.

    accelerate marks what it prepared (and skips preparing a marked module again)
    and wraps its forward (autocast); a fresh wrapper per run keeps both off the
    UNet, which a ``ModelCache`` hands to the next clip's run.
    """

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)


def prepare_training(unet, controlnet, a, accelerator, solo: bool = False):
    """Freeze the base, make the optimizer and LR schedule, hand them to accelerate.

    The LoRA must already be attached (``lora.add_lora``). Returns
    ``(model, params, optimizer, lr_scheduler)``: ``model`` calls the UNet under the
    accelerator's mixed precision, in DDP when several processes train it together.
    ``solo``: this process trains alone whatever the launch (no DDP), and the optimizer
    and schedule are prepared one by one: the schedule steps once per step and is not
    registered on the accelerator (a solo run writes no accelerate checkpoints).
    """
    from accelerate.scheduler import AcceleratedScheduler
    from diffusers.optimization import get_scheduler

    if a.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    controlnet.requires_grad_(False).eval()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, a)
    lr_scheduler = get_scheduler(
        a.lr_scheduler, optimizer, num_warmup_steps=a.warmup_steps, num_training_steps=a.steps
    )
    if not solo:
        model, optimizer, lr_scheduler = accelerator.prepare(_Trainee(unet), optimizer, lr_scheduler)
        return model, params, optimizer, lr_scheduler
    # evaluation_mode=True is accelerate's public way to get mixed precision without the DDP wrapper:
    # the gradients stay on this rank. Training is unaffected (it neither freezes nor calls eval()).
    # No device placement: the models already sit on the accelerator's device, and a multi-process CPU
    # launch names it "cpu:0", to which .to() copies every weight (and the copies' alignment shifts float
    # results in the last bits, so a clip's adapter would depend on the launch).
    model = accelerator.prepare_model(_Trainee(unet), device_placement=False, evaluation_mode=True)
    optimizer = accelerator.prepare_optimizer(optimizer)
    lr_scheduler = AcceleratedScheduler(lr_scheduler, optimizer, step_with_optimizer=True, split_batches=True)
    return model, params, optimizer, lr_scheduler


# ----------------------------------------------------------------------------- checkpoints


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model, path: Path) -> None:
    """Copy saved LoRA weights into the attached (trainable) parameters in place, so the optimizer keeps them."""
    import safetensors.torch

    saved = safetensors.torch.load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise InputError(f"{path}: the checkpoint's LoRA does not match this run's (targets or rank changed)")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])


def _fingerprint(cfg: JobConfig, clip_key: str, init_sha256: str | None = None, shots: Sequence[int] = (0,),
                 crops: dict | None = None) -> dict:
    """What must match for a resume to continue the same run (``init_sha256``: the ``adapt.init_lora`` file's hash).

    The shots count as resolved, not as ``video.shots`` says: they decide the windows drawn,
    and a one-shot clip draws as before shots existed, so its older checkpoints still resume.
    The crops likewise (``motia.crops.plan_crops``: tile size, refine scale, share), not as
    ``adapt.crops``/``crop_share`` say: a run without crops draws as before they existed.
    """
    d = cfg.to_dict()
    found = {
        "seed": d["seed"], "prompt": d["prompt"], "models": d["models"],
        "video": {k: v for k, v in d["video"].items() if k != "shots"},
        "adapt": {k: v for k, v in d["adapt"].items() if k not in _RESUMABLE_CHANGES | _RESOLVED},
        "clip": clip_key,
    }
    if init_sha256 is not None:
        found["init_lora_sha256"] = init_sha256
    if len(shots) > 1:
        found["shots"] = list(shots)
    if crops is not None:
        found["crops"] = dict(crops)
    return found


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')} (checkpoint {a!r}, now {b!r})"]


def latest_checkpoint(ckpt_root: Path) -> tuple[Path, dict] | None:
    """The checkpoint folder ``latest.json`` points to, with its ``state.json``; None if there is none."""
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    try:
        folder = ckpt_root / json.loads(pointer.read_text())["path"]
        state = json.loads((folder / _CKPT_STATE).read_text())
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{pointer}: unreadable checkpoint pointer ({e}); delete {ckpt_root} to start over") from None
    return folder, state


def _newest_checkpoint(ckpt_root: Path) -> tuple[Path, dict] | None:
    try:
        return latest_checkpoint(ckpt_root)
    except InputError:  # a damaged pointer: nothing a fresh run could resume, so nothing to protect
        return None


def check_fresh_start(out_dir: Path, cfg: JobConfig, overwrite: bool = False) -> bool:
    """``motia.runs.check_adapter_folder`` for a run starting afresh in ``out_dir`` (its adapter or newest checkpoint).

    True when ``overwrite`` replaces another config's adapter (its files are removed before training).
    """
    newest = _newest_checkpoint(Path(out_dir) / CHECKPOINTS)
    return check_adapter_folder(out_dir, cfg, overwrite, ADAPTER_FILE, newest[0] / "config.yaml" if newest else None)


def adapt_bytes(trainable: int, a, start_step: int = 0, checkpoints: bool = True) -> int:
    """About the most bytes an adaptation from ``start_step`` adds to its folder: the adapter (fp32 LoRA) and, with
    ``checkpoints``, as many of them as are on disk at once (``keep_checkpoints`` and the one being written),
    each the LoRA, AdamW's two moments and the RNG and scheduler states."""
    adapter = 4 * trainable + (64 << 10)
    if not checkpoints:
        return adapter
    steps = set(range(start_step + a.checkpoint_every - start_step % a.checkpoint_every, a.steps + 1,
                      a.checkpoint_every)) | ({a.steps} if a.steps > start_step else set())  # fmt: skip
    return adapter + min(len(steps), a.keep_checkpoints + 1) * (12 * trainable + (256 << 10))


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def _rotate(ckpt_root: Path, keep: int, current: Path) -> None:
    """Delete all but the ``keep`` newest checkpoints (by their stored step); never the current one."""
    found = []
    for d in ckpt_root.iterdir():
        try:
            found.append((json.loads((d / _CKPT_STATE).read_text())["step"], d))
        except (OSError, ValueError, KeyError, NotADirectoryError):
            continue
    found.sort(key=lambda x: x[0], reverse=True)
    for _, d in found[keep:]:
        if d != current:
            shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------- the loop


def adapt(
    cfg: JobConfig,
    components,
    clip,
    out_dir: str | os.PathLike,
    *,
    accelerator=None,
    solo: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    shots: Sequence[int] | None = None,
) -> Path:
    """Train the clip's LoRA on ``components.unet`` and save ``<out_dir>/adapter.safetensors``; return its path.

    ``components`` is a ``motia.models`` bundle (the UNet comes back with the trained
    LoRA attached); ``clip`` a ``motia.video.Clip``; ``shots`` its shots' first frames
    (default: ``video.shots`` resolved, ``motia.planning.plan_shots``), within which the
    training windows are drawn. ``resume`` continues from the newest
    checkpoint in ``out_dir`` (the final step is checkpointed too, so a larger
    ``adapt.steps`` extends a finished run); otherwise the run starts afresh and old
    checkpoints there are removed, which ``out_dir`` holding the adapter or checkpoints
    of another config refuses unless ``overwrite`` (``motia.runs``).
    ``callback({"step", "loss", "lr"})`` observes every step (a
    KeyboardInterrupt raised there is handled like Ctrl-C: checkpoint, then re-raise).

    ``accelerator`` (``make_accelerator(cfg)`` when None) may serve many calls, one
    after the other: what a call puts on it (checkpoint hooks, the prepared model,
    optimizer and schedule, the grad scaler's state) is taken off when it returns.
    By default every process of the launch trains this clip together (DDP).
    ``solo=True``: this process trains it alone whatever the launch, as each rank of a
    batch does with its own clips: no DDP, barriers or gathers, the seed without the
    process index (the same adapter on any rank), and no checkpoints (accelerate
    writes optimizer states from the main process only), so no ``resume``.
    """
    from tqdm.auto import tqdm

    from motia import lora, lora_io
    from motia.crops import load_crops, plan_crops
    from motia.planning import plan_shots
    from motia.shots import check_shots

    a = cfg.adapt
    out_dir = Path(out_dir)
    ckpt_root = out_dir / CHECKPOINTS
    unet, controlnet, vae = components.unet, components.controlnet, components.vae

    # --- setup: check everything that can be wrong before writing anything
    if solo and resume:
        raise ValueError("adapt(solo=True) writes no checkpoints, so it cannot resume")
    if accelerator is None:
        accelerator = make_accelerator(cfg, torch.device(components.device).type)
    if not solo and accelerator.num_processes > 1 and not accelerator.split_batches:
        # Otherwise accelerate steps the LR schedule once per process each step (its data-parallel batch rule).
        raise ValueError("adapt() over several processes needs an Accelerator with split_batches=True (make_accelerator)")
    device = accelerator.device
    max_len = getattr(unet.config, "motion_max_seq_length", None)
    if max_len is not None and min(a.frames, clip.num_frames) > max_len:
        raise ConfigError(
            f"adapt.frames={a.frames} exceeds the motion module's {max_len} frames; use adapt.frames <= {max_len}"
        )
    init = init_origin = None
    if a.init_lora:  # a bad file fails here, not after encoding
        init = lora_io.read_lora(a.init_lora)
        lora.check_fits(unet, init)
        for note in init.notes:
            logger.warning("adapt.init_lora: %s", note)
        init_origin = {"path": str(init.path), "layout": init.layout, "sha256": lora_io.file_sha256(init.path)}
        logger.info("adapt.init_lora: starting from the %s LoRA %s (%d layers, rank %d); adapt.lora.targets and "
                    "adapt.lora.rank are not used", init.layout, init.path, len(init.layers),
                    max(init.ranks().values()))  # fmt: skip
    else:
        lora.resolve_targets(unet, a.lora.targets)  # a bad target pattern fails here, not after encoding
    if a.use_8bit_adam:
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], a)  # fails clearly without bitsandbytes
    shots = plan_shots(cfg, clip) if shots is None else check_shots(shots, clip.num_frames)
    main = solo or accelerator.is_main_process
    rng = TrainRNG(cfg.seed + (0 if solo else accelerator.process_index))
    together = contextlib.nullcontext if solo else accelerator.main_process_first
    started = time.perf_counter()

    # --- data: latents once (cached), the prompt once; with crops, the source at the refine scale too
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    crops = plan_crops(cfg, clip, scale, shots)  # None: trains as before crops existed
    frames = crop_to_multiple(clip.frames, scale)  # (F, 3, H, W) uint8 (or float in [0, 1]), on CPU
    vae_source = str(components.sources.get("vae", components.sources.get("base", "")))
    key = latent_key(frames, vae_source, next(vae.parameters()).dtype)
    fingerprint = _fingerprint(cfg, key, init_origin and init_origin["sha256"], shots, crops)
    found = latest_checkpoint(ckpt_root) if resume and not solo else None
    if found is not None:
        folder, state = found
        changed = _diff(state["fingerprint"], fingerprint)
        if changed:
            raise ConfigError(
                f"cannot resume from {folder}: {'; '.join(changed)}; restore these settings or run without --resume"
            )
        if int(state["step"]) > a.steps:
            raise ConfigError(
                f"cannot resume from {folder}: it is at step {state['step']}, beyond adapt.steps={a.steps}; "
                f"resume with adapt.steps >= {state['step']} or run without --resume"
            )
        replacing = False
    else:
        replacing = check_fresh_start(out_dir, cfg, overwrite)
    with together():
        latents = cached_latents(
            out_dir / LATENTS_FILE, key, lambda: encode_frames(vae, frames, a.encode_chunk, device)
        )  # (F, 4, h, w)
    latents = latents.to(device)
    crop_source = None
    if crops is not None:
        logger.info("adapt.crops: %d%% of the steps train on %d px crops of the source at %dx%d (W x H), the refine "
                    "stage's scale", round(100 * crops["share"]), crops["size"], crops["scale"][1], crops["scale"][0])
        crop_source = load_crops(crops, clip, vae, out_dir, vae_source=vae_source, chunk=a.encode_chunk,
                                 device=device, cached=cached_latents, together=together)  # fmt: skip
    text = encode_prompt(components.tokenizer, components.text_encoder, cfg.prompt, device)  # (1, 77, D)
    noise_scheduler = components.scheduler
    batch_args = dict(
        window=a.frames, batch_size=a.batch_size, num_train_timesteps=noise_scheduler.config.num_train_timesteps,
        mask_ranges={side: tuple(r) for side, r in a.mask.model_dump().items()}, generator=rng.generator,
        shots=shots, crops=crop_source,
    )

    # --- model: LoRA on the UNet, everything else frozen
    if accelerator.mixed_precision == "no" and next(unet.parameters()).dtype != torch.float32:
        unet.to(torch.float32)  # full-precision training asked for: a half base without autocast would train in half
    for m in (vae, components.text_encoder, controlnet):
        m.requires_grad_(False)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)  # peft draws the LoRA init from the global RNG: same seed, same start
        if init is None:
            targets = lora.add_lora(unet, a.lora.targets, a.lora.rank, a.lora.alpha, a.lora.dropout)
        else:  # the file's delta, trained at the configured multiplier
            targets = lora.attach_weights(unet, init, trainable=True, multiplier=a.lora.alpha / a.lora.rank,
                                          dropout=a.lora.dropout)  # fmt: skip

    with _borrowed(accelerator) as hooks, (crop_source or contextlib.nullcontext()):
        # --- optimizer and checkpoint plumbing
        model, params, optimizer, lr_scheduler = prepare_training(unet, controlnet, a, accelerator, solo=solo)

        def save_hook(models, weights, folder):
            import safetensors.torch

            safetensors.torch.save_file(_trainable_state(unet), str(Path(folder) / _CKPT_LORA))
            weights.clear()  # the frozen base is not checkpointed

        def load_hook(models, folder):
            _load_trainable_state(unet, Path(folder) / _CKPT_LORA)
            models.clear()

        if not solo:
            hooks.append(accelerator.register_save_state_pre_hook(save_hook))
            hooks.append(accelerator.register_load_state_pre_hook(load_hook))

        def save_checkpoint(step: int) -> None:
            if solo:
                return
            if not main:
                rng.save_all(None)
            else:
                folder = ckpt_root / f"step_{step:06d}"
                with atomic_path(folder) as tmp:
                    accelerator.save_state(str(tmp))
                    rng.save_all(tmp)
                    _write_json(tmp / _CKPT_STATE, {"step": step, "fingerprint": fingerprint})
                    dump_config(cfg, tmp / "config.yaml")
                _write_json(ckpt_root / LATEST, {"path": folder.name, "step": step})
                _rotate(ckpt_root, a.keep_checkpoints, folder)
            accelerator.wait_for_everyone()

        step, resumed_from = 0, None
        if found is not None:
            accelerator.load_state(str(folder))
            rng.load_own(folder, accelerator.process_index, accelerator.num_processes)
            step, resumed_from = int(state["step"]), str(folder)
            logger.info("resuming from step %d of %d (%s)", step, a.steps, folder)
        elif main:
            if resume:
                logger.warning("no checkpoint in %s: starting from step 0", ckpt_root)
            shutil.rmtree(ckpt_root, ignore_errors=True)  # a fresh run: old checkpoints would mix with its own
            if replacing:  # --overwrite over another config: its adapter must not survive next to our checkpoints
                for name in (ADAPTER_FILE, "config.yaml", SUMMARY_FILE):
                    (out_dir / name).unlink(missing_ok=True)
        log_path = out_dir / LOG_FILE
        if main:
            _trim_log(log_path, step)
            # Before the first step: an adapter and checkpoints that cannot fit refuse now, not after the training.
            check_free_space(out_dir, adapt_bytes(sum(p.numel() for p in params), a, step, checkpoints=not solo),
                             "free some space there or write elsewhere with adapt.output_dir=DIR")  # fmt: skip

        # --- loop
        bar = tqdm(total=a.steps, initial=step, desc="adapt", unit="step", disable=not (progress and main))
        window_losses: list[float] = []
        loss_value = float("nan")
        crop_steps = 0
        boundary_rng = rng.generator.get_state()  # generator state at the last completed step
        in_update = False
        loop_start, start_step = time.perf_counter(), step
        try:
            while step < a.steps:
                batch = training_batch(latents, frames, device=device, **batch_args)
                crop_steps += "boxes" in batch
                loss = diffusion_loss(model, controlnet, batch, text, noise_scheduler)
                accelerator.backward(loss)
                in_update = True
                optimizer_step(accelerator, params, optimizer, lr_scheduler, a.grad_clip)
                step += 1
                in_update = False
                boundary_rng = rng.generator.get_state()
                loss_value = loss.item()
                lr = lr_scheduler.get_last_lr()[0]
                window_losses.append(loss_value)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                if main and (step % a.log_every == 0 or step == a.steps):
                    entry = {"step": step, "loss": sum(window_losses) / len(window_losses), "lr": lr,
                             "time": round(time.perf_counter() - started, 3)}
                    with open(log_path, "a") as f:
                        f.write(json.dumps(entry) + "\n")
                    window_losses.clear()
                if step % a.checkpoint_every == 0 or step == a.steps:  # the last one too: --resume can extend the run
                    save_checkpoint(step)
                if callback is not None:
                    callback({"step": step, "loss": loss_value, "lr": lr})
        except KeyboardInterrupt:
            bar.close()
            if solo:
                pass  # no checkpoints to keep
            elif in_update:
                logger.warning("interrupted inside an optimizer update: kept the last checkpoint only")
            else:
                rng.generator.set_state(boundary_rng)  # draws of the unfinished step are redone on resume
                optimizer.zero_grad(set_to_none=True)
                save_checkpoint(step)
                logger.warning("interrupted at step %d: checkpoint saved; continue with --resume", step)
            raise
        bar.close()

        # --- teardown: the adapter, the config beside it, a summary
        seconds = time.perf_counter() - loop_start
        adapter_path = out_dir / ADAPTER_FILE
        summary = {
            "adapter": str(adapter_path),
            "steps": a.steps,
            "steps_run": step - start_step,
            "resumed_from": resumed_from,
            "final_loss": loss_value,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / max(1, step - start_step), 4),
            "peak_memory_bytes": peak_memory_bytes(device),
            "device": str(device),
            "mixed_precision": accelerator.mixed_precision,
            "trainable_parameters": sum(p.numel() for p in params),
            "lora_targets": len(targets),
            "init_lora": init_origin and init_origin["path"],
            "frames": [int(frames.shape[0]), int(frames.shape[2]), int(frames.shape[3])],
            "shots": shots,
            "crops": crops,
            "crop_steps": crop_steps,  # of the steps_run, those that trained on a crop
        }
        if main:
            metadata = {
                "base_models": dict(components.sources),
                "source": {
                    "path": str(clip.source), "frame_indices": list(clip.frame_indices), "start": cfg.video.start,
                    "stride": cfg.video.stride, "max_frames": cfg.video.max_frames, "size": summary["frames"][1:],
                },
                "adapt": a.model_dump(mode="json"),
                "shots": shots,  # first frames: the training windows stayed within these shots
                "crops": crops,  # native-scale crops trained on too (motia.crops; None: the clip only)
                "schedule": components.schedule,  # the noise schedule it was trained on (models.schedule)
                "init_lora": init_origin,  # the LoRA it started from (None: a fresh init)
                "seed": cfg.seed,
                "prompt": cfg.prompt,
                "steps": step,
                "final_loss": loss_value,
            }
            lora.save_lora(adapter_path, unet, metadata)
            dump_config(cfg, out_dir / "config.yaml")
            _write_json(out_dir / SUMMARY_FILE, summary)
        if not solo:
            accelerator.wait_for_everyone()
    logger.info(
        "adapted %d steps in %.1f s (%.3f s/step), peak memory %.2f GB; adapter: %s",
        summary["steps_run"], seconds, summary["seconds_per_step"], summary["peak_memory_bytes"] / 2**30, adapter_path,
    )
    return adapter_path


@contextlib.contextmanager
def _borrowed(accelerator) -> Iterator[list]:
    """Lend ``accelerator`` to one ``adapt`` run and take the run off it again, however the run ends.

    Yields a list for the run's hook handles (removed afterwards); the objects the run
    prepared are released (``free_memory``) and the grad scaler (fp16) gets back the
    state it had, so the next run on this accelerator starts as on a fresh one.
    """
    scaler = accelerator.scaler
    scaler_state = scaler.state_dict() if scaler is not None and scaler.is_enabled() else None
    hooks: list = []
    try:
        yield hooks
    finally:
        for handle in hooks:
            handle.remove()
        accelerator.free_memory()
        if scaler_state is not None:
            scaler.load_state_dict(scaler_state)


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (a resume rewrites what follows; a fresh run starts empty)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def accelerator_settings(cfg: JobConfig, device_type: str | None = None) -> tuple[str, str]:
    """(device type, mixed precision) an adaptation of ``cfg`` runs with: ``models.device`` (or
    ``device_type``) and ``adapt.mixed_precision`` resolved against what ``accelerate launch`` asked for."""
    from motia.models import resolve_device

    kind = device_type or resolve_device(cfg.models.device).type
    return kind, resolve_mixed_precision(cfg.adapt.mixed_precision, kind, cfg.models.dtype, launcher_mixed_precision())


def make_accelerator(cfg: JobConfig, device_type: str | None = None):
    """The Accelerator for this job: CPU or CUDA from ``models.device``, mixed precision from ``adapt``.

    With ``adapt.mixed_precision: auto`` the launcher's fp16/bf16 is followed; an explicit
    setting that contradicts it wins, with a one-line warning. ``split_batches`` makes
    accelerate step the LR schedule once per optimizer step under any number of processes
    (``adapt.steps`` counts optimizer steps; motia has no dataloader for it to split).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    kind, mp = accelerator_settings(cfg, device_type)
    launcher = launcher_mixed_precision()
    if cfg.adapt.mixed_precision != "auto" and launcher not in (None, "no", mp):
        logger.warning(
            "adapt.mixed_precision=%s overrides accelerate launch --mixed_precision %s; set adapt.mixed_precision=auto "
            "to follow the launcher", mp, launcher,
        )
    return Accelerator(cpu=kind == "cpu", mixed_precision=mp, dataloader_config=DataLoaderConfiguration(split_batches=True))


def release(components) -> None:
    """Return ``components`` to the plain base after ``adapt``, ready for outpainting.

    Detaches the LoRA (outpainting loads the saved adapter, as a separate run would),
    turns gradient checkpointing off, puts the UNet back in its loaded dtype and every
    module in eval mode with gradients off. Used where one process adapts and then
    outpaints with the same loaded models (``motia run``, batch, eval).
    """
    from motia import lora

    unet = components.unet
    lora.remove_lora(unet)
    if getattr(unet, "is_gradient_checkpointing", False):
        unet.disable_gradient_checkpointing()
    if any(p.is_floating_point() and p.dtype != components.dtype for p in unet.parameters()):
        unet.to(components.dtype)  # only when needed: diffusers warns on every dtype cast
    for m in (unet, components.controlnet, components.vae, components.text_encoder):
        if m is not None:
            m.requires_grad_(False).eval()


def adapter_dir(cfg: JobConfig) -> Path:
    """Where adaptation writes: ``adapt.output_dir`` or ``<run dir>/adapter``."""
    return Path(cfg.adapt.output_dir) if cfg.adapt.output_dir else cfg.run_dir() / "adapter"


def check_adapter_dir(cfg: JobConfig, resume: bool = False, overwrite: bool = False) -> None:
    """Before loading models: refuse a fresh run over another config's adapter (``motia.runs``).

    A ``--resume`` that finds a checkpoint is checked later, against the checkpoint.
    """
    out_dir = adapter_dir(cfg)
    if resume and _newest_checkpoint(out_dir / CHECKPOINTS) is not None:
        return
    check_fresh_start(out_dir, cfg, overwrite)


def adapt_from_config(
    cfg: JobConfig, resume: bool = False, *, overwrite: bool = False, progress: bool = True, models=None,
    accelerator=None, solo: bool = False, callback: Callable[[dict], None] | None = None,
) -> Path:
    """`motia adapt`: read the clip, load the models, train; returns the adapter path.

    The clip is read and its canvases planned first and the models loaded next, so a
    missing video, an empty frame selection, a canvas that cannot be planned, an output
    folder of another config (unless ``overwrite``), one another live run is writing
    (``motia.runs.lock_run_folder``, held by this process, or by the launch's main process
    unless ``solo``), a read-only one, or bad model paths fail before anything is written. The models
    are loaded on the accelerator's device (under ``accelerate launch`` that is the
    launcher's choice), or taken from ``models`` (a ``motia.job.ModelCache``) and
    handed back there released (``release``) for the next stage. Output:
    ``adapt.output_dir`` or ``<run dir>/adapter``. ``accelerator`` (default
    ``make_accelerator(cfg)``) and ``solo`` are passed to ``adapt``; ``callback`` observes every step (see ``adapt``).
    """
    from motia.runs import lock_run_folder, main_process

    fix = "write elsewhere with adapt.output_dir=DIR"
    with lock_run_folder(adapter_dir(cfg), enabled=solo or main_process(), fix=fix):
        return _adapt_locked(cfg, resume, overwrite=overwrite, progress=progress, models=models,
                             accelerator=accelerator, solo=solo, callback=callback)  # fmt: skip


def _adapt_locked(cfg: JobConfig, resume: bool, *, overwrite: bool, progress: bool, models, accelerator, solo: bool,
                  callback) -> Path:  # fmt: skip
    """``adapt_from_config`` with its folder locked."""
    from motia.caption import resolve_prompt
    from motia.models import load_components
    from motia.planning import load_clip, native_size, plan, plan_output

    clip = load_clip(cfg)
    # The canvases the adapter will outpaint: a config that cannot outpaint this clip (an
    # unusable target_size, nothing to add) fails here, not after the training (`motia run`, batch).
    plan_output(cfg, plan(cfg, clip.height, clip.width), *native_size(clip))
    if cfg.adapt.init_lora:  # a missing or unreadable file fails before the models load (the header only)
        from motia.lora_io import read_header_metadata

        read_header_metadata(cfg.adapt.init_lora)
    prompt = resolve_prompt(cfg, clip)  # `prompt: auto` -> a caption of the middle frame
    if prompt != cfg.prompt:
        cfg = cfg.model_copy(update={"prompt": prompt})
    check_adapter_dir(cfg, resume, overwrite)
    accelerator = accelerator if accelerator is not None else make_accelerator(cfg)
    if models is None:
        components = load_components(cfg.models, device=accelerator.device, progress=progress)
    else:
        components = models.get(cfg.models, device=accelerator.device, progress=progress)
    try:
        return adapt(cfg, components, clip, adapter_dir(cfg), accelerator=accelerator, solo=solo, resume=resume,
                     overwrite=overwrite, progress=progress, callback=callback)
    finally:
        if models is not None:
            release(components)
