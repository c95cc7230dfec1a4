"""Slice-level noise and resolution augmentations (MotionSSIMLib.simulation.augment)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from MotionSSIMLib.simulation import augment, kspace_motion, ssim


def _phantom(b: int = 4, size: int = 128) -> torch.Tensor:
    """(b, 1, size, size) heads: an ellipse of 0.8 with a brighter inner disc, zero outside."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    img = torch.zeros(size, size)
    img[(xx / 0.7) ** 2 + (yy / 0.8) ** 2 <= 1] = 0.6
    img[xx**2 + yy**2 <= 0.2**2] = 1.0
    return img.expand(b, 1, size, size).clone()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_params_deterministic_and_distribution():
    a = augment.draw_noise_params(4000, _gen(3))
    b = augment.draw_noise_params(4000, _gen(3))
    c = augment.draw_noise_params(4000, _gen(4))
    torch.testing.assert_close(a.snr, b.snr)
    assert torch.equal(a.seed, b.seed) and not torch.equal(a.seed, c.seed)
    none = torch.isinf(a.snr)
    assert abs(none.float().mean().item() - augment.NOISE_P_NONE) < 0.03
    finite = a.snr[~none]
    lo, hi = augment.NOISE_SNR_RANGE
    assert finite.min() >= lo and finite.max() <= hi
    assert finite.min() < lo * 1.1 and finite.max() > hi * 0.9
    # Log-uniform: the median sits at the geometric mean of the range.
    assert abs(math.log(finite.median().item()) - 0.5 * math.log(lo * hi)) < 0.15
    with pytest.raises(ValueError, match="snr_range"):
        augment.draw_noise_params(2, _gen(0), snr_range=(0.0, 10.0))


def test_apply_noise_deterministic_and_same_field_for_both_images():
    x = _phantom()
    y = torch.flip(x, dims=[-1]) * 0.9
    c1, y1, p1 = augment.noise_pair(x, y, _gen(5), p_none=0.0)
    c2, y2, p2 = augment.noise_pair(x, y, _gen(5), p_none=0.0)
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    c3, _, _ = augment.noise_pair(x, y, _gen(6), p_none=0.0)
    assert not torch.equal(c1, c3)
    # apply_noise with the returned params repeats the pair exactly (the same field and sigma).
    torch.testing.assert_close(augment.apply_noise(y, p1), y1, rtol=0, atol=0)
    # In the background of both images (zero in x and y) the noise is identical.
    bg = (x == 0) & (y == 0)
    raw_c = augment.apply_noise(x, p1, normalise=False)
    raw_y = augment.apply_noise(y, p1, normalise=False)
    torch.testing.assert_close(raw_c[bg], raw_y[bg], rtol=0, atol=0)
    assert c1.min() >= 0 and c1.max() <= 1 and y1.shape == y.shape


@pytest.mark.parametrize("snr", [3.0, 10.0, 40.0, 120.0])
def test_measured_snr_matches_drawn(snr):
    x = _phantom(b=2, size=256)
    params = augment.NoiseParams(snr=torch.full((2,), snr, dtype=torch.float64), seed=11)
    out = augment.apply_noise(x, params, normalise=False)
    level = augment.tissue_level(x)
    # Background (signal 0) is Rayleigh: mean = sigma * sqrt(pi / 2).
    bg = x == 0
    sigma_bg = out[bg].mean().item() / math.sqrt(math.pi / 2)
    measured = level[0].item() / sigma_bg
    assert abs(measured / snr - 1) < 0.05, (snr, measured)
    # In bright flat tissue, at high SNR, the magnitude noise is ~Gaussian with sd sigma.
    if snr >= 40:
        inner = x == 1.0
        sd = (out[inner] - 1.0).std().item()
        assert abs(level[0].item() / sd / snr - 1) < 0.08


