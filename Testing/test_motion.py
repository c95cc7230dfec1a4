"""Motion simulators: seeded, severity-monotone, real ghosting (not a rigid copy)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MotionSSIMLib.motion import kspace_motion, random_motion_batch, torchio_motion
from MotionSSIMLib.ssim import ssim_label


def _heads(n=4, size=128, seed=0):
    """Brain-like slices: an elliptical head with a darker rim, inner structure and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    out = []
    for _ in range(n):
        a, b = rng.uniform(0.32, 0.4), rng.uniform(0.26, 0.34)
        r = (yy / a) ** 2 + (xx / b) ** 2
        img = np.where(r < 1, 0.5, 0.0) + np.where(r < 0.8, 0.3, 0.0)
        img += np.where(r < 0.8, 0.15 * np.sin(40 * xx + rng.uniform(0, 6)) * np.cos(30 * yy), 0)
        img += 0.01 * rng.standard_normal((size, size))
        out.append(np.clip(img, 0, None))
    x = torch.tensor(np.stack(out), dtype=torch.float32)[:, None]
    return x / x.amax(dim=(2, 3), keepdim=True)


def test_kspace_shapes_range_and_seeding():
    x = _heads()
    a = kspace_motion(x, 0.6, torch.Generator().manual_seed(1))
    b = kspace_motion(x, 0.6, torch.Generator().manual_seed(1))
    c = kspace_motion(x, 0.6, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.float32 and a.device == x.device
    assert a.min() >= 0 and a.max() <= 1 and not torch.isnan(a).any()
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("simulator", ["kspace", "torchio"])
def test_ssim_falls_with_severity(simulator):
    x = _heads(n=3)
    means = []
    for s in (0.0, 0.25, 0.5, 0.75, 1.0):
        if simulator == "kspace":
            y = kspace_motion(x, s, torch.Generator().manual_seed(0))
        else:
            rng = np.random.default_rng(0)
            y = torch.tensor(np.stack([torchio_motion(im[0].numpy(), s, rng) for im in x]))[:, None]
        means.append(ssim_label(x, y).mean().item())
    assert means[0] > 0.99
    assert all(later <= earlier + 0.02 for earlier, later in zip(means[:-1], means[1:], strict=True))
    assert means[-1] < 0.6


def _best_rigid_ssim(clean, moved):
    """Best SSIM of `moved` against small rotations and shifts of `clean`."""
    best = 0.0
    for deg in np.linspace(-10, 10, 9):
        for dy in range(-6, 7, 3):
            for dx in range(-6, 7, 3):
                t = torch.tensor(np.deg2rad(deg))
                theta = torch.tensor([[[torch.cos(t), -torch.sin(t), 2 * dx / clean.shape[-1]],
                                       [torch.sin(t), torch.cos(t), 2 * dy / clean.shape[-2]]]],
                                     dtype=torch.float32)
                grid = F.affine_grid(theta, list(clean.shape), align_corners=False)
                cand = F.grid_sample(clean, grid, align_corners=False)
                best = max(best, ssim_label(cand, moved).item())
    return best


@pytest.mark.parametrize("simulator", ["kspace", "torchio"])
def test_output_is_not_just_a_rigid_copy(simulator):
    clean = _heads(n=1, seed=3)
    if simulator == "kspace":
        moved = kspace_motion(clean, 0.7, torch.Generator().manual_seed(5))
    else:
        moved = torch.tensor(torchio_motion(clean[0, 0].numpy(), 0.7,
                                            np.random.default_rng(5)))[None, None]
    assert _best_rigid_ssim(clean, moved) < 0.9
    # ghosting: energy appears in the background outside the head
    background = clean[0, 0] < 0.05
    assert moved[0, 0][background].mean() > 3 * clean[0, 0][background].mean()
    # magnitude image: the background is dark, not grey
    assert moved[0, 0][background].median() < 0.2


def test_random_batch_mixes_simulators_and_spans_labels():
    x = _heads(n=16, size=96, seed=7)
    y = random_motion_batch(x, torch.Generator().manual_seed(0), p_torchio=0.5)
    labels = ssim_label(x, y)
    assert y.shape == x.shape and y.device == x.device
    assert labels.max() - labels.min() > 0.3
    zero = random_motion_batch(x[:2], torch.Generator().manual_seed(0), severity=0.0)
    assert torch.allclose(ssim_label(x[:2], zero), torch.ones(2), atol=1e-3)


def test_torchio_seeded_and_shapes():
    img = _heads(n=1, size=96, seed=2)[0, 0, :, :80].numpy()      # non-square slice
    a = torchio_motion(img, 0.5, np.random.default_rng(3))
    b = torchio_motion(img, 0.5, np.random.default_rng(3))
    c = torchio_motion(img, 0.5, np.random.default_rng(4))
    assert a.shape == img.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_kspace_non_square_and_centre_kept():
    """The k-space centre comes from the unmoved slice (DESIGN.md pitfall 3): even gross motion
    leaves the head where it was (centre of mass within 2 px), unlike a rigid shift."""
    x = _heads(n=4, size=96, seed=4)[..., :80]
    y = kspace_motion(x, torch.tensor([1.0, 1.0, 0.5, 0.0]), torch.Generator().manual_seed(3))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.allclose(y[3], x[3] / x[3].amax(), atol=1e-5)       # severity 0: unchanged
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(80.0), indexing="ij")

    def com(t):
        w = t[:, 0] / t[:, 0].sum(dim=(1, 2), keepdim=True)
        return torch.stack([(w * yy).sum(dim=(1, 2)), (w * xx).sum(dim=(1, 2))], dim=1)

    assert (com(y) - com(x)).abs().max() < 2.0


def test_random_batch_is_seeded():
    x = _heads(n=6, size=64, seed=9)
    a = random_motion_batch(x, torch.Generator().manual_seed(11), p_torchio=0.5)
    b = random_motion_batch(x, torch.Generator().manual_seed(11), p_torchio=0.5)
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        kspace_motion(x[:, 0], 0.5)
