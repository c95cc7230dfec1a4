"""The command line: `python -m MotionSSIMLib` / `motionssim` with assess, train, evaluate.

Exit status: 0 when every input was assessed, 2 when any was unusable or an option is wrong
(each gets a one-line error, the other inputs are still assessed), 1 when an internal error
(a bug) stopped an input, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .assessment.lines import assess_line, say, series_line
from .base.errors import CheckpointError, MotionSSIMError

ASSESS_EPILOG = """\
examples:
  motionssim assess scan.nii.gz
  motionssim assess /data/archive/*/T2.nii.gz --out qc/ --device cuda
  motionssim assess dicom_series_folder/ --orientation axial --model my_model.safetensors

For every input, OUT/<name>_slices.csv (one row per slice), OUT/<name>_summary.json (verdict,
mean/min SSIM, class counts, worst slices) and OUT/<name>_chart.png are written (atomically),
and one line with the verdict is printed. <name> is the input's file name without extension,
then _ and 8 hex digits of the SHA-256 of its resolved absolute path: the same input always
gets the same name. The verdict is the worst clinical class among non-empty slices:
good (SSIM >= 0.85), sufficient (>= 0.60) or insufficient: re-scan.

A 4D input (NIfTI/NRRD with several volumes, a DICOM folder with several time points,
b-values or echoes per position) is assessed frame by frame (--frames 0:10 or 3,5,7 to choose
frames by index, from 0): the CSV gains a frame column, OUT/<name>_heatmap.png shows frame x
slice, and the line names the worst frame and slice.
"""


class _Notes(logging.Handler):
    """Notes for the user (warnings of MotionSSIMLib, e.g. complex voxels read as their
    magnitude): one line `note: ...` on the stderr of the moment (the archive mode replaces
    it while it keeps library output off the terminal), above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        from .assessment.report import printable

        tqdm.write(printable(f"note: {record.getMessage()}"), file=sys.stderr)


def show_notes() -> None:
    """Show MotionSSIMLib's notes on stderr (once, however often the CLI runs in a process)."""
    lib = logging.getLogger("MotionSSIMLib")
    if not any(isinstance(h, _Notes) for h in lib.handlers):
        lib.addHandler(_Notes(logging.WARNING))


def _about(path: Path, exc: BaseException) -> str:
    """The error line of an input: the message, prefixed with the input when it does not
    already name it (errors raised on a volume, not a file)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if msg.startswith(str(path)) else f"{path}: {msg}"


def add_assess_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="NIfTI, NRRD, MHA/MHD, a DICOM series folder, PNG/TIFF or NPY")
    p.add_argument("--model", metavar="PATH", help="checkpoint (.safetensors); default: the "
                   "bundled model")
    p.add_argument("--orientation", default="auto",
                   choices=("auto", "axial", "coronal", "sagittal"),
                   help="slice plane; auto = the acquisition plane (default)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,mps}",
                   help="auto = CUDA GPU if any, else Apple MPS, else CPU (default: auto)")
    p.add_argument("--out", default="motionssim_report", metavar="DIR",
                   help="report folder (default: ./motionssim_report)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="slices per forward pass (default: 32; halved on GPU out-of-memory)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="arithmetic of the model: auto = float16 autocast on CUDA, bfloat16 on "
                        "a CPU with native bfloat16 (AVX512-BF16/AMX), else float32; fp32 "
                        "always float32 (default: auto)")
    p.add_argument("--tta", type=int, default=None, metavar="N",
                   help="views per slice (flips/transposes, 1-8): the SSIM is their mean, "
                        "ssim_sd their spread, each view costs one forward pass (default: one "
                        "pass for a model with the uncertainty head, whose ssim_sd comes from "
                        "the same pass; 4 views for a model without it)")
    p.add_argument("--no-uncertainty", dest="tta", action="store_const", const=1,
                   help="one view per slice (= --tta 1): a model without the uncertainty head "
                        "then gives no ssim_sd, for a quarter of the cost")
    p.add_argument("--good", type=float, default=0.85, metavar="SSIM",
                   help="lowest SSIM of class 'good' (default: 0.85)")
    p.add_argument("--sufficient", type=float, default=0.60, metavar="SSIM",
                   help="lowest SSIM of class 'sufficient'; below: insufficient, re-scan "
                        "(default: 0.60)")
    p.add_argument("--min-foreground", type=float, default=0.05, metavar="SHARE",
                   help="slices whose foreground share is smaller are flagged empty and left "
                        "out of the verdict (default: 0.05)")
    p.add_argument("--true-ssim", metavar="CSV",
                   help="known per-slice SSIM (columns index,true_ssim) drawn beside the "
                        "prediction, for a single input")
    p.add_argument("--series", metavar="UID",
                   help="the SeriesInstanceUID to assess in a DICOM folder that holds several "
                        "series (without it such a folder is refused, listing them)")
    p.add_argument("--frames", metavar="SEL",
                   help="4D inputs: the frames to assess, by index from 0: a range 0:10 "
                        "(frames 0-9), 5: or :3, a list 3,5,7, or a mix (default: all); "
                        "3D inputs are assessed whole")
    # archives (the archives wing): folders, BIDS datasets, shards, ratings
    p.add_argument("--shard", metavar="I/N",
                   help="assess only shard I of N (1..N; by a stable hash of each scan's "
                        "path): N jobs cover the archive once; merge with `motionssim group`")
    p.add_argument("--force", action="store_true",
                   help="folders: assess again the scans already assessed with this model")
    p.add_argument("--ratings", metavar="FILE",
                   help="folders: TSV/CSV of scan and rating 1/2/3 (MR-ART's "
                        "derivatives/scores.tsv) to add agreement to the group report")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an internal error instead of one line, and "
                        "what the image libraries printed while reading")


def run_assess(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .assessment.classes import ClinicalThresholds
    from .assessment.devices import resolve_device
    from .assessment.inference import assess_volume, check_tta, get_model, resolve_precision
    from .assessment.report import (
        check_writable,
        printable,
        read_true_ssim,
        report_name,
        write_report,
    )
    from .imaging.io import read_series
    from .imaging.series import Series, frame_chooser

    show_notes()
    if args.debug:  # the image libraries' output, captured by io while reading
        logging.basicConfig(level=logging.DEBUG, format="debug: %(message)s")
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if not 0.0 <= args.min_foreground <= 1.0:
            raise ValueError(f"--min-foreground must lie in [0, 1], got {args.min_foreground}")
        thresholds = ClinicalThresholds(args.good, args.sufficient)
        if args.true_ssim and len(args.inputs) != 1:
            raise ValueError("--true-ssim goes with exactly one input")
        if getattr(args, "frames", None) is not None:
            try:  # a malformed selection is refused before any work
                frame_chooser(args.frames)
            except ValueError as exc:
                raise ValueError(f"--frames: {exc}") from None
        check_writable(args.out)  # before any work: a report that cannot be written is lost
        device = resolve_device(args.device)
        resolve_precision(args.precision, device)  # bf16 where it is not native: refused
        check_tta(args.tta)
        model = get_model(args.model, device)  # once for every input, refused before any work
        truth = read_true_ssim(args.true_ssim) if args.true_ssim else None
    except (MotionSSIMError, ValueError, OSError) as exc:
        say(f"error: {exc}", sys.stderr)
        return 2
    from .archives.archive import archive_mode, run_archive
    from .archives.discovery import distinct_inputs

    args.inputs, twice = distinct_inputs(args.inputs)
    for dropped, kept in twice:
        say(f"note: {dropped} is {kept} again: assessed once", sys.stderr)
    if archive_mode(args):  # folders, BIDS datasets, --shard, --ratings: the group report
        return run_archive(args, model, device, thresholds)
    unusable, internal = 0, 0
    bar = tqdm(args.inputs, unit="input", disable=not args.progress or len(args.inputs) < 2,
               file=sys.stderr)
    for raw in bar:
        path = Path(raw)
        try:
            vol = read_series(path, series=args.series, frames=getattr(args, "frames", None))
            if isinstance(vol, Series):
                a, paths = _assess_series(args, path, vol, model, device, thresholds, truth)
                tqdm.write(printable(series_line(path, a, paths["json"])))
                continue
            a = assess_volume(vol, model=model, orientation=args.orientation, device=device,
                              batch_size=args.batch_size, thresholds=thresholds,
                              min_foreground=args.min_foreground, precision=args.precision,
                              tta=args.tta)
            paths = write_report(a, args.out, report_name(path), true_ssim=truth,
                                 source=str(path))
        except CheckpointError as exc:  # the model is broken: every input would fail alike
            bar.close()
            say(f"error: {exc}", sys.stderr)
            return 2
        except MotionSSIMError as exc:
            unusable += 1
            tqdm.write(printable(f"error: {_about(path, exc)}"), file=sys.stderr)
            continue
        except OSError as exc:  # the disk is full, the folder was removed meanwhile...
            unusable += 1
            tqdm.write(printable(f"error: {path}: cannot write the report "
                                 f"({exc.strerror or exc})"), file=sys.stderr)
            continue
        except Exception as exc:  # a bug: report it in one line and go on with the others
            if args.debug:
                raise
            internal += 1
            tqdm.write(printable(
                f"error: {path}: internal error ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                "rerun with --debug for the traceback"), file=sys.stderr)
            continue
        tqdm.write(printable(assess_line(path, a, paths["json"])))
    return 1 if internal else 2 if unusable else 0


def _assess_series(args: argparse.Namespace, path: Path, series, model, device, thresholds,
                   truth) -> tuple:
    """A 4D input: every frame chosen assessed (series.assess_series) and its report set."""
    from .assessment.frames import assess_series
    from .assessment.report import report_name, write_series_report
    from .base.errors import InputError

    if truth is not None:
        raise InputError(f"{path}: --true-ssim goes with a 3D input, this one has "
                         f"{series.n_input_frames} frames")
    a = assess_series(series, model=model, orientation=args.orientation, device=device,
                      batch_size=args.batch_size, thresholds=thresholds,
                      min_foreground=args.min_foreground, precision=args.precision,
                      tta=args.tta)
    return a, write_series_report(a, args.out, report_name(path), source=str(path))


def _training_cli():
    """The train and evaluate commands (training.training_cli), imported only for them."""
    # the submodule by its full name: a training module that cannot be imported is an
    # ImportError here even when the package already holds it as an attribute
    import MotionSSIMLib.training.training_cli as training_cli

    return training_cli


def _unavailable(command: str, exc: BaseException):
    def run(args: argparse.Namespace) -> int:
        print(f"error: the {command} command is not available in this installation "
              f"({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    return run


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser. The training commands' options are added (and training_cli imported) only
    when `argv` asks for train or evaluate, so that assess starts fast and works even where
    the training code or its dependencies are missing."""
    from .base.version import __version__

    parser = argparse.ArgumentParser(
        prog="motionssim",
        description="Reference-free per-slice SSIM prediction for motion artefacts in brain MR.",
        epilog="exit status: 0 all inputs done, 1 internal error, 2 unusable input or option "
               "(one line on stderr each)")
    parser.add_argument("--version", action="version", version=f"MotionSSIM {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("assess", help="assess volumes or images and write reports",
                       epilog=ASSESS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_assess_arguments(p)
    p.set_defaults(run=run_assess)
    g = sub.add_parser("group", help="merge the shards of an archive run into one group "
                       "report (CSV, HTML; agreement with --ratings)")
    from .archives import group_report

    group_report.add_group_arguments(g)
    g.set_defaults(run=group_report.run_group)

    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    helps = {"train": "train a model with on-the-fly synthetic motion",
             "evaluate": "evaluate checkpoints with the paper's test protocol"}
    for name, help_text in helps.items():
        if command != name:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        try:
            tcli = _training_cli()
            add_args = getattr(tcli, f"add_{name}_arguments")
            run = getattr(tcli, f"run_{name}")
        except (ImportError, AttributeError) as exc:
            # any arguments are accepted ("-" is no option prefix here): the error is the import
            p = sub.add_parser(name, help=help_text, prefix_chars="+", add_help=False)
            p.add_argument("rest", nargs="*")
            p.set_defaults(run=_unavailable(name, exc))
            continue
        p = sub.add_parser(name, help=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MotionSSIMError as exc:
        say(f"error: {exc}", sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
