"""Reading volumes and images from disk, with one-line errors that name the file.

NIfTI is read with nibabel, NRRD and MHA/MHD with SimpleITK (their LPS geometry turned into
RAS), DICOM series folders through `dicom` (headers parsed here, pixels by SimpleITK); 2D
PNG/TIFF images and NPY arrays become one-slice volumes.

Integrity: compressed data (.nii.gz, gzip/bzip2 NRRD, compressed MetaImage) is decompressed to
its end with its checksum verified before any voxel is trusted; a detached data file must be a
regular file in the header's folder; an input that is not a regular file or folder (a FIFO, a
device) is refused without opening it.

Memory: everything `read_volume` accepts is bounded on the header, before the voxels are read
(`check_budget`): at most MAX_VOXELS voxels and, once resampled to square pixels, at most
MAX_SLICE_PIXELS pixels per slice in any plane, so that assessing any accepted input stays
within MEMORY_BOUND_GB of memory (README.md, "Command line").

Library chatter (ITK, GDCM, nibabel and numpy warnings) is captured while reading and logged at
DEBUG level on the "MotionSSIMLib.io" logger: the CLI shows it with --debug only. Notes for the
user (complex voxels read as their magnitude) are logged at WARNING level, after the capture:
the CLI prints them as `note: ...` lines.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import hashlib
import logging
import os
import re
import stat
import sys
import tempfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import dicom
from .errors import InputError
from .geometry import Volume, volume

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MIN_SIDE = 16
MAX_SIDE = 2048
# The memory bound (README.md): the largest accepted input, 2^27 voxels (512 MiB as float32,
# e.g. 512 x 512 x 512 or 2048 x 2048 x 32), measured at ~3 GB peak RSS for a whole `assess`.
MAX_VOXELS = 2**27
MAX_SLICE_PIXELS = 2**23  # one slice after resampling to square pixels (e.g. 2048 x 4096)
MEMORY_BOUND_GB = 4
MAX_ABS_VALUE = 1e30  # float32 arithmetic (min-max, interpolation) must not overflow
# A 4D series (read only with `frames=`, see `series`): each frame within the 3D bounds above,
# and the frames read together at most this many voxels (1 GiB as float32; a diffusion series
# of 128 x 128 x 70 x 200 holds 2^27.8). Fewer frames are read with --frames.
MAX_SERIES_VOXELS = 2**28
# frames=: given the number of frames of a 4D input, the indices to read (series.frame_chooser)
FrameChoice = Callable[[int], list[int]]
_CHUNK = 1 << 20


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


# ---------------------------------------------------------------------------------------------
# Checks on the header (before the voxels) and on the values


def _check_dims(path: Path, i: int, j: int, k: int) -> None:
    """Refuse a matrix too small or too large to assess. Called on the header's size before
    the voxels are read (a 4096^3 file is refused at once, without loading 64 GiB), and again
    on the array that was read."""
    n = int(i) * int(j) * int(k)
    if n > MAX_VOXELS:
        raise InputError(f"{path}: too large ({i}x{j}x{k} voxels; at most {MAX_VOXELS}, "
                         f"which keeps the assessment within {MEMORY_BOUND_GB} GB)")
    if k == 1:  # a single 2D slice
        sides = sorted((i, j))
    else:
        sides = sorted((i, j, k))[1:]  # a thin stack still has two real in-plane sides
    if sides[0] < MIN_SIDE:
        raise InputError(f"{path}: matrix {i}x{j}x{k} is too small (at least {MIN_SIDE} pixels "
                         "in-plane)")
    if max(i, j, k) > MAX_SIDE:
        raise InputError(f"{path}: matrix {i}x{j}x{k} is too large (at most {MAX_SIDE} per side)")


def check_budget(path: str | Path, size_ijk, spacing_ijk=(1.0, 1.0, 1.0)) -> None:
    """Refuse, from the header alone, an input whose assessment would exceed the memory bound.

    The matrix (`_check_dims`: at most MAX_VOXELS voxels, MAX_SIDE per side) and the slices
    computed from it: a slice in any plane is resampled to square pixels at the finer of its
    two spacings before it is fitted to the model, so a 2048 x 16 slice with spacings 1e-4 and
    1 mm would become 2048 x 160000 pixels. Each plane's resampled slice must hold at most
    MAX_SLICE_PIXELS pixels (32 MiB as float32)."""
    i, j, k = (int(s) for s in size_ijk)
    _check_dims(Path(path), i, j, k)
    sp = [float(s) for s in spacing_ijk]
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"{path}: invalid voxel spacing {tuple(sp)}")
    n = (i, j, k)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        if n[a] == 1 or n[b] == 1:
            continue  # a one-voxel-thick plane is never cut into slices of its own
        ratio = max(sp[a], sp[b]) / min(sp[a], sp[b])
        pixels = n[a] * n[b] * ratio
        if ratio > 1.001 and pixels > MAX_SLICE_PIXELS:
            raise InputError(
                f"{path}: voxel spacings {sp[a]:.4g} and {sp[b]:.4g} mm (ratio {ratio:.3g}) "
                f"would resample a {n[a]}x{n[b]} slice to {pixels:.3g} square pixels (at most "
                f"{MAX_SLICE_PIXELS}, which keeps the assessment within {MEMORY_BOUND_GB} GB)")


def _choose_frames(path: Path, frames: FrameChoice, n: int, size3,
                   whole: bool = False) -> list[int]:
    """The frames `frames` picks among n, within MAX_SERIES_VOXELS together; `whole`: the
    reader reads every frame whatever is chosen (ITK: NRRD, MetaImage), so all must fit."""
    size = "x".join(str(int(v)) for v in size3)
    every = int(np.prod([int(v) for v in size3], dtype=np.int64)) * int(n)
    if whole and every > MAX_SERIES_VOXELS:  # refused before any frame is chosen or read
        raise InputError(f"{path}: too large ({int(n)} frames of {size}, {every} voxels; at "
                         f"most {MAX_SERIES_VOXELS}, which keeps the assessment within "
                         f"{MEMORY_BOUND_GB} GB): this format is read whole, whatever --frames "
                         "chooses; convert it to NIfTI (read frame by frame) or split it")
    try:
        chosen = list(frames(int(n)))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    total = int(np.prod([int(v) for v in size3], dtype=np.int64)) * len(chosen)
    if total > MAX_SERIES_VOXELS:
        raise InputError(f"{path}: too large ({len(chosen)} frames of "
                         f"{'x'.join(str(int(v)) for v in size3)}, {total} voxels; at most "
                         f"{MAX_SERIES_VOXELS} together, which keeps the assessment within "
                         f"{MEMORY_BOUND_GB} GB): choose fewer frames with --frames")
    return chosen


def _check_header_size(path: Path, size: tuple[int, ...], spacing=None,
                       frames: FrameChoice | None = None,
                       whole: bool = False) -> list[int] | None:
    """Checks on an ITK-ordered size (i, j[, k[, t...]]) read from a header. A 4D size is
    refused unless `frames` is given (a series read): then each frame is checked as a 3D
    volume and the frames chosen are returned (None for a 3D size). `whole`: every frame is
    read (`_choose_frames`)."""
    size = tuple(int(s) for s in size)
    ndim = len(size)
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    chosen = None
    if len(size) == 4 and frames is not None:
        chosen = _choose_frames(path, frames, size[3], size[:3], whole)
        size = size[:3]
    if len(size) > 3:
        nvol = int(np.prod(size[3:], dtype=np.int64))
        raise InputError(f"{path}: a {ndim}D image with {nvol} volumes of "
                         f"{'x'.join(map(str, size[:3]))} (size {'x'.join(map(str, size))}); "
                         "expected one 3D volume; split the series into 3D volumes first")
    i, j, k = (*size, 1, 1)[:3]
    sp = tuple(spacing or (1.0, 1.0, 1.0))
    sp = (*sp, 1.0, 1.0, 1.0)[:3]
    check_budget(path, (i, j, k), sp)
    return chosen


def _check_values(path: Path, arr: np.ndarray) -> None:
    if arr.size == 0:
        raise InputError(f"{path}: the image is empty")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{path}: unsupported voxel type {arr.dtype}")
    with np.errstate(all="ignore"):
        lo, hi = arr.min(), arr.max()
        if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(lo) and np.isfinite(hi)):
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise InputError(f"{path}: {bad} voxels are NaN or infinite")
    if max(abs(float(lo)), abs(float(hi))) > MAX_ABS_VALUE:
        raise _extreme(path, max(abs(float(lo)), abs(float(hi))))
    if lo == hi:
        raise InputError(f"{path}: the image is constant (every voxel is {arr.flat[0]})")


def _check_shape(path: Path, vol: Volume) -> None:
    k, j, i = vol.array.shape[-3:]  # a series: each frame
    check_budget(path, (i, j, k), vol.spacing)


def _squeeze_to_3d(path: Path, arr: np.ndarray) -> np.ndarray:
    """Drop singleton extra dimensions ([t, k, j, i] from ITK); refuse real 4D data."""
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim > 3:
        raise InputError(f"{path}: a {arr.ndim}D image (shape {arr.shape}); expected one 3D "
                         "volume; split the series into 3D volumes first")
    return arr


def _compact(path: Path, arr: np.ndarray) -> np.ndarray:
    """Voxels as stored when that is at most 4 bytes each, else float32 (what the assessment
    computes in): a float64 volume never exists twice in memory. Values beyond float32's
    reach are refused here, before the conversion would turn them into infinities."""
    if arr.dtype.itemsize <= 4 and arr.dtype.kind in "uif" and arr.dtype != np.float16:
        return arr
    if arr.size and arr.dtype.kind in "uif":
        with np.errstate(all="ignore"):
            top = max(abs(float(np.nanmin(arr))), abs(float(np.nanmax(arr)))) \
                if arr.dtype.kind == "f" else max(abs(float(arr.min())), abs(float(arr.max())))
        if np.isfinite(top) and top > MAX_ABS_VALUE:
            raise _extreme(path, top)
    return arr.astype(np.float32)


def _extreme(path: Path, top: float, how: str = "") -> InputError:
    return InputError(f"{path}: voxel values reach {top:.3g}{how}, beyond what MotionSSIM "
                      f"computes with (|value| <= {MAX_ABS_VALUE:.0e})")


def _magnitude(path: Path, arr: np.ndarray, how: str, note: bool = True) -> np.ndarray:
    if note:  # once per input: a series converts frame by frame
        log.warning("%s: %s voxels: their magnitude is assessed", path, how)
    return np.abs(arr).astype(np.float32) if np.iscomplexobj(arr) else \
        np.hypot(arr[..., 0], arr[..., 1], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Library output: captured, shown with --debug


class _Held(logging.Handler):
    """Notes (WARNING and above) logged while fd 2 is captured, handed on once it is restored:
    they are for the user, and a handler writing to stderr would write into the capture."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _captured(path: Path) -> Iterator[None]:
    """Capture Python warnings and what C++ libraries (ITK, GDCM) print on stderr while
    reading, and log them at DEBUG level: the user sees one line per problem, not the chatter
    of four libraries. The file descriptor 2 is redirected to a temporary file meanwhile, in
    the main thread only: it is process-wide, and two threads swapping it would lose it.
    Notes logged meanwhile are held and logged after (`_Held`)."""
    saved = tmp = None
    if threading.current_thread() is not threading.main_thread():
        with np.errstate(all="ignore"):  # thread-local; the warning filters are not
            yield
        return
    held, propagate = _Held(), log.propagate
    log.addHandler(held)
    log.propagate = False
    try:
        sys.stderr.flush()
        tmp = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreters)
        if saved is not None:
            os.close(saved)
        saved = None
    try:
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            yield
    finally:
        if saved is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        log.removeHandler(held)
        log.propagate = propagate
        if tmp is not None:
            tmp.seek(0)
            text = tmp.read(65536).decode("utf-8", "replace")
            tmp.close()
            for line in text.splitlines():
                if line.strip():
                    log.debug("%s: %s", path, line.strip())
        for w in caught:
            log.debug("%s: %s: %s", path, w.category.__name__, w.message)
        for record in held.records:
            log.handle(record)


