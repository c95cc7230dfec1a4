"""The fast CPU path (bfloat16 autocast, channels-last) against float32: the same verdicts.

The bound (inference.PRECISION_BOUND = 0.01) is on the largest |difference| of a slice's
predicted SSIM from float32 (measured: mean 0.0002-0.0007, max 0.0008 on the sample, 0.009
on one of 160 held-out slice views); and a class may change only for a slice whose float32
SSIM lies within 0.005 of a threshold. Checked on the bundled sample (verdict and every class
identical) and on seeded held-out synthetic slices (scripts/check_uncertainty.heldout_set),
each view and the mean over the views.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from MotionSSIMLib.assessment.checkpoint import default_model_path
from MotionSSIMLib.assessment.classes import ClinicalThresholds
from MotionSSIMLib.assessment.inference import (
    PRECISION_BOUND,
    assess_volume,
    cpu_native_bf16,
    forward_views,
    resolve_precision,
)
from MotionSSIMLib.base.errors import SettingsError
from MotionSSIMLib.imaging.io import read_volume

SAMPLE = default_model_path().parents[1] / "Samples" / "sample_t2_motion.nii.gz"
NEAR = 0.005  # a class may change only for a slice this close to a threshold
# clinical thresholds and the edges of the 3/5/10 equal classes of the evaluation
THRESHOLDS = (0.85, 0.60, 1 / 3, 2 / 3, *np.arange(1, 10) / 10)

needs_bf16 = pytest.mark.skipif(
    not cpu_native_bf16(),
    reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX): precision auto is float32 "
           "here, there is no fast path to compare")


def heldout_set(**kw):
    path = Path(__file__).resolve().parents[1] / "scripts" / "check_uncertainty.py"
    spec = importlib.util.spec_from_file_location("check_uncertainty", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.heldout_set(**kw)


def assert_same_classes(fast: np.ndarray, ref: np.ndarray) -> None:
    for t in THRESHOLDS:
        moved = (fast >= t) != (ref >= t)
        assert np.all(np.abs(ref[moved] - t) <= NEAR), \
            f"class changed at threshold {t:.3f} for fp32 SSIM {ref[moved]}"


def test_precision_settings():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_native_bf16() else "fp32")
    for bad in ("fp16", "double", None, 16):
        with pytest.raises(SettingsError, match="precision"):
            resolve_precision(bad, "cpu")
    if cpu_native_bf16():
        assert resolve_precision("bf16", "cpu") == "bf16"
    else:  # emulated bfloat16 is slower than float32: refused, not silently slow
        with pytest.raises(SettingsError, match="no native bfloat16"):
            resolve_precision("bf16", "cpu")


@needs_bf16
def test_bf16_keeps_the_bundled_samples_verdict():
    vol = read_volume(SAMPLE)
    ref = assess_volume(vol, device="cpu", precision="fp32")
    fast = assess_volume(vol, device="cpu")  # auto: bf16 on this CPU
    assert ref.summary["inference"]["precision"] == "fp32"
    assert fast.summary["inference"]["precision"] == "bf16"
    assert fast.summary["verdict"] == ref.summary["verdict"]
    a = np.array([r.ssim for r in fast.records])
    b = np.array([r.ssim for r in ref.records])
    diff = np.abs(a - b)
    print(f"sample: mean |bf16 - fp32| {diff.mean():.5f}, max {diff.max():.5f}")
    assert diff.max() <= PRECISION_BOUND
    assert_same_classes(a, b)
    # the verdict's classes: equal, but for a slice within NEAR of a clinical threshold (the
    # documented contract; with model v3 phase 1 slice 41 sits at such a threshold)
    near = np.min(np.abs(b[:, None] - np.array([0.85, 0.60])[None]), axis=1) <= NEAR
    assert [r.clinical_class for r, n in zip(fast.records, near) if not n] == \
        [r.clinical_class for r, n in zip(ref.records, near) if not n]
    sd_a = np.array([r.ssim_sd for r in fast.records])
    sd_b = np.array([r.ssim_sd for r in ref.records])
    assert np.abs(sd_a - sd_b).max() <= PRECISION_BOUND


@needs_bf16
def test_bf16_on_seeded_heldout_slices():
    x, _ = heldout_set(subjects=2, per_subject=10, repeats=2, seed=7)
    ref = np.clip(forward_views(x, device="cpu", precision="fp32", tta=4), 0, 1)
    fast = np.clip(forward_views(x, device="cpu", precision="bf16", tta=4), 0, 1)
    diff = np.abs(fast - ref)
    print(f"{len(x)} slices x 4 views: mean |bf16 - fp32| {diff.mean():.5f}, "
          f"max {diff.max():.5f}")
    assert len(x) >= 30 and np.ptp(ref) > 0.2  # clean and corrupted slices
    assert diff.max() <= PRECISION_BOUND
    assert_same_classes(fast.ravel(), ref.ravel())
    assert_same_classes(fast.mean(1), ref.mean(1))
    th = ClinicalThresholds()
    assert th.good in THRESHOLDS and th.sufficient in THRESHOLDS
