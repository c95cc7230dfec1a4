"""Reading volumes and images from disk, with one-line errors that name the file.

NIfTI is read with nibabel, NRRD and MHA/MHD with SimpleITK (their LPS geometry turned into
RAS), DICOM series folders through `dicom` (headers parsed there, pixels by SimpleITK); 2D
PNG/TIFF images and NPY arrays become one-slice volumes; a 4D input becomes a `series.Series`
when frames are asked for (`read_series`).

Before any voxel is read, each reader checks the file (`integrity`) and the size its header
declares (`checks`: the memory bound); after reading, the values (`checks._check_values`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..base.errors import InputError, SettingsError
from . import dicom
from .checks import (
    MAX_ABS_VALUE,
    FrameChoice,
    _captured,
    _check_header_size,
    _check_shape,
    _check_values,
    _choose_frames,
    _compact,
    _extreme,
    _magnitude,
    _squeeze_to_3d,
    check_budget,
)
from .dicom_header import DICOM_SUFFIXES, DicomHeader, read_header
from .geometry import Volume, volume
from .integrity import (
    _check_metaimage,
    _check_nrrd,
    _corrupted,
    _require_regular,
    _stat_input,
    _verify_stream,
    _voxel_digest,
)
from .series import Series, frame_chooser, series_from_array

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


# ---------------------------------------------------------------------------------------------
# Readers


def _sitk_error(path: Path, exc: Exception) -> InputError:
    msg = str(exc).strip().splitlines()
    detail = next((m for m in msg if "Exception" not in m and m.strip()), "unreadable")
    return InputError(f"{path}: not a readable image ({detail.strip()[:100]})")


def _sitk_to_volume(path: Path, img, image_format: bool) -> Volume:
    """A SimpleITK image as a Volume: complex voxels as their magnitude (noted), RGB(A)
    pictures (2D image formats only) as luminance, other multi-component images refused."""
    import SimpleITK as sitk

    ncomp = img.GetNumberOfComponentsPerPixel()
    complex_id = img.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)
    if ncomp > 1 and not complex_id:
        if image_format and ncomp in (2, 3, 4):  # grey + alpha, RGB, RGBA pictures
            img = _to_grey(img)
        elif ncomp == 2 and _suffix(path) in (".mha", ".mhd"):
            pass  # ITK's MetaImage stores complex voxels as 2 channels: magnitude below
        else:
            raise InputError(f"{path}: a vector image ({ncomp} components per voxel); expected "
                             "one grey-scale value per voxel (take one component or the "
                             "magnitude first)")
    dim = img.GetDimension()
    sp, org, d = img.GetSpacing(), img.GetOrigin(), np.asarray(img.GetDirection())
    arr = sitk.GetArrayFromImage(img)
    del img  # the ITK buffer: the volume is never held twice
    if complex_id:
        arr = _magnitude(path, arr, "complex")
    elif arr.ndim == dim + 1 and arr.shape[-1] == 2:
        arr = _magnitude(path, arr, "two-channel (complex)")
    arr = _compact(path, arr)
    if dim > 3:
        arr = _squeeze_to_3d(path, arr)
        d4 = d.reshape(dim, dim)[:3, :3]
        return Volume.from_lps(arr, sp[:3], d4, org[:3])
    if dim == 2:
        d3 = np.eye(3)
        d3[:2, :2] = d.reshape(2, 2)
        return Volume.from_lps(arr[None], (*sp, 1.0), d3, (*org, 0.0))
    return Volume.from_lps(arr, sp, d, org)


def _frames_as_components(reader, suffix: str) -> bool:
    """A NRRD whose first axis is a list (Slicer's sequence and multi-volume files): ITK reads
    it as one vector voxel per position; its components are the frames of a series."""
    if suffix not in (".nrrd", ".nhdr") or reader.GetNumberOfComponents() < 2:
        return False
    keys = reader.GetMetaDataKeys()
    return "NRRD_kinds[pixel]" in keys and reader.GetMetaData("NRRD_kinds[pixel]") == "list"


def _sitk_to_series(path: Path, img, chosen: list[int], components: bool):
    """A 4D SimpleITK image (or a list-axis NRRD's components) as a Series of `chosen`.
    Memory: ITK's buffer and the frames chosen, each copied and converted on its own."""
    import SimpleITK as sitk

    dim = img.GetDimension()
    sp, org, d = img.GetSpacing(), img.GetOrigin(), np.asarray(img.GetDirection())
    view = sitk.GetArrayViewFromImage(img)  # [t, k, j, i], or [k, j, i, t] for components
    if components:
        view = np.moveaxis(view, -1, 0)
        if dim == 2:
            view = view[:, None]
            d2 = np.eye(3)
            d2[:2, :2] = d.reshape(2, 2)
            sp, org, d, dim = (*sp, 1.0), (*org, 0.0), d2.reshape(-1), 3
    out = None
    for n, t in enumerate(chosen):
        a = np.array(view[t])  # a copy: the view dies with ITK's buffer
        if np.iscomplexobj(a):
            a = _magnitude(path, a, "complex", note=n == 0)
        a = _compact(path, a)
        if out is None:
            out = np.empty((len(chosen), *a.shape), dtype=a.dtype)
        out[n] = a
        del a
    del view
    d3 = d.reshape(dim, dim)[:3, :3]
    flip = np.diag([-1.0, -1.0, 1.0])  # LPS -> RAS
    return series_from_array(out, sp[:3], flip @ d3, tuple(flip @ np.asarray(org[:3], float)),
                             chosen, None, None, name=str(path))


def _read_sitk_file(path: Path, frames: FrameChoice | None = None):
    import SimpleITK as sitk

    suffix = _suffix(path)
    verify = None
    if suffix in (".mha", ".mhd"):
        verify = _check_metaimage(path)
    elif suffix in (".nrrd", ".nhdr"):
        verify = _check_nrrd(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        components = frames is not None and _frames_as_components(reader, suffix)
        size = (*(tuple(reader.GetSize()) + (1, 1))[:3], reader.GetNumberOfComponents()) \
            if components else reader.GetSize()
        # ITK reads a NRRD or MetaImage whole: every frame counts, not the ones chosen
        chosen = _check_header_size(path, size, reader.GetSpacing(), frames, whole=True)
        checked = verify() if verify is not None else None
        img = reader.Execute()
    except RuntimeError as exc:
        raise _sitk_error(path, exc) from None
    if checked is not None and _voxel_digest(img, checked[1], checked[2]) != checked[0]:
        # the stream is intact but ITK read other values from it: the header (not covered by
        # any checksum) was altered, e.g. its type, byte order or matrix
        raise _corrupted(path, "the voxels read differ from the verified compressed data: "
                         "damaged header")
    if chosen is not None:
        n_in = int(size[3])
        out = _sitk_to_series(path, img, chosen, components)
        return dataclasses.replace(out, n_input_frames=n_in)
    return _sitk_to_volume(path, img, suffix in IMAGE_SUFFIXES)


def _to_grey(img):
    import SimpleITK as sitk

    n = img.GetNumberOfComponentsPerPixel()
    comps = [sitk.VectorIndexSelectionCast(img, c, sitk.sitkFloat32) for c in range(min(3, n))]
    if len(comps) == 3:  # RGB(A): luminance, alpha ignored
        return comps[0] * 0.299 + comps[1] * 0.587 + comps[2] * 0.114
    return comps[0]  # grey + alpha


def _read_dicom_file(path: Path, hdr: DicomHeader) -> Volume:
    """One DICOM file (a 2D slice or a multi-frame volume), its size checked on the header."""
    import SimpleITK as sitk

    dicom.check_pixels(hdr)
    ps = hdr.numbers("pixel_spacing", 2)
    sp = (ps[1], ps[0], 1.0) if ps is not None else (1.0, 1.0, 1.0)
    _check_header_size(path, (int(hdr.number("columns")), int(hdr.number("rows")), hdr.frames),
                       sp)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        img = reader.Execute()
    except RuntimeError as exc:
        raise _sitk_error(path, exc) from None
    return _sitk_to_volume(path, img, False)


def _read_dicom_frames(folder: Path, groups: list[list[DicomHeader]],
                       labels: list[str], frames: FrameChoice):
    """The frames chosen of a DICOM series with several images per position (dicom.
    split_frames), each read as a 3D volume; every frame must have the same slice positions."""
    first = groups[0][0]
    dicom.check_pixels(first)
    cols, rows = int(first.number("columns")), int(first.number("rows"))
    chosen = _choose_frames(folder, frames, len(groups), (cols, rows, len(groups[0])))
    out, geometry = None, None
    for n, t in enumerate(chosen):
        vol = _read_dicom_series(folder, *dicom.order_slices(folder, groups[t]))
        if geometry is None:
            geometry = vol
            out = np.empty((len(chosen), *vol.array.shape), dtype=vol.array.dtype)
        elif vol.array.shape != geometry.array.shape or not np.allclose(
                vol.ijk_to_ras(), geometry.ijk_to_ras(), atol=1e-3):
            raise InputError(f"{folder}: frame {t} ({groups[t][0].path.name}, ...) has another "
                             f"geometry than frame {chosen[0]}: not one 4D series")
        out[n] = vol.array
        del vol
    return series_from_array(out, geometry.spacing, geometry.directions, geometry.origin,
                             chosen, [labels[t] for t in chosen], len(groups), name=str(folder))


def _read_dicom_folder(folder: Path, series: str | None, frames: FrameChoice | None = None):
    headers = dicom.select_series(folder, series)
    if frames is not None:
        split = dicom.split_frames(folder, headers)
        if split is not None:
            return _read_dicom_frames(folder, *split, frames)
    return _read_dicom_series(folder, *dicom.order_slices(folder, headers))


def _read_dicom_series(folder: Path, headers: list[DicomHeader], step: float) -> Volume:
    """The ordered slices of one 3D volume (dicom.order_slices) read by SimpleITK."""
    import SimpleITK as sitk

    if len(headers) == 1:
        return _read_dicom_file(headers[0].path, headers[0])
    first = headers[0]
    dicom.check_pixels(first)
    cols, rows = int(first.number("columns")), int(first.number("rows"))
    ps = first.numbers("pixel_spacing", 2)
    sp = (ps[1], ps[0], step) if ps is not None else (1.0, 1.0, step)
    _check_header_size(folder, (cols, rows, len(headers)), sp)
    try:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(h.path) for h in headers])
        img = reader.Execute()
    except RuntimeError as exc:
        raise _sitk_error(folder, exc) from None
    if tuple(img.GetSize()) != (cols, rows, len(headers)):
        raise InputError(f"{folder}: read {img.GetSize()} voxels, the headers declare "
                         f"{(cols, rows, len(headers))}")
    # spacing and origin from the positions in the files (ordered here), not re-derived
    img.SetSpacing((*img.GetSpacing()[:2], step))
    return _sitk_to_volume(folder, img, False)


def _read_nifti(path: Path, frames: FrameChoice | None = None):
    """NIfTI through nibabel: ITK's reader silently turns NaN voxels into 0, which would hide
    corrupt data from the checks below. A .nii.gz is decompressed to its end first, so that
    its CRC is verified: nibabel reads only as far as the voxels go. With `frames`, a 4D image
    is read as a Series of the frames chosen (only those are read)."""
    import nibabel as nib

    def unreadable(exc: Exception) -> InputError:
        detail = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        return InputError(f"{path}: not a readable NIfTI image ({detail})")

    try:
        img = nib.load(str(path))  # the header only: the voxels are read below
    except Exception as exc:  # nibabel raises several types for foreign or truncated files
        if _suffix(path) == ".nii.gz" and isinstance(exc, (OSError, EOFError, zlib.error)):
            raise _corrupted(path, f"gzip: {str(exc)[:80]}") from None
        raise unreadable(exc) from None
    hdr = img.header
    shape = img.shape
    chosen = _check_header_size(path, shape, hdr.get_zooms()[:3], frames)
    proxy = img.dataobj
    if _suffix(path) == ".nii.gz":
        itemsize = np.dtype(hdr.get_data_dtype()).itemsize
        expected = int(hdr.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * itemsize
        with open(path, "rb") as f:
            _verify_stream(path, f, 0, "gzip", expected, exact=False)
    if chosen is not None:
        return _read_nifti_frames(path, img, chosen, unreadable)
    try:
        raw = np.asarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") else \
            np.asanyarray(proxy)
    except Exception as exc:
        raise unreadable(exc) from None
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    if np.iscomplexobj(raw):
        raw = _magnitude(path, raw, "complex")
    if raw.dtype.names or not np.issubdtype(raw.dtype, np.number):
        raise InputError(f"{path}: unsupported voxel type {raw.dtype} (RGB or structured "
                         "voxels); expected one grey-scale value per voxel")
    if (slope, inter) != (1.0, 0.0) and raw.size:
        with np.errstate(all="ignore"):
            lo, hi = float(raw.min()), float(raw.max())
            ends = np.array([lo, hi]) * slope + inter
        if np.isfinite(lo) and np.isfinite(hi) and (
                not np.isfinite(ends).all() or np.abs(ends).max() > MAX_ABS_VALUE):
            raise _extreme(path, float(np.abs(ends).max()), f" after the header's scaling "
                           f"(scl_slope {slope:.3g}, scl_inter {inter:.3g})")
        arr = raw.astype(np.float32)
        arr *= np.float32(slope)
        arr += np.float32(inter)
    else:
        arr = _compact(path, raw)
    del raw
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


def _read_nifti_frames(path: Path, img, chosen: list[int], unreadable):
    """The frames `chosen` of a 4D NIfTI, one at a time (in increasing order, with the file
    kept open: a .nii.gz is then decompressed once, not once per frame)."""
    import nibabel as nib

    ndim = len(img.shape)
    out = None
    try:
        img = nib.load(str(path), keep_file_open=True)
        proxy = img.dataobj
        for n, t in enumerate(chosen):
            raw = np.asanyarray(proxy[(slice(None),) * 3 + (t,) + (0,) * (ndim - 4)])
            if np.iscomplexobj(raw):
                raw = _magnitude(path, raw, "complex", note=n == 0)
            if raw.dtype.names or not np.issubdtype(raw.dtype, np.number):
                raise InputError(f"{path}: unsupported voxel type {raw.dtype} (RGB or "
                                 "structured voxels); expected one grey-scale value per voxel")
            a = _compact(path, raw)  # the header's scaling applied by nibabel, per frame
            if out is None:
                out = np.empty((len(chosen), *a.shape[::-1]), dtype=a.dtype)
            out[n] = np.transpose(a, (2, 1, 0))
            del raw, a
    except InputError:
        raise
    except Exception as exc:
        raise unreadable(exc) from None
    finally:
        opener = getattr(getattr(img, "dataobj", None), "_opener", None)
        if opener is not None:
            with contextlib.suppress(Exception):
                opener.close_if_mine()
    aff = np.asarray(img.affine, float)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    return series_from_array(out, spacing, aff[:3, :3] / spacing, tuple(aff[:3, 3]), chosen,
                             None, int(img.shape[3]), name=str(path))


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) from a .npy header alone."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(
                version)
            if read is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read(f)
            return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype), f.tell()
    except (ValueError, TypeError, SyntaxError, OverflowError) as exc:
        detail = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a plain numeric .npy array ({detail})") from None


