"""Diffusers -> original (LDM / lllyasviel ControlNet) state-dict conversion, and single-file writers.

diffusers ships only the LDM -> diffusers direction
(``diffusers.loaders.single_file_utils``: ``convert_ldm_unet_checkpoint``,
``convert_controlnet_checkpoint``, ``convert_ldm_vae_checkpoint``,
``convert_ldm_clip_checkpoint``). This module is its exact inverse for SD1.x-style
models of any width / depth, so tests can write tiny checkpoints in the layouts users
download (``v1-5-pruned-emaonly.safetensors``, ``control_v11p_sd15_inpaint.pth``) and
load them back through diffusers' own ``from_single_file``.

Every key is renamed one-to-one; a key no rule covers raises ``ValueError`` rather
than being dropped, so a written file never silently lacks weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch

from motia.utils import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
# diffusers recognises an original ControlNet by `control_model.time_embed.0.weight`.
CONTROLNET_PREFIX = "control_model."

# Inverse of DIFFUSERS_TO_LDM_MAPPING["unet"] (same names for the ControlNet trunk).
_UNET_DIRECT = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # class / addition embeddings share LDM's `label_emb`; at most one exists per model.
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_VAE_DIRECT = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
}

_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}

# LDM's hint encoder is a Sequential of 8 convs with SiLUs between them, so the
# convs sit at even indices and the last one at 14 (diffusers hard-codes that index).
_HINT_OUT_INDEX = 14

_DOWN = re.compile(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_DOWNSAMPLE = re.compile(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_UP = re.compile(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_UPSAMPLE = re.compile(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)")


def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def _resnet(rest: str, key: str) -> str:
    head, _, param = rest.partition(".")
    if head not in _RESNET:
        raise ValueError(f"unknown resnet parameter {key!r}: no LDM name for {head!r}")
    return f"{_RESNET[head]}.{param}"


def _layers_per_block(config: Mapping) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        # diffusers' forward conversion indexes blocks as `i // (layers + 1)`.
        raise ValueError(f"layers_per_block must be one int for the LDM layout, got {layers!r}")
    return layers


def _trunk_key(key: str, layers: int) -> str | None:
    """LDM name (no prefix) of a UNet/ControlNet parameter shared by both: embeddings, down and mid blocks."""
    module, param = _split_param(key)
    if module in _UNET_DIRECT:
        return f"{_UNET_DIRECT[module]}.{param}"
    if key == "class_embedding.weight":
        return "label_emb.weight"
    if m := _DOWN.fullmatch(key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * (layers + 1) + layer
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_resnet(rest, key)}"
        return f"input_blocks.{index}.1.{rest}"
    if m := _DOWNSAMPLE.fullmatch(key):
        # The downsampler follows the block's `layers` resnets.
        return f"input_blocks.{1 + int(m[1]) * (layers + 1) + layers}.0.op.{m[2]}"
    if m := _MID.fullmatch(key):
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet(rest, key)}"
        return f"middle_block.{2 * j + 1}.{rest}"
    return None


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict -> original keys under ``model.diffusion_model.``.

    ``config`` is the model's diffusers config (``unet.config``); only
    ``layers_per_block`` is needed, as in diffusers' ``convert_ldm_unet_checkpoint``.
    """
    layers = _layers_per_block(config)
    up_with_attention = {int(m[1]) for k in state_dict if (m := _UP.fullmatch(k)) and m[2] == "attentions"}
    out = {}
    for key, value in state_dict.items():
        ldm = _trunk_key(key, layers)
        if ldm is None and (m := _UP.fullmatch(key)):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = block * (layers + 1) + layer  # up blocks hold layers + 1 resnets
            if kind == "resnets":
                ldm = f"output_blocks.{index}.0.{_resnet(rest, key)}"
            else:
                ldm = f"output_blocks.{index}.1.{rest}"
        elif ldm is None and (m := _UPSAMPLE.fullmatch(key)):
            block = int(m[1])
            # The upsampler shares the block's last output_block, after its attention if any.
            slot = 2 if block in up_with_attention else 1
            ldm = f"output_blocks.{block * (layers + 1) + layers}.{slot}.conv.{m[2]}"
        if ldm is None:
            raise ValueError(f"no LDM name for UNet parameter {key!r} (only SD1.x-style UNets are supported)")
        out[UNET_PREFIX + ldm] = value
    return _checked(out, state_dict, "UNet")


