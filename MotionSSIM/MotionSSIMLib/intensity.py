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
tensor's device (:func:`random_contrast_batch`). The torch CLAHE re-implements skimage's
algorithm step by step (16384 grey levels, reflect padding, integer clipping with skimage's
redistribution order, truncating look-up tables, bilinear blending of the four neighbouring
tile mappings), so it agrees with ``equalize_adapthist`` to within float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

CONTRASTS = ("gamma", "clahe", "sigmoid", "log", "none")

# The paper's ranges. Integer ranges are half-open [low, high) like numpy's randint, which is
# what the paper's code used: kernel 25..99, sigmoid gain 1..3.
GAMMA_RANGE = (0.75, 1.75)
CLAHE_KERNEL_RANGE = (25, 100)
CLAHE_CLIP_LIMIT = 0.01
CLAHE_NBINS = 512
SIGMOID_CUTOFF_RANGE = (0.01, 0.75)
SIGMOID_GAIN_RANGE = (1, 4)
LOG_GAIN_RANGE = (-0.5, 0.5)

# skimage's CLAHE works on 2**14 grey levels (NR_OF_GRAY in skimage/exposure/_adapthist.py).
_NR_OF_GRAY = 2**14


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


# --------------------------------------------------------------------------------------------
# Batched CLAHE (skimage.exposure.equalize_adapthist, re-implemented for torch)
# --------------------------------------------------------------------------------------------


def _reflect_index(n_out: int, size: int, device: torch.device) -> torch.Tensor:
    """Indices 0..n_out-1 of a signal of length `size`, mirrored past its end like numpy's
    pad(mode="reflect") (edge not repeated), repeating the reflection for long pads."""
    idx = torch.arange(n_out, device=device)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    m = idx % period
    return torch.where(m >= size, period - m, m)


def _float64_ok(device: torch.device) -> bool:
    return device.type != "mps"  # MPS has no float64


