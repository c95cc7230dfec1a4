"""Reading volumes and images from disk, with one-line errors that name the file.

NIfTI, NRRD, MHA/MHD and DICOM series folders are read with SimpleITK (their LPS geometry turned
into RAS); 2D PNG/TIFF images and NPY arrays become one-slice volumes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .geometry import Volume, volume

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MIN_SIDE = 16
MAX_SIDE = 2048
MAX_VOXELS = 2**30


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _check_values(path: Path, arr: np.ndarray) -> None:
    if arr.size == 0:
        raise InputError(f"{path}: the image is empty")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{path}: unsupported voxel type {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        raise InputError(f"{path}: {int((~finite).sum())} voxels are NaN or infinite")
    if arr.min() == arr.max():
        raise InputError(f"{path}: the image is constant (every voxel is {arr.flat[0]})")


def _check_dims(path: Path, i: int, j: int, k: int) -> None:
    """Refuse a matrix too small or too large to assess. Called on the header's size before
    the voxels are read (a 4096^3 file is refused at once, without loading 64 GiB), and again
    on the array that was read."""
    n = int(i) * int(j) * int(k)
    if n > MAX_VOXELS:
        raise InputError(f"{path}: too large ({i}x{j}x{k} voxels; at most {MAX_VOXELS})")
    if k == 1:  # a single 2D slice
        sides = sorted((i, j))
    else:
        sides = sorted((i, j, k))[1:]  # a thin stack still has two real in-plane sides
    if sides[0] < MIN_SIDE:
        raise InputError(f"{path}: matrix {i}x{j}x{k} is too small (at least {MIN_SIDE} pixels "
                         "in-plane)")
    if max(i, j, k) > MAX_SIDE:
        raise InputError(f"{path}: matrix {i}x{j}x{k} is too large (at most {MAX_SIDE} per side)")


def _check_shape(path: Path, vol: Volume) -> None:
    k, j, i = vol.array.shape
    _check_dims(path, i, j, k)


def _check_header_size(path: Path, size: tuple[int, ...]) -> None:
    """Checks on an ITK-ordered size (i, j[, k[, t]]) read from a header."""
    size = tuple(int(s) for s in size)
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    if len(size) > 3:
        raise InputError(f"{path}: a {len(size)}D image with {size[3]} volumes (size "
                         f"{'x'.join(map(str, size))}); expected one 3D volume; split the "
                         "series into 3D volumes first")
    i, j, k = (*size, 1, 1)[:3]
    _check_dims(path, i, j, k)


def _squeeze_to_3d(path: Path, arr: np.ndarray) -> np.ndarray:
    """Drop singleton extra dimensions ([t, k, j, i] from ITK); refuse real 4D data."""
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim > 3:
        raise InputError(f"{path}: a {arr.ndim}D image (shape {arr.shape}); expected one 3D "
                         "volume; split the series into 3D volumes first")
    return arr


def _read_sitk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            ids = reader.GetGDCMSeriesIDs(str(path))
            if not ids:
                raise InputError(f"{path}: no DICOM series in this folder")
            files = reader.GetGDCMSeriesFileNames(str(path), ids[0])
            info = sitk.ImageFileReader()
            info.SetFileName(files[0])
            info.ReadImageInformation()
            _check_header_size(path, (*info.GetSize()[:2], len(files)))
            reader.SetFileNames(files)
            img = reader.Execute()
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            _check_header_size(path, reader.GetSize())
            img = reader.Execute()
    except InputError:
        raise
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        detail = next((m for m in msg if "Exception" not in m and m.strip()), "unreadable")
        raise InputError(f"{path}: not a readable image ({detail.strip()[:100]})") from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        img = _to_grey(img)
    dim = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)
    if dim > 3:
        arr = _squeeze_to_3d(path, arr)
        if arr.ndim == 3 and img.GetSize()[3] != 1:
            raise InputError(f"{path}: a 4D image with {img.GetSize()[3]} volumes; expected 3D")
        sp, org = img.GetSpacing()[:3], img.GetOrigin()[:3]
        d4 = np.asarray(img.GetDirection()).reshape(dim, dim)[:3, :3]
        return Volume.from_lps(arr, sp, d4, org)
    if dim == 2:
        sp = (*img.GetSpacing(), 1.0)
        d = np.eye(3)
        d[:2, :2] = np.asarray(img.GetDirection()).reshape(2, 2)
        return Volume.from_lps(arr[None], sp, d, (*img.GetOrigin(), 0.0))
    return Volume.from_lps(arr, img.GetSpacing(), img.GetDirection(), img.GetOrigin())


def _to_grey(img):
    import SimpleITK as sitk

    comps = [sitk.VectorIndexSelectionCast(img, c, sitk.sitkFloat32)
             for c in range(min(3, img.GetNumberOfComponentsPerPixel()))]
    if len(comps) == 3:  # RGB(A): luminance, alpha ignored
        return comps[0] * 0.299 + comps[1] * 0.587 + comps[2] * 0.114
    return comps[0]


def _read_nifti(path: Path) -> Volume:
    """NIfTI through nibabel: ITK's reader silently turns NaN voxels into 0, which would hide
    corrupt data from the checks below."""
    import nibabel as nib

    def unreadable(exc: Exception) -> InputError:
        detail = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        return InputError(f"{path}: not a readable NIfTI image ({detail})")

    try:
        img = nib.load(str(path))  # the header only: the voxels are read below
    except Exception as exc:  # nibabel raises several types for foreign or truncated files
        raise unreadable(exc) from None
    _check_header_size(path, img.shape)
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise unreadable(exc) from None
    if arr.ndim == 2:
        arr = arr[..., None]
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"{path}: a {arr.ndim}D image (shape {arr.shape}); expected one 3D "
                         "volume; split the series into 3D volumes first")
    aff = np.asarray(img.affine, float)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    return volume(np.transpose(arr, (2, 1, 0)), spacing, aff[:3, :3] / spacing,
                  tuple(aff[:3, 3]), name=str(path))


def _read_npy(path: Path) -> Volume:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")  # shape first, voxels after
        shape = arr.shape
        if len(shape) in (2, 3):
            k, j, i = ((1, *shape) if len(shape) == 2 else shape)
            _check_dims(path, i, j, k)
        arr = np.array(arr)
    except ValueError as exc:
        raise InputError(f"{path}: not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    if arr.ndim == 2:
        arr = arr[None]
    arr = _squeeze_to_3d(path, arr)
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a 2D or 3D array, got shape {arr.shape}")
    return volume(arr, name=str(path))


def read_volume(path: str | Path) -> Volume:
    """A 3D volume (or a one-slice volume for 2D files) from NIfTI, NRRD, MHA/MHD, a DICOM
    folder, NPY or a 2D image; `InputError` naming the file for anything unusable."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_file() and p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty")
    suffix = _suffix(p)
    if suffix == ".npy":
        vol = _read_npy(p)
    elif suffix in (".nii", ".nii.gz") and p.is_file():
        vol = _read_nifti(p)
    else:
        vol = _read_sitk(p)
    _check_values(p, vol.array)
    _check_shape(p, vol)
    return vol


def read_input(path: str | Path) -> Volume:
    """Anything the command line assesses: volumes as `read_volume`, 2D images as one slice."""
    return read_volume(path)
