"""DICOM file headers, parsed up to (not into) the pixel data by a small bounded parser.

pydicom is not a dependency, and GDCM reads a whole file, pixels included, even to report its
size. `read_header` reads the tags `dicom` needs (series, positions, orientation, the tags
that tell frames apart, the pixel matrix) from the top-level dataset of one file, within
MAX_HEADER_BYTES and MAX_DEPTH nested sequences; a truncated or foreign file is refused by name.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.errors import InputError

# Header bytes read before the pixel data at most: real headers are a few KB to a few MB
# (private tags, embedded thumbnails); beyond this a file is refused rather than parsed.
MAX_HEADER_BYTES = 64 * 2**20
MAX_DEPTH = 16  # nested sequences
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010

# Tags read from the top-level dataset: (group << 16 | element) -> (name, binary US?)
_WANTED = {
    0x00080016: ("sop_class", False), 0x0008103E: ("description", False),
    0x0020000E: ("series_uid", False), 0x00200011: ("series_number", False),
    0x00200013: ("instance", False), 0x00200032: ("position", False),
    0x00200037: ("orientation", False), 0x00180086: ("echo_number", False),
    0x00180081: ("echo_time", False), 0x00200100: ("temporal_position", False),
    0x00200012: ("acquisition", False), 0x00181060: ("trigger_time", False),
    0x00189087: ("b_value", False), 0x00280008: ("frames", False),
    0x00280010: ("rows", True), 0x00280011: ("columns", True),
    0x00280100: ("bits_allocated", True), 0x00280002: ("samples", True),
    0x00280030: ("pixel_spacing", False), 0x00080018: ("sop_uid", False),
    0x00080032: ("acquisition_time", False), 0x00189089: ("gradient", False),
}
_BINARY_DOUBLES = ("b_value", "gradient")  # FD in the standard dictionary


class _Truncated(Exception):
    pass


@dataclass
class DicomHeader:
    """What MotionSSIM needs from one DICOM file's header."""

    path: Path
    transfer_syntax: str = ""
    tags: dict[str, object] = field(default_factory=dict)
    pixel_offset: int = -1
    pixel_length: int = -1  # -1: none; _UNDEFINED: encapsulated (compressed) pixels

    def text(self, name: str, default: str = "") -> str:
        v = self.tags.get(name)
        return v if isinstance(v, str) else default

    def number(self, name: str, default: float | None = None) -> float | None:
        v = self.tags.get(name)
        if isinstance(v, int):
            return float(v)
        try:
            return float(str(v).split("\\")[0])
        except (TypeError, ValueError):
            return default

    def numbers(self, name: str, n: int) -> np.ndarray | None:
        try:
            vals = [float(x) for x in self.text(name).split("\\")]
        except ValueError:
            return None
        arr = np.asarray(vals, float)
        return arr if arr.size == n and np.isfinite(arr).all() else None

    @property
    def frames(self) -> int:
        f = self.number("frames", 1.0)
        return int(f) if f is not None and f >= 1 else 1

    def expected_pixel_bytes(self) -> int:
        rows, cols = int(self.number("rows", 0) or 0), int(self.number("columns", 0) or 0)
        bits = int(self.number("bits_allocated", 16) or 16)
        samples = int(self.number("samples", 1) or 1)
        return rows * cols * self.frames * samples * max(1, bits // 8)


class _Reader:
    """Bounded sequential reads from a file; EOF inside an element is `_Truncated`."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def read(self, n: int) -> bytes:
        if self.f.tell() + n > min(self.size, MAX_HEADER_BYTES):
            raise _Truncated
        b = self.f.read(n)
        if len(b) != n:
            raise _Truncated
        return b

    def skip(self, n: int) -> None:
        if self.f.tell() + n > self.size:
            raise _Truncated
        self.f.seek(n, os.SEEK_CUR)

    def at_end(self) -> bool:
        return self.f.tell() >= self.size


def _element_head(r: _Reader, explicit: bool, little: bool) -> tuple[int, bytes, int]:
    """(tag, VR or b'', value length) of the next element."""
    e = "<" if little else ">"
    g, el = struct.unpack(e + "HH", r.read(4))
    tag = g << 16 | el
    if g == 0xFFFE:  # item and delimiters: never a VR
        return tag, b"", struct.unpack(e + "I", r.read(4))[0]
    if not explicit:
        return tag, b"", struct.unpack(e + "I", r.read(4))[0]
    vr = r.read(2)
    if vr in _LONG_VRS:
        r.read(2)
        return tag, vr, struct.unpack(e + "I", r.read(4))[0]
    return tag, vr, struct.unpack(e + "H", r.read(2))[0]


def _skip_sequence(r: _Reader, explicit: bool, little: bool, depth: int) -> None:
    """Skip an undefined-length sequence (items until the sequence delimiter)."""
    if depth > MAX_DEPTH:
        raise ValueError("sequences nested too deeply")
    while True:
        tag, _, length = _element_head(r, explicit, little)
        if tag == _SEQ_END:
            return
        if tag != _ITEM:
            raise ValueError(f"unexpected tag {tag:08X} inside a sequence")
        if length != _UNDEFINED:
            r.skip(length)
            continue
        while True:  # an item of undefined length: elements until the item delimiter
            t, vr, n = _element_head(r, explicit, little)
            if t == _ITEM_END:
                break
            if n == _UNDEFINED:
                _skip_sequence(r, explicit and vr != b"UN", little, depth + 1)
            else:
                r.skip(n)


def read_header(path: Path) -> DicomHeader | None:
    """The header of a DICOM file (Part 10, with the 'DICM' preamble), or None if the file is
    not DICOM. Refuses (InputError naming the file) a DICOM file that is truncated or cannot
    be parsed. Reads at most MAX_HEADER_BYTES and never the pixel data."""
    size = path.stat().st_size
    hdr = DicomHeader(path)
    try:
        with open(path, "rb") as f:
            pre = f.read(132)
            if len(pre) < 132 or pre[128:132] != b"DICM":
                return None
            r = _Reader(f, size)
            while True:  # file meta information: always explicit VR little endian
                pos = f.tell()
                if r.at_end():
                    raise _Truncated
                g = struct.unpack("<H", r.read(2))[0]
                f.seek(pos)
                if g != 0x0002:
                    break
                tag, _, n = _element_head(r, True, True)
                if n == _UNDEFINED:
                    raise ValueError("undefined length in the file meta information")
                value = r.read(n)
                if tag == 0x00020010:
                    hdr.transfer_syntax = value.decode("ascii", "replace").strip("\0 ")
            ts = hdr.transfer_syntax
            if ts == _DEFLATED:
                raise ValueError("deflated transfer syntax is not supported")
            explicit, little = ts != _IMPLICIT_LE, ts != _EXPLICIT_BE
            e = "<" if little else ">"
            while not r.at_end():
                tag, vr, n = _element_head(r, explicit, little)
                if tag == _PIXEL_DATA:
                    hdr.pixel_offset, hdr.pixel_length = f.tell(), n
                    if n != _UNDEFINED and f.tell() + n > size:
                        raise _Truncated
                    break
                if n == _UNDEFINED:
                    _skip_sequence(r, explicit and vr != b"UN", little, 1)
                    continue
                want = _WANTED.get(tag)
                if want is None:
                    r.skip(n)
                    continue
                value = r.read(n)
                name, binary = want
                if binary and n >= 2:
                    hdr.tags[name] = int(struct.unpack(e + "H", value[:2])[0])
                elif name in _BINARY_DOUBLES and n and n % 8 == 0 and vr in (b"FD", b""):
                    hdr.tags[name] = "\\".join(
                        f"{v:g}" for v in struct.unpack(f"{e}{n // 8}d", value))
                elif not binary:
                    hdr.tags[name] = value.decode("ascii", "replace").strip("\0 ")
    except _Truncated:
        raise InputError(f"{path}: truncated DICOM file (it ends inside its header or pixel "
                         "data)") from None
    except (ValueError, struct.error) as exc:
        raise InputError(f"{path}: unreadable DICOM file ({exc})") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    if hdr.pixel_length not in (-1, _UNDEFINED) and hdr.pixel_length < hdr.expected_pixel_bytes():
        raise InputError(f"{path}: truncated DICOM file (pixel data holds {hdr.pixel_length} "
                         f"bytes, its header needs {hdr.expected_pixel_bytes()})")
    return hdr
