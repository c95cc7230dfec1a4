"""Motion artefact simulators for 2D slices, batched in torch: k-space lines and TorchIO's.

Both simulators corrupt a clean slice the way rigid head motion during a Cartesian acquisition
does: k-space is filled line by line along the phase-encoding (PE) axis, and the lines acquired
while the head was displaced come from a rigidly moved copy of the object. The result is the
magnitude image, min-max normalised to [0, 1].

Both keep the centre of k-space (the lines around k = 0, which carry the image contrast and
position) from the unmoved image. Otherwise the result is mostly a displaced copy of the slice:
its SSIM drops without any visible artefact, which no reference-free model can see.

* ``kspace_motion``: the paper's "in-house" k-space line algorithm.
* More families (continuous trajectories, k-space orderings, EPI, through-plane motion, few
  or many moves) live in ``scanner_motion``; ``draw_motion_params(families=...)`` picks among
  all of MOTION_FAMILIES, and by default among these two exactly as before.
* ``tio_motion``: TorchIO's ``Motion`` (Shaw et al., TorchIO 1.2.1) re-implemented in batched
  torch (``backend="torch"``, the default, CPU or GPU, no TorchIO or SimpleITK import), or run
  through TorchIO itself one slice at a time (``backend="torchio"``, for checks). The torch
  version reproduces TorchIO's conventions exactly (see ``_tio_apply_torch``); it agrees with
  ``tio.Motion`` to float32 rounding (Testing/test_motion.py states the tolerance).

Each simulator follows TorchIO's make_params / apply_transform split: ``draw_*_params`` draws
every random number (CPU ``torch.Generator``, fixed order and sizes, so a seed gives the same
motion on any device and whatever the other samples draw), ``apply_*`` is deterministic. The
parameter dataclasses hold per-sample CPU tensors and can say what one sample went through
(``describe(i)``).

``severity`` in [0, 1] scales everything at once (rotation and translation amplitude, number of
motion poses, share of corrupted lines): 0 returns the input unchanged (SSIM 1); 1 is gross
motion (mean SSIM ~0.43, down to ~0.23, on brain slices: with the k-space centre kept the SSIM
rarely goes lower, as in the paper, where 3 % of the labels were below 0.4). With
``severity=None``, ``random_motion_batch`` draws severity uniformly on [0, 1], which spreads the
SSIM labels over ~0.35 - 1 without a pile-up at 1 (see the README section on motion simulation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MotionSSIMError
from .intensity import minmax
from .settings import MOTION_FAMILIES, family_weights

__all__ = [
    "KspaceMotionParams", "TioMotionParams", "MotionParams",
    "draw_kspace_params", "apply_kspace_motion", "kspace_motion",
    "draw_tio_params", "apply_tio_motion", "tio_motion", "torchio_motion", "tio_motion_call",
    "draw_motion_params", "apply_motion", "random_motion_batch", "TIO_BACKENDS",
    "MOTION_FAMILIES",
]

# Settings at severity 1. Amplitudes scale linearly with severity; the counts and the share of
# corrupted lines grow with it. Calibrated on MNI152 slices (README, motion section): mean
# SSIM ~0.95 at severity 0.1, ~0.65 at 0.5, ~0.43 at 1 for both simulators.
REFERENCE_SIZE = 256  # the model input size: translations are given in its pixels
# k-space line simulator:
KS_MAX_POSES = 8  # rigid poses (one moved copy of the image each)
KS_MAX_DEGREES = 25.0  # in-plane rotation, degrees
KS_MAX_SHIFT = 25.0  # in-plane translation, pixels of a 256-pixel slice (scaled with size)
KS_MAX_GROUPS = 128  # groups of consecutive PE lines, each from one pose or unmoved
KS_MAX_FRACTION = 1.0  # share of line groups taken from moved copies
KS_CENTRE_FRACTION = 0.03  # share of PE lines around k = 0 always taken from the unmoved image
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


def _severity_vector(severity: torch.Tensor | float, batch: int) -> torch.Tensor:
    s = torch.as_tensor(severity, dtype=torch.float32).flatten().cpu()
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise ValueError(f"severity: expected a scalar or {batch} values, got {s.numel()}")
    if not torch.isfinite(s).all():
        raise ValueError("severity: must be finite")
    return s.clamp(0.0, 1.0).contiguous()


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) on CPU float32 from `generator` (drawn where the generator lives, so that a seed
    gives the same motion whatever device the images are on)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).float().cpu()


def _check_batch(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected a (B,1,H,W) tensor, got {shape}")


def _check_params(images: torch.Tensor, params: Any, name: str) -> None:
    _check_batch(images, name)
    if params.batch != images.shape[0]:
        raise ValueError(f"{name}: parameters for {params.batch} samples, "
                         f"images for {images.shape[0]}")


class _Params:
    """Per-sample parameter tensors (first dimension B, on the CPU): selection by index."""

    @property
    def batch(self) -> int:
        return int(self.severity.shape[0])  # type: ignore[attr-defined]

    def select(self, index: torch.Tensor | list[int]) -> Any:
        """The parameters of samples `index` (a new object of the same class)."""
        idx = torch.as_tensor(index, dtype=torch.long).cpu()
        return dataclasses.replace(self, **{  # type: ignore[arg-type]
            f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None})  # type: ignore[arg-type]

    def acquired_band(self) -> torch.Tensor:
        """(B,) float32: the share of the lines acquired along the split axis (1: all)."""
        band = getattr(self, "band", None)
        return torch.ones(self.batch) if band is None else band.float()


# --------------------------------------------------------------------------------------------
# k-space line simulator
# --------------------------------------------------------------------------------------------


@dataclass
class KspaceMotionParams(_Params):
    """What the k-space line simulator drew, per sample (CPU tensors, first dimension B).

    severity (B,) float32; pe_rows (B,) bool: True = each k-space line is a row (PE along y);
    n_poses (B,) int64 rigid poses; radians (B, KS_MAX_POSES) float32 rotation of each pose
    about the slice centre; shift (B, KS_MAX_POSES, 2) float32 (y, x) translation in pixels;
    n_groups (B,) int64 groups of consecutive PE lines; offset (B,) float32 shift of the group
    boundaries, in groups; group_pose (B, KS_MAX_GROUPS + 1) int64: the pose each group takes
    its lines from, -1 = unmoved (the central KS_CENTRE_FRACTION of the lines is always unmoved);
    band (B,) float32 in (0, 1]: the share of the PE lines that were acquired (`MotionParams.acquired`).
    """

    severity: torch.Tensor
    pe_rows: torch.Tensor
    n_poses: torch.Tensor
    radians: torch.Tensor
    shift: torch.Tensor
    n_groups: torch.Tensor
    offset: torch.Tensor
    group_pose: torch.Tensor
    band: torch.Tensor | None = None  # None: the whole grid (1 for every sample)

    def describe(self, i: int) -> dict[str, Any]:
        """Sample i as plain Python values (JSON-serialisable)."""
        n = int(self.n_poses[i])
        g = int(self.n_groups[i])
        return {
            "simulator": "kspace", "severity": float(self.severity[i]),
            "pe_axis": "y" if bool(self.pe_rows[i]) else "x",
            "poses_degrees": [math.degrees(float(a)) for a in self.radians[i, :n]],
            "poses_shift_yx_px": self.shift[i, :n].tolist(),
            "line_groups": g, "group_offset": float(self.offset[i]),
            "group_pose": self.group_pose[i, : g + 1].tolist(),
            "acquired_band": float(self.acquired_band()[i]),
        }


def draw_kspace_params(
    batch: int,
    severity: torch.Tensor | float,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> KspaceMotionParams:
    """Draw the k-space simulator's parameters for `batch` slices of `size` (H, W).

    All random numbers are drawn up front with fixed shapes, in a fixed order, so a seed fixes
    the result (and the draws do not depend on the severities)."""
    s = _severity_vector(severity, batch)
    h, w = size
    u_axis = _uniform((batch,), generator)
    u_count = _uniform((batch, 4), generator)
    u_pose = _uniform((batch, KS_MAX_POSES, 4), generator)
    u_group = _uniform((batch, KS_MAX_GROUPS + 1, 2), generator)

    # Motion states (rigid poses) and line groups; counts grow with severity.
    n_states = torch.ceil(s * KS_MAX_POSES * (0.5 + 0.5 * u_count[:, 0])).clamp(1, KS_MAX_POSES)
    n_groups = torch.ceil(s * KS_MAX_GROUPS * (0.5 + 0.5 * u_count[:, 1])).clamp(1, KS_MAX_GROUPS)
    fraction = s * KS_MAX_FRACTION * (0.6 + 0.4 * u_count[:, 2])  # share of lines to corrupt
    sign = torch.where(u_pose[..., 0] < 0.5, -1.0, 1.0)
    angle = sign * math.radians(KS_MAX_DEGREES) * s[:, None] * (0.25 + 0.75 * u_pose[..., 1])
    # Translations scale with the slice so that a severity looks the same at any matrix size.
    scale = min(h, w) / REFERENCE_SIZE
    shift = KS_MAX_SHIFT * scale * s[:, None] * (0.25 + 0.75 * u_pose[..., 2])
    direction = 2 * math.pi * u_pose[..., 3]
    corrupt = (u_group[..., 0] < fraction[:, None]) & (s > 0)[:, None]
    state = (u_group[..., 1] * n_states[:, None]).long()
    return KspaceMotionParams(
        severity=s, pe_rows=u_axis < 0.5, n_poses=n_states.long(), radians=angle,
        shift=torch.stack([shift * torch.sin(direction), shift * torch.cos(direction)], dim=-1),
        n_groups=n_groups.long(), offset=u_count[:, 3].clone(),
        group_pose=torch.where(corrupt, state, torch.full_like(state, -1)),
    )


def _rotate(x: torch.Tensor, radians: torch.Tensor) -> torch.Tensor:
    """Rotate each (1,H,W) slice of x about its centre by radians[b] (bicubic, zero outside).

    affine_grid works in [-1, 1] coordinates on both axes, so the rotation is conjugated by the
    pixel aspect H/W to stay a true rotation on non-square images."""
    _, _, h, w = x.shape
    cos, sin = torch.cos(radians), torch.sin(radians)
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (h / w)
    theta[:, 1, 0] = sin * (w / h)
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="zeros", align_corners=False)


def apply_kspace_motion(images: torch.Tensor, params: KspaceMotionParams) -> torch.Tensor:
    """Apply drawn k-space line motion (deterministic). images (B,1,H,W) on any device.

    Model, per sample: k-space acquired in linear order along the PE axis (k = -N/2 first), so
    a stretch of scan time is a group of consecutive PE lines. Each pose is a rotation about
    the centre plus a translation applied exactly with the Fourier shift theorem. Returns the
    magnitude of the inverse FFT, min-max normalised per slice: (B,1,H,W) float32 on the input
    device. Cost: one FFT plus one rotation and FFT per pose used; no loop over lines/samples.
    """
    _check_params(images, params, "apply_kspace_motion")
    b, _, h, w = images.shape
    device = images.device
    x = images.float()
    if b == 0:
        return x.clone()

    # Line coordinate of every k-space sample in acquisition order: fftfreq / band + 0.5 runs
    # from 0 (the first acquired line, k = -band N/2) to 1 (the last), so k = 0 sits at 0.5 and
    # groups are contiguous in k. Lines past the acquired band hold no signal (lines < 0 or > 1
    # join the outermost groups).
    fy = torch.fft.fftfreq(h, device=device)  # cycles / pixel
    fx = torch.fft.fftfreq(w, device=device)
    band = params.acquired_band().to(device)[:, None, None]
    line = torch.where(
        params.pe_rows.to(device)[:, None, None], fy[None, :, None] / band + 0.5,
        fx[None, None, :] / band + 0.5
    )  # (B, H, W)
    centre = (line - 0.5).abs() < KS_CENTRE_FRACTION / 2
    offset = params.offset.to(device)[:, None, None]  # random group boundaries
    n_groups = params.n_groups.float().to(device)[:, None, None]
    group = (line * n_groups + offset).floor().long().clamp(0, KS_MAX_GROUPS)
    pose = torch.gather(params.group_pose.to(device), 1, group.flatten(1)).view_as(line)
    pose = torch.where(centre, torch.full_like(pose, -1), pose)

    kspace = torch.fft.fft2(x)
    n_max = int(params.n_poses.max())
    for e in range(n_max):
        take = pose == e
        # Only the samples that use this motion state pay for its moved copy.
        rows = torch.nonzero(take.flatten(1).any(dim=1)).flatten()
        if rows.numel() == 0:
            continue
        rows_cpu = rows.cpu()
        moved = _rotate(x[rows], params.radians[rows_cpu, e].to(device))
        # Translation by the shift theorem: exact sub-pixel, and it keeps the high frequencies
        # (which interpolation would blur) intact. The phase ramp is separable.
        ty = params.shift[rows_cpu, e, 0].to(device)[:, None, None]
        tx = params.shift[rows_cpu, e, 1].to(device)[:, None, None]
        ramp = torch.exp(-2j * math.pi * fy[None, :, None] * ty) * torch.exp(
            -2j * math.pi * fx[None, None, :] * tx
        )
        moved_k = torch.fft.fft2(moved) * ramp[:, None]
        kspace[rows] = torch.where(take[rows][:, None], moved_k, kspace[rows])
    out = torch.fft.ifft2(kspace).abs()
    return minmax(out).float()


def kspace_motion(
    images: torch.Tensor,
    severity: torch.Tensor | float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Batched k-space line motion simulator (the paper's "in-house" algorithm): draw
    (:func:`draw_kspace_params`) then apply (:func:`apply_kspace_motion`).

    images: (B,1,H,W) float in [0,1] on any device. severity: scalar or (B,) in [0,1]. Per
    sample: a random PE axis, up to KS_MAX_POSES rigid poses, the PE lines cut into G equal
    groups (G grows with severity, random offset); each group is corrupted with probability
    `fraction` (grows with severity) and then takes its lines from one pose drawn at random,
    else from the unmoved image. Returns (B,1,H,W) float32 in [0, 1] on the input device.
    """
    _check_batch(images, "kspace_motion")
    params = draw_kspace_params(images.shape[0], severity, tuple(images.shape[-2:]), generator)
    return apply_kspace_motion(images, params)


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


