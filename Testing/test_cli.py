"""The command line: reports for good inputs, exit 2 and one line per bad input."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MotionSSIMLib.assessment.checkpoint import save_checkpoint
from MotionSSIMLib.assessment.model import build_model
from MotionSSIMLib.assessment.report import report_name
from MotionSSIMLib.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("m") / "r18.safetensors"
    save_checkpoint(path, build_model("resnet18"), {"architecture": "resnet18"})
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    head = rng.normal(5, 1, (40, 44, 6)).astype(np.float32)
    head[8:32, 8:36, 1:5] += 300
    nib.save(nib.Nifti1Image(head, np.diag([1.0, 1.0, 5.0, 1.0])), d / "head.nii.gz")
    picture = rng.random((50, 60)) * 40
    picture[10:40, 12:48] += 200  # a head-like blob: pure noise is not assessed (issue 26)
    sitk.WriteImage(sitk.GetImageFromArray(picture.astype(np.uint8)), str(d / "slice.png"))
    nib.save(nib.Nifti1Image(rng.random((20, 20, 6, 2)).astype(np.float32), np.eye(4)),
             d / "fourd.nii.gz")
    # 4D inputs are assessed frame by frame (test_series.py); 5D ones are still refused
    nib.save(nib.Nifti1Image(rng.random((20, 20, 6, 2, 2)).astype(np.float32), np.eye(4)),
             d / "fived.nii.gz")
    bad = head.copy()
    bad[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), d / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((30, 30, 5), np.float32), np.eye(4)), d / "flat.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((6, 6, 6)).astype(np.float32), np.eye(4)),
             d / "tiny.nii.gz")
    (d / "notes.nii").write_text("not an image")
    return d


def test_assess_writes_reports(ckpt, inputs, tmp_path, capsys):
    rc = main(["assess", str(inputs / "head.nii.gz"), str(inputs / "slice.png"),
               "--model", str(ckpt), "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    lines = [ln for ln in out.out.splitlines() if ln.strip()]
    assert len(lines) == 2 and "head.nii.gz:" in lines[0] and "->" in lines[0]
    head = report_name(inputs / "head.nii.gz")
    assert head.startswith("head_") and len(head) == len("head_") + 8
    with open(tmp_path / f"{head}_slices.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and set(rows[0]) >= {"index", "position_mm", "ssim", "class", "empty"}
    summary = json.loads((tmp_path / f"{head}_summary.json").read_text())
    assert summary["n_slices"] == 6 and summary["orientation"] == "axial"
    assert (tmp_path / f"{head}_chart.png").stat().st_size > 5000
    slice_json = tmp_path / f"{report_name(inputs / 'slice.png')}_summary.json"
    assert json.loads(slice_json.read_text())["n_slices"] == 1
    # nothing else: no temporary file left behind
    assert len(list(tmp_path.iterdir())) == 6


def test_bad_inputs_exit_2_one_line_each_and_others_still_assessed(ckpt, inputs, tmp_path,
                                                                   capsys):
    bad = ["fived.nii.gz", "nan.nii.gz", "flat.nii.gz", "tiny.nii.gz", "notes.nii", "gone.nii"]
    args = [str(inputs / b) for b in bad] + [str(inputs / "head.nii.gz")]
    rc = main(["assess", *args, "--model", str(ckpt), "--device", "cpu", "--out",
               str(tmp_path), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 2
    errors = [ln for ln in out.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == len(bad)
    for name, line in zip(bad, errors, strict=True):
        assert name in line
    assert "Traceback" not in out.err
    assert (tmp_path / f"{report_name(inputs / 'head.nii.gz')}_summary.json").exists()


def test_bad_model_is_one_line(inputs, tmp_path, capsys):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x80\x04garbage")
    rc = main(["assess", str(inputs / "head.nii.gz"), "--model", str(fake), "--out",
               str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "fake.safetensors" in err


def test_module_entry_point_runs_as_subprocess(ckpt, inputs, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "MotionSSIM"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "MotionSSIMLib", "assess",
                           str(inputs / "head.nii.gz"), str(inputs / "fived.nii.gz"),
                           "--model", str(ckpt), "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, encoding="utf-8", env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "fived.nii.gz" in proc.stderr
    assert "head.nii.gz:" in proc.stdout
    help_text = subprocess.run([sys.executable, "-m", "MotionSSIMLib", "train", "--help"],
                               capture_output=True, text=True, encoding="utf-8", env=env, timeout=120).stdout
    assert "--resume" in help_text and "--architecture" in help_text


def test_true_ssim_goes_into_csv_json_and_chart(ckpt, inputs, tmp_path, capsys):
    truth = tmp_path / "truth.csv"
    truth.write_text("index,true_ssim\n" + "".join(f"{i},{0.5 + 0.05 * i}\n" for i in range(6)))
    out = tmp_path / "out"
    rc = main(["assess", str(inputs / "head.nii.gz"), "--model", str(ckpt), "--device", "cpu",
               "--out", str(out), "--true-ssim", str(truth)])
    assert rc == 0, capsys.readouterr().err
    head = report_name(inputs / "head.nii.gz")
    with open(out / f"{head}_slices.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "position_mm", "ssim", "class", "class_name",
                             "foreground", "empty", "ssim_sd", "uncertain", "true_ssim"]
    assert [float(r["true_ssim"]) for r in rows] == pytest.approx(
        [0.5 + 0.05 * int(r["index"]) for r in rows])
    summary = json.loads((out / f"{head}_summary.json").read_text())
    cmp = summary["against_true_ssim"]
    kept = [r for r in rows if r["empty"] == "0"]
    assert cmp["n_slices"] == len(kept)
    assert cmp["mean_abs_error"] == pytest.approx(
        np.mean([abs(float(r["ssim"]) - float(r["true_ssim"])) for r in kept]), abs=1e-3)
    # two inputs cannot share one truth file
    rc = main(["assess", str(inputs / "head.nii.gz"), str(inputs / "slice.png"), "--model",
               str(ckpt), "--device", "cpu", "--out", str(out), "--true-ssim", str(truth)])
    assert rc == 2 and "exactly one input" in capsys.readouterr().err


def test_report_contents(ckpt, tmp_path):
    import matplotlib.image as mpimg

    from MotionSSIMLib.assessment.inference import assess_volume
    from MotionSSIMLib.assessment.report import CSV_COLUMNS, write_report
    from MotionSSIMLib.imaging.geometry import volume

    rng = np.random.default_rng(3)
    arr = rng.normal(3, 1, (8, 40, 40)).clip(0)
    arr[2:6, 8:32, 8:32] += 100
    a = assess_volume(volume(arr), model=ckpt, device="cpu")
    paths = write_report(a, tmp_path / "r", "vol", source="vol.nii.gz")
    assert set(paths) == {"csv", "json", "png"} and all(p.exists() for p in paths.values())
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 8
    for r, rec in zip(rows, a.records, strict=True):
        assert int(r["index"]) == rec.index and float(r["ssim"]) == pytest.approx(rec.ssim,
                                                                                   abs=1e-4)
        assert r["class_name"] == {1: "good", 2: "sufficient", 3: "insufficient"}[int(r["class"])]
        assert r["empty"] == str(int(rec.empty))
    s = json.loads(paths["json"].read_text())
    for key in ("input", "orientation", "axis", "verdict", "verdict_rule", "mean_ssim",
                "min_ssim", "median_ssim", "counts", "fractions", "worst_slices", "thresholds",
                "model", "versions"):
        assert key in s, key
    assert s["input"] == "vol.nii.gz" and s["model"]["architecture"] == "resnet18"
    assert s["counts"]["empty"] == sum(r.empty for r in a.records)
    png = mpimg.imread(paths["png"])
    assert png.shape[0] >= 300 and png.shape[1] >= 800
    assert png[..., :3].std() > 0.05  # something is drawn


def test_options_and_devices_errors_are_one_line(ckpt, inputs, tmp_path, capsys):
    head = str(inputs / "head.nii.gz")
    base = ["assess", head, "--model", str(ckpt), "--out", str(tmp_path)]
    assert main(base + ["--good", "0.5", "--sufficient", "0.7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "thresholds" in err
    assert main(base + ["--batch-size", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "CUDA" in err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "MotionSSIM" in capsys.readouterr().out


def test_missing_training_code_is_reported_cleanly(ckpt, inputs, tmp_path, capsys,
                                                   monkeypatch):
    # None in sys.modules makes `import MotionSSIMLib.training.training_cli` fail, as if it
    # were absent
    monkeypatch.setitem(sys.modules, "MotionSSIMLib.training.training_cli", None)
    assert main(["train", "--data", "x", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train command is not available" in err
    assert main(["evaluate", "whatever"]) == 2
    assert "evaluate command is not available" in capsys.readouterr().err
    # assessing never needs the training code
    assert main(["assess", str(inputs / "slice.png"), "--model", str(ckpt), "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
