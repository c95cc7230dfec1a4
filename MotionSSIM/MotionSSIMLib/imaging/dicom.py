"""DICOM series folders: an explicit reader that refuses rather than guesses.

Every file's header is parsed first (`dicom_header`). From the headers: the series in the
folder are listed (several series -> refused with their UIDs and descriptions unless one is
chosen), slices are ordered by the positions stored in the files, and missing slices,
duplicate positions, several echoes or time points (4D), truncated or unreadable slice files,
dangling symlinks and symlink loops are refused by name. For a 4D read (`split_frames`) the
images at each position are matched into frames by their tags; copies of one image, and images
that no tag tells apart, are refused by name. A multi-frame file's size is checked on its
header before its pixels are read. Only then does SimpleITK (GDCM) read the pixels of the
files chosen, in the order chosen here (`io`).
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from pathlib import Path

import numpy as np

from ..base.errors import InputError
from .dicom_header import _UNDEFINED, DICOM_SUFFIXES, DicomHeader, read_header

# Attributes that tell two images at one position apart: a 4D series, not a duplicate.
_FOURTH_DIMENSION = (("echo_number", "echoes"), ("echo_time", "echo times"),
                     ("temporal_position", "time points"), ("trigger_time", "trigger times"),
                     ("b_value", "b-values"), ("gradient", "diffusion directions"),
                     ("acquisition", "acquisitions"))


def _list_files(folder: Path) -> tuple[list[Path], int]:
    """Regular files of a folder (not recursive; hidden files skipped), and the number of
    subfolders. Dangling symlinks, symlink loops, FIFOs, devices and unreadable entries are
    refused by name: a slice must never disappear silently."""
    files, subfolders = [], 0
    try:
        entries = sorted(os.scandir(folder), key=lambda d: d.name)
    except PermissionError:
        raise InputError(f"{folder}: permission denied (cannot list the folder)") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        p = Path(entry.path)
        try:
            st = p.stat()  # follows symlinks
        except FileNotFoundError:
            raise InputError(f"{p}: dangling symlink (its target does not exist)") from None
        except OSError as exc:
            if exc.errno == 40 or "loop" in str(exc).lower():
                raise InputError(f"{p}: symlink loop") from None
            raise InputError(f"{p}: cannot be read ({exc.strerror or exc})") from None
        if stat.S_ISDIR(st.st_mode):
            subfolders += 1
            continue
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: not a regular file (a FIFO, socket or device)")
        if not os.access(p, os.R_OK):
            raise InputError(f"{p}: permission denied")
        files.append(p)
    return files, subfolders


def _image_headers(folder: Path) -> dict[str, list[DicomHeader]]:
    """Image headers of the folder grouped by SeriesInstanceUID."""
    files, subfolders = _list_files(folder)
    series: dict[str, list[DicomHeader]] = {}
    for p in files:
        hdr = read_header(p)
        if hdr is None:
            if p.suffix.lower() in DICOM_SUFFIXES:
                raise InputError(f"{p}: not a readable DICOM file (no DICM preamble: truncated "
                                 "or not DICOM)")
            continue  # README, DICOMDIR-less notes...: not part of any series
        if hdr.pixel_length == -1:
            continue  # DICOMDIR, structured reports, presentation states: no image
        series.setdefault(hdr.text("series_uid"), []).append(hdr)
    if not series:
        hint = (f" (it has {subfolders} subfolder{'s' if subfolders > 1 else ''}: pass the "
                "series folder itself)") if subfolders else ""
        raise InputError(f"{folder}: no DICOM series in this folder{hint}")
    return series


def list_series(folder: str | Path) -> list[tuple[str, str, int]]:
    """(SeriesInstanceUID, description, number of image files) of each series in a folder."""
    series = _image_headers(Path(folder))
    return [(uid, hs[0].text("description"), len(hs)) for uid, hs in sorted(series.items())]


def _describe(series: dict[str, list[DicomHeader]]) -> str:
    parts = []
    for uid, hs in sorted(series.items()):
        desc = hs[0].text("description")
        parts.append(f"{uid or '(no UID)'}" + (f" '{desc[:40]}'" if desc else "")
                     + f" ({len(hs)} file{'s' if len(hs) > 1 else ''})")
    return "; ".join(parts)


def select_series(folder: Path, series_uid: str | None) -> list[DicomHeader]:
    """The image headers of the one series to read: the only one, or `series_uid`."""
    series = _image_headers(folder)
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"{folder}: no series {series_uid} here; found: "
                             f"{_describe(series)}")
        return series[series_uid]
    if len(series) > 1:
        raise InputError(f"{folder}: {len(series)} DICOM series in this folder: "
                         f"{_describe(series)}; choose one with --series UID (Python: "
                         "read_volume(folder, series=UID)) or put each series in its own folder")
    return next(iter(series.values()))


def _fourth_dimension(a: DicomHeader, b: DicomHeader) -> str | None:
    for attr, what in _FOURTH_DIMENSION:
        va, vb = a.text(attr), b.text(attr)
        if va and vb and va != vb:
            return what
    return None


def _position_tolerance(z: np.ndarray, hdr: DicomHeader) -> float:
    """How close two images must lie along the normal to share a slice position. Positions
    are decimal strings rounded by their writer, hence a tolerance: a small share of the pixel
    size and of the slice spacing, never of the distance from the isocentre (1e-3 x |z| was
    1.2 mm at 1200 mm, more than a 1 mm spacing)."""
    ps = hdr.numbers("pixel_spacing", 2)
    pixel = float(ps.min()) if ps is not None and ps.min() > 0 else 1.0
    steps = np.diff(np.sort(z))
    # between positions: the steps near the largest (most steps of a 4D series are ~0)
    between = steps[steps > 0.3 * steps.max()] if steps.size else steps
    spacing = float(np.median(between)) if between.size else 0.0
    return 1e-3 + 0.05 * min(pixel, spacing if spacing > 0 else pixel)


def order_slices(folder: Path, headers: list[DicomHeader]) -> tuple[list[DicomHeader], float]:
    """The slices of one series ordered along their normal, and the slice spacing, from the
    positions stored in the files. Refuses mixed orientations or matrix sizes, missing
    positions, several images at one position (4D or duplicates), gaps and uneven spacing."""
    first = headers[0]
    if any(h.frames > 1 for h in headers):
        if len(headers) > 1:
            names = ", ".join(h.path.name for h in headers if h.frames > 1)
            raise InputError(f"{folder}: multi-frame files ({names[:200]}) in a series of "
                             f"{len(headers)} files; pass one multi-frame file itself")
        return headers, float("nan")
    if len(headers) == 1:
        return headers, float("nan")
    ori = first.numbers("orientation", 6)
    if ori is None:
        raise InputError(f"{first.path}: no usable Image Orientation (0020,0037)")
    size = (first.number("rows"), first.number("columns"))
    for h in headers:
        o = h.numbers("orientation", 6)
        if o is None or np.abs(o - ori).max() > 1e-3:
            raise InputError(f"{h.path}: its orientation differs from {first.path.name}'s "
                             "in the same series (a localizer?)")
        if (h.number("rows"), h.number("columns")) != size:
            raise InputError(f"{h.path}: matrix {h.number('rows'):.0f}x"
                             f"{h.number('columns'):.0f} differs from {first.path.name}'s "
                             "in the same series")
    normal = np.cross(ori[:3], ori[3:])
    if np.linalg.norm(normal) < 1e-3:
        raise InputError(f"{first.path}: degenerate Image Orientation (0020,0037)")
    normal /= np.linalg.norm(normal)
    pos = []
    for h in headers:
        p = h.numbers("position", 3)
        if p is None:
            raise InputError(f"{h.path}: no usable Image Position (0020,0032)")
        pos.append(float(p @ normal))
    order = np.argsort(pos, kind="stable")
    hs = [headers[i] for i in order]
    z = np.asarray(pos)[order]
    steps = np.diff(z)
    tol = _position_tolerance(z, first)
    same = np.flatnonzero(steps <= tol)
    if same.size:
        a, b = hs[same[0]], hs[same[0] + 1]
        what = _fourth_dimension(a, b)
        n_at = int(np.max(np.unique(np.round(z / max(tol, 1e-6)), return_counts=True)[1]))
        if what:
            raise InputError(f"{folder}: {n_at} {what} at each position ({a.path.name}, "
                             f"{b.path.name}, ...): a 4D series; expected one 3D volume: "
                             "read it as a series (series.read_series; the command line "
                             "does) or split it into one folder per 3D volume")
        raise InputError(f"{folder}: duplicate slice position {z[same[0]]:.3f} mm in "
                         f"{a.path.name} and {b.path.name} ({len(same)} repeated positions)")
    step = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - step) > max(0.01 * step, tol))
    if uneven.size:
        i = int(uneven[0])
        gap = steps[i] / step
        if abs(gap - round(gap)) < 0.05 and round(gap) >= 2:
            raise InputError(f"{folder}: {round(gap) - 1} missing slice(s) between "
                             f"{hs[i].path.name} ({z[i]:.2f} mm) and {hs[i + 1].path.name} "
                             f"({z[i + 1]:.2f} mm); slice spacing {step:.3f} mm")
        raise InputError(f"{folder}: uneven slice spacing ({steps[i]:.3f} mm between "
                         f"{hs[i].path.name} and {hs[i + 1].path.name}, {step:.3f} mm "
                         "elsewhere)")
    if not math.isfinite(step) or step <= 0:
        raise InputError(f"{folder}: no usable slice spacing")
    return hs, step


# What tells the frames of a 4D series apart. Identity attributes name a frame (the same at
# each of its positions) and label it. The images of one identity at a position are put in
# acquisition order by the first order attribute that does so consistently; instance numbers
# only when unique in the series (numbers restarting per volume order nothing).
_FRAME_LABELS = (("temporal_position", "t="), ("echo_number", "echo "), ("b_value", "b="),
                 ("gradient", "dir="), ("echo_time", "TE="), ("acquisition", "acq "))
_ORDER = ("instance", "trigger_time", "acquisition_time")
# DICOM keywords of what can tell frames apart, named when nothing does
_SEPARATING_TAGS = ("TemporalPositionIdentifier (0020,0100), AcquisitionNumber (0020,0012), "
                    "EchoNumbers (0018,0086), EchoTime (0018,0081), DiffusionBValue (0018,9087),"
                    " DiffusionGradientOrientation (0018,9089), TriggerTime (0018,1060), "
                    "AcquisitionTime (0008,0032)")


def _seconds(tm: str) -> float | None:
    """A DICOM time (HHMMSS.FFFFFF, or the old HH:MM:SS) in seconds after midnight."""
    t = tm.replace(":", "").strip()
    try:
        return int(t[:2]) * 3600 + int(t[2:4] or 0) * 60 + float(t[4:] or 0)
    except ValueError:
        return None


def _order_value(h: DicomHeader, attr: str) -> float | None:
    return _seconds(h.text(attr)) if attr == "acquisition_time" else h.number(attr)


def _frame_key(h: DicomHeader, order: str | None) -> tuple[float, ...]:
    inf = float("inf")
    head = [h.number(a) for a in ("temporal_position", "echo_number", "acquisition")]
    mid = [] if order is None else [_order_value(h, order)]
    gradient = h.numbers("gradient", 3)
    tail = [h.number("echo_time"), h.number("b_value"),
            *(gradient if gradient is not None else (inf,) * 3)]
    return tuple(inf if v is None else float(v) for v in (*head, *mid, *tail))


def _usable_order(headers: list[DicomHeader], attr: str) -> bool:
    vals = [_order_value(h, attr) for h in headers]
    if any(v is None for v in vals):
        return False
    return attr != "instance" or len(set(vals)) == len(vals)


def _pixel_digest(h: DicomHeader) -> bytes:
    """BLAKE2b of a file's pixel data as stored (to its end when encapsulated)."""
    digest = hashlib.blake2b(digest_size=16)
    left = h.pixel_length if h.pixel_length not in (-1, _UNDEFINED) else None
    with open(h.path, "rb") as f:
        f.seek(h.pixel_offset)
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.digest()


