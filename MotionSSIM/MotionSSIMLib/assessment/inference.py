"""Predict per-slice SSIM with a trained model, and assess whole volumes.

Volume verdict (README; `summary.summarize`): the worst clinical class among the non-empty
slices. "good" when every assessed slice is good, "sufficient" when the worst is sufficient,
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

Uncertainty: `ssim_sd` is the predicted standard deviation of the SSIM's error on that slice.
A model with the uncertainty head (checkpoint metadata `uncertainty.kind == "head"`) gives it
from the same forward pass as the SSIM, so by default each slice is read once (`tta=None`).
A model without the head reads label-preserving views of each model input (flips and
transposes: the SSIM of two images is unchanged when both are flipped), DEFAULT_TTA of them
by default: the SSIM is the mean over the views and `ssim_sd` their spread, the model's own
instability on that slice. `tta=N` (N > 1) asks for views with either model. A slice whose
interval ssim +- UNCERTAIN_SDS * sd contains a class threshold is flagged uncertain: its
class could be the neighbouring one.
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
from .checkpoint import LoadedModel, default_model_path, load_checkpoint, uncertainty_kind
from .classes import ClinicalThresholds, clinical_class
from .devices import cpu_native_bf16, resolve_device  # noqa: F401 - public here too
from .model import forward_outputs, has_uncertainty_head
from .results import Assessment, SliceRecord  # noqa: F401 - public here too
from .summary import (  # noqa: F401 - public here too
    NO_VERDICT,
    UNCERTAIN_SDS,
    VERDICT_RULE,
    VERDICTS,
    bounded,
    describe_model,
    summarize,
    uncertain_slices,
    verdict_of,
)

# typing.Union, not `|`: this alias is evaluated at import, and Slicer 5.8 has Python 3.9
ModelLike = Union[str, os.PathLike, nn.Module, LoadedModel, None]
Progress = Callable[[int, int], None]

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
DEFAULT_TTA = 4  # views of a model without the head: identity, h-flip, v-flip, transpose
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


def check_tta(tta: Any) -> int | None:
    """`tta` (number of views) as an int in 1..len(VIEWS), or None (the model's default:
    views_for), else SettingsError."""
    if tta is None:
        return None
    if isinstance(tta, bool) or not isinstance(tta, (int, np.integer)) \
            or not 1 <= tta <= len(VIEWS):
        raise SettingsError(f"tta (views per slice) must be an integer from 1 to {len(VIEWS)}, "
                            f"got {str(tta)[:40]}")
    return int(tta)


# Loaded checkpoints, keyed by (path, mtime, size, device): repeated calls do not reload the
# file, and a file rewritten in place (new mtime or size) is loaded afresh.
def views_for(loaded: LoadedModel, tta: int | None) -> int:
    """The number of views `tta` means for this model: None gives one pass for a model with
    the uncertainty head, DEFAULT_TTA views otherwise."""
    if tta is not None:
        return tta
    return 1 if has_head(loaded) else DEFAULT_TTA


def has_head(loaded: LoadedModel) -> bool:
    """Whether the model gives its uncertainty from the forward pass (uncertainty head)."""
    if loaded.metadata:
        return uncertainty_kind(loaded.metadata) == "head"
    return has_uncertainty_head(loaded.model)


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
             precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 1, H, W) float32 CPU batch -> ((B,) raw (unclamped) SSIM outputs, (B,) sd from the
    uncertainty head or None), float32 on CPU. `precision` as resolve_precision returns it. A
    batch whose reduced-precision forward is not finite (float16 overflow) is recomputed in
    the next dtype, finally in float32."""
    if device.type == "mps":
        out, sd = forward_outputs(net, x.to(device))
        return out.cpu(), None if sd is None else sd.cpu()
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last)
    out = sd = None
    for amp in AMP_DTYPES[precision] + (None,):
        out, sd = forward_outputs(net, x, amp)
        if bool(torch.isfinite(out).all()) and (sd is None or bool(torch.isfinite(sd).all())):
            break
    return out.cpu(), None if sd is None else sd.cpu()


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


