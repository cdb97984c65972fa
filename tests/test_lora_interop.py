"""LoRA files across tools, with stock diffusers and AnimateDiff's loaders as the oracles, on the tiny bundle.

* motia's adapters load at full strength in diffusers' pipeline and model-level
  loaders and under plain ``W + up @ down`` arithmetic (ComfyUI AnimateDiff-Evolved),
  and files of the previous format still load at their trained scale;
* other people's LoRAs load in motia: what ``AnimateDiffPipeline.save_lora_weights`` and
  ``save_lora_adapter`` write (compared with what ``load_lora_weights`` makes of the same
  file), and the original AnimateDiff motion-LoRA layout (compared with diffusers'
  converter script followed by ``load_lora_weights``); through ``motia outpaint --lora``
  and ``adapt.init_lora`` too;
* ``motia adapters export`` writes the AnimateDiff layout, checked by applying it the
  way AnimateDiff-Evolved does.
"""

import copy
import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from motia import lora, lora_io
from motia.cli import main
from motia.errors import InputError

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yaml"
ATOL = 1e-5
# The UNet comparisons run in float64: a random tiny UNet amplifies float32 rounding of differently ordered
# sums (W x + B A x vs (W + B A) x) to ~1e-5 on some seeds, which would blur the bar the oracles are held to.
F64 = torch.float64


@pytest.fixture(scope="module")
def base_unet():
    from diffusers import UNetMotionModel

    from motia.models.tiny import build_motion_adapter, build_unet2d

    return UNetMotionModel.from_unet2d(build_unet2d(), build_motion_adapter()).eval().to(F64)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    sample, text = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)  # (B, C, F, H, W)
    return sample.to(F64), text.to(F64)


def forward(unet, inputs):
    sample, text = inputs
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=text).sample


def randomise(unet, adapter_name, seed=0):
    """Every LoRA weight of the adapter random (peft starts lora_B at zero); its dtype kept.

    std 0.05 at x8: the LoRA changes the tiny UNet's output by ~0.3; much larger weights saturate attention.
    """
    g = torch.Generator().manual_seed(seed)
    tag = f".{adapter_name}."
    for name, p in sorted(unet.named_parameters()):
        if tag in name and (".lora_A." in name or ".lora_B." in name):
            p.data = (torch.randn(p.shape, generator=g) * 0.05).to(p.dtype)


def stock_pipeline(unet):
    from diffusers import AnimateDiffPipeline

    from motia.models.tiny import build_scheduler

    return AnimateDiffPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, motion_adapter=None,
                               scheduler=build_scheduler())  # fmt: skip


def deltas(unet):
    """Every peft LoRA layer's applied delta, ``scaling * B @ A``, by module name."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, m in unet.named_modules():
        if isinstance(m, LoraLayer):
            (adapter,) = m.lora_A.keys()
            out[name] = m.scaling[adapter] * m.lora_B[adapter].weight @ m.lora_A[adapter].weight
    return out


def merged(base_unet, pairs):
    """A copy of ``base_unet`` with ``W += up @ down`` for every ``{module: (down, up)}``: no loader involved."""
    unet = copy.deepcopy(base_unet)
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name, (down, up) in pairs.items():
            modules[name].weight += (up.to(F64) @ down.to(F64)).to(modules[name].weight.dtype)
    return unet


@pytest.fixture(scope="module")
def motia_adapter(base_unet, inputs, tmp_path_factory):
    """A motia adapter at the reference's x8 (rank 4, alpha 32) on motion and spatial layers, and its own output."""
    unet = copy.deepcopy(base_unet)
    lora.add_lora(unet, "temporal+spatial", rank=4, alpha=32, lora_dtype=None)
    randomise(unet, "motia")
    path = lora.save_lora(tmp_path_factory.mktemp("motia") / "adapter.safetensors", unet, {"source_clip": "c.mp4"})
    y = forward(unet, inputs)
    assert (y - forward(base_unet, inputs)).abs().max() > 0.1  # the LoRA really acts
    return {"path": path, "y": y, "unet": unet}


# ----------------------------------------------------------------------------- motia's files elsewhere


