"""Assessment reports: a CSV of slices, a JSON summary and a PNG chart per input."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .classes import CLINICAL_NAMES
from .errors import InputError
from .inference import Assessment

CLASS_COLOURS = {1: "#2ca02c", 2: "#e6a700", 3: "#d62728"}
CSV_COLUMNS = ("index", "position_mm", "ssim", "class", "class_name", "foreground", "empty")


def read_true_ssim(path: str | Path) -> np.ndarray:
    """Per-slice true SSIM from a CSV with columns index,true_ssim (the sample's sidecar):
    an array indexed by slice index, NaN for slices the file does not list."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or "true_ssim" not in rows[0] or "index" not in rows[0]:
            raise ValueError("expected a CSV with columns index,true_ssim")
        pairs = [(int(r["index"]), float(r["true_ssim"])) for r in rows]
        if min(i for i, _ in pairs) < 0:
            raise ValueError("negative slice index")
    except (OSError, ValueError, TypeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read true SSIM ({exc})") from None
    out = np.full(max(i for i, _ in pairs) + 1, np.nan)
    for i, v in pairs:
        out[i] = v
    return out


def _versions() -> dict[str, str]:
    import torch

    from . import __version__

    return {"motionssim": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _plain(value: Any) -> Any:
    """JSON for numpy scalars/arrays in model metadata."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_report(assessment: Assessment, out_dir: str | Path, stem: str,
                 true_ssim: np.ndarray | None = None, source: str | None = None,
                 ) -> dict[str, Path]:
    """Write OUT/STEM_slices.csv, OUT/STEM_summary.json and OUT/STEM_chart.png.

    `true_ssim`: optional known SSIM per slice index (NaN where unknown), written as an extra
    CSV column, compared in the JSON and drawn beside the prediction. `source`: the input path
    recorded in the JSON. Returns {"csv": path, "json": path, "png": path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / f"{stem}_slices.csv", "json": out / f"{stem}_summary.json",
             "png": out / f"{stem}_chart.png"}
    recs = assessment.records
    truth = None
    if true_ssim is not None:
        known = np.asarray(true_ssim, dtype=float).reshape(-1)
        truth = np.array([known[r.index] if 0 <= r.index < len(known) else np.nan
                          for r in recs])
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS + (("true_ssim",) if truth is not None else ()))
        for n, r in enumerate(recs):
            row = [r.index, f"{r.position_mm:.3f}", f"{r.ssim:.4f}", r.clinical_class,
                   CLINICAL_NAMES[r.clinical_class], f"{r.foreground:.4f}", int(r.empty)]
            if truth is not None:
                row.append(f"{truth[n]:.4f}")
            w.writerow(row)
    summary: dict[str, Any] = {"input": source, "orientation": assessment.orientation,
                               "axis": assessment.axis,
                               "pixel_spacing_mm": list(assessment.pixel_spacing),
                               **assessment.summary, "model": assessment.model,
                               "files": {k: p.name for k, p in paths.items()},
                               "versions": _versions()}
    if truth is not None:
        keep = ~np.array([r.empty for r in recs]) & np.isfinite(truth)
        pred = np.array([r.ssim for r in recs])
        if keep.any():
            err = pred[keep] - truth[keep]
            summary["against_true_ssim"] = {
                "mean_abs_error": float(np.abs(err).mean()),
                "mean_residual": float(err.mean()), "residual_sd": float(err.std()),
                "n_slices": int(keep.sum())}
    paths["json"].write_text(json.dumps(summary, indent=2, default=_plain), encoding="utf-8")
    plot_chart(assessment, paths["png"], title=source or stem, true_ssim=truth)
    return paths


def plot_chart(assessment: Assessment, path: Path, title: str = "",
               true_ssim: np.ndarray | None = None) -> None:
    """SSIM per slice, points coloured by class, empty slices hollow grey, thresholds dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = assessment.records
    x = np.array([r.index for r in recs])
    y = np.array([r.ssim for r in recs])
    cls = np.array([r.clinical_class for r in recs])
    empty = np.array([r.empty for r in recs], dtype=bool)
    th = assessment.summary.get("thresholds", {"good": 0.85, "sufficient": 0.60})
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    ax.plot(x, y, color="0.7", lw=1, zorder=1)
    for k, name in CLINICAL_NAMES.items():
        m = (cls == k) & ~empty
        ax.scatter(x[m], y[m], s=28, color=CLASS_COLOURS[k], label=f"{name} ({m.sum()})",
                   zorder=3)
    if empty.any():
        ax.scatter(x[empty], y[empty], s=28, facecolors="none", edgecolors="0.5",
                   label=f"empty ({empty.sum()})", zorder=2)
    if true_ssim is not None:
        ax.plot(x, true_ssim, color="k", marker="x", ms=4, lw=0.6, label="true SSIM", zorder=2)
    ax.axhline(th["good"], color=CLASS_COLOURS[1], ls="--", lw=1)
    ax.axhline(th["sufficient"], color=CLASS_COLOURS[3], ls="--", lw=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{assessment.orientation} slice index ({assessment.axis})")
    ax.set_ylabel("predicted SSIM")
    verdict = assessment.summary.get("verdict", "")
    ax.set_title(f"{title}\nverdict: {verdict}", fontsize=10)
    ax.legend(loc="lower left", fontsize=8, ncol=5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
