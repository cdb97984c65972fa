"""Config schema: extends, overrides, unknown keys and wrong types named by dotted key."""

from pathlib import Path

import pytest
import yaml

from motia.config import dump_config, load_config
from motia.errors import ConfigError


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_reference_recipe():
    cfg = load_config()
    assert (cfg.sample.steps, cfg.sample.guidance_scale, cfg.sample.guidance_steps) == (25, 7.5, 15)
    assert (cfg.sample.regret.jump, cfg.sample.regret.repeats, cfg.sample.regret.fraction) == (3, 4, 0.5)
    assert (cfg.adapt.steps, cfg.adapt.lr, cfg.adapt.weight_decay, cfg.adapt.grad_clip) == (1000, 1e-4, 1e-2, 1.0)
    assert (cfg.adapt.lora.rank, cfg.adapt.lora.alpha) == (16, 128.0)
    assert cfg.sample.insertion.k == 2.0
    assert (cfg.sample.window.frames, cfg.sample.window.stride) == (16, 4)


def test_extends_merges_and_resolves_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", {"sample": {"steps": 30, "guidance_scale": 5.0}, "video": {"path": "clip.mp4"}})
    child = write(tmp_path / "sub" / "child.yaml", {"extends": "../base.yaml", "sample": {"steps": 10}})
    cfg = load_config(child)
    assert cfg.sample.steps == 10 and cfg.sample.guidance_scale == 5.0
    assert cfg.video.path == str((tmp_path / "clip.mp4").resolve())


def test_extends_loop_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_overrides_are_typed():
    cfg = load_config(None, ["sample.steps=10", "outpaint.target_size=[512, 1024]", "prompt=a beach", "video.max_frames=null"])
    assert cfg.sample.steps == 10 and cfg.outpaint.target_size == [512, 1024]
    assert cfg.prompt == "a beach" and cfg.video.max_frames is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("sample.stepz=3", "sample.stepz"),
        ("sample.steps=ten", "sample.steps"),
        ("sample.steps=1.5", "sample.steps"),
        ("outpaint.left=-1", "outpaint.left"),
        ("adapt.mask.left=[0.5, 0.2]", "adapt.mask.left"),
        ("sample.window_attention.grid=[2]", "sample.window_attention.grid"),
        ("models.dtype=fp64", "models.dtype"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)


def test_unknown_key_in_file_suggests(tmp_path):
    path = write(tmp_path / "c.yaml", {"sample": {"guidance_scal": 3.0}})
    with pytest.raises(ConfigError, match=r"unknown key 'sample.guidance_scal' \(did you mean 'sample.guidance_scale'\?\)"):
        load_config(path)


def test_a_bad_override_is_blamed_on_the_override_not_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", {"sample": {"steps": 4}})
    with pytest.raises(ConfigError) as e:
        load_config(path, ["sample.steps=abc", "sample.stepz=3"])
    lines = str(e.value).split("; ")
    assert lines[0].startswith("override 'sample.steps=abc': sample.steps: "), lines
    assert lines[1].startswith("override 'sample.stepz=3': unknown key 'sample.stepz'"), lines
    bad_file = write(tmp_path / "d.yaml", {"sample": {"steps": "abc"}})
    with pytest.raises(ConfigError, match=rf"^{bad_file}: sample\.steps: "):
        load_config(bad_file, ["seed=1"])


def test_odd_delivery_size_is_refused_with_the_even_neighbours():
    with pytest.raises(ConfigError, match=r"output\.height: must be even \(H\.264 frames are\): use 1080 or 1082"):
        load_config(None, ["output.height=1081"])
    assert load_config(None, ["output.width=1920"]).output.width == 1920


def test_a_folder_or_a_video_given_as_the_config_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"is a folder; give one of its YAML files"):
        load_config(tmp_path)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(bytes(range(256)) * 8)  # not UTF-8
    with pytest.raises(ConfigError, match=r"clip\.mp4 is not text .*video\.path="):
        load_config(clip)


def test_an_unparsable_aspect_fails_on_load():
    with pytest.raises(ConfigError, match=r"outpaint\.aspect: cannot parse 'abc'"):
        load_config(None, ["outpaint.aspect=abc"])
    assert load_config(None, ["outpaint.aspect=9:16"]).outpaint.aspect == "9:16"


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["sample.steps"])


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["sample.steps=7", "prompt=x"])
    path = dump_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_repo_configs_load():
    from motia.job import REPO_CONFIGS

    for name in ("base.yaml", "tiny.yaml"):
        load_config(REPO_CONFIGS / name)


def test_aspect_reads_as_text_and_picks_the_canvas_mode(tmp_path):
    # YAML 1.1 would read 9:16 as the base-60 number 556.
    cfg = load_config("configs/base.yaml", ["outpaint.aspect=9:16"])
    assert cfg.outpaint.aspect == "9:16"
    # ... and choosing the aspect replaces base.yaml's left/right 0.5 instead of conflicting with them.
    assert (cfg.outpaint.left, cfg.outpaint.right) == (0.0, 0.0)
    cfg = load_config("configs/base.yaml", ["outpaint.left=0.3"])  # same mode: merged key by key
    assert (cfg.outpaint.left, cfg.outpaint.right, cfg.outpaint.aspect) == (0.3, 0.5, None)
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {Path('configs/base.yaml').resolve()}\noutpaint:\n  target_size: [512, 1024]\n")
    cfg = load_config(child)
    assert cfg.outpaint.target_size == [512, 1024] and cfg.outpaint.left == 0.0
    cfg = load_config(child, ["outpaint.left=0.25", "outpaint.right=0.25"])  # back to sides
    assert cfg.outpaint.target_size is None and cfg.outpaint.left == 0.25
    assert load_config(child, ["sample.steps=3"]).sample.steps == 3
    from motia.config import yaml_load

    assert yaml_load("a: 12:30\nb: 1e-4\nc: 010\nd: .5") == {"a": "12:30", "b": 1e-4, "c": 8, "d": 0.5}


def test_refine_mode_on_off_are_words_in_overrides_and_files(tmp_path):
    """YAML 1.1 reads on/off as booleans: `outpaint.refine.mode=on` and an unquoted `mode: off` still name the mode."""
    assert load_config(None, ["outpaint.refine.mode=on"]).outpaint.refine.mode == "on"
    path = tmp_path / "c.yaml"
    path.write_text("outpaint: {left: 0.5, refine: {mode: off, coarse_size: 64}}\n")
    r = load_config(path).outpaint.refine
    assert (r.mode, r.coarse_size) == ("off", 64)
