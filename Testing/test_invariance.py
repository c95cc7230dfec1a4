"""The matrix invariance check (MotionSSIMLib.training.invariance, scripts/check_invariance.py)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import ROOT

from MotionSSIMLib.training import invariance

spec = importlib.util.spec_from_file_location("check_invariance",
                                              ROOT / "scripts" / "check_invariance.py")
ci = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ci)


@pytest.fixture(scope="module")
def slices() -> np.ndarray:
    try:
        return invariance.template_slices((90,))
    except FileNotFoundError:
        pytest.skip("nilearn (MNI152 template) not installed")


def test_a_reading_that_follows_the_matrix_fails_and_a_steady_one_passes(slices):
    cases = [("kspace", 0.5)]
    steady = invariance.measure(slices, lambda images, sp: np.full(len(images), 0.7), cases)
    assert steady["passed"]
    moves = steady["cases"][0]["prediction"]["largest_move"]
    assert set(moves) == {"64", "96", "128", "180", "512", "padded"}
    assert max(moves.values()) == 0.0
    # reads 0.2 higher below 128 px, as a model that takes blur for quality would
    blur = invariance.measure(
        slices, lambda images, sp: np.full(len(images), 0.9 if sp[0] > 1.9 else 0.7), cases)
    assert not blur["passed"] and blur["cases"][0]["label"]["passed"]
    bad = blur["cases"][0]["prediction"]
    assert bad["largest_move"]["64"] == pytest.approx(0.2) and not bad["passed"]
    assert "| kspace | 0.5 | prediction |" in invariance.markdown(blur)


def test_script_writes_its_tables_and_exit_status_follows_them(slices, tmp_path, capsys):
    code = ci.main(["--slices", "90", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "invariance.json").read_text())
    (only,) = result.values()
    assert code == (0 if only["passed"] else 1)
    assert len(only["cases"]) == 4 and all("prediction" in c for c in only["cases"])
    assert (tmp_path / "invariance.md").read_text() in capsys.readouterr().out


def test_script_error_is_one_line(capsys):
    assert ci.main(["--slices", "900"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("check_invariance: error:") and "\n" not in err


def test_motion_acquired_at_each_matrix_is_read_against_its_own_label(slices):
    const = invariance.acquired(slices, lambda images, sp: np.full(len(images), 0.9),
                                cases=[("kspace", 0.5)], matrices=(64, 256), seeds=(0, 1))
    (case,) = const["cases"]
    small, ref = case["matrices"]["64"], case["matrices"]["256"]
    assert 0.0 < small["label"] < 1.0 and 0.0 < ref["label"] < 1.0
    # a constant reading: bias = reading - mean label, no scatter beyond the labels' own
    for m in (small, ref):
        assert m["bias"] == pytest.approx(0.9 - m["label"], abs=1e-9)
    # the motion was simulated at each matrix, so the two labels are not the same numbers
    assert small["label"] != ref["label"]
    # matrix 256 is make_pair's own reference pair with the same seed
    clean, corrupted, sp = invariance.make_pair(slices, "kspace", 0.5, 0)
    from MotionSSIMLib.simulation import ssim

    first = ssim.slice_label(clean, corrupted, (sp, sp))
    clean1, corrupted1, _ = invariance.make_pair(slices, "kspace", 0.5, 1)
    second = ssim.slice_label(clean1, corrupted1, (sp, sp))
    assert ref["label"] == pytest.approx(np.concatenate([first, second]).mean())
    assert "| kspace | 0.5 | " in invariance.acquired_markdown(const)


def test_script_adds_the_acquired_table_on_request(slices, tmp_path, capsys):
    ci.main(["--slices", "90", "--acquired", "--out", str(tmp_path)])
    found = json.loads((tmp_path / "acquired.json").read_text())
    (only,) = found.values()
    assert [c["simulator"] for c in only["cases"]] == ["kspace", "kspace", "torchio", "torchio"]
    assert set(only["cases"][0]["matrices"]) == {"64", "128", "256"}
    assert "motion acquired at the matrix" in capsys.readouterr().out


def test_ghosts_on_a_zero_background_leave_the_head_window_in_place(slices, monkeypatch):
    """The head box's tissue floor (`geometry.HEAD_TISSUE_SHARE`): the MNI template's
    background is exactly zero, and without the floor the faint ghosts of severe motion set the
    corrupted slice's threshold, so its window grew by a quarter or more; with it the window
    stays within 10 % of the clean slice's."""
    from MotionSSIMLib.imaging import geometry

    side = lambda w: w[1] - w[0]  # noqa: E731
    growth, floor = {}, geometry.HEAD_TISSUE_SHARE
    for share in (floor, 0.0):
        monkeypatch.setattr(geometry, "HEAD_TISSUE_SHARE", share)
        worst = 0.0
        for simulator in ("kspace", "torchio"):
            clean, corrupted, _ = invariance.make_pair(slices, simulator, 0.7)
            for c, x in zip(geometry.model_windows(clean), geometry.model_windows(corrupted),
                            strict=True):
                worst = max(worst, side(x) / side(c) - 1.0)
        growth[share] = worst
    assert growth[0.0] > 0.2, growth        # the failure the floor removes
    assert growth[floor] < 0.1, growth
