"""Expert ratings of an archive's scans, and how far the verdicts agree with them.

`read_ratings` reads MR-ART's `derivatives/scores.tsv` (columns `bids_name` and `score`), or any
TSV/CSV of scan and rating 1 clean / 2 moderate / 3 re-scan; `match_ratings` pairs them with
the scans; `agreement` gives the confusion matrix, accuracy, Cohen's kappa, Spearman
correlations and the ROC AUC of re-scan, `plot_agreement` its plot.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..base.errors import InputError

VERDICT_CLASS = {"good": 1, "sufficient": 2, "insufficient: re-scan": 3}
RATING_NAMES = {1: "clean", 2: "moderate", 3: "re-scan"}
# ratings file: the scan and rating columns, first match wins (MR-ART: bids_name, score;
# its per-subject sub-*_scans.tsv: filename, score)
SCAN_COLUMNS = ("bids_name", "filename", "scan", "path", "file", "image", "input", "name")
RATING_COLUMNS = ("score", "rating", "rate", "grade", "quality", "label", "class")
MAX_RATINGS_BYTES = 64 * 2**20
MISSING_RATING = ("", "n/a", "na", "nan", "none", "-")


# ---------------------------------------------------------------------------------------------
# Ratings


def _fmt(value: Any, digits: int = 4) -> str:
    """A cell as the CSV and the page show it: floats to `digits` places, None and NaN empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else ""
    return str(value)


def _cell(row: list[str], i: int) -> str:
    return row[i].strip() if i < len(row) else ""


def read_ratings(path: str | Path) -> list[tuple[str, int]]:
    """(scan name, rating) pairs from a TSV or CSV: MR-ART's `derivatives/scores.tsv`
    (columns `bids_name`, `score`), its `sub-*_scans.tsv` (`filename`, `score`), or any table
    with a scan column (SCAN_COLUMNS) and a rating column (RATING_COLUMNS), or two columns.
    Ratings are 1 (clean), 2 (moderate) or 3 (re-scan); `n/a` or empty cells are left out.
    InputError naming the file (and line) otherwise."""
    from ..imaging.integrity import regular_file_size

    p = Path(path)
    try:
        if regular_file_size(p) > MAX_RATINGS_BYTES:  # a FIFO or a device: refused unopened
            raise InputError(f"{p}: larger than {MAX_RATINGS_BYTES // 2**20} MB; not a ratings "
                             "table")
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a text table (not UTF-8)") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the ratings ({exc.strerror or exc})") from None
    rows = _table_rows(p, text)
    if not rows:
        raise InputError(f"{p}: no ratings (expected a header and one row per scan)")
    names = [c.strip().lower() for c in rows[0][1]]
    scan_col = next((names.index(c) for c in SCAN_COLUMNS if c in names), None)
    rate_col = next((names.index(c) for c in RATING_COLUMNS if c in names), None)
    if (scan_col is None or rate_col is None) and len(names) == 2:
        scan_col, rate_col = 0, 1
        if _cell(rows[0][1], 1) in ("1", "2", "3"):  # no header: the first row is a rating
            rows = [(0, ["scan", "rating"]), *rows]
    if len(rows) < 2:
        raise InputError(f"{p}: no ratings (expected a header and one row per scan)")
    if scan_col is None or rate_col is None or scan_col == rate_col:
        raise InputError(f"{p}: expected a scan column and a rating column (MR-ART's "
                         "derivatives/scores.tsv: bids_name and score; or scan and rating); "
                         f"found {', '.join(c for c in names if c)[:120]}")
    pairs: list[tuple[str, int]] = []
    seen: dict[str, tuple[int, int]] = {}
    for line, r in rows[1:]:
        name, value = _cell(r, scan_col), _cell(r, rate_col)
        if not name or value.lower() in MISSING_RATING:
            continue
        try:
            f = float(value)
        except ValueError:
            f = math.nan
        if not f.is_integer() or int(f) not in RATING_NAMES:
            raise InputError(f"{p}: line {line}: rating {value[:20]!r} of {name[:80]} is not "
                             "1 (clean), 2 (moderate) or 3 (re-scan)")
        if name in seen and seen[name][0] != int(f):
            raise InputError(f"{p}: line {line}: {name[:80]} is rated {int(f)} here and "
                             f"{seen[name][0]} on line {seen[name][1]}")
        if name not in seen:
            seen[name] = (int(f), line)
            pairs.append((name, int(f)))
    if not pairs:
        raise InputError(f"{p}: no rating 1, 2 or 3 in the table")
    return pairs