def test_no_motion_label_stays_one_after_noise_and_motion_lowers_it():
    x = _phantom(b=6)
    c, y, params = augment.noise_pair(x, x.clone(), _gen(2), p_none=0.0, snr_range=(3.0, 5.0))
    assert torch.all(params.snr <= 5.0)
    torch.testing.assert_close(ssim.ssim_label(c, y), torch.ones(6), rtol=0, atol=1e-6)
    # Noise was really added: the noisy clean slice is far from the original.
    assert ssim.ssim_label(x, c).max() < 0.9
    # With motion, noise is still shared: the label stays below 1 and is finite.
    moved = kspace_motion.kspace_motion(x, torch.full((6,), 0.8), _gen(9))
    c2, y2, _ = augment.noise_pair(x, moved, _gen(2), p_none=0.0)
    lab = ssim.ssim_label(c2, y2)
    assert torch.isfinite(lab).all() and lab.max() < 0.999


def test_no_noise_share_passes_through():
    x = _phantom(b=3)
    c, y, params = augment.noise_pair(x, x, _gen(0), p_none=1.0)
    assert torch.isinf(params.snr).all()
    torch.testing.assert_close(c, x)
    torch.testing.assert_close(y, x)


def test_noise_shape_errors():
    x = _phantom(b=2)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        augment.noise_pair(x[:, 0], x[:, 0], _gen(0))
    with pytest.raises(ValueError, match="shapes differ"):
        augment.noise_pair(x, x[:1], _gen(0))
    p = augment.draw_noise_params(3, _gen(0))
    with pytest.raises(ValueError, match="3 samples"):
        augment.apply_noise(x, p)


def test_array_noise_is_drawn_only_when_asked_and_keeps_the_stream():
    plain = augment.draw_noise_params(4000, _gen(3))
    arrayed = augment.draw_noise_params(4000, _gen(3), p_array=0.5)
    assert plain.coils is None and plain.band is None and not plain.arrayed.any()
    # the draws before it are the same: a run without array noise keeps its old stream
    torch.testing.assert_close(plain.snr, arrayed.snr)
    assert torch.equal(plain.seed, arrayed.seed)
    noisy = torch.isfinite(arrayed.snr)
    assert not arrayed.arrayed[~noisy].any()  # no noise, no channels
    share = arrayed.arrayed[noisy].float().mean().item()
    assert abs(share - 0.5) < 0.03, share
    counts = set(arrayed.coils[arrayed.arrayed].tolist())
    assert counts == set(augment.NOISE_COILS)
    assert set(arrayed.coils[~arrayed.arrayed].tolist()) == {1}
    band = augment.draw_noise_params(4000, _gen(3), p_band=0.25)
    assert band.coils is None and not band.band[~noisy].any()
    assert abs(band.band[noisy].float().mean().item() - 0.25) < 0.03
    for bad in (dict(p_array=1.5), dict(p_band=-0.1), dict(p_array=0.5, coils=(0, 4))):
        with pytest.raises(ValueError, match="draw_noise_params"):
            augment.draw_noise_params(4, _gen(0), **bad)


def test_chi_square_cube_has_the_right_mean_and_variance():
    z = torch.randn((1, 1, 400, 400), generator=_gen(1))
    for dof in (2.0, 6.0, 14.0, 62.0):
        chi = augment._chi_square(torch.full((1, 1, 1, 1), dof), z)
        assert chi.min() >= 0
        assert abs(chi.mean().item() / dof - 1) < 0.02, dof
        assert abs(chi.var().item() / (2 * dof) - 1) < 0.08, dof
    assert torch.all(augment._chi_square(torch.zeros((1, 1, 1, 1)), z) == 0)


