"""Archives: BIDS discovery, entities, shards, resume, the background reader, bad files listed."""

import csv
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from MotionSSIMLib.archives import archive, manifest
from MotionSSIMLib.archives.archive import Prefetch
from MotionSSIMLib.archives.discovery import Scan, bids_entities, discover
from MotionSSIMLib.archives.manifest import (
    fingerprint,
    finished,
    parse_shard,
    select_shard,
    shard_of,
)
from MotionSSIMLib.assessment.checkpoint import save_checkpoint
from MotionSSIMLib.assessment.model import build_model
from MotionSSIMLib.base.errors import InputError, SettingsError
from MotionSSIMLib.cli import main

ROOT = Path(__file__).resolve().parents[1]


def varied_model(path: Path) -> Path:
    """A resnet18 whose output moves with the input, inside the accepted raw range: a random
    network whose last layer is set, by an affine map of its output, to read 0.40-0.65 over the
    model inputs of the test heads (`head`, noise 0.5-60); by construction, whatever path the
    CPU's arithmetic takes."""
    from MotionSSIMLib.imaging.geometry import extract_slices, to_model_input
    from MotionSSIMLib.imaging.io import read_volume

    torch.manual_seed(1)
    net = build_model("resnet18").eval()
    rng = np.random.default_rng(5)
    inputs = []
    for noise in (0.5, 1.0, 20.0, 41.0, 60.0):  # the noise levels the tests' heads have
        write_nifti(path.parent / "calibration.nii.gz", head(rng, (40, 44, 5), noise))
        st = extract_slices(read_volume(path.parent / "calibration.nii.gz"), "auto")
        inputs.append(to_model_input(st.images, st.pixel_spacing))
    (path.parent / "calibration.nii.gz").unlink()
    x = np.concatenate(inputs)
    with torch.no_grad():
        out = net(torch.from_numpy(x)[:, None]).flatten()
        lo, hi = float(out.min()), float(out.max())
        assert hi > lo, "the random network reads every test head alike"
        scale = 0.25 / (hi - lo)
        net.fc.weight.mul_(scale)
        net.fc.bias.mul_(scale).add_(0.40 - lo * scale)
    save_checkpoint(path, net, {"architecture": "resnet18"})
    return path


def head(rng, shape, noise=1.0):
    a = rng.normal(5, noise, shape).astype(np.float32)
    a[8:32, 8:36, 1:4, ...] += 300
    return a


