"""Tests for motia.evaluate: both protocols' crops, GT paste, results lookup, tables, eval YAML, motia runs."""

import csv

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F_nn
import yaml
from PIL import Image

from motia.errors import ConfigError, InputError, MotiaError
from motia.evaluate import (
    EvalConfig,
    Margins,
    crop_margins,
    crop_task,
    cut_known,
    eval_job_config,
    fit_frames,
    frame_from_canvas,
    list_sequences,
    load_eval_config,
    load_frames,
    make_eval_input,
    mask_widths,
    run_eval,
    score_sequence,
    source_window,
)
from motia.metrics import PSNR_CAP, psnr

H, W, FRAMES = 48, 64, 4
SEQS = ("bear", "car")


def _clip(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(FRAMES, 3, H // 4, W // 4, generator=g)
    return F_nn.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)  # smooth: survives JPEG


@pytest.fixture
def davis(tmp_path):
    """A 2-sequence DAVIS-layout dataset of small jpgs; returns (root, {sequence: frames as read back})."""
    root = tmp_path / "DAVIS"
    gts = {}
    for i, name in enumerate(SEQS):
        folder = root / "JPEGImages" / "480p" / name
        folder.mkdir(parents=True)
        for f, frame in enumerate(_clip(i)):
            Image.fromarray((frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{f:05d}.jpg")
        gts[name] = load_frames(folder)
    return root, gts


def _save_pngs(folder, frames):
    folder.mkdir(parents=True)
    for f, frame in enumerate(frames):
        Image.fromarray((frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{f:05d}.png")


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_mask_widths_and_crop():
    assert mask_widths(854, 0.25) == (107, 107)  # 213.5 -> 214 removed
    assert mask_widths(854, 0.66) == (282, 282)  # 563.64 -> 564
    assert mask_widths(10, 0.25) == (1, 2)  # 2.5 -> 3: the left gets the smaller half
    assert mask_widths(64, 0.5) == (16, 16)
    frames = torch.arange(W).float().expand(2, 3, H, W)
    crop, left, right = make_eval_input(frames, 0.66)
    assert (left, right) == (21, 21) and crop.shape == (2, 3, H, 22)
    assert crop[0, 0, 0, 0] == 21 and crop[0, 0, 0, -1] == 42
    with pytest.raises(ValueError):
        mask_widths(4, 0.9)


def test_score_sequence_pastes_ground_truth(davis):
    _, gts = davis
    gt = gts["bear"]
    left, right = mask_widths(W, 0.5)
    garbage_inside = gt.clone()
    garbage_inside[..., left : W - right] = torch.rand_like(garbage_inside[..., left : W - right])
    s = score_sequence(gt, garbage_inside, 0.5)
    assert s["psnr"] == PSNR_CAP and s["ssim"] == pytest.approx(1.0) and s["lpips"] is None
    garbage_outside = gt.clone()
    garbage_outside[..., :left] = 0.0
    s = score_sequence(gt, garbage_outside, 0.5)
    assert s["psnr"] == pytest.approx(psnr(gt, garbage_outside)) and s["psnr"] < 40


def test_list_sequences_layouts(tmp_path, davis):
    root, _ = davis
    assert [p.name for p in list_sequences(root)] == list(SEQS)
    assert [p.name for p in list_sequences(root, "480p")] == list(SEQS)
    with pytest.raises(InputError, match="1080p"):
        list_sequences(root, "1080p")
    yt = tmp_path / "ytvos" / "JPEGImages" / "abc123"
    yt.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(yt / "00000.jpg")
    assert [p.name for p in list_sequences(tmp_path / "ytvos")] == ["abc123"]
    with pytest.raises(InputError, match="JPEGImages"):
        list_sequences(tmp_path / "nowhere")


def _results(tmp_path, gts):
    """Method results for ratios 0.25 and 0.5: frame folders, plus one .mp4 (the other layout)."""
    res = tmp_path / "results"
    # ratio 0.25, bear: garbage only in the known centre -> must score the PSNR cap once GT is pasted
    left, right = mask_widths(W, 0.25)
    pred = gts["bear"].clone()
    pred[..., left : W - right] = 1.0 - pred[..., left : W - right]
    _save_pngs(res / "0.25" / "bear", pred)
    # ratio 0.25, car: the left border blacked out
    pred = gts["car"].clone()
    pred[..., :left] = 0.0
    _save_pngs(res / "0.25" / "car", pred)
    # ratio 0.5 (folder written "0.50"): a blurred copy; car as an mp4 with one extra frame
    blurred = {k: F_nn.avg_pool2d(v, 5, stride=1, padding=2, count_include_pad=False) for k, v in gts.items()}
    _save_pngs(res / "0.50" / "bear", blurred["bear"])
    video = torch.cat([blurred["car"], blurred["car"][-1:]])
    iio.imwrite(res / "0.50" / "car.mp4", (video.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
                plugin="pyav", fps=8, codec="libx264")  # fmt: skip
    return res


def test_eval_scores_a_results_folder(tmp_path, davis):
    root, gts = davis
    cfg = EvalConfig(dataset=str(root), ratios=[0.25, 0.5], methods={"m": {"results": str(_results(tmp_path, gts))}},
                     output=str(tmp_path / "out"))  # fmt: skip
    summary = run_eval(cfg, progress=False)
    out = tmp_path / "out"

    per = _read_csv(out / "per_sequence.csv")
    assert [(r["method"], r["ratio"], r["sequence"]) for r in per] == [
        ("m", "0.25", "bear"), ("m", "0.5", "bear"), ("m", "0.25", "car"), ("m", "0.5", "car")
    ]
    assert all(r["frames"] == str(FRAMES) and r["lpips"] == "" and r["fvd"] == "" for r in per)
    by = {(r["ratio"], r["sequence"]): r for r in per}
    assert float(by["0.25", "bear"]["psnr"]) == PSNR_CAP  # the known-region garbage was replaced by GT
    assert float(by["0.25", "bear"]["ssim"]) == pytest.approx(1.0)
    assert 5 < float(by["0.25", "car"]["psnr"]) < 40
    assert 15 < float(by["0.5", "car"]["psnr"]) < PSNR_CAP  # the mp4, extra frame dropped

    rows = _read_csv(out / "summary.csv")
    assert [(r["method"], r["ratio"], r["sequences"]) for r in rows] == [("m", "0.25", "2"), ("m", "0.5", "2"), ("m", "mean", "2")]
    r25 = (PSNR_CAP + float(by["0.25", "car"]["psnr"])) / 2
    r50 = (float(by["0.5", "bear"]["psnr"]) + float(by["0.5", "car"]["psnr"])) / 2
    assert float(rows[0]["psnr"]) == pytest.approx(r25, abs=1e-5)
    assert float(rows[2]["psnr"]) == pytest.approx((r25 + r50) / 2, abs=1e-5)
    assert rows[2]["lpips"] == "" and rows[2]["fvd"] == ""
    assert summary["rows"][2]["psnr"] == pytest.approx((r25 + r50) / 2)

    md = (out / "summary.md").read_text()
    assert "| Method | Ratio | PSNR | SSIM | LPIPS | FVD |" in md
    assert f"| m | 0.25 | {r25:.2f} | " in md and "| m | mean | " in md
    assert md.count("| - | - |") == 3
    assert "LPIPS skipped: no lpips_weights given" in md and "FVD skipped: no i3d_path given" in md
    assert summary["notes"] == [line.strip() for line in md.splitlines() if "skipped:" in line]
    assert yaml.safe_load((out / "eval_config.yaml").read_text())["ratios"] == [0.25, 0.5]
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_eval_with_lpips_and_fvd(tmp_path, davis):
    from test_metrics import save_tiny_i3d, write_lpips_folder

    root, gts = davis
    write_lpips_folder(tmp_path / "lpips")
    save_tiny_i3d(tmp_path / "i3d.pt")
    res = tmp_path / "results"
    for name, gt in gts.items():
        _save_pngs(res / "0.25" / name, gt)  # a perfect method
    cfg = EvalConfig(dataset=str(root), ratios=[0.25], methods={"perfect": {"results": str(res)}},
                     lpips_weights=str(tmp_path / "lpips"), i3d_path=str(tmp_path / "i3d.pt"), device="cpu",
                     output=str(tmp_path / "out"))  # fmt: skip
    summary = run_eval(cfg, progress=False)
    assert summary["notes"] == []
    row = summary["rows"][0]
    assert row["psnr"] == PSNR_CAP and row["lpips"] == pytest.approx(0.0, abs=1e-9)
    assert row["fvd"] == pytest.approx(0.0, abs=1e-3)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "skipped" not in md and "| perfect | mean | 100.00 | 1.0000 | 0.0000 | " in md


def test_eval_runs_a_config_method(tmp_path, davis):
    root, gts = davis
    job = tmp_path / "job.yaml"
    job.write_text("seed: 0\n")
    cfg = EvalConfig(dataset=str(root), ratios=[0.25], sequences=["car"], max_frames=3, size=32,
                     methods={"replicate": {"config": str(job), "overrides": ["sample.steps=2"]}},
                     output=str(tmp_path / "out"))  # fmt: skip
    with pytest.raises(MotiaError, match="run_method"):
        run_eval(cfg, progress=False)
    calls = []

    def replicate_edges(name, cfg_path, overrides, cropped, left, right, out_dir):
        calls.append((name, cfg_path, overrides, tuple(cropped.shape), left, right, out_dir))
        return F_nn.pad(cropped, (left, right, 0, 0), mode="replicate")  # a plain baseline: copy the edge columns

    summary = run_eval(cfg, run_method=replicate_edges, progress=False)
    w = round(W * 32 / H)  # short side 48 -> 32: 43 wide
    left, right = mask_widths(w, 0.25)
    assert calls == [("replicate", str(job), ["sample.steps=2"], (3, 3, 32, w - left - right), left, right,
                      tmp_path / "out" / "runs" / "replicate" / "0.25" / "car")]  # fmt: skip
    assert [r["sequence"] for r in summary["per_sequence"]] == ["car"]
    assert 10 < summary["rows"][0]["psnr"] < PSNR_CAP
    assert "FVD skipped" in summary["notes"][1]


def test_eval_fails_early_on_missing_results(tmp_path, davis):
    root, gts = davis
    res = tmp_path / "results"
    _save_pngs(res / "0.25" / "bear", gts["bear"])
    cfg = EvalConfig(dataset=str(root), ratios=[0.25], methods={"m": {"results": str(res)}}, output=str(tmp_path / "out"))
    with pytest.raises(InputError, match="car"):
        run_eval(cfg, progress=False)
    assert not (tmp_path / "out").exists()
    cfg.ratios = [0.66]
    with pytest.raises(InputError, match="ratio 0.66"):
        run_eval(cfg, progress=False)


def test_load_eval_config(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("dataset: ./DAVIS\nratios: [0.25, 0.66]\nmethods:\n  ours: {results: ../res}\noutput: out\n")
    cfg = load_eval_config(path)
    assert cfg.dataset == str((tmp_path / "DAVIS").resolve())
    assert cfg.methods["ours"].results == str((tmp_path / "../res").resolve())
    assert cfg.output == "out" and cfg.lpips_weights is None and cfg.ratios == [0.25, 0.66]

    path.write_text("dataset: d\nmethods:\n  ours: {results: r, bogus: 1}\noutput: out\n")
    with pytest.raises(ConfigError, match=r"methods\.ours\.bogus"):
        load_eval_config(path)
    path.write_text("dataset: d\nratio: [0.25]\nmethods:\n  ours: {results: r}\noutput: out\n")
    with pytest.raises(ConfigError, match="unknown key 'ratio'.*ratios"):
        load_eval_config(path)
    path.write_text("dataset: d\nmethods:\n  ours: {results: r, config: c.yaml}\noutput: out\n")
    with pytest.raises(ConfigError, match=r"methods\.ours.*exactly one"):
        load_eval_config(path)
    path.write_text("dataset: d\nratios: [1.5]\nmethods:\n  ours: {results: r}\noutput: out\n")
    with pytest.raises(ConfigError, match="ratios"):
        load_eval_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_eval_config(tmp_path / "missing.yaml")


def test_eval_runs_motia_itself_on_the_tiny_models(tmp_path, davis):
    """`config:` methods through the real adapt + outpaint path (motia.evaluate.run_motia)."""
    from motia.evaluate import run_motia
    from motia.job import REPO_CONFIGS

    root, gts = davis
    cfg = EvalConfig(dataset=str(root), ratios=[0.25], sequences=["bear"], max_frames=3, size=32,
                     methods={"motia": {"config": str(REPO_CONFIGS / "tiny.yaml"),
                                        "overrides": ["adapt.steps=2", "sample.steps=2", "sample.regret.repeats=0"]}},
                     output=str(tmp_path / "out"))  # fmt: skip
    summary = run_eval(cfg, run_method=run_motia, progress=False)
    row = summary["per_sequence"][0]
    assert row["sequence"] == "bear" and row["frames"] == 3
    assert 0 < row["psnr"] < PSNR_CAP and 0 < row["ssim"] < 1
    run = tmp_path / "out" / "runs" / "motia" / "0.25" / "bear"
    assert (run / "motia" / "adapter" / "adapter.safetensors").exists()


# ---------------------------------------------------------------- the crop protocol (512x512 centre -> 1280x720)
# Scaled down for the tests: a 48x48 centre of 72x128 frames (the same 16:9 frame, all sides multiples of 8).

FH, FW, CROP = 72, 128, (48, 48)
TASK = "48x48-128x72"
M = Margins(12, 12, 40, 40)


def test_crop_margins_and_task():
    assert crop_margins(720, 1280, 512, 512) == Margins(104, 104, 384, 384)
    assert crop_margins(FH, FW, *CROP) == M
    assert crop_margins(75, 131, 32, 32) == Margins(21, 22, 49, 50)  # the odd pixel below and right, as motia centres
    task = crop_task([512, 512], [720, 1280])
    assert task.name == "512x512-1280x720" and task.margins(720, 1280) == Margins(104, 104, 384, 384)
    assert crop_task([40, 64], [72, 128]).name == "64x40-128x72"  # width first, as the papers write sizes
    frames = (torch.arange(FH)[:, None] * 1000 + torch.arange(FW)).float().expand(2, 3, FH, FW)
    known = cut_known(frames, M)
    assert known.shape == (2, 3, 48, 48)
    assert known[0, 0, 0, 0] == 12 * 1000 + 40 and known[0, 0, -1, -1] == 59 * 1000 + 87
    with pytest.raises(ValueError):
        crop_margins(40, 40, 48, 48)


def _png_clip(folder, h, w, n=3):
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(3)
    for f in range(n):
        frame = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(frame).save(folder / f"{f:05d}.png")
    return folder


@pytest.mark.parametrize("refine", ["auto", "on", "off"])
def test_crop_offsets_equal_the_canvas_box(tmp_path, refine):
    """At the protocol's real sizes, the canvas motia plans (each stage; the written one) has the source where the
    512x512 crop was cut out of the 1280x720 frame, also with coarse-to-fine on (a coarse canvas at 364 px)."""
    from motia.geometry import Canvas
    from motia.job import REPO_CONFIGS
    from motia.planning import load_clip, plan_stages

    frames_dir = _png_clip(tmp_path / "in", 512, 512)
    m = crop_margins(720, 1280, 512, 512)
    cfg = eval_job_config(REPO_CONFIGS / "base.yaml", ["video.shots=off", f"outpaint.refine={refine}"], (512, 512), m,
                          frames_dir, tmp_path / "out", "motia")  # fmt: skip
    stages = plan_stages(cfg, load_clip(cfg))
    frame = Canvas(src_h=512, src_w=512, height=720, width=1280, top=104, left=384)
    assert stages.final.canvas == frame and source_window(stages.final.canvas, m) == (0, 0)
    assert (stages.refine is not None) == (refine == "on")  # auto: 720 / 512 = 1.4, not above 1.5: one stage
    if refine == "on":  # the coarse stage plans the same picture around a smaller source: margins in proportion
        c = stages.coarse.canvas
        assert (c.src_h, c.height, c.width) == (364, 512, 912) and abs(c.top / 364 - 104 / 512) < 0.02


def test_source_window_holds_the_frame_or_fails():
    from motia.geometry import Canvas, plan_canvas

    # A frame that is not a multiple of 8: motia's canvas is rounded up, the frame cut out around the box.
    m = crop_margins(75, 130, 32, 32)
    canvas = plan_canvas(32, 32, left=m.left / 32, right=m.right / 32, top=m.top / 32, bottom=m.bottom / 32)
    assert (canvas.height, canvas.width) == (80, 136)
    top, left = source_window(canvas, m)
    frames = torch.zeros(1, 3, 80, 136)
    frames[..., canvas.top : canvas.top + 32, canvas.left : canvas.left + 32] = 1.0  # the source's pixels
    out = frame_from_canvas(frames, canvas, (32, 32), m)
    assert out.shape == (1, 3, 75, 130) and out[0, 0].nonzero().min(0).values.tolist() == [m.top, m.left]
    assert out.sum() == 3 * 32 * 32
    # The source anywhere else than the crop was cut: refused.
    with pytest.raises(MotiaError, match="does not hold"):
        source_window(Canvas(src_h=32, src_w=32, height=75, width=130, top=0, left=m.left), m)
    # Frames on a canvas at another scale (refine.strength 0 keeps the coarse scale) are redrawn box onto box.
    small = Canvas(src_h=16, src_w=16, height=40, width=64, top=11, left=24)
    coarse = torch.zeros(1, 3, 40, 64)
    coarse[..., 11:27, 24:40] = 1.0
    out = frame_from_canvas(coarse, small, (32, 32), m)
    assert out.shape == (1, 3, 75, 130)
    assert out[..., m.top + 2 : m.top + 30, m.left + 2 : m.left + 30].min() > 0.99
    assert out[..., : m.top - 2, :].max() < 0.01


def test_score_crop_task_pastes_ground_truth():
    gt = torch.rand(2, 3, FH, FW, generator=torch.Generator().manual_seed(0))
    task = crop_task(CROP, (FH, FW))
    inside = gt.clone()
    inside[..., 12:60, 40:88] = 1 - inside[..., 12:60, 40:88]  # wrong only in the known centre
    s = score_sequence(gt, inside, task)
    assert s["psnr"] == PSNR_CAP and s["ssim"] == pytest.approx(1.0)
    for rows, cols in ((slice(11, 12), slice(40, 88)), (slice(60, 61), slice(40, 88)),
                       (slice(12, 60), slice(39, 40)), (slice(12, 60), slice(88, 89))):  # the band just outside
        outside = gt.clone()
        outside[..., rows, cols] = 1 - outside[..., rows, cols]
        assert score_sequence(gt, outside, task)["psnr"] < 50, (rows, cols)


def test_fit_frames_to_the_protocol_frame():
    x = torch.rand(1, 3, 36, 64)  # 16:9 (DAVIS 480p is 854x480, 0.1% off): resized as is
    assert fit_frames(x, (72, 128)).shape == (1, 3, 72, 128)
    near = torch.rand(1, 3, 48, 85)  # 1.771 vs 1.778: within 1%, resized without a crop
    assert torch.equal(fit_frames(near, (72, 128)),
                       F_nn.interpolate(near, size=(72, 128), mode="bilinear", antialias=True).clamp(0, 1))
    square = torch.rand(1, 3, 64, 64)  # another aspect: scaled to cover (here x1), the centre rows kept, not squashed
    assert torch.equal(fit_frames(square, (36, 64)), square[..., 14:50, :])
    tall = torch.rand(1, 3, 128, 128)  # x0.5 to cover 36x64, then rows 14:50 of the 64x64
    assert torch.equal(fit_frames(tall, (36, 64)), fit_frames(tall, (64, 64))[..., 14:50, :])


def _davis_crop(tmp_path, full=True):
    """Two sequences in a DAVIS layout: Full-Resolution at 144x256 (2x the protocol frame) and 480p at 36x64."""
    root = tmp_path / "DAVIS"
    for i, name in enumerate(SEQS):
        g = torch.Generator().manual_seed(10 + i)
        clip = F_nn.interpolate(torch.rand(FRAMES, 3, 9, 16, generator=g), size=(144, 256), mode="bilinear")
        for res, frames in (("Full-Resolution", clip), ("480p", F_nn.interpolate(clip, size=(36, 64), mode="area"))):
            if res == "Full-Resolution" and not full:
                continue
            folder = root / "JPEGImages" / res / name
            folder.mkdir(parents=True)
            for f, frame in enumerate(frames):
                Image.fromarray((frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
                    folder / f"{f:05d}.jpg", quality=95)
    return root


def _crop_cfg(root, tmp_path, methods, **kw):
    return EvalConfig(dataset=str(root), protocol="crop", crop=list(CROP), frame=[FH, FW], methods=methods,
                      output=str(tmp_path / "out"), **kw)  # fmt: skip


def test_crop_protocol_scores_a_results_folder(tmp_path):
    root = _davis_crop(tmp_path)
    gts = {n: load_frames(root / "JPEGImages" / "Full-Resolution" / n, fit=(FH, FW)) for n in SEQS}
    assert gts["bear"].shape == (FRAMES, 3, FH, FW)
    res = tmp_path / "results"
    for name, gt in gts.items():
        pred = gt.clone()
        pred[..., 12:60, 40:88] = 0.0  # garbage only in the known centre: replaced by the ground truth
        _save_pngs(res / TASK / name, pred)
    blank = tmp_path / "blank"
    for name, gt in gts.items():
        _save_pngs(blank / TASK / name, torch.zeros_like(gt))
    cfg = _crop_cfg(root, tmp_path, {"good": {"results": str(res)}, "blank": {"results": str(blank)}})
    summary = run_eval(cfg, progress=False)
    out = tmp_path / "out"

    per = _read_csv(out / "per_sequence.csv")
    assert list(per[0]) == ["method", "task", "sequence", "frames", "psnr", "ssim", "lpips", "fvd"]
    assert [(r["method"], r["task"], r["sequence"]) for r in per] == [
        ("good", TASK, "bear"), ("blank", TASK, "bear"), ("good", TASK, "car"), ("blank", TASK, "car")]
    by = {(r["method"], r["sequence"]): float(r["psnr"]) for r in per}
    # good: only the 8-bit rounding of the PNGs is left, the pasted centre is exact
    assert by["good", "bear"] > 50 and by["blank", "bear"] < 20
    pred = load_frames(res / TASK / "bear")
    pasted = pred.clone()
    pasted[..., 12:60, 40:88] = gts["bear"][..., 12:60, 40:88]
    assert by["good", "bear"] == pytest.approx(psnr(gts["bear"], pasted), abs=1e-5)  # the Full-Resolution frames

    rows = _read_csv(out / "summary.csv")
    assert [(r["method"], r["task"], r["sequences"]) for r in rows] == [("good", TASK, "2"), ("blank", TASK, "2")]
    md = (out / "summary.md").read_text()
    assert "| Method | Task | PSNR |" in md and f"| good | {TASK} | " in md and "mean" not in md
    assert "48x48 centre -> 128x72" in md and "upsampled" not in md
    assert summary["rows"][0]["task"] == TASK
    recorded = yaml.safe_load((out / "eval_config.yaml").read_text())
    assert recorded["protocol"] == "crop" and recorded["crop"] == [48, 48] and "ratios" not in recorded
    EvalConfig.model_validate(recorded)  # the record loads back as an eval config

    # A results folder without the task's folder fails before any scoring.
    (res / TASK).rename(res / "0.25")
    with pytest.raises(InputError, match=f"no folder for task {TASK}"):
        run_eval(_crop_cfg(root, tmp_path, {"good": {"results": str(res)}}), progress=False)


def test_crop_protocol_without_full_resolution_upsamples_480p_and_says_so(tmp_path, caplog):
    root = _davis_crop(tmp_path, full=False)
    seen = []

    def replicate_edges(name, cfg_path, overrides, cropped, left, right, out_dir, top_px=None, bottom_px=None):
        seen.append((tuple(cropped.shape), left, right, top_px, bottom_px, out_dir))
        return F_nn.pad(cropped, (left, right, top_px, bottom_px), mode="replicate")

    job = tmp_path / "job.yaml"
    job.write_text("seed: 0\n")
    with caplog.at_level("WARNING", logger="motia.evaluate"):
        summary = run_eval(_crop_cfg(root, tmp_path, {"edges": {"config": str(job)}}, max_frames=2),
                           run_method=replicate_edges, progress=False)  # fmt: skip
    assert seen == [((2, 3, 48, 48), 40, 40, 12, 12, tmp_path / "out" / "runs" / "edges" / TASK / n) for n in SEQS]
    assert "no JPEGImages/Full-Resolution" in caplog.text
    assert summary["notes"][-1].startswith("Ground truth upsampled to 128x72 from 64x36 for 2 of 2 sequences")
    assert summary["notes"][-1] in (tmp_path / "out" / "summary.md").read_text()
    assert 10 < summary["rows"][0]["psnr"] < PSNR_CAP


def test_crop_protocol_config_keys(tmp_path):
    path = tmp_path / "eval.yaml"
    head = "dataset: d\nmethods:\n  ours: {results: r}\noutput: out\n"
    path.write_text(head + "protocol: crop\nratios: [0.25]\n")
    with pytest.raises(ConfigError, match="ratios only apply to 'protocol: ratios'"):
        load_eval_config(path)
    path.write_text(head + "protocol: crop\nsize: 256\n")
    with pytest.raises(ConfigError, match="size only apply"):
        load_eval_config(path)
    for crop in ("[800, 512]", "[720, 1280]"):  # taller than the frame; the frame itself
        path.write_text(head + f"protocol: crop\ncrop: {crop}\n")
        with pytest.raises(ConfigError, match=r"must fit inside frame \[720, 1280\] \(\[height, width\]\)"):
            load_eval_config(path)
    path.write_text(head + "crop: [256, 256]\n")
    with pytest.raises(ConfigError, match="crop only apply to 'protocol: crop'"):
        load_eval_config(path)
    path.write_text(head + "protocol: crop\nframe: [720]\n")
    with pytest.raises(ConfigError, match="frame"):
        load_eval_config(path)
    path.write_text(head + "protocol: box\n")
    with pytest.raises(ConfigError, match="protocol"):
        load_eval_config(path)
    path.write_text(head + "protocol: crop\n")
    cfg = load_eval_config(path)
    assert (cfg.crop, cfg.frame, cfg.res) == ([512, 512], [720, 1280], None)


def test_davis_720p_config():
    """configs/eval_davis_720p.yaml loads, and each method's overrides make a valid job config of its base."""
    from motia.config import load_config
    from motia.job import REPO_CONFIGS

    cfg = load_eval_config(REPO_CONFIGS / "eval_davis_720p.yaml")
    assert (cfg.protocol, cfg.crop, cfg.frame) == ("crop", [512, 512], [720, 1280])
    assert set(cfg.methods) == {"motia", "motia_refine"}
    refine = {n: load_config(spec.config, spec.overrides).outpaint.refine.mode for n, spec in cfg.methods.items()}
    assert refine == {"motia": "auto", "motia_refine": "on"}
    load_config(cfg.methods["motia"].config, ["outpaint.propagate=off", "sample.tiles.enabled=false"])  # as published


def test_crop_protocol_runs_motia_on_the_tiny_models(tmp_path, monkeypatch):
    """`config:` methods on the crop task through the real adapt + outpaint (refine off, and on: the coarse stage at
    the tiny models' 64 px, refined on the 72x128 frame); the source comes back exactly where the crop was cut."""
    from motia.evaluate import run_motia
    from motia.job import REPO_CONFIGS, ModelCache

    root = _davis_crop(tmp_path)
    fast = ["adapt.steps=2", "sample.steps=2", "sample.regret.repeats=0", "video.shots=off", "outpaint.refine.steps=4"]
    cfg = _crop_cfg(root, tmp_path, {"plain": {"config": str(REPO_CONFIGS / "tiny.yaml"), "overrides": fast},
                                     "refined": {"config": str(REPO_CONFIGS / "tiny.yaml"),
                                                 "overrides": [*fast, "outpaint.refine.mode='on'"]}},
                    sequences=["bear"], max_frames=3)  # fmt: skip
    import motia.outpaint

    models, made, stages = ModelCache(), {}, []
    plain_outpaint = motia.outpaint.outpaint

    def outpaint(*args, **kw):
        result = plain_outpaint(*args, **kw)
        stages.append({k: v["canvas"] for k, v in result.stages.items()})
        return result

    monkeypatch.setattr(motia.outpaint, "outpaint", outpaint)

    def run(name, *args, **kw):
        made[name] = (args[2], run_motia(name, *args, models=models, **kw))  # (cropped input, prediction)
        return made[name][1]

    summary = run_eval(cfg, run_method=run, progress=False)
    for name in ("plain", "refined"):
        cropped, pred = made[name]
        assert pred.shape == (3, 3, FH, FW)
        # motia pastes its source back exactly: the input's pixels (8-bit PNGs) sit where the crop was cut
        assert torch.equal((pred[..., 12:60, 40:88] * 255).round(), (cropped * 255).round())
        assert pred[..., :12, :].std() > 0  # the margins were generated, not left blank
    rows = {r["method"]: r for r in summary["per_sequence"]}
    assert all(0 < rows[n]["psnr"] < PSNR_CAP and rows[n]["task"] == TASK for n in ("plain", "refined"))
    assert stages == [{"coarse": "128x72 (W x H)"}, {"coarse": "120x72 (W x H)", "refine": "128x72 (W x H)"}]
    assert (tmp_path / "out" / "runs" / "plain" / TASK / "bear" / "plain" / "adapter" / "adapter.safetensors").exists()
