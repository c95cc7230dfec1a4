"""Per-slice uncertainty: the spread of the prediction over label-preserving views."""

import csv
import json

import numpy as np
import pytest
import torch

from MotionSSIMLib.assessment.checkpoint import save_checkpoint
from MotionSSIMLib.assessment.classes import ClinicalThresholds
from MotionSSIMLib.assessment.inference import VIEWS, assess_volume, predict_views, uncertain_slices
from MotionSSIMLib.assessment.model import build_model
from MotionSSIMLib.assessment.report import report_name
from MotionSSIMLib.base.errors import SettingsError
from MotionSSIMLib.cli import main
from MotionSSIMLib.imaging import geometry


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("resnet18")
    with torch.no_grad():
        net.fc.bias.fill_(0.6)  # outputs near the 0.60 threshold: some slices uncertain
        net.fc.weight.mul_(0.3)
    path = tmp_path_factory.mktemp("m") / "r18.safetensors"
    save_checkpoint(path, net, {"note": "test"})
    return path


def head(seed=1, n=10):
    rng = np.random.default_rng(seed)
    arr = rng.normal(5, 1, (n, 48, 40)).clip(0)
    arr[2:n - 2, 8:40, 6:30] += 200 * rng.random((n - 4, 32, 24)) + 100
    return geometry.volume(arr, (1.0, 1.0, 4.0))


def test_uncertain_rule():
    th = ClinicalThresholds(0.85, 0.60)
    ssim = np.array([0.90, 0.90, 0.61, 0.62, 0.30, 0.86, 0.70])
    sd = np.array([0.01, 0.03, 0.01, 0.005, 0.2, 0.0, 0.05])
    # 0.90 +- 0.02 misses 0.85; +- 0.06 reaches it; 0.61 - 0.02 crosses 0.60; 0.62 - 0.01
    # does not; 0.30 + 0.4 reaches 0.60; sd 0 is never uncertain; 0.70 +- 0.1 touches none
    assert uncertain_slices(ssim, sd, th).tolist() == [False, True, True, False, True, False,
                                                       False]


def test_views_mean_and_spread(ckpt):
    imgs = np.random.default_rng(0).random((5, 60, 50)).astype(np.float32)
    one = predict_views(imgs, ckpt, "cpu", precision="fp32", tta=1)
    assert one.view_names == ("identity",) and np.all(one.sd == 0)
    four = predict_views(imgs, ckpt, "cpu", precision="fp32", tta=4)
    assert four.view_names == tuple(VIEWS)[:4] and four.views.shape == (5, 4)
    assert np.allclose(four.views[:, 0], one.ssim, atol=1e-6)  # the identity view
    assert np.allclose(four.ssim, four.views.mean(1)) and np.all(four.sd > 0)
    assert np.allclose(four.sd, four.views.std(1, ddof=1))
    # views are computed per slice: batching and order do not matter
    again = predict_views(imgs[::-1], ckpt, "cpu", batch_size=3, precision="fp32", tta=4)
    assert np.allclose(again.views[::-1], four.views, atol=1e-5)
    for bad in (0, 9, True, 2.5, "4"):
        with pytest.raises(SettingsError, match="tta"):
            predict_views(imgs, ckpt, "cpu", tta=bad)


def test_assessment_and_reports_carry_the_spread(ckpt, tmp_path, capsys):
    a = assess_volume(head(), model=ckpt, device="cpu", precision="fp32", tta=4)
    sd = np.array([r.ssim_sd for r in a.records])
    kept = np.array([not r.empty for r in a.records])
    unsure = np.array([r.uncertain for r in a.records])
    assert np.all(sd[kept] > 0) and not unsure[~kept].any()
    expected = uncertain_slices([r.ssim for r in a.records], sd) & kept
    assert unsure.tolist() == expected.tolist()
    assert a.summary["n_uncertain"] == int(expected.sum())
    assert a.summary["inference"] == {"device": "cpu", "precision": "fp32",
                                      "views": list(VIEWS)[:4],
                                      "uncertainty": "views"}
    assert all("ssim_sd" in w for w in a.summary["worst_slices"])

    # the command line: --tta and --precision reach the engine, the CSV and JSON show them
    import nibabel as nib

    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(head().array.transpose(2, 1, 0).astype(np.float32),
                             np.diag([1.0, 1.0, 4.0, 1.0])), str(path))
    out = tmp_path / "out"
    rc = main(["assess", str(path), "--model", str(ckpt), "--device", "cpu", "--out", str(out),
               "--precision", "fp32", "--tta", "2", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    stem = report_name(path)
    with open(out / f"{stem}_slices.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((out / f"{stem}_summary.json").read_text())
    assert summary["inference"]["views"] == ["identity", "hflip"]
    assert summary["inference"]["precision"] == "fp32"
    assert summary["n_uncertain"] == sum(r["uncertain"] == "1" for r in rows)
    assert any(float(r["ssim_sd"]) > 0 for r in rows if r["empty"] == "0")
    rc = main(["assess", str(path), "--model", str(ckpt), "--device", "cpu", "--out", str(out),
               "--no-uncertainty", "--precision", "fp32", "--no-progress"])
    assert rc == 0
    summary = json.loads((out / f"{stem}_summary.json").read_text())
    assert summary["inference"]["views"] == ["identity"] and summary["n_uncertain"] == 0
    assert main(["assess", str(path), "--model", str(ckpt), "--device", "cpu", "--out",
                 str(out), "--tta", "0"]) == 2
    assert "tta" in capsys.readouterr().err
