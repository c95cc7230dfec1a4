"""Issue 12: crafted inputs never give a wrong verdict with exit 0, nor a traceback.

Thin volumes are cut in their own plane, blank slices are not scored, a broken model is
refused, reports are atomic and named from the input path, crafted metadata, split files,
option values and file names are refused (or handled) in one line, and the Python API raises
MotionSSIMError subclasses for bad settings.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from MotionSSIMLib.assessment.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from MotionSSIMLib.assessment.classes import ClinicalThresholds
from MotionSSIMLib.assessment.inference import assess_volume, predict_slices
from MotionSSIMLib.assessment.model import build_model
from MotionSSIMLib.assessment.report import printable, report_name, write_report
from MotionSSIMLib.base.errors import CheckpointError, InputError, MotionSSIMError, SettingsError
from MotionSSIMLib.cli import main
from MotionSSIMLib.imaging import geometry

ROOT = Path(__file__).resolve().parents[1]
MNI = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _mni() -> np.ndarray:
    """The MNI152 T1 template (197 x 233 x 189 at 1 mm, real MR) from the nilearn wheel."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        pytest.skip("nilearn (MNI152 template) not installed")
    path = Path(spec.origin).parents[1] / MNI
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "MotionSSIM"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "MotionSSIMLib", *args], capture_output=True,
                          env=env, cwd=cwd, timeout=timeout)


def errors_of(proc: subprocess.CompletedProcess) -> list[str]:
    err = proc.stderr.decode("utf-8")
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith(("error:", "motionssim: error:"))]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small random ResNet-18 whose outputs stay inside [0, 1] (a sane, if untrained, model)."""
    torch.manual_seed(0)
    net = build_model("resnet18")
    with torch.no_grad():
        net.fc.bias.fill_(0.5)
        net.fc.weight.mul_(0.1)
    return save_checkpoint(tmp_path_factory.mktemp("m") / "r18.safetensors", net)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Real-MR inputs from the MNI template: a one-slice sagittal NIfTI with heavy motion
    (the issue's 1 x 233 x 189 case), the same slice clean, an axial stack with two constant
    slices, a volume whose every slice is constant, and files with awkward names."""
    from MotionSSIMLib.simulation.kspace_motion import kspace_motion

    d = tmp_path_factory.mktemp("scans")
    mni = _mni()
    s = mni[98]  # a sagittal slice (233 x 189: A x S)
    x = torch.from_numpy((s - s.min()) / (s.max() - s.min()))[None, None]
    moved = kspace_motion(x, 1.0, torch.Generator().manual_seed(0))[0, 0].numpy() * 1000
    nib.save(nib.Nifti1Image(moved[None].astype(np.float32), np.eye(4)), d / "sag_motion.nii.gz")
    nib.save(nib.Nifti1Image(s[None].astype(np.float32), np.eye(4)), d / "sag_clean.nii.gz")
    axial = mni[:, :, 80:92].copy()  # 12 axial slices through the brain
    axial[:, :, 3] = float(axial[:, :, 3].mean())  # blank: one constant value
    axial[:, :, 4] = 500.0 + np.random.default_rng(0).normal(0, 0.5, axial.shape[:2])  # ~const
    nib.save(nib.Nifti1Image(axial, np.eye(4)), d / "axial_blank2.nii.gz")
    flat = np.ones((40, 44, 10), np.float32) * np.arange(10, dtype=np.float32)  # each constant
    nib.save(nib.Nifti1Image(flat, np.eye(4)), d / "all_constant.nii.gz")
    return d


# --------------------------------------------------------------------------- point 3: thin


def test_thin_volume_is_cut_in_its_own_plane(scans):
    vol = nib.load(str(scans / "sag_motion.nii.gz"))
    assert vol.shape == (1, 233, 189)  # isotropic 1 mm: the old rule cut it into axial strips
    from MotionSSIMLib.imaging.io import read_volume

    moved = read_volume(scans / "sag_motion.nii.gz")
    a = assess_volume(moved, device="cpu")  # the bundled model
    assert a.orientation == "sagittal" and a.axis == "i" and len(a.records) == 1
    # the verdict is the one the same slice gets as a 2D image
    stack = geometry.extract_slices(moved)
    direct = predict_slices(stack.images[0], device="cpu", pixel_spacing=stack.pixel_spacing)
    assert a.records[0].ssim == pytest.approx(direct[0], abs=1e-6)
    clean = assess_volume(read_volume(scans / "sag_clean.nii.gz"), device="cpu")
    assert clean.orientation == "sagittal"
    assert a.records[0].ssim < clean.records[0].ssim - 0.1  # the motion is seen
    assert a.summary["verdict"] != "good"