def _table_rows(p: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the non-empty rows of a ratings table. Tab-separated text is
    split plainly (TSV has no quoting: a stray `"` is a character, it cannot swallow the rows
    after it); comma or semicolon text is read as CSV, where a quote left open, which would
    swallow the rest of the file, is refused, naming its line."""
    lines = text.splitlines()
    delim = max("\t,;", key=(lines[0] if lines else "").count)
    if delim == "\t":
        rows = [(n, ln.split("\t")) for n, ln in enumerate(lines, start=1)]
    else:
        reader = csv.reader(io.StringIO(text), delimiter=delim)
        rows, start = [], 1
        try:
            for r in reader:
                if any("\n" in c or "\r" in c for c in r):
                    raise InputError(f"{p}: line {start}: a quote (\") is not closed on its "
                                     "line; not a ratings table")
                rows.append((start, r))
                start = reader.line_num + 1
        except csv.Error as exc:  # a cell beyond the csv module's limit, a NUL byte
            raise InputError(f"{p}: line {start}: not a readable table ({exc})") from None
    return [(n, r) for n, r in rows if any(c.strip() for c in r)]


def _parts(name: str) -> list[str]:
    from .discovery import strip_suffix

    parts = [x for x in name.replace("\\", "/").split("/") if x and x != "."]
    if parts:
        parts[-1] = strip_suffix(parts[-1])
    return parts


def match_ratings(rows: list[dict[str, Any]], ratings: Sequence[tuple[str, int]],
                  source: str | Path | None = None
                  ) -> tuple[dict[int, int], list[str], list[str]]:
    """Ratings matched to rows: a rating names a scan when one's path components (file
    extension dropped) end with the other's, so `sub-01_T1w` (MR-ART's bids_name),
    `anat/sub-01_T1w.nii.gz` (a scans.tsv) and a full path all find
    `sub-01/anat/sub-01_T1w.nii.gz`. Returns ({row index: rating}, names matching no scan,
    names matching several). Two names of one scan (`sub-01_T1w` and
    `sub-01/anat/sub-01_T1w.nii.gz`) rated differently: InputError naming `source`."""
    by_last: dict[str, list[int]] = {}
    by_row: dict[int, str] = {}
    row_parts = []
    for n, r in enumerate(rows):
        parts = _parts(str(r.get("path", "")))
        row_parts.append(parts)
        if parts:
            by_last.setdefault(parts[-1], []).append(n)
    matched: dict[int, int] = {}
    unmatched, ambiguous = [], []
    for name, rating in ratings:
        key = _parts(name)
        if not key:
            unmatched.append(name)
            continue
        hits = [n for n in by_last.get(key[-1], [])
                if row_parts[n][-len(key):] == key or key[-len(row_parts[n]):] == row_parts[n]]
        if len(hits) == 1:
            if matched.get(hits[0], rating) != rating:
                raise InputError(f"{source}: {by_row[hits[0]][:80]} and {name[:80]} name one "
                                 f"scan, {rows[hits[0]].get('path', '')}, rated "
                                 f"{matched[hits[0]]} and {rating}")
            matched[hits[0]] = rating
            by_row.setdefault(hits[0], name)
        elif hits:
            ambiguous.append(name)
        else:
            unmatched.append(name)
    return matched, unmatched, ambiguous


# ---------------------------------------------------------------------------------------------
# Agreement statistics


def confusion(ratings: Sequence[int], predicted: Sequence[int], k: int = 3) -> list[list[int]]:
    """Counts [rating - 1][predicted class - 1]."""
    m = [[0] * k for _ in range(k)]
    for r, p in zip(ratings, predicted):
        m[r - 1][p - 1] += 1
    return m


def cohen_kappa(ratings: Sequence[int], predicted: Sequence[int], k: int = 3,
                weights: str | None = None) -> float | None:
    """Cohen's kappa of two ratings on classes 1..k; `weights="quadratic"` for the weighted
    kappa of ordinal classes. None where undefined (both constant and equal)."""
    m = confusion(ratings, predicted, k)
    n = sum(map(sum, m))
    if n == 0:
        return None
    rows = [sum(r) for r in m]
    cols = [sum(m[i][j] for i in range(k)) for j in range(k)]

    def w(i: int, j: int) -> float:
        if weights == "quadratic":
            return (i - j) ** 2 / (k - 1) ** 2
        return 0.0 if i == j else 1.0
    observed = sum(w(i, j) * m[i][j] for i in range(k) for j in range(k)) / n
    expected = sum(w(i, j) * rows[i] * cols[j] for i in range(k) for j in range(k)) / n / n
    if expected == 0:
        return None
    return 1.0 - observed / expected


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(positive: Sequence[bool], score: Sequence[float]) -> float | None:
    """Area under the ROC curve of `score` (higher = more likely positive), ties counted
    half (the Mann-Whitney U / (n_pos n_neg)). None without both classes."""
    pos = sum(1 for p in positive if p)
    neg = len(positive) - pos
    if pos == 0 or neg == 0:
        return None
    r = _ranks(list(score))
    u = sum(rk for rk, p in zip(r, positive) if p) - pos * (pos + 1) / 2
    return u / (pos * neg)


def roc_curve(positive: Sequence[bool], score: Sequence[float]) -> tuple[list[float],
                                                                         list[float]]:
    """(false positive rates, true positive rates) over every threshold of `score`."""
    pos = sum(1 for p in positive if p)
    neg = len(positive) - pos
    fpr, tpr = [0.0], [0.0]
    for t in sorted(set(score), reverse=True):
        tp = sum(1 for p, s in zip(positive, score) if p and s >= t)
        fp = sum(1 for p, s in zip(positive, score) if not p and s >= t)
        fpr.append(fp / neg if neg else 0.0)
        tpr.append(tp / pos if pos else 0.0)
    return fpr, tpr


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """(rho, two-sided p) of Spearman's rank correlation; None where undefined (under 3
    pairs or a constant variable)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    from scipy.stats import spearmanr

    res = spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    return (rho if math.isfinite(rho) else None), (p if math.isfinite(p) else None)


