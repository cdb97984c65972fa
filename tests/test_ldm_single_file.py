"""Original-layout single files from motia.models.ldm load back bit-identically via diffusers' from_single_file."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

from motia.models import ldm, tiny

SUFFIXES = [".safetensors", ".ckpt"]


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    got, want = loaded.state_dict(), original.state_dict()
    assert set(got) == set(want)
    # from_single_file builds on the meta device; a weight missing from the file stays there.
    on_meta = [k for k, v in got.items() if v.is_meta]
    assert not on_meta, f"not loaded: {on_meta[:5]}"
    different = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not different, f"changed: {different[:5]}"


def write_tokenizer(folder) -> None:
    vocab, merges = tiny.tiny_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import CLIPTokenizer

    root = tmp_path_factory.mktemp("ldm")
    write_tokenizer(root / "tok")
    m = SimpleNamespace(
        unet=tiny.build_unet2d(),
        vae=tiny.build_vae(),
        text_encoder=tiny.build_text_encoder(),
        controlnet=tiny.build_controlnet(),
        root=root,
        pipe_dir=root / "pipe",
        cn_dir=root / "controlnet",
    )
    StableDiffusionPipeline(
        vae=m.vae,
        text_encoder=m.text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(root / "tok"),
        unet=m.unet,
        scheduler=tiny.build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(m.pipe_dir)
    # Keep only configs and tokenizer files, so every weight loaded below must come from the single files.
    for weights in m.pipe_dir.glob("*/*.safetensors"):
        weights.unlink()
    m.controlnet.save_config(m.cn_dir)
    return m


@pytest.fixture(scope="module", params=SUFFIXES)
def files(models, request):
    suffix = request.param
    sd = ldm.save_sd_single_file(models.root / f"sd15{suffix}", models.unet, models.vae, models.text_encoder)
    cn = ldm.save_controlnet_single_file(models.root / f"control{suffix}", models.controlnet)
    return SimpleNamespace(sd=str(sd), controlnet=str(cn))


def test_tiny_layout_matches_ldm_numbering(models):
    unet = ldm.unet_to_ldm(models.unet.state_dict(), models.unet.config)
    u = ldm.UNET_PREFIX
    # Hand-derived for 4 blocks x 1 layer: a downsampler after each of the first three
    # blocks; the upsampler shares the block's last output slot, after its attention if any.
    ops = {k for k in unet if ".op." in k}
    assert ops == {f"{u}input_blocks.{i}.0.op.{p}" for i in (2, 4, 6) for p in ("weight", "bias")}
    assert {k for k in unet if k.endswith(".conv.weight")} == {
        f"{u}output_blocks.1.1.conv.weight",
        f"{u}output_blocks.3.2.conv.weight",
        f"{u}output_blocks.5.2.conv.weight",
    }
    assert f"{u}input_blocks.5.0.skip_connection.weight" in unet  # 32 -> 64 channels
    assert f"{u}input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight" in unet
    assert f"{u}middle_block.2.out_layers.3.weight" in unet
    assert f"{u}output_blocks.7.1.proj_out.weight" in unet
    assert f"{u}out.2.weight" in unet and f"{u}time_embed.2.bias" in unet
    assert not any(".up_blocks." in k or ".resnets." in k for k in unet)

    vae = ldm.vae_to_ldm(models.vae.state_dict())
    assert vae["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert vae["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (16, 16, 1, 1)
    # Decoder levels are numbered from the highest resolution: diffusers' up_blocks.3 is up.0.
    up0 = models.vae.state_dict()["decoder.up_blocks.3.resnets.0.conv1.weight"]
    assert torch.equal(vae["first_stage_model.decoder.up.0.block.0.conv1.weight"], up0)
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in vae
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in vae
    assert "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight" in vae  # 8 -> 16 channels

    clip = ldm.text_encoder_to_ldm(models.text_encoder.state_dict())
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in clip
    assert "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias" in clip

    cn = ldm.controlnet_to_ldm(models.controlnet.state_dict(), models.controlnet.config)
    c = ldm.CONTROLNET_PREFIX
    assert {k for k in cn if "input_hint_block" in k and k.endswith("weight")} == {
        f"{c}input_hint_block.{i}.weight" for i in range(0, 15, 2)
    }
    assert f"{c}zero_convs.7.0.weight" in cn and f"{c}zero_convs.8.0.weight" not in cn
    assert f"{c}middle_block_out.0.bias" in cn and f"{c}input_blocks.6.0.op.weight" in cn

    # diffusers' key-based detection still recognises the tiny files' model types.
    assert infer_diffusers_model_type({**unet, **vae, **clip}) == "v1"
    assert infer_diffusers_model_type(cn) == "controlnet"


def test_unmapped_parameters_are_refused(models):
    state = dict(models.unet.state_dict())
    state["down_blocks.0.motion_modules.0.proj_in.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="motion_modules"):
        ldm.unet_to_ldm(state, models.unet.config)
    with pytest.raises(ValueError, match="layers_per_block"):
        ldm.unet_to_ldm(models.unet.state_dict(), {**models.unet.config, "layers_per_block": (1, 1, 1, 1)})
    # The original hint encoder has exactly 8 convs (output at index 14); fewer cannot be written.
    cn = {k: v for k, v in models.controlnet.state_dict().items() if ".blocks.5." not in k}
    with pytest.raises(ValueError, match="inner convs"):
        ldm.controlnet_to_ldm(cn, models.controlnet.config)
    vae = dict(models.vae.state_dict(), **{"encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="encoder.extra.weight"):
        ldm.vae_to_ldm(vae)


def test_single_file_holds_exactly_the_converted_weights(models, files):
    sd = load_single_file_checkpoint(files.sd)
    n = sum(len(m.state_dict()) for m in (models.unet, models.vae, models.text_encoder))
    assert len(sd) == n
    assert all(k.startswith((ldm.UNET_PREFIX, ldm.VAE_PREFIX, ldm.TEXT_ENCODER_PREFIX)) for k in sd)
    cn = load_single_file_checkpoint(files.controlnet)
    assert len(cn) == len(models.controlnet.state_dict())
    assert all(k.startswith(ldm.CONTROLNET_PREFIX) for k in cn)


def test_unet_and_vae_from_single_file(models, files):
    unet = UNet2DConditionModel.from_single_file(files.sd, config=str(models.pipe_dir), subfolder="unet")
    assert_same_weights(unet, models.unet)
    vae = AutoencoderKL.from_single_file(files.sd, config=str(models.pipe_dir), subfolder="vae")
    assert_same_weights(vae, models.vae)


def test_pipeline_from_single_file(models, files):
    pipe = StableDiffusionPipeline.from_single_file(files.sd, config=str(models.pipe_dir), safety_checker=None)
    assert_same_weights(pipe.unet, models.unet)
    assert_same_weights(pipe.vae, models.vae)
    assert_same_weights(pipe.text_encoder, models.text_encoder)
    ids = pipe.tokenizer("the cat").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id


def test_controlnet_from_single_file(models, files):
    cn = ControlNetModel.from_single_file(files.controlnet, config=str(models.cn_dir))
    assert_same_weights(cn, models.controlnet)


def test_failed_write_leaves_no_file(models, tmp_path, monkeypatch):
    target = tmp_path / "broken.safetensors"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError):
        ldm.save_controlnet_single_file(target, models.controlnet)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fullsize
def test_fullsize_sd15_unet_and_controlnet_round_trip(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
        controlnet = ControlNetModel(cross_attention_dim=768)
    state = ldm.unet_to_ldm(unet.state_dict(), unet.config)
    # Facts about v1-5-pruned-emaonly's UNet: 686 tensors, these names.
    assert len(state) == 686
    for name in (
        "input_blocks.3.0.op.weight",
        "input_blocks.9.0.op.weight",
        "output_blocks.2.1.conv.weight",
        "output_blocks.5.2.conv.weight",
        "output_blocks.8.2.conv.weight",
        "output_blocks.11.0.skip_connection.weight",
    ):
        assert ldm.UNET_PREFIX + name in state
    assert state[ldm.UNET_PREFIX + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape == (1280, 768)
    del state

    # The config folder carries no weights: everything loaded comes from the single files.
    unet.save_config(tmp_path / "pipe" / "unet")
    file = ldm.save_sd_single_file(tmp_path / "sd15.safetensors", unet, tiny.build_vae(), tiny.build_text_encoder())
    loaded = UNet2DConditionModel.from_single_file(str(file), config=str(tmp_path / "pipe"), subfolder="unet")
    assert_same_weights(loaded, unet)
    del loaded, unet
    file.unlink()

    controlnet.save_config(tmp_path / "controlnet")
    file = ldm.save_controlnet_single_file(tmp_path / "control_sd15.safetensors", controlnet)
    assert len(load_single_file_checkpoint(str(file))) == len(controlnet.state_dict())
    loaded = ControlNetModel.from_single_file(str(file), config=str(tmp_path / "controlnet"))
    assert_same_weights(loaded, controlnet)
