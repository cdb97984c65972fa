"""LoRA files in every layout motia reads, and the AnimateDiff layout it exports: tensors only, no model.

Every layout is read into one form, ``LoraWeights``: per UNet module (the names of
diffusers' ``UNetMotionModel``) a pair (down, up) whose plain product ``up @ down``
is the layer's full weight delta, every alpha/rank scale folded into ``up``. motia
writes its own files that way too (format motia-lora/2, alpha recorded = rank), so
loaders that apply ``up @ down x strength`` (ComfyUI AnimateDiff-Evolved, AnimateDiff's
own) or assume alpha = rank (diffusers' model-level ``load_lora_adapter``) apply a
motia adapter at full strength.

Layouts read (``read_lora``):

* ``motia``: motia's adapters. motia-lora/2 holds the folded delta; motia-lora/1 (motia
  0.1) held peft's weights with alpha != rank, scaled here on load.
* ``diffusers``: what ``AnimateDiffPipeline.save_lora_weights`` (``unet.`` keys) or a
  model's ``save_lora_adapter`` (no prefix) writes: ``<module>.lora.down/up.weight``,
  ``<module>.lora_A/B.weight``, or the older ``<attn>.processor.to_q_lora.down.weight``.
  Alpha per layer from the file's ``lora_adapter_metadata`` (``lora_alpha``,
  ``alpha_pattern``, ``use_rslora``), else alpha = rank: what ``load_lora_weights`` does.
  Text-encoder layers are dropped (motia has no text-encoder LoRA).
* ``animatediff``: the original AnimateDiff motion-LoRA layout (the camera-motion LoRAs
  such as ``v2_lora_ZoomIn.ckpt``): ``down_blocks.0.motion_modules.0.temporal_transformer.
  transformer_blocks.0.attention_blocks.0.processor.to_q_lora.down.weight``, which
  AnimateDiff applies as ``W += strength * up @ down``. Module names are mapped as
  diffusers' ``scripts/convert_animatediff_motion_lora_to_diffusers.py`` maps them.

A path may also be a folder holding exactly one LoRA file (``save_lora_weights`` writes
``pytorch_lora_weights.safetensors`` into a folder).

``export_animatediff`` writes the AnimateDiff layout for ComfyUI users. That layout
has keys for the motion modules only; layers elsewhere (spatial ones) are dropped
and reported. Feed-forward and projection layers of the motion modules are written
as ``<module>_lora.down/up.weight`` under ``temporal_transformer``: AnimateDiff-Evolved
and AnimateDiff map every such key to ``<module>.weight`` by name, so they apply them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from motia import __version__
from motia.errors import InputError
from motia.utils import atomic_path

log = logging.getLogger(__name__)

FORMAT = "motia-lora/2"  # 2: alpha/rank folded into lora.up, alpha recorded = rank
READABLE_FORMATS = ("motia-lora/1", FORMAT)
META_PREFIX = "motia."
DIFFUSERS_META_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
MOTIA, DIFFUSERS, ANIMATEDIFF = "motia", "diffusers", "animatediff"

# <module>.lora.down.weight (diffusers), <module>.lora_A.weight (peft), <module>.lora_linear_layer.down.weight (old)
_DIFFUSERS_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora\.down|lora\.up|lora_A|lora_B|lora_linear_layer\.down|lora_linear_layer\.up)"
    r"\.weight$"
)
# diffusers' attention-processor LoRAs (and the hub's converted AnimateDiff motion LoRAs)
_PROCESSOR_KEY = re.compile(r"^(?P<module>.+)\.processor\.(?P<proj>to_[qkv]|to_out)_lora\.(?P<part>down|up)\.weight$")
# the original AnimateDiff layout: <original module>_lora.down.weight, under temporal_transformer
_ANIMATEDIFF_KEY = re.compile(r"^(?P<module>.+\.temporal_transformer\..+)_lora\.(?P<part>down|up)\.weight$")
_MOTION_MODULE = re.compile(
    r"^(?P<block>(?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(?P<index>\d+)\.(?P<rest>.+)$"
)
_TEXT_PREFIXES = ("text_encoder.", "text_encoder_2.")
_PARTS = {"lora.down": "down", "lora.up": "up", "lora_A": "down", "lora_B": "up", "lora_linear_layer.down": "down",
          "lora_linear_layer.up": "up"}  # fmt: skip


@dataclass
class LoraWeights:
    """A LoRA as read from a file: ``layers[module] = (down, up)``, ``up @ down`` the full delta (fp32)."""

    path: Path
    layout: str  # MOTIA, DIFFUSERS or ANIMATEDIFF
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metadata: dict[str, Any] = field(default_factory=dict)  # motia's (decoded) for motia files, else empty
    notes: list[str] = field(default_factory=list)  # what was ignored, one line each

    @property
    def targets(self) -> list[str]:
        return list(self.layers)

    def ranks(self) -> dict[str, int]:
        return {name: int(down.shape[0]) for name, (down, _) in self.layers.items()}

    def info(self) -> dict[str, Any]:
        """What ``motia.lora.read_lora_metadata`` returns: motia's metadata, or for other files only
        ``format``/``layout``/``targets``/``rank``/``alpha``/``dropout`` (no base models, source, prompt, schedule)."""
        if self.layout == MOTIA:
            return {**self.metadata, "layout": MOTIA}
        rank = max(self.ranks().values())
        return {"format": self.layout, "layout": self.layout, "targets": self.targets, "rank": rank,
                "alpha": float(rank), "dropout": 0.0}  # fmt: skip


# ----------------------------------------------------------------------------- files


def resolve_lora_path(path: str | os.PathLike) -> Path:
    """``path`` if it is a file; for a folder, the one LoRA file directly in it (else InputError listing them)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise InputError(
            f"{p}: LoRA file not found; give a .safetensors/.ckpt LoRA (a motia adapter, a diffusers or an "
            "AnimateDiff motion LoRA) or a folder holding one"
        )
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in LORA_SUFFIXES and not f.name.startswith("."))
    loras = [f for f in files if _holds_lora_keys(f)]
    if len(loras) == 1:
        return loras[0]
    found = ", ".join(f.name for f in (loras or files)) or f"no {'/'.join(LORA_SUFFIXES)} file"
    raise InputError(
        f"{p}: a LoRA folder must hold exactly one LoRA file, it holds {len(loras)} ({found}); give the file's path"
    )