# --------------------------------------------------------------------------------------------
# Every motion family on one batch
# --------------------------------------------------------------------------------------------


@dataclass
class MotionParams(_Params):
    """What :func:`random_motion_batch` drew: per sample the family (family (B,) int64, an
    index into MOTION_FAMILIES) and severity (B,); the two original simulators' parameters for
    every sample, and those of each other family with a non-zero weight (extra: name ->
    parameters, every sample). Each sample uses its family's."""

    severity: torch.Tensor
    family: torch.Tensor
    kspace: KspaceMotionParams
    tio: TioMotionParams
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def use_tio(self) -> torch.Tensor:
        """(B,) bool: the sample goes through TorchIO's simulator."""
        return self.family == MOTION_FAMILIES.index("torchio")

    def select(self, index: torch.Tensor | list[int]) -> MotionParams:
        idx = torch.as_tensor(index, dtype=torch.long).cpu()
        return MotionParams(self.severity[idx], self.family[idx], self.kspace.select(idx),
                            self.tio.select(idx), {k: v.select(idx) for k, v in self.extra.items()})

    def family_params(self, name: str) -> Any:
        """The parameters family `name` drew for every sample."""
        own = {"torchio": self.tio, "kspace": self.kspace}
        return own[name] if name in own else self.extra[name]

    def acquired(self, band_yx: torch.Tensor) -> MotionParams:
        """These motions on slices acquired with only the central share band_yx (B, 2) of the
        k-space lines along (y, x): each simulator's line order then spans the acquired lines
        along its phase-encoding axis (TorchIO's and the k-space families; the other families
        are left as drawn). A scanner that acquires 64 lines moves during those 64;
        on a 256 grid the 192 outer lines hold no signal, and a line order over all 256 put
        most of the motion there, where it changed nothing (model v3: low-matrix samples read
        milder motion than they had)."""
        by, bx = band_yx[:, 0].float().cpu(), band_yx[:, 1].float().cpu()
        return MotionParams(
            self.severity, self.family,
            dataclasses.replace(self.kspace, band=torch.where(self.kspace.pe_rows, by, bx)),
            dataclasses.replace(self.tio, band=torch.where(self.tio.transpose, by, bx)),
            # not yet for scanner_motion's families: their line timing (and EPI's line parity)
            # is built for the whole grid, so on a lower matrix they still move over all lines
            self.extra)

    def describe(self, i: int) -> dict[str, Any]:
        """Sample i as plain Python values: the simulator it went through and its draw."""
        return self.family_params(MOTION_FAMILIES[int(self.family[i])]).describe(i)


