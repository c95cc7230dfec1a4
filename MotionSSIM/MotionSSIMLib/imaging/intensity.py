"""Intensity normalisation and the paper's random contrast augmentations.

Five choices, one drawn uniformly per sample (the paper's code, ``randomContrastAug``):

=========  ===================================================================================
gamma      ``skimage.exposure.adjust_gamma``: ``I ** gamma``, gamma ~ U(0.75, 1.75)
clahe      ``skimage.exposure.equalize_adapthist``: kernel_size ~ integers in [25, 100)
           (numpy ``randint(25, high=100)`` as in the paper's code: 25..99), clip_limit 0.01,
           nbins 512
sigmoid    ``skimage.exposure.adjust_sigmoid``: ``1 / (1 + exp(gain * (cutoff - I)))``,
           cutoff ~ U(0.01, 0.75), gain ~ integers in [1, 4) (1, 2 or 3)
log        ``abs(skimage.exposure.adjust_log(I, gain))`` = ``abs(gain * log2(1 + I))``,
           gain ~ U(-0.5, 0.5)
none       identity
=========  ===================================================================================

The input slice is min-max normalised to [0, 1] first and the result again after (constant
slices give zeros, never NaN).

Two implementations: a numpy reference built on scikit-image (:func:`apply_contrast`,
:func:`sample_contrast`, :func:`random_contrast`), and a batched torch version that runs on the
tensor's device (:func:`random_contrast_batch`). The torch CLAHE (`clahe.py`) re-implements
skimage's algorithm step by step (16384 grey levels, reflect padding, integer clipping with skimage's
redistribution order, truncating look-up tables, bilinear blending of the four neighbouring
tile mappings), so it agrees with ``equalize_adapthist`` to within float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .clahe import CLAHE_CLIP_LIMIT, CLAHE_NBINS, clahe_batch

CONTRASTS = ("gamma", "clahe", "sigmoid", "log", "none")

# The paper's ranges. Integer ranges are half-open [low, high) like numpy's randint, which is
# what the paper's code used: kernel 25..99, sigmoid gain 1..3.
GAMMA_RANGE = (0.75, 1.75)
CLAHE_KERNEL_RANGE = (25, 100)
SIGMOID_CUTOFF_RANGE = (0.01, 0.75)
SIGMOID_GAIN_RANGE = (1, 4)
LOG_GAIN_RANGE = (-0.5, 0.5)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def minmax(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Min-max normalise each slice (the last two dimensions) to [0, 1].

    numpy arrays and torch tensors (on any device) alike; float dtypes are kept, integer input
    becomes float64 (numpy) or float32 (torch). A constant slice becomes all zeros, not NaN.
    """
    if isinstance(x, torch.Tensor):
        if x.ndim < 2:
            raise ValueError(f"minmax: expected at least 2 dimensions, got shape {tuple(x.shape)}")
        t = x if x.is_floating_point() else x.float()
        if t.numel() == 0:
            return t.clone()
        lo, hi = torch.aminmax(t.flatten(-2), dim=-1, keepdim=True)
        lo, span = lo.unsqueeze(-1), (hi - lo).unsqueeze(-1)
        # a constant slice has t - lo == 0 exactly: dividing by 1 there gives zeros, no NaN
        return (t - lo) / torch.where(span > 0, span, torch.ones_like(span))
    a = np.asarray(x)
    if a.ndim < 2:
        raise ValueError(f"minmax: expected at least 2 dimensions, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if a.size == 0:
        return a.copy()
    lo = a.min(axis=(-2, -1), keepdims=True)
    span = a.max(axis=(-2, -1), keepdims=True) - lo
    out = (a - lo) / np.where(span > 0, span, 1)  # constant slice: 0 / 1
    return out.astype(a.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# numpy / scikit-image reference
# --------------------------------------------------------------------------------------------


def apply_contrast(image: np.ndarray, name: str, params: dict) -> np.ndarray:
    """Apply one named contrast change with scikit-image (the reference implementation).

    image: 2D array, any range (min-max normalised first). params: gamma -> {"gamma"};
    clahe -> {"kernel_size", optional "clip_limit" (0.01), "nbins" (512)};
    sigmoid -> {"cutoff", "gain"}; log -> {"gain"}; none -> {}.
    Returns float64 in [0, 1].
    """
    from skimage import exposure

    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"apply_contrast: expected a 2D image, got shape {img.shape}")
    x = minmax(img.astype(np.float64))
    if name == "gamma":
        out = exposure.adjust_gamma(x, float(params["gamma"]))
    elif name == "clahe":
        if float(x.max()) == float(x.min()):
            return np.zeros_like(x)  # skimage would return a constant; keep the zeros rule
        out = exposure.equalize_adapthist(
            x,
            kernel_size=int(params["kernel_size"]),
            clip_limit=float(params.get("clip_limit", CLAHE_CLIP_LIMIT)),
            nbins=int(params.get("nbins", CLAHE_NBINS)),
        )
    elif name == "sigmoid":
        out = exposure.adjust_sigmoid(x, cutoff=float(params["cutoff"]), gain=float(params["gain"]))
    elif name == "log":
        out = np.abs(exposure.adjust_log(x, float(params["gain"])))
    elif name == "none":
        out = x
    else:
        raise ValueError(f"apply_contrast: unknown contrast {name!r}; expected one of {CONTRASTS}")
    return minmax(np.asarray(out, dtype=np.float64))


def sample_contrast(rng: np.random.Generator) -> tuple[str, dict]:
    """Draw one contrast name (uniform over CONTRASTS) and its parameters (the paper's ranges)."""
    name = CONTRASTS[int(rng.integers(len(CONTRASTS)))]
    if name == "gamma":
        params: dict[str, Any] = {"gamma": float(rng.uniform(*GAMMA_RANGE))}
    elif name == "clahe":
        params = {
            "kernel_size": int(rng.integers(*CLAHE_KERNEL_RANGE)),
            "clip_limit": CLAHE_CLIP_LIMIT,
            "nbins": CLAHE_NBINS,
        }
    elif name == "sigmoid":
        params = {
            "cutoff": float(rng.uniform(*SIGMOID_CUTOFF_RANGE)),
            "gain": int(rng.integers(*SIGMOID_GAIN_RANGE)),
        }
    elif name == "log":
        params = {"gain": float(rng.uniform(*LOG_GAIN_RANGE))}
    else:
        params = {}
    return name, params


def random_contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random contrast augmentation of a 2D image (numpy reference) -> float64 in [0, 1]."""
    name, params = sample_contrast(rng)
    return apply_contrast(image, name, params)


# --------------------------------------------------------------------------------------------
# Batched torch
# --------------------------------------------------------------------------------------------


def sample_contrast_batch(
    n: int, generator: torch.Generator | None = None
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Draw n contrast names and every parameter for each sample, with the torch generator.

    Returns (names, params) with params on the generator's device (CPU without a generator):
    "gamma", "cutoff", "log_gain" float64 (n,); "kernel_size", "sigmoid_gain" int64 (n,).
    All parameters are drawn for every sample, in a fixed order, so the random stream does not
    depend on which contrasts were chosen.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    kw = {"generator": generator, "device": dev}

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, dtype=torch.float64, **kw)

    choice = torch.randint(0, len(CONTRASTS), (n,), **kw)
    params = {
        "gamma": uniform(*GAMMA_RANGE),
        "kernel_size": torch.randint(*CLAHE_KERNEL_RANGE, (n,), **kw),
        "cutoff": uniform(*SIGMOID_CUTOFF_RANGE),
        "sigmoid_gain": torch.randint(*SIGMOID_GAIN_RANGE, (n,), **kw),
        "log_gain": uniform(*LOG_GAIN_RANGE),
    }
    names = [CONTRASTS[i] for i in choice.tolist()]
    return names, params


def sample_params(names: list[str], params: dict[str, torch.Tensor], i: int) -> dict:
    """Sample i of a batch draw as the (name-specific) params dict of :func:`apply_contrast`."""
    name = names[i]
    if name == "gamma":
        return {"gamma": float(params["gamma"][i])}
    if name == "clahe":
        return {"kernel_size": int(params["kernel_size"][i]), "clip_limit": CLAHE_CLIP_LIMIT,
                "nbins": CLAHE_NBINS}
    if name == "sigmoid":
        return {"cutoff": float(params["cutoff"][i]), "gain": int(params["sigmoid_gain"][i])}
    if name == "log":
        return {"gain": float(params["log_gain"][i])}
    return {}


def _as_slices(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) -> (B, H, W) view."""
    if images.ndim == 4 and images.shape[1] == 1:
        return images[:, 0]
    if images.ndim == 3:
        return images
    raise ValueError(f"expected images of shape (B, 1, H, W) or (B, H, W), got {tuple(images.shape)}")


def apply_contrast_batch(
    images: torch.Tensor, names: list[str], params: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Apply the given contrast per sample (batched torch, on the images' device).

    images (B, 1, H, W) or (B, H, W); names: B entries of CONTRASTS; params as returned by
    :func:`sample_contrast_batch` (any device). Returns the same shape, min-max [0, 1] per slice.
    """
    x = _as_slices(images)
    b = x.shape[0]
    if len(names) != b:
        raise ValueError(f"apply_contrast_batch: {len(names)} names for a batch of {b}")
    bad = sorted({n for n in names if n not in CONTRASTS})
    if bad:
        raise ValueError(f"apply_contrast_batch: unknown contrast(s) {bad}; expected {CONTRASTS}")
    dev = x.device
    # compute in float32 at least (half precision would not meet the 1e-5 agreement)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = minmax(x.to(dtype))
    out = x.clone()

    def select(name: str) -> torch.Tensor:
        return torch.tensor([i for i, n in enumerate(names) if n == name], dtype=torch.long)

    def param(key: str, idx: torch.Tensor) -> torch.Tensor:
        # one value per selected sample, shaped to broadcast over (n, H, W)
        return params[key][idx.to(params[key].device)].to(dev, dtype).view(-1, 1, 1)

    for name in ("gamma", "sigmoid", "log", "clahe"):
        idx = select(name)
        if idx.numel() == 0:
            continue
        on_dev = idx.to(dev)
        xs = x[on_dev]
        if name == "gamma":
            ys = xs ** param("gamma", idx)
        elif name == "sigmoid":
            ys = 1.0 / (1.0 + torch.exp(param("sigmoid_gain", idx) * (param("cutoff", idx) - xs)))
        elif name == "log":
            ys = (param("log_gain", idx) * torch.log2(1.0 + xs)).abs()
        else:
            ks = params["kernel_size"][idx.to(params["kernel_size"].device)].tolist()
            ys = clahe_batch(xs, ks).to(dtype)
        out[on_dev] = ys
    out = minmax(out).reshape(images.shape)
    return out.to(images.dtype) if images.is_floating_point() else out


def random_contrast_batch(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    names: list[str] | None = None,
) -> torch.Tensor:
    """One random contrast augmentation per sample, batched torch on the images' device.

    images: (B, 1, H, W) (or (B, H, W)) float in [0, 1]. Names and parameters are drawn with
    `generator` (on its own device; the global CPU generator when None) and then moved to the
    images' device. `names` (B entries of CONTRASTS) fixes the choice per sample while the
    parameters stay random. Returns the same shape, min-max [0, 1] per slice, never NaN.
    """
    b = _as_slices(images).shape[0]
    drawn, params = sample_contrast_batch(b, generator)
    if names is not None:
        names = list(names)
        if len(names) != b:
            raise ValueError(f"random_contrast_batch: {len(names)} names for a batch of {b}")
    return apply_contrast_batch(images, names if names is not None else drawn, params)