def _read_npy(path: Path) -> Volume:
    """An NPY array: its shape, type and size checked on the header before a byte of data is
    read; object arrays are refused (never unpickled)."""
    shape, _, dtype, offset = _npy_header(path)
    if dtype.hasobject or dtype.names or dtype.subdtype is not None or dtype.kind not in "biufc":
        raise InputError(f"{path}: not a plain numeric .npy array (dtype {dtype}); "
                         "object arrays are never unpickled")
    squeezed = shape
    while len(squeezed) > 3 and squeezed[0] == 1:
        squeezed = squeezed[1:]
    if len(squeezed) not in (2, 3):
        raise InputError(f"{path}: expected a 2D or 3D array, got shape {shape}")
    k, j, i = ((1, *squeezed) if len(squeezed) == 2 else squeezed)
    check_budget(path, (i, j, k))
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size - offset
    if have < need:
        raise InputError(f"{path}: truncated .npy file (holds {have} data bytes, its header "
                         f"declares {need})")
    try:
        data = np.load(path, allow_pickle=False).reshape(squeezed)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    if np.iscomplexobj(data):
        data = _magnitude(path, data, "complex")
    data = _compact(path, data.astype(np.uint8) if data.dtype == bool else data)
    if data.ndim == 2:
        data = data[None]
    return volume(data, name=str(path))


