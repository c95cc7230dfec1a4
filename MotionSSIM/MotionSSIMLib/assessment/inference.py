"""Predict per-slice SSIM with a trained model, and assess whole volumes.

Volume verdict (documented in README): the worst clinical class among the non-empty slices.
"good" when every assessed slice is good, "sufficient" when the worst is sufficient,
"insufficient: re-scan" as soon as one assessed slice is insufficient. One slice with gross
motion is enough to call for a re-scan of that sequence; the summary also gives the share of
slices per class so that a reader can weigh a single bad slice. Empty slices (foreground share
below `min_foreground`: the air at the edges of the field of view) and blank slices (constant
or nearly so: a constant image would read SSIM 1.0) are predicted and reported, but left out of
the statistics and the verdict, since their SSIM means nothing; a volume with none left is
refused. A model whose raw outputs lie far outside [0, 1] is refused as broken.

Precision (`precision=`): "auto" runs the fastest arithmetic the hardware has natively and that
keeps the answer: on CUDA float16 autocast, on a CPU with native bfloat16 (AVX512-BF16 / AMX)
bfloat16 autocast in channels-last layout, elsewhere float32. The network's last layer always
runs in float32. "fp32" asks for float32; "bf16" for bfloat16 (refused where the CPU would only
emulate it). Measured against float32 (docs/benchmarks.md): |difference| <= PRECISION_BOUND.

Uncertainty (`tta=`): the model also reads label-preserving views of each model input (flips
and transposes: the SSIM of two images is unchanged when both are flipped), the predicted SSIM
is the mean over the views and `ssim_sd` their standard deviation: the model's own instability
on that slice. A slice whose interval ssim +- UNCERTAIN_SDS * sd contains a class threshold is
flagged uncertain.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from ..base.errors import (  # noqa: F401 (Cancelled: re-exported)
    Cancelled,
    CheckpointError,
    InputError,
    MotionSSIMError,
    SettingsError,
)
from ..imaging.geometry import MODEL_SIZE, Volume, extract_slices, to_model_input, volume
from .checkpoint import LoadedModel, default_model_path, load_checkpoint
from .classes import CLINICAL_NAMES, ClinicalThresholds, clinical_class
from .devices import cpu_native_bf16, resolve_device  # noqa: F401 - public here too
from .model import forward_ssim
from .results import Assessment, SliceRecord  # noqa: F401 - public here too

# typing.Union, not `|`: this alias is evaluated at import, and Slicer 5.8 has Python 3.9
ModelLike = Union[str, os.PathLike, nn.Module, LoadedModel, None]
Progress = Callable[[int, int], None]

VERDICTS = {1: "good", 2: "sufficient", 3: "insufficient: re-scan"}
NO_VERDICT = "no assessable slices"
VERDICT_RULE = ("worst clinical class among non-empty slices: good (all slices good), "
                "sufficient (worst slice sufficient), insufficient: re-scan (any slice "
                "insufficient)")
# CUDA autocast: float16 keeps 3 decimal digits of the output (bfloat16 only 2); a batch whose
# float16 forward overflows (inf/NaN) is recomputed in bfloat16, which has float32's range.
CUDA_AMP_DTYPES = (torch.float16, torch.bfloat16)
PRECISIONS = ("auto", "fp32", "bf16")
AMP_DTYPES = {"fp32": (), "bf16": (torch.bfloat16,), "fp16": CUDA_AMP_DTYPES}
# Largest |difference| from float32 accepted for the fast path (Testing/test_precision.py,
# which also checks that classes change only within 0.005 of a threshold). Measured with the
# bundled model (bfloat16 residual layers, float32 stem and last layer): mean 0.0002-0.0007,
# max 0.0008 on the bundled sample, 0.009 on the worst of 160 held-out slice views.
PRECISION_BOUND = 0.01
# Label-preserving views of a (B, 1, S, S) model input, in the order `tta=N` takes them.
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "hflip": lambda t: t.flip(-1),
    "vflip": lambda t: t.flip(-2),
    "transpose": lambda t: t.transpose(-2, -1),
    "rot180": lambda t: t.flip((-2, -1)),
    "rot90": lambda t: t.rot90(1, (-2, -1)),
    "rot270": lambda t: t.rot90(-1, (-2, -1)),
    "antitranspose": lambda t: t.flip((-2, -1)).transpose(-2, -1),
}
DEFAULT_TTA = 4  # identity, h-flip, v-flip, transpose
UNCERTAIN_SDS = 2.0  # a slice is uncertain when ssim +- 2 sd contains a class threshold
MODEL_CACHE_SIZE = 4  # loaded checkpoints kept (a GPU holds a few ResNets easily)
# A trained model's raw output stays near [0, 1] (the bundled one: 0.39 - 1.06 on real slices,
# noise, strips and constant images); far outside it the weights are broken (e.g. a last layer
# scaled by 60000 gives 1e7, which clamping would turn into "good"), so the run is refused.
RAW_OUTPUT_RANGE = (-0.5, 1.5)


@functools.lru_cache(maxsize=1)
def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The arithmetic `precision` ("auto", "fp32", "bf16") means on `device`: "fp32",
    "bf16" or "fp16" (CUDA autocast, bfloat16 for a batch that overflows). SettingsError for
    an unknown name, and for "bf16" where it is not native (a CPU without AVX512-BF16/AMX
    would emulate it, slower than float32; Apple MPS)."""
    name = str(precision).strip().lower() if isinstance(precision, str) else None
    if name not in PRECISIONS:
        raise SettingsError(f"unknown precision {str(precision)[:40]!r}: use auto, fp32 or bf16")
    dev = torch.device(device)
    if name == "fp32":
        return "fp32"
    if dev.type == "cuda":
        return "fp16" if name == "auto" else "bf16"
    if dev.type == "cpu" and cpu_native_bf16():
        return "bf16"
    if name == "auto":
        return "fp32"
    where = "this CPU has no native bfloat16 (AVX512-BF16 or AMX)" if dev.type == "cpu" \
        else f"bfloat16 is not used on {dev.type}"
    raise SettingsError(f"precision bf16: {where}; use --precision auto or fp32")


