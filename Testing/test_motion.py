"""Motion simulators: seeded, severity-monotone, real ghosting (not a rigid copy)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MotionSSIMLib.simulation import motion as M
from MotionSSIMLib.simulation import tio_motion as tio_module
from MotionSSIMLib.simulation.kspace_motion import kspace_motion
from MotionSSIMLib.simulation.motion import random_motion_batch
from MotionSSIMLib.simulation.ssim import ssim_label
from MotionSSIMLib.simulation.tio_motion import tio_motion, torchio_motion


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


@pytest.mark.parametrize("simulator", ["kspace", "tio", "torchio"])
def test_ssim_falls_with_severity(simulator):
    x = _heads(n=3)
    means = []
    for s in (0.0, 0.25, 0.5, 0.75, 1.0):
        if simulator == "kspace":
            y = kspace_motion(x, s, torch.Generator().manual_seed(0))
        elif simulator == "tio":
            y = tio_motion(x, s, torch.Generator().manual_seed(0))
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


@pytest.mark.parametrize("simulator", ["kspace", "tio", "torchio"])
def test_output_is_not_just_a_rigid_copy(simulator):
    clean = _heads(n=1, seed=3)
    if simulator == "kspace":
        moved = kspace_motion(clean, 0.7, torch.Generator().manual_seed(5))
    elif simulator == "tio":
        moved = tio_motion(clean, 0.7, torch.Generator().manual_seed(5))
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


# ---------------------------------------------------------------------------------------------
# The batched torch TorchIO simulator against TorchIO 1.2.1 itself
# ---------------------------------------------------------------------------------------------


def test_tio_resampling_matches_simpleitk():
    """Each moved copy equals what TorchIO's Motion makes with SimpleITK (its own
    get_rigid_transforms and resample_images): rotation sign, rotation about the first pixel
    (TorchIO 1.2.1 drops the centre it sets), translation direction, ITK's linear interpolation
    with edge clamping within half a pixel and the default value outside."""
    import SimpleITK as sitk
    import torchio as tio
    from torchio.data.io import nib_to_sitk

    img = _heads(n=1, size=96, seed=6)[0, 0, :, :88].contiguous()
    img[0, :] = 0.7  # a bright edge: the border rule of ITK's interpolator shows
    img[:, -1] = 0.4
    degrees = np.array([0.0, 7.5, -23.0, 90.0, 90.0, 0.0])
    trans = np.array([[0.0, 3.25], [-4.6, 0.0], [2.2, -7.9], [-30.0, 40.0], [0.0, 0.0],
                      [-0.3, 0.4]])
    rot3 = np.zeros((len(degrees), 3))
    rot3[:, 0] = degrees
    tr3 = np.zeros((len(degrees), 3))
    tr3[:, 1:] = trans
    motion = tio.Motion(degrees=rot3, translation=tr3, times=np.linspace(0.1, 0.9, 6),
                        image_interpolation="linear")
    sitk_img = nib_to_sitk(img[None, None].numpy(), np.eye(4), force_3d=True)
    transforms = motion.get_rigid_transforms(rot3, tr3, sitk_img)
    ref = np.stack([sitk.GetArrayFromImage(im).transpose()[0]
                    for im in motion.resample_images(sitk_img, transforms, "linear")[1:]])
    ours = tio_module._tio_resample(img.expand(len(degrees), -1, -1).contiguous(),
                                    torch.tensor(degrees, dtype=torch.float32),
                                    torch.tensor(trans, dtype=torch.float32)).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)
    # 90 degrees about the first pixel, not the centre: output (0, k) = input (k, 0), the rest
    # of the slice comes from outside the field (default value 0)
    np.testing.assert_allclose(ref[4][0, :88], img[:88, 0].numpy(), atol=1e-6)
    assert np.abs(ref[4][1:]).max() == 0
    assert np.abs(ref[1] - img.numpy()).max() > 0.3  # the poses do move the slice


@pytest.mark.parametrize("shape", [(128, 128), (96, 80), (81, 77)])
def test_tio_torch_matches_tio_motion(shape):
    """The batched torch simulator against ``tio.Motion`` on the same poses and times, through
    the adapter: agreement to float32 rounding (max abs difference below 1e-5, measured
    ~2.5e-6; mean below 5e-7, measured ~1.5e-7) after min-max to [0, 1]. Not bit-exact:
    grid_sample interpolates in float32 where SimpleITK computes the sampling points in
    float64, and the FFTs differ (TorchIO: 3D complex FFT; here: one rfft along the rows)."""
    h, w = shape
    x = _heads(n=6, size=max(h, w), seed=2)[..., :h, :w].contiguous()
    sev = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.05])
    p = tio_module.draw_tio_params(6, sev, (h, w), torch.Generator().manual_seed(3))
    p.transpose[:] = torch.tensor([False, True, False, True, False, True])  # both PE axes
    ours = tio_module.apply_tio_motion(x, p, backend="torch")
    ref = tio_module.apply_tio_motion(x, p, backend="torchio")
    diff = (ours - ref).abs()
    assert diff.max() < 1e-5 and diff.mean() < 5e-7, (diff.max(), diff.mean())
    assert int(p.n_poses[0]) >= 10  # severity 1: many poses, segments and a moved k-space
    assert ssim_label(x[:1], ref[:1]) < 0.8  # the reference is really corrupted


def test_tio_adapter_calls_torchio_1x():
    """The adapter around tio.Motion runs on the installed TorchIO (pinned 1.2.1; 2.0 changes
    Motion's arguments: the adapter then raises MotionBackendError, and this test fails)."""
    import torchio as tio

    assert tio.__version__.split(".")[0] == "1"
    img = _heads(n=1, size=64, seed=8)[0, 0].numpy()
    out = tio_module.tio_motion_call(img, np.array([10.0, -5.0]),
                                     np.array([[2.0, -3.0], [1.0, 4.0]]), np.array([0.3, 0.6]))
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.abs(out - img).max() > 0.05  # moved, not a copy
    # TorchIO keeps the real part: negative ringing is possible, the simulator takes abs()
    p = tio_module.TioMotionParams(severity=torch.ones(1), transpose=torch.zeros(1, dtype=torch.bool),
                                   n_poses=torch.tensor([2]), degrees=torch.tensor([[10.0, -5.0]]),
                                   translation=torch.tensor([[[2.0, -3.0], [1.0, 4.0]]]),
                                   times=torch.tensor([[0.3, 0.6]]))
    ours = tio_module.apply_tio_motion(torch.from_numpy(img)[None, None], p, backend="torch")
    from MotionSSIMLib.imaging.intensity import minmax
    np.testing.assert_allclose(ours[0, 0].numpy(), minmax(np.abs(out)), atol=1e-5)


def test_tio_centre_segment_is_unmoved():
    """The k-space segment holding the centre comes from the unmoved slice: a single pose
    moving at time 0.5 or later leaves the low frequencies (and the head's position) alone."""
    x = _heads(n=1, size=64, seed=1)
    p = tio_module.TioMotionParams(severity=torch.ones(1), transpose=torch.zeros(1, dtype=torch.bool),
                                   n_poses=torch.tensor([1]), degrees=torch.tensor([[0.0]]),
                                   translation=torch.tensor([[[0.0, 9.0]]]), times=torch.tensor([[0.7]]))
    y = tio_module.apply_tio_motion(x, p)
    k_x, k_y = torch.fft.fftshift(torch.fft.fft2(x[0, 0])), torch.fft.fftshift(torch.fft.fft2(y[0, 0]))
    # columns before floor(64 * 0.7) = 44 (the centre is column 32) are the unmoved spectrum
    # up to the normalisation, the ones after differ
    ratio = (k_y[:, 20:40].abs().sum() / k_x[:, 20:40].abs().sum()).item()
    assert ratio > 0.5
    assert not torch.allclose(y, x / x.amax(), atol=1e-3)


def test_motion_draw_then_apply_reproduces_and_describes():
    x = _heads(n=8, size=64, seed=10)
    y, params = random_motion_batch(x, torch.Generator().manual_seed(4), p_torchio=0.5,
                                    return_params=True)
    assert torch.equal(y, random_motion_batch(x, torch.Generator().manual_seed(4)))
    assert torch.equal(M.apply_motion(x, params), y)
    assert 0 < int(params.use_tio.sum()) < 8
    # the same draw for a seed; another seed draws otherwise
    again = M.draw_motion_params(8, (64, 64), torch.Generator().manual_seed(4))
    assert torch.equal(again.tio.degrees, params.tio.degrees)
    assert torch.equal(again.kspace.group_pose, params.kspace.group_pose)
    other = M.draw_motion_params(8, (64, 64), torch.Generator().manual_seed(5))
    assert not torch.equal(other.tio.times, params.tio.times)
    # replaying a subset gives those samples
    sub = torch.tensor([1, 6])
    torch.testing.assert_close(M.apply_motion(x[sub], params.select(sub)), y[sub],
                               atol=1e-5, rtol=0)
    for i in range(8):
        d = json.loads(json.dumps(params.describe(i)))
        assert d["simulator"] == ("torchio" if params.use_tio[i] else "kspace")
        assert d["severity"] == pytest.approx(float(params.severity[i]))
        n = int(params.tio.n_poses[i] if params.use_tio[i] else params.kspace.n_poses[i])
        assert len(d["poses_degrees"]) == n
        if d["simulator"] == "torchio":
            assert len(d["times"]) == n and d["times"] == sorted(d["times"])
    with pytest.raises(ValueError, match="tio_backend"):
        random_motion_batch(x, torch.Generator().manual_seed(4), tio_backend="sitk")
    with pytest.raises(ValueError, match="parameters for 8"):
        M.apply_motion(x[:3], params)


def test_random_batch_backends_agree():
    """tio_backend="torchio" (the real TorchIO, per slice) and the batched default draw the
    same parameters and give the same images to float32 rounding."""
    x = _heads(n=6, size=64, seed=12)
    a = random_motion_batch(x, torch.Generator().manual_seed(9), p_torchio=1.0)
    b = random_motion_batch(x, torch.Generator().manual_seed(9), p_torchio=1.0,
                            tio_backend="torchio")
    assert (a - b).abs().max() < 1e-5
    assert ssim_label(x, a).min() < 0.95


def _band_limited(n: int = 6, size: int = 128, lines: int = 32):
    """Head-like slices acquired with `lines` of `size` k-space lines on both axes (k-space
    zero-filled to `size`), the same slices at their native `lines` x `lines` matrix, and the
    resolution parameters."""
    from MotionSSIMLib.simulation import augment

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    imgs = []
    for _ in range(n):
        r = (yy / rng.uniform(0.3, 0.4)) ** 2 + (xx / rng.uniform(0.25, 0.35)) ** 2
        imgs.append(np.where(r < 1, 0.5 + 0.4 * np.sin(18 * xx + rng.uniform(0, 6))
                             * np.cos(15 * yy), 0))
    x = torch.tensor(np.stack(imgs), dtype=torch.float32)[:, None]
    res = augment.ResolutionParams(
        apply=torch.ones(n, dtype=torch.bool), matrix_h=torch.full((n,), float(lines)).double(),
        matrix_w=torch.full((n,), float(lines)).double(), kspace=torch.ones(n, dtype=torch.bool),
        window=torch.zeros(n).double())
    acquired = augment.apply_resolution(x, res)
    lo = (size - lines) // 2  # the acquired lines: all the signal the zero-filled slice holds
    k = torch.fft.fftshift(torch.fft.fft2(acquired), dim=(-2, -1))[..., lo:lo + lines,
                                                                   lo:lo + lines]
    native = torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1))).abs()
    return acquired, native, res


