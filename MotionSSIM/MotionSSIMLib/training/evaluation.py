"""The paper's test protocol: predicted vs true SSIM on N seeded corrupted test slices.

`evaluate_predictions(pred, true)` turns two arrays into every figure of the report (pure,
no I/O). `test_set` draws the N corrupted test slices exactly as in training (random volume,
orientation, central non-empty slice, contrast augmentation, motion), seeded, in fixed chunks:
the same seed gives the same slices, so models are compared on identical data.
`evaluate_checkpoints` runs several checkpoints on one test set and writes the report:
``report.json`` (all figures), ``report.md``, ``summary.csv``, ``classification_<n>.csv``,
``predictions.csv`` and PNG plots (scatter with linear fit, residual histogram with the fitted
normal, confusion matrices).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .classes import CLINICAL_NAMES, ClinicalThresholds, clinical_class, uniform_class
from .errors import InputError
from .jsonable import jsonable
from .settings import parse_families

__all__ = [
    "CLASS_COUNTS",
    "Evaluation",
    "classification_table",
    "evaluate_checkpoints",
    "evaluate_predictions",
    "regression_figures",
    "test_set",
    "write_report",
]

CLASS_COUNTS = (3, 5, 10)   # Table III of the paper


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def classification_table(true_cls: np.ndarray, pred_cls: np.ndarray,
                         labels: Sequence[int]) -> dict[str, Any]:
    """Confusion matrix (rows = true class, columns = predicted, in `labels` order), per-class
    precision / recall / F1 / support, macro and weighted averages and accuracy; a class with
    no predicted (or no true) samples gets precision (recall) 0, as scikit-learn's
    classification_report with zero_division=0."""
    t = np.asarray(true_cls).ravel()
    p = np.asarray(pred_cls).ravel()
    if t.shape != p.shape:
        raise ValueError(f"true and predicted classes differ in length: {t.size} != {p.size}")
    labels = [int(c) for c in labels]
    pos = {c: i for i, c in enumerate(labels)}
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    ti = np.array([pos.get(int(c), -1) for c in t], dtype=np.int64)
    pi = np.array([pos.get(int(c), -1) for c in p], dtype=np.int64)
    ok = (ti >= 0) & (pi >= 0)
    np.add.at(cm, (ti[ok], pi[ok]), 1)
    per: dict[str, dict[str, float]] = {}
    for i, c in enumerate(labels):
        tp = cm[i, i]
        prec = _safe_div(tp, cm[:, i].sum())
        rec = _safe_div(tp, cm[i, :].sum())
        f1 = _safe_div(2 * prec * rec, prec + rec)
        per[str(c)] = {"precision": prec, "recall": rec, "f1": f1, "support": int(cm[i].sum())}
    support = np.array([per[str(c)]["support"] for c in labels], dtype=np.float64)
    total = support.sum()

    def avg(weights: np.ndarray | None) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in ("precision", "recall", "f1"):
            v = np.array([per[str(c)][m] for c in labels])
            out[m] = float(v.mean()) if weights is None else _safe_div((v * weights).sum(),
                                                                       weights.sum())
        out["support"] = int(total)
        return out

    return {
        "labels": labels,
        "confusion_matrix": cm.tolist(),
        "per_class": per,
        "macro_avg": avg(None),
        "weighted_avg": avg(support),
        "accuracy": _safe_div(np.trace(cm), cm.sum()),
        "n": int(t.size),
    }


def _cohen_kappa(confusion: np.ndarray) -> float:
    """Cohen's kappa (p_o - p_e) / (1 - p_e): observed agreement p_o against the agreement p_e
    expected from the marginals alone."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    if total == 0:
        return 0.0
    p_o = np.trace(confusion) / total
    p_e = float((confusion.sum(0) * confusion.sum(1)).sum()) / total**2
    return 1.0 if p_e == 1 else float((p_o - p_e) / (1 - p_e))


