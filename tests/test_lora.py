"""LoRA attach/save/load on a tiny UNetMotionModel: targets, trainability, exact round trips, diffusers loading, errors."""

import copy
import json

import pytest
import torch

from motia import __version__, lora
from motia.errors import ConfigError, InputError

# The reference's layers (src/utils/register.py): q/k/v of both temporal attentions and ff.net.2.
MOTION_LEAVES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v", "ff.net.2")
SPATIAL_LEAVES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")


@pytest.fixture(scope="module")
def base_unet():
    from diffusers import UNetMotionModel

    from motia.models.tiny import build_motion_adapter, build_unet2d

    return UNetMotionModel.from_unet2d(build_unet2d(), build_motion_adapter()).eval()


@pytest.fixture
def unet(base_unet):
    return copy.deepcopy(base_unet)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 2, 8, 8, generator=g)  # (B, C, F, H, W)
    text = torch.randn(2, 5, 32, generator=g)  # (B*F, tokens, dim)
    return sample, text


def forward(unet, inputs):
    sample, text = inputs
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=text).sample


def randomise(unet, seed=0):
    """Give every LoRA weight (lora_B included, zero-initialised by peft) a random value."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(lora._adapter_parameters(unet, "motia").items()):
        p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2


def _names_by_hand(unet, block_word, leaves):
    return {
        n for n, _ in unet.named_modules()
        if f".{block_word}." in f".{n}" and ".transformer_blocks." in n and any(n.endswith("." + leaf) for leaf in leaves)
    }


def test_temporal_preset_trains_only_motion_lora(unet):
    names = lora.add_lora(unet, "temporal", rank=4, alpha=32)
    assert set(names) == _names_by_hand(unet, "motion_modules", MOTION_LEAVES)
    # 4 down + 2 x 4 up + 1 mid motion modules, 7 layers each.
    assert len(names) == 13 * 7
    assert all("motion_modules" in n for n in names)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.motia.weight" for n in names for ab in "AB"}
    assert lora.lora_targets(unet) == names
    lora_a = dict(unet.named_parameters())[f"{names[0]}.lora_A.motia.weight"]
    assert lora_a.shape[0] == 4 and unet.peft_config["motia"].lora_alpha == 32


def test_temporal_preset_is_the_references_layers(base_unet):
    names = lora.resolve_targets(base_unet, "temporal")
    # The reference registers a LoRA on ff.net.0.proj that its forward never calls: not trained here.
    assert not any(n.endswith("ff.net.0.proj") for n in names)
    assert sum(n.endswith("ff.net.2") for n in names) == 13
    # The previous set (feed-forward input projection too) stays available under another name.
    wide = lora.resolve_targets(base_unet, "temporal+ff_in")
    assert set(wide) - set(names) == {n[: -len("2")] + "0.proj" for n in names if n.endswith("ff.net.2")}


def test_lora_init_is_the_references_gaussian(unet):
    # The reference's LoraLinear: down ~ N(0, std 1/r), up = 0 (peft init_lora_weights="gaussian").
    rank = 4
    names = lora.add_lora(unet, "temporal", rank=rank, alpha=8 * rank)
    params = dict(unet.named_parameters())
    down = torch.cat([params[f"{n}.lora_A.motia.weight"].flatten() for n in names])
    assert abs(down.std().item() - 1 / rank) < 0.1 / rank and abs(down.mean().item()) < 0.02
    assert all(not params[f"{n}.lora_B.motia.weight"].any() for n in names)
    assert unet.peft_config["motia"].lora_alpha / unet.peft_config["motia"].r == 8  # the reference's k = 8


def test_temporal_spatial_preset_adds_spatial_self_attention(base_unet):
    temporal = set(lora.resolve_targets(base_unet, "temporal"))
    both = set(lora.resolve_targets(base_unet, "temporal+spatial"))
    extra = both - temporal
    assert temporal < both
    assert extra == _names_by_hand(base_unet, "attentions", SPATIAL_LEAVES)
    # 3 down + 2 x 3 up + 1 mid spatial transformers, 4 projections each.
    assert len(extra) == 10 * 4
    assert not any("motion_modules" in n or "attn2" in n for n in extra)


def test_target_patterns_and_errors(base_unet):
    assert lora.resolve_targets(base_unet, [r"mid_block\.motion_modules\.0\..*\.to_q"]) == [
        "mid_block.motion_modules.0.transformer_blocks.0.attn1.to_q",
        "mid_block.motion_modules.0.transformer_blocks.0.attn2.to_q",
    ]
    for bad in ("temporal_only", [r"to_q"], [r".*motion_modules.*to_q", r".*no_such_layer"], []):
        with pytest.raises(ConfigError, match="adapt.lora.targets"):
            lora.resolve_targets(base_unet, bad)
    with pytest.raises(ConfigError, match="adapt.lora.rank"):
        lora.add_lora(copy.deepcopy(base_unet), rank=0)


def test_half_precision_base_keeps_fp32_lora(unet):
    unet.half()
    names = lora.add_lora(unet, [r".*mid_block\.motion_modules.*"], rank=2, alpha=4)
    params = dict(unet.named_parameters())
    for n in names:
        assert params[f"{n}.lora_A.motia.weight"].dtype == torch.float32
        assert params[f"{n}.base_layer.weight"].dtype == torch.float16
        assert not params[f"{n}.base_layer.weight"].requires_grad


def test_save_load_roundtrip_and_diffusers_loader(unet, base_unet, inputs, tmp_path):
    from diffusers import AnimateDiffPipeline

    from motia.models.tiny import build_scheduler

    names = lora.add_lora(unet, "temporal+spatial", rank=4, alpha=32)
    randomise(unet)
    y = forward(unet, inputs)
    with lora.lora_disabled(unet):
        y_base = forward(unet, inputs)
    assert (y - y_base).abs().max() > 1e-2  # the LoRA really acts
    assert all(p.requires_grad for p in lora._adapter_parameters(unet, "motia").values())  # restored

    path = tmp_path / "clip.lora.safetensors"
    adaptation = {"steps": 3, "lr": 1e-4, "mask": {"left": [0.0, 0.4]}}
    lora.save_lora(path, unet, {"base_model": "runwayml/sd15", "source_clip": "clip.mp4", "adaptation": adaptation})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left

    meta = lora.read_lora_metadata(path)
    # alpha/rank is folded into lora.up: the file says alpha = rank and keeps the trained alpha as information.
    assert meta["targets"] == names and meta["rank"] == 4 and meta["alpha"] == 4 and meta["dropout"] == 0
    assert meta["trained_alpha"] == 32 and meta["layout"] == "motia"
    assert meta["adaptation"] == adaptation and meta["source_clip"] == "clip.mp4"
    assert meta["format"] == lora.FORMAT == "motia-lora/2" and meta["motia_version"] == __version__

    fresh = copy.deepcopy(base_unet)
    assert lora.load_lora(fresh, path) == meta
    assert not any(p.requires_grad for p in fresh.parameters())
    assert torch.equal(forward(fresh, inputs), y)
    lora.remove_lora(fresh)
    assert not hasattr(fresh, "peft_config") or not fresh.peft_config
    assert torch.equal(forward(fresh, inputs), y_base)

    # A stock diffusers pipeline reads the same file, alpha included.
    pipe = AnimateDiffPipeline(vae=None, text_encoder=None, tokenizer=None, unet=copy.deepcopy(base_unet),
                               motion_adapter=None, scheduler=build_scheduler())
    pipe.load_lora_weights(str(path), adapter_name="clip")
    torch.testing.assert_close(forward(pipe.unet, inputs), y, rtol=0, atol=1e-6)


def _small_lora_file(unet, path):
    lora.add_lora(unet, [r".*mid_block\.motion_modules\.0\..*attn1\.to_[qk]"], rank=2, alpha=4)
    randomise(unet)
    lora.save_lora(path, unet, {"source_clip": "c.mp4"})


def _rewrite(src, dst, tensors_fn=lambda t: t, meta_fn=lambda m: m):
    import safetensors.torch
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    safetensors.torch.save_file(tensors_fn(tensors), str(dst), metadata=meta_fn(meta))


def test_load_errors_name_the_file(unet, base_unet, tmp_path):
    import safetensors.torch

    good = tmp_path / "good.safetensors"
    _small_lora_file(unet, good)
    first = sorted(lora.lora_state_dict(unet))[0]

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file")
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"unet.x.lora.down.weight": torch.zeros(2, 2)}, str(foreign))
    missing_key = tmp_path / "missing_key.safetensors"
    _rewrite(good, missing_key, tensors_fn=lambda t: {k: v for k, v in t.items() if k != first})
    wrong_rank = tmp_path / "wrong_rank.safetensors"
    _rewrite(good, wrong_rank, meta_fn=lambda m: {**m, "motia.rank": "3"})
    other_model = tmp_path / "other_model.safetensors"
    _rewrite(good, other_model, meta_fn=lambda m: {**m, "motia.targets": json.dumps(["blocks.0.attn.qkv"])})

    target = copy.deepcopy(base_unet)  # reused: every failed load must leave it untouched
    for bad in (tmp_path / "absent.safetensors", garbage, foreign, missing_key, wrong_rank, other_model):
        with pytest.raises(InputError) as err:
            lora.load_lora(target, bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
        assert not getattr(target, "peft_config", None)  # nothing left attached
        assert not any(".lora_" in n for n, _ in target.named_parameters())

    with pytest.raises(ValueError, match="rank"):
        lora.save_lora(tmp_path / "x.safetensors", unet, {"rank": 3})
    assert not (tmp_path / "x.safetensors").exists()
