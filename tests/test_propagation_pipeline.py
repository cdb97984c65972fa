"""Pixel propagation through the whole pipeline (motia.known wired into outpaint, the output writer, info, preview).

Clips are synthetic camera moves over scikit-image's photos (tests/synthetic_pans.py):
the ground truth beyond the source box is known, and for an integer horizontal pan the
pixels that must be propagated come from the true camera path (``oracle_horizontal``),
not from the code under test. Everything runs the real tiny bundle through
``motia.outpaint.outpaint`` / ``outpaint_from_config``; propagated pixels are model-free,
so they must come back exact even though the models are random.

Sizes: a 128x160 source (SIFT finds ~40 inliers per pair there), 40 px added left and
right (0.25 of the width): model canvas 128x240.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
pytest.importorskip("skimage")

from motia.config import load_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_pans import SPRITE_RGB, Clip, Mover, oracle_horizontal, pan_clip, person, psnr, walking  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SRC, EXPAND, VX, START = (128, 160), (0, 0, 40, 40), 3, (20, 20)  # START: a textured corner of the photo
BASE = [  # the model at the clip's own size, 2 steps, no guidance, no regret
    "video.resize=none", "outpaint.left=0.25", "outpaint.right=0.25", "sample.steps=2",
    "sample.guidance_scale=1.0", "sample.regret.repeats=0", "sample.window_attention.enabled=false",
]


def make_cfg(*overrides):
    return load_config(CONFIGS / "tiny.yaml", BASE + list(overrides))


# one_thread and components: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


def as_clip(syn):
    """A motia.video.Clip of a synthetic clip's source frames, (F, 3, h, w) float = uint8 / 255."""
    from motia.video import Clip

    frames = torch.stack([torch.from_numpy(syn.read(t)).permute(2, 0, 1) for t in range(syn.num_frames)])
    return Clip(frames=frames.float() / 255, fps=8.0, source=Path("synthetic.mp4"),
                frame_indices=list(range(syn.num_frames)))