def check_tta(tta: Any) -> int:
    """`tta` (number of views) as an int in 1..len(VIEWS), else SettingsError."""
    if isinstance(tta, bool) or not isinstance(tta, (int, np.integer)) \
            or not 1 <= tta <= len(VIEWS):
        raise SettingsError(f"tta (views per slice) must be an integer from 1 to {len(VIEWS)}, "
                            f"got {str(tta)[:40]}")
    return int(tta)


# Loaded checkpoints, keyed by (path, mtime, size, device): repeated calls do not reload the
# file, and a file rewritten in place (new mtime or size) is loaded afresh.
_CACHE: OrderedDict[tuple[str, int, int, str], LoadedModel] = OrderedDict()


def clear_model_cache() -> None:
    _CACHE.clear()


def get_model(model: ModelLike, device: str | torch.device) -> LoadedModel:
    """A LoadedModel on `device` from a checkpoint path, None (the bundled model), a LoadedModel
    or a torch module (moved to `device`; used as it is)."""
    device = torch.device(device)
    if isinstance(model, LoadedModel):
        return LoadedModel(model.model.to(device), model.metadata, model.path)
    if isinstance(model, nn.Module):
        return LoadedModel(model.to(device), {}, None)
    path = Path(model) if model is not None else default_model_path()
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size, str(device))
    except OSError:  # missing: let load_checkpoint say so in its words
        return load_checkpoint(path, device=device)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    loaded = load_checkpoint(path, device=device)
    if device.type in ("cuda", "cpu"):  # the layout cuDNN's and oneDNN's fastest kernels use
        loaded.model.to(memory_format=torch.channels_last)
    _CACHE[key] = loaded
    while len(_CACHE) > MODEL_CACHE_SIZE:
        _CACHE.popitem(last=False)
    return loaded


