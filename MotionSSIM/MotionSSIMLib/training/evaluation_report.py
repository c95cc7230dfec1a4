"""The files of an evaluation: ``report.json`` (all figures), ``report.md``,
``summary.csv``, ``classification_<n>.csv``, ``predictions.csv`` and PNG plots (scatter with
linear fit, residual histogram with the fitted normal, confusion matrices).

The text files come first: the plots need matplotlib, which a stock Slicer lacks, and a plot
that fails never costs the report.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..base.jsonable import jsonable
from .evaluation_figures import CLASS_COUNTS

__all__ = ["write_report"]

# ----------------------------------------------------------------------------- report files


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def write_report(result: dict[str, Any], out_dir: str | Path, true: np.ndarray,
                 predictions: dict[str, np.ndarray]) -> None:
    """Write report.json, report.md, summary.csv, classification_<n>.csv, predictions.csv and
    the PNG plots for `result` (`Evaluation.report`); `true` (n,) and `predictions` (model name
    -> (n,)) are the SSIMs of the test slices."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = result["models"]
    names = list(models)
    (out / "report.json").write_text(json.dumps(jsonable(result), indent=1), encoding="utf-8")

    summary_cols = ["model", "n", "residual_mean", "residual_sd", "normal_mu", "normal_sigma",
                    "mae", "rmse", "pearson_r", "r2", "slope", "intercept", "acc_3", "acc_5",
                    "acc_10", "clinical_acc", "clinical_kappa"]
    rows = []
    for nm in names:
        f = models[nm]["figures"]
        r = f["regression"]
        rows.append([nm, r["n"], r["residual_mean"], r["residual_sd"], r["normal_fit"]["mu"],
                     r["normal_fit"]["sigma"], r["mae"], r["rmse"], r["pearson_r"], r["r2"],
                     r["linear_fit"]["slope"], r["linear_fit"]["intercept"],
                     *[f["classification"][str(k)]["accuracy"] for k in CLASS_COUNTS],
                     f["clinical"]["accuracy"], f["clinical"]["cohen_kappa"]])
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(summary_cols)
        w.writerows(rows)

    for k in [*CLASS_COUNTS, "clinical"]:
        fname = f"classification_{k}.csv"
        with open(out / fname, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["model", "class", "precision", "recall", "f1", "support"])
            for nm in names:
                f = models[nm]["figures"]
                t = f["clinical"] if k == "clinical" else f["classification"][str(k)]
                for c, v in t["per_class"].items():
                    w.writerow([nm, c, v["precision"], v["recall"], v["f1"], v["support"]])
                w.writerow([nm, "accuracy", "", "", t["accuracy"], t["n"]])
                for avg in ("macro_avg", "weighted_avg"):
                    a = t[avg]
                    w.writerow([nm, avg.replace("_", " "), a["precision"], a["recall"], a["f1"],
                                a["support"]])

    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "true", *names])
        cols = [predictions[nm] for nm in names]
        for i, tv in enumerate(true):
            w.writerow([i, f"{tv:.6f}", *[f"{c[i]:.6f}" for c in cols]])

    # The text report comes first: the plots need matplotlib, which a stock Slicer lacks, and
    # drawing them can fail (fonts, backends) without making the figures above wrong.
    (out / "report.md").write_text(_markdown(result, plots=None), encoding="utf-8")
    try:
        _plots(result, out, true, predictions)
        plots = "drawn"
    except ImportError as exc:
        plots = f"not drawn: {exc.name or 'matplotlib'} is not installed"
    except Exception as exc:  # a plot must never cost the report
        plots = f"not drawn: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    result["protocol"]["plots"] = plots
    (out / "report.md").write_text(_markdown(result, plots=plots), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(jsonable(result), indent=1), encoding="utf-8")


