"""A volume's summary from its per-slice readings: the verdict, the class counts, the worst
slices, the uncertain ones, and the few model facts a report shows. Torch-free: Slicer's main
process and the reports use it without loading the network.

Volume verdict (README): the worst clinical class among the non-empty slices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .classes import CLINICAL_NAMES, ClinicalThresholds

if TYPE_CHECKING:
    from .checkpoint import LoadedModel

VERDICTS = {1: "good", 2: "sufficient", 3: "insufficient: re-scan"}
NO_VERDICT = "no assessable slices"
VERDICT_RULE = ("worst clinical class among non-empty slices: good (all slices good), "
                "sufficient (worst slice sufficient), insufficient: re-scan (any slice "
                "insufficient)")
UNCERTAIN_SDS = 2.0  # a slice is uncertain when ssim +- 2 sd contains a class threshold


def verdict_of(classes: np.ndarray) -> str:
    """The volume verdict: the worst clinical class among the assessed (non-empty) slices."""
    classes = np.asarray(classes)
    if classes.size == 0:
        return NO_VERDICT
    return VERDICTS[int(classes.max())]


def uncertain_slices(ssim: np.ndarray, sd: np.ndarray,
                     thresholds: ClinicalThresholds = ClinicalThresholds(),
                     k: float = UNCERTAIN_SDS) -> np.ndarray:
    """True where the interval ssim +- k * sd contains a class threshold (the slice's class
    could be the neighbouring one within the model's own instability)."""
    ssim, sd = np.asarray(ssim, float), np.asarray(sd, float)
    lo, hi = ssim - k * sd, ssim + k * sd
    out = np.zeros(ssim.shape, dtype=bool)
    for t in (thresholds.good, thresholds.sufficient):
        out |= (lo < t) & (hi >= t) & (sd > 0)
    return out


def summarize(ssim: np.ndarray, classes: np.ndarray, empty: np.ndarray, indices: np.ndarray,
              thresholds: ClinicalThresholds = ClinicalThresholds(),
              n_worst: int = 5, sd: np.ndarray | None = None) -> dict[str, Any]:
    """Volume summary over the non-empty slices (empty ones are only counted). With `sd`
    (per-slice spread over the views) also the uncertain slices' count, mean spread and
    each worst slice's spread."""
    ssim, classes = np.asarray(ssim, float), np.asarray(classes, int)
    empty, indices = np.asarray(empty, bool), np.asarray(indices, int)
    keep = ~empty
    s, c, idx = ssim[keep], classes[keep], indices[keep]
    counts = {CLINICAL_NAMES[k]: int((c == k).sum()) for k in (1, 2, 3)}
    counts["empty"] = int(empty.sum())
    order = np.argsort(s, kind="stable")[:n_worst]
    assessed = int(keep.sum())
    out = {
        "verdict": verdict_of(c),
        "verdict_rule": VERDICT_RULE,
        "n_slices": int(len(ssim)),
        "n_assessed": assessed,
        "mean_ssim": float(s.mean()) if assessed else None,
        "median_ssim": float(np.median(s)) if assessed else None,
        "min_ssim": float(s.min()) if assessed else None,
        "counts": counts,
        "fractions": {k: (counts[k] / assessed if assessed else 0.0)
                      for k in ("good", "sufficient", "insufficient")},
        "worst_slices": [{"index": int(idx[i]), "ssim": float(s[i]),
                          "class": CLINICAL_NAMES[int(c[i])]} for i in order],
        "thresholds": {"good": thresholds.good, "sufficient": thresholds.sufficient},
    }
    if sd is not None:
        d = np.asarray(sd, float)[keep]
        out["n_uncertain"] = int(uncertain_slices(s, d, thresholds).sum())
        out["mean_ssim_sd"] = float(d.mean()) if assessed else None
        out["uncertain_rule"] = (f"ssim +- {UNCERTAIN_SDS:g} ssim_sd contains a class "
                                 "threshold")
        for w, i in zip(out["worst_slices"], order):
            w["ssim_sd"] = float(d[i])
    return out


MODEL_SUMMARY_KEYS = ("architecture", "name", "dtype", "epoch", "step", "motionssim_version",
                      "trained_on")


MAX_FIELD_CHARS = 200  # a model metadata string copied into a report is cut to this
MAX_FIELD_ITEMS = 20   # ... a list or object to this many items
MAX_FIELD_DEPTH = 3    # ... and nested objects to this depth


def bounded(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of `value` bounded in size: strings cut to MAX_FIELD_CHARS, lists and
    objects to MAX_FIELD_ITEMS items and MAX_FIELD_DEPTH levels, huge or non-finite numbers
    as short text. Model metadata is the model author's text, not ours: a report must not
    grow without bound (or fail) because of it."""
    def cut(text: str) -> str:
        return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "..."

    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value) if abs(int(value)) < 10**15 else "(a huge integer)"
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else str(float(value))
    if isinstance(value, str):
        return cut(value)
    if depth >= MAX_FIELD_DEPTH:
        return "(nested too deep)"
    if isinstance(value, dict):
        return {cut(str(k)): bounded(v, depth + 1)
                for k, v in list(value.items())[:MAX_FIELD_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [bounded(v, depth + 1) for v in list(value)[:MAX_FIELD_ITEMS]]
    return cut(type(value).__name__)


def describe_model(loaded: LoadedModel) -> dict[str, Any]:
    """The few metadata items a report shows about the model, bounded in size (`bounded`)."""
    meta = {k: bounded(loaded.metadata[k]) for k in MODEL_SUMMARY_KEYS
            if k in loaded.metadata}
    evaluation = loaded.metadata.get("evaluation")
    if isinstance(evaluation, dict):  # its headline figures only (residual SD, MAE, ...)
        meta["evaluation"] = {bounded(str(k)): bounded(v)
                              for k, v in list(evaluation.items())[:MAX_FIELD_ITEMS]
                              if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if loaded.path:
        meta["path"] = loaded.path
    return meta
