"""4D series: diffusion, fMRI and other multi-volume inputs, assessed frame by frame.

A series is a stack of 3D frames sharing one geometry: a 4D NIfTI, a 4D NRRD (also Slicer's
sequence/multi-volume NRRD, whose first axis is a list of frames), a DICOM folder holding
several images at each slice position (time points, b-values, echoes), or in Slicer a sequence
or multi-volume node (`scene`). Every frame is assessed slice by slice with the 3D engine
(`inference.assess_volume`), the model loaded once for all frames.

Frame selection (`--frames`): indices into the input's frames, counted from 0: `0:10` (a
half-open range, Python style: frames 0 to 9), `5:` (5 to the last), `:3`, `3,5,7`, or a
mix `0:4,10,12`. Only the frames chosen are read where the format allows it (NIfTI, DICOM),
and the memory bound applies to them; ITK reads a NRRD or MetaImage whole, so there every
frame counts.

Verdict of a series: the worst clinical class among the non-empty slices of every frame (the
3D rule over all frames). Frames are ranked worst first by their lowest slice SSIM, then by
their mean SSIM: one moved slice spoils a diffusion volume as surely as a moved frame.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .classes import CLINICAL_NAMES, ClinicalThresholds
from .errors import InputError, SettingsError
from .geometry import Volume, volume

__all__ = ["FrameResult", "Series", "SeriesAssessment", "assess_series", "frame_chooser",
           "parse_frames", "read_series", "series_from_array"]

N_WORST = 5  # worst frames and worst slices listed in the summary


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


def read_series(path: str | Path, series: str | None = None,
                frames: str | Sequence[int] | None = None) -> Volume | Series:
    """A 3D input as a Volume (exactly as `io.read_volume`), a 4D input as a Series of the
    frames `frames` chooses (`parse_frames`; all by default). `series`: the DICOM
    SeriesInstanceUID when a folder holds several. InputError naming the file otherwise."""
    from . import io

    try:
        choose = frame_chooser(frames)
    except ValueError as exc:
        raise SettingsError(f"--frames: {exc}") from None
    return io.read_volume(path, series=series, frames=choose)


# ---------------------------------------------------------------------------------------------
# Assessment


@dataclass
class FrameResult:
    """One frame: its index in the input, its label, and its Assessment (None when the frame
    had no assessable slice, with the reason in `error`)."""

    frame: int
    label: str
    assessment: Any = None  # inference.Assessment
    error: str = ""


@dataclass
class SeriesAssessment:
    frames: list[FrameResult]
    summary: dict[str, Any]
    orientation: str
    axis: str
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def assessed(self) -> list[FrameResult]:
        return [f for f in self.frames if f.assessment is not None]

    def matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(frames, slice indices, SSIM [frame, slice], empty [frame, slice]): the heatmap.
        A frame without assessment is a row of NaN (and empty)."""
        first = self.assessed[0].assessment
        slices = np.array([r.index for r in first.records], dtype=int)
        frames = np.array([f.frame for f in self.frames], dtype=int)
        ssim = np.full((len(frames), len(slices)), np.nan)
        empty = np.ones((len(frames), len(slices)), dtype=bool)
        for n, f in enumerate(self.frames):
            if f.assessment is not None:
                ssim[n] = [r.ssim for r in f.assessment.records]
                empty[n] = [r.empty for r in f.assessment.records]
        return frames, slices, ssim, empty