# ---------------------------------------------------------------------------------------------
# Files: what they are, and whether their compressed data is intact


def _stat_input(p: Path) -> os.stat_result:
    try:
        return p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise InputError(f"{p}: dangling symlink (its target does not exist)") from None
        raise InputError(f"{p}: no such file or folder") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied") from None
    except OSError as exc:
        if exc.errno == 40:
            raise InputError(f"{p}: symlink loop") from None
        raise InputError(f"{p}: cannot be read ({exc.strerror or exc})") from None


def _require_regular(p: Path, st: os.stat_result, what: str = "") -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise InputError(f"{p}: {what}{kind}; expected a regular file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: {what}permission denied")


def regular_file_size(path: str | Path) -> int:
    """The size of `path` if it is a regular, readable file; InputError naming it otherwise.
    A FIFO, a device or a socket is refused before it is opened: reading one would wait
    forever or never end (`/dev/zero` has size 0)."""
    p = Path(path)
    st = _stat_input(p)
    _require_regular(p, st)
    return int(st.st_size)


def _corrupted(path: Path, detail: str) -> InputError:
    return InputError(f"{path}: corrupted file ({detail})")


class _Digest:
    """BLAKE2b of the decompressed bytes [skip, skip + length): what the voxels must be."""

    def __init__(self, skip: int, length: int):
        self.h, self.pos, self.lo, self.hi = hashlib.blake2b(digest_size=16), 0, skip, skip + length

    def update(self, chunk: bytes) -> int:
        a, b = max(self.lo - self.pos, 0), min(self.hi - self.pos, len(chunk))
        if b > a:
            self.h.update(chunk[a:b])
        self.pos += len(chunk)
        return len(chunk)


