"""The GPU campaign (scripts/gpu_campaign.py) dry-run end to end on the CPU at a tiny scale,
on a machine that lacks torchio and SimpleITK (as the GPU machine does), then its shards
joined into one checkpoint (scripts/join_shards.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

# The GPU machine has neither package: importing either must fail in the dry run too.
GUARD = """
import runpy, sys
sys.modules["torchio"] = None
sys.modules["SimpleITK"] = None
sys.argv = ["gpu_campaign.py"] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("campaign")
    carry = tmp / "carry"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "2"}
    env.pop("MOTIONSSIM_TEMPLATE_DIR", None)
    subprocess.run([sys.executable, str(SCRIPTS / "gpu_campaign.py"), "prepare", "--carry",
                    str(carry), "--no-download"], check=True, env=env, capture_output=True)
    out = tmp / "out"
    code = GUARD.format(script=str(SCRIPTS / "gpu_campaign.py"))
    proc = subprocess.run([sys.executable, "-c", code, "run", "--device", "cpu", "--tiny",
                           "--carry", str(carry), "--out", str(out)],
                          env=env, capture_output=True, text=True, encoding="utf-8",
                          timeout=900)
    return {"tmp": tmp, "carry": carry, "out": out, "proc": proc}


def test_dry_run_writes_at_most_8_small_files_without_torchio_or_simpleitk(campaign):
    proc, out = campaign["proc"], campaign["out"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 << 20 for f in files)
    assert {"manifest.json", "train_log.csv", "report.md", "report.json",
            "campaign.log"} <= set(files)
    log = (out / "campaign.log").read_text(encoding="utf-8")
    assert "warning" not in log, log
    assert "samples/s" in log and "evaluation" in log
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["parts"]) >= 2, "an fp16 ResNet-18 (22 MB) needs two 15 MiB shards"
    m = manifest["measured"]
    assert m["steps"] == 4 and m["samples_per_s"] > 0 and m["status"] == "finished"
    assert manifest["plan"]["init_from"] == "motionssim_resnet18.safetensors"
    # the model v3 recipe: every motion family, the whole network trained
    from MotionSSIMLib.base.settings import V3_MOTION_FAMILIES, V3_STORAGE

    assert manifest["plan"]["motion_families"] == V3_MOTION_FAMILIES
    assert manifest["plan"]["freeze"] == 0
    assert manifest["plan"]["storage"] == V3_STORAGE > 0
    assert 0 <= manifest["evaluation"]["mae"] < 1
    assert manifest["evaluation"]["n"] == json.loads(
        (out / "report.json").read_text(encoding="utf-8"))["protocol"]["n"]


def test_shards_join_into_a_verified_checkpoint_and_damage_is_refused(campaign, tmp_path):
    out = campaign["out"]
    target = tmp_path / "joined.safetensors"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "join_shards.py"), str(out),
                           str(target)], capture_output=True, text=True, encoding="utf-8")
    assert proc.returncode == 0, proc.stderr
    from MotionSSIMLib.assessment.checkpoint import load_checkpoint

    ck = load_checkpoint(target)
    assert ck.metadata["architecture"] == "resnet18"
    assert ck.metadata["trained_on"]["campaign"] is True
    # one flipped byte in a shard: refused in one line, no model file written
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for p in out.iterdir():
        (damaged / p.name).write_bytes(p.read_bytes())
    part = damaged / json.loads((out / "manifest.json").read_text())["parts"][1]["file"]
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    bad = tmp_path / "bad.safetensors"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "join_shards.py"), str(damaged),
                           str(bad)], capture_output=True, text=True, encoding="utf-8")
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not bad.exists()


def test_campaign_script_fits_the_device_tool():
    # the device tool takes a command line of at most 2,000 characters and the shell wrapper
    # must need no edits: it passes $OUT through and names the carried folder's default
    sh = (SCRIPTS / "gpu_campaign.sh").read_text(encoding="utf-8")
    assert 'run --out "$OUT"' in sh and (SCRIPTS / "gpu_campaign.sh").stat().st_mode & 0o111
    assert "/campaign_carry/" in (ROOT / ".gitignore").read_text(encoding="utf-8")
