"""Issue 26: no wrong result with exit 0 (resume, report names, 4D options, noise, group,
DICOM frames, discovery, ratings), each class checked on real files through the command."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_archive import head, varied_model, write_nifti

from MotionSSIMLib.archives import archive, discovery, manifest
from MotionSSIMLib.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return varied_model(tmp_path_factory.mktemp("m") / "varied.safetensors")


def run(ckpt, *args):
    return main(["assess", *map(str, args), "--model", str(ckpt), "--device", "cpu",
                 "--no-progress"])


def rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "group_report.csv", newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def summary(out: Path, key: str) -> dict:
    return json.loads((out / f"{key}_summary.json").read_text())


# ---------------------------------------------------------------------------------------------
# 1. resume is keyed on the input's content


def test_resume_reassesses_a_replaced_or_other_scan(tmp_path, ckpt):
    rng = np.random.default_rng(0)
    ds, out = tmp_path / "site", tmp_path / "qc"
    scan = ds / "s1" / "T2.nii.gz"
    write_nifti(scan, head(rng, (40, 44, 5)))
    assert run(ckpt, ds, "--out", out) == 0
    first = summary(out, "s1/T2")
    assert first["archive"]["input"]["sha256"] == manifest.input_identity(scan)["sha256"]
    assert run(ckpt, ds, "--out", out) == 0
    assert rows(out)["s1/T2.nii.gz"]["status"] == "resumed"  # unchanged: reused
    # replaced in place by another scan: assessed again, not handed the old result
    write_nifti(scan, head(rng, (40, 44, 5), noise=60))
    assert run(ckpt, ds, "--out", out) == 0
    assert rows(out)["s1/T2.nii.gz"]["status"] == "assessed"
    second = summary(out, "s1/T2")
    assert second["archive"]["input"] != first["archive"]["input"]
    # the same size and time but other bytes (copied with its time kept): the hash tells
    st = scan.stat()
    data = bytearray(scan.read_bytes())
    data[-5] ^= 0xFF  # inside gzip's trailer: the file is then refused as corrupted
    scan.write_bytes(bytes(data))
    os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert scan.stat().st_size == st.st_size
    assert not manifest.same_input(second["archive"]["input"], scan)
    assert run(ckpt, ds, "--out", out) == 2
    assert rows(out)["s1/T2.nii.gz"]["status"] == "failed"
    # another dataset with the same layout into the same --out: assessed, not resumed
    other = tmp_path / "other" / "site"
    write_nifti(other / "s1" / "T2.nii.gz", head(rng, (40, 44, 5), noise=30))
    assert run(ckpt, other, "--out", out) == 0
    assert rows(out)["s1/T2.nii.gz"]["status"] == "assessed"


def test_resume_keys_a_dicom_folder_and_detached_data_on_every_file(tmp_path):
    (tmp_path / "dcm").mkdir()
    for n in range(3):
        (tmp_path / "dcm" / f"IM{n}").write_bytes(b"x" * 10)
    before = manifest.input_identity(tmp_path / "dcm")
    assert before["n_files"] == 3
    (tmp_path / "dcm" / "IM1").write_bytes(b"y" * 10)
    assert not manifest.same_input(before, tmp_path / "dcm")
    (tmp_path / "v.mhd").write_text("ElementDataFile = data.raw\n")
    (tmp_path / "data.raw").write_bytes(b"\0" * 8)
    ident = manifest.input_identity(tmp_path / "v.mhd")
    (tmp_path / "data.raw").write_bytes(b"\1" * 8)
    assert not manifest.same_input(ident, tmp_path / "v.mhd")


# ---------------------------------------------------------------------------------------------
# 2. report names are unique once sanitised


def test_names_that_sanitise_alike_get_distinct_reports(tmp_path, ckpt):
    rng = np.random.default_rng(1)
    ds, out = tmp_path / "ds", tmp_path / "qc"
    write_nifti(ds / "T2 axial.nii.gz", head(rng, (40, 44, 5)))
    write_nifti(ds / "T2_axial.nii.gz", head(rng, (40, 44, 5), noise=60))
    write_nifti(ds / "t2_AXIAL.nii.gz", head(rng, (40, 44, 5), noise=30))  # case-folded alike
    assert run(ckpt, ds, "--out", out) == 0
    got = rows(out)
    assert set(got) == {"T2 axial.nii.gz", "T2_axial.nii.gz", "t2_AXIAL.nii.gz"}
    reports = {r["summary"] for r in got.values()}
    assert len(reports) == 3  # three report sets, none overwritten
    for rel, r in got.items():
        assert summary(out, r["summary"][:-len("_summary.json")])["input"].endswith(rel)
    # and each is resumed (the check looks for the name the reports were written under)
    assert run(ckpt, ds, "--out", out) == 0
    assert {r["status"] for r in rows(out).values()} == {"resumed"}


# ---------------------------------------------------------------------------------------------
# 4. every option of a 3D assessment reaches a 4D one


def _csv_sd(path: Path) -> list[float]:
    with open(path, newline="") as f:
        return [float(r["ssim_sd"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("archive_run", [False, True])
def test_4d_takes_tta_and_precision(tmp_path, ckpt, archive_run):
    rng = np.random.default_rng(2)
    ds, out = tmp_path / "ds", tmp_path / "qc"
    dwi = ds / "dwi.nii.gz"
    write_nifti(dwi, head(rng, (40, 44, 5, 2), 20))
    target = ds if archive_run else dwi
    assert run(ckpt, target, "--out", out, "--no-uncertainty", "--precision", "fp32") == 0
    js = next(out.rglob("*_summary.json"))
    s = json.loads(js.read_text())
    assert s["kind"] == "series"
    assert s["inference"]["views"] == ["identity"] and s["inference"]["precision"] == "fp32"
    assert set(_csv_sd(js.with_name(js.name.replace("_summary.json", "_slices.csv")))) == {0.0}
    if archive_run:  # the fingerprint records what ran
        assert s["archive"]["fingerprint"]["tta"] == 1
    assert run(ckpt, target, "--out", out, "--tta", "3", "--force") == 0
    s = json.loads(js.read_text())
    assert len(s["inference"]["views"]) == 3
    assert max(_csv_sd(js.with_name(js.name.replace("_summary.json", "_slices.csv")))) > 0


# ---------------------------------------------------------------------------------------------
# 7. discovery follows folder links; one scan named twice is one scan


def test_symlinked_subject_folder_and_a_scan_named_twice(tmp_path, ckpt, capsys):
    rng = np.random.default_rng(3)
    elsewhere = tmp_path / "store" / "sub-02"
    write_nifti(elsewhere / "anat" / "sub-02_T1w.nii.gz", head(rng, (40, 44, 5)))
    ds = tmp_path / "ds"
    write_nifti(ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz", head(rng, (40, 44, 5)))
    (ds / "dataset_description.json").write_text('{"Name": "t"}')
    (ds / "sub-02").symlink_to(elsewhere, target_is_directory=True)
    (ds / "sub-01" / "anat" / "loop").symlink_to(ds, target_is_directory=True)  # a loop
    keys = sorted(s.key for s in discovery.discover([ds]))
    assert keys == ["sub-01/anat/sub-01_T1w", "sub-02/anat/sub-02_T1w"]
    # named twice (and once more through a symlink): assessed and counted once
    f = ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    (tmp_path / "link.nii.gz").symlink_to(f)
    out = tmp_path / "qc"
    capsys.readouterr()
    assert run(ckpt, f, f, tmp_path / "link.nii.gz", "--out", out) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1
    assert captured.err.count("assessed once") == 2
    assert len(list(out.glob("*_summary.json"))) == 1
    # a folder and a file in it: one scan
    scans = discovery.discover([ds, f])
    assert len(scans) == 2


# ---------------------------------------------------------------------------------------------
# 8. noise reads no verdict


SAMPLE = Path(__file__).resolve().parents[1] / "MotionSSIM" / "Resources" / "Samples" / \
    "sample_t2_motion.nii.gz"


def _rayleigh(rng, shape):
    return np.hypot(rng.normal(0, 1, shape), rng.normal(0, 1, shape)).astype(np.float32)


@pytest.mark.parametrize("kind", ["rayleigh", "uniform"])
def test_pure_noise_volume_is_refused(tmp_path, ckpt, capsys, kind):
    rng = np.random.default_rng(4)
    shape = (96, 80, 12)
    arr = _rayleigh(rng, shape) if kind == "rayleigh" else \
        rng.uniform(0, 100, shape).astype(np.float32)
    write_nifti(tmp_path / "noise.nii.gz", arr)
    capsys.readouterr()
    assert run(ckpt, tmp_path / "noise.nii.gz", "--out", tmp_path / "qc") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "noise.nii.gz: no assessable slice" in err[0]
    assert "noise without a head (12)" in err[0]


def test_head_slices_replaced_by_noise_are_flagged_not_counted():
    from MotionSSIMLib.assessment.inference import assess_volume
    from MotionSSIMLib.imaging.geometry import extract_slices, volume
    from MotionSSIMLib.imaging.io import read_volume

    vol = read_volume(SAMPLE)
    stack = extract_slices(vol)
    assert not stack.noise.any()  # the sample: no slice taken for noise (its verdict stays)
    arr = vol.array.copy()
    rng = np.random.default_rng(5)
    top = float(np.percentile(arr, 99))
    for k in (20, 21):  # two head slices replaced by noise of the head's intensity
        arr[k] = _rayleigh(rng, arr[k].shape) * top / 2
    noisy = volume(arr, vol.spacing, vol.directions, vol.origin)
    assert np.flatnonzero(extract_slices(noisy).noise).tolist() == [20, 21]
    a = assess_volume(noisy, device="cpu", tta=1)  # the bundled model
    flagged = [r.index for r in a.records if r.noise]
    assert flagged == [20, 21] and all(r.empty for r in a.records if r.noise)
    assert a.summary["n_noise"] == 2 and a.summary["n_assessed"] == 45 - 3 - 2


def test_low_snr_and_small_head_slices_are_not_noise():
    """Real heads at low SNR and on a 64 x 64 EPI-like matrix keep their structure."""
    from MotionSSIMLib.imaging.geometry import extract_slices, volume
    from MotionSSIMLib.imaging.io import read_volume

    vol = read_volume(SAMPLE)
    clean = extract_slices(vol)
    heads = clean.foreground >= 0.05
    rng = np.random.default_rng(6)
    top = float(np.percentile(vol.array, 99))
    for step, snr in ((1, 4), (4, 8), (3, 6)):  # 4: 65 x 55 in-plane, EPI-like
        a = vol.array[:, ::step, ::step].astype(np.float64)
        sigma = top / snr
        noisy = np.hypot(a + rng.normal(0, sigma, a.shape), rng.normal(0, sigma, a.shape))
        st = extract_slices(volume(noisy.astype(np.float32),
                                   (vol.spacing[0] * step, vol.spacing[1] * step,
                                    vol.spacing[2])))
        assert not st.noise[heads].any(), (step, snr, np.flatnonzero(st.noise & heads))


# ---------------------------------------------------------------------------------------------
# 3, 10, 13. group: shards of other options refused; manifests bounded and checked


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory, ckpt):
    rng = np.random.default_rng(7)
    ds = tmp_path_factory.mktemp("g") / "ds"
    for n in range(4):
        write_nifti(ds / f"s{n}" / "T2.nii.gz", head(rng, (40, 44, 5)))
    return ds


def test_group_refuses_shards_of_other_options(tmp_path, ckpt, two_shards, capsys):
    out = tmp_path / "qc"
    assert run(ckpt, two_shards, "--out", out, "--shard", "1/2") == 0
    assert run(ckpt, two_shards, "--out", out, "--shard", "2/2", "--good", "0.9") == 0
    capsys.readouterr()
    assert main(["group", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other options" in err[0] and "good 0.85 vs 0.9" in err[0]
    assert not (out / "group_report.csv").exists()
    # the same options again: merged
    assert run(ckpt, two_shards, "--out", out, "--shard", "2/2") == 0
    assert main(["group", str(out)]) == 0


def _manifest(out: Path, **changes) -> Path:
    m = {"motionssim_manifest": 1, "shard": [1, 1], "complete": True, "n_scans_found": 0,
         "fingerprint": {}, "inputs": [], "scans": []}
    m.update(changes)
    p = out / "motionssim_shards" / "shard-0001-of-0001.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(m.pop("_raw", None) or json.dumps(m))
    return p


@pytest.mark.parametrize("changes, words", [
    ({"shard": [1, 10**12]}, "shard must be [I, N]"),  # bounded before anything is built
    ({"_raw": "[" * 100_000 + "]" * 100_000}, "RecursionError"),
    ({"n_scans_found": None}, "n_scans_found"),
    ({"scans": [{"key": ["a"], "status": "assessed"}]}, "text key"),
    ({"fingerprint": [1]}, "fingerprint"),
])
def test_bad_manifest_is_one_line(tmp_path, capsys, changes, words):
    p = _manifest(tmp_path, **changes)
    assert main(["group", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {p}: not a MotionSSIM shard")
    assert words in err[0]


def test_deeply_nested_summary_is_no_traceback(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "a_summary.json").write_text(deep)
    _manifest(tmp_path, n_scans_found=1, scans=[{"key": "a", "status": "assessed",
                                                   "summary": "a_summary.json"}])
    assert main(["group", str(tmp_path)]) == 2  # listed as missing, no traceback
    assert "summary missing or unreadable" in capsys.readouterr().err
    scan = discovery.Scan(tmp_path / "a.nii.gz", "a", "a.nii.gz")
    assert manifest.finished(tmp_path, scan, {}) is None


# ---------------------------------------------------------------------------------------------
# 9. ratings


def _ratings(tmp_path: Path, text: str, name: str = "r.tsv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_ratings_two_spellings_of_one_scan_rated_differently(tmp_path, ckpt, capsys):
    from MotionSSIMLib.archives.ratings import match_ratings, read_ratings

    r = _ratings(tmp_path, "scan\trating\nsub-01_T2w\t1\nsub-01/anat/sub-01_T2w.nii.gz\t3\n")
    rows = [{"path": "sub-01/anat/sub-01_T2w.nii.gz"}, {"path": "sub-02/anat/sub-02_T2w.nii"}]
    with pytest.raises(archive.InputError, match="name one scan.*rated 1 and 3"):
        match_ratings(rows, read_ratings(r), r)
    same = _ratings(tmp_path, "scan\trating\nsub-01_T2w\t3\nanat/sub-01_T2w.nii.gz\t3\n", "s.tsv")
    assert match_ratings(rows, read_ratings(same), same)[0] == {0: 3}
    # refused by an archive run before any scan is assessed
    ds = tmp_path / "ds"
    write_nifti(ds / "sub-01" / "anat" / "sub-01_T2w.nii.gz", head(np.random.default_rng(8),
                                                                   (40, 44, 5)))
    capsys.readouterr()
    assert run(ckpt, ds, "--out", tmp_path / "qc", "--ratings", r) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rated 1 and 3" in err[0]
    assert not list((tmp_path / "qc").rglob("*_summary.json"))


def test_ratings_without_header_stray_quote_and_huge_cell(tmp_path):
    from MotionSSIMLib.archives.ratings import read_ratings

    # no header: the first row is a rating too
    assert read_ratings(_ratings(tmp_path, "sub-01_T1w\t2\nsub-02_T1w\t3\n")) == [
        ("sub-01_T1w", 2), ("sub-02_T1w", 3)]
    # TSV has no quoting: a stray " is a character, the rows after it are kept
    got = read_ratings(_ratings(tmp_path, 'scan\tscore\nsub-"01\t1\nsub-02\t2\nsub-03\t3\n'))
    assert [r for _, r in got] == [1, 2, 3]
    # CSV: a quote left open is refused, naming its line
    with pytest.raises(archive.InputError, match="line 3: a quote"):
        read_ratings(_ratings(tmp_path, 'scan,score\nsub-01,1\n"sub-02,2\nsub-03,3\n',
                              "r.csv"))
    with pytest.raises(archive.InputError, match="r2.csv: line 2: not a readable table"):
        read_ratings(_ratings(tmp_path, 'scan,score\n"' + "x" * 200_000 + '",1\n', "r2.csv"))


# ---------------------------------------------------------------------------------------------
# 12. FIFOs and devices are refused unopened; discovery does not open them


def test_fifos_and_devices_refused_without_hanging(tmp_path, ckpt):
    import subprocess
    import sys

    ds = tmp_path / "ds"
    write_nifti(ds / "a" / "T2.nii.gz", head(np.random.default_rng(9), (40, 44, 5)))
    os.mkfifo(ds / "a" / "IM0001")  # no dot: the DICOM sniffer would open it
    os.mkfifo(tmp_path / "fifo")
    code = f"""
