"""Video I/O: round trips, frame selection, resizing, audio keeping, errors and atomic writes."""

from __future__ import annotations

import math
import os
import sys
import wave

import av
import numpy as np
import pytest
import torch
from PIL import Image

from motia.errors import InputError
from motia.video import (
    probe_video,
    read_video,
    sample_clip_path,
    side_by_side,
    target_size,
    to_uint8,
    unit_frames,
    write_frames,
    write_gif,
    write_video,
)


def smooth_frames(n: int = 10, h: int = 48, w: int = 64) -> torch.Tensor:
    """(F, 3, H, W) smooth moving content a codec reproduces closely; every frame differs."""
    t = torch.arange(n, dtype=torch.float32)[:, None, None] / n
    y = torch.linspace(0, 1, h)[None, :, None]
    x = torch.linspace(0, 1, w)[None, None, :]
    r = (0.5 + 0.4 * torch.sin(2 * math.pi * (x + t))).expand(n, h, w)
    g = (0.5 + 0.4 * torch.cos(2 * math.pi * (y - t))).expand(n, h, w)
    b = (0.2 + 0.6 * x * y).expand(n, h, w)
    return torch.stack([r, g, b], dim=1)


def no_leftovers(folder, name):
    """Nothing under the final name and no temporary sibling of it."""
    return not any(p.name == name or p.name.startswith(f".{name.split('.')[0]}.") for p in folder.iterdir())


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    src = smooth_frames(12)
    path = write_video(tmp_path_factory.mktemp("v") / "clip.mp4", src, fps=8)
    return path, src


def test_sample_clip_is_bundled():
    info = probe_video(sample_clip_path())
    assert (info.num_frames, info.fps, info.width, info.height) == (24, 8.0, 96, 64)
    assert info.has_audio and info.audio_duration == pytest.approx(3.0, abs=0.1)
    assert sample_clip_path().stat().st_size < 100_000


def test_mp4_round_trip(mp4):
    path, src = mp4
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height, info.has_audio) == (12, 8.0, 64, 48, False)
    clip = read_video(path)
    assert clip.frames.shape == src.shape and clip.frames.dtype == torch.uint8  # a quarter of float32
    assert clip.fps == 8.0 and clip.frame_indices == list(range(12))
    frames = unit_frames(clip.frames)
    assert frames.dtype == torch.float32 and 0.0 <= frames.min() and frames.max() <= 1.0
    assert (frames - src).abs().mean() < 0.02


@pytest.mark.parametrize("backend", ["decord", "pyav", "imageio"])
def test_backends_agree_and_select(mp4, backend):
    if backend == "decord":
        pytest.importorskip("decord", reason="decord has no wheel for this platform")
    path, _ = mp4
    full = read_video(path, backend="pyav")
    clip = read_video(path, start=2, stride=3, max_frames=3, backend=backend)
    assert clip.backend == backend
    assert clip.frame_indices == [2, 5, 8]
    assert clip.fps == pytest.approx(8.0 / 3)
    assert clip.start_time == pytest.approx(2 / 8) and clip.duration == pytest.approx(9 / 8)
    assert (clip.frames - full.frames[[2, 5, 8]]).abs().max() < 2 / 255
    # max_frames beyond the end just stops at the end
    assert read_video(path, start=9, max_frames=10, backend=backend).frame_indices == [9, 10, 11]


def test_auto_streams_with_pyav_and_falls_back(mp4, monkeypatch):
    import motia.video as V

    # PyAV first: decord's batch reads grew with the clip (~1 GB after 300 1080p frames).
    assert read_video(mp4[0], max_frames=4).backend == "pyav"

    def broken(*args):
        raise ValueError("cannot decode")

    monkeypatch.setitem(V._READERS, "pyav", broken)
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    clip = read_video(mp4[0], max_frames=4)
    assert clip.backend == "imageio" and clip.frames.shape[0] == 4


def test_gif_round_trip(tmp_path):
    src = smooth_frames(6, 30, 40)
    write_gif(tmp_path / "a.gif", src, fps=10)
    clip = read_video(tmp_path / "a.gif")
    assert clip.frames.shape == (6, 3, 30, 40) and clip.fps == pytest.approx(10.0)
    assert (unit_frames(clip.frames) - src).abs().mean() < 0.03  # palette quantisation
    assert read_video(tmp_path / "a.gif", backend="imageio").frames.shape == (6, 3, 30, 40)


