"""The command line: `python -m MotionSSIMLib` / `motionssim` with assess, train, evaluate.

Exit status: 0 when every input was assessed, 2 when any was unusable (each gets a one-line
error, the others are still assessed), 1 for an internal error.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .errors import MotionSSIMError

ASSESS_EPILOG = """\
examples:
  motionssim assess scan.nii.gz
  motionssim assess /data/archive/*/T2.nii.gz --out qc/ --device cuda
  motionssim assess dicom_series_folder/ --orientation axial --model my_model.safetensors

For every input, OUT/<name>_slices.csv (one row per slice), OUT/<name>_summary.json (verdict,
mean/min SSIM, class counts, worst slices) and OUT/<name>_chart.png are written, and one line
with the verdict is printed. The verdict is the worst clinical class among non-empty slices:
good (SSIM >= 0.85), sufficient (>= 0.60) or insufficient: re-scan.
"""


def _stem(path: Path, used: set[str]) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".png", ".tif",
                   ".tiff"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "input"
    base, n = stem, 1
    while stem in used:  # two inputs with the same name in different folders
        n += 1
        stem = f"{base}_{n}"
    used.add(stem)
    return stem


def add_assess_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="NIfTI, NRRD, MHA/MHD, a DICOM series folder, PNG/TIFF or NPY")
    p.add_argument("--model", metavar="PATH", help="checkpoint (.safetensors); default: the "
                   "bundled model")
    p.add_argument("--orientation", default="auto",
                   choices=("auto", "axial", "coronal", "sagittal"),
                   help="slice plane; auto = the acquisition plane (default)")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, mps")
    p.add_argument("--out", default="motionssim_report", metavar="DIR",
                   help="report folder (default: ./motionssim_report)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--good", type=float, default=0.85, help="SSIM threshold of 'good'")
    p.add_argument("--sufficient", type=float, default=0.60,
                   help="SSIM threshold of 'sufficient' (below: insufficient, re-scan)")
    p.add_argument("--min-foreground", type=float, default=0.05,
                   help="slices with a smaller foreground share are flagged empty")
    p.add_argument("--true-ssim", metavar="CSV",
                   help="known per-slice SSIM (columns index,true_ssim) drawn beside the "
                        "prediction, for a single input")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run_assess(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .classes import ClinicalThresholds
    from .inference import assess_volume, get_model, resolve_device
    from .io import read_input
    from .report import read_true_ssim, write_report

    try:
        thresholds = ClinicalThresholds(args.good, args.sufficient)
        device = resolve_device(args.device)
        model = get_model(args.model, device)
        truth = read_true_ssim(args.true_ssim) if args.true_ssim else None
    except (MotionSSIMError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if truth is not None and len(args.inputs) != 1:
        print("error: --true-ssim goes with exactly one input", file=sys.stderr)
        return 2
    failed, used = 0, set()
    bar = tqdm(args.inputs, unit="input", disable=not args.progress or len(args.inputs) < 2,
               file=sys.stderr)
    for raw in bar:
        path = Path(raw)
        try:
            vol = read_input(path)
            a = assess_volume(vol, model=model, orientation=args.orientation, device=device,
                              batch_size=args.batch_size, thresholds=thresholds,
                              min_foreground=args.min_foreground)
            paths = write_report(a, args.out, _stem(path, used), source=str(path),
                                 true_ssim=truth)
        except MotionSSIMError as exc:
            failed += 1
            tqdm.write(f"error: {exc}", file=sys.stderr)
            continue
        s = a.summary
        c = s["counts"]
        stats = (f"mean SSIM {s['mean_ssim']:.3f}, min {s['min_ssim']:.3f}, "
                 if s["n_assessed"] else "")
        tqdm.write(f"{path}: {s['verdict']} ({stats}{c['good']} good / {c['sufficient']} "
                   f"sufficient / {c['insufficient']} insufficient, {c['empty']} empty "
                   f"{a.orientation} slices) -> {paths['json']}")
    return 2 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="motionssim",
        description="Reference-free per-slice SSIM prediction for motion artefacts in brain MR.")
    parser.add_argument("--version", action="version", version=f"MotionSSIM {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assess", help="assess volumes or images and write reports",
                       epilog=ASSESS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_assess_arguments(p)
    p.set_defaults(run=run_assess)
    from . import training_cli

    p = sub.add_parser("train", help="train a model with on-the-fly synthetic motion")
    training_cli.add_train_arguments(p)
    p.set_defaults(run=training_cli.run_train)
    p = sub.add_parser("evaluate", help="evaluate checkpoints with the paper's test protocol")
    training_cli.add_evaluate_arguments(p)
    p.set_defaults(run=training_cli.run_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MotionSSIMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
