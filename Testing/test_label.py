"""The model v3 label means the same at every matrix (issue "Model v3", point 1).

One slice and one motion, the pair stored at several matrices (resampled to 64-512 px across
the head, or zero-padded into a larger matrix): `ssim.slice_label` gives the same label within
0.03 (0.06 at 64 px, where the stored copy has lost the detail the comparison would use). Up to
model v2 a window smaller than the model input was zero-padded and the padding counted as
agreement: the same pair read 0.99 at 64 px and 0.86 at 256 px (shown below, so this file
fails on the old contract). On 1 mm slices with 200 px and more across the head the label is
the old one (the thresholds keep the paper's meaning).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MotionSSIMLib import geometry, motion, ssim

MNI = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MATRICES = (64, 96, 128, 180, 256, 512)  # pixels across the head
TOLERANCE = 0.03
TOLERANCE_LOW = 0.06  # 64 and 96 px: the stored copy has lost detail the label compares


@pytest.fixture(scope="module")
def mni_slices() -> np.ndarray:
    """Three axial slices of the MNI152 T1 template (real MR, 1 mm), display orientation."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        pytest.skip("nilearn (MNI152 template) not installed")
    vol = np.asarray(nib.load(str(Path(spec.origin).parents[1] / MNI)).dataobj, np.float32)
    out = np.stack([np.rot90(vol[:, :, z]) for z in (70, 90, 110)])
    return out / out.max()


def _head_side(image: np.ndarray) -> int:
    r0, r1, c0, c1 = geometry.head_box(image)
    return max(r1 - r0, c1 - c0)


def _stored(images: np.ndarray, factor: float) -> np.ndarray:
    """(N, H, W) resampled by `factor` (anti-aliased when shrinking), as a scanner or a
    reslicing would store them at another matrix."""
    n, h, w = images.shape
    size = (max(8, round(h * factor)), max(8, round(w * factor)))
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    return F.interpolate(x, size=size, mode="bilinear", antialias=factor < 1,
                         align_corners=False)[:, 0].clamp_(min=0).numpy()


def _pair(slices: np.ndarray, simulator: str, severity: float) -> tuple[np.ndarray, np.ndarray,
                                                                       float]:
    """The slices at 256 px across the head and their corrupted copies, and the pixel size."""
    factor = 256 / _head_side(slices[1])
    clean = _stored(slices, factor)
    x = torch.from_numpy(clean)[:, None]
    gen = torch.Generator().manual_seed(7)
    sev = torch.full((len(x),), severity)
    if simulator == "kspace":
        moved = motion.kspace_motion(x, sev, gen)
    else:
        moved = motion.random_motion_batch(x, gen, p_torchio=1.0, severity=sev)
    corrupted = moved[:, 0].numpy() * clean.max(axis=(1, 2), keepdims=True)
    return clean, corrupted, 1.0 / factor


@pytest.mark.parametrize("simulator", ["kspace", "torchio"])
@pytest.mark.parametrize("severity", [0.3, 0.7])
def test_one_pair_reads_the_same_at_every_matrix(mni_slices, simulator, severity):
    clean, corrupted, spacing = _pair(mni_slices, simulator, severity)
    ref = ssim.slice_label(clean, corrupted, (spacing, spacing))
    assert ref.max() < 0.95, "the motion must show at 256 px for the test to mean anything"
    for n in MATRICES:
        f = n / 256
        label = ssim.slice_label(_stored(clean, f), _stored(corrupted, f),
                                 (spacing / f, spacing / f))
        bound = TOLERANCE_LOW if n < 128 else TOLERANCE
        assert np.abs(label - ref).max() <= bound, (n, label, ref)
    # zero-padded into a larger matrix: the window, hence the label, is the same
    pad = ((0, 0), (40, 200), (130, 10))
    padded = ssim.slice_label(np.pad(clean, pad), np.pad(corrupted, pad), (spacing, spacing))
    np.testing.assert_allclose(padded, ref, atol=1e-3)


def test_the_padding_label_of_model_v2_fails_this(mni_slices, monkeypatch):
    """The old contract (windows padded, not resampled) on the same pair: 64 px reads far
    higher than 256 px. This is what the test above guards against."""
    clean, corrupted, spacing = _pair(mni_slices, "kspace", 0.7)
    monkeypatch.setattr(geometry, "UPSCALE_WINDOW", False)
    ref = ssim.slice_label(clean, corrupted, (spacing, spacing))
    f = 64 / 256
    small = ssim.slice_label(_stored(clean, f), _stored(corrupted, f), (spacing / f, spacing / f))
    assert (small - ref).min() > 0.2


@pytest.mark.parametrize("side", [200, 230, 256])
def test_large_heads_keep_the_old_label(mni_slices, monkeypatch, side):
    """1 mm slices with 200-256 px across the head (the paper's data): windows above the model
    input are scaled down in both contracts, so the label is the old one."""
    # each slice at its own scale, so every head is `side` px across (crop to one shape)
    scaled = [_stored(s[None], side / _head_side(s))[0] for s in mni_slices]
    h = min(a.shape[0] for a in scaled)
    w = min(a.shape[1] for a in scaled)
    clean = np.stack([a[(a.shape[0] - h) // 2:][:h, (a.shape[1] - w) // 2:][:, :w]
                      for a in scaled])
    assert min(_head_side(c) for c in clean) >= side - 2
    gen = torch.Generator().manual_seed(3)
    moved = motion.random_motion_batch(torch.from_numpy(clean)[:, None], gen, severity=0.5)
    corrupted = moved[:, 0].numpy()
    new = ssim.slice_label(clean, corrupted)
    monkeypatch.setattr(geometry, "UPSCALE_WINDOW", False)
    old = ssim.slice_label(clean, corrupted)
    assert new.min() < 0.9 and np.abs(new - old).mean() <= 0.01, (new, old)


def test_slice_label_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        ssim.slice_label(np.zeros((2, 32, 32)), np.zeros((2, 32, 30)))
    assert ssim.slice_label(np.ones((40, 40)) * np.arange(40), np.ones((40, 40)) * np.arange(40)
                            ).tolist() == pytest.approx([1.0])