def test_a_motia_adapter_is_full_strength_in_every_loader(motia_adapter, base_unet, inputs):
    path, y = motia_adapter["path"], motia_adapter["y"]

    # diffusers' model-level loader, no other argument: it ignores the file's metadata and takes alpha = rank.
    unet = copy.deepcopy(base_unet)
    unet.load_lora_adapter(str(path), prefix="unet")
    torch.testing.assert_close(forward(unet, inputs), y, rtol=0, atol=ATOL)

    # diffusers' pipeline loader (reads lora_adapter_metadata).
    pipe = stock_pipeline(copy.deepcopy(base_unet))
    pipe.load_lora_weights(str(path), adapter_name="clip")
    torch.testing.assert_close(forward(pipe.unet, inputs), y, rtol=0, atol=ATOL)

    # Plain arithmetic, as ComfyUI AnimateDiff-Evolved applies a motion LoRA: W + up @ down (strength 1).
    tensors = safetensors.torch.load_file(str(path))
    pairs = {}
    for key, down in tensors.items():
        m = re.fullmatch(r"unet\.(.+)\.(lora\.down|lora_A)\.weight", key)
        if m:
            up_key = key.replace(".lora.down.", ".lora.up.").replace(".lora_A.", ".lora_B.")
            pairs[m[1]] = (down, tensors[up_key])
    assert len(pairs) == len(lora.read_lora_metadata(path)["targets"])
    torch.testing.assert_close(forward(merged(base_unet, pairs), inputs), y, rtol=0, atol=ATOL)

    # And motia itself.
    unet = copy.deepcopy(base_unet)
    lora.load_lora(unet, path, lora_dtype=None)
    torch.testing.assert_close(forward(unet, inputs), y, rtol=0, atol=1e-6)


def test_a_file_of_the_previous_format_loads_at_its_trained_scale(motia_adapter, base_unet, inputs, tmp_path):
    # motia-lora/1, written as motia 0.1 wrote it: peft's weights as they are, alpha 32 at rank 4 in the metadata.
    unet = motia_adapter["unet"]
    targets = lora.lora_targets(unet)
    meta = {"format": "motia-lora/1", "motia_version": "0.1.0", "targets": targets, "rank": 4, "alpha": 32.0,
            "dropout": 0.0, "source_clip": "c.mp4"}  # fmt: skip
    diffusers_meta = {"unet.r": 4, "unet.lora_alpha": 32.0, "unet.lora_dropout": 0.0, "unet.target_modules": targets}
    file_meta = {"format": "pt", "lora_adapter_metadata": json.dumps(diffusers_meta)}
    file_meta.update({f"motia.{k}": json.dumps(v) for k, v in meta.items()})
    old = tmp_path / "old.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in lora.lora_state_dict(unet).items()}, str(old),
                                metadata=file_meta)  # fmt: skip
    assert lora.read_lora_metadata(old)["alpha"] == 32
    fresh = copy.deepcopy(base_unet)
    lora.load_lora(fresh, old, lora_dtype=None)
    torch.testing.assert_close(forward(fresh, inputs), motia_adapter["y"], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- other people's LoRAs in motia


def _diffusers_lora(base_unet, folder, *, alpha, metadata, model_level=False):
    """A motion LoRA made and saved by stock diffusers/peft only (rank 4, motion attention q/k/v/out + ff.net.2)."""
    from diffusers import AnimateDiffPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = copy.deepcopy(base_unet)
    config = LoraConfig(r=4, lora_alpha=alpha, target_modules=r".*motion_modules.*(to_[qkv]|to_out\.0|ff\.net\.2)")
    unet.add_adapter(config, adapter_name="theirs")
    randomise(unet, "theirs", seed=1)
    if model_level:
        unet.save_lora_adapter(str(folder), adapter_name="theirs")
    else:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="theirs"))
        meta = config.to_dict() if metadata else None
        AnimateDiffPipeline.save_lora_weights(str(folder), unet_lora_layers=layers, unet_lora_adapter_metadata=meta)
    return folder


@pytest.mark.parametrize("kind", ["pipeline_with_metadata", "pipeline_without_metadata", "model_level"])
def test_a_lora_saved_by_diffusers_loads_as_diffusers_loads_it(kind, base_unet, inputs, tmp_path):
    from diffusers import UNetMotionModel

    folder = _diffusers_lora(base_unet, tmp_path / "theirs", alpha=12, metadata=kind != "pipeline_without_metadata",
                             model_level=kind == "model_level")  # fmt: skip
    (file,) = folder.iterdir()
    if kind == "model_level":
        oracle = copy.deepcopy(base_unet)
        UNetMotionModel.load_lora_adapter(oracle, str(folder), prefix=None, weight_name=file.name)
    else:
        oracle = stock_pipeline(copy.deepcopy(base_unet))
        oracle.load_lora_weights(str(folder))
        oracle = oracle.unet
    want = forward(oracle, inputs)

    unet = copy.deepcopy(base_unet)
    meta = lora.load_lora(unet, folder, lora_dtype=None)  # the folder that holds the one file, as diffusers wrote it
    torch.testing.assert_close(forward(unet, inputs), want, rtol=0, atol=ATOL)
    ours, theirs = deltas(unet), deltas(oracle)
    assert ours.keys() == theirs.keys() and len(ours) == 13 * 9
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
    # What an adapter/run mismatch check may read: no base models, source, prompt or schedule for a foreign file.
    assert meta == lora.read_lora_metadata(folder) == lora.read_lora_metadata(file)
    assert meta["layout"] == "diffusers" and meta["rank"] == 4
    assert not {"base_models", "source", "prompt", "schedule"} & set(meta)


