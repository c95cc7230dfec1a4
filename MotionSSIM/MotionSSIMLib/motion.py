"""Motion artefact simulators for 2D slices: batched torch k-space lines, and a TorchIO wrapper.

Both simulators corrupt a clean slice the way rigid head motion during a Cartesian acquisition
does: k-space is filled line by line along the phase-encoding (PE) axis, and the lines acquired
while the head was displaced come from a rigidly moved copy of the object. The result is the
magnitude image, min-max normalised to [0, 1].

Both keep the centre of k-space (the lines around k = 0, which carry the image contrast and
position) from the unmoved image. Otherwise the result is mostly a displaced copy of the slice:
its SSIM drops without any visible artefact, which no reference-free model can see.

``severity`` in [0, 1] scales everything at once (rotation and translation amplitude, number of
motion poses, share of corrupted lines): 0 returns the input unchanged (SSIM 1); 1 is gross
motion (mean SSIM ~0.43, down to ~0.23, on brain slices: with the k-space centre kept the SSIM
rarely goes lower, as in the paper, where 3 % of the labels were below 0.4). With
``severity=None``, ``random_motion_batch`` draws severity uniformly on [0, 1], which spreads the
SSIM labels over ~0.35 - 1 without a pile-up at 1 (see the README section on motion simulation).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .intensity import minmax

__all__ = ["kspace_motion", "torchio_motion", "random_motion_batch"]

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


def _severity_vector(severity: torch.Tensor | float, batch: int) -> torch.Tensor:
    s = torch.as_tensor(severity, dtype=torch.float32).flatten().cpu()
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise ValueError(f"severity: expected a scalar or {batch} values, got {s.numel()}")
    if not torch.isfinite(s).all():
        raise ValueError("severity: must be finite")
    return s.clamp(0.0, 1.0)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) on CPU float32 from `generator` (drawn where the generator lives, so that a seed
    gives the same motion whatever device the images are on)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).float().cpu()


def _check_batch(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected a (B,1,H,W) tensor, got {shape}")


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


def kspace_motion(
    images: torch.Tensor,
    severity: torch.Tensor | float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Batched k-space line motion simulator (the paper's "in-house" algorithm).

    images: (B,1,H,W) float in [0,1] on any device. severity: scalar or (B,) in [0,1].
    Model, per sample: a random PE axis (k-space rows or columns), acquired in linear order
    (k = -N/2 first), so a stretch of scan time is a group of consecutive PE lines. The head
    takes up to KS_MAX_POSES rigid in-plane poses (rotation about the centre, and a
    translation applied exactly with the Fourier shift theorem). The PE lines are cut into G
    equal groups (G grows with severity, random offset); each group is corrupted with
    probability `fraction` (grows with severity) and then takes its lines from the moved copy
    of one pose drawn at random, else from the unmoved image. The central KS_CENTRE_FRACTION of
    the PE lines always comes from the unmoved image. Returns the magnitude of the inverse
    FFT, min-max normalised per slice: (B,1,H,W) float32 on the input device. Cost: one FFT
    plus one rotation and FFT per pose used; no loop over lines or samples.
    """
    _check_batch(images, "kspace_motion")
    b, _, h, w = images.shape
    device = images.device
    x = images.float()
    s = _severity_vector(severity, b)

    # All random draws up front, in a fixed order (reproducible for a seed).
    u_axis = _uniform((b,), generator)
    u_count = _uniform((b, 4), generator)
    u_pose = _uniform((b, KS_MAX_POSES, 4), generator)
    u_group = _uniform((b, KS_MAX_GROUPS + 1, 2), generator)

    pe_rows = u_axis < 0.5  # True: each k-space line is a row (fixed k_y); PE axis = y
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
    shift_y, shift_x = shift * torch.sin(direction), shift * torch.cos(direction)

    # Line coordinate of every k-space sample in acquisition order: fftfreq + 0.5 runs from 0
    # (k = -N/2) to 1 (k = N/2), so k = 0 sits at 0.5 and groups are contiguous in k.
    fy = torch.fft.fftfreq(h, device=device)  # cycles / pixel
    fx = torch.fft.fftfreq(w, device=device)
    line = torch.where(
        pe_rows.to(device)[:, None, None], fy[None, :, None] + 0.5, fx[None, None, :] + 0.5
    )  # (B, H, W)
    centre = (line - 0.5).abs() < KS_CENTRE_FRACTION / 2
    offset = u_count[:, 3].to(device)[:, None, None]  # random group boundaries
    group = (line * n_groups.to(device)[:, None, None] + offset).long().clamp(max=KS_MAX_GROUPS)
    ug = u_group.to(device)
    g_corrupt = torch.gather(ug[..., 0], 1, group.flatten(1)).view_as(line)
    g_state = torch.gather(ug[..., 1], 1, group.flatten(1)).view_as(line)
    state = (g_state * n_states.to(device)[:, None, None]).long()
    moving = (s > 0).to(device)[:, None, None]
    corrupt = (g_corrupt < fraction.to(device)[:, None, None]) & ~centre & moving

    kspace = torch.fft.fft2(x)
    n_max = int(n_states.max()) if b else 0
    for e in range(n_max):
        take = corrupt & (state == e)
        # Only the samples that use this motion state pay for its moved copy.
        rows = torch.nonzero(take.flatten(1).any(dim=1)).flatten()
        if rows.numel() == 0:
            continue
        rows_cpu = rows.cpu()
        moved = _rotate(x[rows], angle[rows_cpu, e].to(device))
        # Translation by the shift theorem: exact sub-pixel, and it keeps the high frequencies
        # (which interpolation would blur) intact. The phase ramp is separable.
        ty = shift_y[rows_cpu, e].to(device)[:, None, None]
        tx = shift_x[rows_cpu, e].to(device)[:, None, None]
        ramp = torch.exp(-2j * math.pi * fy[None, :, None] * ty) * torch.exp(
            -2j * math.pi * fx[None, None, :] * tx
        )
        moved_k = torch.fft.fft2(moved) * ramp[:, None]
        kspace[rows] = torch.where(take[rows][:, None], moved_k, kspace[rows])
    out = torch.fft.ifft2(kspace).abs()
    return minmax(out).float()


