"""What every motion family shares: the reference slice size, severity and uniform draws,
batch checks, per-sample parameter selection (`_Params`) and in-plane rotation (`_rotate`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

# Settings at severity 1. Amplitudes scale linearly with severity; the counts and the share of
# corrupted lines grow with it. Calibrated on MNI152 slices (docs/synthetic-data.md): mean
# SSIM ~0.95 at severity 0.1, ~0.65 at 0.5, ~0.43 at 1 for both simulators.
REFERENCE_SIZE = 256  # the model input size: translations are given in its pixels


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