def test_png_folder_round_trip_is_exact(tmp_path):
    src = smooth_frames(5, 21, 33)
    write_frames(tmp_path / "frames", src)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir())[0] == "frame_00000.png"
    clip = read_video(tmp_path / "frames", start=1)
    assert clip.frame_indices == [1, 2, 3, 4]
    assert torch.equal(clip.frames, torch.from_numpy(to_uint8(src[1:])).permute(0, 3, 1, 2))
    # writing again replaces the folder as a whole
    write_frames(tmp_path / "frames", src[:2])
    assert len(list((tmp_path / "frames").iterdir())) == 2


def test_image_folder_natural_sort_and_single_image(tmp_path):
    colours = {"frame10.png": 200, "frame2.jpg": 100, "Frame1.png": 50, "notes.txt": None}
    for name, value in colours.items():
        if value is None:
            (tmp_path / name).write_text("ignored")
        else:
            Image.fromarray(np.full((8, 12, 3), value, np.uint8)).save(tmp_path / name, quality=100)
    clip = read_video(tmp_path)
    assert clip.frames.shape == (3, 3, 8, 12)
    means = clip.frames.float().mean(dim=(1, 2, 3)).tolist()
    assert means == pytest.approx([50, 100, 200], abs=2)
    single = read_video(tmp_path / "frame10.png", size=4)
    assert single.frames.shape == (1, 3, 4, 6) and single.frame_indices == [0]


def test_aspect_keeping_resize_on_odd_sizes(tmp_path):
    src = smooth_frames(3, 61, 97)  # h=61, w=97
    write_frames(tmp_path / "odd", src)
    assert read_video(tmp_path / "odd", size=32).frames.shape == (3, 3, 32, 51)
    assert read_video(tmp_path / "odd", size=48, resize="long_side").frames.shape == (3, 3, 30, 48)
    assert read_video(tmp_path / "odd", size=32, resize="none").frames.shape == (3, 3, 61, 97)
    assert target_size(97, 61, 32) == (51, 32)
    small = unit_frames(read_video(tmp_path / "odd", size=32).frames)
    ref = torch.nn.functional.interpolate(src, size=(32, 51), mode="area")
    assert (small - ref).abs().mean() < 0.02  # a resize of the same picture, not garbage


def test_odd_size_mp4_is_padded_by_replication(tmp_path):
    src = smooth_frames(4, 61, 97)
    write_video(tmp_path / "odd.mp4", src, fps=5)
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.width, info.height, info.num_frames, info.fps) == (98, 62, 4, 5.0)
    back = unit_frames(read_video(tmp_path / "odd.mp4").frames)
    assert (back[..., :61, :97] - src).abs().mean() < 0.02
    assert (back[..., -1] - back[..., -2]).abs().mean() < 0.02  # replicated column, not black
    assert (back[..., -1, :] - back[..., -2, :]).abs().mean() < 0.02


def test_numpy_uint8_frames_and_to_uint8():
    src = smooth_frames(2, 4, 6)
    u = to_uint8(src)
    assert u.shape == (2, 4, 6, 3) and u.dtype == np.uint8
    assert np.array_equal(to_uint8(u), u)
    assert np.array_equal(to_uint8(u.astype(np.float32) / 255), u)
    with pytest.raises(ValueError):
        to_uint8(np.zeros((2, 3, 4, 6)))


def test_audio_is_kept_and_trimmed(tmp_path):
    frames = smooth_frames(8, 32, 48)  # 1 s at 8 fps
    out = write_video(tmp_path / "a.mp4", frames, fps=8, audio_from=sample_clip_path(), audio_start=0.5)
    info = probe_video(out)
    assert info.has_audio and info.num_frames == 8
    assert info.audio_duration == pytest.approx(info.duration, abs=0.1)
    with av.open(str(out)) as c:  # the tone survived: a 440 Hz peak, not silence
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0])])
        rate = c.streams.audio[0].sample_rate
    spectrum = np.abs(np.fft.rfft(samples[1000:9000]))
    assert np.fft.rfftfreq(8000, 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=10)
    explicit = write_video(tmp_path / "b.mp4", frames, fps=8, audio_from=sample_clip_path(), audio_duration=0.5)
    assert probe_video(explicit).audio_duration == pytest.approx(0.5, abs=0.1)
    # a source without audio gives a silent video
    write_video(tmp_path / "d.mp4", frames, fps=8)
    silent = write_video(tmp_path / "e.mp4", frames, fps=8, audio_from=tmp_path / "d.mp4")
    assert not probe_video(silent).has_audio
    assert read_video(out).has_audio and not read_video(silent).has_audio