def _is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as f:
        pre = f.read(132)
    return len(pre) == 132 and pre[128:132] == b"DICM"


def read_volume(path: str | Path, series: str | None = None,
                frames: FrameChoice | None = None):
    """A 3D volume (or a one-slice volume for 2D files) from NIfTI, NRRD, MHA/MHD, a DICOM
    folder or file, NPY or a 2D image; `InputError` naming the file for anything unusable.

    `series`: the SeriesInstanceUID to read from a DICOM folder holding several series (a
    folder with more than one is refused without it, listing them). Anything accepted was
    checked on its header to fit the memory bound (`check_budget`) before its voxels were read.

    `frames`: None refuses 4D inputs (the 3D reader). Given (`series.frame_chooser`), a 4D
    NIfTI/NRRD/MHA or a DICOM folder with several images per slice position is returned as a
    `series.Series` of the frames it chooses; a 3D input is still returned as a Volume.
    Use `series.read_series`, which builds the chooser from a `--frames` text.
    """
    if isinstance(path, str) and not path.strip():
        raise InputError("an empty path was given (no file or folder)")
    p = Path(path)
    st = _stat_input(p)
    with _captured(p):
        if stat.S_ISDIR(st.st_mode):
            if not os.access(p, os.R_OK | os.X_OK):
                raise InputError(f"{p}: permission denied")
            vol = _read_dicom_folder(p, series, frames)
        else:
            _require_regular(p, st)
            if st.st_size == 0:
                raise InputError(f"{p}: the file is empty")
            try:
                vol = _read_file(p, frames)
            except PermissionError:
                raise InputError(f"{p}: permission denied") from None
        _check_values(p, vol.array)
        _check_shape(p, vol)
    return vol


