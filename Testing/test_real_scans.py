"""The real-scan evaluation set (scripts/check_real_scans.py, `make check-real`).

Runs on what requirements.txt installs: nibabel's real EPI scan (example4d) and the bundled
model. The scans that dipy's wheel carries (requirements-eval.txt, installed only by
`make check-real`) are checked when dipy is installed and skipped otherwise.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from torch import nn

from MotionSSIMLib.assessment import inference

SCRIPT = ROOT / "scripts" / "check_real_scans.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_real_scans", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crs = _load_script()
HAVE_DIPY = importlib.util.find_spec("dipy") is not None


class Shifted(nn.Module):
    """The bundled network with a constant added to its output: a model biased by `shift`."""

    def __init__(self, net: nn.Module, shift: float):
        super().__init__()
        self.net, self.shift = net, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.shift


def test_the_set_has_six_scans_of_three_contrasts_with_provenance():
    assert len(crs.SCANS) >= 6 and len(set(crs.SCAN_NAMES)) == len(crs.SCANS)
    contrasts = {s.contrast for s in crs.SCANS}
    assert len(contrasts) >= 3 and any(c.startswith("DWI") for c in contrasts), contrasts
    for s in crs.SCANS:
        assert s.package and s.file and s.licence and s.description, s
    # The scans of requirements.txt's packages are there on every machine.
    for s in crs.SCANS:
        if s.package in ("nibabel", "nilearn"):
            assert crs.scan_path(s).is_file()


def test_table_has_the_promised_columns_and_finite_values():
    table = crs.real_scan_table(None, seed=0, names=["epi"], max_slices=2, repeats=2)
    r = table["epi"]
    for c in crs.COLUMNS:
        assert c in r, c
        if not isinstance(r[c], str):
            assert math.isfinite(r[c]), (c, r[c])
    assert r["slices"] == 2 and r["samples"] == 2 + 2 * 2 * len(crs.SIMULATORS)
    assert r["version"] != "not installed" and r["package"] == "nibabel"
    # both simulators' samples are there and their labels span motion, not just clean
    assert set(r["_simulator"][2:]) == set(crs.SIMULATORS)
    assert r["_true"][2:].min() < 0.8 and r["_true"][:2].min() == 1.0
    # the same seed gives the same samples (a scan's stream does not depend on the others)
    vol = crs.load_volume(crs.get_scan("epi"))
    again = crs.check_volume(vol, None, seed=0, max_slices=2, name="epi", repeats=2)
    assert np.array_equal(again["_true"], r["_true"])


def test_clean_slices_of_a_real_scan_read_higher_than_heavily_corrupted_ones():
    vol = crs.load_volume(crs.get_scan("epi"))
    r = crs.check_volume(vol, None, seed=1, max_slices=3, severity=1.0, name="epi", repeats=1)
    assert r["corrupted_mean_true"] < 0.7, r["corrupted_mean_true"]
    assert r["clean_mean_prediction"] > r["corrupted_mean_prediction"] + 0.2, r
    assert r["clean_share_good"] == 1.0  # the bundled model reads these clean slices 1.00


def test_bias_follows_a_shift_of_the_model_output():
    net = inference.get_model(None, "cpu").model
    vol = crs.load_volume(crs.get_scan("epi"))
    # moderate motion, so that predictions +-0.15 stay inside [0, 1] (they are clipped there)
    bias = {s: crs.check_volume(vol, Shifted(net, s), seed=2, max_slices=2, severity=0.6,
                                name="epi", repeats=1)["bias"] for s in (-0.15, 0.0, 0.15)}
    # clean samples (read 1.0) clip at +0.15: 4 of the 6 samples move up, all 6 down
    assert bias[0.15] > bias[0.0] + 0.05 and bias[-0.15] < bias[0.0] - 0.1, bias
    assert bias[-0.15] < 0 < bias[0.15], bias


def test_script_writes_table_csv_json_markdown_and_png(tmp_path, c_locale):
    out = tmp_path / "real"
    rc = crs.main(["--scans", "epi", "--max-slices", "2", "--repeats", "1", "--out", str(out)])
    assert rc == 0
    with (out / "real_scans.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == crs.COLUMNS and rows[0]["scan"] == "epi"
    doc = json.loads((out / "real_scans.json").read_text(encoding="utf-8"))
    # scripts/bundle_model.py reads "volumes"
    assert set(doc["volumes"]) == {"epi"} and doc["largest_abs_bias"] == abs(
        doc["volumes"]["epi"]["bias"])
    assert "| epi | T2*-EPI |" in (out / "real_scans.md").read_text(encoding="utf-8")
    assert (out / "real_scans.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "samples.csv").open(encoding="utf-8") as f:
        samples = list(csv.DictReader(f))
    assert len(samples) == doc["volumes"]["epi"]["samples"]
    assert {s["simulator"] for s in samples} == {"clean", *crs.SIMULATORS}


def test_script_refuses_a_bad_model_and_an_unknown_scan(tmp_path, capsys):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x80\x04garbage")
    assert crs.main(["--model", str(fake), "--scans", "epi", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fake.safetensors" in err
    assert crs.main(["--scans", "nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_DIPY, reason="dipy not installed: its scans come with "
                    "requirements-eval.txt (make check-real)")
def test_dipy_scans_load_as_real_images():
    for s in crs.SCANS:
        if s.package != "dipy":
            continue
        vol = crs.load_volume(s)
        assert vol.array.ndim == 3 and np.isfinite(vol.array).all(), s.name
        assert vol.array.max() > vol.array.min(), s.name


def test_a_scan_whose_package_is_missing_is_skipped_or_refused(monkeypatch, tmp_path, capsys):
    ghost = crs.Scan("ghost", "motionssim_no_such_package", "data/x.nii.gz", "T1", "none", "none")
    monkeypatch.setattr(crs, "SCANS", (*crs.SCANS, ghost))
    told = []
    table = crs.real_scan_table(None, names=["epi", "ghost"], max_slices=1, repeats=1,
                                report=told.append)
    assert list(table) == ["epi"] and len(told) == 1 and "not installed" in told[0]
    # --require-all: refused in one line before anything is computed
    assert crs.main(["--scans", "epi,ghost", "--require-all", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "motionssim_no_such_package" in err
    assert not (tmp_path / "real_scans.json").exists()


def test_uncertainty_of_the_bundled_model_on_a_real_scan(tmp_path, c_locale):
    # --views: the head's sd (the bundled model has the head) beside the views' spread, on the
    # same samples, pooled and per scan, in the JSON and the Markdown
    out = tmp_path / "real"
    rc = crs.main(["--scans", "epi", "--max-slices", "3", "--repeats", "1", "--views", "2",
                   "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "real_scans.json").read_text(encoding="utf-8"))
    unc = doc["uncertainty"]
    assert set(unc) == {"2-view spread", "head (1 pass)"}
    n = doc["volumes"]["epi"]["samples"]
    for f in unc.values():
        assert f["n"] == n and 0.0 <= f["coverage"] <= 1.0 and f["mean_sd"] > 0
        assert set(f["scans"]) == {"epi"}
    text = (out / "real_scans.md").read_text(encoding="utf-8")
    assert "| head (1 pass) |" in text and "| 2-view spread |" in text
    # without --views the table has no uncertainty
    table = crs.real_scan_table(None, seed=0, names=["epi"], max_slices=2, repeats=1)
    assert crs.uncertainty_summary(table) is None


def test_the_model_reads_each_corrupted_slice_cut_to_its_own_window(monkeypatch):
    """The model reads a corrupted slice as the product does (`to_model_input` on the slice
    alone, whose ghosts move the window); the label keeps the clean slice's window."""
    from MotionSSIMLib.imaging import geometry

    moved, seen = [], []

    def corrupt(clean, simulator, severity, gen):
        out = clean.clone()
        out[..., :4, :] = 0.5 * clean.amax()  # a band of ghost at the top: the box grows
        moved.append(out[:, 0].numpy())
        return out

    def predict(net, dev, x, with_sd=False):
        seen.append(x.clone())
        pred = np.full(len(x), 0.5)
        return (pred, None) if with_sd else pred

    monkeypatch.setattr(crs, "_corrupt", corrupt)
    monkeypatch.setattr(crs, "_predict", predict)
    vol = crs.load_volume(crs.get_scan("epi"))
    r = crs.check_volume(vol, None, seed=0, max_slices=2, name="epi", repeats=1)
    (x,) = seen
    n = r["slices"]
    spacing = geometry.extract_slices(vol, "auto").pixel_spacing
    first = x[n:2 * n, 0].numpy()  # the first simulator's corrupted copies
    assert np.allclose(first, geometry.to_model_input(moved[0], spacing), atol=1e-6)
    # not cut to the window of the slice without its ghost band (as the label cuts it)
    unghosted = moved[0] * (np.arange(moved[0].shape[1]) >= 4)[None, :, None]
    framed = geometry.to_model_input(moved[0], spacing,
                                     windows=geometry.model_windows(unghosted, spacing))
    assert not np.allclose(first, framed, atol=1e-3)