def assess_series(series: Series, model=None, orientation: str = "auto",
                  device: Any = "auto", batch_size: int = 32,
                  thresholds: ClinicalThresholds = ClinicalThresholds(),
                  min_foreground: float = 0.05,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None, precision: str = "auto",
                  tta: int | None = None) -> SeriesAssessment:
    """Assess every frame of `series` slice by slice (`inference.assess_volume`, the model
    loaded once), and summarise over the frames (module docstring: verdict and ranking).

    `progress(done, total)` counts slices over all frames; `cancel()` returning True stops at
    the next batch (`inference.Cancelled`). A frame with no assessable slice (blank, all
    background) is listed with its reason and left out; a series with none assessable is
    refused (InputError). `precision` and `tta` (default inference.DEFAULT_TTA) reach every
    frame's assessment exactly as `assess_volume` takes them; the summary's `inference`
    says what ran."""
    from .devices import resolve_device
    from .geometry import resolve_orientation
    from .inference import DEFAULT_TTA, assess_volume, describe_model, get_model

    if not isinstance(series, Series):
        raise SettingsError(f"assess_series: expected a Series, not {type(series).__name__}")
    dev = resolve_device(device)
    loaded = get_model(model, dev)
    # one plane for every frame (they share a geometry), resolved once
    plane = resolve_orientation(series.frame(0), orientation)
    per_frame = 0  # slices per frame (the same in every frame), known after the first
    results: list[FrameResult] = []
    for n in range(series.n_frames):
        done_before = n * per_frame

        def frame_progress(done: int, count: int, done_before: int = done_before) -> None:
            if progress is not None:
                progress(done_before + done, count * series.n_frames)
        try:
            a = assess_volume(series.frame(n), model=loaded, orientation=plane, device=dev,
                              batch_size=batch_size, thresholds=thresholds,
                              min_foreground=min_foreground, progress=frame_progress,
                              cancel=cancel, precision=precision,
                              tta=DEFAULT_TTA if tta is None else tta)
        except InputError as exc:  # this frame only: e.g. a blank frame of a series
            if "no assessable slice" not in str(exc):
                raise
            results.append(FrameResult(series.frame_indices[n], series.frame_labels[n],
                                       None, str(exc)))
            continue
        per_frame = len(a.records)
        results.append(FrameResult(series.frame_indices[n], series.frame_labels[n], a))
    ok = [f for f in results if f.assessment is not None]
    if not ok:
        raise InputError(f"{series.name}: no assessable slice in any of its "
                         f"{series.n_frames} frames ({results[0].error})")
    first = ok[0].assessment
    summary = summarize_series(results, thresholds, series.n_input_frames)
    summary["min_foreground"] = float(min_foreground)
    summary["inference"] = first.summary["inference"]
    return SeriesAssessment(results, summary, first.orientation, first.axis,
                            first.pixel_spacing, describe_model(loaded))


def _frame_entry(f: FrameResult) -> dict[str, Any]:
    if f.assessment is None:
        from .inference import NO_VERDICT

        return {"frame": f.frame, "label": f.label, "verdict": NO_VERDICT, "error": f.error}
    s = f.assessment.summary
    worst = s["worst_slices"][0] if s["worst_slices"] else None
    return {"frame": f.frame, "label": f.label, "verdict": s["verdict"],
            "mean_ssim": s["mean_ssim"], "min_ssim": s["min_ssim"],
            "n_assessed": s["n_assessed"], "counts": s["counts"],
            "worst_slice": ({"index": worst["index"], "ssim": worst["ssim"]}
                            if worst else None)}


def summarize_series(frames: list[FrameResult], thresholds: ClinicalThresholds,
                     n_input_frames: int, n_worst: int = N_WORST) -> dict[str, Any]:
    """The series summary: the 3D summary's fields over every slice of every frame (verdict,
    mean/min SSIM, class counts), the worst slices as (frame, slice), per-frame verdicts and
    the worst frames."""
    from .inference import VERDICT_RULE, summarize

    ok = [f for f in frames if f.assessment is not None]
    ssim = np.concatenate([[r.ssim for r in f.assessment.records] for f in ok])
    classes = np.concatenate([[r.clinical_class for r in f.assessment.records] for f in ok])
    empty = np.concatenate([[r.empty for r in f.assessment.records] for f in ok]).astype(bool)
    frame_of = np.concatenate([[f.frame] * len(f.assessment.records) for f in ok])
    index = np.concatenate([[r.index for r in f.assessment.records] for f in ok])
    pooled = summarize(ssim, classes, empty, index, thresholds, n_worst=0)
    keep = np.flatnonzero(~empty)
    order = keep[np.argsort(ssim[keep], kind="stable")[:n_worst]]
    entries = [_frame_entry(f) for f in frames]
    ranked = sorted((e for e in entries if "min_ssim" in e and e["min_ssim"] is not None),
                    key=lambda e: (e["min_ssim"], e["mean_ssim"], e["frame"]))
    frame_counts = {name: sum(1 for e in entries if e["verdict"].startswith(name))
                    for name in CLINICAL_NAMES.values()}
    frame_counts["unassessed"] = sum(1 for f in frames if f.assessment is None)
    pooled.update({
        "verdict_rule": VERDICT_RULE + "; over every frame of the series",
        "n_frames": len(frames),
        "n_frames_assessed": len(ok),
        "n_input_frames": int(n_input_frames),
        "frame_counts": frame_counts,
        "worst_slices": [{"frame": int(frame_of[i]), "index": int(index[i]),
                          "ssim": float(ssim[i]), "class": CLINICAL_NAMES[int(classes[i])]}
                         for i in order],
        "worst_frames": ranked[:n_worst],
        "frames": entries,
    })
    return pooled
