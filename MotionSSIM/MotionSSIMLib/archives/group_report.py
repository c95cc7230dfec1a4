"""Group reports of archive runs: one CSV row per scan, an HTML page, agreement with ratings.

`build_group_report(out)` merges the manifests that archive runs (`archive`) left in
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

import json
import stat
import sys
from pathlib import Path
from typing import Any

from ..base.errors import InputError, MotionSSIMError
from .group_files import (
    AGREEMENT_JSON,
    AGREEMENT_PNG,
    GROUP_COLUMNS,
    GROUP_CSV,
    GROUP_HTML,
    _agreement_html,
    _atomic_write,
    write_csv,
    write_html,
)
from .ratings import _fmt, agreement, match_ratings, plot_agreement, read_ratings

# ---------------------------------------------------------------------------------------------
# Rows


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
    from .manifest import MAX_SHARDS

    def bad(why: str) -> InputError:
        return InputError(f"{p}: not a MotionSSIM shard manifest ({why})")

    try:
        from ..imaging.integrity import regular_file_size

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
    from .manifest import MANIFEST_DIR

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
    from ..assessment.lines import say

    try:
        if not Path(args.out).is_dir():
            raise InputError(f"{args.out}: not a folder")
        rep = build_group_report(args.out, args.ratings)
    except (MotionSSIMError, OSError) as exc:
        say(f"error: {exc}", sys.stderr)
        return 2
    bad = [r for r in rep["rows"] if r["status"] not in ("assessed", "resumed")]
    for r in bad:
        say(f"error: {r['reason'] or r['path'] + ': ' + r['status']}", sys.stderr)
    for note in rep["notes"]:
        say(f"note: {note}", sys.stderr)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(rep["status"].items()))
    say(f"{len(rep['rows'])} scans ({counts}) -> {rep['csv']}, {rep['html']}")
    if rep["agreement"] is not None:
        a = rep["agreement"]
        say(f"agreement with {a['n_rated_assessed']} rated scans: accuracy "
            f"{_fmt(a['accuracy'], 3) or 'n/a'}, kappa {_fmt(a['cohen_kappa'], 3) or 'n/a'}, "
            f"AUC re-scan (min SSIM) {_fmt(a['roc_auc_rescan_min_ssim'], 3) or 'n/a'}")
    incomplete = any("have not run" in x for x in rep["notes"])
    return 2 if bad or incomplete else 0