def _refuse_copies(folder: Path, headers: list[DicomHeader]) -> None:
    """Refuse a series holding one image twice (a folder copied into itself under other
    names): the same SOPInstanceUID in two files is the same image, not another frame."""
    seen: dict[str, DicomHeader] = {}
    pairs = []
    for h in headers:
        uid = h.text("sop_uid")
        if uid and uid in seen:
            pairs.append((seen[uid], h))
        seen.setdefault(uid, h)
    if pairs:
        a, b = pairs[0]
        raise InputError(f"{folder}: duplicate images: {a.path.name} and {b.path.name} hold "
                         f"the same image (SOPInstanceUID {a.text('sop_uid')[:64]}; "
                         f"{len(pairs)} file(s) are copies of others): remove the copies")


def _tie(folder: Path, a: DicomHeader, b: DicomHeader, instance_repeats: bool) -> str:
    """Why two images at one position cannot be put in two frames."""
    if _pixel_digest(a) == _pixel_digest(b):
        return (f"{folder}: duplicate images: {a.path.name} and {b.path.name} hold identical "
                "pixel data at one slice position with the same tags: remove the copies")
    restart = ("; instance numbers repeat (numbered per volume)" if instance_repeats else "")
    return (f"{folder}: {a.path.name} and {b.path.name} lie at one slice position and no tag "
            f"read tells their volumes apart{restart}: the frames cannot be separated; tags "
            f"that could: {_SEPARATING_TAGS}; or put each volume in its own folder")


