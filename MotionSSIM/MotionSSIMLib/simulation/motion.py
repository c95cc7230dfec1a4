"""Motion artefact simulators for 2D slices, batched in torch: every family on one batch.

Both simulators corrupt a clean slice the way rigid head motion during a Cartesian acquisition
does: k-space is filled line by line along the phase-encoding (PE) axis, and the lines acquired
while the head was displaced come from a rigidly moved copy of the object. The result is the
magnitude image, min-max normalised to [0, 1].

Both keep the centre of k-space (the lines around k = 0, which carry the image contrast and
position) from the unmoved image. Otherwise the result is mostly a displaced copy of the slice:
its SSIM drops without any visible artefact, which no reference-free model can see.

* ``kspace_motion`` (module): the paper's "in-house" k-space line algorithm.
* More families (continuous trajectories, k-space orderings, EPI, through-plane motion, few
  or many moves) live in ``scanner_motion``; ``draw_motion_params(families=...)`` picks among
  all of MOTION_FAMILIES, and by default among these two exactly as before.
* ``tio_motion`` (module): TorchIO's ``Motion`` (Shaw et al.) re-implemented in batched
  torch, or run through TorchIO itself (for checks).

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
SSIM labels over ~0.35 - 1 without a pile-up at 1 (docs/synthetic-data.md, "Motion simulation").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..base.settings import MOTION_FAMILIES, family_weights
from .kspace_motion import KspaceMotionParams, apply_kspace_motion, draw_kspace_params
from .motion_base import _check_batch, _check_params, _Params, _severity_vector, _uniform
from .tio_motion import TIO_BACKENDS, TioMotionParams, apply_tio_motion, draw_tio_params

__all__ = [
    "MOTION_FAMILIES", "MotionParams", "apply_motion", "draw_motion_params",
    "random_motion_batch",
]


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
    docs/synthetic-data.md)."""
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
