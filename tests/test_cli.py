"""CLI verbs info/preview/--help and the error contract: one line, exit 2, --debug shows the traceback."""

import subprocess
import sys

import pytest
from PIL import Image

from motia.cli import main
from motia.job import REPO_CONFIGS

TINY = str(REPO_CONFIGS / "tiny.yaml")


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("info", "preview", "adapt", "outpaint", "demo", "batch", "eval", "adapters", "app"):
        assert verb in out


def test_info_prints_geometry_and_work(capsys):
    assert main(["info", TINY, "sample.steps=4", "sample.regret.repeats=0"]) == 0
    out = capsys.readouterr().out
    # The bundled clip is 96 wide, 64 tall; short side 64 keeps it, 0.25 each side -> 144 wide.
    assert "size_used: 96x64 (W x H)" in out and "canvas: 144x64 (W x H)" in out
    assert "source_at: x=24, y=0" in out
    assert "windows: 5" in out  # 24 frames, windows 8 / stride 4
    assert "unet_calls: 20" in out  # 4 steps x 5 windows, no regret
    assert "device: cpu" in out and "dtype: fp32" in out
    assert "window_attention: off (auto, canvas long side 144 px)" in out and "rau: off" in out


def test_info_splits_a_step_over_processes(capsys):
    import yaml

    assert main(["info", TINY, "sample.steps=4", "sample.regret.repeats=0", "--num_processes", "2"]) == 0
    procs = yaml.safe_load(capsys.readouterr().out)["processes"]
    assert procs["num_processes"] == 2
    assert procs["per_step"]["coarse"].startswith("5 call(s) per step: 1 of 2 processes run 3, the others 2")
    assert procs["per_process"] == [10, 10]  # 20 calls, dealt round robin across steps
    assert main(["info", TINY, "sample.steps=4", "sample.regret.repeats=0"]) == 0
    procs = yaml.safe_load(capsys.readouterr().out)["processes"]
    assert procs["per_process"] == [20] and "--num_processes N" in procs["note"]
    # 2 x 64 px tiles over the 144 px canvas x 5 windows, the box inside the source skipped: 4 x 5 - 5 = 15 calls
    tiled = ["sample.tiles.enabled=true", "sample.tiles.size=64", "sample.tiles.overlap=32"]
    assert main(["info", TINY, "sample.steps=4", "sample.regret.repeats=0", *tiled, "--num_processes", "4"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert (out["work"]["tiles"], out["work"]["skipped_boxes"], out["work"]["unet_calls"]) == (4, 5, 60)
    assert out["processes"]["per_step"]["coarse"].startswith("15 call(s) per step: 3 of 4 processes run 4, the others 3")
    assert out["processes"]["per_process"] == [15, 15, 15, 15]
    assert main(["info", TINY, "--num_processes", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --num_processes must be 1 or more, got 0"


def test_info_prints_the_noise_schedule(capsys):
    assert main(["info", TINY, "sample.steps=25"]) == 0
    out = capsys.readouterr().out
    assert "name: animatediff" in out and "alphas_cumprod[481]: 0.1814" in out and "961, 921, ..., 1" in out
    assert main(["info", TINY, "models.schedule=base"]) == 0
    out = capsys.readouterr().out
    assert "name: base" in out and "betas: scaled_linear" in out and "alphas_cumprod[481]: 0.3023" in out


def test_info_on_a_portrait_clip_says_w_x_h(tmp_path, capsys):
    import torch

    from motia.video import write_video

    clip = write_video(tmp_path / "tall.mp4", torch.rand(3, 3, 80, 48), fps=8)  # (F, 3, H, W): 48 wide, 80 tall
    assert main(["info", TINY, f"video.path={clip}", "video.resize=none", "outpaint.left=0.5", "outpaint.right=0.5"]) == 0
    out = capsys.readouterr().out
    assert "size_in_file: 48x80 (W x H)" in out and "size_used: 48x80 (W x H)" in out
    assert "size: 96x80 (W x H)" in out  # the canvas grows sideways


def test_info_says_what_is_missing_and_checks_the_device(capsys):
    assert main(["info", str(REPO_CONFIGS / "base.yaml")]) == 0
    out = capsys.readouterr().out
    assert "source: 'video.path is not set: add video.path=CLIP" in out and "\ncanvas:" not in out
    assert main(["info", TINY, "outpaint.target_size=[64,2048]", "sample.rau.enabled=true"]) == 0
    out = capsys.readouterr().out
    assert "window_attention: on (auto, canvas long side 2048 px)" in out
    assert "rau: on for the first 40% of the steps" in out
    import torch

    if not torch.cuda.is_available():  # the same one-line error outpainting gives
        assert main(["info", TINY, "models.device=cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: models.device: 'cuda'")
    assert main(["info", TINY, "models.dtype=fp16", "models.device=cpu"]) == 2
    assert "models.dtype: fp16 needs a CUDA device" in capsys.readouterr().err


def test_preview_is_big_enough_with_a_legend(tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["preview", TINY, "--out", str(out)]) == 0
    img = Image.open(out).convert("RGB")
    # The 144x64 canvas is scaled up 4x, nearest neighbour: at least 512 px on the long side.
    assert img.width == 144 * 4 and img.height > 64 * 4
    px = img.load()
    assert len({px[x, y] for x in range(40, 44) for y in range(8, 12)}) == 1  # one canvas pixel = one 4x4 block
    # Outside the known box the insertion-map overlay tints the canvas; inside it is the source.
    assert px[0, 128] != px[288, 128]
    # Below the canvas, the legend's colour bar runs from the full-strength tint (red) to none (blue),
    # in the very colours of the canvas: the tint at the canvas's left edge sits on the bar where its strength is.
    y = 64 * 4 + 12
    left, right = px[8, y], px[img.width - 9, y]
    assert left[0] > 3 * left[2] and right[2] > 3 * right[0], (left, right)
    from motia.config import load_config
    from motia.geometry import insertion_map
    from motia.planning import plan

    strength = float(insertion_map(plan(load_config(TINY), 64, 96), 2.0)[32, 0])  # about exp(-2)
    on_bar = px[8 + round((1 - strength) * (img.width - 17)), y]
    assert all(abs(a - b) <= 3 for a, b in zip(px[0, 128], on_bar)), (px[0, 128], on_bar, strength)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["info", TINY, "sample.stepz=3"], "unknown key 'sample.stepz'"),
        (["info", "/nope.yaml"], "/nope.yaml does not exist"),
        (["info", TINY, "video.path=/nope.mp4"], "/nope.mp4"),
        (["info", TINY, "outpaint.left=0", "outpaint.right=0"], "outpaint"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


def test_debug_shows_the_traceback():
    proc = subprocess.run([sys.executable, "-m", "motia", "--debug", "info", TINY, "sample.stepz=3"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "error: " in proc.stderr


def test_options_and_overrides_in_any_order(capsys):
    assert main(["info", TINY, "--debug", "sample.steps=3", "outpaint.aspect=9:16"]) == 0
    out = capsys.readouterr().out
    assert "steps: 3" in out and "aspect: '9:16'" in out
    with pytest.raises(SystemExit) as e:
        main(["info", TINY, "sample.steps=3", "--nope"])
    assert e.value.code == 2 and "--nope" in capsys.readouterr().err


def test_library_notices_are_quiet():
    """transformers' torchvision notice (printed when diffusers' pipelines are imported, e.g. for a single-file
    base or the first build of the tiny bundle) is not shown by motia's CLI; without its setup it is."""
    child = "{setup}from diffusers import StableDiffusionPipeline"
    env = {k: v for k, v in __import__("os").environ.items() if not k.endswith("_VERBOSITY")}

    def stderr(setup):
        code = child.format(setup=setup)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stderr

    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:  # then transformers has nothing to say here
        pytest.skip("torchvision is installed: no notice to hide")
    assert stderr("from motia.command import quiet_libraries; quiet_libraries(); ") == ""


def test_a_file_that_is_no_video_is_one_line_on_stderr(tmp_path, capfd):
    """Not even the decoders' own C-level complaints (FFmpeg's, decord's) reach the terminal beside the error."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all\n" * 10)
    assert main(["info", TINY, f"video.path={bad}"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: cannot read video"), err