def _read_file(p: Path, frames: FrameChoice | None = None):
    suffix = _suffix(p)
    if suffix == ".npy":
        return _read_npy(p)
    if suffix in (".nii", ".nii.gz"):
        return _read_nifti(p, frames)
    if suffix in DICOM_SUFFIXES or re.fullmatch(r"[^.]*", p.name) or _is_dicom_file(p):
        hdr = read_header(p)
        if hdr is not None:
            if hdr.pixel_length == -1:
                raise InputError(f"{p}: a DICOM file without an image")
            return _read_dicom_file(p, hdr)
    return _read_sitk_file(p, frames)


def read_input(path: str | Path, series: str | None = None) -> Volume:
    """Anything the command line assesses: volumes as `read_volume`, 2D images as one slice."""
    return read_volume(path, series)


def read_series(path: str | Path, series: str | None = None,
                frames: str | Sequence[int] | None = None) -> Volume | Series:
    """A 3D input as a Volume (exactly as `read_volume`), a 4D input as a Series of the
    frames `frames` chooses (`parse_frames`; all by default). `series`: the DICOM
    SeriesInstanceUID when a folder holds several. InputError naming the file otherwise."""
    try:
        choose = frame_chooser(frames)
    except ValueError as exc:
        raise SettingsError(f"--frames: {exc}") from None
    return read_volume(path, series=series, frames=choose)
