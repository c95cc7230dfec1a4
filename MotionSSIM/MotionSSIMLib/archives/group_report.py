"""Group reports of archive runs: one CSV row per scan, an HTML page, agreement with ratings.

`build_group_report(out)` merges the manifests that archive runs (`archive.py`) left in
OUT/motionssim_shards/ with the scans' summary JSONs and writes

- OUT/group_report.csv: one row per scan (GROUP_COLUMNS): where it is (path, BIDS subject,
  session, datatype, run), its status (assessed, resumed, failed, pending, missing), verdict,
  mean/min SSIM, class counts, worst slices (and frames for a 4D series), the failure reason,
  the links to its reports, and its rating when --ratings is given;
- OUT/group_report.html: the same as a sortable table (click a column header; again to
  reverse) with each scan's chart, readable offline: CSS and JavaScript inline, charts linked
  relative to the page (keep the folder together), no other request;
- with ratings (`read_ratings`: MR-ART's `derivatives/scores.tsv`, columns `bids_name` and
  `score`, or any TSV/CSV of scan and rating 1 clean / 2 moderate / 3 re-scan): agreement
  (confusion matrix, accuracy, Cohen's kappa, Spearman correlations, ROC AUC of re-scan) in
  OUT/group_agreement.json, a plot OUT/group_agreement.png and a section of the page.

The `motionssim group OUT` command does this once every shard of a `--shard I/N` run is done.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import secrets
import stat
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputError, MotionSSIMError

GROUP_CSV = "group_report.csv"
GROUP_HTML = "group_report.html"
AGREEMENT_JSON = "group_agreement.json"
AGREEMENT_PNG = "group_agreement.png"
GROUP_COLUMNS = ("path", "subject", "session", "datatype", "run", "acq", "status", "verdict",
                 "mean_ssim", "min_ssim", "n_slices", "n_good", "n_sufficient",
                 "n_insufficient", "n_empty", "worst_slices", "n_frames", "worst_frames",
                 "reason", "summary", "chart", "input")
VERDICT_CLASS = {"good": 1, "sufficient": 2, "insufficient: re-scan": 3}
RATING_NAMES = {1: "clean", 2: "moderate", 3: "re-scan"}
# ratings file: the scan and rating columns, first match wins (MR-ART: bids_name, score;
# its per-subject sub-*_scans.tsv: filename, score)
SCAN_COLUMNS = ("bids_name", "filename", "scan", "path", "file", "image", "input", "name")
RATING_COLUMNS = ("score", "rating", "rate", "grade", "quality", "label", "class")
MAX_RATINGS_BYTES = 64 * 2**20
MISSING_RATING = ("", "n/a", "na", "nan", "none", "-")


# ---------------------------------------------------------------------------------------------
# Rows


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else ""
    return str(value)


def _worst(items: Any) -> str:
    """`index:ssim` of the worst slices (`frame/index:ssim` for a series), space-separated."""
    if not isinstance(items, list):
        return ""
    parts = []
    for w in items:
        if not isinstance(w, dict) or "ssim" not in w:
            continue
        where = str(w.get("index", w.get("slice", "")))
        if "frame" in w and w.get("frame") is not None and "index" in w:
            where = f"{w['frame']}/{where}"
        elif "frame" in w and "index" not in w:
            where = str(w["frame"])
        ssim = w.get("ssim", w.get("min_ssim"))
        parts.append(f"{where}:{ssim:.3f}" if isinstance(ssim, (int, float)) else where)
    return " ".join(parts)


def _worst_frames(items: Any) -> str:
    if not isinstance(items, list):
        return ""
    parts = []
    for w in items:
        if isinstance(w, dict) and "frame" in w:
            s = w.get("min_ssim")
            parts.append(f"{w['frame']}:{s:.3f}" if isinstance(s, (int, float)) else
                         str(w["frame"]))
        elif isinstance(w, int):
            parts.append(str(w))
    return " ".join(parts)


def _read_summary(out: Path, rel: str) -> dict[str, Any] | None:
    p = out / rel
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 16 * 2**20:
            return None
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # nested too deeply: unreadable too
        return None
    return data if isinstance(data, dict) else None


def scan_row(out: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The group row of one manifest entry (its summary read from OUT when assessed)."""
    ent = entry.get("entities") or {}
    row: dict[str, Any] = {c: "" for c in GROUP_COLUMNS}
    row.update(path=entry.get("rel") or entry.get("input", ""), input=entry.get("input", ""),
               subject=ent.get("subject", ""), session=ent.get("session", ""),
               datatype=ent.get("datatype", ""), run=ent.get("run", ""),
               acq=ent.get("acq", ""), status=entry.get("status", ""),
               reason=entry.get("reason", ""), key=entry.get("key", ""))
    row["_mean"] = row["_min"] = None
    if row["status"] not in ("assessed", "resumed"):
        if row["status"] == "pending" and not row["reason"]:
            row["reason"] = "not assessed: its run stopped before reaching it"
        return row
    s = _read_summary(out, entry.get("summary", ""))
    if s is None:
        row.update(status="missing", reason=f"{entry.get('summary', '')}: summary missing or "
                   "unreadable (assess this scan again)")
        return row
    counts = s.get("counts") or {}
    folder = Path(entry["summary"]).parent
    files = s.get("files") or {}
    mean, low = s.get("mean_ssim"), s.get("min_ssim")
    row.update(verdict=s.get("verdict", ""), mean_ssim=_fmt(mean), min_ssim=_fmt(low),
               n_slices=_fmt(s.get("n_slices")), n_good=_fmt(counts.get("good")),
               n_sufficient=_fmt(counts.get("sufficient")),
               n_insufficient=_fmt(counts.get("insufficient")),
               n_empty=_fmt(counts.get("empty")), worst_slices=_worst(s.get("worst_slices")),
               n_frames=_fmt(s.get("n_frames")), worst_frames=_worst_frames(
                   s.get("worst_frames")),
               summary=entry["summary"],
               chart=(folder / files["png"]).as_posix() if isinstance(files.get("png"), str)
               else "")
    heat = files.get("heatmap") if isinstance(files, dict) else None
    row["_heatmap"] = (folder / heat).as_posix() if isinstance(heat, str) else ""
    row["_mean"] = float(mean) if isinstance(mean, (int, float)) else None
    row["_min"] = float(low) if isinstance(low, (int, float)) else None
    row["_model"] = s.get("model") or {}
    return row


