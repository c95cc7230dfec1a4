"""Matrix invariance of the label and of models' predictions (issue 22, point 1).

    .venv/bin/python scripts/check_invariance.py [--model FILE ...] [--slices 70,90,110]
        [--precision fp32] [--acquired] [--out DIR]

Slices of the MNI152 2009c T1 template (real MR at 1 mm, shipped with nilearn: evaluation
data, never trained on) are corrupted once at 256 px across the head by the k-space and the
TorchIO simulators at severities 0.3 and 0.7, then stored at 64-512 px across the head and
zero-padded into a larger matrix (`MotionSSIMLib.training.invariance`). For the label and for each
model's prediction (the product's own path, `predict_slices`) the table gives the largest move
from the 256 px reading. Bounds: 0.03 (0.06 below 128 px). Exit status 0 when every reading is
within, 1 when one is not, 2 on an error. Writes DIR/invariance.json and DIR/invariance.md.
--acquired also corrupts the slices at 64, 128 and 256 px across the head (as a scanner
acquiring that matrix has the motion; seeds 0-3) and gives each model's bias against the label
there (DIR/acquired.json and .md; descriptive, not in the exit status).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None, metavar="FILE",
                    help="checkpoint (repeatable; default: the bundled model)")
    ap.add_argument("--slices", default="70,90,110", help="axial template slices")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "auto"))
    ap.add_argument("--acquired", action="store_true",
                    help="also read motion acquired at 64 / 128 / 256 px (bias against the "
                         "label; descriptive, no bound): DIR/acquired.json and .md")
    ap.add_argument("--out", metavar="DIR")
    args = ap.parse_args(argv)

    from MotionSSIMLib.assessment.checkpoint import default_model_path, load_checkpoint
    from MotionSSIMLib.assessment.inference import predict_slices
    from MotionSSIMLib.base.errors import MotionSSIMError
    from MotionSSIMLib.base.jsonable import write_tables
    from MotionSSIMLib.training import invariance

    try:
        slices = invariance.template_slices([int(s) for s in args.slices.split(",")])
        paths = [Path(p) for p in (args.model or [default_model_path()])]
        results, found = {}, {}
        for path in paths:
            loaded = load_checkpoint(path)

            def predict(images, spacing, loaded=loaded):
                return predict_slices(images, loaded, device="cpu", pixel_spacing=spacing,
                                      precision=args.precision)

            results[str(path)] = invariance.measure(slices, predict)
            if args.acquired:
                found[str(path)] = invariance.acquired(slices, predict)
    except (MotionSSIMError, OSError, ValueError) as exc:
        print(f"check_invariance: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    text = "".join(f"### {name}\n\n{invariance.markdown(r)}\n" for name, r in results.items())
    print(text, end="")
    if args.out:
        write_tables(args.out, "invariance", results, text)
    if found:
        text = "".join(f"### {name}: motion acquired at the matrix\n\n"
                       f"{invariance.acquired_markdown(r)}\n" for name, r in found.items())
        print(text, end="")
        if args.out:
            write_tables(args.out, "acquired", found, text)
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
