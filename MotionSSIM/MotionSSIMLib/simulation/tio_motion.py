"""TorchIO's `Motion` (Shaw et al., TorchIO 1.2.1) for 2D slices, batched in torch.

Re-implemented in batched torch (``backend="torch"``, the default, CPU or GPU, no TorchIO or
SimpleITK import), or run through TorchIO itself one slice at a time (``backend="torchio"``,
for checks). The torch version reproduces TorchIO's conventions exactly (see
``_tio_apply_torch``); it agrees with ``tio.Motion`` to float32 rounding
(Testing/test_motion.py states the tolerance). Its centre segment of k-space is the unmoved
one, narrowing as the number of transforms grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..base.errors import MotionSSIMError
from ..imaging.intensity import minmax
from .motion_base import (
    REFERENCE_SIZE,
    _check_batch,
    _check_params,
    _Params,
    _severity_vector,
    _uniform,
)

__all__ = [
    "TIO_BACKENDS", "TioMotionParams", "apply_tio_motion", "draw_tio_params", "tio_motion",
    "tio_motion_call", "torchio_motion",
]

# TorchIO simulator (its centre segment is the unmoved one; it narrows as transforms increase):
TIO_MAX_TRANSFORMS = 20
TIO_MAX_DEGREES = 25.0
TIO_MAX_SHIFT = 25.0  # pixels of a 256-pixel slice (scaled with size; 1 mm pixels)
TIO_BACKENDS = ("torch", "torchio")
# Poses resampled and transformed at once by the torch TorchIO simulator (bounds memory:
# ~1 MB per pose at 256 x 256).
_TIO_POSE_CHUNK = 96


class MotionBackendError(MotionSSIMError):
    """The installed TorchIO does not take the arguments this adapter passes to Motion."""


# --------------------------------------------------------------------------------------------
# TorchIO's Motion, batched in torch
# --------------------------------------------------------------------------------------------


@dataclass
class TioMotionParams(_Params):
    """What the TorchIO simulator drew, per sample (CPU tensors, first dimension B), in the
    terms of ``tio.Motion`` on the slice stored as a (1, 1, H, W) image with 1 mm pixels.

    severity (B,) float32; transpose (B,) bool: the slice is transposed before the motion (so
    k-space is split along y instead of x: the PE axis); n_poses (B,) int64, 1..T with
    T = TIO_MAX_TRANSFORMS; degrees (B, T) float32: rotation about TorchIO's first axis (the
    through-plane one); translation (B, T, 2) float32: TorchIO's second and third components
    in mm (the first is 0); times (B, T) float32 in (0, 1), increasing: when each movement
    happens, as a share of the acquisition. Entries past n_poses are unused (zero). band (B,)
    float32 in (0, 1]: the share of the k-space columns (the split axis) that were acquired
    (`MotionParams.acquired`); the times are shares of those columns.
    """

    severity: torch.Tensor
    transpose: torch.Tensor
    n_poses: torch.Tensor
    degrees: torch.Tensor
    translation: torch.Tensor
    times: torch.Tensor
    band: torch.Tensor | None = None  # None: the whole grid (1 for every sample)

    def describe(self, i: int) -> dict[str, Any]:
        """Sample i as plain Python values (JSON-serialisable)."""
        n = int(self.n_poses[i])
        return {
            "simulator": "torchio", "severity": float(self.severity[i]),
            "pe_axis": "y" if bool(self.transpose[i]) else "x",
            "poses_degrees": self.degrees[i, :n].tolist(),
            "poses_translation_mm": self.translation[i, :n].tolist(),
            "times": self.times[i, :n].tolist(),
            "acquired_band": float(self.acquired_band()[i]),
        }


def draw_tio_params(
    batch: int,
    severity: torch.Tensor | float,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> TioMotionParams:
    """Draw the TorchIO simulator's parameters for `batch` slices of `size` (H, W).

    Per sample: transposed with probability 1/2 (random PE axis); n = ceil(s T U(0.5, 1))
    poses (at least 1); each pose a rotation of s * TIO_MAX_DEGREES * U(0.25, 1) degrees of
    random sign and a translation of s * TIO_MAX_SHIFT * U(0.25, 1) pixels of a 256 slice
    (scaled with the slice) in a uniform direction; movement times as RandomMotion draws them:
    evenly spaced, jittered by up to 30 % of a step. Fixed shapes and order: a seed fixes it."""
    s = _severity_vector(severity, batch)
    t = TIO_MAX_TRANSFORMS
    u_axis = _uniform((batch,), generator)
    u_count = _uniform((batch,), generator)
    u_pose = _uniform((batch, t, 5), generator)
    n = torch.ceil(s * t * (0.5 + 0.5 * u_count)).clamp(1, t).long()
    used = torch.arange(t)[None, :] < n[:, None]
    sign = torch.where(u_pose[..., 0] < 0.5, -1.0, 1.0)
    degrees = s[:, None] * TIO_MAX_DEGREES * (0.25 + 0.75 * u_pose[..., 1]) * sign
    shift = s[:, None] * TIO_MAX_SHIFT * min(size) / REFERENCE_SIZE * (0.25 + 0.75 * u_pose[..., 2])
    direction = 2 * math.pi * u_pose[..., 3]
    translation = torch.stack([shift * torch.sin(direction), shift * torch.cos(direction)], -1)
    step = 1.0 / (n.float() + 1)[:, None]
    k = torch.arange(1, t + 1, dtype=torch.float32)[None, :]
    times = step * k + (u_pose[..., 4] * 2 - 1) * 0.3 * step
    zero = torch.zeros(())
    return TioMotionParams(
        severity=s, transpose=u_axis < 0.5, n_poses=n,
        degrees=torch.where(used, degrees, zero),
        translation=torch.where(used[..., None], translation, zero),
        times=torch.where(used, times, zero),
    )


def _tio_resample(x: torch.Tensor, degrees: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """The moved copies TorchIO 1.2.1 makes with SimpleITK, for P poses at once.

    x (P, H, W) float32 (each pose's own slice), degrees (P,), translation (P, 2) mm (CPU).
    TorchIO's conventions, reproduced exactly: the slice is a (1, H, W) volume with an identity
    RAS affine, i.e. LPS physical point (-i, -j, k) for index (i, j, k) with j the row and k
    the column. Each pose is an Euler3DTransform with rotation (a, 0, 0) and translation
    (0, ty, tz); TorchIO sets its centre to the image centre but then rebuilds the transform
    from (matrix, translation) with the default centre 0, so in 1.2.1 the rotation is about
    the physical origin, the first pixel (j, k) = (0, 0), not about the centre. SimpleITK
    resamples output point p at input point R p + t. In indices:
        j_src =  cos(a) j + sin(a) k - ty,     k_src = -sin(a) j + cos(a) k + tz.
    ITK's linear interpolation: a point is inside if -0.5 <= index < size - 0.5 on each axis
    (else the default value, the image minimum), and neighbours past the edge repeat the edge
    pixel, which is grid_sample's bilinear with border padding plus that inside mask."""
    p, h, w = x.shape
    dev = x.device
    rad = degrees.double() * (math.pi / 180)  # angles in float64 like SimpleITK
    c, s = rad.cos(), rad.sin()
    ty, tz = translation[:, 0].double(), translation[:, 1].double()
    # The same map in grid_sample's normalised coordinates (align_corners=True: -1 and 1 are
    # the first and last pixel centres, u = k / aw - 1, v = j / ah - 1). Each grid component
    # is an outer sum of a row term and a column term: two broadcast adds (affine_grid's bmm
    # is several times slower on the CPU).
    aw, ah = max(w - 1, 1) / 2, max(h - 1, 1) / 2
    u = torch.linspace(-1, 1, w, dtype=torch.float64)[None, :]
    v = torch.linspace(-1, 1, h, dtype=torch.float64)[None, :]
    cc, ss = c[:, None], s[:, None]
    gx_u = cc * u + (cc - ss * ah / aw + tz[:, None] / aw - 1)  # (P, W)
    gx_v = -ss * ah / aw * v  # (P, H)
    gy_u = ss * aw / ah * u
    gy_v = cc * v + (cc + ss * aw / ah - ty[:, None] / ah - 1)
    g_u = torch.stack([gx_u, gy_u], -1).float().to(dev)  # (P, W, 2)
    g_v = torch.stack([gx_v, gy_v], -1).float().to(dev)  # (P, H, 2)
    grid = g_v[:, :, None, :] + g_u[:, None, :, :]  # (P, H, W, 2)
    moved = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border",
                          align_corners=True)[:, 0]
    # ITK's inside test, -0.5 <= index < size - 0.5 on both axes, cuts each output row j to
    # one interval of columns k (the two conditions are linear in k): computed per row, then
    # one comparison per pixel (the open/closed ends differ only on a null set).
    j = torch.arange(h, dtype=torch.float64)[None, :]
    lo = torch.full((p, h), -math.inf, dtype=torch.float64)
    hi = torch.full((p, h), math.inf, dtype=torch.float64)
    # a k + b in [-0.5, size - 0.5): j_src = s k + (c j - ty), k_src = c k + (tz - s j)
    for a_, b_, size in ((ss.expand(p, h), cc * j - ty[:, None], h),
                         (cc.expand(p, h), tz[:, None] - ss * j, w)):
        safe = torch.where(a_ == 0, torch.ones_like(a_), a_)
        k1, k2 = (-0.5 - b_) / safe, (size - 0.5 - b_) / safe
        inside_b = (b_ >= -0.5) & (b_ < size - 0.5)
        lo = torch.where(a_ == 0, torch.where(inside_b, lo, math.inf),
                         torch.maximum(lo, torch.minimum(k1, k2)))
        hi = torch.where(a_ == 0, torch.where(inside_b, hi, -math.inf),
                         torch.minimum(hi, torch.maximum(k1, k2)))
    k = torch.arange(w, dtype=torch.float32, device=dev)
    lo_d = lo.clamp(-1, w).float().to(dev)[:, :, None]
    hi_d = hi.clamp(-1, w).float().to(dev)[:, :, None]
    outside = (k < lo_d) | (k >= hi_d)
    # the default value is the image minimum: 0 for the min-max normalised slices used here
    return torch.where(outside, x.flatten(1).amin(dim=1)[:, None, None], moved)


