"""Every figure of an evaluation from two arrays, predicted and true SSIM (pure, no I/O).

`evaluate_predictions(pred, true)`: the regression figures (residual mean and sd, fitted normal,
MAE, RMSE, Pearson r, R^2, linear fit) and the classification tables (N equal-width classes,
N in CLASS_COUNTS as in Table III of the paper, and the clinical 3-class scheme with Cohen's
kappa).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..assessment.classes import CLINICAL_NAMES, ClinicalThresholds, clinical_class, uniform_class

__all__ = ["CLASS_COUNTS", "classification_table", "evaluate_predictions", "regression_figures"]

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
