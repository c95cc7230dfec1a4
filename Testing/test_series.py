"""4D series: NIfTI, NRRD and DICOM inputs read frame by frame, assessed, reported.

The 4D NIfTI is made from the bundled sample: frames of eight motion-free slices, two of them
with one moved slice each, so the bundled model must rank exactly those frames worst. The DICOM
series are written with SimpleITK (tags for temporal position and b-value), in shuffled file
order. Frame and slice indices and positions are checked against the geometry written.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from MotionSSIMLib.assessment.frames import assess_series
from MotionSSIMLib.assessment.report import CSV_COLUMNS
from MotionSSIMLib.base.errors import InputError, SettingsError
from MotionSSIMLib.cli import main
from MotionSSIMLib.imaging import series as S
from MotionSSIMLib.imaging.checks import MAX_SERIES_VOXELS
from MotionSSIMLib.imaging.geometry import Volume
from MotionSSIMLib.imaging.io import read_series, read_volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "MotionSSIM" / "Resources" / "Samples" / "sample_t2_motion.nii.gz"
# Slices of the sample with no motion (true SSIM 1) and two with heavy motion (0.55, 0.48).
CLEAN = [1, 2, 6, 7, 10, 13, 29, 33]
MOVED = {1: (2, 12), 3: (5, 27)}  # frame: (slot, sample slice put there)


# --------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def sample4d(tmp_path_factory):
    """A 4D NIfTI (218 x 258 x 8 x 4) from the bundled sample and its affine."""
    img = nib.load(str(SAMPLE))
    data = np.asarray(img.dataobj)
    frames = []
    for t in range(4):
        picks = list(CLEAN)
        if t in MOVED:
            slot, moved = MOVED[t]
            picks[slot] = moved
        frames.append(data[..., picks])
    affine = img.affine.copy()
    affine[:3, 3] += [3.0, -7.0, 11.0]  # any origin: positions must follow it
    path = tmp_path_factory.mktemp("nifti4d") / "dwi_like.nii.gz"
    nib.save(nib.Nifti1Image(np.stack(frames, axis=-1), affine, img.header), str(path))
    return path, affine


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A randomly initialised ResNet-18 checkpoint (plumbing tests: no trained model needed)."""
    import torch

    from MotionSSIMLib.assessment.checkpoint import save_checkpoint
    from MotionSSIMLib.assessment.model import build_model

    torch.manual_seed(0)
    net = build_model("resnet18").eval()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # outputs near 0.5: random, yet inside the accepted output range
        last.weight.mul_(0.01)
        last.bias.fill_(0.5)
    path = tmp_path_factory.mktemp("model") / "random.safetensors"
    save_checkpoint(path, net, {"architecture": "resnet18"})
    return str(path)