def _verify_stream(path: Path, f, offset: int, kind: str, expected: int | None,
                   exact: bool = True, compressed_size: int | None = None,
                   skip: int = 0) -> bytes:
    """Decompress `f` from `offset` to the end of its stream, verifying the checksum (gzip's
    CRC-32, zlib's Adler-32, bzip2's CRCs) and the decompressed length (`expected` bytes, or
    at least that many when not `exact`). Memory: one chunk at a time. A stream decompressing to
    far more than expected (a bomb) is cut short and refused. Returns the digest of the
    `expected - skip` bytes after the first `skip`: the voxels, to compare with what ITK read."""
    limit = (expected or 0) + 64 * _CHUNK
    digest = _Digest(skip, (expected or 0) - skip)
    f.seek(offset)
    total = 0
    try:
        if kind in ("gzip", "bzip2"):
            opener = gzip.GzipFile if kind == "gzip" else bz2.BZ2File
            with opener(fileobj=f, mode="rb") as g:
                while chunk := g.read(_CHUNK):
                    total += digest.update(chunk)
                    if total > limit:
                        break
        else:  # zlib (MetaImage): Adler-32 checked at the end of the stream
            d = zlib.decompressobj(47)  # zlib or gzip header, auto-detected
            consumed = 0
            while raw := f.read(_CHUNK):
                if compressed_size is not None:
                    raw = raw[: max(0, compressed_size - consumed)]
                consumed += len(raw)
                total += digest.update(d.decompress(raw))
                if d.eof or total > limit or not raw:
                    break
            total += digest.update(d.flush())
            if not d.eof:
                raise _corrupted(path, "the zlib stream ends early: truncated or damaged")
            if compressed_size is not None and consumed - len(d.unused_data) != compressed_size:
                raise _corrupted(path, f"compressed data size {consumed - len(d.unused_data)} "
                                 f"differs from the header's {compressed_size}")
    except InputError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        detail = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise _corrupted(path, f"{kind} data check failed: {detail}") from None
    if expected is not None and (total < expected or (exact and total != expected)):
        raise _corrupted(path, f"{kind} data decompresses to {total} bytes, the header "
                         f"declares {expected}")
    return digest.h.digest()