def _match_frames(folder: Path, groups: list[list[DicomHeader]], order: str | None,
                  instance_repeats: bool) -> tuple[list[list[DicomHeader]] | None, str]:
    """Frames from the images at each position sorted by `_frame_key(order)`, or None and why
    not: two images with one key (a tie), a frame mixing identities (time points, b-values,
    echoes) over its positions, or a time not separating the frames of one identity."""
    ordered = []
    for g in groups:
        keyed = sorted(((_frame_key(h, order), n, h) for n, h in enumerate(g)),
                       key=lambda x: x[:2])
        for (ka, _, a), (kb, _, b) in zip(keyed, keyed[1:]):
            if ka == kb:
                return None, _tie(folder, a, b, instance_repeats)
        ordered.append([h for _, _, h in keyed])
    frames = [[g[t] for g in ordered] for t in range(len(ordered[0]))]
    varying = [a for a, _ in _FRAME_LABELS if len({f[0].text(a) for f in frames}) > 1]
    for t, f in enumerate(frames):
        for a in varying:
            values = {h.text(a) for h in f}
            if len(values) > 1:
                return None, (f"{folder}: frame {t} mixes {a.replace('_', ' ')}s "
                              f"{', '.join(sorted(values)[:3])}: the images at each position "
                              "cannot be matched into volumes")
    if order not in (None, "instance"):
        # a time orders the frames of one identity only if they follow each other (unique
        # instance numbers are trusted as before: a scanner numbers volume- or slice-major)
        latest: dict[tuple[str, ...], float] = {}  # identity -> the last frame's maximum
        for f in frames:
            vals = [_order_value(h, order) for h in f]
            ident = tuple(f[0].text(a) for a in varying)
            if ident in latest and latest[ident] >= min(vals):
                return None, f"frames overlap in {order.replace('_', ' ')}"
            latest[ident] = max(vals)
    return frames, ""


