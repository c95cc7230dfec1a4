"""What every reader checks, and the library output captured while it reads.

Memory: everything `io.read_volume` accepts is bounded on the header, before the voxels are read
(`check_budget`): at most MAX_VOXELS voxels and, once resampled to square pixels, at most
MAX_SLICE_PIXELS pixels per slice in any plane, so that assessing any accepted input stays
within MEMORY_BOUND_GB of memory (docs/command-line.md). The values read are checked too
(`_check_values`: empty, constant, NaN or beyond float32's reach).

Library chatter (ITK, GDCM, nibabel and numpy warnings) is captured while reading
(`_captured`) and logged at DEBUG level on this module's logger: the CLI shows it with --debug
only. Notes for the user (complex voxels read as their magnitude) are logged at WARNING level,
after the capture: the CLI prints them as `note: ...` lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..base.errors import InputError
from .geometry import Volume

log = logging.getLogger(__name__)
MIN_SIDE = 16
MAX_SIDE = 2048
# The memory bound (docs/command-line.md): the largest accepted input, 2^27 voxels (512 MiB as
# float32, e.g. 512 x 512 x 512 or 2048 x 2048 x 32), measured at ~3 GB peak RSS for a whole
# `assess`.
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
