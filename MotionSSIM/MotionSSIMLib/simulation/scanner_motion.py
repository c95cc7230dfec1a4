"""Motion as scanners make it: five more motion families for 2D slices, batched in torch.

`motion`'s two families (TorchIO's poses by acquisition time, the k-space line groups) give
whole blocks of k-space to a few rigid poses. Scanners make more kinds of artefact, and a model
that learned two looks reads a third as milder (issue 22). Each family here is drawn
(`draw_*_params`: a CPU torch.Generator, fixed shapes and order, so a seed fixes it on any
device), applied (`apply_*`: deterministic, on the images' device) and recorded
(`describe(i)`), like `motion`'s; `motion.draw_motion_params` picks among all of them.

* ``trajectory``: a smooth pose per phase-encoding (PE) line: drift + oscillation (0.5 to 40
  cycles per scan: periodic ghosts at the fast end) + slow wander; linear or centric order.
* ``ordering``: poses that change at the segment or shot boundaries of four k-space orderings:
  linear, centric (centre out), interleaved (2-4 passes) and multi-shot echo trains (4-32
  shots, shot j acquiring every S-th line); a random walk from segment to segment.
* ``epi``: EPI, single-shot (half) or 2-4 interleaved shots: the N/2 (Nyquist) ghost from an
  odd/even echo phase mismatch (constant and linear along the readout), plus per shot a pose
  and a phase error (as diffusion shots have). Single-shot EPI freezes motion within a slice;
  motion between frames only moves the whole slice, which no single-slice label can see.
* ``through_plane``: the slice partly leaves its plane between segments: per segment a share of
  a neighbouring slice (approximated by a scaled, warped, blurred and shaded copy: the slice
  next door is a little larger or smaller, and its tissue differs), a signal loss (spin
  history) and a small in-plane pose.
* ``moves``: few large moves (1-4 jerks, kept or undone) or many small ones (12-48
  twitches or steps), at random times.

One acquisition model serves all (`_acquire`): each PE line is sampled from the object in its
own pose (rotation quantised to ROT_LEVELS levels per sign, translation exact by the Fourier
shift theorem), with a neighbour share, gain and phase per line where the family has them;
the result is the magnitude image, min-max normalised to [0, 1]. Every family keeps the
k-space centre from the reference pose (DESIGN.md pitfall 3): poses count from the pose at
k = 0 and the central KS_CENTRE_FRACTION of the lines is unmoved, so the head stays where it
was and the artefact is what a reference-free model can see. Each sample draws its PE axis
(both in-plane axes). Severity s in [0, 1] scales every amplitude (and the counts of the step
families): 0 returns the input (label 1); the maxima are calibrated so that s = 1 averages an
SSIM of about 0.4 on brain slices, as `motion`'s (docs/synthetic-data.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..imaging.intensity import minmax
from .kspace_motion import KS_CENTRE_FRACTION
from .motion_base import REFERENCE_SIZE, _check_params, _Params, _rotate, _severity_vector, _uniform

__all__ = [
    "FAMILY_SIMULATORS", "ORDERINGS",
    "TrajectoryParams", "OrderingParams", "EpiParams", "ThroughPlaneParams", "MovesParams",
    "draw_trajectory_params", "apply_trajectory", "draw_ordering_params", "apply_ordering",
    "draw_epi_params", "apply_epi", "draw_through_plane_params", "apply_through_plane",
    "draw_moves_params", "apply_moves",
]

ORDERINGS = ("linear", "centric", "interleaved", "multishot")
ROT_LEVELS = 8  # rotation levels per sign and sample: error <= the largest angle / 16
# Amplitudes grow as severity ** SEVERITY_POWER: the SSIM falls fastest for the first small
# moves, and this spreads the mean SSIM about evenly over severity (docs/synthetic-data.md).
SEVERITY_POWER = 1.5
# Amplitudes at severity 1 (degrees; pixels of a 256-pixel slice, scaled with the slice).
# Calibrated on MNI152 slices (docs/synthetic-data.md): mean SSIM about 0.4 at severity 1 for
# each family.
TR_MAX_DEGREES, TR_MAX_SHIFT = 24.0, 24.0
TR_CYCLES = (0.5, 40.0)  # oscillation, cycles per scan (log-uniform)
TR_WANDER = 4  # slow harmonics of the wander
OR_MAX_DEGREES, OR_MAX_SHIFT = 36.0, 36.0
OR_MAX_SEGMENTS = 32
EPI_MAX_SHOTS = 4
EPI_MAX_NYQUIST = 0.9 * math.pi  # odd/even constant phase mismatch, radians
EPI_MAX_SLOPE = 3.0 * math.pi  # odd/even phase slope across the readout field, radians
EPI_MAX_SHOT_PHASE = 1.2 * math.pi  # shot-to-shot phase error (constant and slope), radians
EPI_MAX_DEGREES, EPI_MAX_SHIFT = 12.0, 12.0
EPI_POWER = 2.0  # small ghosts already cost SSIM in the dark background: a slower start
TP_MAX_SEGMENTS = 16
TP_MAX_MIX = 1.0  # share of the neighbouring slice in an affected segment
TP_MAX_LOSS = 0.8  # signal lost in an affected segment (spin history)
TP_MAX_DEGREES, TP_MAX_SHIFT = 12.0, 12.0
TP_SCALE = (0.03, 0.12)  # the neighbour's size change (either sign)
TP_WARP = 3.0  # the neighbour's smooth deformation, pixels of a 256 slice
MV_MAX_MOVES = 48
MV_MAX_DEGREES, MV_MAX_SHIFT = 42.0, 42.0


# --------------------------------------------------------------------------------------------
# The acquisition model shared by every family
# --------------------------------------------------------------------------------------------


@dataclass
class _Lines:
    """Per PE line (FFT order, lines along dim -2) of b samples, on the CPU or the device:
    pose (b, n, 3): radians, shift y, shift x (pixels); mix (b, n): share of the neighbour
    slice; gain (b, n); phase (b, n, 2): constant and slope across the readout, radians."""

    pose: torch.Tensor
    mix: torch.Tensor | None = None
    gain: torch.Tensor | None = None
    phase: torch.Tensor | None = None
    neighbour: torch.Tensor | None = None  # (b, 1, H, W), with mix


def _spectra(x: torch.Tensor, radians: torch.Tensor, rotate: bool) -> torch.Tensor:
    return torch.fft.fft2(_rotate(x, radians) if rotate else x)[:, 0]


def _acquire(x: torch.Tensor, lines: _Lines) -> torch.Tensor:
    """K-space of x (b, 1, H, W), PE along H, each line from the object in its own state;
    returns the magnitude (b, 1, H, W). One rotation and FFT per rotation level used."""
    b, _, h, w = x.shape
    dev = x.device
    pose = lines.pose.to(dev)
    rot = pose[..., 0]
    step = rot.abs().amax(dim=1) / ROT_LEVELS
    level = torch.round(rot / step.clamp(min=1e-12)[:, None]).long()
    mix = None if lines.mix is None else lines.mix.to(dev)[..., None]
    kspace = torch.zeros((b, h, w), dtype=torch.complex64, device=dev)
    for j in torch.unique(level).tolist():
        take = level == j
        rows = torch.nonzero(take.any(dim=1)).flatten()
        angle = j * step[rows]
        k = _spectra(x[rows], angle, j != 0)
        if lines.neighbour is not None and mix is not None:
            k = k + mix[rows] * (_spectra(lines.neighbour.to(dev)[rows], angle, j != 0) - k)
        kspace[rows] += k * take[rows][..., None]
    # translation of each line by the shift theorem: exact, sub-pixel, no blur
    fy = torch.fft.fftfreq(h, device=dev)[None, :, None]
    fx = torch.fft.fftfreq(w, device=dev)[None, None, :]
    kspace = kspace * torch.exp(-2j * math.pi * (fy * pose[..., 1:2] + fx * pose[..., 2:3]))
    if lines.gain is not None:
        kspace = kspace * lines.gain.to(dev)[..., None]
    if lines.phase is None:
        return torch.fft.ifft2(kspace).abs()[:, None]
    # a phase per line varies along the readout: apply it in hybrid (ky, x) space
    phase = lines.phase.to(dev)
    xr = (torch.arange(w, device=dev) - w // 2) / w
    hybrid = torch.fft.ifft(kspace, dim=-1) * torch.exp(1j * (phase[..., :1] + phase[..., 1:] * xr))
    return torch.fft.ifft(hybrid, dim=-2).abs()[:, None]


def _apply(images: torch.Tensor, params: Any, build: Callable[[Any, torch.Tensor], _Lines],
           name: str) -> torch.Tensor:
    """Min-max each slice, acquire the moved samples (PE along x by transposing), min-max:
    (B, 1, H, W) float32 in [0, 1] on the input device; severity 0 returns the slice."""
    _check_params(images, params, name)
    x = minmax(images.float())
    out = x.clone()
    for pe_rows in (True, False):
        idx = torch.nonzero((params.pe_rows == pe_rows) & (params.severity > 0)).flatten()
        if idx.numel() == 0:
            continue
        dev_idx = idx.to(x.device)
        xs = x[dev_idx] if pe_rows else x[dev_idx].transpose(-1, -2)
        res = _acquire(xs, build(params.select(idx), xs))
        out[dev_idx] = res if pe_rows else res.transpose(-1, -2)
    return minmax(out)


def _k(n: int) -> torch.Tensor:
    """k of each line in FFT order: 0, 1, ..., -1 (n,) int64."""
    return torch.round(torch.fft.fftfreq(n, d=1.0 / n)).long()


def _centre_band(n: int) -> torch.Tensor:
    """The central lines always taken from the reference pose (as `motion.kspace_motion`)."""
    return _k(n).abs() / n < KS_CENTRE_FRACTION / 2


def _line_times(order: torch.Tensor, passes: torch.Tensor, n: int) -> torch.Tensor:
    """Acquisition time in [0, 1) of each line (b, n) for ORDERINGS codes `order` (b,) and
    passes or shots (b,) (interleaved and multi-shot: shot j = every passes-th line from j)."""
    k = _k(n)[None]
    m = (k + n // 2).float()  # position in linear order, k = -n/2 first
    linear = m / n
    centric = (2 * k.abs() - (k > 0).long()).float() / (n + 1)  # 0, +1, -1, +2, -2, ...
    p = passes.clamp(min=1)[:, None].float()
    per = torch.ceil(n / p)
    inter = (torch.remainder(m, p) + torch.div(m, p, rounding_mode="floor") / per) / p
    return torch.where(order[:, None] == 0, linear,
                       torch.where(order[:, None] == 1, centric, inter))


def _segments(times: torch.Tensor, n_segments: torch.Tensor) -> torch.Tensor:
    """Segment index (b, n) of each line: equal stretches of acquisition time."""
    seg = torch.floor(times * n_segments[:, None].float()).long()
    return torch.minimum(seg, n_segments[:, None] - 1)


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (b, S, C) at index (b, n) -> (b, n, C)."""
    return torch.gather(values, 1, index[..., None].expand(-1, -1, values.shape[-1]))


