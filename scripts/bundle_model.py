"""Bundle a trained checkpoint as the default model, with its model card.

    .venv/bin/python scripts/bundle_model.py --run RUN_DIR --evaluation EVAL_DIR \
        [--out MotionSSIM/Resources/Models]

Writes OUT/motionssim_resnet18.safetensors (fp16 weights + JSON metadata),
OUT/motionssim_resnet18.json (the metadata as a file) and OUT/MODEL_CARD.md, from
RUN_DIR/best.safetensors, RUN_DIR/log.json and the evaluation report EVAL_DIR/report.json
(`python -m MotionSSIMLib evaluate ... --out EVAL_DIR`). Optional: --phases FILE (Markdown
that describes a training in several phases, put under "Schedule"), --real-scans JSON (the
output of scripts/check_real_scans.py). The card also gives the error on the bundled sample.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from MotionSSIMLib.checkpoint import DEFAULT_MODEL_NAME, load_checkpoint, save_checkpoint
from MotionSSIMLib.trainer import RUN_KEYS

TRAINED_ON = (
    "Synthetic subjects only (MotionSSIMLib.synth, SynthSeg-style, from the MNI152 2009c "
    "template and tissue maps shipped with nilearn): random deformation, random per-tissue "
    "contrast (T1, T2, PD, FLAIR, DWI/EPI-like and fully random), bias field, Rician noise, "
    "2D multi-slice (3-6 mm) and 3D acquisitions in random planes, random field of view. "
    "Slices corrupted on the fly by TorchIO motion and the k-space line simulator (50/50), "
    "with the paper's contrast augmentation."
)
LIMITS = [
    "Trained on one synthetic anatomy (the MNI152 average, warped): no lesions, tumours, "
    "atrophy, post-surgical changes or children.",
    "Only simulated rigid in-plane motion; real through-plane motion, pulsation, flow, EPI "
    "ghosts, Gibbs ringing and parallel-imaging artefacts were never seen.",
    "Not validated on real motion-corrupted clinical scans: use the prediction as a triage "
    "aid, never as a diagnosis; a radiographer decides on a re-scan.",
    "Trained on CPU for a shorter schedule than the paper's (see Schedule): it does not reach "
    "the paper's accuracy; the evaluation above gives what it reaches.",
    "Its bias depends on the input (compare the bundled sample with the real scans above): "
    "read the chart as a ranking of the slices of one scan, and treat a slice near a class "
    "boundary as uncertain.",
    "Slices at the edge of the field of view (little foreground) are unreliable and are "
    "flagged empty by the engine.",
]


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--evaluation", type=Path, required=True)
    ap.add_argument("--checkpoint", default="best.safetensors")
    ap.add_argument("--out", type=Path, default=Path("MotionSSIM/Resources/Models"))
    ap.add_argument("--phases", type=Path, help="Markdown: the phases of the training")
    ap.add_argument("--real-scans", type=Path, help="JSON from scripts/check_real_scans.py")
    args = ap.parse_args(argv)

    loaded = load_checkpoint(args.run / args.checkpoint)
    log = json.loads((args.run / "log.json").read_text(encoding="utf-8"))
    report = json.loads((args.evaluation / "report.json").read_text(encoding="utf-8"))
    model_figs = next(iter(report["models"].values()))["figures"]
    rows = log.get("history") or []
    last = rows[-1] if rows else {}
    meta = dict(loaded.metadata)
    # The settings that define the run (on resume the machine settings are those of the last
    # command line, so they say nothing about the model); where its first weights came from.
    settings = log.get("settings", {})
    meta["settings"] = {k: settings[k] for k in (*RUN_KEYS, "amp", "init_from")
                        if settings.get(k) is not None}
    world = int(log.get("world_size") or 1)
    meta["trained_device"] = str(log.get("device", "?")) + (f" x {world}" if world > 1 else "")
    data = meta.get("training_data", {})
    for split in data.values():  # keep counts, not the long file lists
        if isinstance(split, dict):
            split.pop("files", None)
    meta.update(
        name="MotionSSIM default ResNet-18",
        trained_on=TRAINED_ON,
        training_time_s=last.get("elapsed_s"),
        epochs_completed=last.get("epoch"),
        samples_seen=int(last.get("step") or 0) * int(meta["settings"].get("batch_size", 0)),
        evaluation=evaluation_summary(model_figs, report["protocol"]),
        known_limits=LIMITS,
        sample_error=sample_error(loaded.model),
    )
    if args.real_scans:
        meta["real_scans"] = json.loads(args.real_scans.read_text(encoding="utf-8"))["volumes"]
    if args.phases:
        meta["phases"] = args.phases.read_text(encoding="utf-8").strip()
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / DEFAULT_MODEL_NAME
    save_checkpoint(target, loaded.model, meta, dtype=torch.float16)
    (args.out / DEFAULT_MODEL_NAME.replace(".safetensors", ".json")).write_text(
        json.dumps(meta, indent=2, default=str), encoding="utf-8")
    (args.out / "MODEL_CARD.md").write_text(model_card(meta, model_figs, log), encoding="utf-8")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB) and its model card")


def sample_error(model: torch.nn.Module) -> dict:
    """Mean and largest absolute error on the bundled sample's non-empty slices."""
    import numpy as np

    from MotionSSIMLib.checkpoint import default_model_path
    from MotionSSIMLib.inference import assess_volume
    from MotionSSIMLib.io import read_volume
    from MotionSSIMLib.report import read_true_ssim

    samples = default_model_path().parents[1] / "Samples"
    truth = read_true_ssim(samples / "sample_t2_motion_true_ssim.csv")
    a = assess_volume(read_volume(samples / "sample_t2_motion.nii.gz"), model=model,
                      device="cpu")
    err = np.array([r.ssim - truth[r.index] for r in a.records if not r.empty])
    return {"slices": int(err.size), "mae": float(np.abs(err).mean()),
            "bias": float(err.mean()), "max_abs": float(np.abs(err).max())}


