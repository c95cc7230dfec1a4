"""The paper's "in-house" k-space line simulator, batched in torch.

Groups of consecutive phase-encoding lines are taken from rigidly moved copies of the slice
(random phase-encoding axis); the lines around k = 0 always come from the unmoved slice
(KS_CENTRE_FRACTION), so the result is never merely a displaced copy. `draw_kspace_params`
draws, `apply_kspace_motion` applies (see `motion` for the conventions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..imaging.intensity import minmax
from .motion_base import (
    REFERENCE_SIZE,
    _check_batch,
    _check_params,
    _Params,
    _rotate,
    _severity_vector,
    _uniform,
)

__all__ = ["KspaceMotionParams", "apply_kspace_motion", "draw_kspace_params", "kspace_motion"]

# k-space line simulator:
KS_MAX_POSES = 8  # rigid poses (one moved copy of the image each)
KS_MAX_DEGREES = 25.0  # in-plane rotation, degrees
KS_MAX_SHIFT = 25.0  # in-plane translation, pixels of a 256-pixel slice (scaled with size)
KS_MAX_GROUPS = 128  # groups of consecutive PE lines, each from one pose or unmoved
KS_MAX_FRACTION = 1.0  # share of line groups taken from moved copies
KS_CENTRE_FRACTION = 0.03  # share of PE lines around k = 0 always taken from the unmoved image


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