def _pin_centre(pose: torch.Tensor) -> torch.Tensor:
    """Poses relative to the pose when k = 0 was acquired (line 0 in FFT order), and the
    central band unmoved: the head stays where it was (DESIGN.md pitfall 3)."""
    pose = pose - pose[:, :1]
    return torch.where(_centre_band(pose.shape[1])[None, :, None], torch.zeros_like(pose), pose)


def _strength(s: torch.Tensor, power: float = SEVERITY_POWER) -> torch.Tensor:
    """The share of its maximum an amplitude takes at severities s."""
    return s ** power


def _amplitude(s: torch.Tensor, size: tuple[int, int], degrees: float, shift: float,
               power: float = SEVERITY_POWER) -> torch.Tensor:
    """(b, 3) pose amplitudes at severities s: radians, pixels, pixels (scaled with the
    slice, so a severity looks the same at any matrix)."""
    px = shift * min(size) / REFERENCE_SIZE
    return _strength(s, power)[:, None] * torch.tensor([math.radians(degrees), px, px])


def _signed(u: torch.Tensor) -> torch.Tensor:
    return 2 * u - 1


def _pose_record(pose: torch.Tensor) -> list[list[float]]:
    """Poses (..., 3) as [degrees, shift y, shift x] lists, rounded for the record."""
    p = pose.reshape(-1, 3)
    return [[round(math.degrees(float(a)), 3), round(float(y), 3), round(float(x), 3)]
            for a, y, x in p]


