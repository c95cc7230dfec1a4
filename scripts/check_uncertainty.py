"""Per-slice uncertainty and reduced precision, measured on held-out synthetic slices.

    .venv/bin/python scripts/check_uncertainty.py [--model FILE] [--subjects 16] [--per-subject 12]
        [--repeats 3] [--seed 2024] [--views 8] [--precision auto] [--fp32-check N] [--out DIR]

Held-out slices: synthetic subjects of the "test" split drawn with a seed no training run uses
(`synth.subject_rng(seed, "test", i)`), evenly spaced non-empty slices of each, fitted to the
model input (head window) and corrupted as in training (`pipeline.corrupt_batch`, seeded): the
label is the true SSIM. The model reads every slice in each of the first `--views` label-
preserving views (inference.VIEWS). Printed (and written to DIR/uncertainty.json and .md):
- accuracy of the identity view alone against the mean over 2, 4 and 8 views;
- the spread over 4 (and 8) views (`ssim_sd`) against |error|: Spearman and Pearson, also
  against |error - mean bias| (a bias shared by all views cannot show in their spread), and a
  table binned by quintile of the spread;
- the "uncertain" flag (ssim +- 2 sd contains a clinical threshold): how often it is set and
  the clinical-class accuracy of flagged and unflagged slices;
- with --fp32-check N: the |difference| of the fast precision from float32 on N slices.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))


def heldout_set(subjects: int = 16, per_subject: int = 12, repeats: int = 3, seed: int = 2024,
                min_foreground: float = 0.15) -> tuple[torch.Tensor, np.ndarray]:
    """(corrupted model inputs (N, 1, 256, 256), true SSIM (N,)), deterministic in its
    arguments. Each subject gives `per_subject` evenly spaced slices with at least
    `min_foreground` foreground, each corrupted `repeats` times."""
    from MotionSSIMLib.imaging.geometry import extract_slices, to_model_input
    from MotionSSIMLib.simulation.pipeline import corrupt_batch
    from MotionSSIMLib.synthesis import subject, writing

    clean = []
    for i in range(subjects):
        stack = extract_slices(subject.synth_subject(writing.subject_rng(seed, "test", i)), "auto")
        fg = np.asarray(stack.foreground)
        keep = np.flatnonzero((fg >= min_foreground) & ~np.asarray(stack.blank, bool))
        if len(keep) == 0:
            continue
        pick = keep[np.unique(np.linspace(0, len(keep) - 1, per_subject).round().astype(int))]
        clean.append(to_model_input(np.stack([np.asarray(stack.images[j]) for j in pick]),
                                    stack.pixel_spacing))
    x = torch.from_numpy(np.concatenate(clean))[:, None].repeat(repeats, 1, 1, 1)
    corrupted, labels = corrupt_batch(x, torch.Generator().manual_seed(seed))
    return corrupted, labels.double().numpy()


def _corr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import pearsonr, spearmanr

    return float(spearmanr(a, b)[0]), float(pearsonr(a, b)[0])


def study(views: np.ndarray, true: np.ndarray, good: float = 0.85,
          sufficient: float = 0.60) -> dict:
    """The figures above from per-view predictions (N, V) (clamped here) and the truth."""
    from MotionSSIMLib.assessment.classes import ClinicalThresholds, clinical_class
    from MotionSSIMLib.assessment.inference import UNCERTAIN_SDS, uncertain_slices

    th = ClinicalThresholds(good, sufficient)
    v = np.clip(views, 0.0, 1.0)
    out: dict = {"n_slices": int(len(true)), "accuracy": {}, "spread": {}}
    for k in sorted({1, 2, 4, 8} & set(range(1, v.shape[1] + 1))):
        err = v[:, :k].mean(1) - true
        out["accuracy"][k] = {
            "mae": float(np.abs(err).mean()), "bias": float(err.mean()),
            "residual_sd": float(err.std()),
            "clinical_accuracy": float((clinical_class(v[:, :k].mean(1), th)
                                        == clinical_class(true, th)).mean())}
    for k in sorted({4, 8} & set(range(2, v.shape[1] + 1))):
        mean, sd = v[:, :k].mean(1), v[:, :k].std(1, ddof=1)
        err = mean - true
        abs_err, abs_dev = np.abs(err), np.abs(err - err.mean())
        edges = np.quantile(sd, np.linspace(0, 1, 6))
        which = np.clip(np.searchsorted(edges, sd, side="right") - 1, 0, 4)
        bins = [{"sd_from": float(edges[b]), "sd_to": float(edges[b + 1]),
                 "n": int((which == b).sum()),
                 "mean_sd": float(sd[which == b].mean()),
                 "mean_abs_error": float(abs_err[which == b].mean()),
                 "p90_abs_error": float(np.quantile(abs_err[which == b], 0.9)),
                 "mean_abs_error_less_bias": float(abs_dev[which == b].mean())}
                for b in range(5) if (which == b).any()]
        flagged = uncertain_slices(mean, sd, th)
        right = clinical_class(mean, th) == clinical_class(true, th)
        out["spread"][k] = {
            "mean_sd": float(sd.mean()), "median_sd": float(np.median(sd)),
            "spearman_abs_error": _corr(sd, abs_err)[0],
            "pearson_abs_error": _corr(sd, abs_err)[1],
            "spearman_abs_error_less_bias": _corr(sd, abs_dev)[0],
            "pearson_abs_error_less_bias": _corr(sd, abs_dev)[1],
            "share_error_within_2sd": float((abs_err <= UNCERTAIN_SDS * sd).mean()),
            "bins": bins,
            "uncertain_share": float(flagged.mean()),
            "clinical_accuracy_uncertain": float(right[flagged].mean()) if flagged.any()
            else None,
            "clinical_accuracy_certain": float(right[~flagged].mean()) if (~flagged).any()
            else None}
    return out


def markdown(result: dict) -> str:
    lines = [f"Held-out synthetic slices: {result['n_slices']}, precision "
             f"{result.get('precision', '?')}", "",
             "| views | MAE | bias | residual sd | clinical accuracy |", "|---|---|---|---|---|"]
    for k, a in result["accuracy"].items():
        lines.append(f"| {k} | {a['mae']:.4f} | {a['bias']:+.4f} | {a['residual_sd']:.4f} | "
                     f"{a['clinical_accuracy']:.3f} |")
    for k, s in result["spread"].items():
        lines += ["", f"Spread over {k} views: mean sd {s['mean_sd']:.4f}; vs |error| Spearman "
                  f"{s['spearman_abs_error']:.2f}, Pearson {s['pearson_abs_error']:.2f}; vs "
                  f"|error - mean bias| Spearman {s['spearman_abs_error_less_bias']:.2f}, "
                  f"Pearson {s['pearson_abs_error_less_bias']:.2f}; uncertain "
                  f"{100 * s['uncertain_share']:.1f} % (clinical accuracy "
                  f"{s['clinical_accuracy_uncertain'] or float('nan'):.3f} flagged, "
                  f"{s['clinical_accuracy_certain'] or float('nan'):.3f} not)", "",
                  "| sd quintile | n | mean sd | mean abs error | p90 abs error | "
                  "mean abs error less bias |", "|---|---|---|---|---|---|"]
        for b in s["bins"]:
            lines.append(f"| {b['sd_from']:.4f}-{b['sd_to']:.4f} | {b['n']} | "
                         f"{b['mean_sd']:.4f} | {b['mean_abs_error']:.4f} | "
                         f"{b['p90_abs_error']:.4f} | {b['mean_abs_error_less_bias']:.4f} |")
    if "fp32_check" in result:
        c = result["fp32_check"]
        lines += ["", f"{c['precision']} vs fp32 on {c['n_slices']} slices x {c['views']} "
                  f"views: mean |difference| {c['mean_abs_diff']:.5f}, max "
                  f"{c['max_abs_diff']:.5f}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--subjects", type=int, default=16)
    ap.add_argument("--per-subject", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--views", type=int, default=8, help="views read per slice (1-8)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp32-check", type=int, default=0, metavar="N",
                    help="also compare the precision used with fp32 on the first N slices")
    ap.add_argument("--out", default=None, metavar="DIR")
    args = ap.parse_args(argv)

    from MotionSSIMLib.assessment.inference import forward_views, resolve_precision

    t0 = time.perf_counter()
    x, true = heldout_set(args.subjects, args.per_subject, args.repeats, args.seed)
    t1 = time.perf_counter()
    views = forward_views(x, args.model, args.device, 32, args.precision, args.views)
    t2 = time.perf_counter()
    result = study(views, true)
    result["precision"] = resolve_precision(args.precision, args.device)
    result["seconds"] = {"data": round(t1 - t0, 1), "inference": round(t2 - t1, 1)}
    if args.fp32_check:
        n = min(args.fp32_check, len(x))
        k = min(args.views, 4)
        ref = forward_views(x[:n], args.model, args.device, 32, "fp32", k)
        d = np.abs(np.clip(views[:n, :k], 0, 1) - np.clip(ref, 0, 1))
        dm = np.abs(np.clip(views[:n, :k], 0, 1).mean(1) - np.clip(ref, 0, 1).mean(1))
        result["fp32_check"] = {"precision": result["precision"], "n_slices": n, "views": k,
                                "mean_abs_diff": float(d.mean()),
                                "max_abs_diff": float(d.max()),
                                "max_abs_diff_of_view_mean": float(dm.max())}
    text = markdown(result)
    print(text, end="")
    print(f"data {result['seconds']['data']} s, inference {result['seconds']['inference']} s "
          f"({len(x) * args.views / max(t2 - t1, 1e-9):.1f} model inputs/s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "uncertainty.json").write_text(json.dumps(result, indent=2))
        (out / "uncertainty.md").write_text(text)
        np.savez(out / "uncertainty_samples.npz", views=views, true=true)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