def _model_inputs(item: tuple[np.ndarray, np.ndarray], pixel_spacing: tuple[float, float],
                  names: tuple[str, ...]) -> tuple[np.ndarray, torch.Tensor]:
    """(indices, raw slices) -> (indices, their model inputs (V * n, 1, S, S), view by view);
    InputError for slices that are not finite numbers."""
    idx, chunk = item
    if (not np.issubdtype(chunk.dtype, np.number) and chunk.dtype != bool) or \
            np.iscomplexobj(chunk):
        raise InputError(f"predict_slices: non-numeric slices ({chunk.dtype})")
    if not np.isfinite(chunk).all():
        raise InputError("predict_slices: slices contain NaN or infinite "
                         f"values (slice {int(idx[0])} onwards)")
    x = torch.from_numpy(to_model_input(chunk, pixel_spacing, size=MODEL_SIZE))[:, None]
    return idx, torch.cat([VIEWS[v](x) for v in names]) if len(names) > 1 else x


def _prefetched(items, fn):
    """fn(item) for each item, in order; the next one is computed in a worker thread while the
    caller works on the current one. Fitting slices to the model input costs about as much as
    the forward pass on a fast CPU, and the forward releases the GIL, so the two overlap (and
    on a GPU the CPU prepares while the GPU computes). An error in fn is raised here, at that
    item; at most one item is prepared ahead (memory stays two chunks)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="motionssim-fit") as pool:
        it = iter(items)
        nxt = next(it, None)
        pending = pool.submit(fn, nxt) if nxt is not None else None
        while pending is not None:
            result = pending.result()
            nxt = next(it, None)
            pending = pool.submit(fn, nxt) if nxt is not None else None
            yield result


@dataclass
class SlicePrediction:
    """predict_views' answer: per slice the predicted SSIM (mean over the views, each clamped
    to [0, 1]), its uncertainty `sd` (`uncertainty` says which: the head's predicted sd of the
    error with one view, the spread over several views, 0 for "none"), every view's
    prediction, and what was run."""

    ssim: np.ndarray  # (N,) float64
    sd: np.ndarray  # (N,) float64
    views: np.ndarray  # (N, V) float64, clamped
    view_names: tuple[str, ...]
    precision: str  # "fp32", "bf16" or "fp16" (resolve_precision)
    device: str
    uncertainty: str = "views"  # "head", "views" or "none"


def predict_views(images, model: ModelLike = None, device: str | torch.device = "auto",
                  batch_size: int = 32, pixel_spacing=(1.0, 1.0),
                  progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                  precision: str = "auto", tta: int | None = None) -> SlicePrediction:
    """Predicted SSIM of each slice with its uncertainty (see SlicePrediction).

    images, model, device, batch_size, pixel_spacing, progress, cancel: as predict_slices.
    precision: "auto" (the hardware's fastest native arithmetic that keeps the answer: float16
    autocast on CUDA, bfloat16 on a CPU with native bfloat16, else float32), "fp32" or
    "bf16" (resolve_precision). tta: the number of label-preserving views of each model input
    (1 to 8, the first `tta` of VIEWS: identity, h-flip, v-flip, transpose, ...); the cost
    grows with it (a forward pass per view). None: one pass for a model with the uncertainty
    head (its sd), DEFAULT_TTA views otherwise. With several views `sd` is their spread.
    `batch_size` counts model inputs, views included.
    """
    slices, n = _as_slices(images)
    batch_size = check_batch_size(batch_size)
    pixel_spacing = check_pixel_spacing(pixel_spacing)
    tta = check_tta(tta)
    dev = resolve_device(device)
    resolved = resolve_precision(precision, dev)  # refused before the model is loaded
    loaded = get_model(model, dev)
    tta = views_for(loaded, tta)
    names = tuple(list(VIEWS)[:tta])
    views = np.empty((n, tta), dtype=np.float64)
    head_sd = np.zeros(n)
    source = "views" if tta > 1 else "head" if has_head(loaded) else "none"
    if n == 0:
        return SlicePrediction(np.empty(0), np.empty(0), views, names, resolved, dev.type,
                               source)
    net = loaded.model
    was_training = net.training
    net.eval()
    done = 0
    try:
        with torch.inference_mode():
            # (_predict_chunk runs the views in forward passes of at most batch_size)
            prepare = functools.partial(_model_inputs, pixel_spacing=pixel_spacing,
                                        names=names)
            for idx, x in _prefetched(_chunks(slices, batch_size), prepare):
                raw, sd, net, dev, batch_size = _predict_chunk(
                    net, x, dev, batch_size, cancel, lambda: _cpu_copy(loaded), precision)
                if source == "head":
                    head_sd[idx] = sd
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
    sd = views.std(axis=1, ddof=1) if tta > 1 else head_sd
    return SlicePrediction(views.mean(axis=1), sd, views, names, resolved, dev.type, source)


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
    tta = views_for(loaded, tta)
    net = loaded.model
    was_training = net.training
    net.eval()
    out = np.empty((len(x), tta))
    try:
        with torch.inference_mode():
            for k, name in enumerate(list(VIEWS)[:tta]):
                out[:, k], _, net, dev, batch_size = _predict_chunk(
                    net, VIEWS[name](x), dev, batch_size, None, lambda: _cpu_copy(loaded),
                    precision)
    finally:
        loaded.model.train(was_training)
    return out


def predict_slices(images, model: ModelLike = None, device: str | torch.device = "auto",
                   batch_size: int = 32, pixel_spacing=(1.0, 1.0),
                   progress: Progress | None = None,
                   cancel: Callable[[], bool] | None = None, precision: str = "auto",
                   tta: int | None = None) -> np.ndarray:
    """Predicted SSIM of each slice, clamped to [0, 1]: float64 array of shape (N,).

    images: (N, H, W) or (H, W) array in any intensity range and size, or a list of 2D slices
    whose sizes differ. Each slice is fitted to the model input as DESIGN.md says (square
    pixels, min-max, pad or anti-aliased downscale to 256 x 256), one batch at a time so that a
    large volume never exists twice in memory. `model`: None (the bundled model), a checkpoint
    path (loaded once and cached), a LoadedModel or a torch module (put in eval mode for the
    call, its mode restored afterwards). `device="auto"`: CUDA, else MPS, else CPU. The
    forward runs in channels-last layout; `precision` (predict_views): "auto" uses float16
    autocast on CUDA and bfloat16 on CPUs with native bfloat16, "fp32" float32. `tta`: the
    prediction is the mean over this many label-preserving views (None: one for a model with
    the uncertainty head, else DEFAULT_TTA; predict_views also returns the uncertainty). On CUDA out-of-memory the batch is halved, and below one slice the CPU takes
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
    """Run one preprocessed chunk in batches; returns (raw, sd, net, device, batch_size): sd
    from the uncertainty head (NaN without one); the last three change after an out-of-memory
    fall-back so that the rest of the run keeps them. `precision`: the user's setting,
    resolved for the device in use."""
    raw = np.empty(len(x), dtype=np.float64)
    sd = np.full(len(x), np.nan)
    start = 0
    mode = resolve_precision(precision, dev)
    while start < len(x):
        if cancel is not None and cancel():
            raise Cancelled("assessment cancelled")
        stop = min(start + batch_size, len(x))
        try:
            out, head_sd = _forward(net, x[start:stop], dev, mode)
            raw[start:stop] = out.numpy()
            if head_sd is not None:
                sd[start:stop] = head_sd.numpy()
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
    return raw, sd, net, dev, batch_size


def assess_volume(vol: Volume | np.ndarray, model: ModelLike = None, orientation: str = "auto",
                  device: str | torch.device = "auto", batch_size: int = 32,
                  thresholds: ClinicalThresholds = ClinicalThresholds(),
                  min_foreground: float = 0.05, progress: Progress | None = None,
                  cancel: Callable[[], bool] | None = None, precision: str = "auto",
                  tta: int | None = None) -> Assessment:
    """Predict every slice of a volume and summarise: per-slice records and a verdict.

    precision and tta as in predict_views: each record carries its uncertainty (`ssim_sd`:
    the head's sd with one pass, the spread over views with several) and the `uncertain` flag;
    the summary counts the uncertain slices and says what ran (`inference`: device,
    precision, views, uncertainty).

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
                            "views": list(result.view_names),
                            "uncertainty": result.uncertainty}
    return Assessment(records, summary, stack.orientation, stack.axis,
                      tuple(float(v) for v in stack.pixel_spacing), describe_model(loaded))
