"""Make the bundled sample volume: a synthetic T2-like subject, thick axial slices, with motion
in some slices and not others, and its true per-slice SSIM beside it.

    .venv/bin/python scripts/make_sample.py --out MotionSSIM/Resources/Samples

Each slice of a 2D multi-slice acquisition is acquired on its own, so motion is simulated per
slice with the batched k-space simulator at the slice's native matrix. The true SSIM follows the
label contract (docs/how-it-works.md, "The SSIM label"): clean and corrupted slice, in display
orientation, both cut to the clean slice's head window and resampled to the 256 x 256 model input
(`ssim.slice_label`).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from MotionSSIMLib.imaging import geometry
from MotionSSIMLib.simulation import kspace_motion, ssim
from MotionSSIMLib.synthesis import subject

# Per-slice severities: clean stretches, a few mild, moderate and severe slices.
PATTERN = [0.0, 0.0, 0.0, 0.15, 0.0, 0.3, 0.0, 0.0, 0.5, 0.65, 0.0, 0.85, 1.0, 0.0, 0.4, 0.0]


def corrupt_slices(vol: geometry.Volume, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (corrupted array, severity per k, true SSIM per k) for motion along k slices."""
    arr = vol.array.astype(np.float32)
    n = arr.shape[0]
    severity = np.array([PATTERN[k % len(PATTERN)] for k in range(n)], dtype=np.float32)
    gen = torch.Generator().manual_seed(seed)
    clean = torch.from_numpy(arr)[:, None]
    lo = clean.amin(dim=(2, 3), keepdim=True)
    hi = clean.amax(dim=(2, 3), keepdim=True)
    scaled = (clean - lo) / (hi - lo).clamp_min(1e-6)
    moved = kspace_motion.kspace_motion(scaled, torch.from_numpy(severity), generator=gen)
    keep = torch.from_numpy(severity == 0)[:, None, None, None]
    moved = torch.where(keep, scaled, moved)
    corrupted = (moved * (hi - lo) + lo)[:, 0].numpy()
    moved_vol = geometry.volume(corrupted, vol.spacing, vol.directions, vol.origin)
    return corrupted, severity, true_ssim(vol, moved_vol, severity)


def true_ssim(clean: geometry.Volume, corrupted: geometry.Volume,
              severity: np.ndarray) -> np.ndarray:
    """The label of each axial slice: SSIM between the clean and the corrupted slice, both cut
    to the clean slice's model-input window (the window is the clean slice's, as in training,
    where it is fixed before the motion). Slices without motion are 1 exactly."""
    a_st = geometry.extract_slices(clean, "axial")
    b_st = geometry.extract_slices(corrupted, "axial")
    true = ssim.slice_label(a_st.images, b_st.images, a_st.pixel_spacing)
    true[np.asarray(severity) == 0] = 1.0
    return true


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("MotionSSIM/Resources/Samples"))
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--name", default="sample_t2_motion")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    vol = subject.synth_subject(rng, kind="t2", isotropic=True)
    vol = subject.resample(vol, spacing=(0.9, 0.9, 5.0), rng=rng)
    corrupted, severity, true = corrupt_slices(vol, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    affine = vol.ijk_to_ras()
    scale = 3000.0 / max(float(corrupted.max()), 1e-6)
    data = np.clip(np.round(corrupted * scale), 0, 32767).astype(np.int16)
    img = nib.Nifti1Image(np.transpose(data, (2, 1, 0)), affine)  # nibabel wants [i, j, k]
    img.header.set_xyzt_units("mm")
    nib.save(img, args.out / f"{args.name}.nii.gz")
    with open(args.out / f"{args.name}_true_ssim.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "true_ssim", "severity"])
        for k, (t, s) in enumerate(zip(true, severity, strict=True)):
            w.writerow([k, f"{t:.6f}", f"{s:.2f}"])
    (args.out / f"{args.name}.json").write_text(json.dumps({
        "description": "Synthetic T2-like subject (MotionSSIMLib.synthesis), motion per axial "
                       "slice by the k-space line simulator; true SSIM per slice (DESIGN.md "
                       "label).",
        "seed": args.seed, "shape_kji": list(data.shape), "spacing_ijk_mm": list(vol.spacing),
        "slices_with_motion": int((severity > 0).sum()),
    }, indent=2), encoding="utf-8")
    print(f"wrote {args.out / (args.name + '.nii.gz')}: {data.shape}, true SSIM "
          f"{true.min():.3f}..{true.max():.3f}")


if __name__ == "__main__":
    main()
