"""Assessment reports: a CSV of slices, a JSON summary and a PNG chart per input.

Each report set is written atomically: every file goes to a fresh temporary name in the report
folder first (created exclusively, never through a symlink), and only when all three are
complete are they renamed over their final names (`os.replace` replaces a symlink found there,
never its target). An interrupted run or a full disk leaves the previous report set, or none,
never a half-written file; two runs writing into one folder do not mix their files.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import platform
import re
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import InputError
from ..base.jsonable import jsonable
from .classes import CLASS_COLOURS, CLINICAL_NAMES, SLICE_COLUMNS
from .inference import UNCERTAIN_SDS, Assessment

CSV_COLUMNS = ("index", *SLICE_COLUMNS)
# --true-ssim: slice indices up to this (an array of that many floats, 8 MB), files up to this
MAX_TRUE_SSIM_INDEX = 1_000_000
MAX_TRUE_SSIM_BYTES = 64 * 2**20
NAME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".png", ".tif",
                 ".tiff", ".jpg", ".jpeg", ".bmp", ".dcm")
MAX_STEM_CHARS = 80


def printable(text: Any) -> str:
    """`text` safe to print on any terminal and to draw: the bytes of a file name that is not
    UTF-8 (kept by Python as surrogate escapes) shown as \\xNN, control characters (a new
    line in a file name) as escapes, so that every message stays one line."""
    text = str(text)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


def safe_stem(stem: str) -> str:
    """The file name stem a report is written under: letters, digits, `.`, `_` and `-`
    (any other run of characters becomes `_`), no leading dot. Archive keys go through it
    too, so that two names it maps to one stem are seen to collide before anything is
    written."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(stem)).lstrip(".") or "input"


def report_name(path: str | os.PathLike) -> str:
    """The report name of an input: its file name without the extension (letters, digits,
    `.`, `_`, `-`; anything else becomes `_`), then `_` and the first 8 hex digits of the
    SHA-256 of its absolute path with symlinks resolved. A pure function of the path: the same
    input gets the same name in every run, whatever else is assessed with it, and two inputs
    with one file name in different folders (A/T2.nii.gz, B/T2.nii.gz) get different names."""
    p = Path(os.fspath(path))
    try:
        full = p.resolve()
    except (OSError, RuntimeError):  # a symlink loop: the absolute path as given
        full = Path(os.path.abspath(p))
    name = full.name or p.name
    for suffix in NAME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input"
    digest = hashlib.sha256(os.fsencode(str(full))).hexdigest()[:8]
    return f"{stem[:MAX_STEM_CHARS]}_{digest}"


def check_writable(out_dir: str | Path) -> Path:
    """Create the report folder if needed and check that files can be created in it (before
    any input is assessed). InputError naming the folder otherwise."""
    out = Path(out_dir)
    try:
        if out.exists() and not out.is_dir():
            raise InputError(f"{printable(out)}: exists and is not a folder; give a report "
                             "folder with --out")
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".motionssim-write-test-{secrets.token_hex(6)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
        os.close(fd)
        os.unlink(probe)
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"{printable(out)}: the report folder is not writable "
                         f"({exc.strerror or exc})") from None
    return out


