"""Controlled synthetic pairs: how much one feature of a scan alone moves a model's reading.

    .venv/bin/python scripts/check_pairs.py [--model FILE ...] [--subjects 12] [--seed 777]
        [--slices 80] [--out DIR]

Each of N held-out synthetic subjects (`synth.subject_rng(seed, "test", i)`; seed 777 is no
training seed) is generated once per variant from the same draw, with one option forced
(`synth_subject_info(options=...)`): skull-stripped or with its head, and SNR 100 or 8 (head
kept). Everything else about the subject (anatomy, contrast, resolution, field of view) is the
same in both variants of a pair, so the paired difference of the per-subject mean bias
(prediction - true SSIM) is what that feature alone does to the model. Each variant volume is
read like the evaluation's test set (`evaluation.test_set`: `--slices` corrupted slices, seed 0,
all non-empty slices, acquisition effects on). Printed per model: the mean bias of each variant
and each pair's difference with its standard error; written to DIR/pairs.json and pairs.md.

This is how the skull-stripped finding of issue "Model v2" was measured
(MotionSSIM/Resources/Models/MODEL_HISTORY.md): the model then bundled read skull-stripped heads
+0.039 higher than the same heads with their skull. An unbiased model reads every difference near 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))

# variant -> forced synth options; PAIRS compare two variants of the same subjects.
VARIANTS = {"stripped": {"skull_stripped": True},
            "head": {"skull_stripped": False},
            "snr100": {"skull_stripped": False, "snr": 100.0},
            "snr8": {"skull_stripped": False, "snr": 8.0}}
PAIRS = (("stripped", "head"), ("snr100", "snr8"))


def make_variants(folder: str | Path, index: int, seed: int = 777) -> dict:
    """Write every variant of subject `index` to FOLDER/s{index}_{variant}.nii.gz; returns the
    paths and what was drawn (kind, SNR per variant)."""
    from MotionSSIMLib.synthesis import subject, writing

    rec: dict = {"subject": index, "paths": {}, "snr": {}}
    for name, options in VARIANTS.items():
        vol, info = subject.synth_subject_info(writing.subject_rng(seed, "test", index), "random",
                                               False, options=options)
        rec["paths"][name] = str(writing.save_subject(
            vol, Path(folder) / f"s{index}_{name}.nii.gz"))
        rec["snr"][name] = info["snr"]
        rec["kind"] = info["kind"]
    return rec


def subject_bias(models: dict[str, torch.nn.Module], path: str | Path,
                 slices: int = 80) -> dict[str, float]:
    """Mean (prediction - true SSIM) of each model over the seeded test-set slices of one
    volume (the same corrupted slices for every model)."""
    from MotionSSIMLib.assessment.model import forward_ssim
    from MotionSSIMLib.training.evaluation import test_set

    true, pred = [], {m: [] for m in models}
    with torch.no_grad():
        for x, y in test_set([path], n=slices, seed=0, chunk=40, slices="all"):
            true.append(y.numpy())
            for m, net in models.items():
                pred[m].append(forward_ssim(net, x).numpy())
    t = np.concatenate(true)
    return {m: float((np.concatenate(p) - t).mean()) for m, p in pred.items()}


def summarize(bias: dict[str, list[float]]) -> dict:
    """From per-subject biases of one model ({variant: [bias per subject]}): each variant's mean
    bias and, per pair, the paired difference's mean, sd and standard error."""
    out: dict = {"variants": {v: float(np.mean(b)) for v, b in bias.items()}, "pairs": {}}
    for a, b in PAIRS:
        d = np.asarray(bias[a]) - np.asarray(bias[b])
        out["pairs"][f"{a}-{b}"] = {"mean": float(d.mean()), "sd": float(d.std()),
                                    "se": float(d.std() / np.sqrt(len(d))), "n": int(len(d))}
    return out


def markdown(result: dict) -> str:
    names = list(result["models"])
    lines = [f"Synthetic pairs: {result['subjects']} subjects (seed {result['seed']}), "
             f"{result['slices']} slices per variant", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for v in VARIANTS:
        lines.append(f"| mean bias, {v} | " + " | ".join(
            f"{result['models'][m]['variants'][v]:+.4f}" for m in names) + " |")
    for a, b in PAIRS:
        diffs = [result["models"][m]["pairs"][f"{a}-{b}"] for m in names]
        lines.append(f"| {a} - {b} | " + " | ".join(
            f"{d['mean']:+.4f} (se {d['se']:.4f})" for d in diffs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None, metavar="FILE",
                    help="checkpoint (repeatable; default: the bundled model)")
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--slices", type=int, default=80, help="corrupted slices per variant")
    ap.add_argument("--out", default=None, metavar="DIR")
    args = ap.parse_args(argv)
    if args.subjects < 2:
        ap.error("--subjects must be at least 2 (a paired standard error needs two)")
    if args.slices < 1:
        ap.error("--slices must be at least 1")

    from tqdm import tqdm

    from MotionSSIMLib.assessment.checkpoint import default_model_path, load_checkpoint
    from MotionSSIMLib.base.errors import MotionSSIMError

    paths = args.model or [str(default_model_path())]
    try:
        models = {p: load_checkpoint(p).model.eval() for p in paths}
    except MotionSSIMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bias = {m: {v: [] for v in VARIANTS} for m in models}
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in tqdm(range(args.subjects), desc="subjects", disable=not sys.stderr.isatty()):
            records.append(make_variants(tmp, i, args.seed))
            for v in VARIANTS:
                for m, b in subject_bias(models, records[-1]["paths"][v], args.slices).items():
                    bias[m][v].append(b)
    result = {"subjects": args.subjects, "seed": args.seed, "slices": args.slices,
              "kinds": [r["kind"] for r in records], "snr": [r["snr"] for r in records],
              "models": {m: summarize(b) for m, b in bias.items()},
              "per_subject_bias": bias}
    text = markdown(result)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pairs.json").write_text(json.dumps(result, indent=2))
        (out / "pairs.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