def _voxel_digest(img, dtype: np.dtype, components_axis: int = 0) -> bytes:
    """BLAKE2b of the voxels ITK read, laid out as the file stores them (`dtype`, with its byte
    order), one slice at a time. `components_axis`: where the file stores the axis that ITK
    reads as the components of a voxel (a NRRD's list axis, fastest first): ITK always makes
    it the fastest, so a file with the list axis elsewhere is laid out otherwise."""
    import SimpleITK as sitk

    h = hashlib.blake2b(digest_size=16)
    view = sitk.GetArrayViewFromImage(img)
    if view.ndim > img.GetDimension() and components_axis:  # [k, j, i, c] -> the file's order
        view = np.moveaxis(view, -1, view.ndim - 1 - components_axis)
    for k in range(view.shape[0] if view.ndim > 2 else 1):
        part = np.ascontiguousarray(view[k] if view.ndim > 2 else view)
        if np.iscomplexobj(part):
            part = part.view(part.real.dtype)
        h.update(part.astype(dtype, copy=False).tobytes())
    return h.digest()


# -- MetaImage and NRRD headers, read here for what ITK does not check -------------------------

_MET_DTYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
               "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
               "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4",
               "MET_DOUBLE": "f8"}
_NRRD_DTYPES = {"i1": ("signed char", "int8", "int8_t"),
                "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
                "i2": ("short", "short int", "signed short", "signed short int", "int16",
                       "int16_t"),
                "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
                "i4": ("int", "signed int", "int32", "int32_t"),
                "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
                "f4": ("float",),
                "i8": ("longlong", "long long", "long long int", "signed long long",
                       "signed long long int", "int64", "int64_t"),
                "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64",
                       "uint64_t"),
                "f8": ("double",)}
