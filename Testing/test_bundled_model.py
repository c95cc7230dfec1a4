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


# The target; the model bundled now (model v2, phase 4) reaches 0.021, model v1 0.062
# (see the model card). This bound guards against bundling a worse model.
SAMPLE_MAE_BOUND = 0.05


def test_bundled_model_predicts_the_sample_true_ssim():
    vol = read_volume(SAMPLE)
    truth = read_true_ssim(TRUTH)
    a = assess_volume(vol, device="cpu")  # model=None: the bundled one
    assert a.orientation == "axial" and len(a.records) == len(truth)
    kept = [r for r in a.records if not r.empty]
    assert len(kept) >= 0.8 * len(a.records)
    err = np.array([r.ssim - truth[r.index] for r in kept])
    assert np.abs(err).mean() < SAMPLE_MAE_BOUND, f"mean abs error {np.abs(err).mean():.3f}"
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
    assert r["mae"] < 0.08, r  # the bundled model: 0.020 (model card)
    assert r["clean_mean_prediction"] > 0.9, r
    assert r["accuracy_clinical"] > 0.75, r  # the bundled model: 0.983
