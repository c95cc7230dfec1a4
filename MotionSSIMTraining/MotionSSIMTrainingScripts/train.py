"""Train a MotionSSIM model without a user interface.

    python MotionSSIMTraining/MotionSSIMTrainingScripts/train.py --data data/synth/split.json --out runs/r18
    Slicer --no-main-window --python-script \
        MotionSSIMTraining/MotionSSIMTrainingScripts/train.py -- --data data/synth/split.json --out runs/r18

This file lives in a sub-folder of the module folder because Slicer's module factory loads every
.py file directly in a module folder as a module ("class train was not found" at start-up). The
installed extension keeps the same layout: <scripted modules>/MotionSSIMTrainingScripts/train.py.

Same arguments as `python -m MotionSSIMLib train` (see --help). Exit status: 0 done, 3 stopped
early on request (a `stop` file in the output folder, Ctrl-C or SIGTERM; continue with
--resume), 2 an error of the data or settings (one line), 1 a crash (the traceback is printed).

Inside Slicer (`--python-script`) Slicer does not exit by itself after the script (only `-c`
or a bare script argument set runPythonAndExit): every path, exceptions included, ends in
slicer.util.exit(status).
"""

from __future__ import annotations

import os
import sys


def _in_slicer() -> bool:
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def _make_engine_importable() -> None:
    """MotionSSIMLib lives in ../../MotionSSIM in the source tree, in .. (the scripted-modules
    folder) in the installed extension."""
    try:
        import MotionSSIMLib  # noqa: F401
        return
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "..", "..", "MotionSSIM"), os.path.join(here, "..")):
        folder = os.path.normpath(folder)
        if os.path.isdir(os.path.join(folder, "MotionSSIMLib")) and folder not in sys.path:
            sys.path.insert(0, folder)
            return


EXIT_CRASHED = 1  # an unexpected exception (Python's own status for one)


def main(argv: list[str] | None = None) -> int:
    """Train; the exit status (module docstring). Never raises."""
    if argv is None:
        argv = sys.argv[1:]
        if argv[:1] == ["--"]:  # Slicer passes everything after its own "--"
            argv = argv[1:]
    try:
        _make_engine_importable()
        from MotionSSIMLib.training.training_cli import train_main

        return train_main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException:  # a crash: its traceback, and a status that is not "stopped"
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_CRASHED


def _run_as_script() -> bool:
    # `python train.py` and Slicer's --python-script run this file as __main__; importing it
    # as a module (e.g. from the MotionSSIMTraining module) must not start a training.
    name = globals().get("__name__")
    return name == "__main__" or (_in_slicer() and name not in sys.modules)


if _run_as_script():
    status = main()
    if _in_slicer():
        import slicer

        slicer.util.exit(status)
    else:
        sys.exit(status)