def _tio_apply_torch(x: torch.Tensor, params: TioMotionParams) -> torch.Tensor:
    """TorchIO's Motion.add_artifact on a batch: x (N, H, W) float32 -> real part (N, H, W).

    TorchIO takes the centred 3D FFT of the unmoved image and of each moved copy, splits the
    last axis (k-space columns, in fftshift order) into segments at floor(W * times), fills
    segment s from spectrum s (0 = unmoved, s >= 1 = pose s), but first swaps the unmoved
    spectrum with the one of the segment that contains the k-space centre (the first time
    > 0.5; the last segment if none), then takes the real part of the inverse FFT. Segments
    run along the last axis only, so the FFT along the other axes cancels: one FFT along the
    rows per image (rfft: real images have Hermitian rows) and one inverse FFT per sample."""
    n_img, h, w = x.shape
    dev = x.device
    per_chunk = _TIO_POSE_CHUNK * (1 if dev.type == "cpu" else 8)
    n = params.n_poses
    t_used = int(n.max())
    used = torch.arange(t_used)[None, :] < n[:, None]  # (N, T) CPU
    owner, pose = torch.nonzero(used, as_tuple=True)  # the P poses, sample-major
    flat = torch.full((n_img, t_used), -1, dtype=torch.long)
    flat[owner, pose] = torch.arange(owner.numel())

    # Which spectrum fills each k-space column. Column c (fftshift order) is in segment
    # s = #{movements with floor(W * time) <= c}; float64 like TorchIO's numpy arithmetic.
    times = params.times[:, :t_used].double()
    # the acquired columns are the central band * W of the shifted spectrum: times are shares
    # of those (band 1: TorchIO's floor(W * time))
    band = params.acquired_band().double()[:, None]
    cut = torch.where(used, torch.floor(w * (1 - band) / 2 + w * band * times),
                      torch.full_like(times, float("inf")))
    col = torch.arange(w, dtype=torch.float64)
    seg = (cut[:, None, :] <= col[None, :, None]).sum(-1)  # (N, W)
    late = used & (times > 0.5)
    centre = torch.where(late.any(1), late.float().argmax(1), n)  # TorchIO's sort_spectra
    spectrum = torch.where(seg == 0, centre[:, None], torch.where(seg == centre[:, None], 0, seg))
    # spectrum 0 is the unmoved image (row b of the identity block), spectrum e >= 1 pose e-1
    pose_row = flat.gather(1, (spectrum - 1).clamp(min=0))
    src = torch.where(spectrum == 0, torch.arange(n_img)[:, None], n_img + pose_row)

    # Column c of the shifted spectrum is frequency f = (c - W//2) mod W; rfft holds f <= W//2,
    # the others are conj(X[W - f]).
    f = (torch.arange(w) - w // 2) % w
    conj = f > w // 2
    f_r = torch.where(conj, w - f, f)

    # Spectra of the unmoved images (rows 0..N-1) and of the moved copies (rows N..N+P-1),
    # written in place: one rfft along the rows each.
    spectra = torch.empty((n_img + owner.numel(), h, w // 2 + 1), dtype=torch.complex64,
                          device=dev)
    torch.fft.rfft(x, dim=-1, out=spectra[:n_img])
    for lo in range(0, owner.numel(), per_chunk):
        sl = slice(lo, lo + per_chunk)
        own = owner[sl]
        imgs = _tio_resample(x[own.to(dev)], params.degrees[own, pose[sl]],
                             params.translation[own, pose[sl]])
        torch.fft.rfft(imgs, dim=-1, out=spectra[n_img + lo: n_img + lo + own.numel()])
    # (N, W, H): advanced indices first, then the sliced row axis
    cols = spectra[src.to(dev), :, f_r.to(dev)[None, :].expand(n_img, w)]
    cols = torch.where(conj.to(dev)[None, :, None], cols.conj(), cols)
    # Inverse FFT along the columns, in fftshift order: undo the shift by putting column c at
    # frequency f before the plain inverse FFT.
    k_unshifted = torch.empty_like(cols)
    k_unshifted[:, f.to(dev)] = cols
    return torch.fft.ifft(k_unshifted, dim=1).real.transpose(1, 2)


def tio_motion_call(image: np.ndarray, degrees: np.ndarray, translation: np.ndarray,
                    times: np.ndarray) -> np.ndarray:
    """The adapter around ``tio.Motion`` (TorchIO 1.x): one (H, W) slice, n poses.

    degrees (n,) about the through-plane axis, translation (n, 2) in mm (TorchIO's 2nd and 3rd
    components), times (n,). The slice is stored as a (1, 1, H, W) ScalarImage (identity
    affine, 1 mm pixels) so TorchIO splits k-space along an in-plane axis (a (1, H, W, 1)
    tensor would be split along its length-1 axis: a plain rigid shift, TorchIO issue 81).
    Returns TorchIO's output, the real part, float32 (H, W). TorchIO 2.0 changes Motion's
    arguments: any other major version, or a call it refuses, raises MotionBackendError."""
    import torchio as tio

    major = str(getattr(tio, "__version__", "0")).split(".")[0]
    if major != "1":
        raise MotionBackendError(
            f"torchio {tio.__version__}: motion adapter written for TorchIO 1.x "
            "(requirements.txt pins 1.2.1); use backend='torch'")
    img = np.ascontiguousarray(image, dtype=np.float32)
    n = len(degrees)
    rot = np.zeros((n, 3))
    rot[:, 0] = np.asarray(degrees, dtype=np.float64)  # about the (length-1) first axis
    trans = np.zeros((n, 3))
    trans[:, 1:] = np.asarray(translation, dtype=np.float64).reshape(n, 2)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(img)[None, None]))
    try:
        motion = tio.Motion(degrees=rot, translation=trans,
                            times=np.asarray(times, dtype=np.float64),
                            image_interpolation="linear")
        out = motion(subject)["image"].data
    except TypeError as err:  # an argument renamed or removed
        raise MotionBackendError(f"torchio {tio.__version__}: Motion refused the adapter's "
                                 f"arguments ({err})") from err
    if tuple(out.shape) != (1, 1) + img.shape:
        raise MotionBackendError(f"torchio {tio.__version__}: Motion returned shape "
                                 f"{tuple(out.shape)} for {(1, 1) + img.shape}")
    return out[0, 0].numpy().astype(np.float32, copy=False)