class _Family(_Params):
    """Common record of every family here."""

    name = ""

    def _common(self, i: int) -> dict[str, Any]:
        return {"simulator": self.name, "severity": float(self.severity[i]),  # type: ignore[attr-defined]
                "pe_axis": "y" if bool(self.pe_rows[i]) else "x"}  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# trajectory: a smooth pose per PE line
# --------------------------------------------------------------------------------------------


@dataclass
class TrajectoryParams(_Family):
    """severity (B,); pe_rows (B,) bool; centric (B,) bool (else linear order); drift (B, 3)
    pose change over the scan (radians, pixels y, x); osc_amp (B, 3), osc_cycles (B,) cycles
    per scan, osc_phase (B, 3); wander (B, 3, TR_WANDER) amplitudes of harmonics 1..TR_WANDER,
    wander_phase (B, 3, TR_WANDER)."""

    severity: torch.Tensor
    pe_rows: torch.Tensor
    centric: torch.Tensor
    drift: torch.Tensor
    osc_amp: torch.Tensor
    osc_cycles: torch.Tensor
    osc_phase: torch.Tensor
    wander: torch.Tensor
    wander_phase: torch.Tensor
    name = "trajectory"

    def describe(self, i: int) -> dict[str, Any]:
        return {**self._common(i), "ordering": "centric" if bool(self.centric[i]) else "linear",
                "drift_deg_y_x": _pose_record(self.drift[i])[0],
                "oscillation_deg_y_x": _pose_record(self.osc_amp[i])[0],
                "oscillation_cycles": round(float(self.osc_cycles[i]), 3),
                "wander_deg_y_x": _pose_record(self.wander[i].abs().sum(-1))[0]}


