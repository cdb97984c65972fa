"""Automatic prompts: caption a clip's middle frame with BLIP when the config says ``prompt: auto``.

The paper prompts each clip with a BLIP caption; ``resolve_prompt`` does the same
(``caption.model``: a local folder saved with ``save_pretrained``, a cached hub id
such as ``Salesforce/blip-image-captioning-base``, or ``tiny:blip``). The loaded
model is kept per process (keyed by source and device), so a batch captions many
clips with one load.

``tiny:blip`` is a randomly initialised BLIP with the real architecture at a few
thousand parameters and a hand-written BERT vocabulary, built once into the cache
root (``$MOTIA_CACHE``, else ``$XDG_CACHE_HOME/motia`` or ``~/.cache/motia``) under ``tiny-blip-v1`` and loaded
through the same ``from_pretrained`` code as the real one. Its captions are
random words, but they are words: decoding is greedy, special tokens other than
the end token are suppressed and at least one token is generated.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from motia.errors import InputError

logger = logging.getLogger(__name__)

TINY_BLIP = "tiny-blip-v1"
_TINY_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
_TINY_WORDS = [
    "a", "an", "the", "of", "on", "in", "with", "and", "at", "near",
    "man", "woman", "dog", "cat", "bird", "car", "boat", "horse", "person", "child",
    "beach", "street", "field", "forest", "river", "mountain", "city", "road", "sky", "water",
    "walking", "running", "riding", "sitting", "standing", "flying", "swimming", "driving", "playing", "jumping",
    "red", "blue", "green", "white", "black", "sunny", "snowy", "small", "large", "old",
]  # fmt: skip
_TINY_IMAGE_SIZE = 32


# ----------------------------------------------------------------------------- the tiny model


def build_tiny_blip(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Build a tiny BLIP captioner (seeded) and save model + processor into ``folder``; return it.

    Real layout: ``BlipForConditionalGeneration`` from a ``BlipConfig`` (tiny vision and
    text configs), ``BlipProcessor`` = ``BlipImageProcessor`` (32 px) + ``BertTokenizer`` from
    a hand-written ``vocab.txt`` whose ``[DEC]`` is the decoder's start token, as in
    Salesforce's checkpoints.
    """
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _TINY_SPECIALS + _TINY_WORDS
    ids = {tok: i for i, tok in enumerate(vocab)}
    src = folder / "vocab_src"
    src.mkdir(exist_ok=True)
    (src / "vocab.txt").write_text("".join(tok + "\n" for tok in vocab))
    tokenizer = BertTokenizer(str(src / "vocab.txt"), do_lower_case=True, bos_token="[DEC]")
    image_processor = BlipImageProcessor(size={"height": _TINY_IMAGE_SIZE, "width": _TINY_IMAGE_SIZE})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)

    # BLIP's vision default initializer_range (1e-10) would make every image look alike.
    vision = dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                  num_attention_heads=2, image_size=_TINY_IMAGE_SIZE, patch_size=8, initializer_range=0.02)  # fmt: skip
    text = dict(vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                projection_dim=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                bos_token_id=ids["[DEC]"], eos_token_id=ids["[SEP]"], sep_token_id=ids["[SEP]"],
                pad_token_id=ids["[PAD]"])  # fmt: skip
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    from motia.utils import _library_progress

    with _library_progress(False):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    shutil.rmtree(src)
    return folder


