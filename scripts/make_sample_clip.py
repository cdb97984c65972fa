"""Generate the bundled sample clip motia/assets/sample.mp4, deterministically.

24 frames, 96x64 (w x h), 8 fps: a drifting colour gradient with a fine texture and
three coloured shapes moving smoothly across it, plus a 3 s mono 440 Hz tone (AAC),
so demos and tests exercise motion, borders and audio keeping. Run from the repo root:

    python scripts/make_sample_clip.py [--out motia/assets/sample.mp4]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from motia.video import write_video  # noqa: E402

FRAMES, WIDTH, HEIGHT, FPS = 24, 96, 64, 8
AUDIO_RATE, TONE_HZ = 16_000, 440.0


def make_frames() -> torch.Tensor:
    """(F, 3, H, W) float in [0, 1]: gradient background + texture + moving shapes."""
    t = torch.arange(FRAMES, dtype=torch.float32)[:, None, None] / FRAMES  # (F, 1, 1)
    y = torch.linspace(0, 1, HEIGHT)[None, :, None]  # (1, H, 1)
    x = torch.linspace(0, 1, WIDTH)[None, None, :]  # (1, 1, W)
    texture = 0.06 * torch.sin(2 * math.pi * (6 * x + 4 * y - t))  # slow-moving fine stripes
    frames = torch.stack(
        [
            0.25 + 0.5 * x + 0.15 * torch.sin(2 * math.pi * (y + t)) + texture,
            0.20 + 0.6 * y + texture,
            0.70 - 0.4 * x * y + 0.1 * torch.cos(2 * math.pi * (x - t)),
        ],
        dim=1,
    )  # (F, 3, H, W)
    aspect = WIDTH / HEIGHT
    shapes = [  # (centre x(t), centre y(t), radius, colour, square?)
        (0.15 + 0.7 * t, 0.35 + 0.15 * torch.sin(2 * math.pi * t), 0.18, (0.95, 0.20, 0.15), False),
        (0.85 - 0.6 * t, 0.70 + 0.0 * t, 0.14, (0.15, 0.35, 0.95), True),
        (0.5 + 0.25 * torch.cos(2 * math.pi * t), 0.5 + 0.25 * torch.sin(2 * math.pi * t), 0.1, (1, 0.85, 0.1), False),
    ]
    for cx, cy, r, colour, square in shapes:
        dx, dy = (x - cx) * aspect, y - cy  # distances in units of the height
        dist = torch.maximum(dx.abs(), dy.abs()) if square else torch.sqrt(dx**2 + dy**2)
        alpha = torch.clamp((r - dist) * HEIGHT, 0, 1)[:, None]  # (F, 1, H, W), one-pixel soft edge
        colour = torch.tensor(colour)[None, :, None, None]
        frames = frames * (1 - alpha) + colour * alpha
    return frames.clamp(0, 1)


def write_tone(path: Path, seconds: float) -> None:
    n = int(round(seconds * AUDIO_RATE))
    s = np.arange(n) / AUDIO_RATE
    fade = np.minimum(1.0, np.minimum(s, seconds - s) / 0.05)  # no clicks at the ends
    tone = 0.3 * np.sin(2 * np.pi * TONE_HZ * s) * fade
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes((tone * 32767).astype("<i2").tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "motia" / "assets" / "sample.mp4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "tone.wav"
        write_tone(wav, FRAMES / FPS)
        write_video(args.out, make_frames(), FPS, audio_from=wav, crf=20, audio_bitrate=32_000)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
