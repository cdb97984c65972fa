"""Evaluation metrics of the paper's protocol: PSNR, SSIM, LPIPS (AlexNet) and FVD (I3D).

Conventions:

* Videos are ``(F, 3, H, W)`` float tensors in [0, 1]; a single image may be ``(3, H, W)``.
  Every metric takes [0, 1] input; LPIPS and I3D map it to [-1, 1] themselves.
* PSNR and SSIM are computed per frame and averaged over the frames of a video.
* LPIPS and FVD need weights that cannot be downloaded here: they load only from
  local files. When none are configured they raise :class:`MetricUnavailable`, which
  the evaluation driver reports as "LPIPS skipped: <why>". A path that is given but
  missing or unreadable is the user's mistake and raises :class:`~motia.errors.InputError`.

LPIPS is implemented here in torch (v0.1, AlexNet trunk, linear heads, spatial
average: the ``lpips`` package's default ``LPIPS(net="alex")``) so that it needs
neither the ``lpips`` package nor torchvision, which does not import beside every
torch build. It reads the same weight files those packages ship.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F_nn
from torch import nn

from motia.errors import InputError, MotiaError

log = logging.getLogger(__name__)

PSNR_CAP = 100.0  # dB, reported when a frame is reproduced exactly (MSE == 0)
_CHUNK = 8  # frames per batched metric call: bounds memory on 480p x 100-frame clips


class MetricUnavailable(MotiaError):
    """A metric cannot run here (no weights configured); the message says why and how to enable it."""


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) -> (N, C, H, W) float."""
    if x.dim() < 3:
        raise ValueError(f"expected (..., C, H, W) frames, got shape {tuple(x.shape)}")
    x = x.reshape(-1, *x.shape[-3:])
    return x if x.is_floating_point() else x.float()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return _frames(a), _frames(b)


# ---------------------------------------------------------------- PSNR / SSIM

def psnr_frames(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, cap: float = PSNR_CAP) -> torch.Tensor:
    """Per-frame PSNR in dB, ``(N,)`` float64; a frame with MSE == 0 (or PSNR above ``cap``) gives ``cap``."""
    a, b = _check_pair(a, b)
    mse = torch.cat([
        (a[i : i + _CHUNK].double() - b[i : i + _CHUNK].double()).square().flatten(1).mean(1)
        for i in range(0, a.shape[0], _CHUNK)
    ])  # (N,)
    value = 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-300))
    return torch.where(mse > 0, value, torch.full_like(value, cap)).clamp_max(cap)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, cap: float = PSNR_CAP) -> float:
    """PSNR of two videos: per-frame PSNR averaged over frames.

    Identical frames have infinite PSNR; they count as ``cap`` dB (default 100), so a
    video mean stays finite and an exact reproduction scores the cap exactly.
    """
    return float(psnr_frames(a, b, data_range, cap).mean())


