"""The paper's test protocol: predicted vs true SSIM on N seeded corrupted test slices.

`test_set` draws the N corrupted test slices exactly as in training (random volume,
orientation, central non-empty slice, contrast augmentation, motion), seeded, in fixed chunks:
the same seed gives the same slices, so models are compared on identical data.
`evaluate_checkpoints` runs several checkpoints on one test set, computes every figure
(`evaluation_figures`) and writes the report (`evaluation_report`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..assessment.classes import ClinicalThresholds
from ..base.errors import InputError
from ..base.settings import parse_families
from .evaluation_figures import CLASS_COUNTS, evaluate_predictions
from .evaluation_report import write_report

__all__ = ["Evaluation", "evaluate_checkpoints", "test_set"]


@dataclass
class Evaluation:
    """What `evaluate_checkpoints` measured: the report (every figure, as in report.json) and
    the SSIMs behind it."""

    report: dict[str, Any]
    true: np.ndarray                     # (n,) true SSIM of the test slices
    predictions: dict[str, np.ndarray]   # model name -> (n,) predicted SSIM, in `true` order


# ----------------------------------------------------------------------------- test data


def test_set(paths: Sequence[str | Path], n: int = 10000, seed: int = 0, input_size: int = 256,
             contrast: bool = True, p_torchio: float = 0.5, device: Any = "cpu",
             workers: int = 0, chunk: int = 100,
             cache_mb: int = 2048, slices: str = "central",
             acquisition: bool = True, families: str | None = None,
             storage: float = 0.0) -> Iterator[tuple[Any, Any]]:
    """The N corrupted test slices drawn from the test volumes as in training, in chunks of
    `chunk`: yields (images (c, 1, S, S), labels (c,)) on `device`. Deterministic for a given
    (paths, n, seed, input_size, contrast, p_torchio, chunk, slices, families); `slices` as in
    `data.slice_candidates` (the paper's central half by default). `families`: the motion
    families (`settings.parse_families`; one name evaluates one family: the slices, contrasts
    and severities stay those of the other families for the same seed). `storage`: the share
    stored at a lower matrix after the acquisition (`augment.apply_storage`)."""
    from ..simulation.pipeline import fixed_set
    from .data import STREAMS, SliceDataset

    ds = SliceDataset(list(paths), seed=seed, input_size=input_size,
                      cache_bytes=int(cache_mb) << 20, slices=slices)
    yield from fixed_set(ds, STREAMS["test"], n, seed, contrast, p_torchio, device,
                         chunk=chunk, workers=workers, acquisition=acquisition,
                         families=families, storage=storage)


test_set.__test__ = False  # type: ignore[attr-defined]  # pytest: not a test


def _input_size(meta: dict[str, Any]) -> int:
    """The slice size a checkpoint was trained at (256 unless a test trained smaller)."""
    size = meta.get("train_input_size") or meta.get("input_size") or 256
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size)


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.stem}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i + 1}:{nm}" for i, nm in enumerate(names)]
    return names


def evaluate_checkpoints(
    checkpoints: Sequence[str | Path],
    test_paths: Sequence[str | Path],
    out_dir: str | Path,
    n: int = 10000,
    seed: int = 0,
    contrast: bool = True,
    p_torchio: float = 0.5,
    device: str = "auto",
    batch_size: int = 100,
    workers: int = 0,
    thresholds: ClinicalThresholds | None = None,
    progress: bool = True,
    report: Any = None,
    slices: str = "central",
    acquisition: bool = True,
    families: str | None = None,
    storage: float = 0.0,
) -> dict[str, Any]:
    """Evaluate several checkpoints on one seeded test set and write the report to `out_dir`.
    `slices`: the test slices, "central" half (the paper's protocol) or "all" non-empty ones.
    `families`: the motion families of the test slices (default: TorchIO's by p_torchio and
    the k-space lines; e.g. "epi" evaluates on EPI artefacts alone). `storage`: the share of
    test slices stored at a lower matrix after the acquisition (`augment.apply_storage`).
    Returns an `Evaluation`: the report (as in report.json) and the true and predicted SSIMs."""
    import torch

    from ..assessment.checkpoint import load_checkpoint
    from ..assessment.devices import resolve_device
    from ..assessment.model import forward_outputs
    from .data import check_volumes, summarize_volumes
    from .uncertainty_head import uncertainty_figures

    if not checkpoints:
        raise InputError("no checkpoint to evaluate")
    try:
        parse_families(families)
    except ValueError as exc:
        raise InputError(f"motion families: {exc}") from None
    dev = resolve_device(device)
    ckpts = [Path(c) for c in checkpoints]
    loaded = [load_checkpoint(str(c), device=str(dev)) for c in ckpts]
    sizes = {_input_size(m.metadata) for m in loaded}
    if len(sizes) != 1:
        raise InputError(f"{ckpts[0]}: the checkpoints have different input sizes {sorted(sizes)}"
                         "; evaluate them separately")
    input_size = sizes.pop()
    kwargs = {} if report is None else {"report": report}
    good, infos = check_volumes(test_paths, progress=progress, what="test volumes", **kwargs)
    for m in loaded:
        m.model.eval().to(dev)
    names = _unique_names(ckpts)
    preds: list[list[np.ndarray]] = [[] for _ in loaded]
    sds: list[list[np.ndarray]] = [[] for _ in loaded]  # models with the uncertainty head
    trues: list[np.ndarray] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="slice", desc="evaluating", dynamic_ncols=True)
    chunk = max(1, min(int(batch_size), n))
    with torch.no_grad():
        for images, labels in test_set(good, n, seed, input_size, contrast, p_torchio,
                                       dev, workers, chunk, slices=slices,
                                       acquisition=acquisition, families=families,
                                       storage=storage):
            images = images.to(dev)
            trues.append(labels.float().cpu().numpy())
            for j, m in enumerate(loaded):
                raw, sd = forward_outputs(m.model, images)
                preds[j].append(raw.cpu().numpy())
                if sd is not None:
                    sds[j].append(sd.cpu().numpy())
            if bar is not None:
                bar.update(len(labels))
    if bar is not None:
        bar.close()
    true = np.concatenate(trues)
    models: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    for j, nm in enumerate(names):
        pred = np.concatenate(preds[j])
        meta = loaded[j].metadata
        models[nm] = {
            "checkpoint": str(ckpts[j]),
            "architecture": meta.get("architecture"),
            "metadata": {k: meta.get(k) for k in ("architecture", "train_input_size", "epoch",
                                                  "metrics", "schedule") if k in meta},
            "figures": evaluate_predictions(pred, true, thresholds=thresholds),
        }
        if sds[j]:  # the head's sd against the error of the clamped prediction
            models[nm]["uncertainty"] = uncertainty_figures(np.clip(pred, 0.0, 1.0),
                                                            np.concatenate(sds[j]), true)
        predictions[nm] = pred
    result = {
        "protocol": {"n": int(true.size), "seed": seed, "contrast_augmentation": contrast,
                     "p_torchio": p_torchio, "motion_families": families or "",
                     "input_size": input_size, "chunk": chunk,
                     "slices": slices, "acquisition": acquisition, "storage": storage,
                     "test_data": summarize_volumes(infos), "class_counts": list(CLASS_COUNTS),
                     "residuals": "predicted - true"},
        "models": models,
    }
    test_files = result["protocol"]["test_data"].get("files", [])
    overlap = {nm: trained_on(loaded[j].metadata, test_files) for j, nm in enumerate(names)}
    overlap = {nm: v for nm, v in overlap.items() if v}
    if overlap:
        result["protocol"]["trained_on_test_volumes"] = overlap
        for nm, v in overlap.items():
            print(f"motionssim: warning: {nm} was trained on {len(v)} of the test volumes "
                  f"({', '.join(v[:5])}{', ...' if len(v) > 5 else ''}): the figures overstate "
                  "its accuracy", file=sys.stderr, flush=True)
    write_report(result, out_dir, true, predictions)
    return Evaluation(result, true, predictions)


def trained_on(metadata: dict[str, Any], test_files: Sequence[str]) -> list[str]:
    """Test file names that also appear among a checkpoint's training volumes (its metadata
    records the file names of its training split)."""
    data = metadata.get("training_data") or {}
    train = data.get("train", {}) if isinstance(data, dict) else {}
    names = set(train.get("files", []) if isinstance(train, dict) else [])
    return sorted(set(test_files) & names)


def held_out_test_volumes(source: str | Path) -> list[Path]:
    """The test split of a data source, refused when it shares volumes with the training split.

    A plain folder of volumes (no split.json, no train/ and test/ sub-folders) puts every volume
    in every split, so evaluating on its "test split" would test on training data.
    """
    from .data import resolve_split

    test = resolve_split(source, "test")
    try:
        train = resolve_split(source, "train")
    except InputError:
        train = []
    shared = sorted({p.resolve() for p in test} & {p.resolve() for p in train})
    if shared:
        raise InputError(
            f"{source}: the test split shares {len(shared)} of {len(test)} volumes with the "
            f"training split (e.g. {shared[0].name}); a plain folder puts every volume in every "
            "split: give a split file or train/ and test/ sub-folders to evaluate on held-out data")
    return test
