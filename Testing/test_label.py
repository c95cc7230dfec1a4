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

import numpy as np
import pytest
import torch

from MotionSSIMLib.imaging import geometry
from MotionSSIMLib.simulation import motion, ssim
from MotionSSIMLib.training import invariance

MATRICES = invariance.MATRICES  # pixels across the head
_head_side, _stored, _pair = invariance.head_side, invariance.stored, invariance.make_pair


@pytest.fixture(scope="module")
def mni_slices() -> np.ndarray:
    """Three axial slices of the MNI152 T1 template (real MR, 1 mm), display orientation."""
    try:
        return invariance.template_slices((70, 90, 110))
    except FileNotFoundError:
        pytest.skip("nilearn (MNI152 template) not installed")


@pytest.mark.parametrize("simulator", ["kspace", "torchio"])
@pytest.mark.parametrize("severity", [0.3, 0.7])
def test_one_pair_reads_the_same_at_every_matrix(mni_slices, simulator, severity):
    clean, corrupted, spacing = _pair(mni_slices, simulator, severity)
    ref = ssim.slice_label(clean, corrupted, (spacing, spacing))
    assert ref.max() < 0.95, "the motion must show at 256 px for the test to mean anything"
    result = invariance.measure(mni_slices, cases=[(simulator, severity)])
    case = result["cases"][0]["label"]
    np.testing.assert_allclose(case["at_256"], ref, atol=1e-6)
    for name, move in case["largest_move"].items():
        # zero-padded into a larger matrix: the window, hence the label, is the same
        bound = invariance.tolerance(int(name)) if name.isdigit() else 1e-3
        assert move <= bound, (name, move, bound)
    assert result["passed"] and set(case["largest_move"]) == {
        str(n) for n in MATRICES if n != 256} | {"padded"}


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
