"""How a model does on real scans, not synthetic subjects: the MR images that ship inside the
installed wheels (no download), with synthetic motion of known SSIM.

    .venv/bin/python scripts/check_real_scans.py [--model FILE] [--out DIR]

The volumes:
- ``epi``: nibabel's ``example4d.nii.gz``, a real 2D EPI/BOLD scan (128 x 96 x 24, 2 x 2 x 2.2
  mm; its first volume). EPI/DWI-like contrast, low resolution, distortion, real noise.
- ``mni_t1``: the MNI152 2009 T1 template in nilearn (1 mm), an average of real T1 scans: real
  T1 intensities and texture (the synthetic subjects only take its tissue maps).
Every non-empty slice of the acquisition plane (axial for both) is used clean once and
corrupted a few times (both simulators, severity uniform on [0, 1], seeded); the label is the
DESIGN.md SSIM. Prints MAE, bias, residual sd and the 3-class / clinical accuracy per volume
and writes them to OUT/real_scans.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from MotionSSIMLib import classes, data, geometry, inference, motion, ssim, synth

REPEATS = 3  # corrupted copies of each slice


def real_volumes() -> dict[str, geometry.Volume]:
    """The real MR volumes shipped in the installed wheels, as Volumes."""
    vols = {}
    epi = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    t1 = synth.template_dir() / synth.TEMPLATE_FILES["t1"]
    for name, path, frame in (("epi", epi, 0), ("mni_t1", t1, None)):
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32)
        if frame is not None:
            arr = arr[..., frame]
        aff = np.asarray(img.affine, float)
        spacing = np.linalg.norm(aff[:3, :3], axis=0)
        vols[name] = geometry.volume(np.transpose(arr, (2, 1, 0)), spacing, aff[:3, :3] / spacing,
                                     tuple(aff[:3, 3]), name=str(path))
    return vols


def check_volume(vol: geometry.Volume, model: str | None, seed: int) -> dict:
    """Metrics of `model` on the clean and corrupted non-empty slices of `vol`."""
    stack = geometry.extract_slices(vol, "axial")
    keep = data.slice_candidates(stack, "all")
    clean = torch.from_numpy(geometry.to_model_input(stack.images[keep], stack.pixel_spacing))
    clean = clean[:, None]
    gen = torch.Generator().manual_seed(seed)
    images, labels = [clean], [torch.ones(len(clean))]
    for _ in range(REPEATS):
        moved = motion.random_motion_batch(clean, gen, p_torchio=0.5)
        images.append(moved)
        labels.append(ssim.ssim_label(clean, moved).float())
    x = torch.cat(images)[:, 0].numpy()
    true = torch.cat(labels).numpy()
    pred = inference.predict_slices(x, model=model, device="cpu")
    res = pred - true
    n_clean = len(clean)
    clin = classes.clinical_class
    return {
        "slices": int(n_clean), "samples": int(len(true)),
        "mae": float(np.abs(res).mean()), "bias": float(res.mean()),
        "residual_sd": float(res.std()),
        "clean_mean_prediction": float(pred[:n_clean].mean()),
        "accuracy_3": float((classes.uniform_class(pred, 3) == classes.uniform_class(true, 3))
                            .mean()),
        "accuracy_clinical": float((clin(pred) == clin(true)).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--out", type=Path, default=Path("out/real_scans"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = {name: check_volume(vol, args.model, args.seed)
               for name, vol in real_volumes().items()}
    print(f"{'volume':8} {'slices':>6} {'samples':>7} {'MAE':>6} {'bias':>7} {'sd':>6} "
          f"{'clean':>6} {'acc3':>5} {'clin':>5}")
    for name, r in results.items():
        print(f"{name:8} {r['slices']:6d} {r['samples']:7d} {r['mae']:6.3f} {r['bias']:+7.3f} "
              f"{r['residual_sd']:6.3f} {r['clean_mean_prediction']:6.3f} "
              f"{r['accuracy_3']:5.3f} {r['accuracy_clinical']:5.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_scans.json").write_text(json.dumps(
        {"model": args.model or "bundled", "seed": args.seed, "repeats": REPEATS,
         "volumes": results}, indent=2), encoding="utf-8")
    print(f"written: {args.out / 'real_scans.json'}")


if __name__ == "__main__":
    main()
