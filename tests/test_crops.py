"""Adaptation on native-scale crops (``adapt.crops``, motia.crops): the LoRA sees the clip at the refine scale.

A crop step draws a window within a shot and a tile-sized box on the 8-px grid inside the
refine-scale frame, and trains on that box's latents (a crop of the refine-scale latents,
encoded once in VAE tiles) with its pixels as control. Without crops (off, or a run that does
not refine) adaptation draws and trains bit for bit as before crops existed. The adapter
records the crops; one without that record still outpaints.
"""

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from motia import adapt as A
from motia.config import load_config
from motia.crops import CROP_LATENTS_FILE, CropSource, plan_crops
from motia.geometry import sample_border_mask
from motia.known import FrameStore
from motia.planning import load_clip

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
# A 96x160 (W x H) clip asked for 16:9 at a 64 px coarse scale refines at 288x160 (2.5x): crops of 64 px.
REFINING = ["outpaint.refine.mode=auto", "outpaint.refine.coarse_size=64", "outpaint.aspect=16:9", "outpaint.left=0",
            "outpaint.right=0", "sample.tiles.size=64", "sample.tiles.overlap=16", "adapt.frames=4",
            "adapt.checkpoint_every=1000"]
MASKS = {s: (0.1, 0.4) for s in ("left", "right", "top", "bottom")}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """6 frames of 96x160 (W x H): a moving texture with edges."""
    from motia.video import write_video

    n, h, w = 6, 160, 96
    f = torch.arange(n, dtype=torch.float32).view(-1, 1, 1, 1)
    y, x = torch.linspace(0, 12, h).view(1, 1, -1, 1), torch.linspace(0, 7, w).view(1, 1, 1, -1)
    phase = torch.tensor([0.0, 2.0, 4.0]).view(1, 3, 1, 1)
    frames = (0.5 + 0.35 * torch.sin(x * 1.3 + y + 0.4 * f + phase) + 0.1 * torch.sign(torch.sin(3 * x - y))).clamp(0, 1)
    return write_video(tmp_path_factory.mktemp("crops") / "small.mp4", frames, fps=8)


def job(video, out, *overrides):
    return load_config(TINY, [f"video.path={video}", f"output.dir={out}", *REFINING, *overrides])


def train(cfg, components, out_dir):
    """Adapt on a copy of the UNet; return the adapter's tensors and its folder."""
    import safetensors.torch

    comps = dataclasses.replace(components, unet=copy.deepcopy(components.unet))
    path = A.adapt(cfg, comps, load_clip(cfg), out_dir, progress=False)
    return safetensors.torch.load_file(str(path)), Path(out_dir)


# ----------------------------------------------------------------------------- which runs train on crops


def test_crops_are_planned_when_the_run_refines(small, tmp_path):
    cfg = job(small, tmp_path)
    clip = load_clip(cfg)
    assert plan_crops(cfg, clip) == {"size": 64, "scale": [160, 96], "share": 0.5}
    assert plan_crops(job(small, tmp_path, "adapt.crop_share=0.25"), clip)["share"] == 0.25
    assert plan_crops(job(small, tmp_path, "adapt.crops=off"), clip) is None
    assert plan_crops(job(small, tmp_path, "adapt.crop_share=0"), clip) is None
    plain = job(small, tmp_path, "outpaint.refine=off")
    assert plan_crops(plain, load_clip(plain)) is None  # nothing generates at another scale


