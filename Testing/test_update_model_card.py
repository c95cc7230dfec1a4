"""scripts/update_model_card.py and the card's results sections (bundle_model.results_lines):
measured results go into the bundled file's metadata, the weights stay as they were."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from MotionSSIMLib.assessment.checkpoint import default_model_path, load_checkpoint
from MotionSSIMLib.training import invariance

sys.path.insert(0, str(ROOT / "scripts"))
spec = importlib.util.spec_from_file_location("update_model_card",
                                              ROOT / "scripts" / "update_model_card.py")
umc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(umc)


def phantom() -> np.ndarray:
    """One head-like slice: an ellipse with an inner ring and a bright spot."""
    yy, xx = np.mgrid[:160, :160] / 160.0 - 0.5
    r = (yy / 0.42) ** 2 + (xx / 0.34) ** 2
    img = np.where(r < 1, 0.6, 0.0) + np.where((r > 0.5) & (r < 0.6), 0.3, 0.0)
    img += np.where((yy - 0.1) ** 2 + (xx + 0.05) ** 2 < 0.003, 0.4, 0.0)
    return img[None].astype(np.float32)


@pytest.fixture()
def bundled_copy(tmp_path):
    model = tmp_path / "models" / default_model_path().name
    model.parent.mkdir()
    shutil.copy(default_model_path(), model)
    return model


def lofo_table() -> dict:
    def fig(bias):
        return {"bias": bias, "residual_sd": 0.05, "recall": {"insufficient": 0.75}}

    return {"base": "/m/v2.safetensors", "samples": 2400, "n": 150, "seed": 0,
            "target_bias": 0.02,
            "families": {"epi": {"base": fig(0.1), "without": fig(0.03), "control": fig(0.01)}}}


def test_results_go_into_the_metadata_and_the_card_and_the_weights_stay(bundled_copy, tmp_path,
                                                                        capsys):
    reading = invariance.measure(phantom(), lambda im, sp: np.full(len(im), 0.8),
                                 cases=[("kspace", 0.5)])
    inv = tmp_path / "invariance.json"
    inv.write_text(json.dumps({str(tmp_path / "other.safetensors"): {"cases": []},
                               str(bundled_copy): reading}))
    lofo = tmp_path / "leave_one_out.json"
    lofo.write_text(json.dumps(lofo_table()))
    before = load_checkpoint(bundled_copy)
    assert umc.main(["--model", str(bundled_copy), "--invariance", str(inv),
                     "--leave-one-out", str(lofo)]) == 0
    assert "with invariance, leave_one_out" in capsys.readouterr().out
    after = load_checkpoint(bundled_copy)
    for (name, a), (_, b) in zip(before.model.state_dict().items(),
                                 after.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert after.metadata["invariance"]["cases"][0]["simulator"] == "kspace"
    assert after.metadata["leave_one_out"]["families"]["epi"]["without"]["bias"] == 0.03
    assert after.metadata["uncertainty"]["kind"] == before.metadata["uncertainty"]["kind"]
    card = (bundled_copy.parent / "MODEL_CARD.md").read_text()
    assert "## Matrix invariance" in card and "| kspace | 0.5 | prediction | 0.800 |" in card
    assert "| epi | +0.100 / 0.050 / 0.75 | +0.030 / 0.050 / 0.75 |" in card
    assert card.index("## Uncertainty") < card.index("## Matrix invariance") \
        < card.index("## Known limits")
    side = json.loads((bundled_copy.parent / "motionssim_resnet18.json").read_text())
    assert side["leave_one_out"]["n"] == 150


def test_notes_become_a_section_of_the_card(bundled_copy, tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("## On another test set\n\nresidual sd 0.0794\n", encoding="utf-8")
    assert umc.main(["--model", str(bundled_copy), "--notes", str(notes)]) == 0
    assert "notes" in capsys.readouterr().out
    meta = load_checkpoint(bundled_copy).metadata
    assert meta["notes"] == "## On another test set\n\nresidual sd 0.0794"
    card = (bundled_copy.parent / "MODEL_CARD.md").read_text()
    assert card.index("## On another test set") < card.index("## Known limits")
    notes.write_bytes(b"\xff\xfe not text")
    assert umc.main(["--model", str(bundled_copy), "--notes", str(notes)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {notes}: cannot be read (not UTF-8 text)"


def test_a_table_without_this_model_or_not_a_table_is_a_one_line_error(bundled_copy, tmp_path,
                                                                      capsys):
    inv = tmp_path / "invariance.json"
    inv.write_text(json.dumps({str(tmp_path / "other.safetensors"): {"cases": []}}))
    size = bundled_copy.stat().st_size
    assert umc.main(["--model", str(bundled_copy), "--invariance", str(inv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {inv}: no reading of {bundled_copy}") and "\n" not in err
    bad = tmp_path / "lofo.json"
    bad.write_text("[1, 2]")
    assert umc.main(["--model", str(bundled_copy), "--leave-one-out", str(bad)]) == 2
    assert "not a table of scripts/leave_one_out.py" in capsys.readouterr().err
    assert bundled_copy.stat().st_size == size and not (bundled_copy.parent /
                                                         "MODEL_CARD.md").exists()
