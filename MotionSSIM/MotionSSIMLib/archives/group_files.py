"""The group report's files: the CSV (cells a spreadsheet cannot take for a formula) and
the HTML page (a sortable table with each scan's chart and the agreement section, readable
offline: CSS and JavaScript inline, charts linked relative to the page, no other request).
"""

from __future__ import annotations

import csv
import html
import io
import os
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .ratings import RATING_NAMES, VERDICT_CLASS, _fmt

GROUP_CSV = "group_report.csv"
GROUP_HTML = "group_report.html"
AGREEMENT_JSON = "group_agreement.json"
AGREEMENT_PNG = "group_agreement.png"
GROUP_COLUMNS = ("path", "subject", "session", "datatype", "run", "acq", "status", "verdict",
                 "mean_ssim", "min_ssim", "n_slices", "n_good", "n_sufficient",
                 "n_insufficient", "n_empty", "worst_slices", "n_frames", "worst_frames",
                 "reason", "summary", "chart", "input")


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