def _gaussian_taps(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    # scipy.ndimage.gaussian_filter(sigma=1.5, truncate=3.5) -> radius int(3.5*1.5+0.5) = 5: 11 taps
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim_frames(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
) -> torch.Tensor:
    """Per-frame SSIM, ``(N,)``: Gaussian 11x11 window, mean over channels.

    Matches ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=...)``:
    skimage filters with reflection and then averages only the interior (a border
    of 5 pixels dropped), which is exactly a 'valid' convolution, done here.
    """
    a, b = _check_pair(a, b)
    n, c, h, w = a.shape
    taps = _gaussian_taps(sigma).to(a.device)
    size = taps.numel()
    if h < size or w < size:
        raise ValueError(f"SSIM needs frames of at least {size}x{size} pixels, got {h}x{w}")
    kh = taps.view(1, 1, size, 1)
    kw = taps.view(1, 1, 1, size)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    out = []
    for i in range(0, n, _CHUNK):
        x = a[i : i + _CHUNK].double().reshape(-1, 1, h, w)  # (n*C, 1, H, W)
        y = b[i : i + _CHUNK].double().reshape(-1, 1, h, w)
        stack = torch.cat([x, y, x * x, y * y, x * y])  # 5 maps filtered in one call
        filt = F_nn.conv2d(F_nn.conv2d(stack, kh), kw)
        ux, uy, uxx, uyy, uxy = filt.chunk(5)
        vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out.append(s.reshape(-1, c, *s.shape[-2:]).mean(dim=(1, 2, 3)))  # (chunk,)
    return torch.cat(out)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """SSIM of two videos in [0, 1]: per-frame SSIM (see :func:`ssim_frames`) averaged over frames."""
    return float(ssim_frames(a, b, data_range).mean())


# ---------------------------------------------------------------- weights on disk

def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise InputError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise InputError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


# ---------------------------------------------------------------- LPIPS

class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk, in torch (same numbers as ``lpips.LPIPS(net="alex")``).

    Weights come from local files only (:meth:`from_path`): the ``lpips`` package's
    ``weights/v0.1/alex.pth`` (linear heads, keys ``linK.model.1.weight``) and
    torchvision's ``alexnet-owt-7be5be79.pth`` (trunk, keys ``features.N.*``), or one
    file holding a whole ``lpips.LPIPS`` state dict (trunk keys ``net.sliceK.N.*``).
    """

    CHANNELS = (64, 192, 384, 256, 256)
    TAPS = (1, 4, 7, 9, 11)  # indices in `features` after which lpips reads relu1..relu5

    def __init__(self):
        super().__init__()
        # torchvision AlexNet.features up to relu5 (the final max-pool is never read);
        # the indices match torchvision's so its state dict loads as is.
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in self.CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map torchvision / lpips key names onto this module's; unrelated keys are dropped."""
        out = {}
        for key, value in sd.items():
            parts = key.split(".")
            if parts[0] == "features" and len(parts) == 3:  # torchvision AlexNet
                out[key] = value
            elif parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):  # lpips.LPIPS
                out[f"features.{parts[2]}.{parts[3]}"] = value
            elif parts[0].startswith("lin") and parts[1:] == ["model", "1", "weight"]:  # lpips heads
                out[f"lins.{parts[0][3:]}.weight"] = value
        return out

    @classmethod
    def from_path(cls, path: str | os.PathLike | None, device: str | torch.device = "cpu") -> "LPIPS":
        """Load from a weights file or a folder of them (every .pth/.pt/.safetensors inside is merged)."""
        if path is None:
            raise MetricUnavailable(
                "no lpips_weights given (a folder holding the lpips package's weights/v0.1/alex.pth "
                "and torchvision's alexnet-owt-7be5be79.pth)"
            )
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors"))
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"lpips_weights {path} does not exist")
        merged: dict[str, torch.Tensor] = {}
        for f in files:
            merged.update(cls.convert_state_dict(_load_state_file(f)))
        model = cls()
        missing = sorted(set(model.state_dict()) - set(merged))
        if missing:
            heads = any(k.startswith("lins.") for k in missing)
            trunk = any(k.startswith("features.") for k in missing)
            what = " and ".join(
                w for w, m in (("the AlexNet trunk (alexnet-owt-7be5be79.pth)", trunk),
                               ("the linear heads (lpips weights/v0.1/alex.pth)", heads)) if m
            )  # fmt: skip
            raise InputError(f"lpips_weights {path}: missing {what} ({len(missing)} tensors, e.g. {missing[0]})")
        try:
            model.load_state_dict(merged)
        except RuntimeError as e:
            raise InputError(f"lpips_weights {path}: tensors of the wrong shape ({str(e).splitlines()[-1].strip()})") from None
        return model.to(device)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image, ``(N,)``, for ``(N, 3, H, W)`` inputs in [-1, 1]."""
        x = (x - self.shift) / self.scale
        y = (y - self.shift) / self.scale
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        head = 0
        for idx, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if idx in self.TAPS:
                nx = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)
                ny = y / (y.square().sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[head]((nx - ny).square()).mean(dim=(1, 2, 3))
                head += 1
        return total

    @torch.no_grad()
    def score(self, a: torch.Tensor, b: torch.Tensor, chunk: int = _CHUNK) -> float:
        """Mean LPIPS over the frames of two videos in [0, 1] (mapped to [-1, 1] here)."""
        a, b = _check_pair(a, b)
        dev = self.shift.device
        vals = [
            self(a[i : i + chunk].to(dev) * 2 - 1, b[i : i + chunk].to(dev) * 2 - 1).double().cpu()
            for i in range(0, a.shape[0], chunk)
        ]
        return float(torch.cat(vals).mean())


# ---------------------------------------------------------------- FVD

def sample_frames_uniform(video: torch.Tensor, num: int = 16) -> torch.Tensor:
    """``num`` frames spread evenly from the first to the last, ``(num, ...)``.

    Indices are ``round(linspace(0, F - 1, num))``; a clip shorter than ``num``
    repeats frames (nearest index), so every clip yields exactly ``num`` frames.
    """
    count = video.shape[0]
    if count == 0:
        raise ValueError("cannot sample frames from an empty video")
    idx = torch.linspace(0, count - 1, num, dtype=torch.float64).round().long()
    return video[idx.to(video.device)]


class I3DFeatures:
    """The I3D feature extractor used by FVD: the TorchScript ``i3d_torchscript.pt`` of StyleGAN-V.

    Each video is reduced to 16 evenly spaced frames, resized to 224x224 (bilinear,
    antialiased; the aspect ratio is not kept, as in the common FVD code), mapped to
    [-1, 1] and fed as ``(B, 3, 16, 224, 224)`` with ``rescale=False, resize=False,
    return_features=True``: the logits-layer features before the softmax.
    """

    FRAMES = 16
    SIZE = 224

    def __init__(self, model: torch.jit.ScriptModule | nn.Module, device: str | torch.device = "cpu", batch: int = 4):
        self.model = model
        self.device = torch.device(device)
        self.batch = batch

    @classmethod
    def from_path(cls, path: str | os.PathLike | None, device: str | torch.device = "cpu", batch: int = 4) -> "I3DFeatures":
        if path is None:
            raise MetricUnavailable("no i3d_path given (a local copy of StyleGAN-V's i3d_torchscript.pt)")
        path = Path(path)
        if not path.is_file():
            raise InputError(f"i3d_path {path} does not exist")
        try:
            model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:  # noqa: BLE001
            raise InputError(f"i3d_path {path}: not a loadable TorchScript file ({type(e).__name__}: {e})") from None
        return cls(model, device, batch)

    def prepare(self, video: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) in [0, 1] -> (3, 16, 224, 224) in [-1, 1], float32 on the model's device."""
        clip = sample_frames_uniform(video, self.FRAMES).to(self.device, torch.float32)  # (16, 3, H, W)
        if clip.shape[-2:] != (self.SIZE, self.SIZE):
            clip = F_nn.interpolate(clip, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False, antialias=True)
        return (clip.clamp(0, 1) * 2 - 1).permute(1, 0, 2, 3)  # (3, 16, 224, 224)

    @torch.no_grad()
    def __call__(self, videos: Iterable[torch.Tensor]) -> np.ndarray:
        """Features ``(N, D)`` float64 of ``N`` videos, each ``(F, 3, H, W)`` in [0, 1]."""
        feats, pending = [], []

        def flush():
            x = torch.stack(pending)  # (B, 3, 16, 224, 224)
            out = self.model(x, rescale=False, resize=False, return_features=True)
            feats.append(out.reshape(len(pending), -1).double().cpu().numpy())
            pending.clear()

        for video in videos:
            pending.append(self.prepare(video))
            if len(pending) == self.batch:
                flush()
        if pending:
            flush()
        if not feats:
            raise ValueError("no videos given")
        return np.concatenate(feats)


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples) of ``(N, D)`` features, as FVD uses them."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got shape {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between two Gaussians: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    As in the standard FID/FVD code: ``scipy.linalg.sqrtm`` of S1 S2; if that is not
    finite (near-singular product), ``eps`` is added to both diagonals and it is
    retried; the imaginary part that rounding leaves is dropped (logged when large,
    as happens when there are fewer samples than feature dimensions).
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: {mu1.shape}, {s1.shape} vs {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # few videos for many feature dimensions make S1 S2 singular: expected, handled here
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            log.warning("frechet_distance: singular product of covariances; adding %g to the diagonals", eps)
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            log.warning("frechet_distance: dropping an imaginary component of %.3g", np.abs(covmean.imag).max())
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fvd_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FVD from I3D features ``(N, D)`` of real and generated videos."""
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def fvd(real_videos: Sequence[torch.Tensor], fake_videos: Sequence[torch.Tensor], i3d: I3DFeatures) -> float:
    """FVD between two sets of videos, each ``(F, 3, H, W)`` in [0, 1]; needs at least 2 per set."""
    if len(real_videos) < 2 or len(fake_videos) < 2:
        raise ValueError("FVD needs at least 2 videos per set")
    return fvd_from_features(i3d(real_videos), i3d(fake_videos))


__all__ = [
    "PSNR_CAP",
    "MetricUnavailable",
    "psnr",
    "psnr_frames",
    "ssim",
    "ssim_frames",
    "LPIPS",
    "sample_frames_uniform",
    "I3DFeatures",
    "feature_stats",
    "frechet_distance",
    "fvd_from_features",
    "fvd",
]