_NRRD_DOMAIN_KINDS = ("domain", "space", "time", "none", "???")
_MAX_HEADER = 1 << 20


def _read_text_header(path: Path, end) -> tuple[list[str], int]:
    """Header lines up to the line where `end(line)` is true (inclusive), and the byte offset
    just past it; reads at most _MAX_HEADER bytes."""
    lines, offset = [], 0
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER)
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        line = raw.decode("latin-1").rstrip("\r\n")
        lines.append(line)
        if end(line):
            return lines, offset
    if len(head) == _MAX_HEADER:
        raise InputError(f"{path}: header longer than {_MAX_HEADER} bytes")
    return lines, offset


def _data_files(header: Path, spec: str, rest: list[str]) -> list[Path]:
    """The detached data files a header names (one file, a LIST, or a printf pattern with
    min max step), each of which must be a regular, readable file in the header's folder."""
    folder = header.parent
    spec = spec.strip()
    if spec.upper().startswith("LIST"):
        names = [ln.strip() for ln in rest if ln.strip()]
    else:
        parts = spec.split()
        if len(parts) >= 4 and "%" in parts[0]:
            try:
                lo, hi, step = (int(x) for x in parts[1:4])
                if step == 0 or abs(hi - lo) // abs(step) > 100_000:
                    raise ValueError
                names = [parts[0] % i for i in range(lo, hi + (1 if step > 0 else -1), step)]
            except (ValueError, TypeError):
                raise InputError(f"{header}: unusable data file pattern {spec[:80]!r}") from None
        else:
            names = [spec]
    if not names:
        raise InputError(f"{header}: the header names no data file")
    root = folder.resolve()
    out = []
    for name in names:
        p = Path(name) if Path(name).is_absolute() else folder / name
        target = p.resolve()
        if target != root and root not in target.parents:
            raise InputError(f"{header}: its data file {name[:80]} lies outside the header's "
                             f"folder ({target}); keep header and data together")
        try:
            _require_regular(p, _stat_input(p))
        except InputError as exc:
            raise InputError(f"{header}: data file {exc}") from None
        out.append(p)
    return out