def _clip_histograms(hist: torch.Tensor, clim: torch.Tensor) -> torch.Tensor:
    """Clip integer histograms (T, nbins) at clim (T,) and redistribute the excess exactly as
    skimage's clip_histogram does, vectorised over all T histograms (which may come from
    different kernel sizes)."""
    nbins = hist.shape[1]
    c = clim.view(-1, 1)
    n_excess = (hist - c).clamp_(min=0).sum(1)
    hist = torch.minimum(hist, c)

    bin_incr = (n_excess // nbins).view(-1, 1)
    upper = c - bin_incr  # bins above this are filled up to the limit
    low = hist < upper
    n_excess -= low.sum(1) * bin_incr[:, 0]
    hist += low * bin_incr
    mid = (hist >= upper) & (hist < c)
    n_excess += ((hist - c) * mid).sum(1)
    hist = torch.where(mid, c, hist)

    # skimage hands out the rest one count at a time: for index = 0, 1, ...: step =
    # max(1, n_under // n_excess), +1 on the under-limit bins among index, index + step, ...
    # Done here in lockstep for the histograms that still have excess, on those rows only.
    rows = torch.nonzero(n_excess > 0).flatten()
    if rows.numel() == 0:
        return hist
    h = hist[rows]
    e = n_excess[rows]
    ch = c[rows]
    pos = torch.arange(nbins, device=hist.device).view(1, -1)
    while True:
        prev = e.clone()
        for index in range(nbins):
            active = e > 0
            if not bool(active.any()):
                break
            under = h < ch
            step = torch.clamp(under.sum(1) // torch.clamp(e, min=1), min=1).view(-1, 1)
            hit = under & (pos >= index) & ((pos - index) % step == 0) & active.view(-1, 1)
            h = h + hit
            e = e - hit.sum(1)
        # skimage repeats the pass only while it makes progress
        stalled = e == prev
        if not bool(((e > 0) & ~stalled).any()):
            break
        e = torch.where(stalled, torch.zeros_like(e), e)
    hist[rows] = h
    return hist


def clahe_batch(
    images: torch.Tensor,
    kernel_sizes: list[int] | int,
    clip_limit: float = CLAHE_CLIP_LIMIT,
    nbins: int = CLAHE_NBINS,
) -> torch.Tensor:
    """Batched CLAHE equal to ``skimage.exposure.equalize_adapthist`` (2D, per slice).

    images: (N, H, W) float in [0, 1] (each slice min-max normalised); kernel_sizes: one int per
    slice or one for all. Slices are grouped by kernel size for the histograms and blending;
    the clipping of all histograms runs in one batch. Returns (N, H, W) float32 in [0, 1]
    (before the final min-max: skimage's output levels / 16383 after its own rescale).
    """
    if images.ndim != 3:
        raise ValueError(f"clahe_batch: expected (N, H, W), got {tuple(images.shape)}")
    n, height, width = images.shape
    dev = images.device
    if isinstance(kernel_sizes, int):
        kernel_sizes = [kernel_sizes] * n
    kernel_sizes = [int(k) for k in kernel_sizes]
    if len(kernel_sizes) != n:
        raise ValueError(f"clahe_batch: {len(kernel_sizes)} kernel sizes for {n} slices")
    if n == 0:
        return images.float()
    fdt = torch.float64 if _float64_ok(dev) else torch.float32
    binned, const = _grey_bins(images, nbins, fdt)  # (N, H, W) histogram bin of every pixel

    groups: dict[int, list[int]] = {}
    for i, k in enumerate(kernel_sizes):
        if k < 1:
            raise ValueError(f"clahe_batch: kernel size must be >= 1, got {k}")
        groups.setdefault(k, []).append(i)

    # 1) histograms of the contextual regions, per kernel size
    hists, clims, npix, layout = [], [], [], []
    for k, members in groups.items():
        g = len(members)
        idx = torch.tensor(members, device=dev)
        nh, nw = math.ceil(height / k), math.ceil(width / k)
        # tiles cover [0, n*k) in each axis, reflected past the image border like skimage's pad
        r = _reflect_index(nh * k, height, dev)
        cc = _reflect_index(nw * k, width, dev)
        tiles = binned[idx.view(-1, 1, 1), r.view(1, -1, 1), cc.view(1, 1, -1)]
        # histogram key = tile number * nbins + bin; one bincount for the whole group
        tile = (
            torch.arange(g, device=dev).view(-1, 1, 1) * (nh * nw)
            + (torch.arange(nh * k, device=dev) // k).view(1, -1, 1) * nw
            + (torch.arange(nw * k, device=dev) // k).view(1, 1, -1)
        )
        tiles += tile * nbins
        hist = torch.bincount(tiles.flatten(), minlength=g * nh * nw * nbins)
        hists.append(hist.view(g * nh * nw, nbins))
        kernel_elements = k * k
        if clip_limit > 0:
            clim = int(np.clip(clip_limit * kernel_elements, 1, None))
        else:
            clim = kernel_elements  # no clipping (plain AHE), as skimage
        clims.append(torch.full((g * nh * nw,), clim, device=dev, dtype=torch.long))
        npix.append(torch.full((g * nh * nw,), kernel_elements, device=dev, dtype=torch.long))
        layout.append((k, idx, nh, nw, g * nh * nw))

    # 2) clip + redistribute all histograms together, 3) cumulative maps (skimage: float64
    # cdf * (16383 / n_pixels), clipped, truncated to int)
    hist = _clip_histograms(torch.cat(hists), torch.cat(clims))
    scale = (_NR_OF_GRAY - 1) / torch.cat(npix).to(fdt)
    maps = torch.clamp(torch.cumsum(hist, 1).to(fdt) * scale.view(-1, 1), max=_NR_OF_GRAY - 1)
    maps = maps.to(torch.int32)

    # 4) bilinear blend of the four surrounding tile mappings, evaluated at each pixel's bin
    out = torch.empty((n, height, width), dtype=torch.float32, device=dev)
    start = 0
    for k, idx, nh, nw, count in layout:
        g = idx.numel()
        m = maps[start:start + count].view(g, nh, nw, nbins)
        start += count
        # repeat the border mappings (skimage pads the map array with "edge")
        m = torch.cat([m[:, :1], m, m[:, -1:]], dim=1)
        m = torch.cat([m[:, :, :1], m, m[:, :, -1:]], dim=2)  # (g, nh+2, nw+2, nbins)
        flat = m.reshape(-1)
        # pixel at row y sits in padded row y + k//2: block index and offset within the block
        ry = torch.arange(height, device=dev) + k // 2
        cx = torch.arange(width, device=dev) + k // 2
        by, uy = ry // k, (ry % k).to(fdt) / k
        bx, ux = cx // k, (cx % k).to(fdt) / k
        base = (
            (torch.arange(g, device=dev).view(-1, 1, 1) * (nh + 2) + by.view(1, -1, 1)) * (nw + 2)
            + bx.view(1, 1, -1)
        ) * nbins
        base += binned[idx] if g < n else binned
        wy = (1 - uy.view(-1, 1), uy.view(-1, 1))
        wx = (1 - ux.view(1, -1), ux.view(1, -1))
        acc = torch.zeros((g, height, width), dtype=torch.float32, device=dev)
        # same order and precision as skimage: (int map * float64 weight) -> float32, summed
        for ey in (0, 1):
            for ex in (0, 1):
                off = (ey * (nw + 2) + ex) * nbins
                mapped = torch.take(flat, base + off if off else base)
                acc += torch.mul(mapped, wx[ex] * wy[ey]).to(torch.float32)
        out[idx] = acc.floor_()  # skimage casts back to its uint16 image type
    # a constant slice stays constant (skimage's float blending can leave 1-level specks)
    out.masked_fill_(const, 0.0)
    return out.div_(_NR_OF_GRAY - 1)


def _grey_bins(
    images: torch.Tensor, nbins: int, fdt: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram bin (int64) of every pixel, as skimage's equalize_adapthist computes it:
    img_as_uint (x * 65535, rounded half to even), rescale_intensity to 0..16383 over the
    slice's own range, rounded, then integer division by 1 + 16384 // nbins. Also returns
    the (N, 1, 1) mask of constant slices."""
    u = images.to(fdt)  # a copy: the in-place steps below never touch the caller's tensor
    if u.data_ptr() == images.data_ptr():
        u = u.clone()
    u.mul_(65535).round_().clamp_(0, 65535)
    lo = u.amin(dim=(1, 2), keepdim=True)
    span = u.amax(dim=(1, 2), keepdim=True) - lo
    const = span == 0
    span[const] = 1  # constant slice: every pixel is level 0
    u.sub_(lo).div_(span).mul_(_NR_OF_GRAY - 1).round_()
    # integer levels <= 16383 are exact in float, so floor(level / bin_size) is exact
    u.div_(1 + _NR_OF_GRAY // nbins).floor_()
    return u.long(), const