@contextlib.contextmanager
def _atomic_files(paths: dict[str, Path]):
    """Open a new temporary file (binary) beside each of `paths`; on success rename them all
    over their final names, on any error remove them."""
    tmps: dict[str, Path] = {}
    files: dict[str, Any] = {}
    try:
        for key, final in paths.items():
            tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
            # O_EXCL: a fresh file, never an existing one or a symlink planted at its name;
            # 0o666 less the umask, as an ordinary file would get
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_NOFOLLOW", 0), 0o666)
            tmps[key] = tmp
            files[key] = os.fdopen(fd, "wb")
        yield files
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        # what would make a rename fail half-way through the set is refused before any
        busy = next((p for p in paths.values() if p.is_dir() and not p.is_symlink()), None)
        if busy is not None:
            raise IsADirectoryError(21, "a folder has the report's name", str(busy))
        order = [k for k in ("csv", "png") if k in tmps] + [k for k in tmps if k != "json"]
        for key in dict.fromkeys(order + ["json"]):  # the summary last: it names the others
            if key in tmps:
                os.replace(tmps[key], paths[key])
                del tmps[key]
    finally:
        for f in files.values():
            if not f.closed:
                f.close()
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def read_true_ssim(path: str | Path) -> np.ndarray:
    """Per-slice true SSIM from a CSV with columns index,true_ssim (the sample's sidecar):
    an array indexed by slice index, NaN for slices the file does not list. Indices run from
    0 to MAX_TRUE_SSIM_INDEX, values are finite SSIMs in [-1, 1]."""
    shown = printable(path)
    try:
        from ..imaging.integrity import regular_file_size

        if regular_file_size(path) > MAX_TRUE_SSIM_BYTES:  # a FIFO or device: refused
            raise ValueError(f"larger than {MAX_TRUE_SSIM_BYTES // 2**20} MB")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or "true_ssim" not in rows[0] or "index" not in rows[0]:
            raise ValueError("expected a CSV with columns index,true_ssim")
        pairs = [(int(r["index"]), float(r["true_ssim"])) for r in rows]
        if min(i for i, _ in pairs) < 0:
            raise ValueError("negative slice index")
        top = max(i for i, _ in pairs)
        if top > MAX_TRUE_SSIM_INDEX:
            raise ValueError(f"slice index {str(top)[:20]} is beyond any volume (at most "
                             f"{MAX_TRUE_SSIM_INDEX})")
        wrong = next((v for _, v in pairs if not -1.0 <= v <= 1.0), None)  # NaN too
        if wrong is not None:
            raise ValueError(f"true SSIM {wrong} is not a number in [-1, 1]")
    except InputError as exc:
        raise InputError(f"{printable(exc)[:200]} (--true-ssim)") from None
    except (OSError, ValueError, TypeError, csv.Error) as exc:
        detail = printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise InputError(f"{shown}: cannot read true SSIM ({detail[:160]})") from None
    out = np.full(max(i for i, _ in pairs) + 1, np.nan)
    for i, v in pairs:
        out[i] = v
    return out