import sys
from MotionSSIMLib.cli import main
common = ["--device", "cpu", "--no-progress", "--out", {str(tmp_path / "qc")!r}]
m = ["--model", {str(ckpt)!r}]
one = {str(ds / "a" / "T2.nii.gz")!r}
print(main(["assess", {str(ds)!r}, *m, *common]))
for opt, value in (("--ratings", {str(tmp_path / "fifo")!r}), ("--ratings", "/dev/zero"),
                   ("--true-ssim", {str(tmp_path / "fifo")!r}), ("--true-ssim", "/dev/zero"),
                   ("--model", {str(tmp_path / "fifo")!r})):
    args = [one, opt, value] + (m if opt != "--model" else [])
    print(main(["assess", *args, *common]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.stdout.split()[-6:] == ["0", "2", "2", "2", "2", "2"], done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 5 and all("FIFO" in e or "device" in e for e in errors), errors


# ---------------------------------------------------------------------------------------------
# 14, 15. a folder symlink in --out is not written through; no formula in the group CSV


def test_folder_symlink_in_out_and_formula_names(tmp_path, ckpt, capsys):
    rng = np.random.default_rng(10)
    ds, out, elsewhere = tmp_path / "ds", tmp_path / "qc", tmp_path / "elsewhere"
    write_nifti(ds / "sub-01" / "T2.nii.gz", head(rng, (40, 44, 5)))
    formula = '=HYPERLINK("x")'
    write_nifti(ds / f"{formula}.nii.gz", head(rng, (40, 44, 5)))
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub-01").symlink_to(elsewhere, target_is_directory=True)
    capsys.readouterr()
    assert run(ckpt, ds, "--out", out) == 2
    assert "a symlink inside the report folder" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    with open(out / "group_report.csv", newline="", encoding="utf-8") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert f"'{formula}.nii.gz" in cells
    assert not any(c.startswith(("=", "+", "@")) for c in cells)


# ---------------------------------------------------------------------------------------------
# 19. an unsharded run replacing an earlier run's manifest says so


def test_replacing_an_earlier_manifest_is_said(tmp_path, ckpt, capsys):
    rng = np.random.default_rng(11)
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "qc"
    write_nifti(a / "x" / "T2.nii.gz", head(rng, (40, 44, 5)))
    write_nifti(b / "y" / "T2.nii.gz", head(rng, (40, 44, 5)))
    assert run(ckpt, a, "--out", out) == 0
    capsys.readouterr()
    assert run(ckpt, b, "--out", out) == 0
    assert "listed 1 scan(s) this run does not have" in capsys.readouterr().err