MAX_MANIFEST_BYTES = 256 * 2**20  # a manifest of a million scans holds about 400 MB less


def _manifest(p: Path) -> dict[str, Any]:
    """A shard manifest read and checked (InputError naming the file otherwise): `shard`
    [I, N] within the bounds `--shard` accepts (checked before anything is built from N),
    `n_scans_found` a count, `scans` a list of entries whose key is text, `fingerprint`
    an object."""
    from .archive import MAX_SHARDS

    def bad(why: str) -> InputError:
        return InputError(f"{p}: not a MotionSSIM shard manifest ({why})")

    try:
        from .io import regular_file_size

        if regular_file_size(p) > MAX_MANIFEST_BYTES:
            raise bad(f"larger than {MAX_MANIFEST_BYTES // 2**20} MB")
        m = json.loads(p.read_text(encoding="utf-8"))
    except InputError:
        raise
    except (OSError, ValueError, RecursionError) as exc:
        raise bad(type(exc).__name__ if isinstance(exc, RecursionError)
                  else str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                  ) from None
    if not isinstance(m, dict):
        raise bad("not a JSON object")
    shard = m.get("shard")
    if not (isinstance(shard, list) and len(shard) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
            and 1 <= shard[1] <= MAX_SHARDS and 1 <= shard[0] <= shard[1]):
        raise bad(f"shard must be [I, N] with 1 <= I <= N <= {MAX_SHARDS}")
    found = m.get("n_scans_found")
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        raise bad("n_scans_found must be a count")
    scans = m.get("scans")
    if not isinstance(scans, list) or not all(
            isinstance(e, dict) and isinstance(e.get("key"), str) for e in scans):
        raise bad("scans must be a list of entries with a text key")
    if not isinstance(m.get("fingerprint", {}), dict):
        raise bad("fingerprint must be an object")
    return m


