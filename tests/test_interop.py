"""Interop with other tools' files: diffusers pipeline folders as model sources, hub revisions, the cache root.

The pipeline folders are written by stock diffusers (``AnimateDiffPipeline`` /
``AnimateDiffControlNetPipeline.save_pretrained``) from the tiny bundle's parts, so
the oracle for what they must load to is the bundle itself.
"""

import json
from pathlib import Path

import pytest
import torch

from motia.errors import ConfigError, InputError
from motia.models import tiny
from motia.models.loading import assemble_motion_unet, load_components

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PARTS = dict(base="tiny:sd", controlnet="tiny:controlnet", motion_adapter="tiny:motion_adapter", device="cpu")


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def parts(tiny_bundle):
    return load_components(**PARTS)


@pytest.fixture(scope="module")
def pipelines(tiny_bundle, tmp_path_factory):
    """Two folders as stock diffusers writes them: an AnimateDiffPipeline and an AnimateDiffControlNetPipeline."""
    from diffusers import (AnimateDiffControlNetPipeline, AnimateDiffPipeline, ControlNetModel, MotionAdapter,
                           UNet2DConditionModel)  # fmt: skip

    from motia.utils import _library_progress

    root = tmp_path_factory.mktemp("pipelines")
    c = load_components(base="tiny:sd", parts=("tokenizer", "text_encoder", "vae", "scheduler"), device="cpu")
    common = dict(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, scheduler=c.scheduler)
    with _library_progress(False):
        unet2d = UNet2DConditionModel.from_pretrained(tiny_bundle / "sd", subfolder="unet")
        adapter = MotionAdapter.from_pretrained(tiny_bundle / "motion_adapter")
        AnimateDiffPipeline(unet=unet2d, motion_adapter=adapter, **common).save_pretrained(root / "animatediff")
        cn = ControlNetModel.from_pretrained(tiny_bundle / "controlnet")
        AnimateDiffControlNetPipeline(unet=unet2d, motion_adapter=adapter, controlnet=cn, **common).save_pretrained(
            root / "animatediff_cn"
        )
    return root


def test_animatediff_pipeline_folder_as_base_equals_the_separate_parts(pipelines, parts):
    folder = pipelines / "animatediff"
    assert json.loads((folder / "unet" / "config.json").read_text())["_class_name"] == "UNetMotionModel"
    c = load_components(base=str(folder), controlnet="tiny:controlnet", device="cpu")  # motion_adapter not set
    assert type(c.unet).__name__ == "UNetMotionModel"
    for name in ("unet", "vae", "text_encoder", "controlnet"):
        _same(getattr(c, name), getattr(parts, name))
    assert c.tokenizer("a sunny beach").input_ids == parts.tokenizer("a sunny beach").input_ids
    assert c.sources["motion_adapter"] == f"{folder}/unet"
    assert not c.unet.training and not any(p.requires_grad for p in c.unet.parameters())


def test_explicit_motion_adapter_replaces_the_pipeline_unets_own(pipelines, tmp_path):
    other = tiny.build_motion_adapter(seed=7)  # not the one inside the pipeline
    other.save_pretrained(tmp_path / "other")
    c = load_components(base=str(pipelines / "animatediff"), motion_adapter=str(tmp_path / "other"), parts=("unet",),
                        device="cpu")  # fmt: skip
    expected = assemble_motion_unet(tiny.build_unet2d(), tiny.build_motion_adapter(seed=7))
    _same(c.unet, expected)
    assert c.sources["motion_adapter"] == str(tmp_path / "other")


def test_pipeline_folders_give_their_controlnet_and_motion_adapter(pipelines, parts):
    folder = str(pipelines / "animatediff_cn")
    c = load_components(base="tiny:sd", controlnet=folder, motion_adapter=folder, parts=("unet", "controlnet"),
                        device="cpu")  # fmt: skip
    _same(c.controlnet, parts.controlnet)
    _same(c.unet, parts.unet)
    with pytest.raises(InputError, match=r"^models.controlnet: .*animatediff is a diffusers AnimateDiffPipeline folder, "
                                         r"expected a diffusers ControlNetModel folder or hub id, or a diffusers "
                                         r"pipeline folder with controlnet/"):  # fmt: skip
        load_components(base="tiny:sd", controlnet=str(pipelines / "animatediff"), parts=("controlnet",))


