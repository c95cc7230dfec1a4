"""Predict per-slice SSIM with a trained model, and assess whole volumes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import LoadedModel, load_checkpoint
from .classes import CLINICAL_NAMES, ClinicalThresholds, clinical_class
from .errors import MotionSSIMError
from .geometry import MODEL_SIZE, Volume, extract_slices, to_model_input, volume

ModelLike = str | os.PathLike | nn.Module | LoadedModel | None
Progress = Callable[[int, int], None]


class Cancelled(MotionSSIMError):
    """The user cancelled the assessment."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` = CUDA when available, else Apple MPS, else CPU. Asking for CUDA where there is
    none is an error, not a silent fall-back."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MotionSSIMError(f"device {device!r}: no CUDA GPU is available to PyTorch "
                                  f"{torch.__version__}; use --device cpu")
        return torch.device("cuda" if name == "gpu" else name)
    if name in ("cpu", "mps"):
        return torch.device(name)
    raise MotionSSIMError(f"unknown device {device!r}: use auto, cpu, cuda or mps")


# Loaded models, keyed by (path, mtime, device): repeated calls do not reload the file.
_CACHE: dict[tuple[str, float, str], LoadedModel] = {}


def get_model(model: ModelLike, device: torch.device) -> LoadedModel:
    """A LoadedModel on `device` from a path, a module, a LoadedModel or None (bundled)."""
    if isinstance(model, LoadedModel):
        return LoadedModel(model.model.to(device).eval(), model.metadata, model.path)
    if isinstance(model, nn.Module):
        return LoadedModel(model.to(device).eval(), {}, None)
    from .checkpoint import default_model_path

    path = Path(model) if model is not None else default_model_path()
    key = (str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0, str(device))
    if key not in _CACHE:
        _CACHE[key] = load_checkpoint(path, device=device)
    return _CACHE[key]


def _forward(net: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16):
            return net(x).float().reshape(-1)
    return net(x).reshape(-1)