def draw_trajectory_params(batch: int, severity: torch.Tensor | float, size: tuple[int, int],
                           generator: torch.Generator | None = None) -> TrajectoryParams:
    s = _severity_vector(severity, batch)
    u = _uniform((batch, 4), generator)  # PE axis, ordering, cycles, spare
    u_pose = _uniform((batch, 3, 3), generator)  # drift, oscillation amplitude and phase
    u_wander = _uniform((batch, 3, TR_WANDER, 2), generator)
    amp = _amplitude(s, size, TR_MAX_DEGREES, TR_MAX_SHIFT)
    lo, hi = math.log(TR_CYCLES[0]), math.log(TR_CYCLES[1])
    harmonic = torch.arange(1, TR_WANDER + 1, dtype=torch.float32)
    return TrajectoryParams(
        severity=s, pe_rows=u[:, 0] < 0.5, centric=u[:, 1] < 0.25,
        drift=amp * _signed(u_pose[..., 0]), osc_amp=amp * u_pose[..., 1],
        osc_cycles=torch.exp(lo + (hi - lo) * u[:, 2]),
        osc_phase=2 * math.pi * u_pose[..., 2],
        wander=amp[..., None] * _signed(u_wander[..., 0]) / harmonic,
        wander_phase=2 * math.pi * u_wander[..., 1])


def _trajectory_lines(p: TrajectoryParams, xs: torch.Tensor) -> _Lines:
    n = xs.shape[-2]
    t = _line_times(p.centric.long(), torch.ones_like(p.severity, dtype=torch.long), n)
    t3 = t[..., None]
    pose = p.drift[:, None] * t3 + p.osc_amp[:, None] * torch.sin(
        2 * math.pi * p.osc_cycles[:, None, None] * t3 + p.osc_phase[:, None])
    harmonic = torch.arange(1, TR_WANDER + 1, dtype=torch.float32)
    pose = pose + (p.wander[:, None] * torch.sin(
        2 * math.pi * harmonic * t[..., None, None] + p.wander_phase[:, None])).sum(-1)
    return _Lines(_pin_centre(pose))