@pytest.mark.parametrize("coils", [2, 8, 32])
def test_array_noise_floor_is_non_central_chi_at_the_rician_height(coils):
    """In air the root sum of squares of L channels is chi with 2L degrees of freedom: mean
    sigma sqrt(2) G(L + 1/2) / G(L); per channel sigma = tissue / (SNR sqrt(L)), so the floor
    is about as high as Rician noise's at the same SNR but smoother."""
    x = _phantom(b=2, size=256)
    snr = 5.0
    params = augment.NoiseParams(snr=torch.full((2,), snr, dtype=torch.float64),
                                 seed=torch.tensor([4, 5]), coils=torch.full((2,), coils))
    out = augment.apply_noise(x, params, normalise=False)
    sigma = augment.tissue_level(x)[0].item() / (snr * math.sqrt(coils))
    expected = sigma * math.sqrt(2) * math.exp(math.lgamma(coils + 0.5) - math.lgamma(coils))
    bg = out[x == 0]
    assert abs(bg.mean().item() / expected - 1) < 0.03, (bg.mean().item(), expected)
    rician = augment.apply_noise(x, dataclasses.replace(params, coils=None), normalise=False)
    rician_bg = rician[x == 0]
    assert 0.95 < bg.mean().item() / rician_bg.mean().item() < 1.2
    cv, rician_cv = (bg.std() / bg.mean()).item(), (rician_bg.std() / rician_bg.mean()).item()
    assert cv < rician_cv * 0.8, (cv, rician_cv)
    # one channel is Rician noise, bit for bit
    single = dataclasses.replace(params, coils=torch.ones(2, dtype=torch.int64))
    assert torch.equal(augment.apply_noise(x, single, normalise=False), rician)


def test_band_limited_noise_has_the_acquired_grain_and_unit_variance():
    b, size = 5, 128
    params = augment.NoiseParams(snr=torch.full((b,), 5.0, dtype=torch.float64),
                                 seed=torch.arange(b), coils=torch.tensor([1, 8, 1, 1, 8]),
                                 band=torch.tensor([True, True, True, False, True]))
    res = augment.ResolutionParams(
        apply=torch.tensor([True, True, True, True, False]),
        matrix_h=torch.tensor([48.0, 48.0, 48.0, 48.0, 128.0], dtype=torch.float64),
        matrix_w=torch.tensor([64.0, 64.0, 48.0, 48.0, 128.0], dtype=torch.float64),
        kspace=torch.tensor([True, True, False, True, True]),
        window=torch.zeros(b, dtype=torch.float64))
    field = augment.noise_field(params, (size, size))
    assert field.shape == (b, 3, size, size)
    out = augment.band_limit_field(field, params, res)
    # not band-limited (no band, or acquired at the full matrix): unchanged
    assert torch.equal(out[3], field[3]) and torch.equal(out[4], field[4])

    def neighbour_corr(a):
        return ((a[:, 1:] * a[:, :-1]).mean() / a.var()).item()

    for i in (0, 1, 2):
        for k in range(2 if i != 1 else 3):
            assert abs(out[i, k].std().item() - 1) < 1e-3
            assert neighbour_corr(out[i, k]) > 0.5, (i, k)
        assert abs(neighbour_corr(field[i, 0])) < 0.05
    # a sharp k-space window keeps nothing outside the acquired band
    spec = torch.fft.fftshift(torch.fft.fft2(torch.complex(out[0, 0], out[0, 1]))).abs()
    c = size // 2
    inside = spec[c - 25:c + 26, c - 33:c + 34].pow(2).sum()  # 48 x 64 kept
    assert spec.pow(2).sum() / inside < 1.0001
    assert augment.band_limit_field(field, dataclasses.replace(params, band=None), res) is field


def test_band_limited_noise_reads_coarser_in_the_pipeline():
    """The noise stage of a sample acquired at a lower matrix takes its grain when asked:
    its background (label and motion unchanged) is smoother than the slice grid's noise."""
    from MotionSSIMLib.simulation import pipeline

    x = _phantom(b=8, size=128)
    params = pipeline.draw_corruption(8, (128, 128), _gen(7), contrast=False, p_clean=1.0,
                                      band_noise=1.0)
    params.resolution = dataclasses.replace(
        params.resolution, apply=torch.ones(8, dtype=torch.bool),
        matrix_h=torch.full((8,), 40.0, dtype=torch.float64),
        matrix_w=torch.full((8,), 40.0, dtype=torch.float64))
    params.noise = dataclasses.replace(params.noise, snr=torch.full((8,), 5.0,
                                                                    dtype=torch.float64))
    fine_params = dataclasses.replace(params, noise=dataclasses.replace(params.noise, band=None))
    coarse, labels = pipeline.apply_corruption(x, params)
    fine, fine_labels = pipeline.apply_corruption(x, fine_params)
    torch.testing.assert_close(labels, fine_labels)
    assert params.describe(0)["noise_acquired_grain"] is True

    def roughness(img):  # mean squared neighbour difference over the variance
        d = img[..., 1:] - img[..., :-1]
        return (d.pow(2).mean() / img.var()).item()

    # the phantom is flat: neighbour differences are the noise's
    assert roughness(coarse) < 0.7 * roughness(fine), (roughness(coarse), roughness(fine))


