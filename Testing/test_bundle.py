"""scripts/bundle_model.py: the decision rule for bundling, its refusal and override, the card.

Real parts throughout: two tiny training phases, a deliberately damaged copy of their model as
the worse one, evaluation reports and real-scan tables made here with the real commands.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ROOT

from MotionSSIMLib.assessment.checkpoint import DEFAULT_MODEL_NAME, load_checkpoint, save_checkpoint
from MotionSSIMLib.training.evaluation import evaluate_checkpoints
from MotionSSIMLib.training.trainer import TrainSettings, train


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bundle = _load("bundle_model")
crs = _load("check_real_scans")
N = 32  # synthetic test slices (the rule's 10,000 lowered with --min-slices)
REAL = ["--scans", "anat_t1", "--max-slices", "2", "--repeats", "1"]  # a quick real-scan table


def _volume(path: Path, rng: np.random.Generator, shape, spacing) -> str:
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (k / 0.9) ** 2 + (j / 0.8) ** 2 + (i / 0.7) ** 2 < 1
    tex = rng.random(shape) * 0.3 + 0.7 + 0.5 * np.sin(6 * j + rng.random()) * np.cos(5 * i)
    img = sitk.GetImageFromArray(np.where(inside, 100 * tex, 0).astype(np.float32))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two phases (the second fine-tuned from the first's best) and a damaged copy of the
    second's model (`worse.safetensors` in its folder: noisy output layer, output shifted away
    from the truth on the real scan)."""
    d = tmp_path_factory.mktemp("bundle")
    rng = np.random.default_rng(1)
    train_v = [_volume(d / f"t{i}.nii.gz", rng, (12, 48, 48), (1.0, 1.0, 3.0)) for i in range(2)]
    val_v = [_volume(d / "v.nii.gz", rng, (12, 48, 48), (1.0, 1.0, 3.0))]
    base = dict(samples_per_epoch=16, batch_size=8, input_size=48, val_samples=8, workers=0,
                progress=False, p_torchio=0.0, checkpoint_every=0, seed=3, bn_calibration=8)
    p1, p2 = d / "phase1", d / "phase2"
    train(TrainSettings(epochs=2, **base), p1, train_v, val_v)
    train(TrainSettings(epochs=2, lr=2e-4, init_from=str(p1 / "best.safetensors"), **base),
          p2, train_v, val_v)
    # Phase 2's best, its output spread cut 100-fold about 0.5 (saved in place): two tiny
    # epochs can read outside the accepted raw range on the bundled sample (on some CPUs'
    # arithmetic), and bundle_model rightly refuses such a model as broken.
    tamed = load_checkpoint(p2 / "best.safetensors")
    with torch.no_grad():
        tamed.model.fc.weight.mul_(0.01)
        tamed.model.fc.bias.fill_(0.5)
    save_checkpoint(p2 / "best.safetensors", tamed.model, tamed.metadata)
    good = load_checkpoint(p2 / "best.safetensors")
    bad = load_checkpoint(p2 / "best.safetensors")
    # Worse by construction on the fixture's own test slices, whatever floating-point path the
    # CPU took in the tiny training: the output is stretched about its mean, p' = p + k (p - m).
    # The residual r' = r + k (p - m) has var(r') = var(r) + k^2 var(p) + 2 k cov(r, p); k with
    # the sign of cov(r, p) makes that at least var(r) + k^2 var(p), and |k| sets the added
    # spread k * sd(p) to 0.15. (Noise added to the weights, as before, made it worse on one
    # CPU and better on another.)
    ev = evaluate_checkpoints([p2 / "best.safetensors"], val_v, d / "premise", n=N,
                              batch_size=16, progress=False)
    p = next(iter(ev.predictions.values())).astype(np.float64)
    r = p - ev.true
    m, sd_p = float(p.mean()), float(p.std())
    assert sd_p > 1e-6, f"premise: the tiny model's output is constant on the test slices ({p})"
    k = (1.0 if np.cov(r, p)[0, 1] >= 0 else -1.0) * max(1.0, 0.15 / sd_p)
    fc = bad.model.fc
    with torch.no_grad():
        fc.weight.mul_(1.0 + k)
        fc.bias.mul_(1.0 + k).sub_(k * m)
    # The tiny model is far off on the real scan: shift the damaged copy so that it reads 0.2
    # further off than the tiny model does (a shift moves neither the residual sd nor, but for
    # clamping at 0 and 1, the real-scan spread; clamping is why it is iterated and checked).
    def real_bias(model) -> float:
        return crs.real_scan_table(model, names=["anat_t1"], max_slices=2,
                                   repeats=1)["anat_t1"]["bias"]

    target = real_bias(good.model)
    target += 0.2 if target >= 0 else -0.2
    for _ in range(3):
        with torch.no_grad():
            fc.bias.add_(target - real_bias(bad.model))
    assert abs(real_bias(bad.model)) >= abs(target) - 0.1, (
        f"premise: the damaged model's real-scan bias {real_bias(bad.model):+.3f} is not "
        f"further off than the tiny model's {target:+.3f} -/+ 0.2")
    save_checkpoint(p2 / "worse.safetensors", bad.model, bad.metadata)
    both = evaluate_checkpoints([p2 / "best.safetensors", p2 / "worse.safetensors"], val_v,
                                d / "premise2", n=N, batch_size=16, progress=False)
    sd = [f["figures"]["regression"]["residual_sd"] for f in both.report["models"].values()]
    assert sd[1] > sd[0] + 0.01, f"premise: residual sd damaged {sd[1]:.4f} vs tiny {sd[0]:.4f}"
    return {"dir": d, "p1": p1, "p2": p2, "val": val_v, "good": good, "bad": bad}


