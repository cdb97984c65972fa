"""Model loading: tiny bundle folders, single files and original AnimateDiff checkpoints, and the errors users see."""

import json
import shutil

import pytest
import torch

from motia.errors import ConfigError, InputError
from motia.models import tiny
from motia.models.loading import (
    assemble_motion_unet,
    classify_checkpoint,
    load_components,
    load_motion_adapter,
    read_state_dict,
    resolve_device,
    resolve_dtype,
)

TINY = dict(base="tiny:sd", controlnet="tiny:controlnet", motion_adapter="tiny:motion_adapter", dtype="auto", device="cpu")


@pytest.fixture(scope="module")
def folder_components(tiny_bundle):
    return load_components(**TINY)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _denoise(comps, frames=3, seed=0):
    """One UNetMotionModel call with ControlNet residuals, on a (B, C, F, H, W) latent."""
    g = torch.Generator().manual_seed(seed)
    b, f = 1, frames
    latents = torch.randn(b, 4, f, 8, 8, generator=g)  # (B, C, F, H, W)
    control = torch.rand(b * f, 3, 64, 64, generator=g)  # (B*F, 3, H, W), RGB in [0, 1]
    control[..., :16] = -1.0  # the region to generate
    ids = comps.tokenizer(["a sunny beach"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        text = comps.text_encoder(ids)[0]  # (B, 77, D)
        text_f = text.repeat_interleave(f, dim=0)  # (B*F, 77, D): the motion UNet wants one per frame
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, 4, 8, 8)  # (B*F, C, H, W)
        down, mid = comps.controlnet(flat, 500, encoder_hidden_states=text_f, controlnet_cond=control, return_dict=False)
        out = comps.unet(latents, 500, encoder_hidden_states=text_f, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample  # fmt: skip
        plain = comps.unet(latents, 500, encoder_hidden_states=text_f).sample
    return latents, out, plain


def test_load_components_from_tiny_folders_runs(folder_components):
    c = folder_components
    assert type(c.unet).__name__ == "UNetMotionModel" and type(c.scheduler).__name__ == "DDIMScheduler"
    assert c.dtype == torch.float32 and c.device == torch.device("cpu")
    assert c.sources == {"base": "tiny:sd", "controlnet": "tiny:controlnet", "motion_adapter": "tiny:motion_adapter"}
    assert c.scheduler.config.num_train_timesteps == 1000 and c.scheduler.config.steps_offset == 1
    for m in (c.unet, c.controlnet, c.vae, c.text_encoder):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    latents, out, plain = _denoise(c)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert (out - plain).abs().max() > 1e-4  # the ControlNet residuals reached the UNet
    with torch.no_grad():
        img = c.vae.decode(latents[:, :, 0]).sample  # (B, 3, 64, 64)
    assert img.shape == (1, 3, 64, 64)


def test_assembled_motion_unet_shares_tensors_and_equals_from_unet2d():
    from diffusers import UNetMotionModel

    unet2d, adapter = tiny.build_unet2d(), tiny.build_motion_adapter()
    ptr_conv, ptr_motion = unet2d.conv_in.weight.data_ptr(), adapter.down_blocks[0].motion_modules[0].proj_in.weight.data_ptr()
    model = assemble_motion_unet(unet2d, adapter)
    # Same storage, not a copy: there never were two UNets in memory.
    assert model.conv_in.weight.data_ptr() == ptr_conv
    assert model.down_blocks[0].motion_modules[0].proj_in.weight.data_ptr() == ptr_motion
    assert not any(p.is_meta for p in model.parameters())
    reference = UNetMotionModel.from_unet2d(tiny.build_unet2d(), tiny.build_motion_adapter()).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)  # (B, C, F, H, W)
    text = torch.randn(2 * 4, 77, tiny.TEXT_DIM, generator=g)  # (B*F, 77, D)
    with torch.no_grad():
        ours, ref = model(x, 10, text).sample, reference(x, 10, text).sample
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_assemble_rejects_a_motion_adapter_of_other_depth():
    from diffusers import MotionAdapter

    adapter = MotionAdapter(**dict(tiny.MOTION_ADAPTER_CONFIG, motion_layers_per_block=2))
    with pytest.raises(InputError, match="models.motion_adapter: the motion module does not fit"):
        assemble_motion_unet(tiny.build_unet2d(), adapter)


def test_original_motion_module_ckpt_equals_diffusers_folder(tiny_bundle):
    from diffusers import MotionAdapter

    raw = torch.load(tiny_bundle / "mm_tiny.ckpt", weights_only=True)
    pe = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    assert raw[pe].shape == (1, 32, tiny.BLOCKS[0])  # original AnimateDiff v2 layout
    assert not any(".attn1." in k or ".norm1." in k for k in raw)
    from_ckpt = load_motion_adapter(tiny_bundle / "mm_tiny.ckpt", unet_config=tiny.UNET_CONFIG)
    from_folder = MotionAdapter.from_pretrained(tiny_bundle / "motion_adapter")
    norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 - JSON turns tuples into lists
    for k in ("block_out_channels", "motion_layers_per_block", "use_motion_mid_block", "motion_max_seq_length",
              "motion_num_attention_heads", "motion_mid_block_layers_per_block"):  # fmt: skip
        assert norm(from_ckpt.config[k]) == norm(from_folder.config[k]), k
    assert from_ckpt.config.motion_num_attention_heads == 2  # from the mm_tiny.json sidecar
    _assert_same_params(from_ckpt, from_folder)


def test_motion_module_heads_default_override_and_wrappers(tiny_bundle, tmp_path, caplog):
    raw = read_state_dict(tiny_bundle / "mm_tiny.ckpt")
    # Lightning-style wrapping + DataParallel prefix, no sidecar: heads fall back to AnimateDiff's 8, said once.
    torch.save({"state_dict": {"module." + k: v for k, v in raw.items()}}, tmp_path / "mm.ckpt")
    with caplog.at_level("INFO", logger="motia.models.loading"):
        plain = load_motion_adapter(tmp_path / "mm.ckpt")
    assert plain.config.motion_num_attention_heads == 8
    said = [r for r in caplog.records if "head count" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING", caplog.text  # channels (32, 64): not an AnimateDiff release
    assert "assumed 8" in said[0].getMessage() and "models.motion_adapter_config" in said[0].getMessage()
    assert "mm.json beside it" in said[0].getMessage()
    caplog.clear()
    with caplog.at_level("INFO", logger="motia.models.loading"):
        load_motion_adapter(tiny_bundle / "mm_tiny.ckpt")  # its sidecar gives the count: nothing to say
    assert not [r for r in caplog.records if "head" in r.getMessage()]
    assert plain.config.motion_max_seq_length == 32 and plain.config.use_motion_mid_block
    over = load_motion_adapter(tmp_path / "mm.ckpt", config={"motion_num_attention_heads": 2})
    _assert_same_params(over, load_motion_adapter(tiny_bundle / "mm_tiny.ckpt"))
    # A safetensors copy with a <stem>.json sidecar reads the same.
    from safetensors.torch import save_file

    save_file(raw, tmp_path / "mm2.safetensors")
    (tmp_path / "mm2.json").write_text(json.dumps({"motion_num_attention_heads": 2}))
    assert load_motion_adapter(tmp_path / "mm2.safetensors").config.motion_num_attention_heads == 2
    with pytest.raises(ConfigError, match="motion_num_attention_heads=3 does not divide"):
        load_motion_adapter(tmp_path / "mm.ckpt", config={"motion_num_attention_heads": 3})
    with pytest.raises(InputError, match="base UNet has"):
        load_motion_adapter(tmp_path / "mm.ckpt", unet_config={"block_out_channels": (320, 640, 1280, 1280)})


def test_head_count_checks_for_checkpoints_that_do_not_record_it(tmp_path, caplog):
    from motia.models.loading import _check_heads

    path = tmp_path / "mm_odd.ckpt"
    with pytest.raises(ConfigError, match=r"^models.motion_adapter: mm_odd.ckpt does not record its attention head count, "
                                          r"and AnimateDiff's 8 does not divide its channels \[12\]; set motion_num_attention_heads"):
        _check_heads({"motion_num_attention_heads": 8, "block_out_channels": (16, 12)}, False, path, "models.motion_adapter")
    _check_heads({"motion_num_attention_heads": 3, "block_out_channels": (12,)}, True, path, "models.motion_adapter")
    with caplog.at_level("INFO", logger="motia.models.loading"):
        _check_heads({"motion_num_attention_heads": 8, "block_out_channels": (320, 640, 1280, 1280)}, False, path,
                     "models.motion_adapter")  # fmt: skip
    assert [r.levelname for r in caplog.records] == ["INFO"] and "8 attention heads assumed" in caplog.text


def test_load_components_motion_ckpt_and_separate_vae(folder_components, tiny_bundle):
    from diffusers import AutoencoderKL

    c = load_components(**dict(TINY, motion_adapter="tiny:mm_ckpt", vae="tiny:vae"), parts=("unet", "vae"))
    assert c.sources["motion_adapter"] == "tiny:mm_ckpt" and c.sources["vae"] == "tiny:vae"
    _assert_same_params(c.unet, folder_components.unet)
    _assert_same_params(c.vae, AutoencoderKL.from_pretrained(tiny_bundle / "vae"))
    assert not torch.equal(c.vae.encoder.conv_in.weight, folder_components.vae.encoder.conv_in.weight)
    # A whole pipeline folder given as the VAE: its vae/ is used.
    c2 = load_components(base="tiny:sd", vae=str(tiny_bundle / "sd"), parts=("vae",))
    _assert_same_params(c2.vae, folder_components.vae)


def test_single_files_load_equal_to_folders(folder_components, tiny_bundle):
    if not (tiny_bundle / "sd_single.safetensors").exists():
        note = json.loads((tiny_bundle / "bundle.json").read_text()).get("single_files_note")
        pytest.skip(f"no single-file export in the tiny bundle: {note}")
    c = load_components(
        **dict(TINY, base="tiny:sd_single", base_config="tiny:sd", controlnet="tiny:controlnet_single",
               controlnet_config="tiny:controlnet"),
        parts=("tokenizer", "text_encoder", "vae", "unet", "controlnet", "scheduler"),
    )  # fmt: skip
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        _assert_same_params(getattr(c, name), getattr(folder_components, name))
    assert c.tokenizer("a sunny beach").input_ids == folder_components.tokenizer("a sunny beach").input_ids
    assert c.scheduler.config.steps_offset == folder_components.scheduler.config.steps_offset
    assert c.sources["base"] == "tiny:sd_single" and c.sources["base_config"] == "tiny:sd"
    # An SD checkpoint as the VAE source: its VAE, architecture from the base folder.
    v = load_components(base="tiny:sd", vae="tiny:sd_single", parts=("vae",))
    _assert_same_params(v.vae, folder_components.vae)
    # Offline, the default architecture source (the SD1.5 hub id) is not there: say which key to set.
    with pytest.raises(InputError, match=r"^models.base_config: not set, .*HF_HUB_OFFLINE=1.*set it to a local SD1.5 diffusers folder"):
        load_components(base="tiny:sd_single", parts=("vae",))
    with pytest.raises(InputError, match=r"^models.controlnet: .*set models.controlnet_config"):
        load_components(base="tiny:sd", controlnet="tiny:controlnet_single", parts=("controlnet",))


def test_hub_id_not_cached_offline_is_a_clear_error(tiny_bundle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"models.base: 'motia-test/no-such-model' .*HF_HUB_OFFLINE=1"):
        load_components(base="motia-test/no-such-model", schedule="base", parts=("scheduler",))
    with pytest.raises(InputError, match=r"^models.controlnet: 'motia-test/no-such-controlnet' .*not in the Hugging Face cache"):
        load_components(base="tiny:sd", controlnet="motia-test/no-such-controlnet", parts=("controlnet",))


def _unreachable_hub_env(tmp_path) -> dict:
    """The environment of a machine without network: HF_HUB_OFFLINE unset, the hub at a closed loopback port.

    Nothing leaves the machine: every hub URL points at 127.0.0.1, and proxies are bypassed for it.
    """
    import os
    import socket

    with socket.socket() as s:  # a port nothing listens on (bound, then released)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    drop = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
    return {**env, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_HOME": str(tmp_path / "hf"), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


# Runs in a child with the unreachable hub's environment. Imports are not the hub's fault: the
# child imports the libraries first, then times each call.
_CHILD = """
import sys, time
import diffusers, transformers
from motia.cli import main
from motia.models import load_components

t = time.perf_counter()
rc = main({argv!r})
print(f"ELAPSED {{time.perf_counter() - t:.2f}} rc={{rc}}", file=sys.stderr)
parts = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
for base in ("tiny:sd", "motia-test/tiny-sd"):  # the same weights from a local folder, then from the hub cache
    t = time.perf_counter()
    c = load_components(base=base, motion_adapter="tiny:motion_adapter", device="cpu", parts=parts)
    assert c.sources["base"] == base and len(c.tokenizer) > 2
    print(f"ELAPSED {{time.perf_counter() - t:.2f}} {{base}}", file=sys.stderr)
"""


def test_unreachable_hub_fails_in_seconds_and_a_cached_id_still_loads(tmp_path, tiny_bundle):
    import re
    import subprocess
    import sys

    from motia.job import REPO_CONFIGS

    # A Hugging Face cache holding the tiny pipeline as the hub repo motia-test/tiny-sd.
    repo = tmp_path / "hub" / "models--motia-test--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_bundle / "sd", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    argv = ["outpaint", str(REPO_CONFIGS / "tiny.yaml"), "models.base=motia-test/no-such-model", "video.max_frames=2",
            f"output.dir={tmp_path / 'out'}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(argv=argv)], capture_output=True, text=True,
                          env=_unreachable_hub_env(tmp_path), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (failed, fail_s), (_, local_s), (_, cached_s) = [(m[1], float(m[0]))
                                                     for m in re.findall(r"ELAPSED (\S+) (\S+)", proc.stderr)]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert failed == "rc=2" and len(errors) == 1, proc.stderr[-3000:]
    assert "models.base: 'motia-test/no-such-model'" in errors[0] and "is unreachable" in errors[0], errors
    assert "hf download motia-test/no-such-model" in errors[0] and "Retrying" not in proc.stderr
    assert fail_s < 10, proc.stderr[-3000:]
    # The cached id costs what the local folder does: no request waits (one file's retries alone take 23 s).
    assert cached_s < local_s + 8, (local_s, cached_s)
    assert not (tmp_path / "out").exists()


def test_missing_paths_name_the_key(tmp_path, tiny_bundle):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=rf"^models.base: {missing} does not exist; give a diffusers folder, a hub id"):
        load_components(base=str(missing), schedule="base", parts=("scheduler",))
    with pytest.raises(InputError, match=r"^models.controlnet: ./cn.safetensors does not exist"):
        load_components(base="tiny:sd", controlnet="./cn.safetensors", parts=("controlnet",))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"^models.base: .*junk is a folder without model_index.json or config.json \(found: notes.txt\)"):
        load_components(base=str(junk), schedule="base", parts=("scheduler",))
    with pytest.raises(ConfigError, match="models.motion_adapter: unknown tiny model 'tiny:nope'"):
        load_components(**dict(TINY, motion_adapter="tiny:nope"), parts=("unet",))


def test_wrong_kind_checkpoints_name_the_component(tiny_bundle, tmp_path):
    with pytest.raises(InputError, match=r"^models.motion_adapter: tiny:controlnet is a ControlNetModel folder, expected a diffusers MotionAdapter"):
        load_components(**dict(TINY, motion_adapter="tiny:controlnet"), parts=("unet",))
    with pytest.raises(InputError, match=r"^models.controlnet: .*mm_tiny.ckpt looks like an AnimateDiff motion module .*expected an SD1.5 ControlNet"):
        load_components(**dict(TINY, controlnet="tiny:mm_ckpt"), parts=("controlnet",))
    with pytest.raises(InputError, match=r"^models.base: tiny:controlnet is a ControlNetModel folder, expected a diffusers SD1.5 pipeline"):
        load_components(base="tiny:controlnet", schedule="base", parts=("scheduler",))
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, tmp_path / "l.safetensors")
    with pytest.raises(InputError, match=r"^models.motion_adapter: .*l.safetensors looks like a LoRA .*expected an AnimateDiff motion module"):
        load_components(**dict(TINY, motion_adapter=str(tmp_path / "l.safetensors")), parts=("unet",))
    if (tiny_bundle / "sd_single.safetensors").exists():
        with pytest.raises(InputError, match=r"looks like a Stable Diffusion checkpoint \(found model.diffusion_model.\* keys\), expected an AnimateDiff motion module"):
            load_components(**dict(TINY, motion_adapter="tiny:sd_single"), parts=("unet",))