def _original_motion_lora(base_unet, path, rank=2, seed=3):
    """A motion LoRA in the original AnimateDiff layout (the camera-motion LoRAs' keys), as a torch checkpoint."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, m in base_unet.named_modules():
        hit = re.fullmatch(r"(.+\.motion_modules\.\d+)\.(transformer_blocks\.\d+)\.attn([12])\.(to_[qkv]|to_out)(\.0)?",
                           name)  # fmt: skip
        if hit and isinstance(m, torch.nn.Linear):
            stem = (f"{hit[1]}.temporal_transformer.{hit[2]}.attention_blocks.{int(hit[3]) - 1}.processor."
                    f"{hit[4]}_lora")  # fmt: skip
            state[f"{stem}.down.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.1
            state[f"{stem}.up.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.1
    torch.save(state, path)
    return state


def _diffusers_converter(original_state_dict):
    """diffusers' scripts/convert_animatediff_motion_lora_to_diffusers.py (convert_motion_module + the unet. prefix)."""
    converted = {}
    for k, v in original_state_dict.items():
        if "pos_encoder" in k:
            continue
        converted[
            k.replace(".norms.0", ".norm1").replace(".norms.1", ".norm2").replace(".ff_norm", ".norm3")
            .replace(".attention_blocks.0", ".attn1").replace(".attention_blocks.1", ".attn2")
            .replace(".temporal_transformer", "")
        ] = v
    return {f"unet.{k}": v for k, v in converted.items()}


def test_an_original_animatediff_motion_lora_loads_as_diffusers_converts_it(base_unet, inputs, tmp_path):
    path = tmp_path / "v2_lora_ZoomIn.ckpt"
    original = _original_motion_lora(base_unet, path)
    converted = _diffusers_converter(original)
    pipe = stock_pipeline(copy.deepcopy(base_unet))
    pipe.load_lora_weights(converted, adapter_name="zoom-in")
    theirs = deltas(pipe.unet)

    unet = copy.deepcopy(base_unet)
    meta = lora.load_lora(unet, path, lora_dtype=None)
    assert meta["layout"] == "animatediff" and len(meta["targets"]) == 13 * 8
    ours = deltas(unet)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(forward(unet, inputs), forward(pipe.unet, inputs), rtol=0, atol=ATOL)

    # The converter's output (unet.*.processor.to_q_lora.* keys, as on the hub) reads to the same layers.
    safetensors.torch.save_file(converted, str(tmp_path / "converted.safetensors"))
    unet = copy.deepcopy(base_unet)
    assert lora.load_lora(unet, tmp_path / "converted.safetensors", lora_dtype=None)["layout"] == "diffusers"
    again = deltas(unet)
    assert again.keys() == theirs.keys() and all(torch.equal(again[k], ours[k]) for k in ours)


# ----------------------------------------------------------------------------- through the CLI and adaptation


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from motia.config import load_config
    from motia.models import load_components

    return load_components(load_config(TINY).models)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    from motia.video import write_video

    g = torch.Generator().manual_seed(0)
    frames = torch.rand(1, 3, 8, 8, generator=g).repeat(5, 1, 4, 4) * torch.linspace(0.5, 1, 5)[:, None, None, None]
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=8)