def test_audio_window_is_cut_at_the_right_time(tmp_path):
    rate = 8000
    s = np.arange(2 * rate) / rate
    tone = np.where(s >= 1.0, 0.5 * np.sin(2 * np.pi * 300 * s), 0.0)  # silent 1 s, then a tone
    with wave.open(str(tmp_path / "step.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((tone * 32767).astype("<i2").tobytes())
    out = write_video(
        tmp_path / "cut.mp4", smooth_frames(4, 16, 16), fps=4, audio_from=tmp_path / "step.wav", audio_start=0.75
    )
    with av.open(str(out)) as c:
        got = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0])])
    assert len(got) == pytest.approx(rate, abs=1100)  # 1 s of video -> 1 s of audio (one AAC frame slack)
    rms = lambda a: float(np.sqrt(np.mean(a**2)))  # noqa: E731
    assert rms(got[: int(0.2 * rate)]) < 0.02  # 0.75..0.95 s of the source: silence
    assert rms(got[int(0.3 * rate) : int(0.9 * rate)]) > 0.25  # 1.05..1.65 s: the tone
    # a window past the source's end is padded with silence, so the track still spans the video
    late = write_video(
        tmp_path / "late.mp4", smooth_frames(4, 16, 16), fps=4, audio_from=tmp_path / "step.wav", audio_start=1.5
    )
    assert probe_video(late).audio_duration == pytest.approx(1.0, abs=0.1)


def test_errors_name_the_path(tmp_path, mp4):
    with pytest.raises(InputError, match="missing.mp4") as err:
        read_video(tmp_path / "missing.mp4")
    assert "\n" not in str(err.value)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="corrupt.mp4") as err:
        read_video(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="corrupt.mp4"):
        probe_video(bad)
    for backend in ("auto", "pyav"):
        with pytest.raises(InputError, match=r"clip.mp4.*has 12 frame"):
            read_video(mp4[0], start=50, backend=backend)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes.txt.*unsupported"):
        read_video(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        read_video(tmp_path / "empty")


def test_failed_writes_leave_nothing(tmp_path):
    src = smooth_frames(6, 16, 16)

    def frames_then_crash():
        yield src[:3]
        yield src[3]
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError, match="decoder died"):
        write_video(tmp_path / "out.mp4", frames_then_crash(), fps=8, audio_from=sample_clip_path())
    with pytest.raises(RuntimeError, match="decoder died"):
        write_frames(tmp_path / "pngs", frames_then_crash())
    assert list(tmp_path.iterdir()) == []
    # streaming frames works when nothing fails, and the old file is only replaced on success
    write_video(tmp_path / "out.mp4", iter(src), fps=8)
    assert probe_video(tmp_path / "out.mp4").num_frames == 6
    with pytest.raises(RuntimeError):
        write_video(tmp_path / "out.mp4", frames_then_crash(), fps=8)
    assert probe_video(tmp_path / "out.mp4").num_frames == 6
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_side_by_side_centres_the_shorter_clip():
    a = torch.full((2, 3, 10, 6), 0.25)
    b = torch.full((2, 3, 4, 8), 0.75)
    out = side_by_side(a, b, gap=2)
    assert out.shape == (2, 3, 10, 16)
    assert torch.all(out[..., :6] == 0.25)
    assert torch.all(out[..., 6:8] == 0.0)
    assert torch.all(out[..., 3:7, 8:] == 0.75)
    assert torch.all(out[..., :3, 8:] == 0.0) and torch.all(out[..., 7:, 8:] == 0.0)
    with pytest.raises(ValueError):
        side_by_side(a, b[:1])


def noisy_frames(n: int, h: int, w: int) -> np.ndarray:
    """uint8 (n, h, w, 3): moving waves plus fixed noise, the content that made x264 runs differ."""
    rng = np.random.default_rng(0)
    y, x = np.linspace(0, 3, h)[:, None], np.linspace(0, 4, w)[None]
    waves = np.stack([np.stack([0.5 + 0.4 * np.sin(x + 0.7 * y + 0.3 * f + p) for p in (0, 2, 4)], -1) for f in range(n)])
    return (waves * 255).round().astype(np.uint8) + rng.integers(0, 20, waves.shape, dtype=np.uint8)


