"""Tests for motia.evaluate: the protocol's crop, GT paste, results lookup, CSV/summary tables, eval YAML."""

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
    list_sequences,
    load_eval_config,
    load_frames,
    make_eval_input,
    mask_widths,
    run_eval,
    score_sequence,
)
from motia.metrics import LPIPS, PSNR_CAP, psnr

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
