"""Reading every supported format with its geometry, and clear one-line refusals."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from MotionSSIMLib.errors import InputError
from MotionSSIMLib.io import read_input, read_volume


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
    for path, pattern in ((nii, "too large"), (mha, "too large"), (nrrd4d, "4D image with 30")):
        with pytest.raises(InputError) as info:
            read_volume(path)
        msg = str(info.value)
        assert pattern in msg and str(path) in msg and "\n" not in msg, msg
