"""Screenshots/MotionSSIM.png, the Extensions Index picture: what the MotionSSIM module shows for
the bundled sample (a slice view with the verdict frame and the per-slice SSIM chart coloured by
class), drawn with the engine and matplotlib, not captured from the Slicer application.

    python scripts/make_screenshot.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from MotionSSIMLib.assessment.classes import CLASS_COLOURS, CLINICAL_NAMES, ClinicalThresholds
    from MotionSSIMLib.assessment.inference import assess_volume
    from MotionSSIMLib.imaging.geometry import extract_slices
    from MotionSSIMLib.imaging.io import read_volume

    colors = {number: CLASS_COLOURS[name] for number, name in CLINICAL_NAMES.items()}
    thresholds = ClinicalThresholds()
    vol = read_volume(ROOT / "MotionSSIM" / "Resources" / "Samples" / "sample_t2_motion.nii.gz")
    a = assess_volume(vol, device="cpu")
    stack = extract_slices(vol, a.orientation)
    records = [r for r in a.records if not r.empty]
    worst = min(records, key=lambda r: r.ssim)
    best = max(records, key=lambda r: r.ssim)

    fig = plt.figure(figsize=(12, 5), dpi=100, facecolor="#202020")
    for i, r in enumerate((best, worst)):
        ax = fig.add_axes([0.01 + 0.245 * i, 0.08, 0.23, 0.84])
        image = stack.images[list(stack.indices).index(r.index)]
        ax.imshow(image, cmap="gray")
        ax.add_patch(plt.Rectangle((0, 0), image.shape[1] - 1, image.shape[0] - 1, fill=False,
                                   lw=6, ec=colors[r.clinical_class]))
        ax.set_title(f"slice {r.index}: SSIM {r.ssim:.2f}, {CLINICAL_NAMES[r.clinical_class]}",
                     color="white", fontsize=11)
        ax.axis("off")
    ax = fig.add_axes([0.55, 0.14, 0.43, 0.74], facecolor="white")
    x = np.array([r.index for r in a.records])
    y = np.array([r.ssim for r in a.records])
    ax.plot(x, y, color="0.55", lw=2)
    for c in (1, 2, 3):
        sel = [r for r in records if r.clinical_class == c]
        ax.scatter([r.index for r in sel], [r.ssim for r in sel], color=colors[c], s=40,
                   label=f"{CLINICAL_NAMES[c]} slices", zorder=3)
    ax.axhline(thresholds.good, color=colors[1], ls="--", lw=1)
    ax.axhline(thresholds.sufficient, color=colors[3], ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"{a.orientation} slice index")
    ax.set_ylabel("predicted SSIM")
    ax.set_title(f"MotionSSIM: {a.summary['verdict']} (mean SSIM {a.summary['mean_ssim']:.2f})")
    ax.legend(loc="lower left", fontsize=9)
    for label in ax.get_xticklabels() + ax.get_yticklabels():
        label.set_color("white")
    ax.xaxis.label.set_color("white")
    ax.yaxis.label.set_color("white")
    ax.title.set_color("white")
    out = ROOT / "Screenshots" / "MotionSSIM.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, facecolor=fig.get_facecolor())
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