def _forward(net: nn.Module, x: torch.Tensor, device: torch.device,
             precision: str = "fp32") -> torch.Tensor:
    """(B, 1, H, W) float32 CPU batch -> (B,) float32 on CPU, raw (unclamped) outputs.
    `precision` as resolve_precision returns it. A batch whose reduced-precision forward is
    not finite (float16 overflow) is recomputed in the next dtype, finally in float32."""
    if device.type == "mps":
        return forward_ssim(net, x.to(device)).cpu()
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last)
    out = None
    for amp in AMP_DTYPES[precision] + (None,):
        out = forward_ssim(net, x, amp)
        if bool(torch.isfinite(out).all()):
            break
    return out.cpu()


def _as_slices(images) -> tuple[np.ndarray | list[np.ndarray], int]:
    """(N, H, W) array, (H, W) array, or a sequence of 2D arrays (shapes may differ)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, Sequence) and not isinstance(images, np.ndarray) and images and all(
            np.ndim(im) == 2 for im in images):
        slices = [np.asarray(im) for im in images]
        empty = next((s.shape for s in slices if s.size == 0), None)
        if empty is not None:
            raise InputError(f"predict_slices: a zero-size slice (shape {empty})")
        if len({s.shape for s in slices}) > 1:
            return slices, len(slices)
        images = np.stack(slices)
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"predict_slices: expected (N, H, W), (H, W) or a list of 2D "
                         f"slices, got shape {arr.shape}")
    if len(arr) and 0 in arr.shape[1:]:
        raise InputError(f"predict_slices: zero-size slices (shape {arr.shape})")
    return arr, len(arr)


def _chunks(slices: np.ndarray | list[np.ndarray], batch_size: int):
    """(indices, (n, H, W) array) pieces of at most batch_size slices of one shape."""
    if isinstance(slices, np.ndarray):
        for start in range(0, len(slices), batch_size):
            yield np.arange(start, min(start + batch_size, len(slices))), \
                slices[start:start + batch_size]
        return
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(slices):
        groups.setdefault(s.shape, []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            yield np.asarray(part), np.stack([slices[i] for i in part])


@dataclass
class SlicePrediction:
    """predict_views' answer: per slice the predicted SSIM (mean over the views, each clamped
    to [0, 1]), its standard deviation over the views (0 with one view), every view's
    prediction, and what was run."""

    ssim: np.ndarray  # (N,) float64
    sd: np.ndarray  # (N,) float64
    views: np.ndarray  # (N, V) float64, clamped
    view_names: tuple[str, ...]
    precision: str  # "fp32", "bf16" or "fp16" (resolve_precision)
    device: str


def predict_views(images, model: ModelLike = None, device: str | torch.device = "auto",
                  batch_size: int = 32, pixel_spacing=(1.0, 1.0),
                  progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                  precision: str = "auto", tta: int = DEFAULT_TTA) -> SlicePrediction:
    """Predicted SSIM of each slice with its uncertainty (see SlicePrediction).

    images, model, device, batch_size, pixel_spacing, progress, cancel: as predict_slices.
    precision: "auto" (the hardware's fastest native arithmetic that keeps the answer: float16
    autocast on CUDA, bfloat16 on a CPU with native bfloat16, else float32), "fp32" or
    "bf16" (resolve_precision). tta: the number of label-preserving views of each model input
    (1 to 8, the first `tta` of VIEWS: identity, h-flip, v-flip, transpose, ...); the cost
    grows with it (a forward pass per view). `batch_size` counts model inputs, views included.
    """
    slices, n = _as_slices(images)
    batch_size = check_batch_size(batch_size)
    pixel_spacing = check_pixel_spacing(pixel_spacing)
    tta = check_tta(tta)
    dev = resolve_device(device)
    resolved = resolve_precision(precision, dev)  # refused before the model is loaded
    loaded = get_model(model, dev)
    names = tuple(list(VIEWS)[:tta])
    views = np.empty((n, tta), dtype=np.float64)
    if n == 0:
        return SlicePrediction(np.empty(0), np.empty(0), views, names, resolved, dev.type)
    net = loaded.model
    was_training = net.training
    net.eval()
    done = 0
    try:
        with torch.inference_mode():
            # (_predict_chunk runs the views in forward passes of at most batch_size)
            for idx, chunk in _chunks(slices, batch_size):
                if (not np.issubdtype(chunk.dtype, np.number) and chunk.dtype != bool) or \
                        np.iscomplexobj(chunk):
                    raise InputError(f"predict_slices: non-numeric slices ({chunk.dtype})")
                if not np.isfinite(chunk).all():
                    raise InputError("predict_slices: slices contain NaN or infinite "
                                     f"values (slice {int(idx[0])} onwards)")
                x = torch.from_numpy(to_model_input(chunk, pixel_spacing, size=MODEL_SIZE))
                x = x[:, None]
                x = torch.cat([VIEWS[v](x) for v in names]) if tta > 1 else x
                raw, net, dev, batch_size = _predict_chunk(net, x, dev, batch_size, cancel,
                                                           lambda: _cpu_copy(loaded),
                                                           precision)
                raw = raw.reshape(tta, len(idx)).T
                for k in range(tta):
                    check_raw_outputs(raw[:, k], idx, loaded)
                views[idx] = raw
                done += len(idx)
                if progress is not None:
                    progress(done, n)
    finally:
        loaded.model.train(was_training)
    views = np.clip(views, 0.0, 1.0)
    sd = views.std(axis=1, ddof=1) if tta > 1 else np.zeros(n)
    return SlicePrediction(views.mean(axis=1), sd, views, names, resolved, dev.type)


def forward_views(inputs: torch.Tensor | np.ndarray, model: ModelLike = None,
                  device: str | torch.device = "auto", batch_size: int = 32,
                  precision: str = "auto", tta: int = DEFAULT_TTA) -> np.ndarray:
    """Raw (unclamped) model outputs on inputs already fitted to the model, (N, 1, S, S) or
    (N, S, S), for each of the first `tta` VIEWS: a float64 array (N, tta). For evaluation
    and benchmarks (the test protocol feeds fitted slices); predict_views fits slices first."""
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32) if not isinstance(
        inputs, torch.Tensor) else inputs.detach().float().cpu())
    x = x[:, None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[1] != 1:
        raise InputError(f"forward_views: expected (N, 1, S, S) model inputs, got "
                         f"{tuple(x.shape)}")
    batch_size, tta = check_batch_size(batch_size), check_tta(tta)
    dev = resolve_device(device)
    resolve_precision(precision, dev)
    loaded = get_model(model, dev)
    net = loaded.model
    was_training = net.training
    net.eval()
    out = np.empty((len(x), tta))
    try:
        with torch.inference_mode():
            for k, name in enumerate(list(VIEWS)[:tta]):
                out[:, k], net, dev, batch_size = _predict_chunk(
                    net, VIEWS[name](x), dev, batch_size, None, lambda: _cpu_copy(loaded),
                    precision)
    finally:
        loaded.model.train(was_training)
    return out


def predict_slices(images, model: ModelLike = None, device: str | torch.device = "auto",
                   batch_size: int = 32, pixel_spacing=(1.0, 1.0),
                   progress: Progress | None = None,
                   cancel: Callable[[], bool] | None = None, precision: str = "auto",
                   tta: int = DEFAULT_TTA) -> np.ndarray:
    """Predicted SSIM of each slice, clamped to [0, 1]: float64 array of shape (N,).

    images: (N, H, W) or (H, W) array in any intensity range and size, or a list of 2D slices
    whose sizes differ. Each slice is fitted to the model input as DESIGN.md says (square
    pixels, min-max, pad or anti-aliased downscale to 256 x 256), one batch at a time so that a
    large volume never exists twice in memory. `model`: None (the bundled model), a checkpoint
    path (loaded once and cached), a LoadedModel or a torch module (put in eval mode for the
    call, its mode restored afterwards). `device="auto"`: CUDA, else MPS, else CPU. The
    forward runs in channels-last layout; `precision` (predict_views): "auto" uses float16
    autocast on CUDA and bfloat16 on CPUs with native bfloat16, "fp32" float32. `tta`: the
    prediction is the mean over this many label-preserving views (predict_views also returns
    their spread). On CUDA out-of-memory the batch is halved, and below one slice the CPU takes
    over with a warning. `progress(done, total)` after each batch; `cancel()` returning True
    raises Cancelled.
    """
    return predict_views(images, model, device, batch_size, pixel_spacing, progress, cancel,
                         precision, tta).ssim


def check_batch_size(batch_size: Any) -> int:
    """`batch_size` as an int >= 1, else SettingsError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise SettingsError(f"batch size must be an integer >= 1, got {str(batch_size)[:40]}")
    return int(batch_size)


