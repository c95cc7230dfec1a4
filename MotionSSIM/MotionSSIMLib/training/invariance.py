"""Matrix invariance: one slice and one motion, stored at several matrices (issue 22, point 1).

The pair (clean slice, its corrupted copy) is made once at 256 px across the head, then stored
as a scanner or a reslicing would store it at another matrix: resampled to 64-512 px across the
head (anti-aliased when shrinking), or zero-padded into a larger matrix. The label
(`ssim.slice_label`) and a model's prediction should read the same at every matrix; how far they
move from their 256 px reading is what `measure` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..imaging import geometry
from ..simulation import kspace_motion, motion, ssim

MATRICES = (64, 96, 128, 180, 256, 512)  # pixels across the head
REFERENCE = 256
TOLERANCE = 0.03
TOLERANCE_LOW = 0.06  # below 128 px the stored copy has lost detail the comparison uses
PAD = ((0, 0), (40, 200), (130, 10))  # an off-centre zero-padding into a larger matrix
# The MNI152 2009c T1 template shipped with nilearn: real MR at 1 mm (evaluation data only)
MNI = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def template_slices(indices: Sequence[int] = (70, 90, 110)) -> np.ndarray:
    """Axial slices of the MNI152 T1 template in display orientation, scaled to [0, 1].
    FileNotFoundError when nilearn (which ships it) is not installed."""
    import importlib.util
    from pathlib import Path

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        raise FileNotFoundError("nilearn is not installed (pip install -r "
                                "requirements-eval.txt): it ships the MNI152 template")
    vol = np.asarray(nib.load(str(Path(spec.origin).parents[1] / MNI)).dataobj, np.float32)
    if max(indices) >= vol.shape[2] or min(indices) < 0:
        raise ValueError(f"slices: the template has {vol.shape[2]} axial slices")
    out = np.stack([np.rot90(vol[:, :, z]) for z in indices])
    return out / out.max()


def tolerance(matrix: int) -> float:
    """How far a reading at `matrix` px across the head may move from the 256 px one."""
    return TOLERANCE_LOW if matrix < 128 else TOLERANCE


def head_side(image: np.ndarray) -> int:
    """Pixels across the head (the larger side of its box)."""
    r0, r1, c0, c1 = geometry.head_box(image)
    return max(r1 - r0, c1 - c0)


def stored(images: np.ndarray, factor: float) -> np.ndarray:
    """(N, H, W) resampled by `factor` (anti-aliased when shrinking), as a scanner or a
    reslicing would store them at another matrix."""
    n, h, w = images.shape
    size = (max(8, round(h * factor)), max(8, round(w * factor)))
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    return F.interpolate(x, size=size, mode="bilinear", antialias=factor < 1,
                         align_corners=False)[:, 0].clamp_(min=0).numpy()


def make_pair(slices: np.ndarray, simulator: str, severity: float, seed: int = 7,
              side: int = REFERENCE) -> tuple[np.ndarray, np.ndarray, float]:
    """(N, H, W) slices -> (clean, corrupted, pixel size): the slices resampled so that the
    middle one's head is `side` px across, and their copies corrupted there by `simulator`
    ("kspace" or "torchio") at `severity`, seeded."""
    if simulator not in ("kspace", "torchio"):
        raise ValueError(f"simulator must be 'kspace' or 'torchio', got {simulator!r}")
    factor = side / head_side(slices[len(slices) // 2])
    clean = stored(slices, factor)
    x = torch.from_numpy(clean)[:, None]
    gen = torch.Generator().manual_seed(seed)
    sev = torch.full((len(x),), float(severity))
    if simulator == "kspace":
        moved = kspace_motion.kspace_motion(x, sev, gen)
    else:
        moved = motion.random_motion_batch(x, gen, p_torchio=1.0, severity=sev)
    corrupted = moved[:, 0].numpy() * clean.max(axis=(1, 2), keepdims=True)
    return clean, corrupted, 1.0 / factor


def readings(clean: np.ndarray, corrupted: np.ndarray, spacing: float,
             predict: Callable[[np.ndarray, tuple[float, float]], np.ndarray] | None = None,
             matrices: Sequence[int] = MATRICES) -> dict[str, dict[str, np.ndarray]]:
    """{"label" (and "prediction" with `predict`): {matrix name: (N,) readings}} for the pair
    stored at each matrix ("64" ... "512") and zero-padded ("padded"). `predict(corrupted,
    pixel_spacing)` returns a model's (N,) predictions."""
    out: dict[str, dict[str, np.ndarray]] = {"label": {}}
    if predict is not None:
        out["prediction"] = {}
    copies = {str(n): (stored(clean, n / REFERENCE), stored(corrupted, n / REFERENCE),
                       spacing * REFERENCE / n) for n in matrices}
    copies["padded"] = (np.pad(clean, PAD), np.pad(corrupted, PAD), spacing)
    for name, (a, b, sp) in copies.items():
        out["label"][name] = ssim.slice_label(a, b, (sp, sp))
        if predict is not None:
            out["prediction"][name] = np.asarray(predict(b, (sp, sp)), np.float64)
    return out


