"""Evaluation as the Slicer training module runs it: in a stock Slicer (no matplotlib) the text
report is still written, and a test split that is really training data is refused or flagged."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.training import evaluation, evaluation_figures, evaluation_report


def _result(test_files, overlap=None):
    rng = np.random.default_rng(0)
    true = rng.uniform(0.2, 1.0, 40)
    pred = np.clip(true + rng.normal(0, 0.05, 40), 0, 1)
    protocol = {"n": 40, "seed": 0, "contrast_augmentation": True, "p_torchio": 0.5,
                "input_size": 48, "chunk": 10, "slices": "central",
                "test_data": {"volumes": len(test_files), "files": list(test_files)},
                "class_counts": [3, 5, 10], "residuals": "predicted - true"}
    if overlap:
        protocol["trained_on_test_volumes"] = overlap
    models = {"best": {"checkpoint": "best.safetensors", "architecture": "resnet18",
                       "metadata": {},
                       "figures": evaluation_figures.evaluate_predictions(pred, true)}}
    return {"protocol": protocol, "models": models}, true, {"best": pred}


def test_text_report_is_written_without_matplotlib(tmp_path, monkeypatch):
    # a None entry in sys.modules makes `import matplotlib` raise ImportError, as in a Slicer
    # where it was never installed
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result, true, predictions = _result(["s1.nii.gz", "s2.nii.gz"])
    evaluation_report.write_report(result, tmp_path, true, predictions)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Regression" in md and "| best |" in md
    assert "Plots not drawn: matplotlib is not installed." in md
    assert "scatter_best.png" not in md and not list(tmp_path.glob("*.png"))
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["protocol"]["plots"] == "not drawn: matplotlib is not installed"
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "predictions.csv").is_file()


def test_report_with_plots_links_them(tmp_path):
    pytest.importorskip("matplotlib")
    result, true, predictions = _result(["s1.nii.gz"])
    evaluation_report.write_report(result, tmp_path, true, predictions)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "![scatter](scatter_best.png)" in md and (tmp_path / "scatter_best.png").is_file()


def test_report_names_tested_volumes_and_warns_about_training_overlap(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result, true, predictions = _result(["IXI002.nii.gz", "IXI012.nii.gz"], {"best": ["IXI002.nii.gz"]})
    evaluation_report.write_report(result, tmp_path, true, predictions)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Tested volumes: IXI002.nii.gz, IXI012.nii.gz." in md
    assert "**Warning: best was trained on 1 of these test volumes** (IXI002.nii.gz)" in md
    clean, true, predictions = _result(["IXI012.nii.gz"])
    evaluation_report.write_report(clean, tmp_path / "clean", true, predictions)
    assert "Warning" not in (tmp_path / "clean" / "report.md").read_text(encoding="utf-8")


def test_trained_on_compares_with_the_checkpoint_training_files():
    meta = {"training_data": {"train": {"volumes": 2, "files": ["a.nii.gz", "b.nii.gz"]},
                              "validation": {"volumes": 1, "files": ["c.nii.gz"]}}}
    assert evaluation.trained_on(meta, ["b.nii.gz", "c.nii.gz", "d.nii.gz"]) == ["b.nii.gz"]
    assert evaluation.trained_on({}, ["a.nii.gz"]) == []
    assert evaluation.trained_on({"training_data": "synthetic"}, ["a.nii.gz"]) == []


def _touch_volume(path):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))


def test_held_out_test_volumes_refuses_a_plain_folder(tmp_path):
    for name in ("a", "b"):
        _touch_volume(tmp_path / "flat" / f"{name}.nii.gz")
    with pytest.raises(InputError) as err:
        evaluation.held_out_test_volumes(tmp_path / "flat")
    message = str(err.value)
    assert str(tmp_path / "flat") in message and "2 of 2" in message and "\n" not in message

    _touch_volume(tmp_path / "split" / "train" / "a.nii.gz")
    _touch_volume(tmp_path / "split" / "test" / "t.nii.gz")
    test = evaluation.held_out_test_volumes(tmp_path / "split")
    assert [p.name for p in test] == ["t.nii.gz"]

    # a split file whose test list repeats a training volume
    (tmp_path / "bad.json").write_text(json.dumps(
        {"train": ["split/train/a.nii.gz"], "test": ["split/train/a.nii.gz"]}), encoding="utf-8")
    with pytest.raises(InputError, match="shares 1 of 1"):
        evaluation.held_out_test_volumes(tmp_path / "bad.json")