def agreement(rows: list[dict[str, Any]], matched: dict[int, int]) -> dict[str, Any]:
    """Agreement of the verdicts and SSIMs of the rated, assessed scans with their ratings."""
    pairs = [(rows[n], r) for n, r in sorted(matched.items())
             if rows[n].get("verdict") in VERDICT_CLASS and rows[n].get("_mean") is not None]
    ratings = [r for _, r in pairs]
    pred = [VERDICT_CLASS[row["verdict"]] for row, _ in pairs]
    mean = [row["_mean"] for row, _ in pairs]
    low = [row["_min"] for row, _ in pairs]
    n = len(pairs)
    m = confusion(ratings, pred)
    rescan = [r == 3 for r in ratings]
    rho_mean, p_mean = spearman(mean, ratings)
    rho_min, p_min = spearman(low, ratings)
    return {
        "n_rated_assessed": n,
        "confusion": {"rows": "rating 1, 2, 3", "columns": "predicted class 1 good, "
                      "2 sufficient, 3 insufficient (the verdict)", "counts": m},
        "accuracy": (sum(m[i][i] for i in range(3)) / n) if n else None,
        "cohen_kappa": cohen_kappa(ratings, pred),
        "cohen_kappa_quadratic": cohen_kappa(ratings, pred, weights="quadratic"),
        "spearman_mean_ssim": {"rho": rho_mean, "p": p_mean},
        "spearman_min_ssim": {"rho": rho_min, "p": p_min},
        "roc_auc_rescan_mean_ssim": roc_auc(rescan, [-v for v in mean]),
        "roc_auc_rescan_min_ssim": roc_auc(rescan, [-v for v in low]),
        "n_rescan": sum(rescan),
        "ratings_per_class": {str(k): ratings.count(k) for k in RATING_NAMES},
        "_pairs": {"rating": ratings, "mean": mean, "min": low},
    }


def plot_agreement(agr: dict[str, Any], path: Path) -> None:
    """Mean and min SSIM per rating (points over boxes) and the ROC curves of re-scan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = agr["_pairs"]
    rating = np.asarray(pairs["rating"], dtype=int)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=100)
    try:
        rng = np.random.default_rng(0)  # jitter only: the same picture every run
        for ax, key, label in ((axes[0], "mean", "mean SSIM"), (axes[1], "min", "min SSIM")):
            v = np.asarray(pairs[key], dtype=float)
            groups = [v[rating == k] for k in RATING_NAMES]
            ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=[1, 2, 3],
                       widths=0.5, showfliers=False)
            for k, g in zip(RATING_NAMES, groups):
                ax.scatter(k + rng.uniform(-0.12, 0.12, len(g)), g, s=14, alpha=0.7)
            ax.set_xticks([1, 2, 3], [f"{k} {name}" for k, name in RATING_NAMES.items()])
            ax.set_xlabel("rating")
            ax.set_ylabel(f"predicted {label}")
            rho = agr[f"spearman_{key}_ssim"]["rho"]
            ax.set_title(f"{label} by rating (Spearman {_fmt(rho, 3) or 'n/a'})", fontsize=10)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        ax = axes[2]
        positive = [r == 3 for r in pairs["rating"]]
        for key, label in (("mean", "mean SSIM"), ("min", "min SSIM")):
            fpr, tpr = roc_curve(positive, [-v for v in pairs[key]])
            auc = agr[f"roc_auc_rescan_{key}_ssim"]
            ax.plot(fpr, tpr, marker=".", label=f"{label} (AUC {_fmt(auc, 3) or 'n/a'})")
        ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("re-scan (rating 3) from low SSIM", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
