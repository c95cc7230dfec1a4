"""scripts/leave_one_out.py: the runs it starts and the table it writes (the runs themselves
are the training CLI's, tested in test_trainer; the readings are check_families')."""

from __future__ import annotations

import importlib.util
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
spec = importlib.util.spec_from_file_location("leave_one_out",
                                              ROOT / "scripts" / "leave_one_out.py")
lofo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lofo)


def test_each_run_leaves_out_exactly_one_family_of_the_v3_mix():
    from MotionSSIMLib.base.settings import V3_MOTION_FAMILIES, parse_families

    full = parse_families(V3_MOTION_FAMILIES)
    assert parse_families(lofo.mix_without(None)) == full
    for family in lofo.SCANNER_FAMILIES:
        mix = parse_families(lofo.mix_without(family))
        assert family not in mix and {**mix, family: full[family]} == full


def test_a_run_starts_from_the_base_and_resumes_its_own_state(tmp_path):
    out = tmp_path / "without_epi"
    cmd = lofo.train_command("split.json", "v2.safetensors", out, "torchio,kspace", 3200, 0,
                             3e-4, 2)
    assert cmd[cmd.index("--init-from") + 1] == "v2.safetensors" and "--resume" not in cmd
    assert cmd[cmd.index("--samples-per-epoch") + 1] == "1600"
    assert cmd[cmd.index("--epochs") + 1] == "2"
    assert cmd[cmd.index("--motion-families") + 1] == "torchio,kspace"
    out.mkdir()
    (out / "state.pt").write_bytes(b"")
    resumed = lofo.train_command("split.json", "v2.safetensors", out, "torchio", 3200, 0,
                                 3e-4, 2)
    assert "--resume" in resumed and "--init-from" not in resumed
    assert not lofo.finished(out)
    (out / "log.json").write_text(json.dumps({"status": "finished"}))
    assert lofo.finished(out)


def test_table_marks_the_target():
    def fig(bias):
        return {"bias": bias, "residual_sd": 0.05, "recall": {"insufficient": 0.5}}

    result = {"base": "/m/v2.safetensors", "samples": 3200, "n": 200, "seed": 0,
              "families": {"epi": {"base": fig(0.1), "without": fig(0.03), "control": fig(0.0)},
                           "moves": {"base": fig(0.05), "without": fig(-0.01),
                                     "control": fig(0.0)}}}
    text = lofo.markdown(result)
    assert "| epi | +0.100 / 0.050 / 0.50 | +0.030 / 0.050 / 0.50 | +0.000" in text
    assert text.splitlines()[-2].endswith("| no |") and text.splitlines()[-1].endswith("| yes |")