@pytest.mark.parametrize("shape_kji, spacing, plane", [
    ((189, 233, 1), (1.0, 1.0, 1.0), "sagittal"),   # one sagittal slice (i = 1)
    ((40, 5, 36), (1.0, 1.0, 1.0), "coronal"),      # five coronal slices (j = 5), isotropic
    ((40, 5, 36), (0.5, 1.0, 3.0), "coronal"),      # ... even where k is the coarsest axis
    ((7, 48, 40), (1.0, 1.0, 1.0), "axial"),        # seven axial slices
])
def test_auto_picks_the_plane_of_a_thin_stack(shape_kji, spacing, plane):
    arr = np.random.default_rng(0).random(shape_kji).astype(np.float32)
    vol = geometry.volume(arr, spacing)
    assert geometry.resolve_orientation(vol, "auto") == plane
    stack = geometry.extract_slices(vol, "auto")
    assert min(stack.images.shape[1:]) >= geometry.THIN_AXIS
    assert len(stack.images) == min(shape_kji)
    # any other plane would cut it into strips: refused with a message that says what to do
    for other in geometry.ORIENTATIONS:
        if other != plane:
            with pytest.raises(InputError, match=f"strips.*as {plane} slices") as info:
                geometry.extract_slices(vol, other)
            assert "\n" not in str(info.value)


def test_training_draws_a_thin_stack_in_its_own_plane(scans, capsys):
    from MotionSSIMLib.training.data import SliceDataset

    ds = SliceDataset([scans / "sag_clean.nii.gz"], slices="all")
    rng = np.random.default_rng(0)
    draws = [ds.draw(rng) for _ in range(12)]  # isotropic: a random plane, were it not thin
    assert {info["orientation"] for _, info in draws} == {"sagittal"}
    assert all(img.shape == (189, 233) for img, _ in draws)  # S x A: no strips
    assert "skipped" not in capsys.readouterr().err.lower()