def _versions() -> dict[str, str]:
    import torch

    from ..base.version import __version__

    return {"motionssim": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def write_report(assessment: Assessment, out_dir: str | Path, stem: str,
                 true_ssim: np.ndarray | None = None, source: str | None = None,
                 ) -> dict[str, Path]:
    """Write OUT/STEM_slices.csv, OUT/STEM_summary.json and OUT/STEM_chart.png, atomically
    (see the module docstring): all three are complete before any replaces an older one.

    `stem`: the report name (the command line uses `report_name(input)`); characters other
    than letters, digits, `.`, `_` and `-` become `_`. `true_ssim`: optional known SSIM per
    slice index (NaN where unknown), written as an extra CSV column, compared in the JSON and
    drawn beside the prediction. `source`: the input path recorded in the JSON and the chart
    title. Returns {"csv": path, "json": path, "png": path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(stem)
    paths = {"csv": out / f"{stem}_slices.csv", "json": out / f"{stem}_summary.json",
             "png": out / f"{stem}_chart.png"}
    recs = assessment.records
    truth = None
    if true_ssim is not None:
        known = np.asarray(true_ssim, dtype=float).reshape(-1)
        truth = np.array([known[r.index] if 0 <= r.index < len(known) else np.nan
                          for r in recs])
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(CSV_COLUMNS + (("true_ssim",) if truth is not None else ()))
    for n, r in enumerate(recs):
        row = [r.index, f"{r.position_mm:.3f}", f"{r.ssim:.4f}", r.clinical_class,
               CLINICAL_NAMES[r.clinical_class], f"{r.foreground:.4f}", int(r.empty),
               f"{r.ssim_sd:.4f}", int(r.uncertain)]
        if truth is not None:
            row.append(f"{truth[n]:.4f}")
        w.writerow(row)
    shown = printable(source) if source is not None else None
    summary: dict[str, Any] = {"input": shown, "orientation": assessment.orientation,
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
    body = json.dumps(jsonable(summary), indent=2)
    with _atomic_files(paths) as files:
        files["csv"].write(text.getvalue().encode("utf-8"))
        files["json"].write(body.encode("utf-8"))
        plot_chart(assessment, files["png"], title=shown or stem, true_ssim=truth)
    return paths


def _short(text: str, limit: int = 110) -> str:
    """`text` cut in the middle to `limit` characters (a deep path keeps both ends)."""
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


def _save(fig: Any, path: str | Path | Any) -> None:
    """Lay out `fig` and write it to `path` (a file name or a binary file object) as PNG."""
    with warnings.catch_warnings():  # a glyph the font lacks: drawn as a box, no warning
        warnings.simplefilter("ignore")
        fig.tight_layout()
        fig.savefig(path, format="png")


def plot_chart(assessment: Assessment, path: str | Path | Any, title: str = "",
               true_ssim: np.ndarray | None = None) -> None:
    """SSIM per slice, points coloured by class, empty slices hollow grey, thresholds dashed;
    error bars +- UNCERTAIN_SDS x ssim_sd (the head's sd or the views' spread), uncertain
    slices ringed.
    `path`: a file name or a binary file object. The title is drawn as plain text (a `$` in a
    file name is not mathtext), non-UTF-8 bytes shown as escapes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = assessment.records
    x = np.array([r.index for r in recs])
    y = np.array([r.ssim for r in recs])
    cls = np.array([r.clinical_class for r in recs])
    empty = np.array([r.empty for r in recs], dtype=bool)
    sd = np.array([getattr(r, "ssim_sd", 0.0) for r in recs], dtype=float)
    unsure = np.array([getattr(r, "uncertain", False) for r in recs], dtype=bool)
    th = assessment.summary.get("thresholds", {"good": 0.85, "sufficient": 0.60})
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    try:
        ax.plot(x, y, color="0.7", lw=1, zorder=1)
        if (sd > 0).any():
            ax.errorbar(x, y, yerr=UNCERTAIN_SDS * sd, fmt="none", ecolor="0.45", elinewidth=0.8,
                        capsize=2, zorder=2)
        if unsure.any():
            ax.scatter(x[unsure], y[unsure], s=90, facecolors="none", edgecolors="k",
                       linewidths=1.0, label=f"uncertain ({unsure.sum()})", zorder=4)
        for k, name in CLINICAL_NAMES.items():
            m = (cls == k) & ~empty
            ax.scatter(x[m], y[m], s=28, color=CLASS_COLOURS[name], label=f"{name} ({m.sum()})",
                       zorder=3)
        if empty.any():
            ax.scatter(x[empty], y[empty], s=28, facecolors="none", edgecolors="0.5",
                       label=f"empty ({empty.sum()})", zorder=2)
        if true_ssim is not None:
            ax.plot(x, true_ssim, color="k", marker="x", ms=4, lw=0.6, label="true SSIM",
                    zorder=2)
        ax.axhline(th["good"], color=CLASS_COLOURS["good"], ls="--", lw=1)
        ax.axhline(th["sufficient"], color=CLASS_COLOURS["insufficient"], ls="--", lw=1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{assessment.orientation} slice index ({assessment.axis})")
        ax.set_ylabel("predicted SSIM" + (f" (bars +- {UNCERTAIN_SDS:g} sd)"
                                          if (sd > 0).any() else ""))
        verdict = assessment.summary.get("verdict", "")
        ax.set_title(f"{_short(printable(title))}\nverdict: {verdict}", fontsize=10,
                     parse_math=False)
        ax.legend(loc="lower left", fontsize=8, ncol=6)
        ax.grid(alpha=0.3)
        _save(fig, path)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# 4D series (series.SeriesAssessment): the same files with a frame column, plus a heatmap


def class_colormap(good: float, sufficient: float) -> Any:
    """SSIM colours in the classes' hues, with a break at each threshold: dark to light red
    (insufficient), amber (sufficient), light to dark green (good). A cell's class reads from
    its hue, its SSIM from its shade."""
    from matplotlib.colors import LinearSegmentedColormap

    eps = 1e-6
    stops = [(0.0, "#67000d"), (max(sufficient - eps, eps), "#fb6a4a"),
             (sufficient, "#fdd49e"), (max(good - eps, sufficient + eps), CLASS_COLOURS["sufficient"]),
             (good, "#c7e9c0"), (1.0, "#00441b")]
    return LinearSegmentedColormap.from_list("motionssim_classes", stops, N=1024)


def _cell(record: Any, column: str) -> Any:
    """One CSV cell of a slice record, formatted as the 3D report writes it; a column this
    function does not know is taken from the record's field of that name."""
    if column == "class_name":
        return CLINICAL_NAMES[record.clinical_class]
    if column == "class":
        return record.clinical_class
    value = getattr(record, column)
    if column == "position_mm":
        return f"{value:.3f}"
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return value


def write_series_report(assessment: Any, out_dir: str | Path, stem: str,
                        source: str | None = None) -> dict[str, Path]:
    """The report set of a 4D series (`series.SeriesAssessment`), atomic like `write_report`:
    OUT/STEM_slices.csv (the 3D columns after a `frame` column: the frame's index in the
    input), OUT/STEM_summary.json (the series summary: verdict over all frames, per-frame
    verdicts, worst frames and worst (frame, slice) pairs), OUT/STEM_chart.png (per-frame
    chart) and OUT/STEM_heatmap.png (frame x slice SSIM). Returns the four paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(stem)
    paths = {"csv": out / f"{stem}_slices.csv", "json": out / f"{stem}_summary.json",
             "png": out / f"{stem}_chart.png", "heatmap": out / f"{stem}_heatmap.png"}
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(("frame",) + CSV_COLUMNS)
    for f in assessment.assessed:
        for r in f.assessment.records:
            w.writerow([f.frame] + [_cell(r, c) for c in CSV_COLUMNS])
    shown = printable(source) if source is not None else None
    summary: dict[str, Any] = {"input": shown, "kind": "series",
                               "orientation": assessment.orientation, "axis": assessment.axis,
                               "pixel_spacing_mm": list(assessment.pixel_spacing),
                               **assessment.summary, "model": assessment.model,
                               "files": {k: p.name for k, p in paths.items()},
                               "versions": _versions()}
    body = json.dumps(jsonable(summary), indent=2)
    with _atomic_files(paths) as files:
        files["csv"].write(text.getvalue().encode("utf-8"))
        files["json"].write(body.encode("utf-8"))
        plot_frames_chart(assessment, files["png"], title=shown or stem)
        plot_heatmap(assessment, files["heatmap"], title=shown or stem)
    return paths


def _frame_stats(assessment: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(frames, mean SSIM, min SSIM, worst class) per frame; NaN/0 for unassessed frames."""
    frames = np.array([f["frame"] for f in assessment.summary["frames"]])
    mean = np.array([np.nan if f.get("mean_ssim") is None else f["mean_ssim"]
                     for f in assessment.summary["frames"]], dtype=float)
    low = np.array([np.nan if f.get("min_ssim") is None else f["min_ssim"]
                    for f in assessment.summary["frames"]], dtype=float)
    names = {v: k for k, v in CLINICAL_NAMES.items()}
    worst = np.array([next((k for n, k in names.items() if f["verdict"].startswith(n)), 0)
                      for f in assessment.summary["frames"]])
    return frames, mean, low, worst


def plot_frames_chart(assessment: Any, path: str | Path | Any, title: str = "") -> None:
    """Per-frame chart: each frame's lowest slice SSIM (points coloured by the frame's
    verdict) and mean SSIM (grey line), thresholds dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, mean, low, worst = _frame_stats(assessment)
    th = assessment.summary.get("thresholds", {"good": 0.85, "sufficient": 0.60})
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    try:
        ax.plot(frames, mean, color="0.6", lw=1, marker=".", label="mean SSIM", zorder=1)
        ax.plot(frames, low, color="0.8", lw=0.8, zorder=1)
        for k, name in CLINICAL_NAMES.items():
            m = worst == k
            ax.scatter(frames[m], low[m], s=28, color=CLASS_COLOURS[name], zorder=3,
                       label=f"lowest slice, frame {name} ({int(m.sum())})")
        if (worst == 0).any():
            m = worst == 0
            ax.scatter(frames[m], np.zeros(int(m.sum())), marker="x", color="0.5", zorder=2,
                       label=f"no assessable slice ({int(m.sum())})")
        ax.axhline(th["good"], color=CLASS_COLOURS["good"], ls="--", lw=1)
        ax.axhline(th["sufficient"], color=CLASS_COLOURS["insufficient"], ls="--", lw=1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("frame (index in the input)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("predicted SSIM")
        ax.set_title(f"{_short(printable(title))}\nverdict: "
                     f"{assessment.summary.get('verdict', '')}", fontsize=10, parse_math=False)
        ax.legend(loc="lower left", fontsize=8, ncol=3)
        ax.grid(alpha=0.3)
        _save(fig, path)
    finally:
        plt.close(fig)


def plot_heatmap(assessment: Any, path: str | Path | Any, title: str = "") -> None:
    """Frame x slice heatmap of the predicted SSIM: one row per frame (its index in the
    input), one column per slice index; empty slices and unassessed frames grey. The colour
    bar marks the class thresholds (lines and the class names beside their bands)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, slices, ssim, empty = assessment.matrix()
    th = assessment.summary.get("thresholds", {"good": 0.85, "sufficient": 0.60})
    shown = np.ma.masked_array(ssim, mask=empty | ~np.isfinite(ssim))
    cmap = class_colormap(th["good"], th["sufficient"]).with_extremes(bad="0.75")
    height = min(12.0, 2.5 + 0.18 * len(frames))
    fig, ax = plt.subplots(figsize=(10, height), dpi=100)
    try:
        im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                       interpolation="nearest", origin="upper")
        step = max(1, len(slices) // 20)
        ax.set_xticks(np.arange(0, len(slices), step))
        ax.set_xticklabels([str(int(s)) for s in slices[::step]], fontsize=7)
        fstep = max(1, len(frames) // 30)
        ax.set_yticks(np.arange(0, len(frames), fstep))
        ax.set_yticklabels([str(int(f)) for f in frames[::fstep]], fontsize=7)
        ax.set_xlabel(f"{assessment.orientation} slice index ({assessment.axis})")
        ax.set_ylabel("frame")
        bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label("predicted SSIM (grey: empty slice)")
        for value in (th["sufficient"], th["good"]):
            bar.ax.axhline(value, color="k", lw=1.5)
        bands = ((th["good"] + 1.0) / 2, "good"), \
            ((th["sufficient"] + th["good"]) / 2, "sufficient"), \
            (th["sufficient"] / 2, "insufficient")
        for y, name in bands:
            bar.ax.text(0.5, y, name, rotation=90, va="center", ha="center", fontsize=7,
                        transform=bar.ax.get_yaxis_transform())
        s = assessment.summary
        worst = s["worst_slices"][0] if s.get("worst_slices") else None
        note = (f"; worst: frame {worst['frame']}, slice {worst['index']} "
                f"(SSIM {worst['ssim']:.2f})") if worst else ""
        ax.set_title(f"{_short(printable(title))}\nverdict: {s.get('verdict', '')}{note}",
                     fontsize=10, parse_math=False)
        _save(fig, path)
    finally:
        plt.close(fig)
