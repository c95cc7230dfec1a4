"""Batched torch SSIM equals skimage's structural_similarity (DESIGN.md label) to 1e-4."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from MotionSSIMLib.simulation.ssim import ssim, ssim_label


def _smooth_pair(shape, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]] / max(shape)
    base = 0.5 + 0.3 * np.sin(9 * xx) * np.cos(7 * yy) + 0.05 * rng.standard_normal(shape)
    other = base + 0.1 * np.roll(base, 5, axis=0) + 0.05 * rng.standard_normal(shape)
    return np.clip(base, 0, 1), np.clip(other / other.max(), 0, 1)


@pytest.mark.parametrize("shape", [(64, 64), (128, 128), (200, 256), (256, 256)])
def test_equals_skimage_random_and_smooth(shape):
    rng = np.random.default_rng(0)
    pairs = [(rng.random(shape), rng.random(shape)), _smooth_pair(shape, 1), _smooth_pair(shape, 2)]
    a = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float32)
    b = torch.tensor(np.stack([p[1] for p in pairs]), dtype=torch.float32)
    got = ssim(a, b).numpy()
    ref = [structural_similarity(x, y, data_range=1.0)
           for x, y in zip(a.double().numpy(), b.double().numpy(), strict=True)]
    assert got.shape == (3,)
    assert np.max(np.abs(got - ref)) < 1e-4


def test_identical_is_one_and_shapes():
    x = torch.rand(4, 1, 64, 64)
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-6)
    assert ssim(x[0, 0], x[0, 0]).shape == (1,)
    with pytest.raises(ValueError):
        ssim(x, x[:, :, :32])
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5))


def test_label_min_max_normalises_each_image():
    a, b = _smooth_pair((96, 96), 3)
    ta, tb = torch.tensor(a)[None], torch.tensor(b)[None]
    ref = structural_similarity((a - a.min()) / np.ptp(a), (b - b.min()) / np.ptp(b),
                                data_range=1.0)
    assert abs(ssim_label(ta * 300 + 7, tb * 5 - 2).item() - ref) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    a, b = torch.rand(8, 1, 256, 256), torch.rand(8, 1, 256, 256)
    assert torch.allclose(ssim(a.cuda(), b.cuda()).cpu(), ssim(a, b), atol=1e-4)


@pytest.mark.parametrize("shape", [(64, 64), (200, 256)])
def test_float32_path_equals_skimage(shape):
    """The path used on CUDA / MPS (float32, mean-shifted moments), run here on CPU."""
    from MotionSSIMLib.simulation.ssim import _ssim_map_mean

    rng = np.random.default_rng(5)
    pairs = [(rng.random(shape), rng.random(shape)), _smooth_pair(shape, 6),
             # nearly flat bright slices: variance << C2, where E[x^2] - E[x]^2 cancels
             (0.9 + 0.002 * rng.standard_normal(shape), 0.9 + 0.002 * rng.standard_normal(shape))]
    a = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float32)[:, None]
    b = torch.tensor(np.stack([p[1] for p in pairs]), dtype=torch.float32)[:, None]
    got = _ssim_map_mean(a, b, 1.0, 7, torch.float32)
    ref = [structural_similarity(x, y, data_range=1.0)
           for x, y in zip(a[:, 0].double().numpy(), b[:, 0].double().numpy(), strict=True)]
    assert got.shape == (3,) and got.dtype == torch.float32
    assert np.max(np.abs(got.numpy() - ref)) < 1e-4


def test_window_and_data_range_follow_skimage():
    a, b = _smooth_pair((64, 80), 8)
    ta, tb = torch.tensor(a)[None], torch.tensor(b)[None]
    for kw in ({"win_size": 11, "data_range": 1.0}, {"win_size": 7, "data_range": 2.0}):
        ref = structural_similarity(a, b, **kw)
        assert abs(ssim(ta, tb, **kw).item() - ref) < 1e-4