def check_pixel_spacing(pixel_spacing: Any) -> tuple[float, float]:
    """(row, column) spacing in mm as two finite positive floats, else SettingsError."""
    try:
        values = tuple(float(v) for v in np.asarray(pixel_spacing, dtype=float).reshape(-1))
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise SettingsError(f"pixel spacing must be two positive numbers (mm), got "
                            f"{str(pixel_spacing)[:60]}")
    return values


def check_raw_outputs(raw: np.ndarray, idx: np.ndarray, loaded: LoadedModel) -> None:
    """CheckpointError naming the model file when its raw outputs are not finite or lie far
    outside [0, 1] (RAW_OUTPUT_RANGE): such a model is broken, and clamping would hide it."""
    lo, hi = RAW_OUTPUT_RANGE
    bad = ~np.isfinite(raw) | (raw < lo) | (raw > hi)
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    name = loaded.path or "the model (a torch module)"
    what = "NaN or infinite" if not np.isfinite(raw[first]) else f"{raw[first]:.3g}"
    raise CheckpointError(f"{name}: broken model: its raw output on slice {int(idx[first])} is "
                          f"{what}, far outside the SSIM range [0, 1] (accepted {lo} to {hi}); "
                          "refusing its predictions")


def _cpu_copy(loaded: LoadedModel) -> nn.Module:
    """The network on the CPU for the out-of-memory fall-back. A checkpoint is loaded again
    (the cached GPU copy stays valid for later calls); a caller's module is moved."""
    if loaded.path:
        return get_model(loaded.path, "cpu").model.eval()
    return loaded.model.to("cpu", memory_format=torch.contiguous_format)


