"""Write a synthetic training set: random heads from the MNI152 template (MotionSSIMLib.synthesis).

    .venv/bin/python scripts/make_synthetic_dataset.py --out data/synth --train 400 --val 50 \\
        --test 50 --seed 1 --workers 2

A supplement that raises one feature's share of a training mix forces a draw on every subject
(any of synth.OPTION_KEYS; values are JSON, else text), e.g. 48 skull-stripped heads:

    .venv/bin/python scripts/make_synthetic_dataset.py --out data/synth_stripped --train 48 \
        --val 0 --test 0 --seed 3 --force skull_stripped=true

Writes NIfTI volumes under OUT/{train,val,test}/, OUT/split.json (relative paths per split) and
OUT/dataset.json (generation parameters, seed streams, what was drawn per subject). Subject i
of a split always gets the same volume for a given --seed, whatever --workers is.
Nothing is downloaded: the template comes with the nilearn package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--train", type=int, default=100, help="training subjects (default 100)")
    ap.add_argument("--val", type=int, default=20, help="validation subjects (default 20)")
    ap.add_argument("--test", type=int, default=20, help="test subjects (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    ap.add_argument("--kind", default="random",
                    choices=["random", "t1", "t2", "pd", "flair", "dwi", "epi", "post",
                             "inverted", "generic"],
                    help="contrast of every subject (default: random mix)")
    ap.add_argument("--isotropic", action="store_true",
                    help="1 mm isotropic whole-head volumes instead of random acquisitions")
    ap.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    ap.add_argument("--force", action="append", default=[], metavar="KEY=VALUE",
                    help="force a draw on every subject (repeatable), e.g. skull_stripped=true, "
                         "snr=8 or recon=kspace; recorded in dataset.json")
    return ap


def parse_forced(items: list[str]) -> dict:
    """{"skull_stripped": True, ...} from ["skull_stripped=true", ...] (JSON values, else text).
    ValueError naming the item for a malformed one or an unknown key."""
    from MotionSSIMLib.synthesis.subject import OPTION_KEYS

    options: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ValueError(f"--force {item!r}: expected KEY=VALUE")
        if key not in OPTION_KEYS:
            raise ValueError(f"--force {item!r}: unknown key; known: {', '.join(OPTION_KEYS)}")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text.strip()
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            print(f"error: --{name} must be >= 0", file=sys.stderr)
            return 2
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    # One thread per worker process: the workers are the parallelism.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        forced = parse_forced(args.force)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch
    from tqdm import tqdm

    from MotionSSIMLib.synthesis import writing

    torch.set_num_threads(1)
    total = args.train + args.val + args.test
    bar = tqdm(total=total, unit="subject", desc="synthesising")

    def progress(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    t0 = time.perf_counter()
    out = writing.write_dataset(args.out, args.train, args.val, args.test, seed=args.seed,
                                kind=args.kind, isotropic=args.isotropic, workers=args.workers,
                                progress=progress, options=forced)
    bar.close()
    print(f"wrote {total} subjects to {out} in {time.perf_counter() - t0:.1f} s "
          f"(split: {out / 'split.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
