"""scripts/check_families.py and `evaluate --motion-families`: one motion family at a time."""

from __future__ import annotations

import argparse
import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_evaluation import _volume

from MotionSSIMLib.assessment.checkpoint import save_checkpoint
from MotionSSIMLib.assessment.model import build_model

spec = importlib.util.spec_from_file_location("check_families",
                                              ROOT / "scripts" / "check_families.py")
cf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cf)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two small test volumes and two tiny (untrained, 48 px) models."""
    d = tmp_path_factory.mktemp("families")
    rng = np.random.default_rng(4)
    (d / "data" / "test").mkdir(parents=True)
    for i in range(2):
        _volume(d / "data" / "test" / f"s{i}.nii.gz", rng)
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = d / f"m{seed}" / "best.safetensors"
        path.parent.mkdir()
        save_checkpoint(path, build_model("resnet18"), {"architecture": "resnet18",
                                                        "train_input_size": 48})
        ckpts.append(str(path))
    return {"dir": d, "data": str(d / "data"), "ckpts": ckpts}


def test_family_figures_by_hand():
    true = np.array([0.95, 0.90, 0.70, 0.65, 0.50, 0.40])
    pred = np.array([0.97, 0.80, 0.72, 0.66, 0.65, 0.45])
    f = cf.family_figures(pred, true)
    assert f["bias"] == pytest.approx(np.mean(pred - true))
    assert f["residual_sd"] == pytest.approx(np.std(pred - true, ddof=1))
    assert f["mae"] == pytest.approx(np.mean(np.abs(pred - true)))
    assert f["spearman"] == pytest.approx(1.0)  # same order
    assert f["recall"] == {"good": 0.5, "sufficient": 1.0, "insufficient": 0.5}
    assert f["support"] == {"good": 2, "sufficient": 2, "insufficient": 2}
    none = cf.family_figures(np.array([0.9, 0.95]), np.array([0.9, 0.97]))
    assert none["recall"]["insufficient"] is None and none["support"]["insufficient"] == 0


def test_table_per_family_and_model(setup, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--data", setup["data"], "--model", setup["ckpts"][0], "--model",
            setup["ckpts"][1], "--families", "epi,moves", "--n", "6", "--batch-size", "3",
            "--out", str(out)]
    assert cf.main(args) == 0
    result = json.loads((out / "families.json").read_text())
    assert list(result["families"]) == ["epi", "moves"]
    for per_model in result["families"].values():
        assert list(per_model) == ["m0/best", "m1/best"]
        for f in per_model.values():
            assert f["n"] == 6 and np.isfinite(f["bias"]) and f["residual_sd"] >= 0
            assert sum(f["support"].values()) == 6
    # every model reads the same slices: the truth is the model's figures' true mean
    epi = result["families"]["epi"]
    assert epi["m0/best"]["true_mean"] == epi["m1/best"]["true_mean"]
    # the same seed gives the same figures; the families differ in their truth
    assert cf.main(args) == 0
    assert json.loads((out / "families.json").read_text()) == result
    assert result["families"]["moves"]["m0/best"]["true_mean"] != epi["m0/best"]["true_mean"]
    text = (out / "families.md").read_text()
    assert "| epi | m0/best |" in text and "| moves | m1/best |" in text
    assert text in capsys.readouterr().out
    # the volumes may be given directly
    vols = sorted(str(p) for p in (setup["dir"] / "data" / "test").glob("*.nii.gz"))
    assert cf.main(["--volumes", *vols, "--model", setup["ckpts"][0], "--families", "epi",
                    "--n", "6", "--batch-size", "3", "--out", str(tmp_path / "o2")]) == 0
    direct = json.loads((tmp_path / "o2" / "families.json").read_text())["families"]["epi"]
    assert direct["best"] == epi["m0/best"]


def test_bad_inputs_are_refused_in_one_line(setup, tmp_path, capsys):
    bad_model = tmp_path / "not_a_model.safetensors"
    bad_model.write_text("hello")
    base = ["--data", setup["data"], "--model", setup["ckpts"][0], "--n", "2"]
    cases = [(base + ["--families", "epi,warp"], "unknown motion family 'warp'"),
             (["--data", setup["data"], "--model", str(bad_model)], "not_a_model"),
             (["--data", str(tmp_path / "missing"), "--model", setup["ckpts"][0]], "missing"),
             (base + ["--out", str(bad_model)], "not a folder")]
    for args, words in cases:
        capsys.readouterr()
        assert cf.main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("check_families: error:") and words in err[-1], err
    for args in (base + ["--n", "0"], ["--model", setup["ckpts"][0]]):
        with pytest.raises(SystemExit) as exc:
            cf.main(args)
        assert exc.value.code == 2


def test_evaluate_one_family(setup, tmp_path, c_locale):
    from MotionSSIMLib.training import training_cli

    parser = argparse.ArgumentParser()
    training_cli.add_evaluate_arguments(parser)
    out = tmp_path / "report"
    args = parser.parse_args(["--data", setup["data"], "--checkpoint", setup["ckpts"][0],
                              "--out", str(out), "--n", "6", "--batch-size", "3",
                              "--no-progress", "--device", "cpu", "--motion-families", "epi"])
    assert training_cli.run_evaluate(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocol"]["motion_families"] == "epi"
    assert "motion families epi" in (out / "report.md").read_text(encoding="utf-8")
    # the figures are check_families' for that family
    f = cf.measure({"m": build_model("resnet18").eval()}, [str(p) for p in sorted(
        (setup["dir"] / "data" / "test").glob("*.nii.gz"))], ["epi"], n=6, input_size=48,
        batch_size=3)
    assert f["epi"]["m"]["true_mean"] == pytest.approx(
        rep["models"]["best"]["figures"]["regression"]["true_mean"], abs=1e-6)