def test_pipeline_folder_as_base_outpaints_like_the_parts(pipelines, tmp_path):
    from motia.cli import main
    from motia.config import load_config
    from motia.outpaint import outpaint_from_config
    from motia.video import read_video, write_video

    g = torch.Generator().manual_seed(0)
    clip = write_video(tmp_path / "clip.mp4", torch.rand(1, 3, 8, 8, generator=g).repeat(5, 1, 4, 4), fps=8)
    common = [f"video.path={clip}", "video.resize=none", "sample.steps=2", "sample.guidance_steps=1",
              "sample.regret.repeats=0", "output.mp4=false", "output.side_by_side=false", "output.frames=true"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["outpaint", str(CONFIGS / "tiny.yaml"), *common, f"output.dir={tmp_path / 'pipe'}",
                     f"models.base={pipelines / 'animatediff'}", "models.motion_adapter=null"]) == 0  # fmt: skip
        outpaint_from_config(load_config(CONFIGS / "tiny.yaml", [*common, f"output.dir={tmp_path / 'parts'}"]),
                             progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    got = read_video(tmp_path / "pipe" / "clip" / "frames").frames
    assert got.shape == (5, 3, 32, 48)
    assert torch.equal(got, read_video(tmp_path / "parts" / "clip" / "frames").frames)


# ----------------------------------------------------------------------------- hub revisions


def _fake_hub_repo(cache: Path, repo: str, revisions: dict[str, object]) -> None:
    """A Hugging Face cache entry for ``repo`` with one snapshot per named ref (``refs/<name>`` -> a commit)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    for i, (ref, model) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        model.save_pretrained(folder / "snapshots" / commit)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_bundle):
    """An offline hub cache holding 'motia-test/cn' at main (the tiny ControlNet) and at v2 (another one)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    _fake_hub_repo(cache, "motia-test/cn", {"main": tiny.build_controlnet(), "v2": tiny.build_controlnet(seed=9)})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_revision_picks_the_hub_snapshot(hub_cache, parts):
    main_cn = load_components(base="tiny:sd", controlnet="motia-test/cn", parts=("controlnet",)).controlnet
    _same(main_cn, parts.controlnet)
    v2 = load_components(base="tiny:sd", controlnet="motia-test/cn", revision="v2", parts=("controlnet",))
    _same(v2.controlnet, tiny.build_controlnet(seed=9))
    assert v2.sources["controlnet"] == "motia-test/cn@v2"
    per_key = load_components(base="tiny:sd", controlnet="motia-test/cn", revision={"controlnet": "v2"},
                              parts=("controlnet",))  # fmt: skip
    _same(per_key.controlnet, v2.controlnet)
    with pytest.raises(InputError, match=r"^models.controlnet: 'motia-test/cn@v3' .*not in the Hugging Face cache.*"
                                         r"`hf download motia-test/cn --revision v3`"):
        load_components(base="tiny:sd", controlnet="motia-test/cn", revision="v3", parts=("controlnet",))
    with pytest.raises(ConfigError, match=r"^models.revision.base: tiny:sd is a local folder, not a hub id"):
        load_components(base="tiny:sd", controlnet="motia-test/cn", revision={"base": "v2"}, parts=("controlnet", "vae"))


def test_revision_in_the_config(caplog):
    from motia.config import load_config

    cfg = load_config(CONFIGS / "tiny.yaml", ["models.revision={controlnet: abc}"])
    assert cfg.models.revision == {"controlnet": "abc"}
    with pytest.raises(ConfigError, match=r"models.revision: unknown source 'contrlnet'"):
        load_config(CONFIGS / "tiny.yaml", ["models.revision={contrlnet: abc}"])
    with caplog.at_level("WARNING", logger="motia.models.loading"):
        load_components(base="tiny:sd", revision="v2", parts=("tokenizer",))
    assert "models.revision=v2 is ignored: no model source here is a hub id" in caplog.text


# ----------------------------------------------------------------------------- cache root


def test_cache_root_honours_motia_cache_then_xdg(monkeypatch, tmp_path):
    from motia.batch import adapter_cache_dir
    from motia.models.tiny import default_cache_root

    monkeypatch.delenv("MOTIA_CACHE", raising=False)
    monkeypatch.delenv("MOTIA_ADAPTERS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "motia"
    assert adapter_cache_dir() == tmp_path / "xdg" / "motia" / "adapters"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: relative paths are invalid, ignore them
    assert default_cache_root() == Path.home() / ".cache" / "motia"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_root() == Path.home() / ".cache" / "motia"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("MOTIA_CACHE", str(tmp_path / "mine"))
    assert default_cache_root() == tmp_path / "mine"
