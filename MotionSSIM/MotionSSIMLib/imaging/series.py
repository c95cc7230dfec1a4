"""4D series: a stack of 3D frames sharing one geometry, and the choice of frames.

A series is a 4D NIfTI, a 4D NRRD (also Slicer's sequence/multi-volume NRRD, whose first axis is
a list of frames), a DICOM folder holding several images at each slice position (time points,
b-values, echoes), or in Slicer a sequence or multi-volume node (`bridge.series_results`). It
is read by `io.read_series` and assessed by `assessment.frames.assess_series`.

Frame selection (`--frames`): indices into the input's frames, counted from 0: `0:10` (a
half-open range, Python style: frames 0 to 9), `5:` (5 to the last), `:3`, `3,5,7`, or a
mix `0:4,10,12`. Only the frames chosen are read where the format allows it (NIfTI, DICOM),
and the memory bound applies to them; ITK reads a NRRD or MetaImage whole, so there every
frame counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..base.errors import InputError
from .geometry import Volume, volume

__all__ = ["Series", "frame_chooser", "parse_frames", "series_from_array"]


@dataclass(frozen=True)
class Series:
    """Frames of one geometry: `array` [t, k, j, i] (each frame as `Volume.array`), the voxel
    geometry shared by all frames, and for each frame its index in the input (`frame_indices`,
    after any selection) and a label from the file (`b=1000`, `t=3`; empty when none)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    directions: np.ndarray
    origin: tuple[float, float, float]
    frame_indices: tuple[int, ...]
    frame_labels: tuple[str, ...]
    n_input_frames: int
    name: str = "series"

    @property
    def n_frames(self) -> int:
        return int(self.array.shape[0])

    def frame(self, n: int) -> Volume:
        """Frame number `n` of this series (0 .. n_frames - 1, not the input's index) as a
        Volume: a view of the voxels, never a copy."""
        return Volume(self.array[n], self.spacing, self.directions, self.origin)

    def ijk_to_ras(self) -> np.ndarray:
        return self.frame(0).ijk_to_ras()


def series_from_array(array: np.ndarray, spacing=(1.0, 1.0, 1.0), directions=None,
                      origin=(0.0, 0.0, 0.0), frame_indices: Sequence[int] | None = None,
                      frame_labels: Sequence[str] | None = None,
                      n_input_frames: int | None = None, name: str = "series") -> Series:
    """A validated Series from a [t, k, j, i] array and its geometry (checked as `volume`)."""
    a = np.asarray(array)
    if a.ndim != 4 or a.shape[0] < 1:
        raise InputError(f"{name}: expected frames [t, k, j, i], got array shape {a.shape}")
    first = volume(a[0], spacing, directions, origin, name=name)
    t = a.shape[0]
    idx = tuple(int(i) for i in (range(t) if frame_indices is None else frame_indices))
    labels = tuple(str(s) for s in (("",) * t if frame_labels is None else frame_labels))
    if len(idx) != t or len(labels) != t:
        raise InputError(f"{name}: {t} frames but {len(idx)} indices and {len(labels)} labels")
    return Series(a, first.spacing, first.directions, first.origin, idx, labels,
                  int(n_input_frames if n_input_frames is not None else max(idx) + 1), name)


# ---------------------------------------------------------------------------------------------
# Frame selection

_PART = re.compile(r"^\s*(\d*)\s*(:)?\s*(\d*)\s*$")


def _parse_spec(spec: str) -> list[tuple[int, int | None]]:
    """`0:10,12,5:` -> [(0, 10), (12, 13), (5, None)] (half-open ranges; None: to the end)."""
    if not spec.strip():
        raise ValueError("empty frame selection")
    parts: list[tuple[int, int | None]] = []
    for part in spec.split(","):
        m = _PART.match(part)
        if m is None or (not m.group(2) and not m.group(1)):
            raise ValueError(f"frame selection {spec!r}: {part.strip()!r} is not an index "
                             "or a range a:b (indices from 0)")
        lo = int(m.group(1)) if m.group(1) else 0
        if not m.group(2):
            parts.append((lo, lo + 1))
            continue
        hi = int(m.group(3)) if m.group(3) else None
        if hi is not None and hi <= lo:
            raise ValueError(f"frame selection {spec!r}: range {part.strip()} is empty")
        parts.append((lo, hi))
    return parts


def parse_frames(spec: str | Sequence[int] | None, n: int) -> list[int]:
    """The frame indices (sorted, unique) that `spec` chooses among `n` frames: None = all;
    a string `0:10`, `5:`, `:3`, `3,5,7` or a mix; or a sequence of ints. ValueError with the
    reason for a malformed spec or an index beyond the series."""
    if spec is None:
        return list(range(n))
    chosen: set[int] = set()
    if isinstance(spec, str):
        for lo, hi in _parse_spec(spec):
            if lo >= n:
                raise ValueError(f"frame {lo} is beyond the {n} frames (0-{n - 1})")
            chosen.update(range(lo, n if hi is None else min(hi, n)))
    else:
        for v in spec:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"frame selection: {v!r} is not a frame index (0, 1, ...)")
            if v >= n:
                raise ValueError(f"frame {int(v)} is beyond the {n} frames (0-{n - 1})")
            chosen.add(int(v))
    if not chosen:
        raise ValueError("no frame selected")
    return sorted(chosen)


def frame_chooser(spec: str | Sequence[int] | None) -> Callable[[int], list[int]]:
    """`parse_frames` bound to `spec`: what the readers (`io.read_volume(frames=...)`) call
    once they know the number of frames. A malformed string is refused at once (ValueError),
    before any input is read."""
    if isinstance(spec, str):
        _parse_spec(spec)  # syntax only: the number of frames is not known yet
    return lambda n: parse_frames(spec, n)
