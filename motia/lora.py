"""The per-clip LoRA: attach it to a UNetMotionModel with peft, save it, load it back.

Targets are given as a preset name or a list of module-name regexes and always
resolved to an explicit list of module names before peft sees them, so the saved
file names exactly the layers it was trained on. Files are safetensors in the key
format diffusers' ``load_lora_weights`` reads (``unet.<module>.lora.down.weight`` /
``lora.up.weight``) and carry diffusers' ``lora_adapter_metadata`` too, so a stock
``AnimateDiffPipeline`` loads them with the right alpha; motia's own metadata lives
under ``motia.*`` keys as JSON strings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from motia import __version__
from motia.errors import ConfigError, InputError
from motia.utils import atomic_path

FORMAT = "motia-lora/1"
ADAPTER_NAME = "motia"
_META_PREFIX = "motia."
_DIFFUSERS_META_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_RESERVED_META = ("format", "motia_version", "targets", "rank", "alpha", "dropout")

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

    ``metadata`` holds whatever the caller knows (base model ids, source clip, the
    adaptation config as a dict, step, ...); each value is stored JSON-encoded under
    ``motia.<key>``. The targets, rank, alpha, dropout, format marker and motia version
    are taken from the model and may not be passed in.
    """
    import safetensors.torch

    metadata = dict(metadata or {})
    clash = [k for k in metadata if k in _RESERVED_META]
    if clash:
        raise ValueError(f"save_lora: metadata keys {clash} are filled in from the model")
    config = unet.peft_config[adapter_name]
    targets = lora_targets(unet, adapter_name)
    info = {
        "format": FORMAT,
        "motia_version": __version__,
        "targets": targets,
        "rank": int(config.r),
        "alpha": float(config.lora_alpha),
        "dropout": float(config.lora_dropout),
        **metadata,
    }
    diffusers_meta = {"unet.r": int(config.r), "unet.lora_alpha": float(config.lora_alpha),
                      "unet.lora_dropout": float(config.lora_dropout), "unet.target_modules": targets}
    file_meta = {"format": "pt", _DIFFUSERS_META_KEY: json.dumps(diffusers_meta, sort_keys=True)}
    file_meta.update({_META_PREFIX + k: json.dumps(v, sort_keys=True, default=str) for k, v in info.items()})
    tensors = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(unet, adapter_name).items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=file_meta)
    return path


def read_lora_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``motia.*`` metadata of a saved adapter, decoded (InputError if it is not a motia LoRA file)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: LoRA file not found; give the .safetensors file written by adaptation")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a foreign or truncated file
        raise InputError(f"{path}: not a readable safetensors file ({type(e).__name__}); give a motia LoRA file") from None
    if _META_PREFIX + "format" not in raw:
        raise InputError(f"{path}: not a motia LoRA file (no motia.format metadata); load other LoRAs with diffusers")
    try:
        meta = {k[len(_META_PREFIX):]: json.loads(v) for k, v in raw.items() if k.startswith(_META_PREFIX)}
    except json.JSONDecodeError:
        raise InputError(f"{path}: corrupt motia metadata; re-run adaptation to write the file again") from None
    if meta["format"] != FORMAT:
        raise InputError(f"{path}: LoRA format {meta['format']!r} is not supported by this motia (expects {FORMAT!r})")
    missing = [k for k in ("targets", "rank", "alpha", "dropout") if k not in meta]
    if missing or not isinstance(meta["targets"], list) or not meta["targets"]:
        raise InputError(f"{path}: motia LoRA metadata lacks {missing or ['targets']}; re-run adaptation to write it again")
    return meta


def load_lora(
    unet: nn.Module,
    path: str | os.PathLike,
    adapter_name: str = ADAPTER_NAME,
    *,
    trainable: bool = False,
    lora_dtype: torch.dtype | None = torch.float32,
) -> dict[str, Any]:
    """Attach the adapter saved at ``path`` with its recorded targets/rank/alpha; return its metadata.

    Loading is strict: every target must exist in ``unet`` and the file must hold
    exactly the expected tensors with the expected shapes, else InputError naming the
    file (and nothing stays attached). ``trainable`` leaves the LoRA unfrozen (resume).
    """
    import safetensors.torch
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    path = Path(path)
    meta = read_lora_metadata(path)
    modules = dict(unet.named_modules())
    absent = [t for t in meta["targets"] if not isinstance(modules.get(t), _WRAPPABLE)]
    if absent:
        raise InputError(
            f"{path}: {len(absent)} LoRA target(s) are not layers of this UNet (e.g. {absent[0]}); "
            "it was trained for a different base model"
        )
    tensors = safetensors.torch.load_file(str(path))
    _attach(unet, meta["targets"], int(meta["rank"]), float(meta["alpha"]), float(meta["dropout"]),
            adapter_name, True, lora_dtype)
    try:
        expected = {k: tuple(v.shape) for k, v in lora_state_dict(unet, adapter_name).items()}
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k])
        if missing or unexpected or wrong:
            what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                    else f"shape {tuple(tensors[wrong[0]].shape)} != {expected[wrong[0]]} for {wrong[0]}")
            raise InputError(
                f"{path}: LoRA weights do not fit this UNet ({what}); "
                "the file is damaged or was trained on a different base model"
            )
        peft_sd = convert_unet_state_dict_to_peft({k[len("unet."):]: v for k, v in tensors.items()})
        result = set_peft_model_state_dict(unet, peft_sd, adapter_name=adapter_name)
        bad = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
        if bad:
            raise InputError(f"{path}: LoRA weight {bad[0]} was not loaded; the file is damaged")
    except BaseException:
        remove_lora(unet, adapter_name)
        raise
    set_trainable(unet, adapter_name, trainable)
    return meta


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
