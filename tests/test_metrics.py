"""Tests for motia.metrics: PSNR/SSIM against scikit-image, LPIPS loading and maths, I3D/FVD plumbing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F_nn

from motia.errors import InputError
from motia.metrics import (
    LPIPS,
    PSNR_CAP,
    I3DFeatures,
    MetricUnavailable,
    feature_stats,
    frechet_distance,
    fvd,
    fvd_from_features,
    psnr,
    psnr_frames,
    sample_frames_uniform,
    ssim,
    ssim_frames,
)


def _pair(seed, shape=(3, 3, 37, 53), noise=0.1, smooth=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g)
    if smooth:  # natural-image-like structure, so SSIM is far from 0 and from 1
        a = F_nn.avg_pool2d(a, 5, stride=1, padding=2)
    b = (a + noise * torch.randn(shape, generator=g)).clamp(0, 1)
    return a, b


def _hwc(x):
    return x.permute(1, 2, 0).double().numpy()


@pytest.mark.parametrize("seed,noise,smooth", [(0, 0.1, False), (1, 0.02, True), (2, 0.3, True)])
def test_psnr_ssim_match_scikit_image(seed, noise, smooth):
    skm = pytest.importorskip("skimage.metrics")
    a, b = _pair(seed, noise=noise, smooth=smooth)
    ref_psnr = [skm.peak_signal_noise_ratio(_hwc(x), _hwc(y), data_range=1) for x, y in zip(a, b)]
    ref_ssim = [
        skm.structural_similarity(
            _hwc(x), _hwc(y), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=2
        )
        for x, y in zip(a, b)
    ]
    assert np.allclose(psnr_frames(a, b).numpy(), ref_psnr, atol=1e-3)
    assert np.allclose(ssim_frames(a, b).numpy(), ref_ssim, atol=1e-3)
    # a video's score is the mean of its frames' scores
    assert psnr(a, b) == pytest.approx(np.mean(ref_psnr), abs=1e-3)
    assert ssim(a, b) == pytest.approx(np.mean(ref_ssim), abs=1e-3)


def test_ssim_chunks_many_frames_consistently():
    a, b = _pair(3, shape=(19, 3, 24, 24), smooth=True)  # more frames than one chunk
    per = ssim_frames(a, b)
    assert per.shape == (19,)
    assert torch.allclose(per[11], ssim_frames(a[11:12], b[11:12])[0])


def test_identical_videos_score_the_cap():
    a, _ = _pair(4)
    assert psnr(a, a) == PSNR_CAP == 100.0
    assert psnr(a, a, cap=60.0) == 60.0
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    # one identical frame among noisy ones contributes exactly the cap to the mean
    b = a.clone()
    b[1:] = (b[1:] + 0.1).clamp(0, 1)
    per = psnr_frames(a, b)
    assert per[0] == PSNR_CAP and (per[1:] < 40).all()


def test_metric_inputs_are_checked():
    a, b = _pair(5)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[..., :-1])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[..., :10, :], b[..., :10, :])


# ---------------------------------------------------------------- FVD


def _independent_frechet(mu1, s1, mu2, s2):
    """|d|^2 + Tr S1 + Tr S2 - 2 Tr sqrt(S1^1/2 S2 S1^1/2), square roots by symmetric eigendecomposition."""

    def sqrt_psd(m):
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = sqrt_psd(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrt_psd(r1 @ s2 @ r1)))


def test_frechet_distance_matches_independent_numpy():
    rng = np.random.default_rng(0)
    d = 12
    x = rng.normal(size=(300, d)) @ rng.normal(size=(d, d))
    y = rng.normal(loc=0.5, size=(250, d)) @ rng.normal(size=(d, d))
    mu1, s1 = feature_stats(x)
    mu2, s2 = feature_stats(y)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got > 1.0
    assert got == pytest.approx(_independent_frechet(mu1, s1, mu2, s2), rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
    # 1-D Gaussians: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_survives_singular_covariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 20))  # fewer samples than dimensions: rank-4 covariance
    mu, s = feature_stats(x)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-4
    y = rng.normal(size=(5, 20)) + 1.0
    mu2, s2 = feature_stats(y)
    got = frechet_distance(mu, s, mu2, s2)
    assert np.isfinite(got)
    assert got == pytest.approx(_independent_frechet(mu, s, mu2, s2), rel=1e-4)


def test_sample_frames_uniform():
    video = torch.arange(31).view(31, 1, 1, 1).float()
    idx = sample_frames_uniform(video, 16).flatten().long().tolist()
    assert idx == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
    short = sample_frames_uniform(video[:5], 16).flatten().long().tolist()
    assert len(short) == 16 and short[0] == 0 and short[-1] == 4 and sorted(short) == short
    assert set(short) == {0, 1, 2, 3, 4}


class TinyI3D(torch.nn.Module):
    """A small TorchScript model with the I3D call contract; it refuses any input the real one would misread."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 6, kernel_size=(4, 32, 32), stride=(4, 32, 32))

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
        if rescale or resize or not return_features:
            raise RuntimeError("wrong flags")
        if x.shape[1] != 3 or x.shape[2] != 16 or x.shape[3] != 224 or x.shape[4] != 224:
            raise RuntimeError("wrong shape")
        if float(x.min()) < -1.0 or float(x.max()) > 1.0 or float(x.min()) >= 0.0:
            raise RuntimeError("input not in [-1, 1]")
        return torch.tanh(self.conv(x)).mean(dim=(2, 3, 4))  # (B, 6)


def save_tiny_i3d(path):
    torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    return path