def _head(n=10, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(100, 20, (n, 32, 36))
    a[1:-1, 8:24, 6:30] += 800
    return a.astype(np.int16)


def write_dicom_4d(folder, frames, tags_of, step=2.5, z0=-10.0, seed=1, instance=None):
    """Frames [t][k, j, i] as one DICOM series, one file per image, written in shuffled order
    under names that say nothing of the order; instance numbers run frame by frame (or
    `instance(t, k)`; `tags_of(t)` or `tags_of(t, k)` adds tags)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = "1.2.826.0.1.3680043.2.1125.77"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    jobs = [(t, k) for t in range(len(frames)) for k in range(frames[t].shape[0])]
    order = np.random.default_rng(seed).permutation(len(jobs))
    per_image = tags_of.__code__.co_argcount == 2
    for n, job in enumerate(order):  # file n holds a random image: names tell nothing
        t, k = jobs[job]
        sl = sitk.GetImageFromArray(frames[t][k])
        sl.SetSpacing((0.8, 0.9))
        tags = {"0008|0060": "MR", "0020|000e": uid, "0008|103e": "4D test",
                "0020|0032": f"-20\\-15\\{z0 + step * k:.4f}", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0013": str(t * 100 + k + 1 if instance is None else instance(t, k)),
                "0008|0018": f"{uid}.{t}.{k}"}
        tags.update(tags_of(t, k) if per_image else tags_of(t))
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"img{n:05d}.dcm"))
        writer.Execute(sl)
    return folder


# --------------------------------------------------------------------------- frame selection


@pytest.mark.parametrize("spec, n, expected", [
    ("0:3", 10, [0, 1, 2]), ("3,5,7", 10, [3, 5, 7]), ("8:", 10, [8, 9]), (":2", 10, [0, 1]),
    ("0:2,5,1", 10, [0, 1, 5]), ("0:100", 4, [0, 1, 2, 3]), (None, 3, [0, 1, 2]),
    ([2, 0], 3, [0, 2]),
])
def test_parse_frames(spec, n, expected):
    assert S.parse_frames(spec, n) == expected


@pytest.mark.parametrize("spec, pattern", [
    ("a", "not an index"), ("-1", "not an index"), ("5:2", "empty"), ("", "empty"),
    ("1.5", "not an index"), ("9", "beyond the 4 frames"), ("4:", "beyond"),
])
def test_parse_frames_refusals(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        S.parse_frames(spec, 4)


def test_frame_chooser_checks_syntax_without_expanding():
    # "5:" to a huge count would build a huge list if the syntax check expanded it
    assert S.frame_chooser("5:")(7) == [5, 6]
    with pytest.raises(ValueError):
        S.frame_chooser("x")
    with pytest.raises(SettingsError, match="--frames"):
        read_series(SAMPLE, frames="1-3")


# --------------------------------------------------------------------------- readers


def test_nifti_4d_read_as_series_only_when_asked(sample4d):
    path, affine = sample4d
    with pytest.raises(InputError, match="4D image with 4 volumes"):
        read_volume(path)  # the 3D reader still refuses it
    s = read_series(path, frames="1,3")
    data = np.asarray(nib.load(str(path)).dataobj)
    assert isinstance(s, S.Series) and s.n_frames == 2 and s.n_input_frames == 4
    assert s.frame_indices == (1, 3)
    assert np.array_equal(s.array[1], np.transpose(data[..., 3], (2, 1, 0)))
    assert np.allclose(s.ijk_to_ras(), affine, atol=1e-5)
    assert isinstance(read_series(SAMPLE), Volume)  # 3D stays a Volume


def test_5d_and_oversized_series_still_refused(tmp_path):
    five = np.random.default_rng(0).random((20, 20, 8, 2, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(five, np.eye(4)), str(tmp_path / "5d.nii"))
    with pytest.raises(InputError, match="5D image"):
        read_series(tmp_path / "5d.nii")
    # a header declaring 2^29 voxels in frames (no data behind it): refused on the header
    big = tmp_path / "big.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((256, 256, 128, 64))
    hdr.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.int16), np.eye(4)), str(big))
    raw = bytearray(big.read_bytes())
    raw[:348] = hdr.binaryblock
    big.write_bytes(bytes(raw))
    assert 256 * 256 * 128 * 64 > MAX_SERIES_VOXELS
    with pytest.raises(InputError, match="choose fewer frames with --frames") as info:
        read_series(big)
    assert str(big) in str(info.value)
    with pytest.raises(InputError, match="truncated|not a readable"):
        read_series(big, frames="0:4")  # within the bound: read, and the data is short


def test_nrrd_4d_and_list_axis_nrrd(tmp_path):
    rng = np.random.default_rng(3)
    frames = rng.random((3, 8, 20, 24)).astype(np.float32)  # [t, k, j, i]
    img = sitk.GetImageFromArray(frames, isVector=False)  # 4D scalar image
    img.SetSpacing((0.7, 0.8, 3.0, 1.0))
    img.SetOrigin((5.0, -4.0, 2.0, 0.0))
    sitk.WriteImage(img, str(tmp_path / "s4.nrrd"))
    s = read_series(tmp_path / "s4.nrrd", frames="0,2")
    assert s.frame_indices == (0, 2) and s.n_input_frames == 3
    assert np.array_equal(s.array, frames[[0, 2]])
    assert np.allclose(s.spacing, (0.7, 0.8, 3.0))
    assert np.allclose(s.origin, (-5.0, 4.0, 2.0))  # LPS -> RAS
    # Slicer's sequence / multi-volume NRRD: the first axis is a list of frames
    header = ("NRRD0004\ntype: float\ndimension: 4\nspace: left-posterior-superior\n"
              "sizes: 3 24 20 8\nspace directions: none (0.7,0,0) (0,0.8,0) (0,0,3)\n"
              "kinds: list domain domain domain\nendian: little\nencoding: raw\n"
              "space origin: (5,-4,2)\n\n")
    (tmp_path / "seq.nrrd").write_bytes(header.encode()
                                        + np.ascontiguousarray(np.moveaxis(frames, 0, -1))
                                        .tobytes())
    s = read_series(tmp_path / "seq.nrrd")
    assert s.n_frames == 3 and np.array_equal(s.array, frames)
    assert np.allclose(s.origin, (-5.0, 4.0, 2.0))
    # a vector image (kind "vector", e.g. a displacement field) is still refused
    vec = sitk.GetImageFromArray(np.moveaxis(frames, 0, -1).copy(), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "vector.nrrd"))
    with pytest.raises(InputError, match="vector image"):
        read_series(tmp_path / "vector.nrrd")


def test_gzip_nrrd_with_the_list_axis_last(tmp_path):
    # issue 26 #16: ITK reads a list axis as each voxel's components wherever the file puts
    # it; the verified data (file order) was compared with ITK's order: "corrupted"
    frames = np.random.default_rng(4).random((3, 8, 20, 24)).astype(np.float32)
    paths = {}
    for encoding in ("raw", "gzip"):
        header = ("NRRD0004\ntype: float\ndimension: 4\nspace: left-posterior-superior\n"
                  "sizes: 24 20 8 3\nspace directions: (0.7,0,0) (0,0.8,0) (0,0,3) none\n"
                  f"kinds: domain domain domain list\nendian: little\n"
                  f"encoding: {encoding}\nspace origin: (5,-4,2)\n\n")
        data = frames.astype("<f4").tobytes()  # x fastest, frames slowest
        paths[encoding] = p = tmp_path / f"{encoding}.nrrd"
        p.write_bytes(header.encode() + (gzip.compress(data) if encoding == "gzip" else data))
        s = read_series(p, frames="0,2")
        assert s.frame_indices == (0, 2) and s.n_input_frames == 3, encoding
        assert np.array_equal(s.array, frames[[0, 2]]), encoding
        assert np.allclose(s.spacing, (0.7, 0.8, 3.0)), encoding
    # still verified to the end of its stream
    cut = tmp_path / "cut.nrrd"
    cut.write_bytes(paths["gzip"].read_bytes()[:-100])
    with pytest.raises(InputError, match="corrupted"):
        read_series(cut)


def _declared_huge_nrrd(path, frames=32000, shape=(64, 64, 16)):
    """A valid gzip NRRD of `frames` int16 frames (4.2 GB of zeros for the default) in 4 MB:
    one gzip member of 1 MiB of zeros, repeated."""
    n = frames * int(np.prod(shape)) * 2
    member = gzip.compress(bytes(1 << 20), 9)
    header = (f"NRRD0004\ntype: short\ndimension: 4\nsizes: {' '.join(map(str, shape))} "
              f"{frames}\nendian: little\nencoding: gzip\n\n")
    with open(path, "wb") as f:
        f.write(header.encode())
        for _ in range(n >> 20):
            f.write(member)
        f.write(gzip.compress(bytes(n & ((1 << 20) - 1))))


def test_frames_bound_covers_what_itk_reads_whole(tmp_path):
    # issue 26 #11: ITK reads a NRRD or MetaImage whole: --frames 0 of 32,000 frames of
    # 64 x 64 x 16 peaked at 4.9 GB. Every frame counts now, refused from the header. The
    # child may not grow its address space by more than 1.5 GiB, so a reader that tried to
    # allocate the file fails there instead of taking the memory
    _declared_huge_nrrd(tmp_path / "huge.nrrd")
    (tmp_path / "huge.mha").write_text(
        "ObjectType = Image\nNDims = 4\nDimSize = 64 64 16 32000\nElementType = MET_SHORT\n"
        "ElementDataFile = huge.raw\n")
    (tmp_path / "huge.raw").write_bytes(bytes(1024))
    code = ("import resource, sys, pathlib\n"
            f"sys.path.insert(0, {str(ROOT / 'MotionSSIM')!r})\n"
            "from MotionSSIMLib.imaging.io import read_series\n"
            "from MotionSSIMLib.base.errors import InputError\n"
            "import torch  # the readers import it on first use: not the file's memory\n"
            "def status(key):\n"
            " return [int(x.split()[1]) for x in pathlib.Path('/proc/self/status')"
            ".read_text().splitlines() if x.startswith(key)][0] * 1024\n"
            "lim = status('VmSize') + 3 * 2**29\n"
            "resource.setrlimit(resource.RLIMIT_AS, (lim, lim))\n"
            "before = status('VmRSS')\n"
            f"for name in ('huge.nrrd', 'huge.mha'):\n"
            f" try:\n  read_series({str(tmp_path)!r} + '/' + name, frames='0')\n"
            " except InputError as e:\n  print(e)\n"
            "print((status('VmHWM') - before) // 2**20)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         encoding="utf-8", timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out
    for line, name in zip(lines, ("huge.nrrd", "huge.mha")):
        assert name in line and "too large (32000 frames of 64x64x16" in line, out
        assert "read whole, whatever --frames chooses" in line, out
    assert int(lines[-1]) < 100, lines  # MB beyond the imports: nothing was read


def test_dicom_time_points_read_as_frames(tmp_path):
    frames = [_head() + 300 * t for t in range(3)]
    folder = write_dicom_4d(tmp_path / "fmri", frames, lambda t: {"0020|0100": str(t + 1)})
    with pytest.raises(InputError, match="3 time points at each position"):
        read_volume(folder)  # the 3D reader still refuses it
    s = read_series(folder)
    assert s.n_frames == 3 and s.frame_labels == ("t=1", "t=2", "t=3")
    for t in range(3):
        assert np.array_equal(s.array[t], frames[t]), t
    assert np.allclose(s.spacing, (0.8, 0.9, 2.5))
    assert np.allclose(s.origin, (20.0, 15.0, -10.0))  # LPS (-20, -15, -10) in RAS
    part = read_series(folder, frames="2")
    assert part.frame_indices == (2,) and np.array_equal(part.array[0], frames[2])


def test_dicom_b_values_in_acquisition_order_and_incomplete_refused(tmp_path):
    bvals = ["0", "1000", "1000", "0"]  # two directions at b=1000: told apart by instance
    frames = [_head(seed=t) // (t + 1) for t in range(4)]
    folder = write_dicom_4d(tmp_path / "dwi", frames, lambda t: {"0018|9087": bvals[t]})
    s = read_series(folder)
    assert s.frame_labels == ("b=0", "b=1000", "b=1000", "b=0")
    for t in range(4):
        assert np.array_equal(s.array[t], frames[t]), t
    # one image missing: refused by name, not read as a shorter frame
    os.unlink(sorted(folder.iterdir())[0])
    with pytest.raises(InputError, match="incomplete 4D series"):
        read_series(folder)


def _same_frames(s, frames):
    """Every frame read is one frame written, each once, as labelled (never a mix)."""
    found = [next((t for t, f in enumerate(frames) if np.array_equal(a, f)), None)
             for a in s.array]
    assert sorted(found, key=str) == list(range(len(frames))), found
    return found


@pytest.mark.parametrize("told_by, tags_of", [
    ("acquisition time", lambda t, k: {"0008|0032": f"10{t:02d}{k:02d}.250000"}),
    ("trigger time", lambda t, k: {"0018|1060": f"{40 * t + 0.01 * k:.2f}"}),
    ("diffusion direction", lambda t, k: {"0018|9087": "1000",
                                          "0018|9089": ("0\\1\\0", "1\\0\\0", "0\\0\\1")[t]}),
])
def test_dicom_volumes_told_apart_by_another_tag_with_instances_per_volume(tmp_path, told_by,
                                                                             tags_of):
    # issue 26 #5: instance numbers restart in each volume, so they tie at every position;
    # the volumes differ only in a tag the sort key did not use: frames mixed both volumes
    frames = [_head(seed=t) + 300 * t for t in range(3)]
    folder = write_dicom_4d(tmp_path / "s", frames, tags_of, instance=lambda t, k: k + 1)
    s = read_series(folder)
    found = _same_frames(s, frames)
    if told_by == "diffusion direction":
        assert [s.frame_labels[t] for t in np.argsort(found)] == [
            "dir=0,1,0", "dir=1,0,0", "dir=0,0,1"]
    else:
        assert found == [0, 1, 2]  # acquisition order


def test_dicom_volumes_no_tag_tells_apart_refused_naming_the_tags(tmp_path):
    # the same without any such tag: refused, naming what could separate them; instance
    # numbers that restart in reverse order do not order them either (they are not unique),
    # nor acquisition times whose order alternates between positions (frames would overlap)
    frames = [_head(seed=t) + 300 * t for t in range(2)]
    alternating = lambda t, k: {"0008|0032": f"1200{2 * k + (t + k) % 2:02d}"}  # noqa: E731
    for name, instance, tags_of in (("restart", lambda t, k: k + 1, lambda t: {}),
                                    ("reversed", lambda t, k: k + 1 if t == 0 else 10 - k,
                                     lambda t: {}),
                                    ("alternating", lambda t, k: k + 1, alternating)):
        folder = write_dicom_4d(tmp_path / name, frames, tags_of, instance=instance)
        with pytest.raises(InputError) as info:
            read_series(folder)
        msg = str(info.value)
        assert "\n" not in msg and str(folder) in msg, msg
        for tag in ("cannot be separated", "instance numbers repeat", "AcquisitionTime",
                    "TemporalPositionIdentifier", "DiffusionGradientOrientation"):
            assert tag in msg, msg


def test_fully_duplicated_dicom_folder_refused_as_duplicates(tmp_path):
    # issue 26 #6: every file copied under another name read as a 2-frame series
    folder = write_dicom_4d(tmp_path / "s", [_head()], lambda t: {})
    for p in sorted(folder.iterdir()):
        shutil.copy(p, folder / f"copy of {p.name}")
    with pytest.raises(InputError, match="duplicate images.*same image.*SOPInstanceUID"):
        read_series(folder)
    with pytest.raises(InputError, match="duplicate slice position"):
        read_volume(folder)  # the 3D reader, as for one duplicated slice
    # copies given new UIDs: the same tags and identical pixel data at each position
    again = write_dicom_4d(tmp_path / "uids", [_head(), _head()], lambda t: {},
                           instance=lambda t, k: k + 1)
    with pytest.raises(InputError, match="duplicate images.*identical pixel data"):
        read_series(again)


def test_dicom_4d_far_from_the_isocentre(tmp_path):
    # issue 26 #18: at z = 1200 mm a tolerance of 1e-3 x |z| (1.2 mm) exceeded the 1 mm spacing
    frames = [_head() + 300 * t for t in range(2)]
    folder = write_dicom_4d(tmp_path / "s", frames, lambda t: {"0020|0100": str(t + 1)},
                            step=1.0, z0=1200.0)
    s = read_series(folder)
    assert s.n_frames == 2 and np.array_equal(s.array, np.stack(frames))
    assert np.allclose(s.spacing, (0.8, 0.9, 1.0)) and np.isclose(s.origin[2], 1200.0)


# --------------------------------------------------------------------------- assessment + CLI


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_4d_nifti_moved_frames_ranked_worst(sample4d, tmp_path, capsys):
    path, affine = sample4d
    out = tmp_path / "qc"
    assert main(["assess", str(path), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    summaries = list(out.glob("*_summary.json"))
    assert len(summaries) == 1
    s = json.loads(summaries[0].read_text())
    stem = summaries[0].name[: -len("_summary.json")]
    assert s["kind"] == "series" and s["n_frames"] == 4 and s["n_input_frames"] == 4
    # the two frames with a moved slice are the worst, each for that slice
    worst = s["worst_frames"]
    assert {w["frame"] for w in worst[:2]} == set(MOVED), worst
    for w in worst[:2]:
        assert w["worst_slice"]["index"] == MOVED[w["frame"]][0]
        assert w["min_ssim"] < 0.6
    verdicts = {f["frame"]: f["verdict"] for f in s["frames"]}
    assert verdicts[1] == verdicts[3] == "insufficient: re-scan"
    assert not verdicts[0].startswith("insufficient") and not verdicts[2].startswith("insuff")
    assert s["verdict"] == "insufficient: re-scan" and s["frame_counts"]["insufficient"] == 2
    top = s["worst_slices"][0]
    assert (top["frame"], top["index"]) in {(f, slot) for f, (slot, _) in MOVED.items()}
    assert f"worst frame {top['frame']} axial slice {top['index']}" in line
    # CSV: frame column first, then the 3D columns; indices and positions from the affine
    rows = _rows(out / f"{stem}_slices.csv")
    assert list(rows[0].keys()) == ["frame", *CSV_COLUMNS]
    assert len(rows) == 32
    assert [int(r["frame"]) for r in rows] == [t for t in range(4) for _ in range(8)]
    assert [int(r["index"]) for r in rows] == list(range(8)) * 4
    shape = nib.load(str(path)).shape
    for r in rows:
        centre = affine @ [(shape[0] - 1) / 2, (shape[1] - 1) / 2, int(r["index"]), 1.0]
        assert float(r["position_mm"]) == pytest.approx(centre[2], abs=1e-3)
    for name in ("chart", "heatmap"):
        png = (out / f"{stem}_{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert s["files"]["heatmap"] == f"{stem}_heatmap.png"


def test_cli_frames_subset_and_3d_path_unchanged(sample4d, tmp_path, capsys, random_model):
    path, _ = sample4d
    out = tmp_path / "qc"
    assert main(["assess", str(path), "--frames", "1,3", "--out", str(out), "--device", "cpu",
                 "--model", random_model, "--no-progress"]) == 0
    (summary,) = out.glob("*_summary.json")
    s = json.loads(summary.read_text())
    assert [f["frame"] for f in s["frames"]] == [1, 3] and s["n_input_frames"] == 4
    rows = _rows(str(summary).replace("_summary.json", "_slices.csv"))
    assert {int(r["frame"]) for r in rows} == {1, 3}
    # a malformed selection: one line, exit 2, before any work
    assert main(["assess", str(path), "--frames", "1..3", "--out", str(out)]) == 2
    assert "error: --frames: frame selection '1..3'" in capsys.readouterr().err
    # a 3D input next to it: exactly the 3D report set (no frame column, no heatmap)
    vol = np.transpose(_head(12).astype(np.float32), (2, 1, 0))
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.9, 2.5, 1.0])), str(tmp_path / "t2.nii"))
    out3 = tmp_path / "qc3"
    assert main(["assess", str(tmp_path / "t2.nii"), "--frames", "0:2", "--out", str(out3),
                 "--device", "cpu", "--model", random_model, "--no-progress"]) == 0
    (summary3,) = out3.glob("*_summary.json")
    rows = _rows(str(summary3).replace("_summary.json", "_slices.csv"))
    assert list(rows[0].keys()) == list(CSV_COLUMNS) and len(rows) == 12
    assert not list(out3.glob("*_heatmap.png"))
    assert "kind" not in json.loads(summary3.read_text())


def test_assess_dicom_series_positions_and_progress(tmp_path, random_model):
    frames = [_head() + 300 * t for t in range(3)]
    folder = write_dicom_4d(tmp_path / "fmri", frames, lambda t: {"0020|0100": str(t + 1)},
                            z0=-10.0)
    s = read_series(folder, frames="0:3")
    seen = []
    a = assess_series(s, model=random_model, device="cpu", batch_size=4,
                      progress=lambda d, n: seen.append((d, n)))
    assert [f.frame for f in a.frames] == [0, 1, 2]
    assert [f.label for f in a.frames] == ["t=1", "t=2", "t=3"]
    assert a.orientation == "axial" and a.axis == "k"
    for f in a.frames:
        assert [r.index for r in f.assessment.records] == list(range(10))
        assert np.allclose([r.position_mm for r in f.assessment.records],
                           -10.0 + 2.5 * np.arange(10))
    assert seen[-1] == (30, 30) and all(d <= n for d, n in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    frames_, slices, ssim, empty = a.matrix()
    assert ssim.shape == (3, 10) and list(frames_) == [0, 1, 2] and list(slices) == list(range(10))
    # cancel: stops at the next batch
    from MotionSSIMLib.assessment.inference import Cancelled

    with pytest.raises(Cancelled):
        assess_series(s, model=random_model, device="cpu", cancel=lambda: True)


def test_a_blank_frame_is_listed_not_fatal(random_model):
    arr = np.stack([_head().astype(np.float32), np.zeros((10, 32, 36), np.float32),
                    _head(seed=2).astype(np.float32)])
    s = S.series_from_array(arr, (0.8, 0.9, 2.5), name="with_blank")
    a = assess_series(s, model=random_model, device="cpu")
    entries = {f["frame"]: f for f in a.summary["frames"]}
    assert entries[1]["verdict"] == "no assessable slices" and "no assessable" in entries[1]["error"]
    assert a.summary["frame_counts"]["unassessed"] == 1 and a.summary["n_frames_assessed"] == 2
    frames_, _, ssim, empty = a.matrix()
    assert np.isnan(ssim[1]).all() and empty[1].all()
    with pytest.raises(InputError, match="no assessable slice in any"):
        assess_series(S.series_from_array(np.zeros((2, 10, 32, 36), np.float32)),
                      model=random_model, device="cpu")


# --------------------------------------------------------------------------- Slicer (slicer-core)


@pytest.fixture()
def mrml():
    """A fresh MRML scene (slicer-core) as slicer.mrmlScene, with a sequences logic that
    updates the browsers' proxy nodes as Slicer's does."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(scene)
    yield slicer, scene
    logic.SetMRMLScene(None)
    slicer.mrmlScene = None
    scene.Clear(1)


AFFINE = np.array([[0.8, 0, 0, -12.0], [0, 0.9, 0, 7.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1.0]])


def _sequence(slicer, scene, frames):
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "dwi")
    seq.SetIndexName("time")
    seq.SetIndexUnit("s")
    for t, arr in enumerate(frames):
        node = slicer.util.addVolumeFromArray(arr, AFFINE, name=f"frame{t}")
        seq.SetDataNodeAtValue(node, str(2.0 * t))
        scene.RemoveNode(node)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "dwi browser")
    browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    browser.SetSelectedItemNumber(0)
    return seq, browser