def test_classify_checkpoint_kinds():
    assert classify_checkpoint(["model.diffusion_model.input_blocks.0.0.weight"])[0] == "sd"
    assert classify_checkpoint(["control_model.time_embed.0.weight", "model.diffusion_model.x"])[0] == "controlnet"
    assert classify_checkpoint(["input_hint_block.0.weight", "zero_convs.0.0.weight"])[0] == "controlnet"
    assert classify_checkpoint(["first_stage_model.encoder.conv_in.weight"])[0] == "vae"
    assert classify_checkpoint(["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight"])[0] == "motion_module"
    assert classify_checkpoint(["down_blocks.0.motion_modules.0.attention_blocks.0.processor.to_q_lora.down.weight"])[0] == "motion_lora"
    assert classify_checkpoint(["foo.bar"])[0] == "unknown"


def test_broken_tokenizer_is_detected(tiny_bundle, tmp_path):
    base = tmp_path / "sd"
    base.mkdir()
    shutil.copy(tiny_bundle / "sd" / "model_index.json", base)
    tok = base / "tokenizer"
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(InputError, match="models.base: the tokenizer from .* is broken"):
        load_components(base=str(base), parts=("tokenizer",))


def test_half_precision_on_cpu_and_device_checks(tiny_bundle):
    with pytest.raises(ConfigError, match=r"^models.dtype: fp16 needs a CUDA device"):
        load_components(**dict(TINY, dtype="fp16"))
    with pytest.raises(ConfigError, match="models.dtype: bf16"):
        resolve_dtype("bf16", "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cuda:0") == torch.bfloat16
    with pytest.raises(ConfigError, match="models.dtype: 'half'"):
        resolve_dtype("half", "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="models.device: 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="models.device: 'cuda:1' requested but no CUDA device"):
            resolve_device("cuda:1")