def controlnet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """diffusers ``ControlNetModel`` state dict -> lllyasviel keys under ``control_model.``.

    Adds the ControlNet-only parts to the UNet trunk: ``input_hint_block`` (the
    conditioning embedding), ``zero_convs`` and ``middle_block_out``.
    """
    layers = _layers_per_block(config)
    hint_blocks = {k for k in state_dict if k.startswith("controlnet_cond_embedding.blocks.")}
    num_hint_convs = len({k.rpartition(".")[0] for k in hint_blocks})
    if 2 * (num_hint_convs + 1) != _HINT_OUT_INDEX:
        raise ValueError(
            f"ControlNet conditioning embedding has {num_hint_convs} inner convs; the original layout "
            "needs 6 (conditioning_embedding_out_channels of length 4)"
        )
    out = {}
    for key, value in state_dict.items():
        ldm = _trunk_key(key, layers) or _controlnet_only_key(key)
        if ldm is None:
            raise ValueError(f"no LDM name for ControlNet parameter {key!r}")
        out[CONTROLNET_PREFIX + ldm] = value
    return _checked(out, state_dict, "ControlNet")


def _controlnet_only_key(key: str) -> str | None:
    module, param = _split_param(key)
    if module == "controlnet_cond_embedding.conv_in":
        return f"input_hint_block.0.{param}"
    if module == "controlnet_cond_embedding.conv_out":
        return f"input_hint_block.{_HINT_OUT_INDEX}.{param}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", module):
        return f"input_hint_block.{2 * (int(m[1]) + 1)}.{param}"
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)", module):
        return f"zero_convs.{m[1]}.0.{param}"
    if module == "controlnet_mid_block":
        return f"middle_block_out.0.{param}"
    return None


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state dict -> original keys under ``first_stage_model.``.

    The mid-block attention's q/k/v/proj_out are 1x1 convs in LDM: their (C, C)
    Linear weights become (C, C, 1, 1).
    """
    num_up = 1 + max((int(m[1]) for k in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1)
    out = {}
    for key, value in state_dict.items():
        module, param = _split_param(key)
        coder, _, rest = module.partition(".")
        ldm = None
        if module in ("quant_conv", "post_quant_conv"):
            ldm = module
        elif coder in ("encoder", "decoder"):
            if rest in _VAE_DIRECT:
                ldm = f"{coder}.{_VAE_DIRECT[rest]}"
            elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", rest):
                ldm = f"{coder}.down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3])}"
            elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", rest):
                ldm = f"{coder}.down.{m[1]}.downsample.conv"
            elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", rest):
                # LDM numbers decoder levels from the highest resolution up.
                ldm = f"{coder}.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet(m[3])}"
            elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", rest):
                ldm = f"{coder}.up.{num_up - 1 - int(m[1])}.upsample.conv"
            elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)", rest):
                ldm = f"{coder}.mid.block_{int(m[1]) + 1}.{_vae_resnet(m[2])}"
            elif (m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest)) and m[1] in _VAE_ATTENTION:
                ldm = f"{coder}.mid.attn_1.{_VAE_ATTENTION[m[1]]}"
                if value.ndim == 2:
                    value = value[:, :, None, None]  # Linear (C, C) -> 1x1 conv (C, C, 1, 1)
        if ldm is None:
            raise ValueError(f"no LDM name for VAE parameter {key!r}")
        out[f"{VAE_PREFIX}{ldm}.{param}"] = value
    return _checked(out, state_dict, "VAE")


def _vae_resnet(name: str) -> str:
    return "nin_shortcut" if name == "conv_shortcut" else name


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``CLIPTextModel`` state dict -> SD1.x keys ``cond_stage_model.transformer.text_model.*``.

    transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` level); SD1.x
    files and diffusers' loader always use the nested names, so they are restored.
    """
    out = {}
    for key, value in state_dict.items():
        nested = key if key.startswith("text_model.") else f"text_model.{key}"
        out[TEXT_ENCODER_PREFIX + nested] = value
    return _checked(out, state_dict, "text encoder")


def _checked(out: dict, state_dict: Mapping, what: str) -> dict:
    if len(out) != len(state_dict):
        raise ValueError(f"{what}: {len(state_dict)} parameters mapped onto {len(out)} LDM keys (name collision)")
    return out


def save_sd_single_file(path: str | os.PathLike, unet, vae, text_encoder) -> Path:
    """Write UNet + VAE + CLIP text encoder as one original SD1.x checkpoint (.safetensors or .ckpt)."""
    state = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict()),
        **text_encoder_to_ldm(text_encoder.state_dict()),
    }
    return _write(path, state)


def save_controlnet_single_file(path: str | os.PathLike, controlnet) -> Path:
    """Write a ControlNet as an original lllyasviel checkpoint (.safetensors, or .ckpt/.pth via torch.save)."""
    return _write(path, controlnet_to_ldm(controlnet.state_dict(), controlnet.config))


def _write(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    # safetensors wants contiguous, unshared CPU tensors; the 1x1 reshapes above are views.
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"format": "pt"})
        else:
            # Original .ckpt files nest the weights under "state_dict"; diffusers unwraps it.
            torch.save({"state_dict": state}, tmp)
    return path