def _markdown(result: dict[str, Any], plots: str | None = "drawn") -> str:
    """The report as Markdown; `plots`: "drawn", None (not yet) or why they were not drawn."""
    models = result["models"]
    names = list(models)
    p = result["protocol"]
    lines = [
        "# MotionSSIM evaluation",
        "",
        f"{p['n']} corrupted test slices from {p['test_data'].get('volumes', 0)} test volumes, "
        f"seed {p['seed']}, contrast augmentation {'on' if p['contrast_augmentation'] else 'off'}"
        f", {_motion_text(p)}, input {p['input_size']} px, "
        f"{p.get('slices', 'central')} slices. "
        "Residual = predicted − true SSIM.",
        "",
    ]
    lines += _tested_subjects_lines(p)
    lines += [
        "## Regression",
        "",
        "| model | residual μ | residual σ (normal fit) | MAE | RMSE | r | slope | intercept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for nm in names:
        r = models[nm]["figures"]["regression"]
        lines.append(f"| {nm} | {_f(r['normal_fit']['mu'])} | {_f(r['normal_fit']['sigma'])} | "
                     f"{_f(r['mae'])} | {_f(r['rmse'])} | {_f(r['pearson_r'])} | "
                     f"{_f(r['linear_fit']['slope'], 3)} | {_f(r['linear_fit']['intercept'], 3)} |")
    lines += ["", "## Accuracy", "",
              "| model | 3 classes | 5 classes | 10 classes | clinical (3) | clinical κ |",
              "|---|---|---|---|---|---|"]
    for nm in names:
        f = models[nm]["figures"]
        accs = " | ".join(_f(f["classification"][str(k)]["accuracy"], 3) for k in CLASS_COUNTS)
        lines.append(f"| {nm} | {accs} | {_f(f['clinical']['accuracy'], 3)} | "
                     f"{_f(f['clinical']['cohen_kappa'], 3)} |")
    for k in [*CLASS_COUNTS, "clinical"]:
        title = ("Clinical classes (1 good, 2 sufficient, 3 insufficient)" if k == "clinical"
                 else f"{k} equal-width classes (class 1 = lowest SSIM)")
        head = "| class | " + " | ".join(f"{nm} prec. | rec. | f1" for nm in names) + \
            " | support |"
        lines += ["", f"## {title}", "", head,
                  "|---|" + "---|---|---|" * len(names) + "---|"]
        tables = [models[nm]["figures"]["clinical"] if k == "clinical"
                  else models[nm]["figures"]["classification"][str(k)] for nm in names]
        for c in tables[0]["per_class"]:
            cells = " | ".join(f"{_f(t['per_class'][c]['precision'], 2)} | "
                               f"{_f(t['per_class'][c]['recall'], 2)} | "
                               f"{_f(t['per_class'][c]['f1'], 2)}" for t in tables)
            lines.append(f"| {c} | {cells} | {tables[0]['per_class'][c]['support']} |")
        cells = " | ".join(f" | | {_f(t['accuracy'], 2)}" for t in tables)
        lines.append(f"| accuracy | {cells.removeprefix(' | ')} | {tables[0]['n']} |")
        for avg in ("macro_avg", "weighted_avg"):
            cells = " | ".join(f"{_f(t[avg]['precision'], 2)} | {_f(t[avg]['recall'], 2)} | "
                               f"{_f(t[avg]['f1'], 2)}" for t in tables)
            lines.append(f"| {avg.replace('_', ' ')} | {cells} | {tables[0]['n']} |")
    with_sd = [nm for nm in names if models[nm].get("uncertainty")]
    if with_sd:
        lines += ["", "## Uncertainty (the head's sd, one pass)", "",
                  "| model | Spearman sd vs abs. error | share of truths in ±2 sd | mean sd |",
                  "|---|---|---|---|"]
        for nm in with_sd:
            u = models[nm]["uncertainty"]
            lines.append(f"| {nm} | {_f(u['spearman_abs_error'], 3)} | {_f(u['coverage'], 3)} | "
                         f"{_f(u['mean_sd'])} |")
    lines += ["", "## Plots", ""]
    if plots != "drawn":
        lines += ["Plots " + (plots or "are being drawn") + ".", ""]
        return "\n".join(lines) + "\n"
    for nm in names:
        slug = _slug(nm)
        lines += [f"### {nm}", "", f"![scatter](scatter_{slug}.png) "
                  f"![residuals](residuals_{slug}.png)", "", f"![confusion](confusion_{slug}.png)",
                  ""]
    return "\n".join(lines) + "\n"


def _motion_text(protocol: dict[str, Any]) -> str:
    families = protocol.get("motion_families")
    return f"motion families {families}" if families else f"TorchIO share {protocol['p_torchio']}"


def _tested_subjects_lines(protocol: dict[str, Any]) -> list[str]:
    """Which volumes were tested, and a warning when any of them was trained on."""
    files = protocol.get("test_data", {}).get("files", [])
    lines = []
    overlap = protocol.get("trained_on_test_volumes") or {}
    for model, names in overlap.items():
        lines += [f"**Warning: {model} was trained on {len(names)} of these test volumes** "
                  f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}): its figures "
                  "overstate how it does on new data. Test on held-out volumes (a split file, "
                  "or train/ and test/ sub-folders).", ""]
    if files:
        shown = ", ".join(files[:50]) + (f", ... ({len(files)} in all)" if len(files) > 50 else "")
        lines += [f"Tested volumes: {shown}.", ""]
    return lines


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _plots(result: dict[str, Any], out: Path, true: np.ndarray,
           predictions: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from scipy import stats

    for nm, m in result["models"].items():
        slug = _slug(nm)
        pred = predictions[nm]
        reg = m["figures"]["regression"]
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(true, pred, s=3, alpha=0.35, lw=0)
        xs = np.array([0.0, 1.0])
        ax.plot(xs, xs, "k--", lw=1, label="identity")
        a, b = reg["linear_fit"]["slope"], reg["linear_fit"]["intercept"]
        if math.isfinite(a):
            ax.plot(xs, a * xs + b, "r-", lw=1.5, label=f"fit: {a:.3f}·x + {b:.3f}")
        ax.set(xlim=(0, 1.02), ylim=(min(0, float(pred.min())), max(1.02, float(pred.max()))),
               xlabel="true SSIM", ylabel="predicted SSIM", title=nm)
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(out / f"scatter_{slug}.png", dpi=110)
        plt.close(fig)

        res = pred - true
        mu, sigma = reg["normal_fit"]["mu"], reg["normal_fit"]["sigma"]
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.hist(res, bins=60, density=True, alpha=0.6)
        if sigma > 0:
            xs = np.linspace(res.min(), res.max(), 300)
            ax.plot(xs, stats.norm.pdf(xs, mu, sigma), "r-",
                    label=f"normal fit μ={mu:.4f}, σ={sigma:.4f}")
            ax.legend(loc="upper left", fontsize=8)
        ax.set(xlabel="residual (predicted − true)", ylabel="density", title=nm)
        fig.tight_layout()
        fig.savefig(out / f"residuals_{slug}.png", dpi=110)
        plt.close(fig)

        keys = [*CLASS_COUNTS, "clinical"]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4))
        for ax, k in zip(axes, keys):
            t = m["figures"]["clinical"] if k == "clinical" else \
                m["figures"]["classification"][str(k)]
            cm = np.array(t["confusion_matrix"], dtype=float)
            ax.imshow(np.where(cm > 0, cm, np.nan), norm=LogNorm(vmin=1, vmax=max(1, cm.max())),
                      cmap="viridis")
            labels = [str(c) for c in t["labels"]]
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(labels)), labels)
            if len(labels) <= 5:
                for (i, j), v in np.ndenumerate(cm):
                    ax.text(j, i, int(v), ha="center", va="center", fontsize=8, color="w"
                            if v > 0 else "0.5")
            ax.set(xlabel="predicted class", ylabel="true class",
                   title=f"{k} classes, acc {t['accuracy']:.3f}" if k != "clinical"
                   else f"clinical, acc {t['accuracy']:.3f}")
        fig.suptitle(nm)
        fig.tight_layout()
        fig.savefig(out / f"confusion_{slug}.png", dpi=100)
        plt.close(fig)