def test_resolution_params_span_and_determinism():
    a = augment.draw_resolution_params(3000, _gen(1), size=256)
    b = augment.draw_resolution_params(3000, _gen(1), size=256)
    torch.testing.assert_close(a.matrix_h, b.matrix_h)
    assert torch.equal(a.apply, b.apply) and torch.equal(a.kspace, b.kspace)
    m = torch.cat([a.matrix_h, a.matrix_w])
    assert m.max() <= 256 and m.min() >= 0.6 * augment.RES_MIN_MATRIX - 1e-9
    readout = torch.maximum(a.matrix_h, a.matrix_w)
    assert readout.min() < 70 and readout.max() > 240
    assert 0.45 < a.apply.float().mean() < 0.55
    assert (a.window == 0).float().mean() > 0.4 and a.window.max() <= 0.5


def test_kspace_zero_fill_rings_and_blurs():
    x = _phantom(b=1, size=128)
    sharp = augment.ResolutionParams(
        apply=torch.tensor([True]), matrix_h=torch.tensor([48.0], dtype=torch.float64),
        matrix_w=torch.tensor([48.0], dtype=torch.float64), kspace=torch.tensor([True]),
        window=torch.zeros(1, dtype=torch.float64))
    out = augment.apply_resolution(x, sharp)
    row = out[0, 0, 64].double()
    ref = x[0, 0, 64].double()
    # Gibbs: inside the ellipse (0.6 plateau), next to its edge, the profile overshoots and
    # then dips below the plateau, i.e. it oscillates, which a smooth blur never does.
    plateau = row[40:50].mean() / 1.0
    scale = row.max()  # inner disc (1.0) after min-max
    near_edge = row[18:32] / scale
    assert (near_edge.max() - 0.6) > 0.03, near_edge
    # The same matrix with interpolation (area + bilinear) blurs the edges without ringing.
    smooth = augment.apply_resolution(x, augment.ResolutionParams(
        apply=sharp.apply, matrix_h=sharp.matrix_h, matrix_w=sharp.matrix_w,
        kspace=torch.tensor([False]), window=sharp.window))
    srow = smooth[0, 0, 64].double()
    assert (srow[18:32] / srow.max()).max() - 0.6 < 0.01
    # Both lose resolution: the edge is no longer a one-pixel step.
    assert float((ref[1:] - ref[:-1]).abs().max()) > 0.5
    assert float((row[1:] - row[:-1]).abs().max()) < 0.5
    assert float((srow[1:] - srow[:-1]).abs().max()) < 0.5
    assert plateau > 0


def test_kspace_window_reduces_ringing_and_identity_when_full():
    x = _phantom(b=2, size=128)
    params = augment.ResolutionParams(
        apply=torch.tensor([True, True]),
        matrix_h=torch.tensor([48.0, 48.0], dtype=torch.float64),
        matrix_w=torch.tensor([48.0, 48.0], dtype=torch.float64),
        kspace=torch.tensor([True, True]), window=torch.tensor([0.0, 0.5], dtype=torch.float64))
    out = augment.apply_resolution(x, params)
    over = [(out[i, 0, 64, 18:32] / out[i, 0, 64].max()).max().item() - 0.6 for i in range(2)]
    assert over[1] < over[0]
    # A full matrix with no window reproduces the input; unapplied samples are untouched.
    full = augment.ResolutionParams(
        apply=torch.tensor([True, False]),
        matrix_h=torch.tensor([128.0, 64.0], dtype=torch.float64),
        matrix_w=torch.tensor([128.0, 64.0], dtype=torch.float64),
        kspace=torch.tensor([True, True]), window=torch.zeros(2, dtype=torch.float64))
    same = augment.apply_resolution(x, full)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