def read_manifests(out: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The manifests of the latest set of shards in OUT (those with the N of the newest
    manifest) and notes on what is missing or set aside. Shards of that set made with another
    model or other options are refused (InputError): their rows could not be compared."""
    from .archive import MANIFEST_DIR

    folder = Path(out) / MANIFEST_DIR
    found = []
    for p in sorted(folder.glob("shard-*-of-*.json")) if folder.is_dir() else []:
        m = _manifest(p)
        found.append((p.stat().st_mtime, *m["shard"], m, p))
    if not found:
        raise InputError(f"{out}: no shard manifest in {MANIFEST_DIR}/ (run `motionssim "
                         "assess FOLDER --out` here first)")
    n = max(found, key=lambda f: f[0])[2]
    notes = []
    others = sorted({f[2] for f in found if f[2] != n})
    if others:
        notes.append(f"manifests of earlier runs split in {', '.join(map(str, others))} "
                     f"shard(s) set aside; the latest run has {n}")
    chosen = {f[1]: f[3] for f in found if f[2] == n}
    _same_fingerprint({i: (chosen[i], next(f[4] for f in found if f[2] == n and f[1] == i))
                       for i in sorted(chosen)})
    missing = [i for i in range(1, n + 1) if i not in chosen]
    if missing:
        notes.append(f"shard(s) {', '.join(map(str, missing[:20]))} of {n} have not run: "
                     "their scans are not in this report")
    return [chosen[i] for i in sorted(chosen)], notes


def _same_fingerprint(shards: dict[int, tuple[dict[str, Any], Path]]) -> None:
    """InputError naming two shard manifests whose fingerprints (model hash and the options
    that change a result) differ, and the items that differ."""
    items = list(shards.values())
    first, first_path = items[0]
    ref = first.get("fingerprint") or {}
    for m, p in items[1:]:
        fp = m.get("fingerprint") or {}
        if fp != ref:
            diff = [f"{k} {str(ref.get(k))[:16]} vs {str(fp.get(k))[:16]}"
                    for k in sorted(set(ref) | set(fp), key=str) if ref.get(k) != fp.get(k)]
            raise InputError(f"{p}: made with another model or other options than "
                             f"{first_path.name} ({'; '.join(diff)[:300]}); their results "
                             "cannot be merged: assess every shard with the same command")


def collect(out: str | Path) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """(rows, notes, info) of every scan in the manifests of OUT."""
    out = Path(out)
    manifests, notes = read_manifests(out)
    rows, seen = [], set()
    for m in manifests:
        if not m.get("complete"):
            notes.append(f"shard {m['shard'][0]}/{m['shard'][1]} did not finish: its "
                         "remaining scans are listed as pending")
        for e in m["scans"]:
            if not isinstance(e, dict) or e.get("key") in seen:
                continue
            seen.add(e.get("key"))
            rows.append(scan_row(out, e))
    found = {m.get("n_scans_found") for m in manifests}
    if len(found) > 1:
        notes.append(f"the shards found different numbers of scans ({sorted(found)}): was "
                     "the archive changed between them?")
    rows.sort(key=lambda r: r.get("key", ""))
    fp = manifests[-1].get("fingerprint") or {}
    return rows, notes, {"n_shards": manifests[0]["shard"][1], "fingerprint": fp,
                         "inputs": manifests[-1].get("inputs", [])}


# ---------------------------------------------------------------------------------------------
# Ratings


def _cell(row: list[str], i: int) -> str:
    return row[i].strip() if i < len(row) else ""


def read_ratings(path: str | Path) -> list[tuple[str, int]]:
    """(scan name, rating) pairs from a TSV or CSV: MR-ART's `derivatives/scores.tsv`
    (columns `bids_name`, `score`), its `sub-*_scans.tsv` (`filename`, `score`), or any table
    with a scan column (SCAN_COLUMNS) and a rating column (RATING_COLUMNS), or two columns.
    Ratings are 1 (clean), 2 (moderate) or 3 (re-scan); `n/a` or empty cells are left out.
    InputError naming the file (and line) otherwise."""
    from .io import regular_file_size

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
    from .archive import strip_suffix

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


# ---------------------------------------------------------------------------------------------
# Writing


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting with `=`, `+`, `-`, `@`, a tab or a
    carriage return (a file named `=HYPERLINK(...).nii.gz`) gets a leading `'` (OWASP's rule
    against CSV injection); numbers are kept as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def write_csv(rows: list[dict[str, Any]], path: Path, ratings: dict[int, int] | None) -> None:
    cols = GROUP_COLUMNS + (("rating",) if ratings is not None else ())
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(cols)
    for n, r in enumerate(rows):
        vals = [csv_safe(r.get(c, "")) for c in GROUP_COLUMNS]
        if ratings is not None:
            vals.append(ratings.get(n, ""))
        w.writerow(vals)
    _atomic_write(path, text.getvalue().encode("utf-8"))


def _href(rel: str) -> str:
    return "/".join(urllib.parse.quote(p) for p in rel.split("/"))


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
#scans th{background:#f2f2f2;cursor:pointer;user-select:none;white-space:nowrap}
#scans th:hover{background:#e4e4e4}
#scans th[aria-sort=ascending]::after{content:" \\25B2"}
#scans th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.v1{color:#1a7f1a}.v2{color:#a66f00}.v3{color:#c41e1e;font-weight:600}.vf{color:#c41e1e}
.failed td{background:#fff3f3}
figure{display:inline-block;margin:.6em;vertical-align:top}
figure img{max-width:620px;width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;max-width:620px;word-break:break-all}
.note{color:#8a5a00}
.cm td{text-align:right;min-width:3em}
"""

_JS = """
(function () {
  var table = document.getElementById('scans');
  if (!table) { return; }
  var heads = table.tHead.rows[0].cells;
  function value(row, col, numeric) {
    var cell = row.cells[col];
    var v = cell.hasAttribute('data-v') ? cell.getAttribute('data-v') : cell.textContent.trim();
    if (!numeric) { return v; }
    return v === '' ? NaN : Number(v);
  }
  function sortBy(col) {
    var th = heads[col];
    var ascending = th.getAttribute('aria-sort') !== 'ascending';
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute('aria-sort'); }
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var numeric = th.getAttribute('data-type') === 'num';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, col, numeric), y = value(b, col, numeric);
      if (numeric) {
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }  /* blanks last */
        return ascending ? x - y : y - x;
      }
      var c = x.localeCompare(y, undefined, {numeric: true});
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(heads, function (th, col) {
    th.tabIndex = 0;
    th.addEventListener('click', function () { sortBy(col); });
    th.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(col); }
    });
  });
})();
"""

# (column, header, numeric) of the HTML table
_HTML_COLUMNS = (("path", "scan", False), ("subject", "subject", False),
                 ("session", "session", False), ("datatype", "datatype", False),
                 ("run", "run", True), ("verdict", "verdict", True),
                 ("mean_ssim", "mean SSIM", True), ("min_ssim", "min SSIM", True),
                 ("n_good", "good", True), ("n_sufficient", "sufficient", True),
                 ("n_insufficient", "insufficient", True), ("n_empty", "empty", True),
                 ("worst_slices", "worst slices", False), ("worst_frames", "worst frames",
                                                            False),
                 ("reason", "failure", False))


def _td(row: dict[str, Any], col: str, numeric: bool, n: int) -> str:
    e = html.escape
    value = str(row.get(col, ""))
    if col == "path":
        target = f"#scan-{n}" if row.get("chart") else (_href(row["summary"])
                                                      if row.get("summary") else "")
        inner = f'<a href="{e(target)}">{e(value)}</a>' if target else e(value)
        return f"<td>{inner}</td>"
    if col == "verdict":
        cls = VERDICT_CLASS.get(value)
        if cls is None:
            return f'<td data-v="9" class="vf">{e(row.get("status", ""))}</td>'
        return f'<td data-v="{cls}" class="v{cls}">{e(value)}</td>'
    if col == "rating":
        return f'<td class="num">{e(value)}</td>'
    return f'<td class="num">{e(value)}</td>' if numeric else f"<td>{e(value)}</td>"


def _agreement_html(agr: dict[str, Any], unmatched: list[str], ambiguous: list[str],
                    n_ratings: int, ratings_path: str) -> str:
    e = html.escape
    m = agr["confusion"]["counts"]
    cm = ["<table class='cm'><tr><th>rating \\ verdict</th><th>good</th><th>sufficient</th>"
          "<th>insufficient</th></tr>"]
    for k, name in RATING_NAMES.items():
        cm.append(f"<tr><th>{k} {e(name)}</th>" + "".join(f"<td>{v}</td>" for v in m[k - 1])
                  + "</tr>")
    cm.append("</table>")

    def f(v: Any) -> str:
        return e(_fmt(v, 3)) if v is not None else "n/a"
    metrics = [
        ("scans rated and assessed", str(agr["n_rated_assessed"])),
        ("accuracy (verdict class = rating)", f(agr["accuracy"])),
        ("Cohen's kappa", f(agr["cohen_kappa"])),
        ("Cohen's kappa, quadratic weights", f(agr["cohen_kappa_quadratic"])),
        ("Spearman rho, mean SSIM vs rating",
         f"{f(agr['spearman_mean_ssim']['rho'])} (p {f(agr['spearman_mean_ssim']['p'])})"),
        ("Spearman rho, min SSIM vs rating",
         f"{f(agr['spearman_min_ssim']['rho'])} (p {f(agr['spearman_min_ssim']['p'])})"),
        ("ROC AUC of re-scan (rating 3), low mean SSIM", f(agr["roc_auc_rescan_mean_ssim"])),
        ("ROC AUC of re-scan (rating 3), low min SSIM", f(agr["roc_auc_rescan_min_ssim"])),
    ]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in metrics)
    notes = []
    if unmatched:
        notes.append(f"{len(unmatched)} of {n_ratings} ratings name no scan of this report "
                     f"(e.g. {e(', '.join(unmatched[:3]))})")
    if ambiguous:
        notes.append(f"{len(ambiguous)} ratings name several scans and were left out "
                     f"(e.g. {e(', '.join(ambiguous[:3]))})")
    note_html = "".join(f"<p class='note'>{x}</p>" for x in notes)
    return (f"<section id='agreement'><h2>Agreement with the ratings</h2>"
            f"<p>Ratings: {e(ratings_path)} (1 clean, 2 moderate, 3 re-scan), against the "
            "verdict classes (1 good, 2 sufficient, 3 insufficient: re-scan).</p>"
            f"{''.join(cm)}<br><table>{rows}</table>{note_html}"
            f"<figure><img src='{AGREEMENT_PNG}' alt='SSIM by rating and ROC of re-scan'>"
            "<figcaption>Mean and min SSIM per rating; ROC of re-scan (rating 3) from low "
            "SSIM.</figcaption></figure></section>")


