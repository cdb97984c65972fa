"""Automatic prompts: the tiny BLIP builds atomically, loads through from_pretrained and captions in words."""

import os

import pytest
import torch

from motia.caption import TINY_BLIP, build_tiny_blip, caption_frame, ensure_tiny_blip, resolve_prompt
from motia.config import load_config
from motia.errors import InputError
from motia.video import Clip


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return ensure_tiny_blip(tmp_path_factory.mktemp("cache"))


def _frames(seed: int, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 40, 56, generator=g)  # (F, 3, H, W)


def test_tiny_blip_build_is_atomic_and_reused(blip_dir):
    root = blip_dir.parent
    assert blip_dir.name == TINY_BLIP
    assert (blip_dir / "config.json").is_file() and (blip_dir / "model.safetensors").is_file()
    assert [p.name for p in root.iterdir()] == [TINY_BLIP]  # no temporary build folder left behind
    stamp = (blip_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_blip(root) == blip_dir
    assert (blip_dir / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt


def test_caption_is_nonempty_deterministic_vocabulary_text(blip_dir):
    vocab = set((blip_dir / "tokenizer.json").read_text().split('"'))
    frame = _frames(0)[1]
    text = caption_frame(frame, str(blip_dir), max_new_tokens=6, device="cpu")
    assert isinstance(text, str) and text.strip()
    words = text.split()
    assert 1 <= len(words) <= 6
    assert all(w in vocab for w in words), words
    assert not any(w.startswith("[") for w in words)  # special tokens are never generated
    assert caption_frame(frame, str(blip_dir), max_new_tokens=6) == text


def test_resolve_prompt_only_captions_auto(blip_dir, tmp_path):
    clip = Clip(_frames(1), 8.0, tmp_path / "x.mp4", [0, 1, 2])
    cfg = load_config(None, ["prompt=a red car", f"caption.model={blip_dir}", "caption.max_new_tokens=4"])
    assert resolve_prompt(cfg, clip) == "a red car"
    cfg = load_config(None, ["prompt=auto", f"caption.model={blip_dir}", "caption.max_new_tokens=4", "models.device=cpu"])
    text = resolve_prompt(cfg, clip)
    assert text and text != "auto"
    assert text == caption_frame(clip.frames[1], str(blip_dir), 4)  # the middle frame


def test_unloadable_caption_model_names_the_key(tmp_path):
    with pytest.raises(InputError, match=r"^caption\.model: .*does not exist"):
        caption_frame(_frames(2)[0], str(tmp_path / "missing"), 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"^caption\.model: cannot load a BLIP captioner"):
        caption_frame(_frames(2)[0], str(empty), 4)
    with pytest.raises(InputError, match=r"^caption\.model: unknown tiny model"):
        caption_frame(_frames(2)[0], "tiny:nope", 4)


def test_build_tiny_blip_is_seeded(tmp_path):
    from safetensors.torch import load_file

    a = load_file(str(build_tiny_blip(tmp_path / "a") / "model.safetensors"))
    b = load_file(str(build_tiny_blip(tmp_path / "b") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not os.path.exists(tmp_path / "a" / "vocab_src")
