"""Per motion family: how models read held-out synthetic slices of each family (issue 22).

    .venv/bin/python scripts/check_families.py --data data/synth/split.json \\
        [--model FILE ...] [--families all] [--n 300] [--seed 0] [--slices central] [--out DIR]
    .venv/bin/python scripts/check_families.py --volumes test/a.nii.gz test/b.nii.gz ...

The test slices of each family are the evaluation's (`evaluation.test_set`, seeded): the same
volumes, slices, contrasts, acquisition effects and severities for every family and every
model (the seed fixes them; only the motion family differs), so the rows compare like with like.
`--data` takes the evaluation CLI's sources (a split file or folder: its test split); or give
the volumes with `--volumes`. Per family and model: bias (mean of predicted - true SSIM), residual
sd, MAE, Spearman's rank correlation and the recall of each clinical class by the true SSIM
(good >= 0.85, sufficient 0.60-0.85, insufficient < 0.60), printed as a Markdown table and
written to DIR/families.json and DIR/families.md. A model never trained on a family reads it
here as motion it has never seen: the unseen-family check of issue 22.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))

CLASSES = ("good", "sufficient", "insufficient")


def family_figures(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Bias, residual sd, MAE, Spearman and per-class recall (with each class's support)."""
    from scipy import stats

    from MotionSSIMLib.training.evaluation_figures import evaluate_predictions

    figures = evaluate_predictions(pred, true, class_counts=())
    reg, clinical = figures["regression"], figures["clinical"]["per_class"]
    varies = np.ptp(pred) > 0 and np.ptp(true) > 0
    return {"n": reg["n"], "bias": reg["residual_mean"], "residual_sd": reg["residual_sd"],
            "mae": reg["mae"], "true_mean": reg["true_mean"], "pred_mean": reg["pred_mean"],
            "spearman": float(stats.spearmanr(pred, true)[0]) if varies else float("nan"),
            "recall": {name: clinical[str(c)]["recall"] if clinical[str(c)]["support"] else None
                       for c, name in enumerate(CLASSES, start=1)},
            "support": {name: clinical[str(c)]["support"] for c, name in enumerate(CLASSES, 1)}}


def measure(models: dict[str, Any], paths: list[str], families: list[str], n: int = 300,
            seed: int = 0, slices: str = "central", input_size: int = 256,
            batch_size: int = 50, progress: bool = False) -> dict[str, dict[str, Any]]:
    """{family: {model name: family_figures}} on n seeded test slices per family; `models`:
    name -> network (eval mode, CPU)."""
    import torch

    from MotionSSIMLib.assessment.model import forward_ssim
    from MotionSSIMLib.training.evaluation import test_set

    out: dict[str, dict[str, Any]] = {}
    for family in families:
        true, pred = [], {m: [] for m in models}
        batches = test_set(paths, n=n, seed=seed, input_size=input_size, chunk=batch_size,
                           slices=slices, families=family)
        with torch.no_grad():
            for images, labels in batches:
                true.append(labels.numpy())
                for m, net in models.items():
                    pred[m].append(forward_ssim(net, images).numpy())
        t = np.concatenate(true)
        out[family] = {m: family_figures(np.concatenate(p), t) for m, p in pred.items()}
        if progress:
            print(f"{family}: done", file=sys.stderr, flush=True)
    return out


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, fmt)


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Motion families: {result['n']} held-out synthetic slices per family from "
             f"{len(result['volumes'])} volumes, seed {result['seed']}, {result['slices']} "
             "slices; residual = predicted - true SSIM; recall by true class (good >= 0.85, "
             "sufficient 0.60-0.85, insufficient < 0.60).", "",
             "| family | model | true mean | bias | residual sd | MAE | Spearman | recall good "
             "| recall sufficient | recall insufficient |", "|---|---|---|---|---|---|---|---|---|---|"]
    for family, per_model in result["families"].items():
        for model, f in per_model.items():
            recall = " | ".join(f"{_cell(f['recall'][c], '.2f')} ({f['support'][c]})"
                                for c in CLASSES)
            lines.append(f"| {family} | {model} | {f['true_mean']:.3f} | {f['bias']:+.4f} | "
                         f"{f['residual_sd']:.4f} | {f['mae']:.4f} | "
                         f"{_cell(f['spearman'], '.3f')} | {recall} |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    from MotionSSIMLib.base.settings import SLICE_RANGES

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="PATH",
                     help="split file or folder (its test split), as `evaluate --data`")
    src.add_argument("--volumes", nargs="+", metavar="FILE", help="the test volumes")
    ap.add_argument("--model", action="append", default=None, metavar="FILE",
                    help="checkpoint (repeatable; default: the bundled model)")
    ap.add_argument("--families", default="all", metavar="LIST",
                    help="families to check, comma-separated (default: all)")
    ap.add_argument("--n", type=int, default=300, help="test slices per family (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slices", default="central", choices=SLICE_RANGES)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--out", metavar="DIR")
    return ap


def _chosen_families(text: str) -> list[str]:
    """The families named (weights, if any, are ignored: each is checked alone)."""
    from MotionSSIMLib.base.settings import MOTION_FAMILIES, parse_families

    chosen = parse_families(text)
    if not chosen:
        raise ValueError("--families: give at least one family (or all)")
    return [f for f in MOTION_FAMILIES if f in chosen]


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        ap.error("--n and --batch-size must be at least 1")

    from MotionSSIMLib.assessment.checkpoint import default_model_path, load_checkpoint
    from MotionSSIMLib.base.errors import MotionSSIMError
    from MotionSSIMLib.base.jsonable import write_tables
    from MotionSSIMLib.training.data import check_volumes, resolve_split
    from MotionSSIMLib.training.evaluation import _input_size, _unique_names

    try:
        families = _chosen_families(args.families)
        if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out}: exists and is not a folder")
        paths = [Path(p) for p in (args.model or [default_model_path()])]
        loaded = [load_checkpoint(p) for p in paths]
        sizes = {_input_size(m.metadata) for m in loaded}
        if len(sizes) != 1:
            raise ValueError(f"the models have different input sizes {sorted(sizes)}; "
                             "check them separately")
        volumes = resolve_split(args.data, "test") if args.data else args.volumes
        good, _ = check_volumes(volumes, what="test volumes")
        models = dict(zip(_unique_names(paths), (m.model.eval() for m in loaded), strict=True))
        figures = measure(models, good, families, args.n, args.seed, args.slices,
                          sizes.pop(), args.batch_size, progress=sys.stderr.isatty())
    except (MotionSSIMError, OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"check_families: error: {msg}", file=sys.stderr)
        return 2
    result = {"n": args.n, "seed": args.seed, "slices": args.slices,
              "volumes": [Path(p).name for p in good],
              "models": {nm: str(p) for nm, p in zip(models, paths, strict=True)},
              "families": figures}
    text = markdown(result)
    print(text, end="")
    if args.out:
        write_tables(args.out, "families", result, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