def regression_figures(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Residuals (pred - true): mean, sd and a normal fit (scipy.stats.norm.fit, maximum
    likelihood: mu = mean, sigma = sd with ddof 0; residual_sd is the sample sd, ddof 1); MAE, RMSE, Pearson r, R² of pred vs the
    identity, and the least-squares line pred = slope * true + intercept."""
    from scipy import stats

    predicted = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(true, dtype=np.float64).ravel()
    residual = predicted - target
    mu, sigma = stats.norm.fit(residual)
    if predicted.size >= 2 and np.ptp(target) > 0:
        slope, intercept = np.polyfit(target, predicted, 1)
    else:
        slope, intercept = float("nan"), float("nan")
    varies = predicted.size >= 2 and np.ptp(predicted) > 0 and np.ptp(target) > 0
    pearson = float(np.corrcoef(predicted, target)[0, 1]) if varies else float("nan")
    ss_tot = float(((target - target.mean()) ** 2).sum())
    return {
        "n": int(predicted.size),
        "residual_mean": float(residual.mean()),
        "residual_sd": float(residual.std(ddof=1)) if residual.size > 1 else 0.0,
        "normal_fit": {"mu": float(mu), "sigma": float(sigma)},
        "mae": float(np.abs(residual).mean()),
        "mse": float((residual**2).mean()),
        "rmse": float(np.sqrt((residual**2).mean())),
        "pearson_r": pearson,
        "r2": 1.0 - float((residual**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        "linear_fit": {"slope": float(slope), "intercept": float(intercept)},
        "true_mean": float(target.mean()), "pred_mean": float(predicted.mean()),
    }


def evaluate_predictions(pred: np.ndarray, true: np.ndarray,
                         class_counts: Sequence[int] = CLASS_COUNTS,
                         thresholds: ClinicalThresholds | None = None) -> dict[str, Any]:
    """Every figure of the evaluation from predicted and true SSIMs (pure function).

    Returns {"regression": regression_figures, "classification": {"3": table, "5": ..., "10":
    ...} (equal-width classes on [0, 1], `classes.uniform_class`), "clinical": table plus
    Cohen's kappa and the thresholds (`classes.clinical_class`: 1 good, 2 sufficient,
    3 insufficient)}. Predictions are clipped to [0, 1] for the classes only."""
    thresholds = ClinicalThresholds() if thresholds is None else thresholds
    predicted = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(true, dtype=np.float64).ravel()
    if predicted.shape != target.shape:
        raise ValueError(f"pred and true differ in length: {predicted.size} != {target.size}")
    if predicted.size == 0:
        raise ValueError("no predictions to evaluate")
    if not (np.isfinite(predicted).all() and np.isfinite(target).all()):
        raise ValueError("pred and true must be finite")
    predicted_01 = np.clip(predicted, 0.0, 1.0)
    target_01 = np.clip(target, 0.0, 1.0)
    out: dict[str, Any] = {"regression": regression_figures(predicted, target),
                           "classification": {}}
    for count in class_counts:
        table = classification_table(uniform_class(target_01, count),
                                     uniform_class(predicted_01, count), list(range(1, count + 1)))
        table["edges"] = [float(e) for e in np.linspace(0.0, 1.0, count + 1)]
        out["classification"][str(count)] = table
    clinical = classification_table(clinical_class(target_01, thresholds),
                                    clinical_class(predicted_01, thresholds), [1, 2, 3])
    clinical["names"] = {str(k): v for k, v in CLINICAL_NAMES.items()}
    clinical["thresholds"] = {"good": thresholds.good, "sufficient": thresholds.sufficient}
    clinical["cohen_kappa"] = _cohen_kappa(np.array(clinical["confusion_matrix"]))
    out["clinical"] = clinical
    return out


@dataclass
class Evaluation:
    """What `evaluate_checkpoints` measured: the report (every figure, as in report.json) and
    the SSIMs behind it."""

    report: dict[str, Any]
    true: np.ndarray                     # (n,) true SSIM of the test slices
    predictions: dict[str, np.ndarray]   # model name -> (n,) predicted SSIM, in `true` order


# ----------------------------------------------------------------------------- test data


def test_set(paths: Sequence[str | Path], n: int = 10000, seed: int = 0, input_size: int = 256,
             contrast: bool = True, p_torchio: float = 0.5, device: Any = "cpu",
             workers: int = 0, chunk: int = 100,
             cache_mb: int = 2048, slices: str = "central",
             acquisition: bool = True, families: str | None = None,
             storage: float = 0.0) -> Iterator[tuple[Any, Any]]:
    """The N corrupted test slices drawn from the test volumes as in training, in chunks of
    `chunk`: yields (images (c, 1, S, S), labels (c,)) on `device`. Deterministic for a given
    (paths, n, seed, input_size, contrast, p_torchio, chunk, slices, families); `slices` as in
    `data.slice_candidates` (the paper's central half by default). `families`: the motion
    families (`settings.parse_families`; one name evaluates one family: the slices, contrasts
    and severities stay those of the other families for the same seed). `storage`: the share
    stored at a lower matrix after the acquisition (`augment.apply_storage`)."""
    from .data import STREAMS, SliceDataset
    from .pipeline import fixed_set

    ds = SliceDataset(list(paths), seed=seed, input_size=input_size,
                      cache_bytes=int(cache_mb) << 20, slices=slices)
    yield from fixed_set(ds, STREAMS["test"], n, seed, contrast, p_torchio, device,
                         chunk=chunk, workers=workers, acquisition=acquisition,
                         families=families, storage=storage)


test_set.__test__ = False  # type: ignore[attr-defined]  # pytest: not a test


def _input_size(meta: dict[str, Any]) -> int:
    """The slice size a checkpoint was trained at (256 unless a test trained smaller)."""
    size = meta.get("train_input_size") or meta.get("input_size") or 256
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size)


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.stem}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i + 1}:{nm}" for i, nm in enumerate(names)]
    return names


def evaluate_checkpoints(
    checkpoints: Sequence[str | Path],
    test_paths: Sequence[str | Path],
    out_dir: str | Path,
    n: int = 10000,
    seed: int = 0,
    contrast: bool = True,
    p_torchio: float = 0.5,
    device: str = "auto",
    batch_size: int = 100,
    workers: int = 0,
    thresholds: ClinicalThresholds | None = None,
    progress: bool = True,
    report: Any = None,
    slices: str = "central",
    acquisition: bool = True,
    families: str | None = None,
    storage: float = 0.0,
) -> dict[str, Any]:
    """Evaluate several checkpoints on one seeded test set and write the report to `out_dir`.
    `slices`: the test slices, "central" half (the paper's protocol) or "all" non-empty ones.
    `families`: the motion families of the test slices (default: TorchIO's by p_torchio and
    the k-space lines; e.g. "epi" evaluates on EPI artefacts alone). `storage`: the share of
    test slices stored at a lower matrix after the acquisition (`augment.apply_storage`).
    Returns an `Evaluation`: the report (as in report.json) and the true and predicted SSIMs."""
    import torch

    from .checkpoint import load_checkpoint
    from .data import check_volumes, summarize_volumes
    from .devices import resolve_device
    from .model import forward_ssim

    if not checkpoints:
        raise InputError("no checkpoint to evaluate")
    try:
        parse_families(families)
    except ValueError as exc:
        raise InputError(f"motion families: {exc}") from None
    dev = resolve_device(device)
    ckpts = [Path(c) for c in checkpoints]
    loaded = [load_checkpoint(str(c), device=str(dev)) for c in ckpts]
    sizes = {_input_size(m.metadata) for m in loaded}
    if len(sizes) != 1:
        raise InputError(f"{ckpts[0]}: the checkpoints have different input sizes {sorted(sizes)}"
                         "; evaluate them separately")
    input_size = sizes.pop()
    kwargs = {} if report is None else {"report": report}
    good, infos = check_volumes(test_paths, progress=progress, what="test volumes", **kwargs)
    for m in loaded:
        m.model.eval().to(dev)
    names = _unique_names(ckpts)
    preds: list[list[np.ndarray]] = [[] for _ in loaded]
    trues: list[np.ndarray] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="slice", desc="evaluating", dynamic_ncols=True)
    chunk = max(1, min(int(batch_size), n))
    with torch.no_grad():
        for images, labels in test_set(good, n, seed, input_size, contrast, p_torchio,
                                       dev, workers, chunk, slices=slices,
                                       acquisition=acquisition, families=families,
                                       storage=storage):
            images = images.to(dev)
            trues.append(labels.float().cpu().numpy())
            for j, m in enumerate(loaded):
                preds[j].append(forward_ssim(m.model, images).cpu().numpy())
            if bar is not None:
                bar.update(len(labels))
    if bar is not None:
        bar.close()
    true = np.concatenate(trues)
    models: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    for j, nm in enumerate(names):
        pred = np.concatenate(preds[j])
        meta = loaded[j].metadata
        models[nm] = {
            "checkpoint": str(ckpts[j]),
            "architecture": meta.get("architecture"),
            "metadata": {k: meta.get(k) for k in ("architecture", "train_input_size", "epoch",
                                                  "metrics", "schedule") if k in meta},
            "figures": evaluate_predictions(pred, true, thresholds=thresholds),
        }
        predictions[nm] = pred
    result = {
        "protocol": {"n": int(true.size), "seed": seed, "contrast_augmentation": contrast,
                     "p_torchio": p_torchio, "motion_families": families or "",
                     "input_size": input_size, "chunk": chunk,
                     "slices": slices, "acquisition": acquisition, "storage": storage,
                     "test_data": summarize_volumes(infos), "class_counts": list(CLASS_COUNTS),
                     "residuals": "predicted - true"},
        "models": models,
    }
    test_files = result["protocol"]["test_data"].get("files", [])
    overlap = {nm: trained_on(loaded[j].metadata, test_files) for j, nm in enumerate(names)}
    overlap = {nm: v for nm, v in overlap.items() if v}
    if overlap:
        result["protocol"]["trained_on_test_volumes"] = overlap
        for nm, v in overlap.items():
            print(f"motionssim: warning: {nm} was trained on {len(v)} of the test volumes "
                  f"({', '.join(v[:5])}{', ...' if len(v) > 5 else ''}): the figures overstate "
                  "its accuracy", file=sys.stderr, flush=True)
    write_report(result, out_dir, true, predictions)
    return Evaluation(result, true, predictions)


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


def trained_on(metadata: dict[str, Any], test_files: Sequence[str]) -> list[str]:
    """Test file names that also appear among a checkpoint's training volumes (its metadata
    records the file names of its training split)."""
    data = metadata.get("training_data") or {}
    train = data.get("train", {}) if isinstance(data, dict) else {}
    names = set(train.get("files", []) if isinstance(train, dict) else [])
    return sorted(set(test_files) & names)


def held_out_test_volumes(source: str | Path) -> list[Path]:
    """The test split of a data source, refused when it shares volumes with the training split.

    A plain folder of volumes (no split.json, no train/ and test/ sub-folders) puts every volume
    in every split, so evaluating on its "test split" would test on training data.
    """
    from .data import resolve_split

    test = resolve_split(source, "test")
    try:
        train = resolve_split(source, "train")
    except InputError:
        train = []
    shared = sorted({p.resolve() for p in test} & {p.resolve() for p in train})
    if shared:
        raise InputError(
            f"{source}: the test split shares {len(shared)} of {len(test)} volumes with the "
            f"training split (e.g. {shared[0].name}); a plain folder puts every volume in every "
            "split: give a split file or train/ and test/ sub-folders to evaluate on held-out data")
    return test


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