def _pick_family(u: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """Family index of each sample from its uniform draw u (B,): the first family whose
    cumulative weight exceeds u. float32 bounds, so that the default weights (p, 1 - p) pick
    exactly as `u < p_torchio` did; families of weight 0 are never picked."""
    bounds = torch.cumsum(torch.tensor(weights, dtype=torch.float64), 0).float()
    last = max(i for i, w in enumerate(weights) if w > 0)
    bounds[last:] = math.inf
    return (u[:, None] >= bounds[None, :]).sum(dim=1)


def draw_motion_params(
    batch: int,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    p_torchio: float = 0.5,
    severity: torch.Tensor | float | None = None,
    families: str | Mapping[str, float] | None = None,
) -> MotionParams:
    """Draw, per sample, the family (`settings.family_weights(families, p_torchio)`: by
    default TorchIO with probability p_torchio, else k-space lines), the severity (uniform on
    [0, 1] when None) and the parameters of every family with a non-zero weight (the two
    original ones always, first, as before the families: the default stream is unchanged; all
    drawn for every sample, fixed sizes and order: the stream never depends on the choices)."""
    weights = family_weights(families, p_torchio)
    family = _pick_family(_uniform((batch,), generator), weights)
    s = _sample_severity(batch, generator) if severity is None else _severity_vector(severity, batch)
    ks = draw_kspace_params(batch, s, size, generator)
    tp = draw_tio_params(batch, s, size, generator)
    extra = {}
    if any(weights[2:]):
        from .scanner_motion import FAMILY_SIMULATORS

        extra = {name: FAMILY_SIMULATORS[name][0](batch, s, size, generator)
                 for name, w in zip(MOTION_FAMILIES, weights)  # one length (Python 3.9)
                 if w > 0 and name in FAMILY_SIMULATORS}
    return MotionParams(severity=s, family=family, kspace=ks, tio=tp, extra=extra)


def apply_motion(images: torch.Tensor, params: MotionParams,
                 tio_backend: str = "torch") -> torch.Tensor:
    """Apply drawn motion: each sample through the family its parameters name. Returns
    (B,1,H,W) float32 in [0,1] on the input device."""
    _check_params(images, params, "apply_motion")
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    for f in torch.unique(params.family).tolist():
        idx = torch.nonzero(params.family == f).flatten()
        dev_idx = idx.to(images.device)
        name = MOTION_FAMILIES[f]
        sub = params.family_params(name).select(idx)
        if name == "torchio":
            out[dev_idx] = apply_tio_motion(images[dev_idx], sub, tio_backend)
        elif name == "kspace":
            out[dev_idx] = apply_kspace_motion(images[dev_idx], sub)
        else:
            from .scanner_motion import FAMILY_SIMULATORS

            out[dev_idx] = FAMILY_SIMULATORS[name][1](images[dev_idx], sub)
    return out


def _sample_severity(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Severities for training samples, (n,) in [0, 1]. Uniform: because the mean SSIM falls
    fast at low severity and slowly at high severity, and varies +-0.1 between slices, this
    spreads the labels over ~0.35 - 1 with no pile-up at 1 (measured on MNI152 slices; see
    the README's motion section)."""
    return _uniform((n,), generator)


def random_motion_batch(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    p_torchio: float = 0.5,
    severity: torch.Tensor | float | None = None,
    tio_backend: str = "torch",
    return_params: bool = False,
    families: str | Mapping[str, float] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, MotionParams]:
    """Corrupt each (1,H,W) slice of a (B,1,H,W) batch with one motion family: by default
    TorchIO's algorithm with probability p_torchio (batched torch by default;
    tio_backend="torchio" runs the real TorchIO, CPU, one slice at a time), else the k-space
    one; `families` ("torchio,epi", "epi:2,moves:1", "all", or a mapping) picks among all of
    MOTION_FAMILIES instead. severity: scalar, (B,) or None (drawn per sample, uniform on
    [0, 1]). Returns (B,1,H,W) float32 in [0,1] on the input device, and with
    return_params=True also the MotionParams drawn."""
    _check_batch(images, "random_motion_batch")
    if tio_backend not in TIO_BACKENDS:
        raise ValueError(f"random_motion_batch: tio_backend must be one of {TIO_BACKENDS}, "
                         f"got {tio_backend!r}")
    params = draw_motion_params(images.shape[0], tuple(images.shape[-2:]), generator,
                                p_torchio, severity, families)
    out = apply_motion(images, params, tio_backend)
    return (out, params) if return_params else out
