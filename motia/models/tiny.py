"""Tiny model set with the real SD1.5 + AnimateDiff + ControlNet structure, for CPU tests and the demo.

The configs mirror SD1.5's layout (4 down blocks, the first three with cross
attention; a 4-block VAE so the ControlNet's 8x conditioning embedding matches
the VAE scale factor) at a few thousand times fewer parameters. Models are built
from these configs with a fixed seed; ``ensure_tiny_bundle`` (below) saves them in
the real on-disk formats so tests load them through the same code as real weights.
"""

from __future__ import annotations

import torch

TEXT_DIM = 32
BLOCKS = (32, 32, 64, 64)
MAX_FRAMES = 32  # motion module positional encoding length, as AnimateDiff v2

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=BLOCKS,
    layers_per_block=1,
    cross_attention_dim=TEXT_DIM,
    attention_head_dim=8,
    norm_num_groups=32,
)

MOTION_ADAPTER_CONFIG = dict(
    block_out_channels=BLOCKS,
    motion_layers_per_block=1,
    motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=2,
    motion_norm_num_groups=32,
    motion_max_seq_length=MAX_FRAMES,
    use_motion_mid_block=True,
)

CONTROLNET_CONFIG = dict(
    in_channels=4,
    down_block_types=UNET_CONFIG["down_block_types"],
    block_out_channels=BLOCKS,
    layers_per_block=1,
    cross_attention_dim=TEXT_DIM,
    attention_head_dim=8,
    norm_num_groups=32,
    conditioning_embedding_out_channels=(8, 16, 16, 32),  # 3 downsamplings = VAE factor 8
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)

TEXT_ENCODER_CONFIG = dict(
    hidden_size=TEXT_DIM,
    intermediate_size=64,
    num_attention_heads=2,
    num_hidden_layers=2,
    max_position_embeddings=77,
    projection_dim=TEXT_DIM,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-symbol table (the standard one; written out to avoid private imports)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_unet2d(seed: int = 0):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet2DConditionModel(**UNET_CONFIG)


def build_motion_adapter(seed: int = 1):
    from diffusers import MotionAdapter

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        adapter = MotionAdapter(**MOTION_ADAPTER_CONFIG)
        # diffusers zero-inits the motion output projections; give them small
        # random values so the motion modules actually act in tests.
        for name, p in adapter.named_parameters():
            if "proj_out" in name and p.abs().sum() == 0:
                p.data.normal_(0, 0.02)
        return adapter


def build_controlnet(seed: int = 2):
    from diffusers import ControlNetModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        cn = ControlNetModel(**CONTROLNET_CONFIG)
        # Zero-initialised output convs would make the ControlNet a no-op.
        for name, p in cn.named_parameters():
            if ("controlnet_down_blocks" in name or "controlnet_mid_block" in name) and p.abs().sum() == 0:
                p.data.normal_(0, 0.02)
        return cn


def build_vae(seed: int = 3):
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder(seed: int = 4):
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vocab = tiny_vocab()[0]
        config = CLIPTextConfig(
            **TEXT_ENCODER_CONFIG,
            vocab_size=len(vocab),
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
        return CLIPTextModel(config)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """A hand-written byte-level BPE vocabulary: every byte symbol, its </w> form, a few merges.

    Every merge joins two tokens present in the vocab and produces one that is too
    (the CLIP tokenizer silently breaks otherwise).
    """
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = []
    for a, b in [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "n</w>"), ("i", "n"), ("in", "g</w>")]:
        merges.append(f"{a} {b}")
        if a + b not in vocab_list:
            vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges
