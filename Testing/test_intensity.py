"""Tests of MotionSSIMLib.imaging.intensity: min-max normalisation, the paper's contrast
augmentations (numpy/skimage reference and batched torch), the torch CLAHE against skimage,
seeding and the sampled parameter ranges."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import torch
from skimage import data, exposure
from skimage.exposure import _adapthist

from MotionSSIMLib.imaging import clahe
from MotionSSIMLib.imaging import intensity as I


def _smooth_blob(rng: np.random.Generator) -> np.ndarray:
    """Head-like smooth image with a brighter inclusion, a dark background and noise."""
    yy, xx = np.mgrid[:96, :128].astype(np.float64)
    head = np.exp(-(((yy - 48) / 38) ** 2 + ((xx - 64) / 52) ** 2) ** 3)
    inner = 0.6 * np.exp(-(((yy - 40) / 9) ** 2 + ((xx - 80) / 14) ** 2))
    ring = 0.3 * np.exp(-((np.hypot((yy - 48) / 38, (xx - 64) / 52) - 0.8) / 0.06) ** 2)
    img = head * (0.5 + 0.2 * np.sin(xx / 7) * np.cos(yy / 9)) + inner + ring
    return np.clip(img + 0.02 * rng.standard_normal(img.shape), 0, None)


def _mni_slice() -> np.ndarray | None:
    """An axial slice of the MNI152 T1 template that ships in the nilearn wheel (real MR)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / (
        "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    if not path.exists():
        return None
    import nibabel as nib

    vol = np.asarray(nib.load(str(path)).dataobj[:, :, 95], dtype=np.float64)
    return vol[::2, ::2]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Real-looking 2D test images, each min-max normalised, as float32."""
    rng = np.random.default_rng(3)
    phantom = data.shepp_logan_phantom()[::4, ::4]  # 100 x 100, no download needed
    phantom = phantom + 0.01 * rng.standard_normal(phantom.shape)
    out = [phantom, _smooth_blob(rng)]
    mni = _mni_slice()
    if mni is not None:
        out.append(mni)
    return [I.minmax(np.clip(a, 0, None).astype(np.float32)) for a in out]


def _batch(img: np.ndarray, n: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).float().expand(n, 1, *img.shape).clone()


# ---------------------------------------------------------------------------- minmax


def test_minmax_numpy_and_torch_per_slice():
    rng = np.random.default_rng(0)
    a = rng.normal(5, 3, size=(3, 2, 7, 9)).astype(np.float32)
    a[1, 0] = 4.25  # a constant slice
    out = I.minmax(a)
    assert out.dtype == np.float32 and out.shape == a.shape
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[1, 0], 0)
    others = np.delete(out.reshape(6, 7, 9), 2, axis=0)
    np.testing.assert_allclose(others.min(axis=(1, 2)), 0)
    np.testing.assert_allclose(others.max(axis=(1, 2)), 1)
    # the same in torch, and per-slice (not global): slice (0, 1) spans [0, 1] on its own
    t = I.minmax(torch.from_numpy(a))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), out, atol=1e-6)
    # integer input becomes float
    ints = np.arange(12).reshape(3, 4)
    np.testing.assert_allclose(I.minmax(ints), ints / 11)
    assert I.minmax(torch.arange(12).reshape(3, 4)).dtype == torch.float32
    with pytest.raises(ValueError):
        I.minmax(np.arange(5.0))


# ---------------------------------------------------------------------------- pointwise ops


@pytest.mark.parametrize(
    "name, params",
    [
        ("gamma", {"gamma": 0.75}),
        ("gamma", {"gamma": 1.2345}),
        ("gamma", {"gamma": 1.75}),
        ("sigmoid", {"cutoff": 0.01, "gain": 1}),
        ("sigmoid", {"cutoff": 0.4, "gain": 2}),
        ("sigmoid", {"cutoff": 0.75, "gain": 3}),
        ("log", {"gain": -0.5}),
        ("log", {"gain": 0.013}),
        ("log", {"gain": 0.5}),
        ("none", {}),
    ],
)
def test_pointwise_torch_equals_skimage(images, name, params):
    key = {"gamma": "gamma", "sigmoid": "cutoff", "log": "log_gain"}
    for img in images:
        batch = _batch(img, 1)
        tparams = {
            "gamma": torch.tensor([params.get("gamma", 1.0)], dtype=torch.float64),
            "cutoff": torch.tensor([params.get("cutoff", 0.5)], dtype=torch.float64),
            "sigmoid_gain": torch.tensor([params.get("gain", 1)]),
            "log_gain": torch.tensor([params.get("gain", 0.1)], dtype=torch.float64),
            "kernel_size": torch.tensor([25]),
        }
        assert name == "none" or key[name] in tparams
        got = I.apply_contrast_batch(batch, [name], tparams)[0, 0].numpy()
        ref = I.apply_contrast(img, name, params)
        assert ref.min() == 0 and ref.max() == 1
        np.testing.assert_allclose(got, ref, atol=1e-5)
    # the reference really is skimage's function (not our own formula), e.g. log is log2-based
    x = images[0].astype(np.float64)
    np.testing.assert_allclose(
        I.apply_contrast(x, "log", {"gain": 0.3}), I.minmax(exposure.adjust_log(x, 0.3)), atol=1e-12
    )


def test_augmentations_change_the_image(images):
    img = images[-1]
    for name, params in [
        ("gamma", {"gamma": 1.6}),
        ("clahe", {"kernel_size": 30}),
        ("sigmoid", {"cutoff": 0.2, "gain": 3}),
        ("log", {"gain": 0.4}),
    ]:
        out = I.apply_contrast(img, name, params)
        assert np.abs(out - img).mean() > 0.01, name
    np.testing.assert_allclose(I.apply_contrast(img, "none", {}), img, atol=1e-6)


# ---------------------------------------------------------------------------- CLAHE


def test_clahe_batch_matches_skimage(images):
    """Mixed kernel sizes in one batch (grouping), including a kernel larger than the image."""
    kernels = [25, 37, 64, 99]
    for img in images:
        batch = _batch(img, len(kernels))
        params = {"kernel_size": torch.tensor(kernels)}
        got = I.apply_contrast_batch(batch, ["clahe"] * len(kernels), params)[:, 0].numpy()
        for k, g in zip(kernels, got, strict=True):
            ref = exposure.equalize_adapthist(
                img.astype(np.float64), kernel_size=k, clip_limit=0.01, nbins=512
            )
            ref = I.minmax(ref)
            diff = np.abs(g - ref)
            corr = np.corrcoef(g.ravel(), ref.ravel())[0, 1]
            assert diff.mean() < 0.02 and corr > 0.99, (img.shape, k)
            # in fact it is the same algorithm: equal up to float rounding
            assert diff.max() < 1e-3, (img.shape, k, diff.max())
            assert (diff > 1e-4).mean() < 1e-3


def test_clahe_small_and_odd_shapes():
    rng = np.random.default_rng(7)
    for shape, k in [((20, 33), 99), ((57, 41), 25), ((1, 40), 25), ((64, 64), 64)]:
        img = I.minmax(rng.random(shape) ** 2)
        got = I.minmax(I.clahe_batch(torch.from_numpy(img)[None], [k]))[0].double().numpy()
        ref = I.minmax(exposure.equalize_adapthist(img, kernel_size=k, clip_limit=0.01, nbins=512))
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_clip_histograms_equals_skimage():
    """The vectorised clipping/redistribution equals skimage's sequential clip_histogram, also
    for histograms with much or little excess (the one-count-at-a-time redistribution)."""
    rng = np.random.default_rng(11)
    nbins = 512
    hists, clims = [], []
    for n_pix, clim in [(625, 6), (2500, 25), (9801, 98), (625, 1), (3000, 40)]:
        for kind in range(6):
            if kind == 0:  # a flat background tile: everything in one bin
                h = np.bincount(np.zeros(n_pix, int), minlength=nbins)
            elif kind == 1:
                h = np.bincount(rng.integers(0, nbins, n_pix), minlength=nbins)
            elif kind == 2:
                h = np.bincount(rng.integers(0, 20, n_pix), minlength=nbins)
            else:
                h = np.bincount(
                    np.clip(rng.normal(rng.uniform(50, 450), 5 * kind, n_pix), 0, nbins - 1).astype(int),
                    minlength=nbins,
                )
            hists.append(h)
            clims.append(clim)
    # adversarial ones: most bins already at the limit, so skimage's loop needs many indices and
    # several passes before the excess is gone (real CLAHE tiles rarely get there)
    for _ in range(60):
        clim = int(rng.integers(2, 60))
        h = rng.integers(0, clim, nbins)
        h[rng.random(nbins) < rng.uniform(0.3, 0.999)] = clim
        h[rng.integers(0, nbins, rng.integers(1, 4))] += rng.integers(0, 5 * nbins)
        hists.append(h)
        clims.append(clim)
    want = np.stack([_adapthist.clip_histogram(h.copy(), c) for h, c in zip(hists, clims, strict=True)])
    got = clahe.clip_histograms(torch.from_numpy(np.stack(hists)), torch.tensor(clims))
    np.testing.assert_array_equal(got.numpy(), want)


# ---------------------------------------------------------------------------- random batch


def test_output_range_and_no_nan_for_constant_and_random_inputs():
    g = torch.Generator().manual_seed(5)
    const = torch.stack([torch.zeros(1, 48, 40), torch.full((1, 48, 40), 0.5), torch.ones(1, 48, 40)])
    rand = torch.rand(3, 1, 48, 40, generator=g)
    x = torch.cat([const, rand])
    for name in I.CONTRASTS:
        out = I.random_contrast_batch(x, g, names=[name] * len(x))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all(), name
        assert out.min() >= 0 and out.max() <= 1, name
        assert (out[:3] == 0).all(), name  # constant slices -> zeros
        np.testing.assert_allclose(out[3:].amin(dim=(1, 2, 3)), 0, atol=1e-6)
        np.testing.assert_allclose(out[3:].amax(dim=(1, 2, 3)), 1, atol=1e-6)
    # numpy reference too
    rng = np.random.default_rng(0)
    for _ in range(15):
        out = I.random_contrast(np.full((30, 30), 7.0), rng)
        assert np.isfinite(out).all() and (out == 0).all()
        out = I.random_contrast(rng.random((30, 30)) * 100, rng)
        assert np.isfinite(out).all() and out.min() == 0 and out.max() == 1


def test_random_batch_agrees_with_reference_per_sample(images):
    """Each sample of a random batch equals the skimage reference with the same draw."""
    img = images[-1]
    n = 20
    seed = 1234
    names, params = I.sample_contrast_batch(n, torch.Generator().manual_seed(seed))
    assert len(set(names)) >= 4
    out = I.random_contrast_batch(_batch(img, n), torch.Generator().manual_seed(seed))
    for i in range(n):
        ref = I.apply_contrast(img, names[i], I.sample_params(names, params, i))
        np.testing.assert_allclose(out[i, 0].numpy(), ref, atol=1e-4, err_msg=names[i])


def test_seeding_is_reproducible(images):
    x = _batch(images[0], 12)
    a = I.random_contrast_batch(x, torch.Generator().manual_seed(42))
    b = I.random_contrast_batch(x, torch.Generator().manual_seed(42))
    c = I.random_contrast_batch(x, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # within a batch the samples differ (each has its own draw)
    assert len({round(float(v), 6) for v in a.mean(dim=(1, 2, 3))}) > 3
    # the input tensor is not modified in place
    assert torch.equal(x, _batch(images[0], 12))
    # numpy reference
    r1 = [I.random_contrast(images[0], np.random.default_rng(9)) for _ in range(2)]
    np.testing.assert_array_equal(r1[0], r1[1])
    assert I.sample_contrast(np.random.default_rng(9)) == I.sample_contrast(np.random.default_rng(9))


def test_sampled_ranges_and_uniform_choice():
    n = 20000
    names, p = I.sample_contrast_batch(n, torch.Generator().manual_seed(0))
    assert 0.75 <= p["gamma"].min() and p["gamma"].max() < 1.75
    assert p["gamma"].max() - p["gamma"].min() > 0.99
    ks = p["kernel_size"]
    assert ks.min() == 25 and ks.max() == 99  # [25, 100) like numpy randint in the paper
    assert len(torch.unique(ks)) == 75
    assert 0.01 <= p["cutoff"].min() and p["cutoff"].max() < 0.75
    assert set(p["sigmoid_gain"].tolist()) == {1, 2, 3}
    assert -0.5 <= p["log_gain"].min() and p["log_gain"].max() < 0.5
    assert p["log_gain"].min() < -0.49 and p["log_gain"].max() > 0.49
    counts = np.array([names.count(c) for c in I.CONTRASTS])
    expected = n / len(I.CONTRASTS)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 25, counts  # 4 dof: p < 1e-4 under uniformity

    rng = np.random.default_rng(1)
    draws = [I.sample_contrast(rng) for _ in range(4000)]
    by = {c: [d for name, d in draws if name == c] for c in I.CONTRASTS}
    assert all(abs(len(v) - 800) < 150 for v in by.values()), {c: len(v) for c, v in by.items()}
    g = [d["gamma"] for d in by["gamma"]]
    assert 0.75 <= min(g) and max(g) < 1.75
    k = [d["kernel_size"] for d in by["clahe"]]
    assert 25 <= min(k) and max(k) <= 99
    assert all(d["clip_limit"] == 0.01 and d["nbins"] == 512 for d in by["clahe"])
    assert {d["gain"] for d in by["sigmoid"]} == {1, 2, 3}
    c = [d["cutoff"] for d in by["sigmoid"]]
    assert 0.01 <= min(c) and max(c) < 0.75
    lg = [d["gain"] for d in by["log"]]
    assert -0.5 <= min(lg) < 0 < max(lg) < 0.5
    assert by["none"] == [{}] * len(by["none"])


def test_shapes_names_and_errors(images):
    x3 = _batch(images[0], 5)[:, 0]
    out = I.random_contrast_batch(x3, torch.Generator().manual_seed(0), names=["none"] * 5)
    assert out.shape == x3.shape
    np.testing.assert_allclose(out.numpy(), x3.numpy(), atol=1e-6)  # none == min-max only
    # names fix the choice; the parameters (and so the result) follow the same seed
    names = ["clahe", "gamma", "log", "sigmoid", "none"]
    a = I.random_contrast_batch(x3[:, None], torch.Generator().manual_seed(1), names=names)
    b = I.random_contrast_batch(x3[:, None], torch.Generator().manual_seed(1), names=names)
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        I.random_contrast_batch(x3[:, None], names=["gamma"] * 4)
    with pytest.raises(ValueError):
        I.random_contrast_batch(x3[:, None], names=["gamma"] * 4 + ["blur"])
    with pytest.raises(ValueError):
        I.random_contrast_batch(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError):
        I.apply_contrast(images[0], "blur", {})
    empty = I.random_contrast_batch(torch.zeros(0, 1, 16, 16), torch.Generator().manual_seed(0))
    assert empty.shape == (0, 1, 16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_images_with_cpu_generator_match_cpu(images):
    x = _batch(images[-1], 16)
    cpu = I.random_contrast_batch(x, torch.Generator().manual_seed(3))
    gpu = I.random_contrast_batch(x.cuda(), torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-4)