def test_i3d_features_and_fvd(tmp_path):
    i3d = I3DFeatures.from_path(save_tiny_i3d(tmp_path / "i3d_torchscript.pt"), batch=2)
    g = torch.Generator().manual_seed(0)
    real = [torch.rand(n, 3, 40, 72, generator=g) for n in (20, 9, 16)]
    feats = i3d(real)
    assert feats.shape == (3, 6) and feats.dtype == np.float64
    assert np.allclose(feats[2], i3d([real[2]])[0])  # batching does not change a video's features
    assert fvd_from_features(feats, feats) == pytest.approx(0.0, abs=1e-4)
    fake = [(v * 0.3).clamp(0, 1) for v in real[:2]]
    expected = fvd_from_features(feats[:2], i3d(fake))
    assert expected > 1e-3
    assert fvd(real[:2], fake, i3d) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least 2"):
        fvd(real[:1], real[:1], i3d)


def test_i3d_needs_a_local_file(tmp_path):
    with pytest.raises(MetricUnavailable, match="i3d_path"):
        I3DFeatures.from_path(None)
    with pytest.raises(InputError, match="does not exist"):
        I3DFeatures.from_path(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="TorchScript"):
        I3DFeatures.from_path(tmp_path / "bad.pt")


# ---------------------------------------------------------------- LPIPS


def lpips_state_dicts(seed=0):
    """Random weights in the on-disk formats: torchvision AlexNet, lpips heads, and a whole lpips.LPIPS."""
    torch.manual_seed(seed)
    ref = LPIPS()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.05)
    for lin in ref.lins:
        lin.weight.data.abs_()  # the released heads are non-negative
    trunk = {f"features.{k.split('.', 1)[1]}": v for k, v in ref.state_dict().items() if k.startswith("features.")}
    trunk["classifier.1.weight"] = torch.zeros(4, 4)  # the classifier is in torchvision's file; ignored
    heads = {f"lin{i}.model.1.weight": lin.weight.clone() for i, lin in enumerate(ref.lins)}
    slices = {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}
    whole = dict(heads)
    whole["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    for k, v in trunk.items():
        if k.startswith("features."):
            idx = int(k.split(".")[1])
            s = next(s for s, r in slices.items() if idx in r)
            whole[f"net.slice{s}.{idx}.{k.split('.')[2]}"] = v
    return ref, trunk, heads, whole


def write_lpips_folder(folder, seed=0):
    ref, trunk, heads, _ = lpips_state_dicts(seed)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(trunk, folder / "alexnet-owt-7be5be79.pth")
    torch.save(heads, folder / "alex.pth")
    return ref


def test_lpips_loads_both_layouts_and_behaves(tmp_path):
    ref, _, _, whole = lpips_state_dicts()
    write_lpips_folder(tmp_path / "w")
    torch.save(whole, tmp_path / "lpips_alex_full.pth")
    from_folder = LPIPS.from_path(tmp_path / "w")
    from_file = LPIPS.from_path(tmp_path / "lpips_alex_full.pth")
    a, b = _pair(6, shape=(2, 3, 48, 48), noise=0.2, smooth=True)
    d_folder = from_folder(a * 2 - 1, b * 2 - 1)
    assert d_folder.shape == (2,)
    assert torch.allclose(d_folder, ref(a * 2 - 1, b * 2 - 1))
    assert torch.allclose(d_folder, from_file(a * 2 - 1, b * 2 - 1))
    assert (d_folder > 0).all()
    assert torch.allclose(from_folder(b * 2 - 1, a * 2 - 1), d_folder, atol=1e-6)  # symmetric
    assert from_folder.score(a, a) == pytest.approx(0.0, abs=1e-9)
    assert from_folder.score(a, b) == pytest.approx(float(d_folder.mean()), rel=1e-5)  # [0,1] in, mapped to [-1,1]
    less = (a + 0.3 * (b - a)).clamp(0, 1)
    assert from_folder.score(a, less) < float(d_folder.mean())


def test_lpips_first_layer_by_hand(tmp_path):
    """With only the first head non-zero, LPIPS is the spatial mean of the weighted squared unit-normed relu1 diff."""
    ref, trunk, heads, _ = lpips_state_dicts(1)
    for i in range(1, 5):
        heads[f"lin{i}.model.1.weight"].zero_()
    torch.save(trunk, tmp_path / "trunk.pth")
    torch.save(heads, tmp_path / "heads.pth")
    model = LPIPS.from_path(tmp_path)
    x, y = (t * 2 - 1 for t in _pair(7, shape=(2, 3, 48, 48), smooth=True))
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def relu1(t):
        f = F_nn.relu(F_nn.conv2d((t - shift) / scale, trunk["features.0.weight"], trunk["features.0.bias"], stride=4, padding=2))
        return f / (f.norm(dim=1, keepdim=True) + 1e-10)

    w = heads["lin0.model.1.weight"].view(1, -1, 1, 1)
    expected = ((relu1(x) - relu1(y)) ** 2 * w).sum(1).mean(dim=(1, 2))
    assert torch.allclose(model(x, y), expected, rtol=1e-5)


def test_lpips_needs_local_weights(tmp_path):
    with pytest.raises(MetricUnavailable, match="lpips_weights"):
        LPIPS.from_path(None)
    with pytest.raises(InputError, match="does not exist"):
        LPIPS.from_path(tmp_path / "missing")
    _, _, heads, _ = lpips_state_dicts()
    (tmp_path / "only_heads").mkdir()
    torch.save(heads, tmp_path / "only_heads" / "alex.pth")
    with pytest.raises(InputError, match="AlexNet trunk"):
        LPIPS.from_path(tmp_path / "only_heads")