def split_frames(folder: Path, headers: list[DicomHeader],
                 ) -> tuple[list[list[DicomHeader]], list[str]] | None:
    """The frames of a 4D series: the images of one series grouped into 3D volumes, frame t
    holding the t-th image (in acquisition order: temporal position, echo number,
    acquisition number, then the first of instance number, trigger time, acquisition time
    that orders the images consistently, then echo time, b-value, diffusion direction) at
    every slice position; and a label per frame from what tells the frames apart (`t=3`,
    `b=1000`, `echo 2`). None when the series is 3D (one image per position), so that the 3D
    reader and its checks take it. Refuses positions holding different numbers of images,
    copies of one image, images that no tag tells apart (naming the tags that could), and
    frames that mix time points, b-values or echoes across positions (the images cannot be
    matched into volumes)."""
    if len(headers) < 2 or any(h.frames > 1 for h in headers):
        return None
    ori = headers[0].numbers("orientation", 6)
    if ori is None:
        return None  # order_slices says what is wrong
    normal = np.cross(ori[:3], ori[3:])
    if np.linalg.norm(normal) < 1e-3:
        return None
    normal /= np.linalg.norm(normal)
    z = []
    for h in headers:
        p = h.numbers("position", 3)
        if p is None:
            return None
        z.append(float(p @ normal))
    z = np.asarray(z)
    tol = _position_tolerance(z, headers[0])
    order = np.argsort(z, kind="stable")
    groups: list[list[DicomHeader]] = []
    last = None
    for i in order:
        if last is None or z[i] - last > tol:
            groups.append([])
        groups[-1].append(headers[i])
        last = z[i]
    counts = [len(g) for g in groups]
    if min(counts) == 1:  # 3D, or a few duplicated slices: order_slices names them
        return None
    _refuse_copies(folder, headers)
    if min(counts) != max(counts):
        few = int(np.argmin(counts))
        raise InputError(f"{folder}: incomplete 4D series: {max(counts)} images at most slice "
                         f"positions, {counts[few]} at {groups[few][0].path.name}: a frame "
                         "is missing slices")
    repeats = not _usable_order(headers, "instance") and all(
        h.number("instance") is not None for h in headers)
    why = ""
    for attr in (*(a for a in _ORDER if _usable_order(headers, a)), None):
        frames, why = _match_frames(folder, groups, attr, repeats)
        if frames is not None:
            break
    if frames is None:
        raise InputError(why)  # without an order attribute: a tie or mixed identities
    varying = [(a, pre) for a, pre in _FRAME_LABELS
               if len({f[0].text(a) for f in frames}) > 1]
    labels = [" ".join(f"{pre}{f[0].text(a)}".replace("\\", ",") for a, pre in varying)
              for f in frames]
    return frames, labels


def check_pixels(hdr: DicomHeader) -> None:
    """Refuse what cannot be a grey-scale MR magnitude image before its pixels are read."""
    samples = int(hdr.number("samples", 1) or 1)
    if samples > 1:
        raise InputError(f"{hdr.path}: a colour DICOM image ({samples} samples per pixel); "
                         "expected grey-scale MR")
    if not hdr.number("rows") or not hdr.number("columns"):
        raise InputError(f"{hdr.path}: no image matrix (Rows/Columns) in the DICOM header")