def _zero_fill(x: torch.Tensor, size: int) -> torch.Tensor:
    """A native slice reconstructed on a size x size grid (k-space zero-filled), as a scanner's
    interpolation does."""
    k = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    lo = (size - x.shape[-1]) // 2
    big = torch.zeros(x.shape[:-2] + (size, size), dtype=k.dtype)
    big[..., lo:lo + x.shape[-2], lo:lo + x.shape[-1]] = k
    return torch.fft.ifft2(torch.fft.ifftshift(big, dim=(-2, -1))).abs()


@pytest.mark.parametrize("p_torchio", [0.0, 1.0])
def test_motion_acts_on_the_acquired_lines_of_a_lower_matrix(p_torchio):
    """A slice acquired with 32 of 128 lines moves while those 32 are acquired. On the 128
    grid, motion over the acquired lines (MotionParams.acquired) reads as the same motion
    simulated at the native 32 x 32 matrix and zero-filled; over all 128 lines, as before model
    v3, it did not (most of the motion fell on the empty outer lines)."""
    x, native, res = _band_limited()
    band = res.band((128, 128))
    assert torch.allclose(band, torch.full((6, 2), 0.25))
    params = M.draw_motion_params(6, (128, 128), torch.Generator().manual_seed(1), p_torchio,
                                  severity=0.6)
    whole = M.apply_motion(x, params)
    assert torch.equal(whole, M.apply_motion(x, params.acquired(torch.ones(6, 2)))), \
        "band 1 is the whole grid, exactly as before"
    acquired = M.apply_motion(x, params.acquired(band))
    small = M.draw_motion_params(6, (32, 32), torch.Generator().manual_seed(1), p_torchio,
                                 severity=0.6)
    ref = float(ssim_label(_zero_fill(native, 128),
                           _zero_fill(M.apply_motion(native, small), 128)).mean())
    got = float(ssim_label(x, acquired).mean())
    old = float(ssim_label(x, whole).mean())
    assert abs(got - ref) < 0.04 and abs(got - ref) < abs(old - ref), (got, ref, old)
    assert params.acquired(band).describe(0)["acquired_band"] == pytest.approx(0.25)
    assert params.describe(0)["acquired_band"] == 1.0