def torchio_motion(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Motion artefact on one 2D slice with TorchIO's ``Motion`` (Shaw et al.).

    The slice (min-max normalised first) is stored as a (1, 1, H, W) ScalarImage with 1 mm
    pixels, so TorchIO's k-space split runs along the last axis (a (1, H, W, 1) tensor would be
    split along its length-1 axis: a plain rigid shift, TorchIO issue 81). Motions are rotations
    about the through-plane axis and in-plane translations; the PE axis is chosen at random (the
    slice is transposed for the other one). TorchIO fills the k-space segment that contains the
    centre from the unmoved image and returns the real part; we take its absolute value (MR
    images are magnitudes; the signed real part would turn the background grey) and min-max
    normalise. Returns float32 (H, W) in [0, 1].
    """
    import torchio as tio

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
    # Movement times as RandomMotion draws them: evenly spaced, jittered by 30 % of a step.
    step = 1.0 / (n + 1)
    times = step * np.arange(1, n + 1) + rng.uniform(-0.3 * step, 0.3 * step, n)
    if s <= 0:
        return img
    if transpose:
        img = np.ascontiguousarray(img.T)
    rot = np.zeros((n, 3))
    rot[:, 0] = degrees  # about the first (length-1, through-plane) axis
    trans = np.zeros((n, 3))
    trans[:, 1] = shift * np.sin(direction)
    trans[:, 2] = shift * np.cos(direction)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(img)[None, None]))
    motion = tio.Motion(
        degrees=rot, translation=trans, times=times, image_interpolation="linear"
    )
    out = np.abs(motion(subject)["image"].data[0, 0].numpy())
    if transpose:
        out = out.T
    return minmax(np.ascontiguousarray(out))


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
) -> torch.Tensor:
    """Corrupt each (1,H,W) slice of a (B,1,H,W) batch with one of the two simulators: TorchIO
    with probability p_torchio (CPU, one slice at a time), else the batched k-space one.
    severity: scalar, (B,) or None (drawn per sample, uniform on [0, 1]). Returns
    (B,1,H,W) float32 in [0,1] on the input device."""
    _check_batch(images, "random_motion_batch")
    b = images.shape[0]
    use_tio = _uniform((b,), generator) < p_torchio
    s = _sample_severity(b, generator) if severity is None else _severity_vector(severity, b)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                             device=generator.device if generator is not None else "cpu"))
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    k_idx = torch.nonzero(~use_tio).flatten()
    if k_idx.numel():
        dev_idx = k_idx.to(images.device)
        out[dev_idx] = kspace_motion(images[dev_idx], s[k_idx], generator)
    t_idx = torch.nonzero(use_tio).flatten().tolist()
    if t_idx:
        rng = np.random.default_rng(seed)
        cpu = images[t_idx, 0].detach().float().cpu().numpy()
        res = np.stack([torchio_motion(cpu[j], float(s[i]), rng) for j, i in enumerate(t_idx)])
        out[torch.as_tensor(t_idx, device=images.device)] = torch.from_numpy(res)[:, None].to(
            images.device
        )
    return out
