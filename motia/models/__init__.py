"""Model loading (SD1.5 + inpainting ControlNet + AnimateDiff) and the built-in tiny model bundle.

Names are re-exported lazily, so ``import motia.models`` is cheap and needs
neither a GPU nor diffusers until something is actually used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ANIMATEDIFF_SCHEDULE": "loading",
    "SCHEDULES": "loading",
    "Components": "loading",
    "animatediff_scheduler": "loading",
    "describe_schedule": "loading",
    "Source": "loading",
    "load_components": "loading",
    "resolve_device": "loading",
    "resolve_dtype": "loading",
    "locate": "loading",
    "load_motion_adapter": "loading",
    "assemble_motion_unet": "loading",
    "convert_original_motion_module": "loading",
    "infer_motion_adapter_config": "loading",
    "classify_checkpoint": "loading",
    "read_state_dict": "loading",
    "ensure_tiny_bundle": "tiny",
    "resolve_tiny": "tiny",
    "tiny_tokenizer_files": "tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
