"""Command-line front ends of training and evaluation (`python -m MotionSSIMLib train|evaluate`,
MotionSSIMTraining/train.py). Each `run_*` returns an exit status: 0 done, EXIT_STOPPED (3)
stopped early on request (stop file / signal; resume later), 2 a user error (one line on
stderr). Anything else propagates: Python's own status 1 with a traceback (train.py prints it
and exits 1 inside Slicer too), so a crash is never mistaken for a requested stop."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..base import settings
from ..base.errors import MotionSSIMError

EXIT_STOPPED = 3  # stopped on request with a resumable state (not 1: Python's crash status)

__all__ = ["EXIT_STOPPED", "add_evaluate_arguments", "add_train_arguments", "run_evaluate", "run_train",
           "train_main", "DATA_HELP"]

DATA_HELP = """\
data layout (--data):
  a split JSON file   {"train": [...], "validation": [...], "test": [...]}
                      (paths relative to the JSON file; scripts/make_synthetic_dataset.py
                      writes one as split.json)
  a split CSV file    header "path,split"; split is train, validation or test
  a folder            with split.json, or with sub-folders train/, validation/ (or val/)
                      and test/; a folder with neither: every volume in it, recursively
  volumes             .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .npy (3D), or a folder of
                      DICOM files (one series)
  Unreadable volumes are reported once and skipped.
"""

TRAIN_EPILOG = DATA_HELP + """
examples:
  # the paper's schedule (2000 epochs x 200 samples, batch 100, Adam 1e-3) on a split file
  python -m MotionSSIMLib train --data data/synth/split.json --out runs/r18
  # a short trial on the CPU
  python -m MotionSSIMLib train --data data/synth --out runs/try --epochs 5 \\
      --samples-per-epoch 200 --batch-size 20 --val-samples 100
  # continue a stopped or killed run where it stopped (same --out)
  python -m MotionSSIMLib train --out runs/r18 --resume
  # several GPUs on one machine
  torchrun --nproc-per-node 4 -m MotionSSIMLib train --data split.json --out runs/r18

output folder: best.safetensors (lowest validation loss), last.safetensors, state.pt (resume),
log.csv / log.json (one row per epoch). Create a file named "stop" in it (or press Ctrl-C)
to stop cleanly; --resume continues exactly where it stopped.
"""

EVALUATE_EPILOG = DATA_HELP + """
examples:
  python -m MotionSSIMLib evaluate --data data/synth/split.json \\
      --checkpoint runs/r18/best.safetensors runs/r101/best.safetensors --out eval/
  # a quick look with 1000 slices
  python -m MotionSSIMLib evaluate --data data/synth --checkpoint best.safetensors \\
      --out eval/ --n 1000
  # one motion family at a time (scripts/check_families.py runs them all)
  python -m MotionSSIMLib evaluate --data data/synth --checkpoint best.safetensors \\
      --out eval_epi/ --motion-families epi