def test_models_section_object_and_kwarg_override(tiny_bundle):
    class Section:  # stands in for the pydantic `models` config section
        base = "tiny:sd"
        base_config = None
        dtype = "auto"
        device = "auto"

    c = load_components(Section(), parts=("vae",), device="cpu", vae="tiny:vae")
    assert c.sources == {"base": "tiny:sd", "vae": "tiny:vae"} and c.unet is None
    with pytest.raises(TypeError, match="unknown model fields"):
        load_components(Section(), parts=("vae",), basee="x")


def test_tiny_refs_resolve_into_the_bundle(tiny_bundle):
    assert tiny.resolve_tiny("tiny:sd") == str(tiny_bundle / "sd")
    assert (tiny_bundle / "sd" / "tokenizer" / "vocab.json").is_file()
    assert (tiny_bundle / "sd" / "tokenizer" / "merges.txt").is_file()
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    assert manifest["fingerprint"] == tiny._fingerprint()
    with pytest.raises(ConfigError, match="unknown tiny model 'tiny:xl'"):
        tiny.resolve_tiny("tiny:xl")


def test_bundle_install_is_atomic_first_wins_and_replaces_stale(tmp_path, monkeypatch):
    builds = []

    def fake_build(folder, fingerprint):  # the install protocol, not the models, is under test here
        builds.append(folder)
        (folder / "marker").write_text(str(len(builds)))
        (folder / "bundle.json").write_text(json.dumps({"fingerprint": fingerprint}))

    monkeypatch.setattr(tiny, "_build_bundle", fake_build)
    first = tiny.ensure_tiny_bundle(tmp_path)
    assert first == tmp_path / tiny.BUNDLE_NAME and (first / "marker").read_text() == "1"
    assert tiny.ensure_tiny_bundle(tmp_path) == first and len(builds) == 1  # cached
    # A stale bundle (older fingerprint) is replaced; no temp folders are left behind.
    (first / "bundle.json").write_text(json.dumps({"fingerprint": "old"}))
    tiny.ensure_tiny_bundle(tmp_path)
    assert (first / "marker").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [tiny.BUNDLE_NAME]

    # Another process finishes first while we build: ours is discarded, theirs kept.
    def racing_build(folder, fingerprint):
        fake_build(folder, fingerprint)
        other = tmp_path / "other"
        other.mkdir()
        (other / "marker").write_text("winner")
        (other / "bundle.json").write_text(json.dumps({"fingerprint": fingerprint}))
        other.rename(tmp_path / tiny.BUNDLE_NAME)

    shutil.rmtree(first)
    monkeypatch.setattr(tiny, "_build_bundle", racing_build)
    assert (tiny.ensure_tiny_bundle(tmp_path) / "marker").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == [tiny.BUNDLE_NAME]

    # A failing build leaves nothing behind.
    def failing_build(folder, fingerprint):
        (folder / "half").write_text("x")
        raise RuntimeError("disk full")

    shutil.rmtree(first)
    monkeypatch.setattr(tiny, "_build_bundle", failing_build)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny.ensure_tiny_bundle(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_sd15_shaped_motion_module_layout_round_trips_on_meta():
    """AnimateDiff v2's real shapes (no weights needed: meta tensors) convert both ways and infer v1-5-2's config."""
    from accelerate import init_empty_weights
    from diffusers import MotionAdapter

    from motia.models.loading import convert_original_motion_module, infer_motion_adapter_config

    v2 = dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_max_seq_length=32,
              use_motion_mid_block=True, motion_num_attention_heads=8, motion_norm_num_groups=32)  # fmt: skip
    with init_empty_weights():
        adapter = MotionAdapter(**v2)
    sd = adapter.state_dict()
    original = tiny.motion_adapter_to_original(sd)
    assert "mid_block.motion_modules.0.temporal_transformer.norm.bias" in original  # diffusers' own v2 detection key
    assert "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.ff_norm.weight" in original
    assert original["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"].shape == (1, 32, 320)
    assert classify_checkpoint(original)[0] == "motion_module"
    back = convert_original_motion_module(original)
    assert set(back) == set(sd)
    cfg = infer_motion_adapter_config(back)
    for k, v in v2.items():
        assert cfg[k] == v, k