def write_nifti(path: Path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 5.0, 1.0])), path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return varied_model(tmp_path_factory.mktemp("m") / "varied.safetensors")


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    """Two subjects, anat (3D T1w) and dwi (4D, 2 frames), one broken file, derivatives."""
    root = tmp_path_factory.mktemp("ds") / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    rng = np.random.default_rng(0)
    for n, sub in enumerate(("01", "02")):
        write_nifti(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz",
                    head(rng, (40, 44, 5), 1 + 40 * n))
        write_nifti(root / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi.nii.gz",
                    head(rng, (40, 44, 5, 2), 20))
        (root / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi.json").write_text("{}")
    (root / "sub-02" / "anat" / "sub-02_run-2_T1w.nii.gz").write_bytes(b"not gzip at all")
    write_nifti(root / "derivatives" / "proc" / "sub-01_desc-x_T1w.nii.gz",
                head(rng, (40, 44, 5)))
    (root / ".hidden").mkdir()
    write_nifti(root / ".hidden" / "x.nii.gz", head(rng, (40, 44, 5)))
    return root


EXPECTED_KEYS = ["sub-01/anat/sub-01_T1w", "sub-01/dwi/sub-01_dwi", "sub-02/anat/sub-02_T1w",
                 "sub-02/anat/sub-02_run-2_T1w", "sub-02/dwi/sub-02_dwi"]


def test_discover_bids(bids):
    scans = discover([bids])
    assert sorted(s.key for s in scans) == EXPECTED_KEYS  # derivatives, hidden: skipped
    s = next(s for s in scans if s.key == "sub-02/anat/sub-02_run-2_T1w")
    assert s.bids and s.rel == "sub-02/anat/sub-02_run-2_T1w.nii.gz"
    assert (s.entity("subject"), s.entity("datatype"), s.entity("run"),
            s.entity("suffix")) == ("02", "anat", "2", "T1w")
    assert s.path == bids / s.rel
    # two roots: each one's keys start with its name; the same file twice is kept once,
    # also when given by name besides its folder (the first found is kept)
    other = bids.parent / "plain"
    other.mkdir(exist_ok=True)
    write_nifti(other / "a" / "T2.nii.gz", head(np.random.default_rng(1), (40, 44, 5)))
    both = discover([bids, other, other / "a" / "T2.nii.gz"])
    assert {s.key for s in both} >= {"bids/sub-01/anat/sub-01_T1w", "plain/a/T2"}
    assert len(both) == len(EXPECTED_KEYS) + 1
    assert not archive.archive_mode(SimpleNamespace(inputs=[str(other / "a" / "T2.nii.gz")]))
    assert archive.archive_mode(SimpleNamespace(inputs=[str(other)]))


def test_bids_entities():
    e = bids_entities("sub-01/ses-2/func/sub-01_ses-2_task-rest_acq-mb3_run-03_bold.nii.gz")
    assert e == {"subject": "01", "session": "2", "datatype": "func", "run": "03",
                 "acq": "mb3", "task": "rest", "suffix": "bold"}
    # the folders give subject and session when the file name lacks them
    e = bids_entities("sub-7/ses-b/anat/T1w.nii")
    assert (e["subject"], e["session"], e["datatype"], e["suffix"]) == ("7", "b", "anat", "")


def test_shards_cover_every_scan_once():
    keys = [f"sub-{i:03d}/anat/sub-{i:03d}_T1w" for i in range(300)]
    scans = [Scan(Path(k), k, k) for k in keys]
    for n in (1, 2, 3, 8):
        parts = [select_shard(scans, i, n) for i in range(1, n + 1)]
        flat = [s.key for p in parts for s in p]
        assert sorted(flat) == sorted(keys)  # each exactly once
        # the split depends on the key alone, not on the order the scans were found in
        again = [select_shard(list(reversed(scans)), i, n) for i in range(1, n + 1)]
        assert [sorted(s.key for s in p) for p in again] == [sorted(s.key for s in p)
                                                             for p in parts]
        if n == 8:
            assert min(len(p) for p in parts) > 15  # and it spreads them
    # stable across processes and machines (SHA-256, not Python's salted hash())
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from MotionSSIMLib.archives.manifest import shard_of; "
            "print(shard_of('sub-01/anat/sub-01_T1w', 7))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, str(ROOT / "MotionSSIM")],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert int(out.stdout) == shard_of("sub-01/anat/sub-01_T1w", 7)


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "3", "a/b", "1/200000", ""])
def test_parse_shard_refuses(text):
    with pytest.raises(SettingsError):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("3/8") == (3, 8) and parse_shard(" 1 / 1 ") == (1, 1)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def sharded(bids, ckpt, tmp_path_factory):
    """The dataset assessed by two shards into one folder, then merged by `group`."""
    out = tmp_path_factory.mktemp("out") / "qc"
    common = ["--model", str(ckpt), "--device", "cpu", "--out", str(out), "--no-progress"]
    rcs = [main(["assess", str(bids), "--shard", f"{i}/2", *common]) for i in (1, 2)]
    rc_group = main(["group", str(out)])
    return SimpleNamespace(out=out, rcs=rcs, rc_group=rc_group, common=common)