def apply_trajectory(images: torch.Tensor, params: TrajectoryParams) -> torch.Tensor:
    """Continuous motion, a pose per PE line (deterministic): (B, 1, H, W) -> [0, 1]."""
    return _apply(images, params, _trajectory_lines, "apply_trajectory")


# --------------------------------------------------------------------------------------------
# ordering: poses that change at the segment / shot boundaries of a k-space ordering
# --------------------------------------------------------------------------------------------


@dataclass
class OrderingParams(_Family):
    """severity (B,); pe_rows (B,) bool; order (B,) index into ORDERINGS; passes (B,)
    interleaved passes or multi-shot shots (1 otherwise); n_segments (B,) pose segments (a
    multi-shot pose per shot); poses (B, OR_MAX_SEGMENTS, 3) random walk (radians, pixels)."""

    severity: torch.Tensor
    pe_rows: torch.Tensor
    order: torch.Tensor
    passes: torch.Tensor
    n_segments: torch.Tensor
    poses: torch.Tensor
    name = "ordering"

    def describe(self, i: int) -> dict[str, Any]:
        n = int(self.n_segments[i])
        return {**self._common(i), "ordering": ORDERINGS[int(self.order[i])],
                "passes_or_shots": int(self.passes[i]), "segments": n,
                "segment_poses_deg_y_x": _pose_record(self.poses[i, :n])}


def draw_ordering_params(batch: int, severity: torch.Tensor | float, size: tuple[int, int],
                         generator: torch.Generator | None = None) -> OrderingParams:
    s = _severity_vector(severity, batch)
    u = _uniform((batch, 6), generator)  # axis, ordering, passes, shots, segments, moved share
    u_step = _uniform((batch, OR_MAX_SEGMENTS, 4), generator)
    order = torch.clamp((u[:, 1] * len(ORDERINGS)).long(), max=len(ORDERINGS) - 1)
    interleave = 2 + (u[:, 2] * 3).long().clamp(max=2)  # 2-4 passes
    shots = 4 + (u[:, 3] * (OR_MAX_SEGMENTS - 3)).long().clamp(max=OR_MAX_SEGMENTS - 4)
    passes = torch.where(order == 2, interleave, torch.where(order == 3, shots, 1))
    # linear / centric: 2-16 segments, more with severity; interleaved: 1-4 per pass
    free = torch.ceil(2 + 14 * s * u[:, 4]).long()
    n_seg = torch.where(order == 2, interleave * (1 + (u[:, 4] * 4).long().clamp(max=3)),
                        torch.where(order == 3, shots, free))
    # a move at a share of the boundaries, more with severity; a random walk whose spread
    # grows slowly with the number of segments (many shots: many smaller moves)
    moved = u_step[..., 3] < ((0.3 + 0.7 * s) * (0.5 + 0.5 * u[:, 5]))[:, None]
    moved[:, 0] = False  # the first segment starts the walk
    step = _amplitude(s, size, OR_MAX_DEGREES, OR_MAX_SHIFT)[:, None] * _signed(u_step[..., :3])
    step = step * moved[..., None] / (n_seg - 1).clamp(min=1).float()[:, None, None] ** 0.25
    return OrderingParams(severity=s, pe_rows=u[:, 0] < 0.5, order=order, passes=passes,
                          n_segments=n_seg, poses=torch.cumsum(step, dim=1))


def _ordering_lines(p: OrderingParams, xs: torch.Tensor) -> _Lines:
    t = _line_times(p.order, p.passes, xs.shape[-2])
    return _Lines(_pin_centre(_gather(p.poses, _segments(t, p.n_segments))))


def apply_ordering(images: torch.Tensor, params: OrderingParams) -> torch.Tensor:
    """Segment-wise motion under a k-space ordering (deterministic): -> [0, 1]."""
    return _apply(images, params, _ordering_lines, "apply_ordering")


# --------------------------------------------------------------------------------------------
# epi: Nyquist ghost, shot poses and shot phases
# --------------------------------------------------------------------------------------------