def _predict_chunk(net: nn.Module, x: torch.Tensor, dev: torch.device, batch_size: int,
                   cancel: Callable[[], bool] | None, cpu_fallback: Callable[[], nn.Module],
                   precision: str = "fp32"):
    """Run one preprocessed chunk in batches; returns (raw, net, device, batch_size), which
    change after an out-of-memory fall-back so that the rest of the run keeps them.
    `precision`: the user's setting, resolved for the device in use."""
    raw = np.empty(len(x), dtype=np.float64)
    start = 0
    mode = resolve_precision(precision, dev)
    while start < len(x):
        if cancel is not None and cancel():
            raise Cancelled("assessment cancelled")
        stop = min(start + batch_size, len(x))
        try:
            raw[start:stop] = _forward(net, x[start:stop], dev, mode).numpy()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size > 1:  # retry the same slices with half the batch
                batch_size = max(1, batch_size // 2)
                continue
            warnings.warn("CUDA out of memory even with one slice per batch: continuing on "
                          "the CPU", RuntimeWarning, stacklevel=4)
            dev = torch.device("cpu")
            net = cpu_fallback()
            mode = resolve_precision("auto" if precision == "bf16" and not cpu_native_bf16()
                                     else precision, dev)
            torch.cuda.empty_cache()
            continue
        start = stop
    return raw, net, dev, batch_size


def verdict_of(classes: np.ndarray) -> str:
    """The volume verdict: the worst clinical class among the assessed (non-empty) slices."""
    classes = np.asarray(classes)
    if classes.size == 0:
        return NO_VERDICT
    return VERDICTS[int(classes.max())]


def uncertain_slices(ssim: np.ndarray, sd: np.ndarray,
                     thresholds: ClinicalThresholds = ClinicalThresholds(),
                     k: float = UNCERTAIN_SDS) -> np.ndarray:
    """True where the interval ssim +- k * sd contains a class threshold (the slice's class
    could be the neighbouring one within the model's own instability)."""
    ssim, sd = np.asarray(ssim, float), np.asarray(sd, float)
    lo, hi = ssim - k * sd, ssim + k * sd
    out = np.zeros(ssim.shape, dtype=bool)
    for t in (thresholds.good, thresholds.sufficient):
        out |= (lo < t) & (hi >= t) & (sd > 0)
    return out


def summarize(ssim: np.ndarray, classes: np.ndarray, empty: np.ndarray, indices: np.ndarray,
              thresholds: ClinicalThresholds = ClinicalThresholds(),
              n_worst: int = 5, sd: np.ndarray | None = None) -> dict[str, Any]:
    """Volume summary over the non-empty slices (empty ones are only counted). With `sd`
    (per-slice spread over the views) also the uncertain slices' count, mean spread and
    each worst slice's spread."""
    ssim, classes = np.asarray(ssim, float), np.asarray(classes, int)
    empty, indices = np.asarray(empty, bool), np.asarray(indices, int)
    keep = ~empty
    s, c, idx = ssim[keep], classes[keep], indices[keep]
    counts = {CLINICAL_NAMES[k]: int((c == k).sum()) for k in (1, 2, 3)}
    counts["empty"] = int(empty.sum())
    order = np.argsort(s, kind="stable")[:n_worst]
    assessed = int(keep.sum())
    out = {
        "verdict": verdict_of(c),
        "verdict_rule": VERDICT_RULE,
        "n_slices": int(len(ssim)),
        "n_assessed": assessed,
        "mean_ssim": float(s.mean()) if assessed else None,
        "median_ssim": float(np.median(s)) if assessed else None,
        "min_ssim": float(s.min()) if assessed else None,
        "counts": counts,
        "fractions": {k: (counts[k] / assessed if assessed else 0.0)
                      for k in ("good", "sufficient", "insufficient")},
        "worst_slices": [{"index": int(idx[i]), "ssim": float(s[i]),
                          "class": CLINICAL_NAMES[int(c[i])]} for i in order],
        "thresholds": {"good": thresholds.good, "sufficient": thresholds.sufficient},
    }
    if sd is not None:
        d = np.asarray(sd, float)[keep]
        out["n_uncertain"] = int(uncertain_slices(s, d, thresholds).sum())
        out["mean_ssim_sd"] = float(d.mean()) if assessed else None
        out["uncertain_rule"] = (f"ssim +- {UNCERTAIN_SDS:g} ssim_sd contains a class "
                                 "threshold")
        for w, i in zip(out["worst_slices"], order):
            w["ssim_sd"] = float(d[i])
    return out


MODEL_SUMMARY_KEYS = ("architecture", "name", "dtype", "epoch", "step", "motionssim_version",
                      "trained_on")


MAX_FIELD_CHARS = 200  # a model metadata string copied into a report is cut to this
MAX_FIELD_ITEMS = 20   # ... a list or object to this many items
MAX_FIELD_DEPTH = 3    # ... and nested objects to this depth


def bounded(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of `value` bounded in size: strings cut to MAX_FIELD_CHARS, lists and
    objects to MAX_FIELD_ITEMS items and MAX_FIELD_DEPTH levels, huge or non-finite numbers
    as short text. Model metadata is the model author's text, not ours: a report must not
    grow without bound (or fail) because of it."""
    def cut(text: str) -> str:
        return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "..."

    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value) if abs(int(value)) < 10**15 else "(a huge integer)"
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else str(float(value))
    if isinstance(value, str):
        return cut(value)
    if depth >= MAX_FIELD_DEPTH:
        return "(nested too deep)"
    if isinstance(value, dict):
        return {cut(str(k)): bounded(v, depth + 1)
                for k, v in list(value.items())[:MAX_FIELD_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [bounded(v, depth + 1) for v in list(value)[:MAX_FIELD_ITEMS]]
    return cut(type(value).__name__)


def describe_model(loaded: LoadedModel) -> dict[str, Any]:
    """The few metadata items a report shows about the model, bounded in size (`bounded`)."""
    meta = {k: bounded(loaded.metadata[k]) for k in MODEL_SUMMARY_KEYS
            if k in loaded.metadata}
    evaluation = loaded.metadata.get("evaluation")
    if isinstance(evaluation, dict):  # its headline figures only (residual SD, MAE, ...)
        meta["evaluation"] = {bounded(str(k)): bounded(v)
                              for k, v in list(evaluation.items())[:MAX_FIELD_ITEMS]
                              if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if loaded.path:
        meta["path"] = loaded.path
    return meta


def assess_volume(vol: Volume | np.ndarray, model: ModelLike = None, orientation: str = "auto",
                  device: str | torch.device = "auto", batch_size: int = 32,
                  thresholds: ClinicalThresholds = ClinicalThresholds(),
                  min_foreground: float = 0.05, progress: Progress | None = None,
                  cancel: Callable[[], bool] | None = None, precision: str = "auto",
                  tta: int = DEFAULT_TTA) -> Assessment:
    """Predict every slice of a volume and summarise: per-slice records and a verdict.

    precision and tta as in predict_views: each record carries the spread over the views
    (`ssim_sd`) and the `uncertain` flag; the summary counts the uncertain slices and says
    what ran (`inference`: device, precision, views).

    A bare array is taken as [k, j, i] with 1 mm isotropic voxels and identity directions.
    Slices whose foreground share is below `min_foreground`, blank slices (no contrast:
    `geometry.BLANK_CONTRAST`) and noise slices (no structure at the head's scale:
    `geometry.slice_structure`) are predicted but flagged empty, and left out of the summary
    and the verdict (see the module docstring for the rule). A volume with no slice left to
    assess is refused (InputError): it has no verdict.
    """
    if isinstance(min_foreground, bool) or not isinstance(min_foreground, (int, float,
                                                                           np.number)) \
            or not 0.0 <= min_foreground <= 1.0:
        raise SettingsError(f"min_foreground must be a number in [0, 1], got "
                            f"{str(min_foreground)[:40]}")
    if not isinstance(thresholds, ClinicalThresholds):
        raise SettingsError("thresholds must be a ClinicalThresholds(good=..., sufficient=...), "
                            f"not {type(thresholds).__name__}")
    batch_size = check_batch_size(batch_size)
    tta = check_tta(tta)
    if not isinstance(vol, Volume):
        vol = volume(vol)
    if cancel is not None and cancel():
        raise Cancelled("assessment cancelled")
    stack = extract_slices(vol, orientation)
    foreground = np.asarray(stack.foreground, dtype=float)
    blank = np.asarray(stack.blank, dtype=bool)
    noise = np.asarray(stack.noise, dtype=bool)
    empty = (foreground < min_foreground) | blank | noise
    if empty.all():  # refused before the model runs: nothing here could be scored
        raise InputError(f"no assessable slice: all {len(empty)} {stack.orientation} slices "
                         f"are empty (foreground share < {min_foreground}), blank "
                         f"({int(blank.sum())} constant or nearly so) or noise without a "
                         f"head ({int(noise.sum())})")
    dev = resolve_device(device)
    resolve_precision(precision, dev)  # a wrong setting is refused before the model loads
    loaded = get_model(model, dev)
    result = predict_views(stack.images, loaded, dev, batch_size, stack.pixel_spacing,
                           progress=progress, cancel=cancel, precision=precision, tta=tta)
    pred, sd = result.ssim, result.sd
    classes = clinical_class(pred, thresholds)
    unsure = uncertain_slices(pred, sd, thresholds) & ~empty
    records = [SliceRecord(int(i), float(p), float(s), int(c), float(f), bool(e), bool(b),
                           float(d), bool(u), bool(z))
               for i, p, s, c, f, e, b, d, u, z in zip(stack.indices, stack.positions_mm, pred,
                                                       classes, foreground, empty, blank, sd,
                                                       unsure, noise)]
    summary = summarize(pred, classes, empty, np.asarray(stack.indices), thresholds, sd=sd)
    summary["min_foreground"] = float(min_foreground)
    summary["n_blank"] = int(blank.sum())
    summary["n_noise"] = int(noise.sum())
    summary["inference"] = {"device": result.device, "precision": result.precision,
                            "views": list(result.view_names)}
    return Assessment(records, summary, stack.orientation, stack.axis,
                      tuple(float(v) for v in stack.pixel_spacing), describe_model(loaded))