def evaluation_summary(figs: dict, protocol: dict) -> dict:
    """The figures a model card needs, from an evaluation report's figures."""
    reg = figs["regression"]
    out = {k: reg[k] for k in ("n", "residual_mean", "residual_sd", "mae", "rmse", "pearson_r")}
    out["linear_fit"] = reg["linear_fit"]
    for n, table in figs["classification"].items():
        out[f"accuracy_{n}_classes"] = table["accuracy"]
    out["accuracy_clinical"] = figs["clinical"]["accuracy"]
    out["cohen_kappa_clinical"] = figs["clinical"].get("cohen_kappa")
    out["protocol"] = {k: protocol.get(k) for k in ("n", "seed", "contrast_augmentation",
                                                    "p_torchio", "slices")}
    return out


def model_card(meta: dict, figs: dict, log: dict) -> str:
    ev = meta["evaluation"]
    lines = [
        "# MotionSSIM default model (ResNet-18)",
        "",
        "Predicts, for one 2D MR slice fitted to 1 x 256 x 256, the SSIM it would have against "
        "a motion-free version of itself (DESIGN.md label: skimage `structural_similarity`, "
        "7x7 window, data_range 1, both images min-max normalised).",
        "",
        "## Training data",
        meta["trained_on"],
        "",
        "```json",
        json.dumps(meta.get("training_data", {}), indent=1, default=str)[:3000],
        "```",
        "",
        "## Schedule",
        *([meta["phases"], "", "Settings of the last phase:"] if meta.get("phases") else []),
        f"- settings: `{json.dumps(meta['settings'], default=str)}`",
        f"- samples seen: {meta.get('samples_seen')}",
        f"- epochs completed: {meta.get('epochs_completed')}, training time: "
        f"{_fmt((meta.get('training_time_s') or 0) / 3600, 2)} h on {meta['trained_device']}"
        f"{' (mixed precision)' if meta['settings'].get('amp') else ''}",
        "",
        "## Evaluation on held-out synthetic test subjects",
        "The paper's protocol (`python -m MotionSSIMLib evaluate`): random corrupted slices from "
        "the held-out test subjects (different deformation seeds), drawn as in training. Full "
        "report: `evaluation/` beside this card.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in ("residual_mean", "residual_sd", "mae", "rmse", "pearson_r"):
        lines.append(f"| {key} | {_fmt(ev[key])} |")
    lines.append(f"| linear fit (pred = a * true + b) | a = {_fmt(ev['linear_fit']['slope'], 3)}, "
                 f"b = {_fmt(ev['linear_fit']['intercept'], 3)} |")
    for key, val in ev.items():
        if key.startswith(("accuracy", "cohen")):
            lines.append(f"| {key.replace('_', ' ')} | {_fmt(val, 3)} |")
    lines.append(f"| slices (seed {ev['protocol']['seed']}) | {ev['n']} |")
    lines += ["", "Targets (issue): residual sd <= 0.02, 3-class accuracy >= 0.95. The paper's "
              "best model: residual -0.0009 +- 0.0139; accuracies 0.97 / 0.95 / 0.89.", ""]
    se = meta["sample_error"]
    lines += ["## On the bundled sample", "",
              f"`Samples/sample_t2_motion.nii.gz` ({se['slices']} non-empty axial slices, 5 mm): "
              f"mean absolute error {se['mae']:.3f}, bias {se['bias']:+.3f}, largest error "
              f"{se['max_abs']:.3f} (target: mean absolute error <= 0.05).", ""]
    if meta.get("real_scans"):
        lines += ["## On real scans (not synthetic subjects)", "",
                  "`scripts/check_real_scans.py`: real MR volumes shipped inside the installed "
                  "wheels, every non-empty axial slice clean once and with synthetic motion "
                  "three times (both simulators, severity uniform on [0, 1]).", "",
                  "| volume | slices | samples | MAE | bias | residual sd | clean slices read "
                  "| 3-class acc. | clinical acc. |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in meta["real_scans"].items():
            lines.append(f"| {name} | {r['slices']} | {r['samples']} | {r['mae']:.3f} | "
                         f"{r['bias']:+.3f} | {r['residual_sd']:.3f} | "
                         f"{r['clean_mean_prediction']:.3f} | {r['accuracy_3']:.3f} | "
                         f"{r['accuracy_clinical']:.3f} |")
        lines += ["", "epi: nibabel's `example4d.nii.gz` (a real 2D EPI/BOLD scan, 2 x 2 x "
                  "2.2 mm, first volume). mni_t1: the MNI152 2009 T1 template (an average of "
                  "real T1 scans) at 1 mm.", ""]
    lines += ["## Known limits"] + [f"- {x}" for x in meta["known_limits"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
