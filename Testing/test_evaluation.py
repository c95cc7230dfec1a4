"""Evaluation figures: hand-computed references, scikit-learn agreement, the report files."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from sklearn.metrics import classification_report, cohen_kappa_score, confusion_matrix

from MotionSSIMLib.training import evaluation, evaluation_figures


def test_figures_equal_hand_computed_reference():
    true = np.array([0.10, 0.30, 0.50, 0.70, 0.90, 0.95])
    pred = np.array([0.12, 0.25, 0.55, 0.66, 0.93, 1.02])
    f = evaluation_figures.evaluate_predictions(pred, true)
    r = f["regression"]
    res = [0.02, -0.05, 0.05, -0.04, 0.03, 0.07]
    mean = sum(res) / 6                                  # 0.08 / 6
    var0 = sum((x - mean) ** 2 for x in res) / 6
    assert r["residual_mean"] == pytest.approx(0.08 / 6)
    assert r["normal_fit"]["mu"] == pytest.approx(mean)
    assert r["normal_fit"]["sigma"] == pytest.approx(var0 ** 0.5)
    assert r["residual_sd"] == pytest.approx((var0 * 6 / 5) ** 0.5)
    assert r["mae"] == pytest.approx(0.26 / 6)
    assert r["rmse"] == pytest.approx((sum(x * x for x in res) / 6) ** 0.5)
    mt, mp = true.mean(), pred.mean()
    sxy = sum((a - mt) * (b - mp) for a, b in zip(true, pred, strict=True))
    sxx = sum((a - mt) ** 2 for a in true)
    syy = sum((b - mp) ** 2 for b in pred)
    assert r["linear_fit"]["slope"] == pytest.approx(sxy / sxx)
    assert r["linear_fit"]["intercept"] == pytest.approx(mp - sxy / sxx * mt)
    assert r["pearson_r"] == pytest.approx(sxy / (sxx * syy) ** 0.5)

    # 3 equal-width classes on [0, 1] (1 = lowest): true 1,1,2,3,3,3; predicted (clipped to 1)
    # 1,1,2,2,3,3
    c3 = f["classification"]["3"]
    assert c3["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [0, 1, 2]]
    assert c3["accuracy"] == pytest.approx(5 / 6)
    assert c3["per_class"]["2"]["precision"] == pytest.approx(0.5)
    assert c3["per_class"]["3"]["recall"] == pytest.approx(2 / 3)
    assert c3["per_class"]["3"]["f1"] == pytest.approx(0.8)
    assert c3["macro_avg"]["f1"] == pytest.approx((1 + 2 / 3 + 0.8) / 3)
    assert c3["weighted_avg"]["recall"] == pytest.approx((2 * 1 + 1 * 1 + 3 * 2 / 3) / 6)
    # clinical: good >= 0.85, sufficient >= 0.60: true 3,3,3,2,1,1; predicted 3,3,3,2,1,1
    clin = f["clinical"]
    assert clin["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 3]]
    assert clin["accuracy"] == 1.0 and clin["cohen_kappa"] == pytest.approx(1.0)
    assert set(f["classification"]) == {"3", "5", "10"}
    with pytest.raises(ValueError):
        evaluation_figures.evaluate_predictions(pred[:3], true)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_tables_match_sklearn_classification_report(n):
    rng = np.random.default_rng(n)
    true = rng.beta(4, 1.5, 3000)
    pred = np.clip(true + rng.normal(0, 0.06, true.size), 0, 1)
    f = evaluation_figures.evaluate_predictions(pred, true)
    table = f["classification"][str(n)]
    from MotionSSIMLib.assessment.classes import uniform_class

    t, p = uniform_class(true, n), uniform_class(pred, n)
    labels = list(range(1, n + 1))
    ref = classification_report(t, p, labels=labels, output_dict=True, zero_division=0)
    for c in labels:
        for m, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert table["per_class"][str(c)][m] == pytest.approx(ref[str(c)][key], abs=1e-12)
        assert table["per_class"][str(c)]["support"] == ref[str(c)]["support"]
    for ours, theirs in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for m, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert table[ours][m] == pytest.approx(ref[theirs][key], abs=1e-12)
    assert table["accuracy"] == pytest.approx(ref["accuracy"])
    assert table["confusion_matrix"] == confusion_matrix(t, p, labels=labels).tolist()
    if n == 10:  # some classes are empty at the low end: zero_division=0 as sklearn
        assert table["per_class"]["1"]["support"] == 0
    from MotionSSIMLib.assessment.classes import clinical_class

    ct, cp = clinical_class(true), clinical_class(pred)
    assert f["clinical"]["cohen_kappa"] == pytest.approx(cohen_kappa_score(ct, cp))
    ref3 = classification_report(ct, cp, labels=[1, 2, 3], output_dict=True, zero_division=0)
    assert f["clinical"]["macro_avg"]["f1"] == pytest.approx(ref3["macro avg"]["f1-score"])


def _volume(path, rng, shape=(12, 48, 48)):
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (k / 0.9) ** 2 + (j / 0.8) ** 2 + (i / 0.7) ** 2 < 1
    arr = np.where(inside, 50 + 50 * rng.random(shape) + 40 * np.sin(7 * j) * np.cos(4 * i), 0)
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(img, str(path))
    return path


def test_test_set_is_deterministic_per_seed(tmp_path):
    rng = np.random.default_rng(0)
    vols = [_volume(tmp_path / f"t{i}.nii.gz", rng) for i in range(2)]
    kw = dict(n=12, input_size=48, chunk=5, p_torchio=0.5)
    a = list(evaluation.test_set(vols, seed=1, **kw))
    b = list(evaluation.test_set(vols, seed=1, **kw))
    c = list(evaluation.test_set(vols, seed=2, **kw))
    assert [len(lab) for _, lab in a] == [5, 5, 2]
    for (x, y), (u, v) in zip(a, b, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    assert not torch.equal(a[0][1], c[0][1])


def test_evaluate_two_checkpoints_side_by_side(tmp_path, capsys, c_locale):
    from MotionSSIMLib.assessment.checkpoint import save_checkpoint
    from MotionSSIMLib.assessment.model import build_model
    from MotionSSIMLib.training import training_cli

    rng = np.random.default_rng(3)
    (tmp_path / "data" / "test").mkdir(parents=True)
    for i in range(2):
        _volume(tmp_path / "data" / "test" / f"s{i}.nii.gz", rng)
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("resnet18")
        path = tmp_path / f"m{seed}" / "best.safetensors"
        path.parent.mkdir()
        save_checkpoint(path, model, {"architecture": "resnet18", "train_input_size": 48})
        ckpts.append(str(path))
    parser = argparse.ArgumentParser()
    training_cli.add_evaluate_arguments(parser)
    out = tmp_path / "report"
    args = parser.parse_args(["--data", str(tmp_path / "data"), "--checkpoint", *ckpts,
                              "--out", str(out), "--n", "30", "--batch-size", "16",
                              "--no-progress", "--device", "cpu"])
    assert training_cli.run_evaluate(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocol"]["n"] == 30 and list(rep["models"]) == ["m0/best", "m1/best"]
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and set(rows[0]) == {"index", "true", "m0/best", "m1/best"}
    pred = np.array([float(r["m0/best"]) for r in rows])
    true = np.array([float(r["true"]) for r in rows])
    again = evaluation_figures.evaluate_predictions(pred, true)
    got = rep["models"]["m0/best"]["figures"]["regression"]
    assert got["mae"] == pytest.approx(again["regression"]["mae"], abs=1e-5)
    for name in ("report.md", "summary.csv", "classification_3.csv", "classification_10.csv",
                 "classification_clinical.csv", "scatter_m0_best.png", "residuals_m1_best.png",
                 "confusion_m0_best.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "m0/best" in md and "m1/best" in md and "weighted avg" in md
    # a folder with nothing readable: one line, status 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.nii.gz").write_bytes(b"junk")
    capsys.readouterr()
    args = parser.parse_args(["--data", str(tmp_path / "empty"), "--checkpoint", ckpts[0],
                              "--out", str(out), "--no-progress"])
    assert training_cli.run_evaluate(args) == 2
    assert "no usable" in capsys.readouterr().err