def _run_batches(net: nn.Module, inputs: np.ndarray, device: torch.device, batch_size: int,
                 progress: Progress | None, cancel: Callable[[], bool] | None) -> np.ndarray:
    out = np.empty(len(inputs), dtype=np.float32)
    start = 0
    while start < len(inputs):
        if cancel is not None and cancel():
            raise Cancelled("assessment cancelled")
        stop = min(start + batch_size, len(inputs))
        batch = torch.from_numpy(inputs[start:stop, None])
        try:
            out[start:stop] = _forward(net, batch, device).cpu().numpy()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size > 1:  # retry this batch with half the batch size
                batch_size = max(1, batch_size // 2)
                continue
            raise
        start = stop
        if progress is not None:
            progress(start, len(inputs))
    return out


def predict_slices(images, model: ModelLike = None, device: str | torch.device = "auto",
                   batch_size: int = 32, pixel_spacing=(1.0, 1.0),
                   progress: Progress | None = None,
                   cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """Predicted SSIM of each slice: (N, H, W) or (H, W) array of any size and range -> (N,).

    The slices are fitted to the model input as DESIGN.md says (square pixels, min-max, pad or
    anti-aliased downscale to 256 x 256). `model=None` uses the bundled default model; a path,
    a torch module or a LoadedModel also work. `device="auto"` uses CUDA when available. On
    CUDA out-of-memory the batch is halved, then the CPU is used with a warning.
    """
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise MotionSSIMError(f"predict_slices: expected (N, H, W) or (H, W), got {arr.shape}")
    if batch_size < 1:
        raise MotionSSIMError(f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    loaded = get_model(model, dev)
    inputs = to_model_input(arr, pixel_spacing, size=MODEL_SIZE)
    with torch.inference_mode():
        try:
            raw = _run_batches(loaded.model, inputs, dev, batch_size, progress, cancel)
        except torch.cuda.OutOfMemoryError:
            warnings.warn("CUDA out of memory even with batch size 1: running on the CPU",
                          stacklevel=2)
            cpu = get_model(model if model is not None else None, torch.device("cpu"))
            raw = _run_batches(cpu.model, inputs, torch.device("cpu"), batch_size, progress,
                               cancel)
    return np.clip(raw, 0.0, 1.0).astype(np.float64)


@dataclass
class SliceRecord:
    index: int
    position_mm: float
    ssim: float
    clinical_class: int
    foreground: float
    empty: bool


@dataclass
class Assessment:
    records: list[SliceRecord]
    summary: dict[str, Any]
    orientation: str
    axis: str
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"orientation": self.orientation, "axis": self.axis, "summary": self.summary,
                "slices": [asdict(r) for r in self.records]}


def verdict_of(classes: np.ndarray) -> str:
    """The volume verdict: the worst clinical class among its assessed slices."""
    if len(classes) == 0:
        return "no assessable slices"
    worst = int(np.max(classes))
    return {1: "good", 2: "sufficient", 3: "insufficient: re-scan"}[worst]


def summarize(ssim: np.ndarray, classes: np.ndarray, empty: np.ndarray, indices: np.ndarray,
              thresholds: ClinicalThresholds, n_worst: int = 5) -> dict[str, Any]:
    """Volume summary over the non-empty slices (empty ones are only counted)."""
    keep = ~empty
    s, c, idx = ssim[keep], classes[keep], indices[keep]
    counts = {CLINICAL_NAMES[k]: int((c == k).sum()) for k in (1, 2, 3)}
    counts["empty"] = int(empty.sum())
    order = np.argsort(s, kind="stable")[:n_worst]
    assessed = int(keep.sum())
    return {
        "verdict": verdict_of(c),
        "n_slices": int(len(ssim)),
        "n_assessed": assessed,
        "mean_ssim": float(s.mean()) if assessed else None,
        "median_ssim": float(np.median(s)) if assessed else None,
        "min_ssim": float(s.min()) if assessed else None,
        "counts": counts,
        "fractions": {k: (counts[k] / assessed if assessed else 0.0)
                      for k in ("good", "sufficient", "insufficient")},
        "worst_slices": [{"index": int(idx[i]), "ssim": float(s[i])} for i in order],
        "thresholds": {"good": thresholds.good, "sufficient": thresholds.sufficient},
    }


def assess_volume(vol: Volume | np.ndarray, model: ModelLike = None, orientation: str = "auto",
                  device: str | torch.device = "auto", batch_size: int = 32,
                  thresholds: ClinicalThresholds = ClinicalThresholds(),
                  min_foreground: float = 0.05, progress: Progress | None = None,
                  cancel: Callable[[], bool] | None = None) -> Assessment:
    """Predict every slice of a volume and summarise: per-slice records and a verdict.

    A bare array is taken as [k, j, i] with 1 mm isotropic voxels and identity directions.
    Slices whose foreground share is below `min_foreground` (edges of the field of view) are
    predicted but flagged empty, and left out of the summary and the verdict.
    """
    if not isinstance(vol, Volume):
        vol = volume(vol)
    stack = extract_slices(vol, orientation)
    dev = resolve_device(device)
    loaded = get_model(model, dev)
    pred = predict_slices(stack.images, loaded, dev, batch_size, stack.pixel_spacing,
                          progress=progress, cancel=cancel)
    classes = clinical_class(pred, thresholds)
    empty = np.asarray(stack.foreground) < min_foreground
    records = [SliceRecord(int(i), float(p), float(s), int(c), float(f), bool(e))
               for i, p, s, c, f, e in zip(stack.indices, stack.positions_mm, pred, classes,
                                           stack.foreground, empty, strict=True)]
    summary = summarize(pred, classes, empty, np.asarray(stack.indices), thresholds)
    meta = {k: loaded.metadata.get(k) for k in ("architecture", "name", "trained_on")
            if k in loaded.metadata}
    if loaded.path:
        meta["path"] = loaded.path
    return Assessment(records, summary, stack.orientation, stack.axis,
                      tuple(stack.pixel_spacing), meta)