def test_shards_and_group_report(sharded, bids):
    out = sharded.out
    manifests = [json.loads((out / "motionssim_shards" / f"shard-000{i}-of-0002.json")
                            .read_text()) for i in (1, 2)]
    keys = [[e["key"] for e in m["scans"]] for m in manifests]
    assert sorted(keys[0] + keys[1]) == EXPECTED_KEYS  # every scan exactly once
    assert all(m["complete"] and m["n_scans_found"] == 5 for m in manifests)
    broken_shard = shard_of("sub-02/anat/sub-02_run-2_T1w", 2)
    # the shard holding the broken file says so in its exit status; the other one is clean
    assert sharded.rcs[broken_shard - 1] == 2 and sharded.rcs[2 - broken_shard] == 0
    assert sharded.rc_group == 2  # the group step too: something failed
    rows = read_rows(out / "group_report.csv")
    assert sorted(rows) == sorted(s.rel for s in discover([bids]))
    bad = rows["sub-02/anat/sub-02_run-2_T1w.nii.gz"]
    assert bad["status"] == "failed" and bad["verdict"] == ""
    assert "sub-02_run-2_T1w.nii.gz" in bad["reason"] and "NIfTI" in bad["reason"]
    assert "\n" not in bad["reason"]
    t1 = rows["sub-01/anat/sub-01_T1w.nii.gz"]
    assert (t1["subject"], t1["datatype"], t1["status"]) == ("01", "anat", "assessed")
    assert t1["verdict"] in ("good", "sufficient", "insufficient: re-scan")
    summary = json.loads((out / "sub-01" / "anat" / "sub-01_T1w_summary.json").read_text())
    assert float(t1["mean_ssim"]) == pytest.approx(summary["mean_ssim"], abs=1e-4)
    assert float(t1["min_ssim"]) == pytest.approx(summary["min_ssim"], abs=1e-4)
    assert int(t1["n_good"]) + int(t1["n_sufficient"]) + int(t1["n_insufficient"]) + \
        int(t1["n_empty"]) == int(t1["n_slices"]) == 5
    worst = summary["worst_slices"][0]
    assert t1["worst_slices"].split()[0] == f"{worst['index']}:{worst['ssim']:.3f}"
    assert (out / t1["chart"]).is_file() and (out / t1["summary"]).is_file()
    # outputs mirror the BIDS entities; the model's hash is recorded in each summary
    assert summary["model"]["sha256"] == manifest.file_sha256(sharded.common[1])
    assert summary["archive"]["entities"]["subject"] == "01"
    dwi = rows["sub-01/dwi/sub-01_dwi.nii.gz"]
    # 4D routed to the series engine
    assert dwi["status"] == "assessed" and dwi["n_frames"] == "2"
    assert len(dwi["worst_frames"].split()) == 2
    assert (out / "sub-01" / "dwi" / "sub-01_dwi_heatmap.png").is_file()
    page = (out / "group_report.html").read_text()
    assert "sub-02_run-2_T1w.nii.gz" in page and "Not assessed (1)" in page
    assert "sub-01/anat/sub-01_T1w_chart.png" in page


def test_resume_skips_finished_scans(sharded, bids, capsys):
    out = sharded.out
    done = sorted(p for p in out.rglob("*_summary.json"))
    before = {p: p.stat().st_mtime_ns for p in done}
    capsys.readouterr()
    rc = main(["assess", str(bids), *sharded.common])
    err = capsys.readouterr().err
    assert rc == 2  # the broken file is tried again, and still fails
    assert f"{len(done)} already assessed with this model (skipped" in err
    assert "sub-02_run-2_T1w.nii.gz" in err
    assert {p: p.stat().st_mtime_ns for p in done} == before  # nothing rewritten
    rows = read_rows(out / "group_report.csv")
    assert sum(r["status"] == "resumed" for r in rows.values()) == len(done)
    # the non-sharded run's manifest is now the latest: the group step uses it alone
    assert (out / "motionssim_shards" / "shard-0001-of-0001.json").is_file()


