"""Quality classes from SSIM: the clinical 3-class scheme and N equal-width classes, and their
vocabulary (names, overlay labels, colours, per-slice table columns) for every output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base.errors import SettingsError

CLINICAL_NAMES = {1: "good", 2: "sufficient", 3: "insufficient"}
# Overlay label of each key: the clinical class, 4 for empty slices (too little head: predicted
# and flagged, not classed); 0 = no label, transparent
CLASS_LABELS = {**{name: number for number, name in CLINICAL_NAMES.items()}, "empty": 4}
# RGB in [0, 1], one palette for the Slicer scene and the report charts, chosen to read on grey
# MR and for red-green colour-blind users (blue-ish green, amber). The threshold lines take the
# colour of the class above `good` and below `sufficient`.
CLASS_COLOURS = {
    "good": (0.10, 0.70, 0.45),
    "sufficient": (0.95, 0.75, 0.10),
    "insufficient": (0.90, 0.15, 0.15),
    "empty": (0.60, 0.60, 0.60),
}
# Per-slice columns of the CSV report and of the Slicer table, after the slice's index column
# (the CSV's `index`, the table's `slice`)
SLICE_COLUMNS = ("position_mm", "ssim", "class", "class_name", "foreground", "empty",
                 "ssim_sd", "uncertain")


@dataclass(frozen=True)
class ClinicalThresholds:
    """The paper's expert scheme: good >= 0.85 > sufficient >= 0.60 > insufficient (re-scan)."""

    good: float = 0.85
    sufficient: float = 0.60

    def __post_init__(self) -> None:
        for name in ("good", "sufficient"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise SettingsError(f"threshold {name} must be a number, not "
                                    f"{type(value).__name__}")
        if not 0.0 <= self.sufficient < self.good <= 1.0:  # NaN fails this too
            raise SettingsError("thresholds must satisfy 0 <= sufficient < good <= 1, got "
                                f"sufficient={self.sufficient}, good={self.good}")


def clinical_class(ssim, thresholds: ClinicalThresholds = ClinicalThresholds()) -> np.ndarray:
    """1 = good, 2 = sufficient, 3 = insufficient (re-scan), per SSIM value."""
    s = np.asarray(ssim, dtype=np.float64)
    return np.where(s >= thresholds.good, 1, np.where(s >= thresholds.sufficient, 2, 3))


def uniform_class(ssim, n: int) -> np.ndarray:
    """Class 1..n of n equal-width bins on [0, 1], class 1 = lowest SSIM (Table III)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SettingsError(f"number of classes must be an integer >= 1, got {n!r}")
    s = np.clip(np.asarray(ssim, dtype=np.float64), 0.0, 1.0)
    return np.minimum(np.floor(s * n).astype(int), n - 1) + 1


def clinical_recall(pred, true, thresholds: ClinicalThresholds = ClinicalThresholds(),
                    ) -> dict[str, float]:
    """Per clinical class of the TRUE SSIM, the share of its samples predicted in that class
    ("recall_good", "recall_sufficient", "recall_insufficient"; NaN for a class without
    samples), and "insufficient_read_good": how many truly insufficient samples read good (the
    miss a re-scan tool must not make)."""
    p = clinical_class(np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0), thresholds)
    t = clinical_class(np.clip(np.asarray(true, dtype=np.float64), 0.0, 1.0), thresholds)
    out: dict[str, float] = {}
    for number, name in CLINICAL_NAMES.items():
        mine = t == number
        out[f"recall_{name}"] = float((p[mine] == number).mean()) if mine.any() else float("nan")
    out["insufficient_read_good"] = int(((t == 3) & (p == 1)).sum())
    return out