def write_html(rows: list[dict[str, Any]], path: Path, notes: list[str], info: dict[str, Any],
               ratings: dict[int, int] | None, agreement_html: str) -> None:
    e = html.escape
    cols = list(_HTML_COLUMNS) + ([("rating", "rating", True)] if ratings is not None else [])
    head = "".join(f"<th data-key='{c}'" + (" data-type='num'" if num else "") +
                   f" scope='col'>{e(label)}</th>" for c, label, num in cols)
    body = []
    for n, r in enumerate(rows):
        rr = dict(r)
        if ratings is not None:
            rr["rating"] = ratings.get(n, "")
        cls = " class='failed'" if r.get("status") not in ("assessed", "resumed") else ""
        body.append(f"<tr{cls}>" + "".join(_td(rr, c, num, n) for c, _, num in cols)
                    + "</tr>")
    status = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    verdicts = {}
    for r in rows:
        if r.get("verdict") in VERDICT_CLASS:
            verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    failures = [r for r in rows if r.get("status") not in ("assessed", "resumed")]
    fail_html = ""
    if failures:
        items = "".join(f"<li>{e(r['path'])}: {e(r.get('reason', ''))}</li>" for r in failures)
        fail_html = (f"<section id='failures'><h2>Not assessed ({len(failures)})</h2>"
                     f"<ul>{items}</ul></section>")
    charts = []
    for n, r in enumerate(rows):
        if not r.get("chart"):
            continue
        imgs = f"<img loading='lazy' src='{e(_href(r['chart']))}' alt='chart of {e(r['path'])}'>"
        if r.get("_heatmap"):
            imgs += (f"<img loading='lazy' src='{e(_href(r['_heatmap']))}' "
                     f"alt='frame x slice heatmap of {e(r['path'])}'>")
        charts.append(f"<figure id='scan-{n}'>{imgs}<figcaption>{e(r['path'])}: "
                      f"{e(r.get('verdict', ''))} (<a href='{e(_href(r['summary']))}'>summary"
                      f"</a>)</figcaption></figure>")
    model = next((r.get("_model") for r in rows if r.get("_model")), {}) or {}
    model_text = ", ".join(f"{k} {v}" for k, v in model.items()
                           if k in ("name", "architecture", "sha256") and v)
    summary_line = ", ".join(f"{v} {k}" for k, v in sorted(status.items()))
    verdict_line = ", ".join(f"{v} {k}" for k, v in verdicts.items())
    note_html = "".join(f"<p class='note'>{e(x)}</p>" for x in notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>MotionSSIM group report</title>
<style>{_CSS}</style></head>
<body>
<h1>MotionSSIM group report</h1>
<p>{len(rows)} scans: {e(summary_line)}. Verdicts: {e(verdict_line or 'none')}.</p>
<p>Inputs: {e(', '.join(info.get('inputs', [])))}; {info.get('n_shards', 1)} shard(s);
model {e(model_text or 'n/a')}; written {e(time.strftime('%Y-%m-%d %H:%M'))}.
Click a column header to sort (again to reverse).</p>
{note_html}
{agreement_html}
{fail_html}
<h2>Scans</h2>
<table id="scans"><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Charts</h2>
{chr(10).join(charts)}
<script>{_JS}</script>
</body></html>
"""
    _atomic_write(path, page.encode("utf-8"))


def build_group_report(out: str | Path, ratings_path: str | Path | None = None
                       ) -> dict[str, Any]:
    """Write the group report of the archive runs in OUT (module docstring). Returns the
    paths written, the rows, the notes, the counts per status and the agreement (or None)."""
    out = Path(out)
    rows, notes, info = collect(out)
    matched = agr = None
    agreement_html = ""
    paths: dict[str, Any] = {"csv": out / GROUP_CSV, "html": out / GROUP_HTML}
    if ratings_path is not None:
        ratings = read_ratings(ratings_path)
        matched, unmatched, ambiguous = match_ratings(rows, ratings, ratings_path)
        agr = agreement(rows, matched)
        agr["n_ratings"] = len(ratings)
        agr["n_ratings_unmatched"] = len(unmatched)
        agr["n_ratings_ambiguous"] = len(ambiguous)
        agr["ratings_file"] = str(ratings_path)
        if agr["n_rated_assessed"]:
            plot_agreement(agr, out / AGREEMENT_PNG)
            paths["png"] = out / AGREEMENT_PNG
        else:
            notes.append("no rated scan was assessed: no agreement to compute")
        public = {k: v for k, v in agr.items() if not k.startswith("_")}
        public["unmatched"] = unmatched[:50]
        public["ambiguous"] = ambiguous[:50]
        _atomic_write(out / AGREEMENT_JSON, json.dumps(public, indent=1).encode("utf-8"))
        paths["json"] = out / AGREEMENT_JSON
        if agr["n_rated_assessed"]:
            agreement_html = _agreement_html(agr, unmatched, ambiguous, len(ratings),
                                             str(ratings_path))
    write_csv(rows, paths["csv"], matched)
    write_html(rows, paths["html"], notes, info, matched, agreement_html)
    status: dict[str, int] = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    return {**paths, "rows": rows, "notes": notes, "status": status, "agreement": agr}


# ---------------------------------------------------------------------------------------------
# The `group` command


def add_group_arguments(p: Any) -> None:
    p.add_argument("out", metavar="OUT", help="the report folder that the shards of "
                   "`motionssim assess --shard I/N --out OUT` wrote into")
    p.add_argument("--ratings", metavar="FILE",
                   help="TSV/CSV of scan and rating 1/2/3 (MR-ART's derivatives/scores.tsv: "
                        "bids_name, score): adds agreement with the ratings")


def run_group(args: Any) -> int:
    """`motionssim group OUT`: 0 when every scan was assessed, 2 when any failed, is
    pending or missing, or a shard has not run (each said in one line)."""
    from .cli import _say

    try:
        if not Path(args.out).is_dir():
            raise InputError(f"{args.out}: not a folder")
        rep = build_group_report(args.out, args.ratings)
    except (MotionSSIMError, OSError) as exc:
        _say(f"error: {exc}", sys.stderr)
        return 2
    bad = [r for r in rep["rows"] if r["status"] not in ("assessed", "resumed")]
    for r in bad:
        _say(f"error: {r['reason'] or r['path'] + ': ' + r['status']}", sys.stderr)
    for note in rep["notes"]:
        _say(f"note: {note}", sys.stderr)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(rep["status"].items()))
    _say(f"{len(rep['rows'])} scans ({counts}) -> {rep['csv']}, {rep['html']}")
    if rep["agreement"] is not None:
        a = rep["agreement"]
        _say(f"agreement with {a['n_rated_assessed']} rated scans: accuracy "
             f"{_fmt(a['accuracy'], 3) or 'n/a'}, kappa {_fmt(a['cohen_kappa'], 3) or 'n/a'}, "
             f"AUC re-scan (min SSIM) {_fmt(a['roc_auc_rescan_min_ssim'], 3) or 'n/a'}")
    incomplete = any("have not run" in x for x in rep["notes"])
    return 2 if bad or incomplete else 0