def _column(table, name):
    column = table.GetTable().GetColumnByName(name)
    return np.array([column.GetValue(i) for i in range(column.GetNumberOfTuples())])


def test_sequence_node_assessed_chart_follows_browser_and_cells_jump(mrml, random_model):
    slicer, scene = mrml
    from MotionSSIMLib.bridge import node_jobs, series_results

    frames = [(_head(seed=t) + 200 * t).astype(np.float32) for t in range(4)]
    seq, browser = _sequence(slicer, scene, frames)
    proxy = browser.GetProxyNode(seq)
    # what the panel assesses for the proxy
    assert series_results.series_source(proxy) == (seq, browser)
    s = series_results.series_from_sequence(seq)
    assert s.frame_labels[1] == "time = 2.0 s" and np.array_equal(s.array[3], frames[3])
    assert np.allclose(s.ijk_to_ras(), AFFINE)
    result = node_jobs.assess_sequence_node(seq, model=random_model, device="cpu", batch_size=8)
    a = result.assessment
    assert result.browser is browser and result.display is proxy
    # the frame x slice table: one row per frame, the slices' SSIM after the fixed columns
    table = result.heatmap
    assert table.GetNumberOfRows() == 4
    names = [table.GetTable().GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert names == [*series_results.HEATMAP_FIXED_COLUMNS, *(f"slice {k}" for k in range(10))]
    _, _, ssim, empty = a.matrix()
    assert np.allclose(_column(table, "slice 4"), np.where(empty[:, 4], np.nan, ssim[:, 4]),
                       equal_nan=True)
    assert seq.GetNodeReference(series_results.REF_HEATMAP) is table
    # what the panel's click handler relies on: table row/column = view row/column
    assert table.GetUseColumnNameAsColumnHeader() and not table.GetUseFirstColumnAsRowHeader()
    # the chart shows the browser's frame, and follows it
    def plotted():
        return slicer.util.arrayFromTableColumn(result.frame_result.plot_table, "ssim")

    assert result.shown_frame == 0 and np.allclose(plotted(), ssim[0])
    browser.SetSelectedItemNumber(2)
    assert result.shown_frame == 2 and np.allclose(plotted(), ssim[2])
    assert "frame 2" in result.frame_result.chart.GetTitle()
    assert result.frame_result.volume is proxy
    # positions in the per-slice table follow the input's geometry (k axis, 2.5 mm)
    pos = _column(result.frame_result.table, "position_mm")
    centre = AFFINE @ np.c_[np.full(10, 17.5), np.full(10, 15.5), np.arange(10), np.ones(10)].T
    assert np.allclose(pos, centre[2])
    # a cell: that frame and slice shown
    col = names.index("slice 4")
    assert series_results.heatmap_cell(result, 3, col) == (3, 4)
    assert series_results.heatmap_cell(result, 3, names.index("verdict")) is None
    ras = series_results.jump_to_frame_and_slice(result, 3, 4)
    assert browser.GetSelectedItemNumber() == 3 and result.shown_frame == 3
    assert np.allclose(plotted(), ssim[3])
    assert ras[2] == pytest.approx(-30.0 + 2.5 * 4)
    series_results.stop_following(result)
    browser.SetSelectedItemNumber(1)
    assert result.shown_frame == 3  # no longer followed
    # assessing again updates the same nodes
    tables = scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    again = node_jobs.assess_sequence_node(seq, model=random_model, device="cpu", frames="1,3")
    assert again.heatmap is table and table.GetNumberOfRows() == 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == tables
    assert list(_column(table, "frame")) == [1, 3]
    series_results.stop_following(again)


def test_multivolume_node_and_background_job(mrml, random_model):
    slicer, scene = mrml
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    from MotionSSIMLib.bridge import node_jobs, series_results

    frames = np.stack([(_head(seed=t) + 100 * t).astype(np.float32) for t in range(3)])
    image = vtk.vtkImageData()
    image.SetDimensions(36, 32, 10)
    scalars = numpy_to_vtk(np.moveaxis(frames, 0, -1).reshape(-1, 3).copy(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mv")
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(AFFINE))
    node.SetAttribute(series_results.MULTIVOLUME_FRAMES_ATTRIBUTE, "3")
    node.SetAttribute(series_results.MULTIVOLUME_LABELS_ATTRIBUTE, "0,500,1000")
    assert series_results.series_source(node) == (node, None)
    s = series_results.series_from_multivolume(node)
    assert np.array_equal(s.array, frames) and s.frame_labels == ("0", "500", "1000")
    assert np.allclose(s.ijk_to_ras(), AFFINE)
    job = node_jobs.SeriesAssessmentJob(node, model=random_model, device="cpu", batch_size=8)
    assert job.wait(300)
    result = job.finish()
    assert result.heatmap.GetNumberOfRows() == 3 and result.display is node
    assert result.frame_result.table.GetNumberOfRows() == 10 and result.shown_frame == 0
    assert job.total_slices == 30 and job.done_slices == 30
    series_results.jump_to_frame_and_slice(result, 2, 5)  # no browser: the results switch directly
    assert result.shown_frame == 2


# --------------------------------------------------------------------------- panel (static)
# The Qt side runs only inside Slicer: its wiring is checked on the source, and the MRML names
# it uses against slicer-core.


def _module_tree():
    import ast

    return ast.parse((ROOT / "MotionSSIM" / "MotionSSIM.py").read_text())


def _method(tree, cls, name):
    import ast

    c = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(n for n in c.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_panel_heatmap_clicks_jump_to_frame_and_slice():
    import ast

    tree = _module_tree()
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef)
                  and n.name == "MotionSSIMWidget")
    text = ast.unparse(widget)
    assert "tableView.connect('clicked(QModelIndex)', self.onHeatmapClicked)" in text
    assert "tableView.disconnect('clicked(QModelIndex)', self.onHeatmapClicked)" in text
    click = ast.unparse(_method(tree, "MotionSSIMWidget", "onHeatmapClicked"))
    assert "mapToSource" in click  # the view sorts through a proxy model
    assert "series_results.heatmap_cell(" in click
    assert "series_results.jump_to_frame_and_slice(" in click
    apply = ast.unparse(_method(tree, "MotionSSIMWidget", "onApplyButton"))
    assert "series_results.series_source(" in apply and "self._askSeriesScope(" in apply
    assert "wholeSeries=wholeSeries" in apply
    start = ast.unparse(_method(tree, "MotionSSIMLogic", "startAssessment"))
    assert "node_jobs.SeriesAssessmentJob(" in start and "node_jobs.AssessmentJob(" in start
    for method in ("onSceneStartClose", "cleanup"):  # the browser observer goes with them
        assert "_stopSeries" in ast.unparse(_method(tree, "MotionSSIMWidget", method))


def test_panel_asks_this_frame_or_all_frames_of_a_sequence():
    """Before a sequence is assessed (MONAIAuto3DSeg asks the same): the frame shown, or all
    N frames with an estimate of the time."""
    import ast

    tree = _module_tree()
    ask = ast.unparse(_method(tree, "MotionSSIMWidget", "_askSeriesScope"))
    assert "'This frame'" in ask and "f'All {frames} frames'" in ask
    assert "jobs.series_estimate(" in ask and "qt.QMessageBox.Cancel" in ask
    from MotionSSIMLib.bridge.jobs import series_estimate

    assert series_estimate(10, 12, None) == "120 slices"
    assert series_estimate(10, 12, 0.5) == "120 slices, about 60 s at the speed of the last " \
        "assessment"
    assert series_estimate(100, 30, 0.5).startswith("3000 slices, about 25 min")


def test_slices_per_frame_matches_what_is_assessed():
    from MotionSSIMLib.imaging.geometry import extract_slices, slice_count

    for shape, spacing in (((9, 40, 36), (1.0, 1.0, 3.0)), ((40, 36, 12), (4.0, 0.9, 0.9)),
                           ((20, 24, 28), (1.0, 1.0, 1.0))):
        g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        array = np.where(sum(x**2 for x in g) < 0.7, 100.0, 0.0).astype(np.float32)
        vol = Volume(array, spacing, np.eye(3), (0.0, 0.0, 0.0))
        for orientation in ("auto", "axial", "coronal", "sagittal"):
            assert slice_count(vol, orientation) == len(extract_slices(vol, orientation).images)


def test_logic_sequence_entry_uses_real_names():
    import ast
    import inspect

    slicer = pytest.importorskip("slicer")
    from MotionSSIMLib.bridge import node_jobs

    tree = _module_tree()
    process = _method(tree, "MotionSSIMLogic", "processSequence")
    call = next(n for n in ast.walk(process) if isinstance(n, ast.Call)
                and ast.unparse(n.func) == "node_jobs.assess_sequence_node")
    accepted = set(inspect.signature(node_jobs.assess_sequence_node).parameters)
    assert {k.arg for k in call.keywords} <= accepted
    show = ast.unparse(_method(tree, "MotionSSIMLogic", "showSeriesResults"))
    assert "SlicerLayoutFourUpPlotTableView" in show
    assert hasattr(slicer.vtkMRMLLayoutNode, "SlicerLayoutFourUpPlotTableView")
    for name in ("SetActiveTableID", "SetActivePlotChartID"):
        assert name in show and hasattr(slicer.vtkMRMLSelectionNode, name)
