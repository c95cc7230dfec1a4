"""The bundled default model: loads, is the default, predicts the sample's true SSIM."""

import shutil

import numpy as np
import pytest

from MotionSSIMLib.assessment.checkpoint import default_model_path, load_checkpoint, read_metadata
from MotionSSIMLib.assessment.inference import assess_volume, predict_slices
from MotionSSIMLib.assessment.report import read_true_ssim
from MotionSSIMLib.base.errors import CheckpointError
from MotionSSIMLib.imaging.geometry import extract_slices
from MotionSSIMLib.imaging.io import read_volume

SAMPLES = default_model_path().parents[1] / "Samples"
SAMPLE = SAMPLES / "sample_t2_motion.nii.gz"
TRUTH = SAMPLES / "sample_t2_motion_true_ssim.csv"


def test_bundled_model_loads_with_its_card():
    path = default_model_path()
    assert path.is_file()
    meta = read_metadata(path)
    assert meta["architecture"] == "resnet18" and meta["dtype"] == "float16"
    assert "residual_sd" in meta["evaluation"] and "trained_on" in meta
    assert (path.parent / "MODEL_CARD.md").is_file()
    # the training history (the former README section) lives beside the card, linked from it
    assert "## The bundled model" in (path.parent / "MODEL_HISTORY.md").read_text(encoding="utf-8")
    assert "(MODEL_HISTORY.md)" in (path.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert load_checkpoint(path).model.fc.out_features == 1
    # the uncertainty head, calibrated on held-out synthetic slices (issue 25's targets: 2-sd
    # coverage 90-97 %, Spearman with |error| at least the 4-view spread's)
    unc = meta["uncertainty"]
    assert unc["kind"] == "head" and meta["format_version"] == 2
    head, views = unc["test"]["methods"]["head (1 pass)"], unc["test"]["methods"]["4-view spread"]
    assert 0.90 <= head["coverage"] <= 0.97
    assert head["spearman_abs_error"] >= views["spearman_abs_error"]
    assert "## Uncertainty" in (path.parent / "MODEL_CARD.md").read_text(encoding="utf-8")


# The target, on the model's reading averaged over 4 views: the model bundled now
# (model v3, phase 5) reaches 0.0466 since the head box got its tissue floor and the sample
# its truth relabelled under it (0.039 before, see the model card), v3 phase 1 0.047, model v1
# 0.062. This bound guards against bundling a worse model.
SAMPLE_MAE_BOUND = 0.05
# The default reads each slice once (the uncertainty head gives ssim_sd from the same pass):
# 0.0471 on the sample with this model (0.0399 before the tissue floor; v3 phase 1: 0.0515).
# On held-out synthetic slices the views do not read better (docs/benchmarks.md).
SAMPLE_MAE_BOUND_ONE_PASS = 0.055


def test_bundled_model_predicts_the_sample_true_ssim():
    vol = read_volume(SAMPLE)
    truth = read_true_ssim(TRUTH)
    views = assess_volume(vol, device="cpu", tta=4)
    a = assess_volume(vol, device="cpu")  # model=None: the bundled one, one pass
    assert a.summary["inference"]["uncertainty"] == "head"
    assert a.orientation == "axial" and len(a.records) == len(truth)
    kept = [r for r in a.records if not r.empty]
    assert len(kept) >= 0.8 * len(a.records)
    err = np.array([r.ssim - truth[r.index] for r in kept])
    err_views = np.array([r.ssim - truth[r.index] for r in views.records if not r.empty])
    assert np.abs(err_views).mean() < SAMPLE_MAE_BOUND, \
        f"mean abs error {np.abs(err_views).mean():.3f}"
    assert np.abs(err).mean() < SAMPLE_MAE_BOUND_ONE_PASS, \
        f"mean abs error {np.abs(err).mean():.3f}"
    # the one-pass uncertainty is calibrated here too: +-2 sd holds most truths (0.98)
    sd = np.array([r.ssim_sd for r in kept])
    assert np.mean(np.abs(err) <= 2 * sd) >= 0.9
    # same verdict as the 4-view reading
    assert a.summary["verdict"] == views.summary["verdict"]
    # clean slices read better than the slices with motion
    clean = [r.ssim for r in kept if truth[r.index] == 1.0]
    moved = [r.ssim for r in kept if truth[r.index] < 0.8]
    assert np.mean(clean) > np.mean(moved) + 0.2
    # the slices with the worst motion are found: true SSIM < 0.6 -> predicted lowest
    worst_true = {r.index for r in kept if truth[r.index] < 0.6}
    worst_pred = {w["index"] for w in a.summary["worst_slices"]}
    assert worst_true <= worst_pred
    # predict_slices without a model argument uses the same bundled model
    stack = extract_slices(vol, "auto")
    direct = predict_slices(stack.images[:3], device="cpu", pixel_spacing=stack.pixel_spacing)
    assert np.allclose(direct, [r.ssim for r in a.records[:3]], atol=1e-5)


def test_truncated_bundled_model_is_refused(tmp_path):
    copy = tmp_path / "model.safetensors"
    shutil.copy(default_model_path(), copy)
    data = copy.read_bytes()
    copy.write_bytes(data[: len(data) - 4096])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(copy)


def _real_scans_script():
    import importlib.util

    path = default_model_path().parents[3] / "scripts" / "check_real_scans.py"
    spec = importlib.util.spec_from_file_location("check_real_scans", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_model_on_a_real_epi_scan():
    # A real scan, not a synthetic subject: nibabel's example EPI (2 x 2 x 2.2 mm, a contrast
    # and resolution the synthetic set only imitates), clean and with synthetic motion.
    # The model card gives the figures; these bounds catch a model that does not generalise.
    check = _real_scans_script()
    r = check.check_volume(check.real_volumes()["epi"], model=None, seed=0)
    assert r["slices"] >= 20 and r["samples"] == r["slices"] * (1 + check.REPEATS)
    assert r["mae"] < 0.08, r  # the bundled model: 0.048 (model card)
    assert r["clean_mean_prediction"] > 0.9, r
    assert r["accuracy_clinical"] > 0.75, r  # the bundled model: 0.858
