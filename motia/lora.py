"""The per-clip LoRA: attach it to a UNetMotionModel with peft, save it, load it back (any supported layout).

Targets are given as a preset name or a list of module-name regexes and always
resolved to an explicit list of module names before peft sees them, so the saved
file names exactly the layers it was trained on. Files are safetensors in the key
format diffusers' ``load_lora_weights`` reads (``unet.<module>.lora.down.weight`` /
``lora.up.weight``) with the alpha/rank scale folded into ``lora.up`` and alpha
recorded = rank (format motia-lora/2), both in diffusers' ``lora_adapter_metadata``
and in motia's own metadata (``motia.*`` keys, JSON strings; the trained alpha is kept
as ``trained_alpha``). So the plain ``up @ down`` is the full delta, and every loader
(diffusers' pipeline and model-level ones, AnimateDiff-Evolved's ``up @ down x
strength``) applies the adapter at full strength. Loading reads every layout of
``motia.lora_io``: motia's (both formats), diffusers' and AnimateDiff's motion LoRAs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from motia import __version__
from motia.errors import ConfigError, InputError
from motia.lora_io import DIFFUSERS_META_KEY, FORMAT, META_PREFIX, LoraWeights, read_header_metadata, read_lora
from motia.utils import atomic_path

log = logging.getLogger(__name__)

ADAPTER_NAME = "motia"
_RESERVED_META = ("format", "motia_version", "targets", "rank", "alpha", "trained_alpha", "dropout", "layout")

_MOTION_BLOCK = r".*motion_modules\.\d+\.transformer_blocks\.\d+\."
_SPATIAL_BLOCK = r".*attentions\.\d+\.transformer_blocks\.\d+\."

# Patterns are matched with re.fullmatch against names from unet.named_modules().
# In AnimateDiff's temporal blocks attn1 and attn2 are both self-attention over frames.
# "temporal" is what the reference trains (src/utils/register.py, register_motion_lora):
# q/k/v of every VersatileAttention (attn1, attn2) and ff.net.2 (its `lora_layer`, which
# diffusers 0.20's LoRACompatibleLinear calls). It also creates a LoRA for ff.net.0.proj,
# but stores it as `lora_linear`, an attribute nothing calls: that one never trains.
# "temporal+ff_in" is motia 0.1's "temporal", with ff.net.0.proj trained too.
PRESETS: dict[str, tuple[str, ...]] = {
    "temporal": (
        _MOTION_BLOCK + r"attn[12]\.to_[qkv]",
        _MOTION_BLOCK + r"ff\.net\.2",
    ),
    "temporal+ff_in": (
        _MOTION_BLOCK + r"attn[12]\.to_[qkv]",
        _MOTION_BLOCK + r"ff\.net\.(0\.proj|2)",
    ),
}
PRESETS["temporal+spatial"] = PRESETS["temporal"] + (_SPATIAL_BLOCK + r"attn1\.(to_[qkv]|to_out\.0)",)
# The reference's init (register.py LoraLinear): down ~ N(0, (1/r)^2), up = 0; peft's "gaussian".
DEFAULT_INIT = "gaussian"

_WRAPPABLE = (nn.Linear, nn.Conv2d)


def resolve_targets(model: nn.Module, targets: str | Sequence[str] = "temporal") -> list[str]:
    """Module names (sorted, in ``named_modules`` order) that a preset or a list of regexes selects.

    Only ``nn.Linear`` / ``nn.Conv2d`` leaves are candidates. A pattern that
    matches none of them is a ConfigError naming ``adapt.lora.targets``.
    """
    if isinstance(targets, str):
        if targets not in PRESETS:
            raise ConfigError(
                f"adapt.lora.targets: unknown preset {targets!r}; use one of {sorted(PRESETS)} "
                "or a list of module-name regexes"
            )
        patterns = PRESETS[targets]
    else:
        patterns = tuple(targets)
        if not patterns:
            raise ConfigError("adapt.lora.targets: the pattern list is empty; give a preset name or at least one regex")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"adapt.lora.targets: {p!r} is not a valid regex ({e})") from None
    candidates = [n for n, m in model.named_modules() if isinstance(m, _WRAPPABLE)]
    selected: list[str] = []
    for pattern, rx in zip(patterns, compiled):
        hits = [n for n in candidates if rx.fullmatch(n)]
        if not hits:
            raise ConfigError(
                f"adapt.lora.targets: pattern {pattern!r} matches no Linear/Conv2d module of the UNet "
                "(patterns must match whole names, e.g. '.*motion_modules.*to_q')"
            )
        selected.extend(hits)
    wanted = set(selected)
    return [n for n in candidates if n in wanted]


def add_lora(
    unet: nn.Module,
    targets: str | Sequence[str] = "temporal",
    rank: int = 16,
    alpha: float = 128,
    dropout: float = 0.0,
    adapter_name: str = ADAPTER_NAME,
    *,
    init_lora_weights: bool | str = DEFAULT_INIT,
    lora_dtype: torch.dtype | None = torch.float32,
) -> list[str]:
    """Attach a fresh LoRA adapter and make it the only trainable part of ``unet``; return the target names.

    ``alpha / rank`` multiplies the LoRA delta (the reference's x8 is r=16, alpha=128).
    ``init_lora_weights`` is peft's: "gaussian" (default, the reference's lora_A ~ N(0, 1/r^2))
    or True (peft's Kaiming-uniform lora_A); lora_B starts at zero either way.
    LoRA parameters are kept in ``lora_dtype`` (fp32 by default) even when the base is
    half precision, so optimizer updates are not lost to fp16 rounding; ``None`` keeps
    peft's choice.
    """
    if int(rank) < 1:
        raise ConfigError(f"adapt.lora.rank: must be at least 1, got {rank}")
    if not alpha > 0:
        raise ConfigError(f"adapt.lora.alpha: must be positive, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"adapt.lora.dropout: must be in [0, 1), got {dropout}")
    names = resolve_targets(unet, targets)
    _attach(unet, names, int(rank), float(alpha), float(dropout), adapter_name, init_lora_weights, lora_dtype)
    set_trainable(unet, adapter_name, True)
    return names


def _attach(unet, names, rank, alpha, dropout, adapter_name, init_lora_weights, lora_dtype) -> None:
    from peft import LoraConfig

    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        raise ValueError(f"adapter {adapter_name!r} is already attached; call remove_lora first")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(names),
        init_lora_weights=init_lora_weights,
    )
    unet.add_adapter(config, adapter_name=adapter_name)
    if lora_dtype is not None:
        for p in _adapter_parameters(unet, adapter_name).values():
            p.data = p.data.to(lora_dtype)


def _adapter_parameters(unet: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """LoRA parameters of one adapter, by full parameter name."""
    tag = f".{adapter_name}."
    return {
        n: p
        for n, p in unet.named_parameters()
        if tag in f".{n}." and any(k in n for k in (".lora_A.", ".lora_B.", ".lora_embedding_", ".lora_magnitude_vector."))
    }


def lora_targets(unet: nn.Module, adapter_name: str = ADAPTER_NAME) -> list[str]:
    """Names of the layers that carry the adapter, in ``named_modules`` order.

    Read from the model, not from ``peft_config.target_modules``: peft rewrites a long
    target list into a shorter set of name suffixes after injection.
    """
    from peft.tuners.lora import LoraLayer

    return [n for n, m in unet.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A]


def set_trainable(unet: nn.Module, adapter_name: str = ADAPTER_NAME, trainable: bool = True) -> list[str]:
    """Freeze every parameter of ``unet``, then unfreeze the adapter's if ``trainable``; return their names."""
    unet.requires_grad_(False)
    params = _adapter_parameters(unet, adapter_name)
    for p in params.values():
        p.requires_grad_(trainable)
    return sorted(params)


def lora_state_dict(unet: nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' LoRA key format, prefixed ``unet.``.

    This is what ``AnimateDiffPipeline.load_lora_weights`` (StableDiffusionLoraLoaderMixin)
    accepts for the UNet: peft's state dict converted by ``convert_state_dict_to_diffusers``.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    if adapter_name not in (getattr(unet, "peft_config", None) or {}):
        raise ValueError(f"no LoRA adapter {adapter_name!r} attached to this model")
    peft_sd = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    sd = convert_state_dict_to_diffusers(peft_sd)
    return {f"unet.{k}": v.detach() for k, v in sd.items()}


def save_lora(
    path: str | os.PathLike,
    unet: nn.Module,
    metadata: dict[str, Any] | None = None,
    adapter_name: str = ADAPTER_NAME,
) -> Path:
    """Write the adapter to a safetensors file atomically, with its config and ``metadata``.

    ``lora.up`` holds peft's lora_B times alpha/rank, so ``up @ down`` is the full delta
    and the file records alpha = rank (diffusers' metadata and motia's); the alpha it was
    trained with is kept as ``trained_alpha``. ``metadata`` holds whatever the caller
    knows (base model ids, source clip, the adaptation config as a dict, step, ...);
    each value is stored JSON-encoded under ``motia.<key>``. The targets, rank, alpha,
    dropout, format marker and motia version are taken from the model and may not be passed in.
    """
    import safetensors.torch

    metadata = dict(metadata or {})
    clash = [k for k in metadata if k in _RESERVED_META]
    if clash:
        raise ValueError(f"save_lora: metadata keys {clash} are filled in from the model")
    config = unet.peft_config[adapter_name]
    if config.rank_pattern or config.alpha_pattern or config.use_rslora:
        raise ValueError("save_lora: one rank and alpha for every layer expected (no rank/alpha patterns, no rsLoRA)")
    targets = lora_targets(unet, adapter_name)
    rank, scale = int(config.r), float(config.lora_alpha) / int(config.r)
    info = {
        "format": FORMAT,
        "motia_version": __version__,
        "targets": targets,
        "rank": rank,
        "alpha": float(rank),
        "trained_alpha": float(config.lora_alpha),
        "dropout": float(config.lora_dropout),
        **metadata,
    }
    diffusers_meta = {"unet.r": rank, "unet.lora_alpha": float(rank),
                      "unet.lora_dropout": float(config.lora_dropout), "unet.target_modules": targets}
    file_meta = {"format": "pt", DIFFUSERS_META_KEY: json.dumps(diffusers_meta, sort_keys=True)}
    file_meta.update({META_PREFIX + k: json.dumps(v, sort_keys=True, default=str) for k, v in info.items()})
    tensors = {}
    for k, v in lora_state_dict(unet, adapter_name).items():
        if k.endswith((".lora.up.weight", ".lora_B.weight")) and scale != 1.0:
            v = (v.double() * scale).to(v.dtype)  # folded: exact for a power-of-two alpha/rank (the reference's 8)
        tensors[k] = v.to("cpu").contiguous()
    path = Path(path)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=file_meta)
    return path


def read_lora_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What is known about the LoRA at ``path`` (a file, or a folder holding one); InputError if it is no LoRA.

    A motia adapter: its ``motia.*`` metadata, decoded (targets, rank, alpha, base_models,
    source, prompt, schedule, ...). Any other accepted LoRA (diffusers, AnimateDiff
    layout): only ``format``/``layout``/``targets``/``rank``/``alpha``/``dropout``;
    callers must treat the motia-only keys as optional. ``layout`` says which it is.
    """
    file, meta = read_header_metadata(path)
    if meta is not None:
        return {**meta, "layout": "motia"}
    return read_lora(file).info()


def load_lora(
    unet: nn.Module,
    path: str | os.PathLike,
    adapter_name: str = ADAPTER_NAME,
    *,
    trainable: bool = False,
    lora_dtype: torch.dtype | None = torch.float32,
    multiplier: float = 1.0,
    dropout: float = 0.0,
) -> dict[str, Any]:
    """Attach the LoRA saved at ``path`` (any layout ``motia.lora_io`` reads); return ``read_lora_metadata``'s dict.

    See ``attach_weights``; ``trainable`` leaves the LoRA unfrozen (resume, ``adapt.init_lora``).
    """
    weights = read_lora(path)
    for note in weights.notes:
        log.warning("%s", note)
    attach_weights(unet, weights, adapter_name, trainable=trainable, lora_dtype=lora_dtype, multiplier=multiplier,
                   dropout=dropout)  # fmt: skip
    if weights.layout != "motia":
        log.info("loaded %s LoRA %s: %d layers, rank %d", weights.layout, weights.path, len(weights.layers),
                 max(weights.ranks().values()))  # fmt: skip
    return weights.info()


def check_fits(unet: nn.Module, weights: LoraWeights) -> None:
    """InputError naming the file unless every layer of ``weights`` is a Linear/Conv2d of ``unet`` of the right size."""
    modules = dict(unet.named_modules())
    for name, (down, up) in weights.layers.items():
        m = modules.get(name)
        if not isinstance(m, _WRAPPABLE):
            absent = [t for t in weights.layers if not isinstance(modules.get(t), _WRAPPABLE)]
            raise InputError(
                f"{weights.path}: {len(absent)} LoRA target(s) are not layers of this UNet (e.g. {absent[0]}); "
                "it was made for a different base model"
            )
        fan_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        fan_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        if down.shape[1] != fan_in or up.shape[0] != fan_out or (down.ndim == 4) != isinstance(m, nn.Conv2d):
            raise InputError(
                f"{weights.path}: LoRA weights of {name} (down {tuple(down.shape)}, up {tuple(up.shape)}) do not fit "
                f"the layer ({fan_in} -> {fan_out}); it was made for a different base model"
            )


def attach_weights(
    unet: nn.Module,
    weights: LoraWeights,
    adapter_name: str = ADAPTER_NAME,
    *,
    trainable: bool = False,
    lora_dtype: torch.dtype | None = torch.float32,
    multiplier: float = 1.0,
    dropout: float = 0.0,
) -> list[str]:
    """Attach ``weights`` (``motia.lora_io.read_lora``) as peft adapter ``adapter_name``; return the target names.

    Loading is strict: every layer must exist in ``unet`` with matching sizes, else
    InputError naming the file (and nothing stays attached). Layers of different rank
    are zero-padded to the largest (the delta is unchanged). peft's scale is
    ``multiplier`` (alpha = multiplier x rank) and lora_B holds ``up / multiplier``, so the
    delta is the file's either way: outpainting uses 1; adaptation from a file uses
    its training multiplier (``adapt.lora.alpha / adapt.lora.rank``).
    """
    import torch.nn.functional as F
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    if not multiplier > 0:
        raise ValueError(f"attach_weights: multiplier must be positive, got {multiplier}")
    check_fits(unet, weights)
    order = {n: i for i, (n, _) in enumerate(unet.named_modules())}
    names = sorted(weights.layers, key=order.__getitem__)
    rank = max(weights.ranks().values())
    if len(set(weights.ranks().values())) > 1:
        log.info("%s: LoRA ranks %d..%d padded with zeros to %d", weights.path, min(weights.ranks().values()), rank,
                 rank)  # fmt: skip
    tensors = {}
    for name in names:
        down, up = weights.layers[name]
        pad = rank - down.shape[0]
        if pad:
            down = torch.cat([down, down.new_zeros((pad, *down.shape[1:]))])
            up = F.pad(up.movedim(1, -1), (0, pad)).movedim(-1, 1)
        tensors[f"{name}.lora_A.weight"] = down
        tensors[f"{name}.lora_B.weight"] = up if multiplier == 1.0 else up / multiplier
    _attach(unet, names, rank, multiplier * rank, float(dropout), adapter_name, True, lora_dtype)
    try:
        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k])
        if missing or unexpected or wrong:
            what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                    else f"shape {tuple(tensors[wrong[0]].shape)} != {expected[wrong[0]]} for {wrong[0]}")
            raise InputError(
                f"{weights.path}: LoRA weights do not fit this UNet ({what}); "
                "the file is damaged or was made for a different base model"
            )
        result = set_peft_model_state_dict(unet, tensors, adapter_name=adapter_name)
        bad = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
        if bad:
            raise InputError(f"{weights.path}: LoRA weight {bad[0]} was not loaded; the file is damaged")
    except BaseException:
        remove_lora(unet, adapter_name)
        raise
    set_trainable(unet, adapter_name, trainable)
    return names


def remove_lora(unet: nn.Module, adapter_name: str = ADAPTER_NAME) -> None:
    """Detach the adapter; when none is left, unwrap peft's layers so the model is the plain base again."""
    configs = getattr(unet, "peft_config", None) or {}
    if adapter_name not in configs:
        return
    unet.delete_adapters(adapter_name)
    if not getattr(unet, "peft_config", None):
        unet.unload_lora()


@contextlib.contextmanager
def lora_disabled(unet: nn.Module) -> Iterator[nn.Module]:
    """Run the base model without its LoRA inside the block; restore each layer's state (and requires_grad) after."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    was_disabled = [m.disable_adapters for m in layers]
    grads = {id(p): p.requires_grad for m in layers for p in m.parameters()}
    for m in layers:
        m.enable_adapters(False)
    try:
        yield unet
    finally:
        for m, off in zip(layers, was_disabled):
            m.enable_adapters(not off)
        # peft's enable_adapters flips requires_grad; put back what the caller had.
        for m in layers:
            for p in m.parameters():
                p.requires_grad_(grads[id(p)])