def test_finished_needs_same_model_and_options(sharded, bids):
    scan = next(s for s in discover([bids]) if s.key == "sub-01/anat/sub-01_T1w")
    # tta None: the command line's default (the model's own: one pass with the uncertainty
    # head, views without; the model's SHA-256 fixes which)
    opts = SimpleNamespace(orientation="auto", good=0.85, sufficient=0.60,
                           min_foreground=0.05, series=None, frames=None, tta=None,
                           precision="auto")
    sha = manifest.file_sha256(sharded.common[1])
    assert finished(sharded.out, scan, fingerprint(sha, opts)) is not None
    assert finished(sharded.out, scan, fingerprint("0" * 64, opts)) is None  # another model
    opts.good = 0.9
    assert finished(sharded.out, scan, fingerprint(sha, opts)) is None  # other thresholds
    opts.good = 0.85
    opts.precision = "fp32"
    assert finished(sharded.out, scan, fingerprint(sha, opts)) is None  # other arithmetic
    opts.precision = "auto"
    (sharded.out / "sub-01" / "anat" / "sub-01_T1w_chart.png").rename(
        sharded.out / "chart.bak")
    try:
        assert finished(sharded.out, scan, fingerprint(sha, opts)) is None  # a file missing
    finally:
        (sharded.out / "chart.bak").rename(
            sharded.out / "sub-01" / "anat" / "sub-01_T1w_chart.png")


def test_group_without_manifest_and_bad_options(tmp_path, bids, ckpt, capsys):
    assert main(["group", str(tmp_path)]) == 2
    assert "no shard manifest" in capsys.readouterr().err
    rc = main(["assess", str(bids), "--shard", "3/2", "--model", str(ckpt), "--device", "cpu",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "--shard 3/2" in capsys.readouterr().err
    rc = main(["assess", str(bids), "--shard", "1/2", "--ratings", str(tmp_path / "r.tsv"),
               "--model", str(ckpt), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert rc == 2 and "motionssim group" in capsys.readouterr().err


def test_prefetch_reads_next_while_current_is_processed():
    started = {i: threading.Event() for i in range(4)}

    def read(i):
        started[i].set()
        if i == 2:
            raise InputError(f"item {i}: unreadable")
        return i * 10

    got = []
    reader = Prefetch(range(4), read)
    try:
        for item, value, err in reader:
            if item == 0:  # while item 0 is "assessed", item 1 is being read already
                assert started[1].wait(10)
            got.append((item, value, str(err) if err else None))
    finally:
        reader.close()
    assert got == [(0, 0, None), (1, 10, None), (2, None, "item 2: unreadable"),
                   (3, 30, None)]


def test_quiet_libraries_keeps_library_output_off_stderr():
    """What C libraries print on fd 2 and warnings from the reader thread stay off the
    terminal during an archive run; the run's own lines still reach it."""
    code = """
import os, sys, threading, warnings
sys.path.insert(0, sys.argv[1])
from MotionSSIMLib.archives.archive import quiet_libraries
with quiet_libraries(True) as captured:
    os.write(2, b"ITK chatter\\n")
    t = threading.Thread(target=lambda: warnings.warn("nibabel warning"))
    t.start(); t.join()
    print("error: ours", file=sys.stderr)
    assert "ITK chatter" in captured() and "nibabel warning" in captured()
print("after", file=sys.stderr)
"""
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "MotionSSIM")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "error: ours" in out.stderr and "after" in out.stderr
    assert "ITK chatter" not in out.stderr and "nibabel warning" not in out.stderr


def test_empty_folder_is_listed_as_failed(tmp_path, ckpt, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no scans here")
    rc = main(["assess", str(tmp_path / "empty"), "--model", str(ckpt), "--device", "cpu",
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "empty: no scan in this folder" in capsys.readouterr().err
    rows = read_rows(tmp_path / "o" / "group_report.csv")
    assert [r["status"] for r in rows.values()] == ["failed"]