The test slices are drawn from the test volumes exactly as in training (random orientation,
central non-empty slice, contrast augmentation, motion); the same --seed gives the same slices,
so the models are compared on identical data. Output: report.md, report.json, summary.csv,
classification_<n>.csv, predictions.csv and PNG plots.
"""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The `train` arguments (also MotionSSIMTraining/train.py's): the run's folders, then one
    option per `settings.TrainSettings` field."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = TRAIN_EPILOG
    g = parser.add_argument_group("data and output")
    g.add_argument("--data", metavar="PATH",
                   help="split file (.json/.csv) or folder with the volumes (see below); "
                        "not needed with --resume")
    g.add_argument("--val-data", metavar="PATH",
                   help="validation volumes, when --data has no validation split")
    g.add_argument("--out", metavar="DIR", required=True, help="output folder")
    g.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (data and schedule come from it; "
                        "--epochs may extend it)")
    settings.add_arguments(parser, settings.TrainSettings)
    # None = not given: a fresh run takes the default, a resumed run keeps its own schedule
    parser.set_defaults(epochs=None)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The `evaluate` arguments: data, checkpoints and report folder, then one option per
    `settings.EvaluateSettings` field."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EVALUATE_EPILOG
    parser.add_argument("--data", metavar="PATH", required=True,
                        help="split file or folder; its test split is used (a folder without "
                             "splits: all its volumes)")
    parser.add_argument("--checkpoint", metavar="FILE", nargs="+", required=True,
                        help="one or more .safetensors checkpoints, compared side by side")
    parser.add_argument("--out", metavar="DIR", required=True, help="report folder")
    settings.add_arguments(parser, settings.EvaluateSettings, groups=False)


def _error(exc: BaseException) -> int:
    from ..assessment.report import printable

    if isinstance(exc, OSError) and exc.strerror:  # the file and the cause, in one line
        msg = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(printable(f"motionssim: error: {msg}"), file=sys.stderr, flush=True)
    return 2


def _check_out(out: str) -> None:
    """--out must be a folder (or not exist yet): refused before any work otherwise."""
    from ..base.errors import InputError

    p = Path(out)
    while not p.exists() and p.parent != p:  # the nearest part of the path that exists
        p = p.parent
    if p.exists() and not p.is_dir():
        raise InputError(f"{out}: {'exists' if str(p) == str(out) else f'{p} exists and'} "
                         "is not a folder; give an output folder with --out")


def run_train(args: argparse.Namespace) -> int:
    """Train from parsed `add_train_arguments` arguments; returns the exit status. The main
    process holds the output folder's lock (folder_lock) while it trains."""
    import os

    from ..base.errors import InputError
    from . import folder_lock

    try:
        from .data import resolve_split
        from .trainer import train  # torch: a missing or broken install is one line here

        _check_out(args.out)
        keep_epochs = args.epochs is None  # not given: the default, or the saved run's on resume
        chosen = settings.from_args(settings.TrainSettings, args)
        train_paths: list = []
        val_paths: list = []
        if not args.resume:
            if not args.data:
                raise InputError("--data is required (unless --resume)")
            train_paths = resolve_split(args.data, "train")
            if args.val_data:
                val_paths = resolve_split(args.val_data, "validation")
            else:
                try:
                    val_paths = resolve_split(args.data, "validation")
                except InputError:
                    val_paths = []
                if Path(args.data).is_dir() and val_paths == train_paths:
                    val_paths = []  # a flat folder: no separate validation volumes
            if not val_paths:
                print("motionssim: no validation volumes: the best checkpoint is chosen by "
                      "training loss (give --val-data)", file=sys.stderr)
        # one trainer per folder; torchrun's other ranks share their main process's folder
        main = int(os.environ.get("RANK", "0")) == 0
        with folder_lock.held(args.out) if main else _nothing():
            result = train(chosen, args.out, train_paths, val_paths, resume=args.resume,
                           keep_epochs=keep_epochs)
    except (MotionSSIMError, OSError, ImportError) as exc:  # OSError: OUT cannot be written
        return _error(exc)
    except KeyboardInterrupt:
        print("motionssim: interrupted", file=sys.stderr)
        return EXIT_STOPPED
    if result.status == "stopped":
        return EXIT_STOPPED
    best = result.best_val_loss
    print(f"done: {result.epoch} epochs, {result.step} steps; best loss {best:.5f}; "
          f"checkpoints in {result.out_dir}", file=sys.stderr)
    return 0


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate from parsed `add_evaluate_arguments` arguments; returns the exit status."""
    from ..assessment.classes import ClinicalThresholds
    from .data import resolve_split
    from .evaluation import evaluate_checkpoints

    try:
        _check_out(args.out)
        test_paths = resolve_split(args.data, "test")
        chosen = settings.from_args(settings.EvaluateSettings, args)
        result = evaluate_checkpoints(
            args.checkpoint, test_paths, args.out, n=chosen.n, seed=chosen.seed,
            contrast=chosen.contrast, p_torchio=chosen.p_torchio, device=chosen.device,
            families=chosen.motion_families,
            batch_size=chosen.batch_size, workers=chosen.workers,
            thresholds=ClinicalThresholds(good=chosen.good, sufficient=chosen.sufficient),
            progress=chosen.progress, slices=chosen.slices, acquisition=chosen.acquisition,
            storage=chosen.storage)
    except (MotionSSIMError, OSError) as exc:  # OSError: the report folder cannot be written
        return _error(exc)
    for name, m in result.report["models"].items():
        r = m["figures"]["regression"]
        acc = m["figures"]["classification"]
        print(f"{name}: residual {r['normal_fit']['mu']:+.4f} ± {r['normal_fit']['sigma']:.4f}, "
              f"MAE {r['mae']:.4f}, accuracy 3/5/10 classes "
              f"{acc['3']['accuracy']:.3f}/{acc['5']['accuracy']:.3f}/{acc['10']['accuracy']:.3f}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """`train.py ARGS` / `python -m MotionSSIMLib.training.training_cli ARGS`: parse and train."""
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train a MotionSSIM model (SSIM regression of motion "
        "artefacts) on 3D MR volumes with on-the-fly motion and contrast augmentation.")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(train_main())