@dataclass
class EpiParams(_Family):
    """severity (B,); pe_rows (B,) bool; shots (B,) 1-EPI_MAX_SHOTS (interleaved); nyquist
    (B, 2) odd/even phase mismatch: constant and slope across the readout (radians);
    shot_pose (B, EPI_MAX_SHOTS, 3) radians, pixels; shot_phase (B, EPI_MAX_SHOTS, 2)."""

    severity: torch.Tensor
    pe_rows: torch.Tensor
    shots: torch.Tensor
    nyquist: torch.Tensor
    shot_pose: torch.Tensor
    shot_phase: torch.Tensor
    name = "epi"

    def describe(self, i: int) -> dict[str, Any]:
        n = int(self.shots[i])
        return {**self._common(i), "shots": n,
                "nyquist_phase_rad": [round(float(v), 4) for v in self.nyquist[i]],
                "shot_poses_deg_y_x": _pose_record(self.shot_pose[i, :n]),
                "shot_phase_rad": [[round(float(v), 4) for v in ph]
                                   for ph in self.shot_phase[i, :n]]}


def draw_epi_params(batch: int, severity: torch.Tensor | float, size: tuple[int, int],
                    generator: torch.Generator | None = None) -> EpiParams:
    s = _severity_vector(severity, batch)
    u = _uniform((batch, 5), generator)  # axis, shots, Nyquist size, sign, slope
    u_shot = _uniform((batch, EPI_MAX_SHOTS, 5), generator)
    multi = 2 + ((u[:, 1] - 0.5) * 2 * (EPI_MAX_SHOTS - 1)).long().clamp(0, EPI_MAX_SHOTS - 2)
    shots = torch.where(u[:, 1] < 0.5, 1, multi)
    sign = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
    a = _strength(s, EPI_POWER)
    nyquist = torch.stack([a * EPI_MAX_NYQUIST * (0.3 + 0.7 * u[:, 2]) * sign,
                           a * EPI_MAX_SLOPE * _signed(u[:, 4])], dim=-1)
    amp = _amplitude(s, size, EPI_MAX_DEGREES, EPI_MAX_SHIFT, EPI_POWER)[:, None]
    return EpiParams(severity=s, pe_rows=u[:, 0] < 0.5, shots=shots, nyquist=nyquist,
                     shot_pose=amp * _signed(u_shot[..., :3]),
                     shot_phase=a[:, None, None] * EPI_MAX_SHOT_PHASE * _signed(u_shot[..., 3:]))