def test_crops_train_on_the_pixels_the_refine_stage_knows_also_when_it_resamples(small, tmp_path):
    """Below the native scale (refine.max_side), the stored frames are the refine stage's source pixels, centre-cropped
    to the latent grid."""
    from motia.crops import store_source
    from motia.outpaint import refine_known
    from motia.planning import plan_stages

    cfg = job(small, tmp_path, "outpaint.refine.max_side=200")
    clip = load_clip(cfg)
    stage = plan_stages(cfg, clip).refine
    crops = plan_crops(cfg, clip)
    h, w = crops["scale"]
    assert (h, w) == (stage.canvas.src_h, stage.canvas.src_w) and h < 160  # resampled from the native 160x96
    known = refine_known(cfg, clip, stage.canvas, None)
    expected = (known.source(range(clip.num_frames)) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    known.close()
    store, _ = store_source(clip, crops["scale"])
    top, left = (h % 8) // 2, (w % 8) // 2
    assert store.shape[1:3] == (h - h % 8, w - w % 8)
    assert np.array_equal(store.read(range(clip.num_frames)), expected[:, top : top + h - h % 8, left : left + w - w % 8])
    store.close()


def test_the_resume_fingerprint_holds_the_crops_and_nothing_new_without_them(small, tmp_path):
    cfg = job(small, tmp_path)
    crops = plan_crops(cfg, load_clip(cfg))
    with_crops = A._fingerprint(cfg, "k", crops=crops)
    assert with_crops["crops"] == crops
    assert with_crops != A._fingerprint(job(small, tmp_path, "adapt.crop_share=0.25"), "k", crops={**crops, "share": 0.25})
    # Without crops: the fingerprint of a run made before crops existed, so its checkpoints still resume.
    without = A._fingerprint(job(small, tmp_path, "adapt.crops=off"), "k")
    assert "crops" not in without and not {"crops", "crop_share"} & set(without["adapt"])
    assert without == A._fingerprint(cfg, "k")


# ----------------------------------------------------------------------------- the draws


def crop_source(num_frames=12, height=160, width=96, size=64, share=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    store = FrameStore(num_frames, height, width, 3)
    for t in range(num_frames):
        store.write(t, torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())
    latents = torch.randn(num_frames, 4, height // 8, width // 8, generator=g)
    return CropSource(store, latents, size, share)


def test_crop_steps_take_grid_boxes_inside_the_frame_and_windows_within_a_shot():
    crops = crop_source()
    lat, frames = torch.randn(12, 4, 7, 4), torch.randint(0, 256, (12, 3, 56, 32), dtype=torch.uint8)
    shots = [0, 5, 9]
    g = torch.Generator().manual_seed(3)
    seen, lefts, tops = 0, set(), set()
    for _ in range(120):
        b = A.training_batch(lat, frames, window=4, batch_size=2, mask_ranges=MASKS, num_train_timesteps=1000,
                             generator=g, shots=shots, crops=crops)
        spans = b["windows"].tolist()
        shot = [max(s for s in shots if s <= start) for start, _ in spans]
        assert len(set(shot)) == 1  # the batch's windows lie in one shot
        for (start, end), first in zip(spans, shot):
            nxt = next((s for s in shots if s > first), 12)
            assert first <= start < end <= nxt and end - start == min(4, nxt - first)
        if "boxes" not in b:
            assert b["latents"].shape[-2:] == (7, 4) and b["control"].shape[-2:] == (56, 32)
            continue
        seen += 1
        for i, ((start, end), (top, left, bottom, right)) in enumerate(zip(spans, b["boxes"].tolist())):
            assert top % 8 == 0 and left % 8 == 0 and (bottom - top, right - left) == (64, 64)
            assert 0 <= top and bottom <= 160 and 0 <= left and right <= 96
            tops.add(top), lefts.add(left)
            # the crop's latents are the crop of the refine-scale latents, its control the crop's pixels
            expected = crops.latents[start:end, :, top // 8 : bottom // 8, left // 8 : right // 8]
            assert torch.equal(b["latents"][i].permute(1, 0, 2, 3), expected)
            f = end - start
            control = b["control"][i * f : (i + 1) * f]  # (f, 3, 64, 64)
            pixels = torch.from_numpy(crops.store.read(range(start, end), (top, left, bottom, right)))
            known = b["known"][i].bool()  # (64, 64): the border mask within the crop
            assert 0 < known.float().mean() < 1
            assert torch.equal(control.permute(0, 2, 3, 1)[:, known], pixels[:, known].float() / 255)
            assert (control[:, :, ~known] == -1).all()
    assert 40 < seen < 80  # crop_share 0.5 of 120 steps
    assert len(tops) > 3 and len(lefts) > 1  # boxes do move over the frame
    crops.close()


def test_a_frame_smaller_than_the_tile_is_cropped_to_the_frame():
    crops = crop_source(num_frames=4, height=40, width=96, share=1.0)
    b = A.training_batch(torch.randn(4, 4, 5, 12), torch.rand(4, 3, 40, 96), window=4, batch_size=1, mask_ranges=MASKS,
                         num_train_timesteps=1000, generator=torch.Generator().manual_seed(0), crops=crops)
    top, left, bottom, right = b["boxes"][0].tolist()
    assert (top, bottom) == (0, 40) and right - left == 64 and left % 8 == 0
    assert b["latents"].shape == (1, 4, 4, 5, 8)


def test_without_crops_the_step_draws_what_it_drew_before_crops():
    """A hand-written replica of the draw order before crops existed: shot, per sample window and mask, t, noise."""
    lat, frames = torch.randn(12, 4, 6, 8), torch.rand(12, 3, 48, 64)
    shots = [0, 5]
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        b = A.training_batch(lat, frames, window=4, batch_size=2, mask_ranges=MASKS, num_train_timesteps=1000,
                             generator=g, shots=shots)
        r = torch.Generator().manual_seed(seed)
        first, end = A.sample_shot(shots, 12, r)
        spans, masks = [], []
        for _ in range(2):
            spans.append(A.sample_window(end - first, 4, r, offset=first))
            masks.append(sample_border_mask(48, 64, MASKS, r))
        t = torch.randint(0, 1000, (2,), generator=r)
        x0 = torch.stack([lat[s:e] for s, e in spans]).permute(0, 2, 1, 3, 4)
        noise = torch.randn(x0.shape, generator=r)
        assert "boxes" not in b and b["windows"].tolist() == [list(s) for s in spans]
        assert torch.equal(b["latents"], x0) and torch.equal(b["known"], torch.stack(masks))
        assert torch.equal(b["t"], t) and torch.equal(b["noise"], noise)
        assert torch.equal(g.get_state(), r.get_state())  # nothing more drawn


# ----------------------------------------------------------------------------- adaptation end to end


@pytest.fixture(scope="module")
def with_crops(small, components, tmp_path_factory):
    out = tmp_path_factory.mktemp("with_crops")
    return train(job(small, out, "adapt.steps=4"), components, out / "adapter")


def test_an_adapter_trained_on_crops_records_them(with_crops, small):
    from motia.lora import read_lora_metadata

    _, folder = with_crops
    crops = {"size": 64, "scale": [160, 96], "share": 0.5}
    assert read_lora_metadata(folder / A.ADAPTER_FILE)["crops"] == crops
    summary = json.loads((folder / A.SUMMARY_FILE).read_text())
    assert summary["crops"] == crops and 0 < summary["crop_steps"] < 4


def test_the_refine_latents_are_the_tiled_encode_of_the_source_at_the_refine_scale(with_crops, small, components):
    """latents_refine.pt: the native frames (the refine scale here), cropped to the grid, encoded in 64 px VAE tiles."""
    from motia.video import iter_frames
    from motia.vae import encode_frames, tiled

    _, folder = with_crops
    cached = torch.load(folder / CROP_LATENTS_FILE, weights_only=True)["latents"]
    native = np.stack(list(iter_frames(small, range(6))))  # (6, 160, 96, 3): already multiples of 8
    with tiled(components.vae, 64):
        expected = encode_frames(components.vae, torch.from_numpy(native).permute(0, 3, 1, 2), 8)
    assert cached.shape == (6, 4, 20, 12) and torch.equal(cached, expected)
    whole = encode_frames(components.vae, torch.from_numpy(native).permute(0, 3, 1, 2), 8)
    assert not torch.equal(cached, whole)  # the tiles are in effect (frames larger than a tile)


def test_crops_off_trains_bit_for_bit_as_a_run_without_refine(with_crops, small, components, tmp_path):
    """Refining with crops off, and not refining at all (the same clip pixels: video.size 38), give one adapter;
    crops change it."""
    off, _ = train(job(small, tmp_path, "adapt.steps=4", "adapt.crops=off"), components, tmp_path / "off")
    plain, folder = train(job(small, tmp_path, "adapt.steps=4", "outpaint.refine=off", "video.size=38"),
                          components, tmp_path / "plain")  # fmt: skip
    assert json.loads((folder / A.SUMMARY_FILE).read_text())["crops"] is None
    assert off.keys() == plain.keys() and all(torch.equal(off[k], plain[k]) for k in off)
    crops, _ = with_crops
    assert any(not torch.equal(crops[k], off[k]) for k in off)


def test_an_adapter_without_the_crops_record_still_outpaints(with_crops, small, components, tmp_path):
    import safetensors
    import safetensors.torch

    from motia.job import ModelCache
    from motia.lora import read_lora_metadata
    from motia.outpaint import outpaint_from_config

    _, folder = with_crops
    with safetensors.safe_open(str(folder / A.ADAPTER_FILE), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "motia.crops"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    old = tmp_path / "old.safetensors"  # as adapters were written before crops existed
    safetensors.torch.save_file(tensors, str(old), metadata=meta)
    assert "crops" not in read_lora_metadata(old)
    cfg = job(small, tmp_path, "sample.steps=2", "sample.guidance_scale=1.0", "sample.regret.repeats=0",
              "outpaint.propagate=off", "outpaint.refine.steps=4", "outpaint.refine.strength=0.5",
              "video.max_frames=3", "output.frames=true")
    cache = ModelCache()
    cache.get = lambda models, device=None, progress=False: components
    summary = outpaint_from_config(cfg, old, progress=False, models=cache)
    assert summary["stages"]["refine"]["unet_calls"] > 0
    assert len(list(Path(summary["outputs"]["frames"]).iterdir())) == 3


def test_a_source_too_large_for_the_temporary_disk_is_refused_before_it_is_stored(small, tmp_path, monkeypatch):
    from motia import known, utils
    from motia.crops import store_source
    from motia.errors import NoSpaceError

    clip = load_clip(job(small, tmp_path))
    monkeypatch.setattr(known.FrameStore.__init__, "__defaults__", (np.uint8, None, 0))  # always the file
    monkeypatch.setattr(utils, "free_bytes", lambda folder: 1000)
    with pytest.raises(NoSpaceError, match="TMPDIR") as err:
        store_source(clip, (160, 96), folder=str(tmp_path))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(utils, "free_bytes", lambda folder: 1 << 40)
    store, _ = store_source(clip, (160, 96), folder=str(tmp_path))
    assert store.in_file and store.read([5]).shape == (1, 160, 96, 3)
    store.close()


def test_the_batch_adapter_key_follows_the_crops_as_resolved(small, tmp_path):
    from motia.batch import adapter_key, adapter_recipe

    def key(*extra):
        cfg = job(small, tmp_path, *extra)
        return adapter_key(cfg, load_clip(cfg))

    refining = key()
    assert refining != key("adapt.crops=off") == key("adapt.crop_share=0")
    assert refining != key("adapt.crop_share=0.25") and refining != key("sample.tiles.size=128")
    # Without crops the key is what it was before crops existed: the settings are not in the recipe.
    assert key("outpaint.refine=off") == key("outpaint.refine=off", "adapt.crops=off")
    assert not {"crops", "crop_share"} & set(adapter_recipe(job(small, tmp_path))["adapt"])
