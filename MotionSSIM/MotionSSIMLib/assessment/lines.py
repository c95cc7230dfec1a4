"""The one-line messages of the command line: a line printed whatever the file names hold
(`say`), and the verdict line of a volume (`assess_line`) and of a 4D series (`series_line`).
"""

from __future__ import annotations

import sys
from pathlib import Path


def say(text: object, file=None) -> None:
    """Print one line, printable whatever the file names hold (report.printable)."""
    from .report import printable

    print(printable(text), file=file or sys.stdout, flush=True)


def series_line(path: Path, a, report: Path) -> str:
    """INPUT: verdict (N frames: g good / s sufficient / i insufficient; worst frame F slice
    K SSIM x; mean SSIM m, min y over all frames) -> report."""
    s = a.summary
    fc = s["frame_counts"]
    worst = s["worst_slices"][0]
    unassessed = f", {fc['unassessed']} without assessable slices" if fc["unassessed"] else ""
    return (f"{path}: {s['verdict']} ({s['n_frames']} frames: {fc['good']} good / "
            f"{fc['sufficient']} sufficient / {fc['insufficient']} insufficient{unassessed}; "
            f"worst frame {worst['frame']} {a.orientation} slice {worst['index']} "
            f"SSIM {worst['ssim']:.3f}; mean SSIM {s['mean_ssim']:.3f} over all frames) "
            f"-> {report}")


def assess_line(path: Path, a, report: Path) -> str:
    """INPUT: verdict (mean SSIM x, min y, n good / n sufficient / n insufficient, e empty)."""
    s = a.summary
    c = s["counts"]
    stats = (f"mean SSIM {s['mean_ssim']:.3f}, min {s['min_ssim']:.3f}, "
             if s["n_assessed"] else "")
    return (f"{path}: {s['verdict']} ({stats}{c['good']} good / {c['sufficient']} sufficient / "
            f"{c['insufficient']} insufficient, {c['empty']} empty {a.orientation} slices) "
            f"-> {report}")
