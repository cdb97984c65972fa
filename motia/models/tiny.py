"""Tiny model set with the real SD1.5 + AnimateDiff + ControlNet structure, for CPU tests and the demo.

The configs mirror SD1.5's layout (4 down blocks, the first three with cross
attention; a 4-block VAE so the ControlNet's 8x conditioning embedding matches
the VAE scale factor) at a few thousand times fewer parameters. Models are built
from these configs with a fixed seed; ``ensure_tiny_bundle`` (below) saves them in
the real on-disk formats so tests load them through the same code as real weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

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
        # Zero-initialised output convs would make the ControlNet a no-op, and a zero conv_out of
        # the conditioning embedding would make it blind to the control video (the -1 border).
        zero_init = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
        for name, p in cn.named_parameters():
            if any(part in name for part in zero_init) and p.abs().sum() == 0:
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


# ---------------------------------------------------------------------------
# The on-disk bundle: the tiny models saved in the formats users have.

BUNDLE_VERSION = 1
BUNDLE_NAME = f"tiny-v{BUNDLE_VERSION}"
MM_HEADS_SIDECAR = {"motion_num_attention_heads": MOTION_ADAPTER_CONFIG["motion_num_attention_heads"]}

# "tiny:<name>" -> path inside the bundle.
TINY_REFS = {
    "sd": "sd",
    "controlnet": "controlnet",
    "motion_adapter": "motion_adapter",
    "mm_ckpt": "mm_tiny.ckpt",
    "vae": "vae",
    "sd_single": "sd_single.safetensors",
    "controlnet_single": "controlnet_single.safetensors",
}
_SINGLE_FILE_REFS = ("sd_single", "controlnet_single")


def tiny_tokenizer_files(folder) -> Path:
    """Write a CLIP tokenizer folder (vocab.json, merges.txt, configs) laid out like SD1.5's ``tokenizer/``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab()
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    tokenizer_config = dict(
        special,
        tokenizer_class="CLIPTokenizer",
        model_max_length=TEXT_ENCODER_CONFIG["max_position_embeddings"],
        do_lower_case=True,
        errors="replace",
        add_prefix_space=False,
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return folder


def motion_adapter_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers MotionAdapter keys -> the original AnimateDiff motion module layout (mm_sd_v15_v2.ckpt).

    The inverse of ``motia.models.loading.convert_original_motion_module``. The
    original keeps one sinusoidal ``pos_encoder.pe`` buffer per attention block,
    (1, max_seq_length, C); diffusers shares a single ``pos_embed.pe``.
    """
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key, count=1)
        if key.endswith(".pos_embed.pe"):
            stem = key[: -len("pos_embed.pe")]
            for i in (0, 1):
                out[f"{stem}attention_blocks.{i}.pos_encoder.pe"] = value.clone()
            continue
        key = re.sub(r"\.norm([12])\.", lambda m: f".norms.{int(m.group(1)) - 1}.", key)
        key = key.replace(".norm3.", ".ff_norm.")
        key = re.sub(r"\.attn([12])\.", lambda m: f".attention_blocks.{int(m.group(1)) - 1}.", key)
        out[key] = value
    return out


def default_cache_root() -> Path:
    """``$MOTIA_CACHE`` if set, else ``$XDG_CACHE_HOME/motia``, else ``~/.cache/motia``.

    As the XDG base-directory spec asks, a relative ``XDG_CACHE_HOME`` is ignored.
    """
    env = os.environ.get("MOTIA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).expanduser().is_absolute():
        return Path(xdg).expanduser() / "motia"
    return Path.home() / ".cache" / "motia"


def _ldm_module():
    try:
        spec = importlib.util.find_spec("motia.models.ldm")
    except (ImportError, ValueError):
        return None, None
    if spec is None or spec.origin is None:
        return None, None
    return spec, Path(spec.origin)


def _fingerprint() -> str:
    """Changes whenever anything that shapes the bundle changes: configs, this file, the LDM exporter."""
    h = hashlib.sha256(str(BUNDLE_VERSION).encode())
    h.update(Path(__file__).read_bytes())
    _, ldm_path = _ldm_module()
    h.update(ldm_path.read_bytes() if ldm_path is not None and ldm_path.exists() else b"no-ldm")
    return h.hexdigest()[:16]


def _read_manifest(bundle: Path) -> dict | None:
    try:
        return json.loads((bundle / "bundle.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(bundle: Path, fingerprint: str) -> bool:
    manifest = _read_manifest(bundle)
    return manifest is not None and manifest.get("fingerprint") == fingerprint


def _build_bundle(folder: Path, fingerprint: str) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    unet, vae, text_encoder = build_unet2d(), build_vae(), build_text_encoder()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_tokenizer_files(folder / "tokenizer_src"))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "sd")
    # transformers 5 saves only tokenizer.json; SD1.5's folder has vocab.json + merges.txt.
    shutil.rmtree(folder / "sd" / "tokenizer")
    (folder / "tokenizer_src").rename(folder / "sd" / "tokenizer")

    controlnet = build_controlnet()
    controlnet.save_pretrained(folder / "controlnet")
    adapter = build_motion_adapter()
    adapter.save_pretrained(folder / "motion_adapter")
    torch.save(motion_adapter_to_original(adapter.state_dict()), folder / TINY_REFS["mm_ckpt"])
    # Head count cannot be read from weights; the loader takes it from this sidecar.
    (folder / "mm_tiny.json").write_text(json.dumps(MM_HEADS_SIDECAR, indent=2))
    # A second, different VAE (like sd-vae-ft-mse beside SD1.5's own), so tests can tell them apart.
    build_vae(seed=5).save_pretrained(folder / "vae")

    manifest = {"version": BUNDLE_VERSION, "fingerprint": fingerprint, "single_files": False, "single_files_note": ""}
    spec, _ = _ldm_module()
    if spec is None:
        manifest["single_files_note"] = "motia.models.ldm is not available"
    else:
        try:
            from motia.models import ldm

            ldm.save_sd_single_file(folder / TINY_REFS["sd_single"], unet, vae, text_encoder)
            ldm.save_controlnet_single_file(folder / TINY_REFS["controlnet_single"], controlnet)
            manifest["single_files"] = True
        except Exception as e:  # noqa: BLE001 - a broken exporter must not take the whole bundle down
            logger.warning("tiny bundle: single-file export failed: %s", e)
            manifest["single_files_note"] = f"single-file export failed: {type(e).__name__}: {e}".splitlines()[0]
            for name in _SINGLE_FILE_REFS:
                (folder / TINY_REFS[name]).unlink(missing_ok=True)
    (folder / "bundle.json").write_text(json.dumps(manifest, indent=2))


def ensure_tiny_bundle(root=None) -> Path:
    """Return the tiny bundle folder (``<root>/tiny-v1``), building it first if missing or out of date.

    ``root`` defaults to ``default_cache_root()``. The bundle is built
    in a temporary folder beside it and renamed into place, so concurrent processes
    never see a half-written bundle: the first finished rename wins, the others
    discard their copy. It is rebuilt when this file, the LDM exporter or the
    bundle version changes (``bundle.json`` holds the fingerprint).
    """
    root = Path(root).expanduser() if root is not None else default_cache_root()
    final = root / BUNDLE_NAME
    fingerprint = _fingerprint()
    if _is_current(final, fingerprint):
        return final
    from motia.utils import _library_progress

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLE_NAME}.build.", dir=root))
    try:
        with _library_progress(False):
            _build_bundle(tmp, fingerprint)
        try:
            os.rename(tmp, final)  # atomic; fails if another process already installed one
        except OSError:
            if not _is_current(final, fingerprint):
                # An out-of-date bundle: move it aside, then install ours.
                old = Path(tempfile.mkdtemp(prefix=f".{BUNDLE_NAME}.old.", dir=root))
                try:
                    os.rename(final, old / "bundle")
                except FileNotFoundError:
                    pass
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not _is_current(final, fingerprint):
                        raise
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_tiny(ref: str, key: str | None = None) -> str:
    """Map ``tiny:<name>`` (e.g. ``tiny:sd``, ``tiny:mm_ckpt``) to its path in the bundle, building it if needed."""
    from motia.errors import ConfigError, InputError

    where = f"{key}: " if key else ""
    name = ref[len("tiny:"):] if ref.startswith("tiny:") else ref
    if name not in TINY_REFS:
        raise ConfigError(f"{where}unknown tiny model '{ref}'; known: {', '.join('tiny:' + n for n in TINY_REFS)}")
    bundle = ensure_tiny_bundle()
    path = bundle / TINY_REFS[name]
    if name in _SINGLE_FILE_REFS and not path.exists():
        note = (_read_manifest(bundle) or {}).get("single_files_note", "")
        raise InputError(f"{where}'{ref}' is not in the tiny bundle ({note or 'not built'})")
    return str(path)
