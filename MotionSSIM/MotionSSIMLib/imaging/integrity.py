"""Whether a file is what it claims to be, before any voxel is trusted.

An input that is not a regular file or folder (a FIFO, a device) is refused without opening
it; compressed data (.nii.gz, gzip/bzip2 NRRD, compressed MetaImage) is decompressed to its end
with its checksum verified; a detached data file must be a regular file in the header's folder;
the voxels ITK read from a verified stream must be the ones the stream holds.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import stat
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..base.errors import InputError

_CHUNK = 1 << 20


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