def ensure_tiny_blip(root: str | os.PathLike | None = None) -> Path:
    """``<root>/tiny-blip-v1``, built first if missing: in a temporary folder renamed into place,
    so concurrent processes never load a half-written model (the first rename wins)."""
    from motia.models.tiny import default_cache_root

    root = Path(root).expanduser() if root is not None else default_cache_root()
    final = root / TINY_BLIP
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_BLIP}.build.", dir=root))
    try:
        build_tiny_blip(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- captioning


def _resolve_ref(model_ref: str) -> str:
    """A folder or hub id for ``from_pretrained``; missing local paths fail here with a clear message."""
    from motia.models.loading import locate

    if model_ref == "tiny:blip":
        return str(ensure_tiny_blip())
    if model_ref.startswith("tiny:"):
        raise InputError(f"caption.model: unknown tiny model '{model_ref}'; the tiny captioner is 'tiny:blip'")
    src = locate(model_ref, "caption.model")
    if src.kind == "file":
        raise InputError(f"caption.model: {model_ref} is a file; give the folder BLIP was saved in (save_pretrained)")
    return src.location


@functools.lru_cache(maxsize=2)
def _load(model_ref: str, device: str):
    """(processor, model) for ``model_ref`` on ``device``; cached per process."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from motia.models.loading import hub_cache_only
    from motia.utils import _library_progress

    ref = _resolve_ref(model_ref)
    try:
        with _library_progress(False), hub_cache_only(needed=not Path(ref).exists()):
            processor = BlipProcessor.from_pretrained(ref)
            model = BlipForConditionalGeneration.from_pretrained(ref)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, hub errors: all mean "can't load this"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"caption.model: cannot load a BLIP captioner from '{model_ref}' ({reason}); give a folder saved with "
            "save_pretrained, a hub id already in the Hugging Face cache, or tiny:blip"
        ) from None
    if len(processor.tokenizer) < 4 or processor.tokenizer.sep_token_id is None:
        # transformers 5 may hand back a near-empty tokenizer for an unreachable hub id.
        raise InputError(f"caption.model: '{model_ref}' gave an unusable tokenizer ({len(processor.tokenizer)} tokens)")
    return processor, model.to(device).eval()


@torch.no_grad()
def caption_frame(frame: torch.Tensor, model_ref: str, max_new_tokens: int = 30, device: str | torch.device = "cpu") -> str:
    """Caption one frame ``(3, H, W)`` in [0, 1] with BLIP (greedy); returns non-empty lower-case text.

    Special tokens other than the end token are suppressed and at least one token is
    generated, so even an untrained model gives words.
    """
    from PIL import Image

    from motia.video import to_uint8

    if frame.ndim != 3 or frame.shape[0] != 3:
        raise ValueError(f"frame must be (3, H, W), got {tuple(frame.shape)}")
    device = str(torch.device(device))
    processor, model = _load(model_ref, device)
    tok = processor.tokenizer
    image = Image.fromarray(to_uint8(frame)[0])  # (H, W, 3) uint8
    pixels = processor(images=image, return_tensors="pt").pixel_values.to(device, next(model.parameters()).dtype)
    eos = tok.sep_token_id
    suppress = sorted({i for i in tok.all_special_ids if i != eos})
    limit = model.config.text_config.max_position_embeddings - 1  # the start token takes one position
    out = model.generate(
        pixel_values=pixels, max_new_tokens=max(1, min(max_new_tokens, limit)), min_new_tokens=1,
        do_sample=False, num_beams=1, suppress_tokens=suppress,
    )  # (1, 1 + n)
    text = tok.decode(out[0], skip_special_tokens=True).strip()
    if not text:
        raise InputError(f"caption.model: '{model_ref}' produced an empty caption; set prompt to a text instead of 'auto'")
    return text


def resolve_prompt(cfg, clip) -> str:
    """The job's prompt: ``cfg.prompt``, or, when it is ``auto``, a caption of the clip's middle frame.

    ``clip`` is a ``motia.video.Clip`` (frames ``(F, 3, H, W)`` in [0, 1]). The captioner runs on
    ``models.device`` and stays loaded for the next clip.
    """
    if cfg.prompt.strip() != "auto":
        return cfg.prompt
    from motia.models import resolve_device

    frame = clip.frames[clip.frames.shape[0] // 2]  # (3, H, W)
    text = caption_frame(frame, cfg.caption.model, cfg.caption.max_new_tokens, resolve_device(cfg.models.device))
    logger.info("caption for %s: %s", getattr(clip, "source", "clip"), text)
    return text