def test_cli_refuses_strips_and_blank_volumes_and_flags_blank_slices(scans, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("assess", str(scans / "sag_clean.nii.gz"), str(scans / "all_constant.nii.gz"),
                   str(scans / "axial_blank2.nii.gz"), "--orientation", "axial",
                   "--device", "cpu", "--out", str(out), "--no-progress", cwd=tmp_path)
    errors = errors_of(proc)
    assert proc.returncode == 2 and len(errors) == 2, proc.stderr
    assert "sag_clean.nii.gz" in errors[0] and "strips" in errors[0]
    assert "all_constant.nii.gz" in errors[1] and "no assessable slice" in errors[1]
    # the third input is still assessed: its two constant slices are flagged, not scored
    assert [p.name for p in out.glob("*_summary.json")] == [
        f"{report_name(scans / 'axial_blank2.nii.gz')}_summary.json"]
    with open(next(out.glob("*_slices.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert [r["index"] for r in rows if r["empty"] == "1"] == ["3", "4"]
    assert ", 2 empty axial slices)" in proc.stdout.decode()


# --------------------------------------------------------------------------- point 4: blank


def test_constant_slices_are_flagged_not_scored(scans):
    from MotionSSIMLib.imaging.io import read_volume

    vol = read_volume(scans / "axial_blank2.nii.gz")
    stack = geometry.extract_slices(vol)
    assert stack.orientation == "axial" and stack.blank.tolist() == [i in (3, 4)
                                                                      for i in range(12)]
    a = assess_volume(vol, device="cpu")
    flagged = [r.index for r in a.records if r.empty]
    assert flagged == [3, 4] and all(r.blank for r in a.records if r.index in (3, 4))
    assert a.summary["n_assessed"] == 10 and a.summary["n_blank"] == 2
    kept = [r.ssim for r in a.records if not r.empty]
    assert a.summary["mean_ssim"] == pytest.approx(np.mean(kept))
    assert 3 not in [w["index"] for w in a.summary["worst_slices"]]
    # the slices with structure are not blank, whatever their foreground
    assert stack.contrast[[0, 1, 2, 5, 6]].min() > 5 * geometry.BLANK_CONTRAST


def test_volume_with_no_scorable_slice_is_refused(ckpt, scans):
    flat = np.ones((10, 44, 40)) * np.arange(10)[:, None, None]  # each slice constant
    with pytest.raises(InputError, match="no assessable slice") as info:
        assess_volume(flat, model=ckpt, device="cpu")
    assert "10 axial slices" in str(info.value) and "\n" not in str(info.value)
    # nearly constant: a faint noise floor on one level
    rng = np.random.default_rng(1)
    faint = 300 + rng.normal(0, 0.5, (6, 40, 40))
    faint[0] = 0
    with pytest.raises(InputError, match="no assessable slice"):
        assess_volume(faint, model=ckpt, device="cpu", min_foreground=0.0)


# --------------------------------------------------------------------------- point 6: model


@pytest.fixture(scope="module")
def scaled_model(tmp_path_factory):
    """The bundled model with its last layer scaled by 60000: raw outputs near 1e4 - 1e7."""
    loaded = load_checkpoint(None)
    net = loaded.model
    with torch.no_grad():
        net.fc.weight.mul_(60000.0)
        net.fc.bias.mul_(60000.0)
    meta = {k: v for k, v in loaded.metadata.items() if k not in ("dtype",)}
    return save_checkpoint(tmp_path_factory.mktemp("scaled") / "scaled.safetensors", net, meta)


def test_scaled_model_is_refused_naming_the_file(scaled_model, scans, tmp_path):
    with pytest.raises(CheckpointError, match="broken model") as info:
        assess_volume(np.asarray(nib.load(str(scans / "axial_blank2.nii.gz")).dataobj).T,
                      model=scaled_model, device="cpu")
    assert str(scaled_model) in str(info.value)
    proc = run_cli("assess", str(scans / "sag_clean.nii.gz"), str(scans / "sag_motion.nii.gz"),
                   "--model", str(scaled_model), "--device", "cpu", "--out", str(tmp_path),
                   cwd=tmp_path)
    errors = errors_of(proc)
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert str(scaled_model) in errors[0] and "broken model" in errors[0]
    assert proc.stdout.decode() == "" and not list(tmp_path.glob("*_summary.json"))


def test_int8_model_is_refused_by_the_cli(ckpt, scans, tmp_path):
    from safetensors.torch import save_file

    net = load_checkpoint(ckpt).model
    tensors = {k: (v.to(torch.int8) if v.is_floating_point() else v).contiguous()
               for k, v in net.state_dict().items()}
    path = tmp_path / "int8.safetensors"
    save_file(tensors, str(path), metadata={"motionssim": json.dumps(read_metadata(ckpt))})
    assert main(["assess", str(scans / "sag_clean.nii.gz"), "--model", str(path),
                 "--device", "cpu", "--out", str(tmp_path / "o"), "--no-progress"]) == 2


# --------------------------------------------------------------------------- point 8: reports


def test_report_names_are_stable_and_distinct(ckpt, scans, tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    for d in (a, b):
        d.mkdir()
        (d / "T2.nii.gz").write_bytes((scans / "sag_clean.nii.gz").read_bytes())
    name_a, name_b = report_name(a / "T2.nii.gz"), report_name(b / "T2.nii.gz")
    assert name_a != name_b and name_a.startswith("T2_") and name_b.startswith("T2_")
    # a pure function of the path: relative or absolute, through a symlink, any cwd
    os.symlink(a, tmp_path / "link")
    assert report_name(tmp_path / "link" / "T2.nii.gz") == name_a
    here = Path.cwd()
    try:
        os.chdir(tmp_path)
        assert report_name(Path("A/T2.nii.gz")) == name_a
        assert report_name("B/./T2.nii.gz") == name_b
    finally:
        os.chdir(here)
    # whatever else is in the run, and in which order
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    base = ["--model", str(ckpt), "--device", "cpu", "--no-progress"]
    assert main(["assess", str(b / "T2.nii.gz"), *base, "--out", str(out1)]) == 0
    assert main(["assess", str(a / "T2.nii.gz"), str(b / "T2.nii.gz"), *base,
                 "--out", str(out2)]) == 0
    assert sorted(p.name for p in out1.iterdir()) == sorted(
        f"{name_b}_{k}" for k in ("slices.csv", "summary.json", "chart.png"))
    assert {p.name for p in out2.iterdir()} >= {p.name for p in out1.iterdir()}
    assert len(list(out2.iterdir())) == 6
    assert json.loads((out2 / f"{name_a}_summary.json").read_text())["input"].endswith(
        str(Path("A") / "T2.nii.gz"))


def _tiny_assessment(ckpt):
    rng = np.random.default_rng(3)
    arr = rng.normal(3, 1, (8, 40, 40)).clip(0)
    arr[2:6, 8:32, 8:32] += 100 * rng.random((4, 24, 24)) + 50
    return assess_volume(arr, model=ckpt, device="cpu")


def test_planted_symlink_is_replaced_not_followed(ckpt, tmp_path):
    a = _tiny_assessment(ckpt)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for key in ("slices.csv", "summary.json", "chart.png"):
        os.symlink(victim, out / f"vol_{key}")
    paths = write_report(a, out, "vol", source="vol.nii.gz")
    assert victim.read_text() == "precious"
    for p in paths.values():
        assert p.is_file() and not p.is_symlink() and p.stat().st_size > 100
    assert json.loads(paths["json"].read_text())["n_slices"] == 8
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())


def test_failed_write_leaves_the_old_report_and_no_temporary_file(ckpt, tmp_path):
    a = _tiny_assessment(ckpt)
    out = tmp_path / "out"
    first = write_report(a, out, "vol", source="vol.nii.gz")
    before = first["json"].read_bytes()
    first["png"].unlink()
    first["png"].mkdir()  # the chart cannot take its place: the write fails half-way
    with pytest.raises(OSError):
        write_report(a, out, "vol", source="again.nii.gz")
    assert first["json"].read_bytes() == before  # the summary is never half-written or new
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in first.values())


def test_concurrent_writers_leave_complete_reports(ckpt, tmp_path):
    a = _tiny_assessment(ckpt)
    out = tmp_path / "out"
    failures = []

    def writer(n):
        try:
            for _ in range(3):
                write_report(a, out, "same", source=f"writer{n}.nii.gz")
        except Exception as exc:  # collected: an assertion in a thread would be lost
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    summary = json.loads((out / "same_summary.json").read_text())
    assert summary["input"].startswith("writer") and summary["n_slices"] == 8
    with open(out / "same_slices.csv") as f:
        assert len(list(csv.DictReader(f))) == 8
    assert len(list(out.iterdir())) == 3


def test_out_is_checked_before_anything_is_assessed(ckpt, scans, tmp_path, capsys):
    existing = tmp_path / "a_file"
    existing.write_text("x")
    proc = run_cli("assess", str(scans / "sag_clean.nii.gz"), "--model", str(ckpt),
                   "--device", "cpu", "--out", str(existing), cwd=tmp_path)
    errors = errors_of(proc)
    assert proc.returncode == 2 and len(errors) == 1 and str(existing) in errors[0]
    assert "not a folder" in errors[0] and proc.stdout.decode() == ""  # nothing assessed
    # below a file: the same, in-process
    assert main(["assess", str(scans / "sag_clean.nii.gz"), "--model", str(ckpt), "--device",
                 "cpu", "--out", str(existing / "sub")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "not writable" in out.err
    assert existing.read_text() == "x"


# --------------------------------------------------------------------------- point 9: crafted


def test_awkward_file_names_get_reports_and_plain_titles(scans, tmp_path):
    src = (scans / "sag_clean.nii.gz").read_bytes()
    dollar = tmp_path / "a$^^$b $x_1$.nii.gz"
    dollar.write_bytes(src)
    raw = os.fsencode(str(tmp_path)) + b"/scan\xff\xfe\nname.nii.gz"  # not UTF-8, a new line
    with open(raw, "wb") as f:
        f.write(src)
    out = tmp_path / "out"
    proc = run_cli("assess", os.fsdecode(raw), str(dollar), "--device", "cpu", "--out",
                   str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode("utf-8").splitlines()
    assert len(lines) == 2 and "\\xff\\xfe\\nname.nii.gz:" in lines[0]
    assert "a$^^$b $x_1$.nii.gz:" in lines[1]
    for path in (os.fsdecode(raw), str(dollar)):
        name = report_name(path)
        assert (out / f"{name}_chart.png").stat().st_size > 5000
        summary = json.loads((out / f"{name}_summary.json").read_text(encoding="utf-8"))
        assert summary["input"] == printable(path)
    assert printable(os.fsdecode(b"x\xff\n")) == "x\\xff\\n"


def test_true_ssim_with_huge_or_bad_index_is_refused(ckpt, scans, tmp_path, capsys):
    base = ["assess", str(scans / "sag_clean.nii.gz"), "--model", str(ckpt), "--device", "cpu",
            "--out", str(tmp_path / "o")]
    for body in ("0,0.5\n1000000000000,0.5\n", "0,inf\n", "0,nan\n", "0,2.5\n", "x,0.5\n",
                 "0," + "9" * 5000 + "\n"):
        truth = tmp_path / "truth.csv"
        truth.write_text("index,true_ssim\n" + body)
        assert main(base + ["--true-ssim", str(truth)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "truth.csv: cannot read true SSIM" in err, err


def test_model_metadata_in_reports_is_bounded(tmp_path):
    torch.manual_seed(0)
    net = build_model("resnet18")
    with torch.no_grad():
        net.fc.bias.fill_(0.5)
        net.fc.weight.mul_(0.1)
    nested: object = "leaf"
    for _ in range(200):
        nested = {"deeper": nested, "list": list(range(1000))}
    meta = {"name": "n" * 1_000_000, "trained_on": nested, "epoch": 10**40,
            "evaluation": {f"k{i}": i * 0.5 for i in range(10_000)}}
    path = save_checkpoint(tmp_path / "big.safetensors", net, meta)
    arr = np.random.default_rng(0).random((8, 40, 40)) * 100
    arr[:, 8:32, 10:30] += 300  # a head: pure noise is not assessed
    a = assess_volume(arr, model=path, device="cpu", min_foreground=0.0)
    paths = write_report(a, tmp_path / "out", "vol", source="vol.nii.gz")
    assert paths["json"].stat().st_size < 20_000
    model = json.loads(paths["json"].read_text())["model"]
    assert len(model["name"]) < 250 and model["epoch"] == "(a huge integer)"
    assert len(model["evaluation"]) <= 20


def test_deep_split_files_and_out_files_for_train_and_evaluate(ckpt, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"train": ' + "[" * 100_000 + "]" * 100_000 + "}")
    bad_csv = tmp_path / "split.csv"
    bad_csv.write_bytes(b"path,split\n\xff\xfe,train\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["train", "--data", str(deep), "--out", str(tmp_path / "run")], "nested too deeply"),
        (["evaluate", "--data", str(deep), "--checkpoint", str(ckpt), "--out",
          str(tmp_path / "ev")], "nested too deeply"),
        (["train", "--data", str(bad_csv), "--out", str(tmp_path / "run")], "split.csv"),
        (["train", "--data", str(deep), "--out", str(a_file)], "not a folder"),
        (["evaluate", "--data", str(deep), "--checkpoint", str(ckpt), "--out", str(a_file)],
         "not a folder"),
        (["evaluate", "--data", str(deep), "--checkpoint", str(ckpt), "--out",
          str(a_file / "sub")], "not a folder"),
    ]
    for n, (args, expected) in enumerate(cases):
        if n < 2:  # the exit status of the real command
            proc = run_cli(*args, "--no-progress", cwd=tmp_path)
            errors = errors_of(proc)
            assert proc.returncode == 2 and len(errors) == 1, (args, proc.stderr)
        else:  # the same code path in-process (faster)
            assert main([*args, "--no-progress"]) == 2, args
            err = capsys.readouterr().err
            assert "Traceback" not in err
            errors = [ln for ln in err.splitlines() if "error:" in ln]
            assert len(errors) == 1, err
        assert expected in errors[0], errors[0]
    assert a_file.read_text() == "x"


# --------------------------------------------------------------------------- point 11: API


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg and isinstance(exc_info.value, MotionSSIMError)
    return msg


def test_api_settings_raise_motionssim_errors(ckpt):
    imgs = np.random.default_rng(0).random((2, 32, 32))
    vol = np.random.default_rng(1).random((10, 32, 32))
    for bad in ((2, 0, 32), (2, 32, 0)):
        with pytest.raises(InputError) as info:
            predict_slices(np.zeros(bad), model=ckpt, device="cpu")
        assert "zero-size" in _one_line(info)
    with pytest.raises(InputError, match="zero-size"):
        predict_slices([np.zeros((32, 32)), np.zeros((0, 5))], model=ckpt, device="cpu")
    with pytest.raises(InputError, match="empty"):
        assess_volume(np.zeros((0, 32, 32)), model=ckpt, device="cpu")
    for orientation in ("diagonal", None, 3, "Axial", "x" * 10_000):
        with pytest.raises(SettingsError) as info:
            assess_volume(vol, model=ckpt, device="cpu", orientation=orientation)
        assert "orientation" in _one_line(info) and len(str(info.value)) < 200
    for good, sufficient in ((0.5, 0.7), ("high", 0.6), (float("nan"), 0.6), (1.5, 0.6),
                             (None, 0.6), (True, 0.6)):
        with pytest.raises(SettingsError) as info:
            ClinicalThresholds(good=good, sufficient=sufficient)
        assert "threshold" in _one_line(info)
    with pytest.raises(SettingsError, match="ClinicalThresholds"):
        assess_volume(vol, model=ckpt, device="cpu", thresholds=(0.85, 0.6))
    for spacing in ((0, 1), ("a", "b"), (1.0,), (1, 2, 3), (float("inf"), 1), None):
        with pytest.raises(SettingsError) as info:
            predict_slices(imgs, model=ckpt, device="cpu", pixel_spacing=spacing)
        assert "pixel spacing" in _one_line(info)
    for size in (0, -3, 2.5, "8", True, None):
        with pytest.raises(SettingsError) as info:
            predict_slices(imgs, model=ckpt, device="cpu", batch_size=size)
        assert "batch size" in _one_line(info)
        with pytest.raises(SettingsError):
            assess_volume(vol, model=ckpt, device="cpu", batch_size=size)
    for share in ("x", None, -0.1, 1.5, float("nan")):
        with pytest.raises(SettingsError) as info:
            assess_volume(vol, model=ckpt, device="cpu", min_foreground=share)
        assert "min_foreground" in _one_line(info)
    for spacing in ("abc", (1, 1), (1, 1, 0), (1, 1, float("nan"))):
        with pytest.raises(InputError) as info:
            geometry.volume(vol, spacing)
        _one_line(info)
    with pytest.raises(InputError):
        geometry.volume(np.array([["a", "b"]] * 3, dtype=object)[None].repeat(3, 0))
    for device in ("tpu", 3, None, "x" * 1000):
        with pytest.raises(SettingsError) as info:
            predict_slices(imgs, model=ckpt, device=device)
        assert "unknown device" in _one_line(info) and len(str(info.value)) < 120
    # still ValueErrors for callers that caught those before
    assert issubclass(SettingsError, ValueError)
    # numpy integers and floats are fine
    assert predict_slices(imgs, model=ckpt, device="cpu", batch_size=np.int64(1),
                          pixel_spacing=np.array([1.0, 1.0])).shape == (2,)


def test_read_volume_of_an_empty_path_does_not_read_the_current_folder(tmp_path):
    from MotionSSIMLib.imaging.io import read_volume

    here = Path.cwd()
    try:
        os.chdir(tmp_path)  # a folder that does exist
        with pytest.raises(InputError) as info:
            read_volume("")
        assert "empty path" in _one_line(info)
    finally:
        os.chdir(here)