def _holds_lora_keys(path: Path) -> bool:
    try:
        tensors, _ = _read_file(path, keys_only=True)
    except InputError:
        return False
    return any("lora" in k.lower() for k in tensors)


def _read_file(path: Path, keys_only: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors by key, string metadata) of a safetensors file or a torch checkpoint (``state_dict`` unwrapped).

    ``keys_only``: the values may be placeholders (safetensors is not read past its header).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            return ({k: None for k in f.keys()} if keys_only else {k: f.get_tensor(k) for k in f.keys()}), meta
    except Exception as e:  # safetensors raises several types for a foreign or truncated file
        if path.suffix == ".safetensors":
            why = type(e).__name__
            raise InputError(f"{path}: not a readable safetensors file ({why}); give a LoRA file") from None
    obj, error = None, None
    for mmap in (True, None) if keys_only else (None,):  # mmap: peek at a folder's files without reading them
        try:  # weights_only: a checkpoint from elsewhere must not run code on load
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as e:  # mmap needs the zip format; a legacy file is read whole
            error = e
    else:
        raise InputError(
            f"{path}: not a readable LoRA file ({type(error).__name__}); give a .safetensors file or a plain tensor "
            "checkpoint"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a dict of LoRA tensors")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}, {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a LoRA file (a folder: of its one LoRA file)."""
    h = hashlib.sha256()
    with open(resolve_lora_path(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def motia_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any] | None:
    """The decoded ``motia.*`` metadata of a file's header, None if it has none; InputError if it is unusable."""
    if META_PREFIX + "format" not in raw:
        return None
    try:
        meta = {k[len(META_PREFIX):]: json.loads(v) for k, v in raw.items() if k.startswith(META_PREFIX)}
    except json.JSONDecodeError:
        raise InputError(f"{path}: corrupt motia metadata; re-run adaptation to write the file again") from None
    if meta["format"] not in READABLE_FORMATS:
        raise InputError(
            f"{path}: LoRA format {meta['format']!r} is not supported by this motia (reads {', '.join(READABLE_FORMATS)})"
        )
    missing = [k for k in ("targets", "rank", "alpha", "dropout") if k not in meta]
    if missing or not isinstance(meta["targets"], list) or not meta["targets"]:
        raise InputError(f"{path}: motia LoRA metadata lacks {missing or ['targets']}; re-run adaptation to write it again")
    return meta


def read_header_metadata(path: str | os.PathLike) -> tuple[Path, dict[str, Any] | None]:
    """(the resolved file, its motia metadata or None) without reading the tensors."""
    path = resolve_lora_path(path)
    _, raw = _read_file(path, keys_only=True)
    return path, motia_metadata(path, raw)


# ----------------------------------------------------------------------------- reading


def read_lora(path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA file (or a folder holding one) of any supported layout; InputError naming the file if it is none."""
    path = resolve_lora_path(path)
    tensors, raw = _read_file(path)
    if not tensors:
        raise InputError(f"{path}: holds no tensors; give a LoRA file")
    meta = motia_metadata(path, raw)
    if meta is not None:
        return _read_motia(path, tensors, meta)
    if any(".temporal_transformer." in k for k in tensors):
        return _read_animatediff(path, tensors)
    return _read_diffusers(path, tensors, raw)


def _pairs(path: Path, parts: dict[tuple[str, str], torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Join ``{(module, "down"|"up"): tensor}`` into ``{module: (down, up)}``, checking each pair fits."""
    modules = sorted({m for m, _ in parts})
    layers = {}
    for m in modules:
        down, up = parts.get((m, "down")), parts.get((m, "up"))
        if down is None or up is None:
            raise InputError(f"{path}: {m} has a LoRA {'up' if down is None else 'down'} weight but no "
                             f"{'down' if down is None else 'up'} weight; the file is incomplete")  # fmt: skip
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
            raise InputError(f"{path}: LoRA weights of {m} do not pair (down {tuple(down.shape)}, "
                             f"up {tuple(up.shape)}); the file is damaged")  # fmt: skip
        layers[m] = (down.float(), up.float())
    return layers


def _scaled(layers, scales: dict[str, float]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {m: (d, u if scales[m] == 1.0 else u * scales[m]) for m, (d, u) in layers.items()}


def _read_motia(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> LoraWeights:
    parts = {}
    for key, t in tensors.items():  # diffusers' conversion names attention LoRAs lora.down/up, others lora_A/B
        m = _DIFFUSERS_KEY.match(key)
        if not key.startswith("unet.") or m is None:
            raise InputError(f"{path}: unexpected tensor {key} in a motia LoRA file; the file is damaged")
        parts[(m["module"][len("unet."):], _PARTS[m["part"]])] = t
    layers = _pairs(path, parts)
    if set(layers) != set(meta["targets"]):
        odd = sorted(set(layers) ^ set(meta["targets"]))[0]
        raise InputError(f"{path}: LoRA weights and the targets in its metadata differ (at {odd}); the file is damaged")
    rank = int(meta["rank"])
    wrong = [m for m, (d, _) in layers.items() if d.shape[0] != rank]
    if wrong:
        raise InputError(f"{path}: {wrong[0]} has rank {layers[wrong[0]][0].shape[0]}, its metadata says {rank}; "
                         "the file is damaged")  # fmt: skip
    scale = float(meta["alpha"]) / rank  # 1 for motia-lora/2; motia-lora/1 stored peft's unscaled weights
    layers = {t: layers[t] for t in meta["targets"]}
    return LoraWeights(path, MOTIA, _scaled(layers, {m: scale for m in layers}), meta)


def _pattern_key(patterns, name: str) -> str | None:
    """The key of ``patterns`` that names module ``name``, as peft's ``get_pattern_key`` matches them."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def _read_diffusers(path: Path, tensors: dict[str, torch.Tensor], raw: dict[str, str]) -> LoraWeights:
    prefixed = any(k.startswith("unet.") for k in tensors)
    notes, parts, dropped_text = [], {}, 0
    for key, t in tensors.items():
        if key.startswith(_TEXT_PREFIXES):
            dropped_text += 1
            continue
        name = key[len("unet."):] if prefixed and key.startswith("unet.") else key
        if prefixed and name == key:
            raise InputError(f"{path}: unexpected tensor {key} beside the unet.* LoRA weights; give a UNet LoRA")
        m = _PROCESSOR_KEY.match(name)
        if m is not None:
            module = f"{m['module']}.{m['proj']}" + (".0" if m["proj"] == "to_out" else "")
            parts[(module, m["part"])] = t
            continue
        m = _DIFFUSERS_KEY.match(name)
        if m is not None:
            parts[(m["module"], _PARTS[m["part"]])] = t
            continue
        raise InputError(f"{path}: {_unknown_key_hint(key)}")
    if dropped_text:
        notes.append(f"{path.name}: ignored {dropped_text} text-encoder LoRA tensor(s); motia adapts the UNet only")
    if not parts:
        raise InputError(f"{path}: holds no UNet LoRA weights (only text-encoder ones); give a UNet or motion LoRA")
    layers = _pairs(path, parts)
    config = _diffusers_config(path, raw, prefixed)
    if config.get("use_dora"):
        raise InputError(f"{path}: a DoRA adapter (use_dora); motia loads plain LoRAs only")
    scales = {}
    for module, (down, _) in layers.items():
        r = int(down.shape[0])
        alpha_key = _pattern_key(config.get("alpha_pattern") or {}, module)
        alpha = float(config["alpha_pattern"][alpha_key] if alpha_key else config.get("lora_alpha") or r)
        scales[module] = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    return LoraWeights(path, DIFFUSERS, _scaled(layers, scales), notes=notes)


def _diffusers_config(path: Path, raw: dict[str, str], prefixed: bool) -> dict[str, Any]:
    """The UNet's part of a file's ``lora_adapter_metadata`` (peft LoraConfig fields), {} if there is none."""
    if DIFFUSERS_META_KEY not in raw:
        return {}
    try:
        meta = json.loads(raw[DIFFUSERS_META_KEY])
    except json.JSONDecodeError:
        raise InputError(f"{path}: its {DIFFUSERS_META_KEY} is not JSON; the file is damaged") from None
    if not isinstance(meta, dict):
        return {}
    if prefixed or any(k.startswith("unet.") for k in meta):
        return {k[len("unet."):]: v for k, v in meta.items() if k.startswith("unet.")}
    return meta


def _unknown_key_hint(key: str) -> str:
    if key.startswith(("lora_unet_", "lora_te")):
        return (f"{key} is a kohya/A1111-style image LoRA key; motia reads motion LoRAs in the diffusers or "
                "AnimateDiff layout (convert with diffusers' load_lora_weights + save_lora_weights)")  # fmt: skip
    if "lora_magnitude_vector" in key:
        return f"{key}: a DoRA adapter; motia loads plain LoRAs only"
    if key.endswith(".bias"):
        return f"{key}: a LoRA with bias terms; motia loads LoRAs without bias only"
    return f"{key} is not a LoRA weight of a known layout (motia, diffusers, AnimateDiff motion LoRA)"


def _from_animatediff(module: str) -> str:
    """An original AnimateDiff module name as diffusers' UNetMotionModel names it (its converter's mapping)."""
    module = module.replace(".processor.", ".").replace(".temporal_transformer.", ".")
    module = re.sub(r"\.attention_blocks\.(\d+)\.", lambda m: f".attn{int(m[1]) + 1}.", module)
    module = module.replace(".norms.0.", ".norm1.").replace(".norms.1.", ".norm2.").replace(".ff_norm.", ".norm3.")
    return module + ".0" if module.endswith(".to_out") else module


def _read_animatediff(path: Path, tensors: dict[str, torch.Tensor]) -> LoraWeights:
    notes, parts, other = [], {}, 0
    for key, t in tensors.items():
        if "temporal" not in key:  # AnimateDiff-Evolved keeps only these as well
            other += 1
            continue
        m = _ANIMATEDIFF_KEY.match(key)
        if m is None:
            raise InputError(f"{path}: {key} is not a LoRA weight of the AnimateDiff motion-LoRA layout")
        parts[(_from_animatediff(m["module"]), m["part"])] = t
    if other:
        notes.append(f"{path.name}: ignored {other} tensor(s) outside the motion modules, as AnimateDiff does")
    return LoraWeights(path, ANIMATEDIFF, _pairs(path, parts), notes=notes)


# ----------------------------------------------------------------------------- the AnimateDiff layout


def to_animatediff(module: str) -> str | None:
    """The AnimateDiff key stem (``..._lora``) of a UNetMotionModel module, None outside the motion modules."""
    m = _MOTION_MODULE.match(module)
    if m is None:
        return None
    rest = re.sub(r"(^|\.)attn(\d+)\.(to_[qkv]|to_out)(\.0)?$",
                  lambda a: f"{a[1]}attention_blocks.{int(a[2]) - 1}.processor.{a[3]}", m["rest"])  # fmt: skip
    rest = rest.replace("norm1.", "norms.0.").replace("norm2.", "norms.1.").replace("norm3.", "ff_norm.")
    return f"{m['block']}.motion_modules.{m['index']}.temporal_transformer.{rest}_lora"


def animatediff_state_dict(weights: LoraWeights) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The AnimateDiff-layout tensors of ``weights`` (up @ down = the full delta) and the layers it cannot hold."""
    out, dropped = {}, []
    for module, (down, up) in weights.layers.items():
        stem = to_animatediff(module)
        if stem is None or down.ndim != 2:
            dropped.append(module)
            continue
        out[f"{stem}.down.weight"] = down.contiguous()
        out[f"{stem}.up.weight"] = up.contiguous()
    return out, dropped


def export_animatediff(src: str | os.PathLike, out: str | os.PathLike | None = None, *,
                       overwrite: bool = False) -> tuple[Path, list[str]]:  # fmt: skip
    """Write the LoRA at ``src`` in the original AnimateDiff motion-LoRA layout; return (path, report lines).

    ``out`` defaults to ``<src stem>.animatediff.safetensors`` beside the source; a
    ``.ckpt``/``.pt``/``.pth`` name writes a torch checkpoint (what AnimateDiff's own
    loader reads). An existing ``out`` is refused unless ``overwrite``. The report says
    what was written and, one line per kind, what the layout has no keys for.
    """
    weights = read_lora(src)
    out = Path(out) if out is not None else weights.path.with_name(f"{weights.path.stem}.animatediff.safetensors")
    if out.suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise InputError(f"{out}: give the export a .safetensors (ComfyUI) or .ckpt (AnimateDiff) name")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    tensors, dropped = animatediff_state_dict(weights)
    if not tensors:
        raise InputError(f"{weights.path}: none of its {len(weights.layers)} layers is in a motion module; "
                         "the AnimateDiff motion-LoRA layout cannot hold it")  # fmt: skip
    with atomic_path(out) as tmp:
        if out.suffix == ".safetensors":
            import safetensors.torch

            meta = {"format": "pt", "motia.exported_from": json.dumps(str(weights.path)),
                    "motia.export": json.dumps({"motia_version": __version__, "layout": ANIMATEDIFF})}  # fmt: skip
            safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
        else:
            torch.save(tensors, str(tmp))
    kept = [m for m in weights.layers if m not in dropped]
    attention = sum(".attn" in m for m in kept)
    lines = [f"wrote {out}: {len(kept)} motion-module layer(s) ({attention} attention, {len(kept) - attention} other), "
             "alpha folded: apply at strength 1.0 for the adapter as trained"]  # fmt: skip
    outside = [m for m in dropped if to_animatediff(m) is None]
    if outside:
        lines.append(f"dropped {len(outside)} layer(s) outside the motion modules (e.g. {outside[0]}): "
                     "the AnimateDiff motion-LoRA layout has no keys for them")  # fmt: skip
    convs = [m for m in dropped if to_animatediff(m) is not None]
    if convs:
        lines.append(f"dropped {len(convs)} convolution LoRA layer(s) (e.g. {convs[0]}): AnimateDiff's loaders "
                     "apply 2-D weights only")  # fmt: skip
    return out, lines