# verify(): None, or (digest of the verified voxel bytes, their dtype, the file's components
# axis as `_voxel_digest` takes it)
_Verify = Callable[[], "tuple[bytes, np.dtype, int] | None"]


def _check_metaimage(path: Path) -> _Verify | None:
    """A MetaImage (.mha/.mhd): detached data files must be regular files in the header's
    folder (checked now, before ITK opens anything); raw data must be complete, compressed data
    must decompress intact (checked by the function returned, once the header's size has
    passed its checks)."""
    lines, offset = _read_text_header(
        path, lambda ln: ln.split("=", 1)[0].strip().lower() == "elementdatafile")
    fields: dict[str, str] = {}
    for ln in lines:
        if "=" in ln:
            k, v = ln.split("=", 1)
            fields[k.strip().lower()] = v.strip()
    for key in ("compresseddata", "binarydata", "binarydatabyteordermsb", "elementbyteordermsb"):
        if key in fields and fields[key].lower() not in ("true", "false", "1", "0"):
            raise _corrupted(path, f"{key} = {fields[key][:20]!r} is neither True nor False")
    if "elementdatafile" not in fields:
        return None  # not a MetaImage header ITK can read: its own error follows
    try:
        dims = [int(x) for x in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        raise InputError(f"{path}: unreadable DimSize or ElementNumberOfChannels") from None
    met = _MET_DTYPES.get(fields.get("elementtype", "").upper())
    itemsize = np.dtype(met).itemsize if met else None
    if not dims or itemsize is None or fields.get("binarydata", "true").lower() == "false":
        return None  # ASCII data or an unknown type: ITK reads and checks those itself
    expected = int(np.prod(dims, dtype=np.int64)) * channels * itemsize
    spec = fields["elementdatafile"]
    compressed = fields.get("compresseddata", "false").lower() in ("true", "1")
    csize = fields.get("compresseddatasize")
    try:
        csize_n = int(csize) if csize is not None else None
    except ValueError:
        raise _corrupted(path, f"CompressedDataSize {csize[:20]!r}") from None
    if spec.upper() == "LOCAL":
        files, start = [path], offset
    else:
        rest = []
        if spec.upper().startswith("LIST"):
            with open(path, "rb") as f:
                f.seek(offset)
                rest = f.read(_MAX_HEADER).decode("latin-1").splitlines()
        files, start = _data_files(path, spec, rest), 0
    skip = int(fields.get("headersize", "0") or 0) if fields.get("headersize", "0").lstrip(
        "-").isdigit() else 0
    if compressed and len(files) != 1:
        raise InputError(f"{path}: compressed data split over {len(files)} files is not "
                         "supported")

    if compressed and csize_n is None:
        raise _corrupted(path, "compressed data without CompressedDataSize")
    msb = any(fields.get(k, "false").lower() in ("true", "1")
              for k in ("binarydatabyteordermsb", "elementbyteordermsb"))
    dtype = np.dtype(met).newbyteorder(">" if msb else "<")

    def verify() -> tuple[bytes, np.dtype, int] | None:
        if compressed:
            with open(files[0], "rb") as f:
                return _verify_stream(files[0], f, start, "zlib", expected,
                                      compressed_size=csize_n), dtype, 0
        have = sum(q.stat().st_size for q in files) - start - max(skip, 0)
        if have < expected:
            raise InputError(f"{files[0]}: truncated file (its data holds {have} bytes, the "
                             f"header {path.name} declares {expected})")
        return None
    return verify


def _check_nrrd(path: Path) -> _Verify | None:
    """A NRRD (.nrrd/.nhdr): the same checks as `_check_metaimage` (gzip and bzip2 encodings
    verified to the end of the stream)."""
    lines, offset = _read_text_header(path, lambda ln: ln.strip() == "")
    if not lines or not lines[0].startswith("NRRD"):
        return None
    fields: dict[str, str] = {}
    data_line = None
    for n, ln in enumerate(lines[1:], 1):
        if ln.startswith("#") or ":=" in ln or ":" not in ln:
            continue  # comments and key/value pairs
        k, v = ln.split(":", 1)
        k = k.strip().lower().replace(" ", "")
        if k == "datafile":
            data_line = n
        fields[k] = v.strip()
    try:
        sizes = [int(x) for x in fields.get("sizes", "").split()]
        line_skip = int(fields.get("lineskip", "0"))
        byte_skip = int(fields.get("byteskip", "0"))
    except ValueError:
        raise InputError(f"{path}: unreadable NRRD sizes, line skip or byte skip") from None
    base = next((d for d, names in _NRRD_DTYPES.items()
                 if fields.get("type", "").lower() in names), None)
    itemsize = np.dtype(base).itemsize if base else None
    encoding = {"gz": "gzip", "gzip": "gzip", "bz2": "bzip2", "bzip2": "bzip2",
                "raw": "raw"}.get(fields.get("encoding", "").lower())
    if "datafile" in fields:
        rest = lines[data_line + 1:] if data_line is not None else []
        rest = [ln for ln in rest if ln.strip()]
        if fields["datafile"].upper().startswith("LIST") and not rest:
            with open(path, "rb") as f:
                f.seek(offset)
                rest = f.read(_MAX_HEADER).decode("latin-1").splitlines()
        files, start = _data_files(path, fields["datafile"], rest), 0
    else:
        files, start = [path], offset
    if not sizes or itemsize is None or encoding is None or len(files) != 1:
        return None  # text encodings, odd types, one file per slice: ITK checks those
    expected = int(np.prod(sizes, dtype=np.int64)) * itemsize

    dtype = np.dtype(base).newbyteorder(">" if fields.get("endian", "").lower() == "big"
                                        else "<")
    # ITK reads a range axis (a list of frames, a vector) as each voxel's components
    ranges = [n for n, kind in enumerate(fields.get("kinds", "").lower().split())
              if kind not in _NRRD_DOMAIN_KINDS]
    list_axis = ranges[0] if len(ranges) == 1 else 0

    def verify() -> tuple[bytes, np.dtype, int] | None:
        with open(files[0], "rb") as f:
            f.seek(start)
            for _ in range(max(0, line_skip)):
                if not f.readline():
                    raise InputError(f"{files[0]}: truncated file (fewer lines than line skip)")
            begin = f.tell()
            if encoding == "raw":
                have = files[0].stat().st_size - begin - max(byte_skip, 0)
                if have < expected:
                    raise InputError(f"{files[0]}: truncated file (its data holds {have} bytes, "
                                     f"the header {path.name} declares {expected})")
                return None
            if byte_skip < 0:  # data at the end of the stream: checksum and length only
                _verify_stream(files[0], f, begin, encoding, expected, exact=False)
                return None
            return _verify_stream(files[0], f, begin, encoding, expected + byte_skip,
                                  skip=byte_skip), dtype, list_axis
    return verify


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

    from .series import series_from_array

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


def _read_dicom_file(path: Path, hdr: dicom.DicomHeader) -> Volume:
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


def _read_dicom_frames(folder: Path, groups: list[list[dicom.DicomHeader]],
                       labels: list[str], frames: FrameChoice):
    """The frames chosen of a DICOM series with several images per position (dicom.
    split_frames), each read as a 3D volume; every frame must have the same slice positions."""
    from .series import series_from_array

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


def _read_dicom_series(folder: Path, headers: list[dicom.DicomHeader], step: float) -> Volume:
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

    from .series import series_from_array

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
    if suffix in dicom.DICOM_SUFFIXES or re.fullmatch(r"[^.]*", p.name) or _is_dicom_file(p):
        hdr = dicom.read_header(p)
        if hdr is not None:
            if hdr.pixel_length == -1:
                raise InputError(f"{p}: a DICOM file without an image")
            return _read_dicom_file(p, hdr)
    return _read_sitk_file(p, frames)


def read_input(path: str | Path, series: str | None = None) -> Volume:
    """Anything the command line assesses: volumes as `read_volume`, 2D images as one slice."""
    return read_volume(path, series)