def _setup(runs, tmp: Path, bundled: str, candidate: str) -> dict:
    """OUT holding `bundled` (fp16, as the script writes it) and one report with both models."""
    out = tmp / "models"
    out.mkdir()
    target = out / DEFAULT_MODEL_NAME
    src = runs["good" if bundled == "best" else "bad"]
    save_checkpoint(target, src.model, src.metadata, dtype=torch.float16)
    cand = runs["p2"] / f"{candidate}.safetensors"
    report = evaluate_checkpoints([target, cand], runs["val"], tmp / "eval", n=N, batch_size=16,
                                  progress=False)
    names = list(report.report["models"])
    sd = [report.report["models"][nm]["figures"]["regression"]["residual_sd"] for nm in names]
    return {"out": out, "target": target, "cand": cand, "sd_old": sd[0], "sd_new": sd[1],
            "eval": tmp / "eval", "names": names}


def _real_json(model: Path, out: Path) -> Path:
    assert crs.main(["--model", str(model), "--out", str(out), *REAL]) == 0
    return out / "real_scans.json"


def _args(runs, s: dict, *extra: str) -> list[str]:
    return ["--run", str(runs["p2"]), "--evaluation", str(s["eval"]), "--out", str(s["out"]),
            "--curve", str(runs["p1"]), "--min-slices", str(N), *extra]


def test_the_rule_on_its_figures():
    ok, why = bundle.decide(0.05, 0.04, ("a", 0.06), ("b", 0.06), 10000)
    assert ok and "0.0400 is lower than the bundled model's 0.0500" in why and "no worse" in why
    ok, why = bundle.decide(0.05, 0.05, ("a", 0.06), ("b", 0.01), 10000)
    assert not ok and why == ("synthetic residual sd 0.0500 is not lower than the bundled "
                              "model's 0.0500 (10000 slices)"), "an equal sd is not lower"
    ok, why = bundle.decide(0.05, 0.04, ("a", 0.06), ("b", 0.0601), 10000)
    assert not ok and why == ("largest real-scan |bias| 0.0601 (b) is worse than the bundled "
                              "model's 0.0600 (a)"), "digits added until the figures differ"
    ok, why = bundle.decide(0.03, 0.04, ("a", 0.02), ("b", 0.05), 10000)
    assert not ok and "not lower" in why and "is worse" in why and "\n" not in why