def _outpaint(clip_file, out, *extra):
    from motia.video import read_video

    common = [f"video.path={clip_file}", "video.resize=none", "sample.steps=2", "sample.guidance_steps=1",
              "sample.regret.repeats=0", "output.mp4=false", "output.side_by_side=false", "output.frames=true",
              f"output.dir={out}"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["outpaint", str(TINY), *common, *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    return read_video(out / "clip" / "frames").frames


def test_a_diffusers_lora_outpaints_through_the_cli(bundle, clip_file, tmp_path):
    folder = _diffusers_lora(bundle.unet, tmp_path / "theirs", alpha=12, metadata=True)
    # The same delta as a motia adapter: read by motia, written back as motia's own file.
    unet = copy.deepcopy(bundle.unet)
    lora.load_lora(unet, folder)
    ours = lora.save_lora(tmp_path / "same.safetensors", unet)

    theirs = _outpaint(clip_file, tmp_path / "theirs_out", "--lora", str(folder))
    same = _outpaint(clip_file, tmp_path / "same_out", "--lora", str(ours))
    plain = _outpaint(clip_file, tmp_path / "plain_out")
    assert torch.equal(theirs, same)
    assert (theirs - plain).abs().max() > 1e-3  # the LoRA acts (through the insertion map)
    summary = json.loads((tmp_path / "theirs_out" / "clip" / "summary.json").read_text())
    assert summary["lora"] == str(folder)


def test_adaptation_starts_from_a_diffusers_lora(bundle, clip_file, tmp_path):
    from motia.adapt import ADAPTER_FILE

    folder = _diffusers_lora(bundle.unet, tmp_path / "theirs", alpha=12, metadata=True)
    (file,) = folder.iterdir()
    out = tmp_path / "adapter"
    # One step at a vanishing learning rate: the trained adapter is the starting LoRA, to within Adam's 1e-12 step.
    assert main(["adapt", str(TINY), f"video.path={clip_file}", "video.resize=none", "adapt.steps=1",
                 "adapt.lr=1.0e-12", "adapt.weight_decay=0", f"adapt.init_lora={folder}",
                 f"adapt.output_dir={out}"]) == 0  # fmt: skip
    meta = lora.read_lora_metadata(out / ADAPTER_FILE)
    assert meta["init_lora"] == {"path": str(file), "layout": "diffusers", "sha256": lora_io.file_sha256(file)}
    assert meta["rank"] == 4 and len(meta["targets"]) == 13 * 9  # the file's layers and rank, not adapt.lora's
    assert meta["trained_alpha"] == 4 * 8  # trained at adapt.lora's multiplier, alpha/rank = 128/16

    base = copy.deepcopy(bundle.unet).to(F64)
    oracle = stock_pipeline(copy.deepcopy(base))
    oracle.load_lora_weights(str(folder))
    g = torch.Generator().manual_seed(0)
    sample, text = torch.randn(1, 4, 2, 8, 8, generator=g).to(F64), torch.randn(2, 77, 32, generator=g).to(F64)
    unet = copy.deepcopy(base)
    lora.load_lora(unet, out / ADAPTER_FILE, lora_dtype=None)
    want = forward(oracle.unet, (sample, text))
    assert (want - forward(base, (sample, text))).abs().max() > 0.05
    torch.testing.assert_close(forward(unet, (sample, text)), want, rtol=0, atol=ATOL)


def test_the_adapter_cache_key_follows_the_init_loras_content(tmp_path):
    from motia.batch import adapter_recipe
    from motia.config import load_config

    plain = adapter_recipe(load_config(TINY))
    assert "init_lora" not in plain["adapt"] and "init_lora_sha256" not in plain  # unchanged keys without one
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path, value in ((a, 1.0), (b, 1.0)):
        safetensors.torch.save_file({"unet.x.lora.down.weight": torch.full((2, 2), value)}, str(path))
    same_a, same_b = (adapter_recipe(load_config(TINY, [f"adapt.init_lora={p}"])) for p in (a, b))
    assert same_a == same_b  # the same weights under another name: the same adapter
    safetensors.torch.save_file({"unet.x.lora.down.weight": torch.full((2, 2), 2.0)}, str(b))
    assert adapter_recipe(load_config(TINY, [f"adapt.init_lora={b}"])) != same_a


def test_init_lora_in_a_config_file_is_relative_to_it(tmp_path):
    from motia.config import load_config

    (tmp_path / "job.yaml").write_text(f"extends: {TINY}\nadapt: {{init_lora: loras/zoom.ckpt}}\n")
    assert load_config(tmp_path / "job.yaml").adapt.init_lora == str(tmp_path / "loras" / "zoom.ckpt")


# ----------------------------------------------------------------------------- export


def _animatediff_evolved(base_unet, path, strength=1.0):
    """Apply an AnimateDiff-layout motion LoRA the way ComfyUI AnimateDiff-Evolved does
    (animatediff/model_injection.py, load_motion_lora_as_patches: temporal keys only, W += strength * up @ down),
    its model keys renamed to diffusers' with diffusers' converter."""
    state = safetensors.torch.load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path)
    state = {k: v for k, v in state.items() if "temporal" in k}
    pairs = {}
    for key in state:
        if "up." in key:
            continue
        up_key = key.replace(".down.", ".up.")
        model_key = key.replace("processor.", "").replace("_lora", "").replace("down.", "").replace("up.", "")
        if "to_out.0." not in model_key:
            model_key = model_key.replace("to_out.", "to_out.0.")
        name = next(iter(_diffusers_converter({model_key: None})))[len("unet."):].removesuffix(".weight")
        pairs[name] = (state[key], strength * state[up_key])
    return merged(base_unet, pairs), pairs


def test_export_to_the_animatediff_layout_applies_as_trained_in_animatediff_evolved(base_unet, inputs, tmp_path,
                                                                                     capsys):  # fmt: skip
    unet = copy.deepcopy(base_unet)
    lora.add_lora(unet, "temporal", rank=4, alpha=32, lora_dtype=None)  # q/k/v + ff.net.2: all in motion modules
    randomise(unet, "motia", seed=5)
    y = forward(unet, inputs)
    src = lora.save_lora(tmp_path / "adapter.safetensors", unet)

    assert main(["adapters", "export", str(src)]) == 0
    out = tmp_path / "adapter.animatediff.safetensors"
    assert f"wrote {out}: 91 motion-module layer(s) (78 attention, 13 other)" in capsys.readouterr().out
    applied, pairs = _animatediff_evolved(base_unet, out)
    assert len(pairs) == 91
    torch.testing.assert_close(forward(applied, inputs), y, rtol=0, atol=ATOL)
    # motia reads its export back to the same layers.
    back, source = lora_io.read_lora(out), lora_io.read_lora(src)
    assert back.layout == "animatediff" and back.layers.keys() == source.layers.keys()
    for name, (down, up) in back.layers.items():
        assert torch.equal(down, source.layers[name][0]) and torch.equal(up, source.layers[name][1])

    # An existing file is not replaced without --overwrite.
    before = out.read_bytes()
    assert main(["adapters", "export", str(src)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["adapters", "export", str(src), "--overwrite"]) == 0
    # A .ckpt for AnimateDiff's own loader (torch.load) holds the same tensors.
    assert main(["adapters", "export", str(src), "--out", str(tmp_path / "x.ckpt")]) == 0
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=True)
    st = safetensors.torch.load_file(str(out))
    assert ckpt.keys() == st.keys() and all(torch.equal(ckpt[k], st[k]) for k in st)


def test_export_says_what_the_layout_drops(motia_adapter, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    assert main(["adapters", "export", str(motia_adapter["path"]), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {out}: 91 motion-module layer(s)")
    assert lines[1].startswith("dropped 40 layer(s) outside the motion modules (e.g. down_blocks.0.attentions.0.")
    assert len(lines) == 2
    assert len(safetensors.torch.load_file(str(out))) == 2 * 91


def test_export_from_the_adapter_cache_by_key(motia_adapter, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "0123abcd00000000").mkdir(parents=True)
    (cache / "0123abcd00000000" / "adapter.safetensors").write_bytes(motia_adapter["path"].read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["adapters", "export", "0123", "--cache", str(cache)]) == 0
    assert (tmp_path / "0123abcd00000000.animatediff.safetensors").is_file()
    assert main(["adapters", "export", "ffff", "--cache", str(cache)]) == 2
    assert "ffff is not a file or folder, and no cached adapter key starts with it" in capsys.readouterr().err


# ----------------------------------------------------------------------------- files and folders that are refused


def test_folders_and_foreign_files(motia_adapter, tmp_path):
    # A folder as motia adapt leaves it: the adapter beside cached latents and a config.
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter.safetensors").write_bytes(motia_adapter["path"].read_bytes())
    torch.save({"key": "x", "latents": torch.zeros(2, 4, 3, 3)}, run / "latents.pt")
    (run / "config.yaml").write_text("seed: 0\n")
    assert lora_io.resolve_lora_path(run) == run / "adapter.safetensors"

    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (two / name).write_bytes(motia_adapter["path"].read_bytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    kohya = tmp_path / "kohya.safetensors"
    safetensors.torch.save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)},
                                str(kohya))  # fmt: skip
    half = tmp_path / "half.safetensors"
    safetensors.torch.save_file({"unet.x.lora.down.weight": torch.zeros(2, 2)}, str(half))
    for bad, says in ((two, "holds 2 (a.safetensors, b.safetensors)"), (empty, "holds 0"),
                      (kohya, "kohya/A1111-style"), (half, "no up weight")):  # fmt: skip
        with pytest.raises(InputError, match=re.escape(says)) as err:
            lora.read_lora_metadata(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