def _epi_lines(p: EpiParams, xs: torch.Tensor) -> _Lines:
    n = xs.shape[-2]
    m = (_k(n) + n // 2)[None]  # position in linear order
    shots = p.shots[:, None]
    shot = torch.remainder(m, shots)
    odd = torch.remainder(torch.div(m, shots, rounding_mode="floor"), 2).float()  # echo parity
    phase = _gather(p.shot_phase, shot)
    phase = phase - phase[:, :1] + (odd - 0.5)[..., None] * p.nyquist[:, None]
    return _Lines(_pin_centre(_gather(p.shot_pose, shot)), phase=phase)


def apply_epi(images: torch.Tensor, params: EpiParams) -> torch.Tensor:
    """EPI artefacts (deterministic): -> [0, 1]."""
    return _apply(images, params, _epi_lines, "apply_epi")


# --------------------------------------------------------------------------------------------
# through_plane: signal changes between segments
# --------------------------------------------------------------------------------------------


@dataclass
class ThroughPlaneParams(_Family):
    """severity (B,); pe_rows (B,) bool; n_segments (B,) (linear order); per segment (B,
    TP_MAX_SEGMENTS): mix share of the neighbour slice, gain, and poses (.., 3); the
    neighbour: scale (B,) size ratio, blur (B,) Gaussian sigma in pixels, warp (B, 2, 4, 4)
    displacement control points in pixels (y, x), shade (B, 4, 4) intensity control points."""

    severity: torch.Tensor
    pe_rows: torch.Tensor
    n_segments: torch.Tensor
    mix: torch.Tensor
    gain: torch.Tensor
    poses: torch.Tensor
    scale: torch.Tensor
    blur: torch.Tensor
    warp: torch.Tensor
    shade: torch.Tensor
    name = "through_plane"

    def describe(self, i: int) -> dict[str, Any]:
        n = int(self.n_segments[i])
        return {**self._common(i), "segments": n,
                "neighbour_share": [round(float(v), 4) for v in self.mix[i, :n]],
                "gain": [round(float(v), 4) for v in self.gain[i, :n]],
                "segment_poses_deg_y_x": _pose_record(self.poses[i, :n]),
                "neighbour_scale": round(float(self.scale[i]), 4),
                "neighbour_blur_px": round(float(self.blur[i]), 3)}


def draw_through_plane_params(batch: int, severity: torch.Tensor | float,
                              size: tuple[int, int],
                              generator: torch.Generator | None = None) -> ThroughPlaneParams:
    s = _severity_vector(severity, batch)
    u = _uniform((batch, 6), generator)  # axis, segments, affected share, scale, sign, blur
    u_seg = _uniform((batch, TP_MAX_SEGMENTS, 6), generator)
    u_warp = _uniform((batch, 2, 4, 4), generator)
    u_shade = _uniform((batch, 4, 4), generator)
    n_seg = torch.ceil(2 + (TP_MAX_SEGMENTS - 2) * s * u[:, 1]).long()
    hit = u_seg[..., 0] < ((0.3 + 0.7 * s) * (0.5 + 0.5 * u[:, 2]))[:, None]
    a = _strength(s)[:, None]
    mix = torch.where(hit, (a * TP_MAX_MIX * (0.3 + 0.7 * u_seg[..., 1])).clamp(max=1), 0)
    gain = torch.where(hit, 1 - a * TP_MAX_LOSS * u_seg[..., 2], 1)
    amp = _amplitude(s, size, TP_MAX_DEGREES, TP_MAX_SHIFT)[:, None]
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    return ThroughPlaneParams(
        severity=s, pe_rows=u[:, 0] < 0.5, n_segments=n_seg, mix=mix, gain=gain,
        poses=amp * _signed(u_seg[..., 3:]) * hit[..., None],
        scale=1 + sign * (TP_SCALE[0] + (TP_SCALE[1] - TP_SCALE[0]) * u[:, 3]),
        blur=0.5 + 1.5 * u[:, 5], warp=TP_WARP * min(size) / REFERENCE_SIZE * _signed(u_warp),
        shade=1 + 0.3 * _signed(u_shade))


def _neighbour(xs: torch.Tensor, p: ThroughPlaneParams) -> torch.Tensor:
    """The neighbouring slice, approximated: x scaled about the centre, warped smoothly,
    blurred (partial volume) and shaded (other tissue)."""
    b, _, h, w = xs.shape
    dev = xs.device
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / p.scale.to(dev)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    disp = F.interpolate(p.warp.to(dev), size=(h, w), mode="bicubic", align_corners=True)
    grid = grid - torch.stack([disp[:, 1] * 2 / w, disp[:, 0] * 2 / h], dim=-1)
    moved = F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    f2 = (torch.fft.fftfreq(h, device=dev)[:, None] ** 2
          + torch.fft.fftfreq(w, device=dev)[None, :] ** 2)
    sigma = p.blur.to(dev)[:, None, None, None]
    moved = torch.fft.ifft2(torch.fft.fft2(moved) * torch.exp(-2 * math.pi**2 * sigma**2 * f2)).real
    shade = F.interpolate(p.shade.to(dev)[:, None], size=(h, w), mode="bicubic",
                          align_corners=True)
    return moved * shade


def _through_plane_lines(p: ThroughPlaneParams, xs: torch.Tensor) -> _Lines:
    n = xs.shape[-2]
    order = torch.zeros_like(p.n_segments)
    seg = _segments(_line_times(order, order + 1, n), p.n_segments)
    # the segment that holds k = 0 and the central band: the slice in its plane
    ref = (seg == seg[:, :1]) | _centre_band(n)[None]
    mix = torch.where(ref, 0, _gather(p.mix[..., None], seg)[..., 0])
    gain = torch.where(ref, 1, _gather(p.gain[..., None], seg)[..., 0])
    return _Lines(_pin_centre(_gather(p.poses, seg)), mix=mix, gain=gain,
                  neighbour=_neighbour(xs, p))


def apply_through_plane(images: torch.Tensor, params: ThroughPlaneParams) -> torch.Tensor:
    """Through-plane motion between segments (deterministic): -> [0, 1]."""
    return _apply(images, params, _through_plane_lines, "apply_through_plane")


# --------------------------------------------------------------------------------------------
# moves: few large moves or many small ones
# --------------------------------------------------------------------------------------------


@dataclass
class MovesParams(_Family):
    """severity (B,); pe_rows (B,) bool; many (B,) bool (many small moves, else few large);
    n_moves (B,); per move (B, MV_MAX_MOVES): time in [0, 1), duration (>= 1: kept to the
    end), delta (.., 3) pose change while it lasts (radians, pixels). Linear order."""

    severity: torch.Tensor
    pe_rows: torch.Tensor
    many: torch.Tensor
    n_moves: torch.Tensor
    times: torch.Tensor
    duration: torch.Tensor
    delta: torch.Tensor
    name = "moves"

    def describe(self, i: int) -> dict[str, Any]:
        n = int(self.n_moves[i])
        return {**self._common(i), "style": "many small" if bool(self.many[i]) else "few large",
                "times": [round(float(t), 4) for t in self.times[i, :n]],
                "durations": [round(min(float(d), 1.0), 4) for d in self.duration[i, :n]],
                "moves_deg_y_x": _pose_record(self.delta[i, :n])}


def draw_moves_params(batch: int, severity: torch.Tensor | float, size: tuple[int, int],
                      generator: torch.Generator | None = None) -> MovesParams:
    s = _severity_vector(severity, batch)
    u = _uniform((batch, 3), generator)  # axis, style, count
    u_move = _uniform((batch, MV_MAX_MOVES, 6), generator)  # time, kept, duration, 3 DOF
    many = u[:, 1] < 0.5
    few = 1 + (u[:, 2] * (1 + 3 * s)).long().clamp(max=3)  # 1-4, more with severity
    n = torch.where(many, 12 + (u[:, 2] * (MV_MAX_MOVES - 11)).long().clamp(max=MV_MAX_MOVES - 12),
                    few)
    used = torch.arange(MV_MAX_MOVES)[None] < n[:, None]
    size_of = torch.where(many, 0.2, 1.0)[:, None, None]
    lo = torch.where(many, 0.003, 0.02)[:, None]
    hi = torch.where(many, 0.05, 0.2 + 0.4 * s)[:, None]  # longer with severity
    duration = torch.where(u_move[..., 1] < 0.5, 2.0, lo + (hi - lo) * u_move[..., 2])
    delta = _amplitude(s, size, MV_MAX_DEGREES, MV_MAX_SHIFT)[:, None] * size_of * _signed(
        u_move[..., 3:])
    return MovesParams(severity=s, pe_rows=u[:, 0] < 0.5, many=many, n_moves=n,
                       times=torch.where(used, u_move[..., 0], 0),
                       duration=torch.where(used, duration, 0),
                       delta=delta * used[..., None])


def _moves_lines(p: MovesParams, xs: torch.Tensor) -> _Lines:
    zero = torch.zeros_like(p.n_moves)
    t = _line_times(zero, zero + 1, xs.shape[-2])[..., None]
    start = p.times[:, None]
    active = (t >= start) & (t < start + p.duration[:, None])
    return _Lines(_pin_centre(torch.einsum("bnm,bmc->bnc", active.float(), p.delta)))


def apply_moves(images: torch.Tensor, params: MovesParams) -> torch.Tensor:
    """Few large or many small moves (deterministic): -> [0, 1]."""
    return _apply(images, params, _moves_lines, "apply_moves")


# name -> (draw(batch, severity, size, generator), apply(images, params)), MOTION_FAMILIES order
FAMILY_SIMULATORS: dict[str, tuple[Callable[..., Any], Callable[..., torch.Tensor]]] = {
    "trajectory": (draw_trajectory_params, apply_trajectory),
    "ordering": (draw_ordering_params, apply_ordering),
    "epi": (draw_epi_params, apply_epi),
    "through_plane": (draw_through_plane_params, apply_through_plane),
    "moves": (draw_moves_params, apply_moves),
}