def test_a_better_candidate_replaces_the_bundled_model(runs, tmp_path, c_locale):
    s = _setup(runs, tmp_path, bundled="worse", candidate="best")
    new_j = _real_json(s["cand"], tmp_path / "real_new")
    old_j = _real_json(s["target"], tmp_path / "real_old")
    new_t = json.loads(new_j.read_text())["volumes"]
    old_t = json.loads(old_j.read_text())["volumes"]
    # The premise, from the real figures: the damaged model is worse on both counts.
    assert s["sd_new"] < s["sd_old"]
    assert crs.largest_abs_bias(new_t) <= crs.largest_abs_bias(old_t)
    rc = bundle.main(_args(runs, s, "--real-scans", str(new_j), "--old-real-scans", str(old_j),
                           "--phases", str(_phases(tmp_path))))
    assert rc == 0
    bundled = load_checkpoint(s["target"])
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(bundled.model(x), runs["good"].model(x), atol=2e-2)
    meta = bundled.metadata
    assert meta["bundling"]["passed"] is True and meta["bundling"]["forced"] is False
    assert meta["bundling"]["residual_sd"]["candidate"] == pytest.approx(s["sd_new"])
    assert meta["settings"]["seed"] == 3 and meta["evaluation"]["n"] == N
    assert meta["real_scans"]["anat_t1"]["bias"] == pytest.approx(new_t["anat_t1"]["bias"])
    card = (s["out"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Passed: this model replaced the previously bundled one" in card
    # the card is rewritten per model; the training history of all of them is linked, not lost
    assert "[MODEL_HISTORY.md](MODEL_HISTORY.md)" in card
    assert "| figure | this model | previously bundled |" in card
    assert f"| residual sd | {s['sd_new']:.4f} | {s['sd_old']:.4f} |" in card
    assert "| accuracy, 10 classes |" in card and "Cohen's kappa" in card
    o, n = old_t["anat_t1"], new_t["anat_t1"]
    assert (f"| anat_t1 | {n['matrix']} | {n['slices']} ({n['samples']}) | {n['bias']:+.3f} / "
            f"{o['bias']:+.3f} | {n['residual_sd']:.3f} / {o['residual_sd']:.3f} | "
            f"{n['clean_mean_prediction']:.3f} / {o['clean_mean_prediction']:.3f} |") in card
    # per-class recall: synthetic (the evaluation's clinical table) and per real scan
    assert "| recall, truly good |" in card and "| recall, truly insufficient |" in card
    assert {"recall_good", "recall_sufficient", "recall_insufficient"} <= set(n)
    assert f"| {bundle._recalls(n)} ({bundle._recalls(o)}) | {n['insufficient_read_good']} |" \
        in card
    # the test set's storage share reaches the metadata; none stored: the card says nothing
    assert meta["evaluation"]["protocol"]["storage"] == 0.0 and "stored at a lower" not in card
    # the protocol from the JSON, not the old "three times"
    assert "three times" not in card and "(kspace and torchio) once" in card
    assert "1. two tiny phases" in card and "Previously bundled model: mean absolute" in card
    png = s["out"] / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](learning_curve.png)" in card
    # Both phases on one axis: phase 2 starts where phase 1's best checkpoint was taken.
    p1, p2 = meta["learning_curve"]
    best1 = json.loads((runs["p1"] / "log.json").read_text())["best_epoch"]
    assert p1["offset"] == 0 and p1["end"] == 2 * 16
    assert p2["offset"] == best1 * 16 and p2["bundled"] and not p1["bundled"]
    assert f"| 2 (bundled) | `phase2` | {best1 * 16:,} - {best1 * 16 + 32:,} |" in card
    assert json.loads((s["out"] / "motionssim_resnet18.json").read_text())["bundling"]["passed"]
    # earlier phases whose folders are gone shift the whole curve
    shifted = bundle.learning_curve([runs["p1"], runs["p2"]], None, runs["p2"], samples_before=1000)
    assert [p["offset"] for p in shifted] == [1000, 1000 + best1 * 16]


def test_the_card_names_a_stored_test_set():
    assert bundle.stored_phrase({"storage": 0.0}) == bundle.stored_phrase({}) == ""
    said = bundle.stored_phrase({"storage": 0.5})
    assert said.startswith("; 50% of them stored at a lower matrix") and "--storage" in said


def _phases(tmp: Path) -> Path:
    p = tmp / "phases.md"
    p.write_text("1. two tiny phases", encoding="utf-8")
    return p


def test_a_worse_candidate_is_refused_in_one_line_and_nothing_is_written(runs, tmp_path,
                                                                         capsys):
    s = _setup(runs, tmp_path, bundled="best", candidate="worse")
    before = s["target"].read_bytes()
    # No JSON: the tables are computed with real_scan_table, for both models alike.
    rc = bundle.main(_args(runs, s, "--checkpoint", "worse.safetensors", *REAL))
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refused: "), err
    new, old = bundle._pair(s["sd_new"], s["sd_old"])
    assert f"synthetic residual sd {new} is not lower than the bundled model's {old}" in err[0]
    assert "--force" in err[0]
    assert s["target"].read_bytes() == before
    assert sorted(p.name for p in s["out"].iterdir()) == [DEFAULT_MODEL_NAME]


def test_force_overrides_the_rule_and_the_card_says_so(runs, tmp_path, capsys):
    s = _setup(runs, tmp_path, bundled="best", candidate="worse")
    new_j = _real_json(s["cand"], tmp_path / "real_new")
    old_j = _real_json(s["target"], tmp_path / "real_old")
    rc = bundle.main(_args(runs, s, "--checkpoint", "worse.safetensors", "--force",
                           "--real-scans", str(new_j), "--old-real-scans", str(old_j)))
    assert rc == 0
    assert "overridden" in capsys.readouterr().out
    meta = load_checkpoint(s["target"]).metadata
    assert meta["bundling"]["passed"] is False and meta["bundling"]["forced"] is True
    card = (s["out"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "**The rule was overridden (`--force`)**" in card
    assert re.search(r"residual sd [0-9.]+ is not lower than the bundled model's", card)
    assert (s["out"] / "learning_curve.png").is_file()


def test_bad_inputs_are_one_line_errors(runs, tmp_path, capsys):
    s = _setup(runs, tmp_path, bundled="worse", candidate="best")
    new_j = _real_json(s["cand"], tmp_path / "real_new")
    old_j = _real_json(s["target"], tmp_path / "real_old")
    before = s["target"].read_bytes()
    cases = [
        # fewer slices than the rule needs
        (["--run", str(runs["p2"]), "--evaluation", str(s["eval"]), "--out", str(s["out"]),
          "--real-scans", str(new_j), "--old-real-scans", str(old_j)], "needs at least 10000"),
        # the two tables swapped: each names the other model
        (_args(runs, s, "--real-scans", str(old_j), "--old-real-scans", str(new_j)),
         "not the candidate"),
        (_args(runs, s, "--real-scans", str(new_j)), "of both models"),
        # a report without the bundled model
        (_args(runs, s, "--evaluation", str(tmp_path / "none")), "report.json: no such file"),
    ]
    other = evaluate_checkpoints([s["cand"]], runs["val"], tmp_path / "one", n=N,
                                 progress=False)
    assert len(other.report["models"]) == 1
    cases.append((_args(runs, s, "--real-scans", str(new_j), "--old-real-scans", str(old_j))
                  + ["--evaluation", str(tmp_path / "one")], "no evaluation of the bundled"))
    for argv, message in cases:
        assert bundle.main(argv) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert s["target"].read_bytes() == before