def to_u8(frames: torch.Tensor) -> np.ndarray:
    return (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (F, H, W, 3)


def run(cfg, components, clip, **kw):
    from motia.outpaint import outpaint

    return outpaint(cfg, components, clip, progress=False, **kw)


def box_mask(canvas) -> np.ndarray:
    top, left, bottom, right = canvas.box
    box = np.zeros((canvas.height, canvas.width), dtype=bool)
    box[top:bottom, left:right] = True
    return box


@pytest.fixture(scope="module")
def pan():
    return pan_clip(frames=12, src=SRC, expand=EXPAND, velocity=(VX, 0), start=START)


@pytest.fixture(scope="module")
def pan_runs(pan, components):
    """The pan outpainted with propagation off and auto (same seed)."""
    clip = as_clip(pan)
    return {mode: run(make_cfg(f"outpaint.propagate={mode}"), components, clip) for mode in ("off", "auto")}


def test_pan_recovers_the_revealed_border_pixels_exactly(pan, pan_runs):
    off, auto = pan_runs["off"], pan_runs["auto"]
    assert auto.canvas == pan.canvas  # the pipeline planned the synthetic clip's canvas
    revealed = np.stack(oracle_horizontal(pan, VX))  # (F, H, W) from the true camera path
    truth = np.stack([pan.truth(t) for t in range(pan.num_frames)])  # (F, H, W, 3)
    box = box_mask(pan.canvas)
    assert revealed[:, ~box].mean() > 0.12  # 36 px of travel: 16% of the new pixels were seen by 2+ frames
    got = to_u8(auto.frames)
    assert np.array_equal(got[revealed], truth[revealed])  # integer motion: exact (PSNR inf, > 30 dB asked)
    assert np.array_equal(auto.propagation.masks.numpy(), revealed)
    assert psnr(to_u8(off.frames)[revealed], truth[revealed]) < 20  # random weights invent something else
    assert np.array_equal(got[:, box], truth[:, box])  # the source itself is untouched
    summary = auto.propagation.summary()
    assert summary["filled"] and summary["motion"]["models"]["translation"] == pan.num_frames - 1
    assert summary["coverage"]["left"]["max"] > 0.3 and summary["coverage"]["right"]["max"] > 0.3


def test_static_clip_is_bit_identical_to_propagation_off(components):
    rng = np.random.default_rng(0)
    still = pan_clip(frames=8, src=SRC, expand=EXPAND, velocity=(0, 0), start=START)
    clip = as_clip(still)
    clip.frames = (clip.frames + torch.from_numpy(rng.normal(0, 0.004, clip.frames.shape)).float()).clamp(0, 1)
    results = {mode: run(make_cfg(f"outpaint.propagate={mode}"), components, clip) for mode in ("off", "on", "auto")}
    for mode in ("on", "auto"):
        assert torch.equal(results[mode].frames, results["off"].frames), mode
        assert torch.equal(results[mode].latents, results["off"].latents), mode
    assert results["on"].propagation.active and not results["on"].propagation.filled
    assert not results["auto"].propagation.active  # the motion reaches nothing: no pixel read
    assert "does not move" in results["auto"].propagation.note


def test_moving_sprite_leaves_no_copies_in_the_border(components):
    def sprite(t):  # crosses the box leftwards, 3 px/frame slower than the background in the world
        return (40 + (-6 * t) % (160 - 24), 50)

    syn = pan_clip(frames=24, src=SRC, expand=EXPAND, velocity=(VX, 0), start=START, sprite=sprite)
    result = run(make_cfg("sample.window.frames=16", "sample.window.stride=16"), components, as_clip(syn))
    mask = result.propagation.masks.numpy()
    assert mask.mean() > 0.05
    got = to_u8(result.frames)[mask]
    sprite_like = np.abs(got.astype(int) - SPRITE_RGB).sum(axis=1) < 120
    assert not sprite_like.any(), f"{int(sprite_like.sum())} sprite pixels copied into the border"
    truth = np.stack([syn.truth(t, with_sprite=False) for t in range(syn.num_frames)])[mask]
    assert psnr(got, truth) > 30


def test_controlnet_sees_the_propagated_pixels_in_every_window(pan, components):
    """The control frames of each temporal window: source, the revealed border pixels (true values), -1 elsewhere."""
    cfg = make_cfg("sample.window.frames=4", "sample.window.stride=4", "sample.steps=1")
    calls = []

    def hook(module, args, kwargs):
        calls.append(kwargs["controlnet_cond"].clone())

    handle = components.controlnet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run(cfg, components, as_clip(pan))
    finally:
        handle.remove()
    windows = [(0, 4), (4, 8), (8, 12)]
    assert len(calls) == len(windows)  # one step, one call per window
    revealed = oracle_horizontal(pan, VX)
    box = box_mask(pan.canvas)
    for (s, e), control in zip(windows, calls):
        for j, t in enumerate(range(s, e)):
            known = torch.from_numpy(revealed[t] | box)
            truth = torch.from_numpy(pan.truth(t)).permute(2, 0, 1).float() / 255  # (3, H, W)
            want = torch.where(known, truth, torch.full_like(truth, -1.0))
            assert torch.equal(control[j], want), f"window {s}-{e}, frame {t}"


def test_known_latent_cells_are_per_frame(pan, pan_runs, components):
    """Cells the final blend forces to the known latents do not depend on the seed: they are the known mask.

    They must be the 8x8 cells all of whose pixels are source or revealed by the pan, frame by frame.
    """
    clip = as_clip(pan)
    other = run(make_cfg("outpaint.propagate=auto", "seed=1"), components, clip)
    a, b = pan_runs["auto"].latents[0], other.latents[0]  # (4, F, h, w)
    forced = (a == b).all(dim=0).numpy()  # (F, h, w)
    revealed = np.stack(oracle_horizontal(pan, VX)) | box_mask(pan.canvas)  # (F, H, W)
    f, hh, ww = forced.shape
    want = revealed.reshape(f, hh, 8, ww, 8).all(axis=(2, 4))
    assert np.array_equal(forced, want)
    assert not np.array_equal(want[0], want[-1])  # frames differ: a per-frame mask
    off = pan_runs["off"].latents[0]
    off_other = run(make_cfg("outpaint.propagate=off", "seed=1"), components, clip).latents[0]
    assert np.array_equal((off == off_other).all(dim=0).numpy(), np.broadcast_to(want.all(axis=0), want.shape))


def native_pan(tmp_path):
    """The pan at twice the size (256x320 source, 80 px each side, integer motion), written as PNG frames."""
    from motia.video import write_frames

    native = pan_clip(frames=12, src=(256, 320), expand=(0, 0, 80, 80), velocity=(2 * VX, 0),
                      start=(2 * START[0], 2 * START[1]), upscale=2.0)
    frames = torch.stack([torch.from_numpy(native.read(t)).permute(2, 0, 1) for t in range(12)]).float() / 255
    return native, write_frames(tmp_path / "input", frames)


def test_native_scale_paste_puts_back_the_native_pixels(tmp_path):
    """Model at half the source's size; the written PNGs hold the native pixels other frames show, exactly."""
    from PIL import Image

    from motia.outpaint import outpaint_from_config

    native, folder = native_pan(tmp_path)
    cfg = load_config(CONFIGS / "tiny.yaml", [
        f"video.path={folder}", "video.size=128", "outpaint.left=0.25", "outpaint.right=0.25", "sample.steps=2",
        "sample.guidance_scale=1.0", "sample.regret.repeats=0", "output.frames=true", "output.mp4=false",
        "output.side_by_side=false", f"output.dir={tmp_path}", "output.name=run",
    ])  # fmt: skip
    summary = outpaint_from_config(cfg, progress=False)
    got = np.stack([np.asarray(Image.open(p)) for p in sorted(Path(summary["outputs"]["frames"]).glob("*.png"))])
    assert got.shape[1:3] == (256, 480)
    truth = np.stack([native.truth(t) for t in range(12)])
    revealed = np.stack(oracle_horizontal(native, 2 * VX))
    assert np.array_equal(got[revealed], truth[revealed])
    assert np.array_equal(got[:, box_mask(native.canvas)], truth[:, box_mask(native.canvas)])
    written = json.loads(Path(summary["outputs"]["summary"]).read_text())["propagation"]
    assert written["filled"] and written["motion"]["segments"] == 1
    cov_native, cov_model = written["coverage_output"]["all"], written["coverage"]["all"]
    assert abs(cov_native["mean"] - revealed.sum() / (~box_mask(native.canvas)).sum() / 12) < 1e-6
    assert abs(cov_native["mean"] - cov_model["mean"]) < 0.02  # the same picture at two scales


def test_delivery_size_propagates_at_the_written_scale(tmp_path, pan):
    """The clip read at its own size, written at a delivery size: propagated there from the rescaled source."""
    from PIL import Image

    from motia.geometry import resample_canvas, scale_canvas
    from motia.outpaint import outpaint_from_config
    from motia.video import write_frames

    folder = write_frames(tmp_path / "input", as_clip(pan).frames)
    cfg = make_cfg(f"video.path={folder}", "output.height=192", "output.frames=true", "output.mp4=false",
                   "output.side_by_side=false", f"output.dir={tmp_path}", "output.name=run")
    summary = outpaint_from_config(cfg, progress=False)
    got = np.stack([np.asarray(Image.open(p)) for p in sorted(Path(summary["outputs"]["frames"]).glob("*.png"))])
    out = scale_canvas(pan.canvas, 192, 360)
    assert got.shape[1:3] == (192, 360)
    truth = torch.stack([torch.from_numpy(pan.truth(t)).permute(2, 0, 1) for t in range(pan.num_frames)]) / 255
    truth = to_u8(resample_canvas(truth.float(), pan.canvas, out))  # the picture at the written scale
    cov = summary["propagation"]["coverage_output"]
    assert cov["all"]["mean"] > 0.1 and summary["output_canvas"]["height"] == 192
    written = got[:, ~box_mask(out)]
    filled = np.abs(written.astype(int) - truth[:, ~box_mask(out)]).max(axis=-1) <= 8
    assert filled.mean() > 0.9 * cov["all"]["mean"]  # the propagated share came back close to the truth
    revealed = np.stack([np.asarray(Image.fromarray(m).resize((360, 192), Image.NEAREST))
                         for m in oracle_horizontal(pan, VX)])
    inner = revealed & np.roll(revealed, 3, axis=2) & np.roll(revealed, -3, axis=2)  # away from the mask's edges
    assert psnr(got[inner], truth[inner]) > 30


def test_shots_keep_propagation_within_each_shot(pan):
    """A jump cut over the same photo: with the shots given, the clip propagates as its two shots would alone."""
    from motia.known import describe_propagation, propagate_clip

    after = pan_clip(frames=12, src=SRC, expand=EXPAND, velocity=(VX, 0), start=(START[0] + 3 * 11 + 6, START[1] + 4))
    frames = torch.cat([as_clip(pan).frames, as_clip(after).frames])  # (24, 3, h, w)
    cfg = make_cfg()
    unhinted = propagate_clip(cfg, frames, pan.canvas)
    assert unhinted.motion.links[12] is not None  # feature matching links across the cut
    both = propagate_clip(cfg, frames, pan.canvas, shots=[0, 12])
    assert both.motion.links[12] is None and both.summary()["motion"]["segments"] == 2
    alone = [propagate_clip(cfg, frames[:12], pan.canvas), propagate_clip(cfg, frames[12:], pan.canvas)]
    for t in range(24):
        shot, j = alone[t // 12], t % 12
        assert torch.equal(both.masks[t], shot.masks[j]), t
        assert torch.equal(both.image(frames[t : t + 1], [t]), shot.image(frames[t : t + 1], [j])), t
    info = describe_propagation(cfg, frames, pan.canvas, shots=[0, 12])
    assert info["motion"].startswith("22 of 24 frames linked, 2 segment(s)")
    assert describe_propagation(cfg, frames, pan.canvas)["motion"].startswith("23 of 24 frames linked, 1 segment(s)")


def test_a_walker_is_not_propagated_at_the_model_or_the_written_scale():
    """Through propagate_clip and the native-scale repeat (OutputPropagation at 2x): every propagated pixel is the
    scene behind the walker, never the walker, at both scales (integer pan: exactly)."""
    from motia.geometry import Canvas
    from motia.known import OutputPropagation, propagate_clip

    syn = pan_clip(24, (120, 160), (0, 0, 48, 48), (3, 0), (100, 300), name="astronaut", upscale=2.0)
    syn.movers = [Mover(person(72, seed=1, stride=0.15, shirt_rgb=(220, 40, 200)), walking(160, 330, 2.0))]
    prop = propagate_clip(make_cfg(), as_clip(syn).frames, syn.canvas)
    assert prop.filled and prop.summary()["motion"]["mover_share"] > 0.05
    truth = np.stack([syn.truth(t) for t in range(syn.num_frames)])  # with the walker where it really is
    model = to_u8(torch.stack([prop.image(as_clip(syn).frames[t : t + 1], [t])[0] for t in range(syn.num_frames)]))
    masks = prop.masks.numpy()
    assert masks.mean() > 0.05 and np.array_equal(model[masks], truth[masks])

    def up(img):  # nearest 2x: an integer model-scale move stays an integer native move, edges exact
        return np.ascontiguousarray(img.repeat(2, axis=0).repeat(2, axis=1))

    c = syn.canvas
    native = Canvas(src_h=2 * c.src_h, src_w=2 * c.src_w, height=2 * c.height, width=2 * c.width, top=2 * c.top,
                    left=2 * c.left)
    out = OutputPropagation(prop, native, lambda t: up(syn.read(t)))
    filled = 0
    for t in range(syn.num_frames):
        got = out.frame(t)
        if got is None:
            continue
        known, image = got
        new = known[0].numpy() & ~box_mask(native)
        filled += int(new.sum())
        assert np.array_equal(to_u8(image[None])[0][new], up(truth[t])[new]), t
    assert filled > 0.8 * 4 * masks.sum()  # about the model scale's share, four times the pixels


def test_reachable_is_a_cheap_bound():
    from motia.geometry import Canvas
    from motia.propagate import CameraMotion, reachable

    def motion(shifts):  # pure horizontal translations per frame
        tr = np.stack([np.array([[1, 0, dx], [0, 1, 0], [0, 0, 1]], dtype=np.float64) for dx in shifts])
        return CameraMotion(size=(160, 128), transforms=tr, segments=np.zeros(len(shifts), dtype=np.int64))

    sides = Canvas(src_h=128, src_w=160, height=128, width=240, top=0, left=40)
    tall = Canvas(src_h=128, src_w=160, height=192, width=160, top=32, left=0)
    assert not reachable(motion([0.0] * 6), sides).any()  # a still camera
    assert reachable(motion([3.0 * t for t in range(6)]), sides).all()
    assert not reachable(motion([3.0 * t for t in range(6)]), tall).any()  # a pan reveals nothing above or below
    split = motion([3.0 * t for t in range(6)])
    split.segments = np.arange(6)
    assert not reachable(split, sides).any()  # unlinked frames exchange nothing


def test_info_and_preview_show_the_coverage(tmp_path, pan):
    from PIL import Image

    from motia.job import PROPAGATED_RGB, PROPAGATED_WASH, describe, preview
    from motia.video import write_frames

    folder = write_frames(tmp_path / "pan", as_clip(pan).frames)
    cfg = make_cfg(f"video.path={folder}", f"output.dir={tmp_path}")
    import yaml

    info = yaml.safe_load(describe(cfg))["propagation"]
    assert info["mode"] == "auto" and info["runs"] is True
    assert info["coverage"]["left"].endswith("(min / mean / max)") and "top" not in info["coverage"]
    assert info["motion"].startswith("11 of 12 frames linked, 1 segment(s); translation 11")
    path = preview(cfg, str(tmp_path / "preview.png"))
    pic = np.asarray(Image.open(path)).astype(float)
    scale = 512 // 240 + 1  # canvases under 512 px are scaled up by a whole factor
    mid = pan.num_frames // 2
    revealed = oracle_horizontal(pan, VX)[mid]
    ys, xs = np.nonzero(revealed)
    want = (1 - PROPAGATED_WASH) * pan.truth(mid)[ys, xs] + PROPAGATED_WASH * 255 * np.array(PROPAGATED_RGB)
    shown = pic[ys * scale + scale // 2, xs * scale + scale // 2 + (pic.shape[1] - 240 * scale) // 2]
    assert np.abs(shown - want).max() <= 1.0
    still = make_cfg(f"video.path={folder}", "outpaint.propagate=off")
    assert yaml.safe_load(describe(still))["propagation"] == {"mode": "off", "runs": False,
                                                              "note": "outpaint.propagate=off"}


def test_info_samples_a_short_clip_evenly_to_its_last_frame(pan):
    from motia.known import describe_propagation

    short = as_clip(pan).frames[:5]
    info = describe_propagation(make_cfg(), short, pan.canvas)
    assert info["coverage"]["frames"] == "5 of 5 (evenly spaced)"  # was 3 of 5: frames 0-2 only


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt in the main thread for this test, whatever this process inherited.

    A run started in the background by a non-interactive shell (``make test &``) inherits SIGINT
    ignored, and Python leaves it so: a real SIGINT then does nothing (a terminal's Ctrl-C cannot
    reach such a process either). These tests are about the terminal's Ctrl-C.
    """
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _waiting_for_the_propagation(thread) -> bool:
    """Whether ``thread`` is blocked in outpaint_from_config's wait for the propagation, not on its way there.

    Its Python stack ends in Condition.wait <- Future.result <- outpaint_from_config (its body, run
    with the run folder locked: ``_outpaint_locked``), and (where
    /proc says) the kernel has it asleep: in that frame, only in the lock's wait, which a signal
    interrupts. A signal sent a moment before the blocking call would be noticed only when the
    wait ends, i.e. after the whole propagation.
    """
    frame, names = sys._current_frames().get(thread.ident), []
    while frame is not None and len(names) < 3:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    if names[:2] != ["wait", "result"] or names[2:] not in (["outpaint_from_config"], ["_outpaint_locked"]):
        return False
    try:
        stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    except OSError:
        return True  # no /proc: the stack is all there is to see
    return stat.rsplit(")", 1)[1].split()[0] == "S"


def test_ctrl_c_while_waiting_for_the_propagation_stops_it(tmp_path, pan, monkeypatch, ctrl_c):
    """Ctrl-C after the models loaded: the propagation thread is told to stop, not waited for to the end."""
    import signal
    import threading
    import time

    import motia.known
    from motia.job import ModelCache
    from motia.outpaint import outpaint_from_config
    from motia.video import write_frames

    folder = write_frames(tmp_path / "pan", as_clip(pan).frames)
    inputs = sorted(folder.iterdir())
    cfg = make_cfg(f"video.path={folder}", f"output.dir={tmp_path}")
    models = ModelCache()
    models.get(cfg.models)
    real, main, seen = motia.known.propagate_clip, threading.main_thread(), {}

    def slow(*args, cancel=None, **kwargs):  # the real propagation, then Ctrl-C, then 30 s more unless cancelled
        result = real(*args, cancel=cancel, **kwargs)
        # The signal goes once the main thread is provably in the wait (not at a wall-clock time:
        # on a busy machine it may not have got there yet, or the propagation not finished).
        deadline = time.monotonic() + 120
        while not _waiting_for_the_propagation(main):
            assert time.monotonic() < deadline, "the main thread never waited for the propagation"
            time.sleep(0.005)
        seen["signalled"] = time.perf_counter()
        # A real SIGINT, as Ctrl-C sends: it interrupts the main thread's wait (interrupt_main would not).
        os.kill(os.getpid(), signal.SIGINT)
        seen["cancelled"] = cancel.wait(30)
        return result

    monkeypatch.setattr(motia.known, "propagate_clip", slow)
    with pytest.raises(KeyboardInterrupt):
        outpaint_from_config(cfg, progress=False, models=models)
    assert time.perf_counter() - seen["signalled"] < 15 and seen["cancelled"]
    assert sorted(folder.iterdir()) == inputs  # the run folder (the frames' folder here): nothing written


def test_ctrl_c_as_the_propagation_starts_stops_it(tmp_path, pan, monkeypatch, ctrl_c):
    """Ctrl-C while the propagation's thread starts (ThreadPoolExecutor.submit) stops it as well."""
    import signal
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import motia.known
    import motia.outpaint
    from motia.job import ModelCache
    from motia.video import write_frames

    folder = write_frames(tmp_path / "pan", as_clip(pan).frames)
    cfg = make_cfg(f"video.path={folder}", f"output.dir={tmp_path}")
    seen = {}

    def slow(*args, cancel=None, **kwargs):  # a propagation that takes 30 s unless cancelled
        seen["cancelled"] = cancel.wait(30)
        raise motia.known.Cancelled

    class CtrlCAtSubmit(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            future = super().submit(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)  # raises here, in the main thread, once os.kill returns
            return future

    assert threading.current_thread() is threading.main_thread()  # where Python runs signal handlers
    monkeypatch.setattr(motia.known, "propagate_clip", slow)
    monkeypatch.setattr(motia.outpaint, "ThreadPoolExecutor", CtrlCAtSubmit)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        motia.outpaint.outpaint_from_config(cfg, progress=False, models=ModelCache())  # interrupted before loading
    assert time.perf_counter() - t0 < 15 and seen["cancelled"]


def test_without_opencv_auto_runs_without_it_and_on_asks_for_it(tmp_path):
    code = (
        "import sys; sys.modules['cv2'] = None\n"
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "import torch\n"
        "from motia.config import load_config\n"
        "from motia.errors import ConfigError\n"
        "from motia.geometry import Canvas\n"
        "from motia.known import check_propagation, propagate_clip\n"
        "canvas = Canvas(src_h=8, src_w=8, height=8, width=16, top=0, left=4)\n"
        "p = propagate_clip(load_config(), torch.rand(3, 3, 8, 8), canvas)\n"
        "print('AUTO', p.active, p.note)\n"
        "try:\n"
        "    check_propagation(load_config(overrides=['outpaint.propagate=on']))\n"
        "except ConfigError as e:\n"
        "    print('ON', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "AUTO False OpenCV is not installed (pip install opencv-python-headless)"
    assert lines[1].startswith("ON outpaint.propagate needs OpenCV") and len(lines) == 2
    assert "OpenCV is not installed, so no pixels are propagated" in out.stderr


# ----------------------------------------------------------------------------- long clips: memory


def back_and_forth(native_px: int):
    """A camera path panning ``native_px`` per frame, turning every 40 frames (any length stays on the photo)."""

    def path(t):
        k = t % 80
        return np.array([[1, 0, 2 * native_px + native_px * (k if k < 40 else 80 - k)], [0, 1, 2 * native_px]],
                        dtype=np.float64)

    return path


LONG_RUN = '''
import json, os, sys, threading, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, {tests!r})
from synthetic_pans import Clip, photo
from test_propagation_pipeline import back_and_forth
from motia.config import load_config
from motia.geometry import Canvas
from motia.job import ModelCache
from motia.outpaint import outpaint_from_config
from motia.video import write_frames

n, out = {frames}, Path({out!r})
torch.set_num_threads(1)
syn = Clip(photo(upscale=4.0), Canvas(src_h=512, src_w=640, height=512, width=960, top=0, left=160), n, back_and_forth(8))
folder = write_frames(out / "input", (torch.from_numpy(syn.read(t)).permute(2, 0, 1)[None] for t in range(n)))
cfg = load_config({tiny!r}, [
    f"video.path={{folder}}", "video.size=64", "outpaint.left=0.25", "outpaint.right=0.25", "sample.steps=1",
    "sample.guidance_scale=1.0", "sample.regret.repeats=0", "sample.window.frames=16", "sample.window.stride=16",
    "sample.decode_chunk=1", "outpaint.propagation.min_inliers=12", "outpaint.propagation.radius=20",
    "output.side_by_side=false", "output.preset=ultrafast", f"output.dir={{out}}", "output.name=run"])
models = ModelCache()
models.get(cfg.models)  # loading's own peak comes before the measured run
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, done = [rss()], threading.Event()
def watch():
    while not done.wait(0.005):
        peak.append(rss())
threading.Thread(target=watch, daemon=True).start()
base = rss()
summary = outpaint_from_config(cfg, progress=False, models=models)
done.set()
print(json.dumps({{"growth": max(peak) - base, "filled": summary["propagation"]["filled"],
                   "coverage": summary["propagation"]["coverage_output"]["all"]["mean"]}}))
'''


def _long_run(frames: int, out: Path) -> dict:
    """Peak host memory of `motia outpaint` on a native 512x640 back-and-forth pan (model at 64 px), in a fresh process.

    glibc's malloc is pinned to mmap every block above 256 KB (``MALLOC_MMAP_THRESHOLD_``),
    so freed frames leave the process and the peak measures what is live, not heap
    fragmentation (without it, the same run's peak varied by +-20 MB).
    """
    code = LONG_RUN.format(tests=str(Path(__file__).parent), frames=frames, out=str(out),
                           tiny=str(CONFIGS / "tiny.yaml"))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "262144",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run_ = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    assert run_.returncode == 0, run_.stderr[-3000:]
    return json.loads(run_.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from /proc")
def test_300_frame_pan_completes_with_flat_memory(tmp_path):
    short, long = _long_run(60, tmp_path / "short"), _long_run(300, tmp_path / "long")
    assert short["filled"] and long["filled"] and long["coverage"] > 0.3
    native_frame = 512 * 640 * 3  # one source frame, uint8
    per_frame = (long["growth"] - short["growth"]) / 240
    # What legitimately grows is model-scale (64x80 frames, latents, masks: ~0.15 MB per frame);
    # keeping native frames (or their propagation) would add at least one native frame each.
    assert per_frame < 0.3 * native_frame, f"{per_frame / 2**20:.2f} MB more per frame"


def test_native_frames_are_decoded_once_and_not_kept(tmp_path, monkeypatch):
    """The output-scale propagation reads its source frames through a ring of 2 x radius + 1 frames, each decoded once."""
    import weakref

    import motia.output
    import motia.video
    from motia.geometry import Canvas
    from motia.outpaint import outpaint_from_config
    from motia.video import write_frames
    from synthetic_pans import photo

    n, radius = 40, 6
    syn = Clip(photo(upscale=2.0), Canvas(src_h=256, src_w=320, height=256, width=480, top=0, left=80), n,
               back_and_forth(4))
    folder = write_frames(tmp_path / "input", torch.stack([torch.from_numpy(syn.read(t)).permute(2, 0, 1)
                                                            for t in range(n)]))
    real_iter, real_ring = motia.video.iter_frames, motia.output.SourceRing
    decoded, alive, most_alive, rings = [], [], [0], []

    def tracked(*args, **kwargs):
        for frame in real_iter(*args, **kwargs):
            frame = frame.copy()
            decoded.append(1)
            alive.append(weakref.ref(frame))
            most_alive[0] = max(most_alive[0], sum(r() is not None for r in alive))
            yield frame

    class Ring(real_ring):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            rings.append(self)

    monkeypatch.setattr(motia.video, "iter_frames", tracked)
    monkeypatch.setattr(motia.output, "SourceRing", Ring)
    cfg = load_config(CONFIGS / "tiny.yaml", [
        f"video.path={folder}", "video.size=128", "outpaint.left=0.25", "outpaint.right=0.25", "sample.steps=1",
        "sample.guidance_scale=1.0", "sample.regret.repeats=0", "sample.window.frames=16", "sample.window.stride=16",
        f"outpaint.propagation.radius={radius}", "output.mp4=false", "output.side_by_side=false", "output.frames=true",
        f"output.dir={tmp_path}", "output.name=run",
    ])  # fmt: skip
    summary = outpaint_from_config(cfg, progress=False)
    assert summary["propagation"]["filled"] and summary["propagation"]["coverage_output"]["all"]["mean"] > 0.05
    assert len(rings) == 1 and rings[0].capacity == 2 * radius + 1 < n
    assert len(decoded) == n  # each native frame decoded once, for the paste and the propagation
    assert most_alive[0] <= 2  # the ring copies each frame; the decoder's own are let go
    assert list((tmp_path / "run").glob(".source-ring*")) == []


def test_refine_at_the_native_scale_keeps_the_propagated_and_the_source_pixels(tmp_path):
    """Coarse at half the source's size, refined at its own: the written PNGs hold the native pixels other frames
    show, exactly, and the source; the refine stage saw the same known pixels (one propagation at that scale)."""
    from PIL import Image

    from motia.outpaint import outpaint_from_config

    native, folder = native_pan(tmp_path)
    cfg = load_config(CONFIGS / "tiny.yaml", [
        f"video.path={folder}", "outpaint.left=0.25", "outpaint.right=0.25", "sample.steps=2",
        "sample.guidance_scale=1.0", "sample.regret.repeats=0", "output.frames=true", "output.mp4=false",
        "output.side_by_side=false", f"output.dir={tmp_path}", "output.name=run", "outpaint.refine=on",
        "outpaint.refine.coarse_size=128", "outpaint.refine.steps=4", "outpaint.refine.strength=0.5",
        "sample.tiles.size=128", "sample.tiles.overlap=32",
    ])  # fmt: skip
    summary = outpaint_from_config(cfg, progress=False)
    assert summary["stages"]["coarse"]["canvas"] == "240x128 (W x H)"
    assert summary["stages"]["refine"]["canvas"] == "480x256 (W x H)" and summary["stages"]["refine"]["tiles"] > 1
    got = np.stack([np.asarray(Image.open(p)) for p in sorted(Path(summary["outputs"]["frames"]).glob("*.png"))])
    assert got.shape[1:3] == (256, 480)
    truth = np.stack([native.truth(t) for t in range(12)])
    revealed = np.stack(oracle_horizontal(native, 2 * VX))
    assert np.array_equal(got[revealed], truth[revealed])
    assert np.array_equal(got[:, box_mask(native.canvas)], truth[:, box_mask(native.canvas)])
    written = json.loads(Path(summary["outputs"]["summary"]).read_text())["propagation"]
    assert abs(written["coverage_output"]["all"]["mean"] - revealed.sum() / (~box_mask(native.canvas)).sum() / 12) < 1e-6
