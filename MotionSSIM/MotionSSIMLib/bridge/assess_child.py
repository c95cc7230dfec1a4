"""The child process of an assessment started from Slicer (jobs.ChildRun):

    PythonSlicer -m MotionSSIMLib.bridge.assess_child INPUT.npz RESULT.json [options]

Reads the Volume or Series that job_files.write_input saved, runs the engine on it exactly as
the command line does (inference.assess_volume / series.assess_series, the model loaded once),
prints its progress as lines the parent reads without blocking, and writes the assessment (or
the error that stopped it) with job_files.write_result / write_error.

Exit status: 0 done, 2 an error the user can act on (recorded in RESULT.json), anything else
a crash (the traceback is in the output; a signal when killed, e.g. for lack of memory).
"""

from __future__ import annotations

import argparse
import sys

PROGRESS_PREFIX = "@motionssim progress "  # + "done total"
STAGE_PREFIX = "@motionssim stage "  # + a few words


def say(line: str) -> None:
    print(line, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="assess_child", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input")
    p.add_argument("result")
    p.add_argument("--model", default=None)
    p.add_argument("--orientation", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--good", type=float, default=0.85)
    p.add_argument("--sufficient", type=float, default=0.60)
    p.add_argument("--min-foreground", type=float, default=0.05)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ..base.errors import MotionSSIMError
    from . import job_files

    try:
        from ..assessment.classes import ClinicalThresholds
        from ..assessment.devices import resolve_device
        from ..imaging.geometry import Volume

        say(STAGE_PREFIX + "loading the model")
        data = job_files.read_input(args.input)
        thresholds = ClinicalThresholds(good=args.good, sufficient=args.sufficient)
        device = resolve_device(args.device)
        if isinstance(data, Volume):
            from ..assessment.inference import assess_volume as engine
        else:
            from ..assessment.frames import assess_series as engine
        assessment = engine(data, model=args.model, orientation=args.orientation,
                            device=device, batch_size=args.batch_size, thresholds=thresholds,
                            min_foreground=args.min_foreground,
                            progress=lambda done, total: say(f"{PROGRESS_PREFIX}{done} {total}"))
        assessment.summary["device"] = str(device)  # what "auto" chose, kept with the results
        job_files.write_result(args.result, assessment)
    except MotionSSIMError as exc:  # the input, the model file, a setting: one line
        job_files.write_error(args.result, exc)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    say(STAGE_PREFIX + "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
