"""CLAHE for batches of slices on any torch device: ``skimage.exposure.equalize_adapthist``
(2D) re-implemented step by step so that it agrees with it to within float rounding.

`clahe_batch` puts each pixel on skimage's grey-level bins (`_grey_bins`: 16384 levels) and
runs the four steps of the algorithm, each a function:

1. `region_histograms`: histograms of the contextual regions (reflect padding), per kernel size;
2. `clip_histograms`: integer clipping with skimage's redistribution order;
3. `cumulative_maps`: truncating look-up tables from the clipped histograms;
4. `blend_maps`: bilinear blending of the four neighbouring regions' maps at every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CLAHE_CLIP_LIMIT", "CLAHE_NBINS", "blend_maps", "clahe_batch", "clip_histograms",
           "cumulative_maps", "region_histograms"]

CLAHE_CLIP_LIMIT = 0.01   # the paper's settings
CLAHE_NBINS = 512
# skimage's CLAHE works on 2**14 grey levels (NR_OF_GRAY in skimage/exposure/_adapthist.py).
_NR_OF_GRAY = 2**14


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
    n = images.shape[0]
    if isinstance(kernel_sizes, int):
        kernel_sizes = [kernel_sizes] * n
    kernel_sizes = [int(k) for k in kernel_sizes]
    if len(kernel_sizes) != n:
        raise ValueError(f"clahe_batch: {len(kernel_sizes)} kernel sizes for {n} slices")
    if n == 0:
        return images.float()
    fdt = torch.float64 if _float64_ok(images.device) else torch.float32
    binned, const = _grey_bins(images, nbins, fdt)  # (N, H, W) histogram bin of every pixel
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(kernel_sizes):
        if k < 1:
            raise ValueError(f"clahe_batch: kernel size must be >= 1, got {k}")
        groups.setdefault(k, []).append(i)
    regions = [region_histograms(binned, k, members, nbins, clip_limit)
               for k, members in groups.items()]
    hist = clip_histograms(torch.cat([r.hist for r in regions]),
                           torch.cat([r.clip for r in regions]))
    maps = cumulative_maps(hist, torch.cat([r.pixels for r in regions]), fdt)
    out = blend_maps(maps, regions, binned, fdt)
    # a constant slice stays constant (skimage's float blending can leave 1-level specks)
    out.masked_fill_(const, 0.0)
    return out.div_(_NR_OF_GRAY - 1)


@dataclass
class _Regions:
    """The contextual regions of the slices that share one kernel size."""

    kernel: int
    members: torch.Tensor   # (G,) slice indices
    rows: int               # regions per column (nh) and per row (nw)
    cols: int
    hist: torch.Tensor      # (G * nh * nw, nbins) int64 histograms
    clip: torch.Tensor      # (G * nh * nw,) clip limit in counts
    pixels: torch.Tensor    # (G * nh * nw,) pixels per region


def region_histograms(binned: torch.Tensor, k: int, members: list[int], nbins: int,
                      clip_limit: float) -> _Regions:
    """Step 1: histograms of the k x k contextual regions of the slices `members` of `binned`
    (N, H, W) bin indices; regions tile [0, n*k) in each axis, reflected past the image border
    like skimage's pad. One bincount for the whole group (key = region * nbins + bin)."""
    dev = binned.device
    _, height, width = binned.shape
    g = len(members)
    idx = torch.tensor(members, device=dev)
    nh, nw = math.ceil(height / k), math.ceil(width / k)
    r = _reflect_index(nh * k, height, dev)
    cc = _reflect_index(nw * k, width, dev)
    tiles = binned[idx.view(-1, 1, 1), r.view(1, -1, 1), cc.view(1, 1, -1)]
    tile = (
        torch.arange(g, device=dev).view(-1, 1, 1) * (nh * nw)
        + (torch.arange(nh * k, device=dev) // k).view(1, -1, 1) * nw
        + (torch.arange(nw * k, device=dev) // k).view(1, 1, -1)
    )
    tiles += tile * nbins
    hist = torch.bincount(tiles.flatten(), minlength=g * nh * nw * nbins)
    kernel_elements = k * k
    # clip_limit 0: no clipping (plain AHE), as skimage
    clim = int(np.clip(clip_limit * kernel_elements, 1, None)) if clip_limit > 0 \
        else kernel_elements
    count = g * nh * nw
    return _Regions(k, idx, nh, nw, hist.view(count, nbins),
                    torch.full((count,), clim, device=dev, dtype=torch.long),
                    torch.full((count,), kernel_elements, device=dev, dtype=torch.long))


def cumulative_maps(hist: torch.Tensor, pixels: torch.Tensor, fdt: torch.dtype) -> torch.Tensor:
    """Step 3: grey-level maps (T, nbins) int32 of clipped histograms (T, nbins), as skimage:
    float64 cdf * (16383 / n_pixels), clipped, truncated to int."""
    scale = (_NR_OF_GRAY - 1) / pixels.to(fdt)
    maps = torch.clamp(torch.cumsum(hist, 1).to(fdt) * scale.view(-1, 1), max=_NR_OF_GRAY - 1)
    return maps.to(torch.int32)


def blend_maps(maps: torch.Tensor, regions: list[_Regions], binned: torch.Tensor,
               fdt: torch.dtype) -> torch.Tensor:
    """Step 4: each pixel's level, the bilinear blend of the four surrounding region maps
    evaluated at its bin. maps: (T, nbins) in `regions` order; returns (N, H, W) float32 levels
    (0..16383)."""
    n, height, width = binned.shape
    dev = binned.device
    out = torch.empty((n, height, width), dtype=torch.float32, device=dev)
    start = 0
    for reg in regions:
        k, idx, nh, nw = reg.kernel, reg.members, reg.rows, reg.cols
        g = idx.numel()
        count = reg.hist.shape[0]
        nbins = maps.shape[1]
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
    return out


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


def clip_histograms(hist: torch.Tensor, clim: torch.Tensor) -> torch.Tensor:
    """Step 2: clip integer histograms (T, nbins) at clim (T,) and redistribute the excess exactly as
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
