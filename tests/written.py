"""What the outputs tests read back: a patterned clip, the source's own frames as decoded, written PNG frames."""

from pathlib import Path

import numpy as np
import torch


def portrait(num_frames, h, w):
    """(F, 3, h, w) a moving pattern with edges and texture, so a misplaced or smeared paste or crop shows."""
    f = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1, 1)
    y = torch.linspace(0, 12, h).view(1, 1, -1, 1)
    x = torch.linspace(0, 7, w).view(1, 1, 1, -1)
    phase = torch.tensor([0.0, 2.0, 4.0]).view(1, 3, 1, 1)
    return (0.5 + 0.35 * torch.sin(x * 1.3 + y + 0.4 * f + phase) + 0.1 * torch.sign(torch.sin(3 * x - y))).clamp(0, 1)


def source_frames(path, n):
    """The source's own frames as the clip's reader decodes them, uint8 (n, H, W, 3)."""
    from motia.video import iter_frames, read_video

    return np.stack(list(iter_frames(path, range(n), backend=read_video(path, max_frames=1).backend)))


def png_frames(folder):
    """A run's frames/ folder as uint8 (n, H, W, 3), in file-name order."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(Path(folder).iterdir())])
