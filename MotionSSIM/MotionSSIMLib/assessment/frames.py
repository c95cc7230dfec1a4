"""4D series assessed frame by frame: diffusion, fMRI and other multi-volume inputs.

Every frame of a `imaging.series.Series` is assessed slice by slice with the 3D engine
(`inference.assess_volume`), the model loaded once for all frames.

Verdict of a series: the worst clinical class among the non-empty slices of every frame (the
3D rule over all frames). Frames are ranked worst first by their lowest slice SSIM, then by
their mean SSIM: one moved slice spoils a diffusion volume as surely as a moved frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..base.errors import InputError, SettingsError
from ..imaging.series import Series
from .classes import CLINICAL_NAMES, ClinicalThresholds

N_WORST = 5  # worst frames and worst slices listed in the summary


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
    refused (InputError). `precision` and `tta` (default: inference.views_for) reach every
    frame's assessment exactly as `assess_volume` takes them; the summary's `inference`
    says what ran."""
    from ..imaging.geometry import resolve_orientation
    from .devices import resolve_device
    from .inference import assess_volume, describe_model, get_model

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
                              tta=tta)
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
