"""Reading every supported format with its geometry, and clear one-line refusals."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.imaging import checks
from MotionSSIMLib.imaging.checks import check_budget
from MotionSSIMLib.imaging.io import read_input, read_volume

ROOT = Path(__file__).resolve().parents[1]


def _head(shape=(12, 40, 36), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(10, 2, shape).astype(np.float32)
    a[2:10, 8:32, 6:30] += 300
    return a


def _oblique_affine():
    c, s = np.cos(0.2), np.sin(0.2)
    aff = np.diag([0.9, 1.1, 4.0, 1.0])
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ aff[:3, :3]
    aff[:3, 3] = [-20, 15, -30]
    return aff


def test_nifti_geometry_matches_nibabel(tmp_path):
    arr = _head()  # [k, j, i]
    aff = _oblique_affine()
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(arr, (2, 1, 0)), aff), path)
    vol = read_volume(path)
    assert np.allclose(vol.array, arr)
    assert np.allclose(vol.ijk_to_ras(), aff, atol=1e-4)
    assert np.allclose(vol.spacing, (0.9, 1.1, 4.0), atol=1e-5)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd", ".nii"])
def test_itk_formats_round_trip(tmp_path, suffix):
    arr = _head()
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 3.0))
    img.SetOrigin((10.0, -5.0, 2.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))  # LPS, permuted and flipped
    sitk.WriteImage(img, str(tmp_path / f"v{suffix}"))
    vol = read_volume(tmp_path / f"v{suffix}")
    assert np.allclose(vol.array, arr)
    # LPS -> RAS: x and y flip sign
    assert np.allclose(vol.directions, [[0, -1, 0], [-1, 0, 0], [0, 0, -1]])
    assert np.allclose(vol.origin, (-10.0, 5.0, 2.0))


def test_dicom_series_folder(tmp_path):
    arr = _head().astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.5))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder = tmp_path / "dicom"
    folder.mkdir()
    for k in range(arr.shape[0]):
        sl = img[:, :, k]
        for tag, value in (("0008|0060", "MR"), ("0020|000e", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|0032", f"0\\0\\{2.5 * k}"), ("0020|0013", str(k + 1)),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0018|0050", "2.5")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    vol = read_volume(folder)
    assert vol.array.shape == arr.shape
    assert np.allclose(vol.array, arr)
    assert vol.spacing[2] == pytest.approx(2.5, abs=1e-3)


def test_2d_images_become_one_slice(tmp_path):
    rng = np.random.default_rng(1)
    img = (rng.random((64, 80)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(img), str(tmp_path / "s.png"))
    sitk.WriteImage(sitk.GetImageFromArray(img), str(tmp_path / "s.tif"))
    rgb = np.stack([img, img // 2, img // 3], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    np.save(tmp_path / "s.npy", img.astype(np.float32))
    for name in ("s.png", "s.tif", "rgb.png", "s.npy"):
        vol = read_input(tmp_path / name)
        assert vol.array.shape == (1, 64, 80), name
    assert np.allclose(read_input(tmp_path / "s.png").array[0], img)


def _write_nifti(path, arr):
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    return path


@pytest.mark.parametrize("case, pattern", [
    ("missing", "no such file"),
    ("text", "not a readable"),
    ("empty_file", "empty"),
    ("4d", "4D"),
    ("nan", "NaN"),
    ("constant", "constant"),
    ("tiny", "too small"),
    ("huge", "too large"),
    ("pickle_npy", "npy"),
    ("empty_dir", "no DICOM series"),
])
def test_bad_inputs_one_line_error_naming_the_file(tmp_path, case, pattern):
    p = tmp_path / f"{case}.nii"
    if case == "text":
        p.write_text("this is not an image\n")
    elif case == "empty_file":
        p.write_bytes(b"")
    elif case == "4d":
        _write_nifti(p, np.random.default_rng(0).random((20, 20, 8, 3)).astype(np.float32))
    elif case == "nan":
        a = _head().astype(np.float32)
        a[3, 3, 3] = np.nan
        _write_nifti(p, a)
    elif case == "constant":
        _write_nifti(p, np.full((20, 20, 8), 5, np.float32))
    elif case == "tiny":
        _write_nifti(p, np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    elif case == "huge":
        _write_nifti(p, np.random.default_rng(0).random((3000, 20, 2)).astype(np.float32))
    elif case == "pickle_npy":
        p = tmp_path / "obj.npy"
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "empty_dir":
        p = tmp_path / "emptydir"
        p.mkdir()
    with pytest.raises(InputError) as info:
        read_input(p)
    msg = str(info.value)
    assert pattern in msg and str(p) in msg and "\n" not in msg


def test_singleton_fourth_dimension_is_squeezed(tmp_path):
    a = _head()
    p = _write_nifti(tmp_path / "t1.nii.gz", np.transpose(a, (2, 1, 0))[..., None])
    assert read_volume(p).array.shape == a.shape


def test_size_is_checked_on_the_header_before_the_voxels_are_read(tmp_path):
    # Headers that declare huge or 4D images, with (almost) no voxel data behind them: the
    # refusal must come from the header, before any attempt to read 64 GiB of voxels.
    nii = tmp_path / "huge.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), nii)
    raw = bytearray(nii.read_bytes())
    raw[:348] = hdr.binaryblock  # same header layout, bigger declared shape, data left short
    nii.write_bytes(bytes(raw))
    mha = tmp_path / "huge.mha"
    mha.write_text("ObjectType = Image\nNDims = 3\nDimSize = 5000 5000 5000\n"
                   "ElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    nrrd4d = tmp_path / "series.nhdr"
    nrrd4d.write_text("NRRD0004\ntype: short\ndimension: 4\nsizes: 64 64 20 30\n"
                      "encoding: raw\nendian: little\ndata file: series.raw\n")
    (tmp_path / "series.raw").write_bytes(b"")  # ITK opens it, but reads nothing yet
    for path, pattern in ((nii, "too large"), (mha, "too large"), (nrrd4d, "4D image with 30 volumes")):
        with pytest.raises(InputError) as info:
            read_volume(path)
        msg = str(info.value)
        assert pattern in msg and str(path) in msg and "\n" not in msg, msg


# --- issue 12: integrity, bounded memory, multi-component images, messages -------------------

def _refused(path, *patterns, **kw):
    with pytest.raises(InputError) as info:
        read_volume(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    for pat in patterns:
        assert pat in msg, msg
    return msg


def test_complex_voxels_read_as_magnitude_with_a_note(tmp_path, caplog):
    rng = np.random.default_rng(3)
    mag = _head()
    phase = rng.uniform(-np.pi, np.pi, mag.shape)
    z = (mag * np.exp(1j * phase)).astype(np.complex64)
    paths = []
    for suffix in (".mha", ".nrrd"):
        p = tmp_path / f"c{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(z), str(p), useCompression=True)
        paths.append(p)
    nib.save(nib.Nifti1Image(np.transpose(z, (2, 1, 0)), np.eye(4)), tmp_path / "c.nii.gz")
    np.save(tmp_path / "c.npy", z)
    paths += [tmp_path / "c.nii.gz", tmp_path / "c.npy"]
    for p in paths:
        caplog.clear()
        with caplog.at_level("WARNING", logger="MotionSSIMLib.imaging.checks"):
            vol = read_volume(p)
        assert np.allclose(vol.array, mag, rtol=1e-4, atol=1e-3), p  # not the real part
        assert any("magnitude" in r.getMessage() and str(p) in r.getMessage()
                   for r in caplog.records), p


def test_complex_note_shown_without_debug_once_per_input(tmp_path):
    # issue 26 #17: the note was logged while io captured fd 2 (library chatter), so only
    # --debug showed it; a 4D input noted it once per frame
    rng = np.random.default_rng(5)
    mag = np.transpose(_head(), (2, 1, 0)).astype(np.float32)
    z = mag * np.exp(1j * rng.uniform(-np.pi, np.pi, mag.shape))
    nib.save(nib.Nifti1Image(z.astype(np.complex64), np.eye(4)), tmp_path / "c3.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([z] * 3, -1).astype(np.complex64), np.eye(4)),
             tmp_path / "c4.nii.gz")
    out = subprocess.run(
        [sys.executable, "-m", "MotionSSIMLib", "assess", str(tmp_path / "c3.nii.gz"),
         str(tmp_path / "c4.nii.gz"), "--out", str(tmp_path / "out"), "--device", "cpu",
         "--no-progress", "--tta", "1"], capture_output=True, text=True, encoding="utf-8",
        env={**os.environ, "PYTHONPATH": str(ROOT / "MotionSSIM")}, timeout=300)
    assert out.returncode == 0, out
    notes = out.stderr.strip().splitlines()
    assert notes == [f"note: {tmp_path / n}: complex voxels: their magnitude is assessed"
                     for n in ("c3.nii.gz", "c4.nii.gz")], out.stderr


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_vector_images_refused(tmp_path, suffix):
    v = np.stack([_head(), _head(seed=1), _head(seed=2)], axis=-1)
    p = tmp_path / f"v{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(v, isVector=True), str(p))
    _refused(p, "vector image (3 components")


def test_resampling_budget_refused_on_the_header(tmp_path):
    # 287 KB: 2048 x 16 x 8 int16 with in-plane spacings 1e-4 and 1 mm would be resampled to
    # 2048 x 160000 pixels per slice (the 10 GB); refused before any voxel is read
    a = np.random.default_rng(0).integers(0, 1000, (2048, 16, 8)).astype(np.int16)
    p = tmp_path / "thin.nii"
    nib.save(nib.Nifti1Image(a, np.diag([1e-4, 1.0, 1.0, 1.0])), p)
    _refused(p, "would resample", "GB")
    check_budget("ok", (256, 256, 180), (1.0, 1.0, 1.2))  # an ordinary head passes
    check_budget("ok", (512, 512, 40), (0.45, 0.45, 5.0))  # and a thick-slice one
    with pytest.raises(InputError, match="too large"):
        check_budget("x", (2048, 2048, 64))  # 2^28 voxels: above MAX_VOXELS


def test_data_file_must_be_a_regular_file_in_the_header_folder(tmp_path):
    hdr = ("NRRD0004\ntype: short\ndimension: 3\nsizes: 2048 2048 256\nencoding: raw\n"
           "endian: little\ndata file: {}\n")
    dev = tmp_path / "urandom.nhdr"  # the 231-byte header: 8 GB from /dev/urandom
    dev.write_text(hdr.format("/dev/urandom"))
    _refused(dev, "outside the header's folder")
    (tmp_path / "zero.raw").symlink_to("/dev/zero")
    link = tmp_path / "link.nhdr"
    link.write_text(hdr.format("zero.raw"))
    _refused(link, "outside the header's folder")
    up = tmp_path / "sub"
    up.mkdir()
    (tmp_path / "secret.raw").write_bytes(b"\0" * 64)
    (up / "up.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\n"
                               "ElementType = MET_SHORT\nElementDataFile = ../secret.raw\n")
    _refused(up / "up.mhd", "outside the header's folder")
    os.mkfifo(tmp_path / "pipe.raw")
    fifo = tmp_path / "fifo.mhd"
    fifo.write_text("ObjectType = Image\nNDims = 3\nDimSize = 40 40 8\n"
                    "ElementType = MET_SHORT\nElementDataFile = pipe.raw\n")
    _refused(fifo, "FIFO")
    # a detached file that is short: refused as truncated, by name
    (tmp_path / "short.raw").write_bytes(b"\0" * 100)
    short = tmp_path / "short.mhd"
    short.write_text("ObjectType = Image\nNDims = 3\nDimSize = 40 40 8\n"
                     "ElementType = MET_SHORT\nElementDataFile = short.raw\n")
    with pytest.raises(InputError, match="short.raw: truncated"):
        read_volume(short)
    # and an ordinary detached pair still reads
    a = _head().astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "pair.mhd"))
    assert np.array_equal(read_volume(tmp_path / "pair.mhd").array, a)


def test_fifo_input_refused_without_hanging(tmp_path):
    fifo = tmp_path / "scan.nii"
    os.mkfifo(fifo)
    code = ("import sys; sys.path.insert(0, 'MotionSSIM'); from MotionSSIMLib.imaging.io import "
            f"read_volume\ntry:\n read_volume({str(fifo)!r})\nexcept Exception as e:\n print(e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         encoding="utf-8", timeout=60)
    assert "FIFO" in out.stdout and str(fifo) in out.stdout, out


def test_npy_checked_on_its_header(tmp_path):
    # a 4D .npy (two volumes) and a .npy declaring 2^33 voxels with 1 KB behind it: refused
    # from the header, without reading (or mapping) the data
    p = tmp_path / "t.npy"
    np.save(p, np.zeros((2, 4, 32, 32), np.float32))
    _refused(p, "2D or 3D", "(2, 4, 32, 32)")
    big = tmp_path / "big.npy"
    with open(big, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (2048, 2048, 2048)})
        f.write(b"\0" * 1024)
    _refused(big, "too large")
    short = tmp_path / "short.npy"
    with open(short, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<i2", "fortran_order": False, "shape": (20, 64, 64)})
        f.write(b"\1" * 1024)
    _refused(short, "truncated")


def test_messages_name_the_real_cause(tmp_path):
    huge = _head().astype(np.float64)
    huge[3, 3, 3] = 1e300
    _write_nifti(tmp_path / "e300.nii", np.transpose(huge, (2, 1, 0)))
    _refused(tmp_path / "e300.nii", "voxel values reach 1e+300")
    img = nib.Nifti1Image(np.transpose(_head().astype(np.int16), (2, 1, 0)), np.eye(4))
    img.header.set_slope_inter(1e37, 0)
    nib.save(img, tmp_path / "slope.nii")
    _refused(tmp_path / "slope.nii", "scl_slope 1e+37")
    five = np.random.default_rng(0).random((20, 20, 8, 1, 3)).astype(np.float32)
    _write_nifti(tmp_path / "5d.nii", five)
    _refused(tmp_path / "5d.nii", "5D image with 3 volumes of 20x20x8")
    link = tmp_path / "gone.nii"
    link.symlink_to(tmp_path / "deleted.nii")
    _refused(link, "dangling symlink")
    with pytest.raises(InputError, match="empty path"):
        read_volume("")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_is_not_missing(tmp_path):
    p = _write_nifti(tmp_path / "locked.nii", np.transpose(_head(), (2, 1, 0)))
    p.chmod(0)
    _refused(p, "permission denied")


def test_library_output_captured_and_logged_at_debug(tmp_path, capfd, caplog):
    p = tmp_path / "x.nii"
    with caplog.at_level("DEBUG", logger="MotionSSIMLib.imaging.checks"):
        with checks._captured(p):
            os.write(2, b"WARNING: In itkSomething.cxx, line 42: chatter\n")
            warnings.warn("nibabel says something", UserWarning, stacklevel=1)
    assert capfd.readouterr().err == ""
    text = " ".join(r.getMessage() for r in caplog.records if r.levelname == "DEBUG")
    assert "chatter" in text and "nibabel says something" in text and str(p) in text