def test_mp4_is_bt709_tagged_and_converted_with_that_matrix(tmp_path):
    import subprocess

    import imageio.v3 as iio
    import imageio_ffmpeg

    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [230, 180, 40], [20, 60, 220], [128, 128, 128]], np.uint8)
    frame = np.repeat(np.repeat(colours[None], 16, axis=0), 16, axis=1)  # (16, 96, 3): 16x16 solid blocks
    out = write_video(tmp_path / "c.mp4", np.stack([frame] * 3), fps=8, crf=0)
    with av.open(str(out)) as c:
        ctx = c.streams.video[0].codec_context
        assert (int(ctx.colorspace), int(ctx.color_range), int(ctx.color_primaries), int(ctx.color_trc)) == (1, 1, 1, 1)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)], capture_output=True, text=True)
    assert "yuv420p(tv, bt709" in probe.stderr  # range, matrix (and primaries/transfer) as ffmpeg reads them
    # ffmpeg converts back by the tags: the block centres come back (a BT.601 matrix under a BT.709 tag is ~10 levels off)
    back = iio.imread(out, plugin="FFMPEG", index=0).astype(int)
    centres = back[8, 8::16]
    assert np.abs(centres - colours).max() <= 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MALLOC_PERTURB_ is glibc's")
def test_mp4_bytes_do_not_depend_on_leftover_memory(tmp_path):
    import subprocess

    np.save(tmp_path / "f.npy", noisy_frames(24, 64, 144))  # 9 macroblocks wide: x264's AVX-512 mbtree read garbage
    script = (
        "import sys, numpy as np; from motia.video import write_video, sample_clip_path; "
        "write_video(sys.argv[2], np.load(sys.argv[1]), 8, audio_from=sample_clip_path())"
    )
    outs = []
    for perturb in ("1", "200"):  # glibc fills fresh allocations with this byte
        env = {**os.environ, "MALLOC_PERTURB_": perturb}
        path = tmp_path / f"p{perturb}.mp4"
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "f.npy"), str(path)], env=env, check=True)
        outs.append(path.read_bytes())
    assert outs[0] == outs[1]


def test_writer_interleaves_audio_as_chunks_arrive(tmp_path):
    from motia.video import VideoWriter

    # 50 s at 4 fps: far longer than the muxer's own 10 s interleaving queue, so audio
    # encoded only at the end would land after the first 40 s of video in the file.
    src = smooth_frames(200, 16, 16)
    with VideoWriter(tmp_path / "s.mp4", 4, audio_from=sample_clip_path(), audio_start=0.5) as writer:
        for i in range(0, 200, 8):
            writer.write(src[i : i + 8])
            assert not (tmp_path / "s.mp4").exists()  # only complete files appear under the final name
    with av.open(str(writer.path)) as c:
        packets = [(p.stream.type, p.pos) for p in c.demux() if p.size]  # demuxed in time order; pos = file offset
    video = sorted(pos for kind, pos in packets if kind == "video")
    assert min(pos for kind, pos in packets if kind == "audio") < video[len(video) // 10]
    info = probe_video(writer.path)
    assert info.num_frames == 200 and info.audio_duration == pytest.approx(50.0, abs=0.05)  # 2.5 s, then silence


@pytest.mark.parametrize("backend", ["decord", "pyav", "imageio"])
def test_iter_frames_streams_the_selected_frames_at_full_size(mp4, backend, tmp_path):
    from motia.video import iter_frames

    if backend == "decord":
        pytest.importorskip("decord", reason="decord has no wheel for this platform")
    path, _ = mp4
    whole = read_video(path, backend=backend)
    got = np.stack(list(iter_frames(path, [1, 4, 5, 11], backend=backend, chunk=2)))
    assert got.shape == (4, 48, 64, 3) and got.dtype == np.uint8
    assert np.array_equal(got, to_uint8(whole.frames[[1, 4, 5, 11]]))
    with pytest.raises(InputError, match="clip.mp4"):
        list(iter_frames(path, [3, 12], backend=backend))
    src = smooth_frames(4, 21, 33)
    write_frames(tmp_path / "pngs", src)
    assert np.array_equal(np.stack(list(iter_frames(tmp_path / "pngs", [0, 2], backend="pillow"))), to_uint8(src[[0, 2]]))


@pytest.mark.parametrize("backend", ["decord", "pyav", "imageio"])
def test_read_video_never_holds_the_full_size_clip(tmp_path, monkeypatch, backend):
    import motia.video as V

    if backend == "decord":
        pytest.importorskip("decord", reason="decord has no wheel for this platform")
    path = write_video(tmp_path / "c.mp4", smooth_frames(40, 48, 64), fps=8)  # decord fails on 48 px wide frames
    seen = []
    convert = V._clip_frames
    monkeypatch.setattr(V, "_clip_frames", lambda raw, *a: seen.append(len(raw)) or convert(raw, *a))
    clip = read_video(path, size=16, backend=backend)
    assert clip.frames.shape == (40, 3, 16, 21)
    assert sum(seen) == 40 and max(seen) <= V._CHUNK  # decoded frames are resized a chunk at a time