def apply_tio_motion(images: torch.Tensor, params: TioMotionParams,
                     backend: str = "torch") -> torch.Tensor:
    """Apply drawn TorchIO motion (deterministic). images (B,1,H,W) on any device.

    Each slice is min-max normalised, transposed where params.transpose says, corrupted by
    TorchIO's algorithm (backend "torch": batched here, on the images' device; "torchio": the
    real ``tio.Motion`` through :func:`tio_motion_call`, on the CPU one slice at a time),
    transposed back; then the absolute value of TorchIO's real part (MR images are magnitudes:
    the signed real part would turn the background grey) and min-max. Severity 0: the
    normalised slice unchanged. Returns (B,1,H,W) float32 in [0, 1] on the input device."""
    _check_params(images, params, "apply_tio_motion")
    if backend not in TIO_BACKENDS:
        raise ValueError(f"apply_tio_motion: backend must be one of {TIO_BACKENDS}, got {backend!r}")
    x = minmax(images.float()[:, 0])
    out = x.clone()
    for flip in (False, True):
        idx = torch.nonzero((params.transpose == flip) & (params.severity > 0)).flatten()
        if idx.numel() == 0:
            continue
        idx_dev = idx.to(x.device)
        xs = x[idx_dev].transpose(1, 2) if flip else x[idx_dev]
        p = params.select(idx)
        if backend == "torch":
            # chunks of whole samples with about _TIO_POSE_CHUNK poses each (bounds memory)
            ends = torch.cumsum(p.n_poses, 0)
            # a GPU has the memory for larger chunks, and fewer launches pay there
            per = _TIO_POSE_CHUNK * (1 if x.device.type == "cpu" else 8)
            chunk = (ends - 1) // per
            res = torch.cat([
                _tio_apply_torch(xs[(chunk == c).to(xs.device)].contiguous(), p.select(
                    torch.nonzero(chunk == c).flatten()))
                for c in torch.unique(chunk).tolist()])
        else:
            if bool((p.acquired_band() < 1).any()):
                raise ValueError("apply_tio_motion: an acquired band below 1 needs the torch "
                                 "backend (TorchIO itself splits the whole k-space)")
            arr = xs.detach().cpu().numpy()
            res = torch.from_numpy(np.stack([
                tio_motion_call(arr[i], p.degrees[i, : int(p.n_poses[i])].numpy(),
                                p.translation[i, : int(p.n_poses[i])].numpy(),
                                p.times[i, : int(p.n_poses[i])].numpy())
                for i in range(len(arr))])).to(x.device)
        res = res.abs()
        out[idx_dev] = res.transpose(1, 2) if flip else res
    return minmax(out)[:, None].float()


