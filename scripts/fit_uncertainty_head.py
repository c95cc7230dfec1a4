"""Fit the uncertainty head on a trained model's frozen backbone, and compare it with the views.

    .venv/bin/python scripts/fit_uncertainty_head.py --data SPLIT --out NEW.safetensors
        [--model FILE] [--n 6000] [--test-n 2000] [--views 4] [--storage 0.5]
        [--precision auto] [--seed 0] [--report DIR]

Slices: corrupted exactly as in training (the model's own motion families, slices, contrast
and acquisition stages from its metadata; `--storage` of them stored at a lower matrix, since
small matrices are where real scans differ most), drawn from the data source's VALIDATION
volumes with a stream no training run uses (`data.STREAMS["uncertainty"]`): the backbone was
never trained on them. The first 80 % fit the head (Gaussian negative log-likelihood of the
residual, `training/uncertainty_head.py`), the last 20 % set the scale that makes ssim +- 2 sd
hold 95 % of truths. Then, on `--test-n` slices of the TEST volumes (the evaluation's test
stream), the head's sd and the spread over `--views` flipped/transposed views are compared:
Spearman against |error|, coverage of the 2-sd interval, mean sd against the error per
quintile (figure). With --real-scans the same comparison runs on the real-scan set
(`check_real_scans.py --views`: real MR slices, motion from both simulators; evaluation data,
never fitted on). The new checkpoint is the same weights plus the head; its metadata records
the fit and these figures (`uncertainty`). Writes REPORT/uncertainty_head.json, .md and .png;
--card DIR also writes DIR/MODEL_CARD.md and the metadata as JSON beside it (for the bundled
model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))

FIT_SHARE = 0.8  # of the validation slices fit the head; the rest set its scale


def _batches(paths, stream: str, n: int, seed: int, schedule: dict, storage: float,
             chunk: int = 100):
    from MotionSSIMLib.simulation.pipeline import fixed_set
    from MotionSSIMLib.training.data import STREAMS, SliceDataset

    ds = SliceDataset([str(p) for p in paths], seed=seed, input_size=256,
                      cache_bytes=4096 << 20, slices=schedule.get("slices", "central"))
    return fixed_set(ds, STREAMS[stream], n, seed, schedule.get("contrast_augmentation", True),
                     schedule.get("p_torchio", 0.5), "cpu", chunk=chunk,
                     acquisition=schedule.get("acquisition", True),
                     families=schedule.get("motion_families") or None, storage=storage)


def markdown(result: dict) -> str:
    lines = [f"Uncertainty head of {result['model']}: fitted on {result['fit']['n_fit']} "
             f"and scaled on {result['fit']['n_scale']} validation slices (scale "
             f"{result['fit']['scale']:.3f}); compared on {result['test']['n']} held-out test "
             f"slices ({result['precision']}).", "",
             "| uncertainty | passes | Spearman with abs. error | 2-sd coverage | mean sd | "
             "RMS error |", "|---|---|---|---|---|---|"]
    for name, f in result["test"]["methods"].items():
        lines.append(f"| {name} | {f['passes']} | {f['spearman_abs_error']:.3f} | "
                     f"{f['coverage']:.3f} | {f['mean_sd']:.4f} | {f['rms_error']:.4f} |")
    lines += ["", "Per quintile of the sd: mean sd / RMS error (equal when calibrated)", "",
              "| quintile | " + " | ".join(result["test"]["methods"]) + " |",
              "|---|" + "---|" * len(result["test"]["methods"])]
    rows = zip(*(f["bins"] for f in result["test"]["methods"].values()))
    for q, row in enumerate(rows, 1):
        lines.append(f"| {q} | " + " | ".join(f"{b['mean_sd']:.4f} / {b['rms_error']:.4f}"
                                              for b in row) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    top = 0.0
    for name, f in result["test"]["methods"].items():
        sd = [b["mean_sd"] for b in f["bins"]]
        rms = [b["rms_error"] for b in f["bins"]]
        top = max(top, *sd, *rms)
        ax.plot(sd, rms, "o-", label=f"{name} (Spearman {f['spearman_abs_error']:.2f}, "
                                     f"coverage {f['coverage']:.2f})")
    ax.plot([0, top * 1.05], [0, top * 1.05], "k:", label="calibrated")
    ax.set_xlabel("stated sd (mean per quintile)")
    ax.set_ylabel("RMS error of the SSIM (per quintile)")
    ax.set_title("Does the stated uncertainty match the error?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="split file or folder (validation and test)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--out", required=True, help="the new checkpoint (.safetensors)")
    ap.add_argument("--n", type=int, default=6000, help="validation slices (fit + scale)")
    ap.add_argument("--test-n", type=int, default=2000, help="test slices for the comparison")
    ap.add_argument("--views", type=int, default=4, help="views of the comparison")
    ap.add_argument("--storage", type=float, default=0.5,
                    help="share of slices stored at a lower matrix (default 0.5)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", metavar="DIR", help="JSON, Markdown and figure")
    ap.add_argument("--real-scans", action="store_true",
                    help="also compare on the real-scan set (requirements-eval.txt)")
    ap.add_argument("--card", metavar="DIR", help="write DIR/MODEL_CARD.md for the new model")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from MotionSSIMLib.assessment.checkpoint import (
        default_model_path,
        load_checkpoint,
        save_checkpoint,
    )
    from MotionSSIMLib.assessment.inference import AMP_DTYPES, forward_views, resolve_precision
    from MotionSSIMLib.base.errors import MotionSSIMError
    from MotionSSIMLib.base.jsonable import write_tables
    from MotionSSIMLib.training import uncertainty_head as uh
    from MotionSSIMLib.training.data import check_volumes, resolve_split

    dev = torch.device("cpu")
    precision = resolve_precision(args.precision, dev)
    amp = (AMP_DTYPES[precision] or (None,))[0]
    model_path = Path(args.model) if args.model else default_model_path()
    try:
        loaded = load_checkpoint(model_path)
        schedule = dict(loaded.metadata.get("schedule") or {})
        val, _ = check_volumes(resolve_split(args.data, "validation"), what="validation volumes")
        test, _ = check_volumes(resolve_split(args.data, "test"), what="test volumes")
    except (MotionSSIMError, OSError, ValueError) as exc:
        print(f"fit_uncertainty_head: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    net = loaded.model.to(memory_format=torch.channels_last).eval()
    t0 = time.perf_counter()
    feats, raw, labels = uh.collect(net, _batches(val, "uncertainty", args.n, args.seed,
                                                  schedule, args.storage), dev, amp)
    res = uh.residuals(raw, labels)
    n_fit = int(FIT_SHARE * len(res))
    gen = torch.Generator().manual_seed(args.seed)
    head = uh.fit_head(feats[:n_fit], res[:n_fit], gen)
    scale = uh.coverage_scale(uh.head_sd(head, feats[n_fit:]), res[n_fit:])
    uh.fold_scale(head, scale)
    t1 = time.perf_counter()
    print(f"fitted on {n_fit} + {len(res) - n_fit} validation slices in {t1 - t0:.0f} s "
          f"(scale {scale:.3f})", flush=True)

    images, truths = [], []
    for x, y in _batches(test, "test", args.test_n, args.seed, schedule, args.storage):
        images.append(x)
        truths.append(y)
    images, true = torch.cat(images), torch.cat(truths).double().numpy()
    t_feats, t_raw, _ = uh.collect(net, [(images, torch.from_numpy(true))], dev, amp)
    pred = np.clip(t_raw, 0.0, 1.0)
    methods = {"head (1 pass)": {**uh.uncertainty_figures(pred, uh.head_sd(head, t_feats), true),
                                 "passes": 1}}
    views = np.clip(forward_views(images, net, dev, 64, args.precision, args.views), 0.0, 1.0)
    spread, mean = views.std(1, ddof=1), views.mean(1)
    methods[f"{args.views}-view spread"] = {**uh.uncertainty_figures(mean, spread, true),
                                            "passes": args.views}
    print(f"compared on {len(true)} test slices in {time.perf_counter() - t1:.0f} s", flush=True)
    fit_info = {"n_fit": n_fit, "n_scale": len(res) - n_fit, "scale": scale,
                "data": str(args.data), "split": "validation", "stream": "uncertainty",
                "seed": args.seed, "storage": args.storage, "precision": precision,
                "motion_families": schedule.get("motion_families"),
                "loss": "Gaussian NLL of (clamped prediction - true SSIM)",
                "validation": uh.uncertainty_figures(np.clip(raw[n_fit:], 0, 1),
                                                     uh.head_sd(head, feats[n_fit:]),
                                                     labels[n_fit:])}
    result = {"model": str(model_path), "precision": precision, "fit": fit_info,
              "test": {"n": int(len(true)), "split": "test", "methods": methods}}
    uh.attach(net, head)
    if args.real_scans:
        sys.path.insert(0, str(ROOT / "scripts"))
        import check_real_scans

        t2 = time.perf_counter()
        table = check_real_scans.real_scan_table(net, views=args.views, report=print)
        result["real_scans"] = check_real_scans.uncertainty_summary(table)
        print(f"real-scan set ({len(table)} scans) in {time.perf_counter() - t2:.0f} s",
              flush=True)
    meta = dict(loaded.metadata)
    meta["uncertainty"] = {"kind": "head", "fit": {k: v for k, v in fit_info.items()
                                                   if k != "validation"},
                           "test": {"n": int(len(true)), "methods": {
                               k: {m: v[m] for m in ("passes", "spearman_abs_error",
                                                     "coverage", "mean_sd", "rms_error")}
                               for k, v in methods.items()}}}
    if result.get("real_scans"):
        meta["uncertainty"]["real_scans"] = {
            k: {m: v[m] for m in ("n", "spearman_abs_error", "coverage", "mean_sd", "rms_error")}
            for k, v in result["real_scans"].items()}
    dtype = getattr(torch, str(loaded.metadata.get("dtype", "float32")), torch.float32)
    save_checkpoint(args.out, net.to(memory_format=torch.contiguous_format), meta, dtype=dtype)
    text = markdown(result)
    if result.get("real_scans"):
        text += "\n" + check_real_scans.uncertainty_markdown(result["real_scans"])
    print(text, end="")
    if args.card:
        sys.path.insert(0, str(ROOT / "scripts"))
        import bundle_model

        bundle_model.write_card(meta, Path(args.card), Path(args.out).name)
    if args.report:
        write_tables(args.report, "uncertainty_head", result, text)
        plot(result, Path(args.report) / "uncertainty_head.png")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