def test_random_resolution_deterministic_range():
    x = _phantom(b=16, size=96)
    a, pa = augment.random_resolution(x, _gen(8))
    b, _ = augment.random_resolution(x, _gen(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    changed = pa.apply
    assert changed.any() and (~changed).any()
    assert torch.equal(a[~changed], x[~changed])
    assert not torch.allclose(a[changed], x[changed])
    assert torch.all(torch.maximum(pa.matrix_h, pa.matrix_w) <= 96)
    np.testing.assert_array_less(0, a[changed].flatten(1).std(1).numpy())


# ----------------------------------------------------------------------------- storage
def test_storage_params_span_and_determinism():
    a = augment.draw_storage_params(4000, _gen(5), 256, p_apply=0.5)
    b = augment.draw_storage_params(4000, _gen(5), 256, p_apply=0.5)
    assert torch.equal(a.apply, b.apply) and torch.equal(a.factor, b.factor)
    assert 0.45 < a.apply.double().mean() < 0.55
    matrices = a.factor * 256
    low = augment.STORE_MIN_MATRIX
    assert matrices.min() >= low - 1e-6 and matrices.max() <= 256 + 1e-6
    assert matrices.min() < low * 1.05  # the whole span is drawn
    # log-uniform: half of the matrices below the geometric mean of the bounds
    assert 0.45 < (matrices < (low * 256) ** 0.5).double().mean() < 0.55
    with pytest.raises(ValueError, match="min_matrix"):
        augment.draw_storage_params(4, _gen(0), 256, min_matrix=300)
    sel = a.select(torch.tensor([3, 1]))
    assert torch.equal(sel.factor, a.factor[[3, 1]])


def test_apply_storage_blurs_applied_slices_only_and_keeps_range():
    x = _phantom(3)
    params = augment.StorageParams(apply=torch.tensor([True, False, True]),
                                   factor=torch.tensor([0.25, 0.25, 1.0], dtype=torch.float64))
    out = augment.apply_storage(x, params)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[1], x[1]) and torch.equal(out[2], x[2])  # not applied / full matrix
    edge = (out[0] - x[0]).abs()
    assert edge.max() > 0.1 and edge.mean() < 0.05  # the edges blur, the flat inside stays
    with pytest.raises(ValueError, match="parameters for 3"):
        augment.apply_storage(_phantom(2), params)


def test_storage_stage_in_the_pipeline():
    """storage=0 draws nothing more (the streams of runs before it stay the same); with
    storage the input is stored, the label stays the acquired pair's."""
    from MotionSSIMLib.simulation import pipeline

    x = _phantom(8, 96)
    old = pipeline.corrupt_batch(x, _gen(2), return_params=True)
    same = pipeline.corrupt_batch(x, _gen(2), storage=0.0, return_params=True)
    assert torch.equal(old[0], same[0]) and torch.equal(old[1], same[1])
    assert old[2].storage is None
    images, labels, params = pipeline.corrupt_batch(x, _gen(2), storage=1.0, p_clean=0.5,
                                                    return_params=True)
    assert params.storage.apply.all()
    clean = params.motion.severity == 0
    assert clean.any() and torch.allclose(labels[clean], torch.ones(int(clean.sum())), atol=1e-4)
    # the same draws replayed without the stage: the label is the same, the input is not
    replay = dataclasses.replace(params, storage=None)
    acquired, unstored = pipeline.apply_corruption(x, replay)
    assert torch.equal(labels, unstored)
    assert all(not torch.allclose(images[i], acquired[i], atol=1e-3)
               for i in range(len(x)) if params.storage.factor[i] < 0.9)
    assert "stored_share" in params.describe(0)