def tio_motion(images: torch.Tensor, severity: torch.Tensor | float,
               generator: torch.Generator | None = None, backend: str = "torch") -> torch.Tensor:
    """TorchIO's motion simulator on a batch: draw (:func:`draw_tio_params`) then apply
    (:func:`apply_tio_motion`). images (B,1,H,W) in [0, 1]; severity scalar or (B,)."""
    _check_batch(images, "tio_motion")
    params = draw_tio_params(images.shape[0], severity, tuple(images.shape[-2:]), generator)
    return apply_tio_motion(images, params, backend)


def torchio_motion(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """The previous per-slice TorchIO path (numpy Generator draws, the real ``tio.Motion``):
    one 2D slice -> float32 (H, W) in [0, 1]. Kept for checks and benchmarks; training uses
    :func:`random_motion_batch` (the batched torch version of the same algorithm)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"torchio_motion: expected a 2D slice, got shape {img.shape}")
    s = float(np.clip(severity, 0.0, 1.0))
    img = minmax(img)
    # Draw everything first, in a fixed order, so a seed fixes the result.
    transpose = bool(rng.random() < 0.5)
    n = max(1, math.ceil(s * TIO_MAX_TRANSFORMS * rng.uniform(0.5, 1.0)))
    degrees = s * TIO_MAX_DEGREES * rng.uniform(0.25, 1.0, n) * rng.choice([-1.0, 1.0], n)
    shift = s * TIO_MAX_SHIFT * min(img.shape) / REFERENCE_SIZE * rng.uniform(0.25, 1.0, n)
    direction = rng.uniform(0, 2 * math.pi, n)
    step = 1.0 / (n + 1)
    times = step * np.arange(1, n + 1) + rng.uniform(-0.3 * step, 0.3 * step, n)
    if s <= 0:
        return img
    if transpose:
        img = np.ascontiguousarray(img.T)
    trans = np.stack([shift * np.sin(direction), shift * np.cos(direction)], axis=1)
    out = np.abs(tio_motion_call(img, degrees, trans, times))
    if transpose:
        out = out.T
    return minmax(np.ascontiguousarray(out))
