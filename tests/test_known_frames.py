"""What frames know, in one home at any scale (motia.known.KnownFrames / FrameStore) against independent oracles."""

import numpy as np
import pytest
import torch

from motia.geometry import Canvas, control_video, place_on_canvas


def frames_u8(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("ram", [True, False])
def test_frame_store_reads_regions_from_memory_or_an_unlinked_file(tmp_path, ram):
    from motia.known import FrameStore

    data = np.random.default_rng(0).integers(0, 255, (5, 12, 17, 4), dtype=np.uint8)
    store = FrameStore(5, 12, 17, 4, folder=str(tmp_path), ram_bytes=None if ram else 0)
    for t in range(5):
        store.write(t, data[t])
    assert (store._file is None) == ram
    assert list(tmp_path.iterdir()) == []  # the file has no name: nothing is left behind
    assert np.array_equal(store.read([4, 0, 2]), data[[4, 0, 2]])
    assert np.array_equal(store.read([1, 3], (2, 5, 9, 16)), data[[1, 3], 2:9, 5:16])
    store.close()


def _propagation(canvas, n, seed=1):
    """A ClipPropagation with random propagated pixels outside the box on some frames."""
    from motia.known import ClipPropagation

    rng = np.random.default_rng(seed)
    top, left, bottom, right = canvas.box
    masks = torch.from_numpy(rng.random((n, canvas.height, canvas.width)) < 0.3)
    masks[:, top:bottom, left:right] = False
    masks[1] = False  # a frame with nothing propagated
    counts = masks.flatten(1).sum(1)
    values = torch.from_numpy(rng.integers(0, 255, (int(counts.sum()), 3), dtype=np.uint8))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return ClipPropagation(canvas, n, "on", "test", masks=masks, values=values, offsets=offsets)


def test_control_known_and_image_equal_the_propagations_own_for_any_region():
    from motia.known import KnownFrames

    canvas = Canvas(src_h=16, src_w=12, height=24, width=40, top=4, left=14)
    src = frames_u8(4, 16, 12)
    prop = _propagation(canvas, 4)
    known = KnownFrames.at_model_scale(canvas, src, prop)
    unit = src.float() / 255
    assert known.filled and not known.frame_filled(1) and known.frame_filled(0)
    for frames in (range(0, 4), [2, 1]):
        want_known = prop.known(frames)
        want_image = prop.image(unit[list(frames)], frames)
        assert torch.equal(known.known(frames), want_known)
        assert torch.equal(known.image(frames), want_image)
        assert torch.equal(known.control(frames), control_video(want_image, want_known))
        for top, left, bottom, right in ((0, 0, 24, 40), (8, 16, 24, 32), (3, 0, 11, 9)):
            region = (top, left, bottom, right)
            assert torch.equal(known.control(frames, region),
                               control_video(want_image, want_known)[:, :, top:bottom, left:right])
    assert torch.equal(known.source(range(4)), unit)
    known.close()


def test_without_propagation_the_control_is_the_source_on_the_canvas_and_minus_one():
    from motia.geometry import known_mask
    from motia.known import KnownFrames

    canvas = Canvas(src_h=8, src_w=8, height=16, width=24, top=4, left=8)
    src = torch.rand(3, 3, 8, 8)  # float frames are kept as they are (no rounding to uint8)
    known = KnownFrames.at_model_scale(canvas, src)
    assert not known.filled
    assert torch.equal(known.control(range(3)), control_video(place_on_canvas(src, canvas, 0.0), known_mask(canvas)))
    assert torch.equal(known.source(range(3)), src)


def test_at_another_scale_the_source_sits_in_its_box(tmp_path):
    from motia.known import KnownFrames

    canvas = Canvas(src_h=20, src_w=12, height=20, width=36, top=0, left=12)
    src = frames_u8(3, 20, 12, seed=3)
    known = KnownFrames.at_scale(canvas, 3, lambda t: src[t].permute(1, 2, 0).numpy(), None, str(tmp_path))
    assert torch.equal(known.source(range(3)), src.float() / 255)
    assert torch.equal(known.known([0])[0, 0], torch.from_numpy(np.pad(np.ones((20, 12)), ((0, 0), (12, 12)))).float())
    known.close()


def test_latents_mask_counts_a_cell_only_when_all_its_pixels_are_known(components):
    from motia.known import KnownFrames
    from motia.vae import encode_frames

    canvas = Canvas(src_h=16, src_w=16, height=16, width=48, top=0, left=16)
    src = frames_u8(2, 16, 16, seed=5)
    prop = _propagation(canvas, 2)
    prop.masks[0, :, :8] = True  # the left 8 columns of frame 0: one whole latent column
    prop.masks[0, :, 8:16] = False
    counts = prop.masks.flatten(1).sum(1)
    rng = np.random.default_rng(2)
    prop.values = torch.from_numpy(rng.integers(0, 255, (int(counts.sum()), 3), dtype=np.uint8))
    prop.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    known = KnownFrames.at_model_scale(canvas, src, prop)
    latents, mask = known.latents(components.vae, 2)
    assert mask.shape == (1, 1, 2, 2, 6)
    assert torch.equal(mask[0, 0, 0], torch.tensor([[1.0, 0, 1, 1, 0, 0]] * 2))  # left column, then the box
    assert torch.equal(mask[0, 0, 1], torch.tensor([[0.0, 0, 1, 1, 0, 0]] * 2))  # frame 1: the box alone
    assert torch.equal(latents[:, :, :, 2:4], encode_frames(components.vae, src, 2))  # the box: the source alone
