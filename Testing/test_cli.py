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

from MotionSSIMLib.checkpoint import save_checkpoint
from MotionSSIMLib.cli import main
from MotionSSIMLib.model import build_model

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
    sitk.WriteImage(sitk.GetImageFromArray((rng.random((50, 60)) * 255).astype(np.uint8)),
                    str(d / "slice.png"))
    nib.save(nib.Nifti1Image(rng.random((20, 20, 6, 2)).astype(np.float32), np.eye(4)),
             d / "fourd.nii.gz")
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
    with open(tmp_path / "head_slices.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and set(rows[0]) >= {"index", "position_mm", "ssim", "class", "empty"}
    summary = json.loads((tmp_path / "head_summary.json").read_text())
    assert summary["n_slices"] == 6 and summary["orientation"] == "axial"
    assert (tmp_path / "head_chart.png").stat().st_size > 5000
    assert json.loads((tmp_path / "slice_summary.json").read_text())["n_slices"] == 1


def test_bad_inputs_exit_2_one_line_each_and_others_still_assessed(ckpt, inputs, tmp_path,
                                                                   capsys):
    bad = ["fourd.nii.gz", "nan.nii.gz", "flat.nii.gz", "tiny.nii.gz", "notes.nii", "gone.nii"]
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
    assert (tmp_path / "head_summary.json").exists()


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
                           str(inputs / "head.nii.gz"), str(inputs / "fourd.nii.gz"),
                           "--model", str(ckpt), "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "fourd.nii.gz" in proc.stderr
    assert "head.nii.gz:" in proc.stdout
    help_text = subprocess.run([sys.executable, "-m", "MotionSSIMLib", "train", "--help"],
                               capture_output=True, text=True, env=env, timeout=120).stdout
    assert "--resume" in help_text and "--architecture" in help_text