def measure(slices: np.ndarray,
            predict: Callable[[np.ndarray, tuple[float, float]], np.ndarray] | None = None,
            cases: Sequence[tuple[str, float]] = (("kspace", 0.3), ("kspace", 0.7),
                                                  ("torchio", 0.3), ("torchio", 0.7)),
            matrices: Sequence[int] = MATRICES) -> dict[str, Any]:
    """Per case (simulator, severity) and reading: the 256 px readings and each matrix's
    largest |reading - 256 px reading| with its tolerance; `passed` when every one is within."""
    result: dict[str, Any] = {"matrices": list(matrices), "cases": [], "passed": True}
    for simulator, severity in cases:
        clean, corrupted, spacing = make_pair(slices, simulator, severity)
        read = readings(clean, corrupted, spacing, predict, matrices)
        case: dict[str, Any] = {"simulator": simulator, "severity": severity}
        for kind, per_matrix in read.items():
            ref = per_matrix[str(REFERENCE)]
            moves = {name: float(np.abs(v - ref).max()) for name, v in per_matrix.items()
                     if name != str(REFERENCE)}
            bounds = {name: tolerance(int(name)) if name.isdigit() else 1e-3 if kind == "label"
                      else TOLERANCE for name in moves}
            ok = all(moves[k] <= bounds[k] for k in moves)
            case[kind] = {"at_256": ref.tolist(), "largest_move": moves, "bound": bounds,
                          "passed": ok}
            result["passed"] &= ok
        result["cases"].append(case)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The largest move from the 256 px reading per case, matrix and reading."""
    names = [str(n) for n in result["matrices"] if n != REFERENCE] + ["padded"]
    lines = ["| simulator | severity | reading | at 256 px (mean) | "
             + " | ".join(f"{n} px" if n.isdigit() else n for n in names) + " | within |",
             "|---|---|---|---|" + "---|" * len(names) + "---|"]
    for case in result["cases"]:
        for kind in ("label", "prediction"):
            if kind not in case:
                continue
            c = case[kind]
            cells = " | ".join(f"{c['largest_move'][n]:.3f}" for n in names)
            lines.append(f"| {case['simulator']} | {case['severity']} | {kind} | "
                         f"{np.mean(c['at_256']):.3f} | {cells} | "
                         f"{'yes' if c['passed'] else 'no'} |")
    return "\n".join(lines) + "\n"


def acquired(slices: np.ndarray,
             predict: Callable[[np.ndarray, tuple[float, float]], np.ndarray],
             cases: Sequence[tuple[str, float]] = (("kspace", 0.3), ("kspace", 0.7),
                                                   ("torchio", 0.3), ("torchio", 0.7)),
             matrices: Sequence[int] = (64, 128, 256), seeds: Sequence[int] = (0, 1, 2, 3),
             ) -> dict[str, Any]:
    """Motion acquired at each matrix (the slices resampled to it first, then corrupted there,
    as a scanner acquiring that matrix has it), against `measure`'s motion stored after the
    fact. Per case and matrix: the mean label and the prediction's bias (predicted - label)
    and residual sd over the slices and `seeds`. Descriptive: no bound."""
    result: dict[str, Any] = {"matrices": list(matrices), "seeds": list(seeds), "cases": []}
    for simulator, severity in cases:
        per: dict[str, dict[str, float]] = {}
        for n in matrices:
            labels, preds = [], []
            for seed in seeds:
                clean, corrupted, spacing = make_pair(slices, simulator, severity, seed, n)
                labels.append(ssim.slice_label(clean, corrupted, (spacing, spacing)))
                preds.append(np.asarray(predict(corrupted, (spacing, spacing)), np.float64))
            label = np.concatenate(labels)
            residual = np.concatenate(preds) - label
            per[str(n)] = {"label": float(label.mean()), "bias": float(residual.mean()),
                           "residual_sd": float(residual.std())}
        result["cases"].append({"simulator": simulator, "severity": severity, "matrices": per})
    return result


def acquired_markdown(result: dict[str, Any]) -> str:
    """Label and bias (sd) per case and acquired matrix."""
    names = [str(n) for n in result["matrices"]]
    lines = ["| simulator | severity | " + " | ".join(f"{n} px: label / bias (sd)" for n in names)
             + " |", "|---|---|" + "---|" * len(names)]
    for case in result["cases"]:
        cells = " | ".join(f"{m['label']:.3f} / {m['bias']:+.3f} ({m['residual_sd']:.3f})"
                           for m in (case["matrices"][n] for n in names))
        lines.append(f"| {case['simulator']} | {case['severity']} | {cells} |")
    return "\n".join(lines) + "\n"
