"""Slice-level acquisition augmentations for training, batched in torch: noise, resolution
and storage.

Three stages that `pipeline.corrupt_batch` can call around the motion simulators, so that the
training distribution spans what real scanners deliver (issue "Model v2", point 1):

* **Resolution** (before motion): each slice is "acquired" at a lower matrix and reconstructed
  back to its own size, either the way scanners do it, by truncating k-space and zero-filling
  (which rings at edges: Gibbs), or by area down-sampling and bilinear up-sampling (an
  interpolated low-resolution series). Applied to the clean slice before motion, so the clean
  slice and its corrupted version share it, and the SSIM label measures motion only.
* **Noise** (after motion): magnitude (Rician) noise ``|y + n1 + i n2|`` on the corrupted
  slice, the model input. `pipeline.apply_corruption` takes the SSIM label *before* it, so
  noise neither lowers the label (SSIM 1 stays 1) nor raises it: a label taken after the same
  noise on both images (``noise_pair``, as first built) rose by 0.15 on average over the same
  motion, because identical noise swamps the ghosts in dark regions. The SNR is defined in
  tissue: mean clean-tissue intensity / sigma.
  A share of the noisy samples (``p_array``, 0 unless a run asks for it) gets the noise of a
  phased-array coil instead, its L channels combined by root sum of squares: a non-central chi
  magnitude with 2L degrees of freedom, whose floor in air is higher and smoother than
  Rician's. Per channel sigma = tissue level / (SNR sqrt(L)), so one SNR gives about the same
  floor height (tissue * sqrt(2) / SNR, Rician's 1.25 / SNR) whatever L is. At one floor height
  the coil matters less than the grain below (model v3 phase 7 read clean held-out slices at
  SNR 3 0.874 with 8 channels, 0.856 Rician), but no Rician slice has an array's smooth floor.
  A share ``p_band`` of the noisy samples acquired at a lower matrix gets noise of the acquired
  grain: the complex noise passes through the same k-space window or area resampling as the
  slice (`band_limit_field`), then is scaled back to unit variance, so the SNR is that of the
  image at its own matrix. A scanner's noise is white at the matrix it reconstructs; noise
  added at the slice grid after a 96 px acquisition is finer than any 96 px scan's, and a model
  trained only on it read noisy 96 px clean slices as motion (model v3 phase 7: 0.77 at SNR 5,
  0.88 at 256 px).
* **Storage** (after motion, model v3 phase 2 on): the pair stored at another matrix, as a
  reslicing or a scanner's interpolation stores a series (resampled down, anti-aliased), then
  fitted back to the model input the way `geometry.to_model_input` fits any window (bicubic).
  It changes the model input only: the label stays the acquired pair's (storage does not undo
  the motion), and the noise is added before the storage, as a scanner's noise is. Without it
  the model had never seen motion blurred after the acquisition and read the same motion
  0.08-0.17 milder at 64-128 px than at 256 (`scripts/check_invariance.py`).

Both stages follow TorchIO's make-params / apply split: ``draw_*_params(batch, generator)``
draws every random number with a (CPU) ``torch.Generator`` (so a seed gives the same
parameters on any device), and ``apply_*(x, params)`` is deterministic. The noise field itself
is drawn on the images' device from ``params.seed`` (a CPU and a CUDA run with one seed get
equally distributed, but not bit-identical, noise; one device always gives the same).

Shapes: every image argument is a (B, 1, H, W) float tensor (values in [0, 1] for the clean
slices; H, W any size >= 8); every per-sample parameter is a (B,) tensor on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

__all__ = [
    "NOISE_P_NONE", "NOISE_SNR_RANGE", "RES_P_APPLY", "RES_MIN_MATRIX",
    "NoiseParams", "ResolutionParams",
    "NOISE_COILS", "draw_noise_params", "apply_noise", "noise_field", "noise_pair",
    "band_limit_field",
    "noise_sigma", "tissue_level",
    "draw_resolution_params", "apply_resolution", "random_resolution",
    "STORE_MIN_MATRIX", "StorageParams", "draw_storage_params", "apply_storage",
]

# Share of samples with no added noise, and the log-uniform SNR range of the others. SNR 3 is
# a b = 1000 s/mm2 diffusion image or a fast 2D scan; 150 is a clean 3D scan.
NOISE_P_NONE = 0.2
NOISE_SNR_RANGE = (3.0, 150.0)
# Receive channels of a phased-array coil, drawn uniformly for a sample with array noise (head
# coils of 8 to 64 elements, combined into fewer virtual channels by most scanners).
NOISE_COILS = (2, 4, 8, 16, 32)
# Share of samples acquired at a lower matrix, and the lowest matrix (per side) drawn.
RES_P_APPLY = 0.5
RES_MIN_MATRIX = 64
# Pixels above this share of the slice's maximum count as tissue for the SNR reference.
TISSUE_FRACTION = 0.1


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1), (n,) float64 on the CPU, drawn where the generator lives."""
    return torch.rand(n, generator=generator, device=_gen_device(generator),
                      dtype=torch.float64).cpu()


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a (B, 1, H, W) tensor, got {shape}")
    if min(x.shape[-2:]) < 8:
        raise ValueError(f"{name}: slices of {tuple(x.shape[-2:])} are smaller than 8 x 8")


def _minmax(x: torch.Tensor) -> torch.Tensor:
    from ..imaging.intensity import minmax

    return minmax(x)


# --------------------------------------------------------------------------------- noise
@dataclass(frozen=True)
class NoiseParams:
    """Noise of one batch.

    snr: (B,) float64, SNR in tissue; ``inf`` = no added noise.
    seed: the noise field's seed: an int (one (B, 2, H, W) standard-normal draw on the device)
    or a (B,) int64 tensor, one seed per sample (each sample's (2, H, W) field is then its own,
    so a subset of a batch replays exactly: `select`).
    sigma: (B,) float64 noise standard deviation per channel, in image units, or None: then
    `apply_noise` derives it from the image it is given (tissue level / snr). `noise_pair`
    fills it from the clean slices so that both images get exactly the same noise.
    coils: (B,) int64 receive channels combined by root sum of squares, or None: one each
    (Rician noise, as before array noise existed).
    band: (B,) bool, noise of the acquired grain where the sample was acquired at a lower
    matrix (`band_limit_field`), or None: none.
    """

    snr: torch.Tensor
    seed: int | torch.Tensor
    sigma: torch.Tensor | None = None
    coils: torch.Tensor | None = None
    band: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.snr.numel())

    def select(self, index: torch.Tensor) -> NoiseParams:
        """The parameters of samples `index` (needs per-sample seeds)."""
        if not isinstance(self.seed, torch.Tensor):
            raise ValueError("NoiseParams.select: a batch-wide seed cannot be split")
        idx = torch.as_tensor(index, dtype=torch.long).cpu()
        return NoiseParams(self.snr[idx], self.seed[idx],
                           None if self.sigma is None else self.sigma[idx],
                           None if self.coils is None else self.coils[idx],
                           None if self.band is None else self.band[idx])

    @property
    def arrayed(self) -> torch.Tensor:
        """(B,) bool: the samples whose noise comes from more than one channel."""
        if self.coils is None:
            return torch.zeros(len(self), dtype=torch.bool)
        return self.coils > 1


def draw_noise_params(batch: int, generator: torch.Generator | None,
                      p_none: float = NOISE_P_NONE,
                      snr_range: tuple[float, float] = NOISE_SNR_RANGE,
                      p_array: float = 0.0,
                      coils: tuple[int, ...] = NOISE_COILS,
                      p_band: float = 0.0) -> NoiseParams:
    """Draw the noise of `batch` samples: a share p_none with none (snr = inf), the others an
    SNR log-uniform on snr_range; and one seed for the noise field. Consumes 2 * batch + 1
    draws of the generator plus `batch` seeds whatever p_none is (so later stages see the
    same stream). p_array > 0: a share p_array of the noisy samples gets array-coil noise,
    its channel count uniform among `coils` (2 * batch more draws); p_band > 0: a share p_band
    of the noisy samples gets noise of the acquired grain (`batch` more draws). p_array = 0 and
    p_band = 0 draw nothing more, so a stream drawn before either existed is unchanged."""
    lo, hi = float(snr_range[0]), float(snr_range[1])
    shares = (p_none, p_array, p_band)
    if not (0 < lo <= hi) or not all(0.0 <= v <= 1.0 for v in shares):
        raise ValueError(f"draw_noise_params: need 0 < snr_range[0] <= snr_range[1] and "
                         f"p_none, p_array, p_band in [0, 1], got {snr_range}, {shares}")
    if not coils or min(int(c) for c in coils) < 1:
        raise ValueError(f"draw_noise_params: coils must be channel counts >= 1, got {coils}")
    u = _rand(2 * batch, generator)
    snr = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u[batch:])
    snr = torch.where(u[:batch] < p_none, torch.full_like(snr, math.inf), snr)
    seeds = torch.randint(0, 2**62, (batch,), generator=generator,
                          device=_gen_device(generator)).cpu()
    params = NoiseParams(snr=snr, seed=seeds)
    if p_array > 0:
        v = _rand(2 * batch, generator)
        choice = torch.as_tensor([int(c) for c in coils], dtype=torch.int64)
        pick = choice[(v[batch:] * len(choice)).long().clamp(max=len(choice) - 1)]
        arrayed = (v[:batch] < p_array) & torch.isfinite(snr)
        params = replace(params, coils=torch.where(arrayed, pick, 1))
    if p_band > 0:
        params = replace(params, band=(_rand(batch, generator) < p_band) & torch.isfinite(snr))
    return params


def noise_sigma(tissue: torch.Tensor, params: NoiseParams) -> torch.Tensor:
    """The noise standard deviation per channel, (B,) float64: tissue level / (SNR sqrt(L)),
    so the noise floor's height follows the SNR whatever the channel count L (inf SNR: 0)."""
    coils = (torch.ones_like(params.snr) if params.coils is None
             else params.coils.to(params.snr.dtype))
    sigma = tissue.to(params.snr.dtype) / (params.snr * coils.sqrt())
    return torch.where(torch.isfinite(params.snr), sigma, torch.zeros_like(sigma))


def tissue_level(x: torch.Tensor) -> torch.Tensor:
    """Mean intensity of the tissue of each slice, (B,) float64 on the CPU: the mean over
    pixels above TISSUE_FRACTION of the slice's maximum (1.0 for an all-zero slice)."""
    _check_images(x, "tissue_level")
    flat = x.detach().flatten(1).double()
    peak = flat.amax(dim=1, keepdim=True)
    mask = (flat > TISSUE_FRACTION * peak) & (peak > 0)
    count = mask.sum(dim=1)
    level = (flat * mask).sum(dim=1) / count.clamp(min=1)
    return torch.where(count > 0, level, torch.ones_like(level)).cpu()


def noise_field(params: NoiseParams, shape: tuple[int, int],
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The standard-normal noise field of a batch, (B, 2, H, W) float32 on `device` (B, 3, H, W
    when some sample has array noise: the third plane drives its other channels, drawn after
    the first two, so the first two are those of Rician noise): a function of (params.seed,
    params.coils, shape, device) only. With per-sample seeds, samples without noise
    (snr = inf) get zeros and cost nothing. Draw it once and pass it to `apply_noise` for both
    images of a pair (half the cost of drawing it twice)."""
    b = len(params)
    arrayed = params.arrayed
    planes = 3 if bool(arrayed.any()) else 2
    g = torch.Generator(device=device)
    if not isinstance(params.seed, torch.Tensor):
        g.manual_seed(int(params.seed))
        field = torch.randn((b, 2, *shape), generator=g, device=device)
        if planes == 3:
            field = torch.cat([field, torch.randn((b, 1, *shape), generator=g, device=device)], 1)
        return field
    field = torch.zeros((b, planes, *shape), device=device)
    noisy = torch.isfinite(params.snr).tolist()
    for i, seed in enumerate(params.seed.tolist()):
        if noisy[i]:
            g.manual_seed(int(seed))
            field[i, :2] = torch.randn((2, *shape), generator=g, device=device)
            if bool(arrayed[i]):
                field[i, 2] = torch.randn(shape, generator=g, device=device)
    return field


def band_limit_field(field: torch.Tensor, params: NoiseParams,
                     resolution: ResolutionParams) -> torch.Tensor:
    """The noise field of `noise_field` with the samples that have `params.band` and were
    acquired at a lower matrix brought to the acquired grain: planes 0 and 1 (the complex noise)
    through the k-space window of `apply_resolution`, or its area down-sampling and bilinear
    up-sampling, the array plane likewise, then each plane scaled back to unit variance (the
    SNR is the image's at its own matrix). Other samples are returned unchanged."""
    if params.band is None:
        return field
    b, planes, h, w = field.shape
    which = params.band & resolution.apply
    if not bool(which.any()):
        return field
    out = field.clone()
    ks = torch.nonzero(which & resolution.kspace).flatten()
    if ks.numel():
        idx = ks.to(field.device)
        weights = _kspace_window(resolution, ks, h, w, field.device)
        c = torch.fft.ifft2(torch.fft.fft2(torch.complex(out[idx, 0], out[idx, 1])) * weights)
        out[idx, 0], out[idx, 1] = c.real, c.imag
        if planes > 2:
            out[idx, 2] = torch.fft.ifft2(torch.fft.fft2(out[idx, 2]) * weights).real
    _area_round_trip(out, resolution, torch.nonzero(which & ~resolution.kspace).flatten().tolist())
    changed = torch.nonzero(which).flatten().to(field.device)
    sub = out[changed]
    out[changed] = sub / sub.flatten(2).std(dim=2).clamp(min=1e-6)[:, :, None, None]
    return out


def _chi_square(dof: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Chi-square variates with `dof` degrees of freedom ((B, 1, 1, 1), >= 0) from standard
    normals z (B, 1, H, W), by the Wilson-Hilferty cube: one normal per pixel instead of 2L - 2
    (its mean is within 0.2 % of dof from 2 degrees of freedom up); dof 0 gives 0."""
    k = dof.clamp(min=1.0)
    c = 2.0 / (9.0 * k)
    chi = k * (1.0 - c + z * c.sqrt()).clamp(min=0.0) ** 3
    return torch.where(dof > 0, chi, torch.zeros_like(chi))


def apply_noise(x: torch.Tensor, params: NoiseParams, normalise: bool = True,
                field: torch.Tensor | None = None) -> torch.Tensor:
    """Magnitude of x plus complex Gaussian noise: ``|x + sigma n1 + i sigma n2|``; with L
    channels (params.coils) the root sum of squares of L such channels, the signal in one
    (``sqrt(|x + sigma n1 + i sigma n2|^2 + sigma^2 chi2(2L - 2))``, the same distribution).

    x: (B, 1, H, W) float, non-negative. sigma = params.sigma, or `noise_sigma`(tissue_level(x)).
    The noise field is a function of (params.seed, params.coils, B, H, W, device) only, so two
    images of one batch get the same realisation. Samples with snr = inf (sigma 0) come back as |x|.
    normalise: min-max each output slice to [0, 1] (the model-input range; the SSIM label
    normalises anyway). field: `noise_field(params, (H, W), x.device)` if already drawn.
    Returns (B, 1, H, W) float32 on x's device.
    """
    _check_images(x, "apply_noise")
    b = x.shape[0]
    if len(params) != b:
        raise ValueError(f"apply_noise: parameters for {len(params)} samples, images for {b}")
    sigma = params.sigma if params.sigma is not None else noise_sigma(tissue_level(x), params)
    sigma = torch.where(torch.isfinite(params.snr), sigma, torch.zeros_like(sigma))
    xf = x.float()
    if bool((sigma > 0).any()):
        n = field if field is not None else noise_field(params, tuple(x.shape[-2:]), x.device)
        s = sigma.to(device=x.device, dtype=torch.float32).view(b, 1, 1, 1)
        real = xf + s * n[:, :1]
        imag = s * n[:, 1:2]
        power = real * real + imag * imag
        if bool(params.arrayed.any()):
            if n.shape[1] < 3:
                raise ValueError("apply_noise: array noise needs the field's third plane "
                                 "(noise_field with these parameters)")
            dof = (2 * params.coils - 2).to(device=x.device, dtype=torch.float32)
            power = power + s * s * _chi_square(dof.view(b, 1, 1, 1), n[:, 2:3])
        out = torch.sqrt(power)
    else:
        out = xf.abs()
    return _minmax(out) if normalise else out


def noise_pair(clean: torch.Tensor, corrupted: torch.Tensor,
               generator: torch.Generator | None, p_none: float = NOISE_P_NONE,
               snr_range: tuple[float, float] = NOISE_SNR_RANGE, normalise: bool = True,
               ) -> tuple[torch.Tensor, torch.Tensor, NoiseParams]:
    """The noise stage of training: draw the noise of the batch and add it, identically, to the
    clean slices and to their motion-corrupted versions.

    clean, corrupted: (B, 1, H, W) float in [0, 1], same shape and device. sigma is set from
    the *clean* slice's tissue level, so both images get the same sigma and the same field.
    Returns (clean_noisy, corrupted_noisy, params), images (B, 1, H, W) float32 (in [0, 1]
    with normalise), params with sigma filled in (apply_noise(corrupted, params) repeats it).
    The two outputs are identical where corrupted == clean. Not the training label: SSIM
    over a shared noise field rises with the noise (see the module docstring); training takes
    the label before the noise and noises the model input only.
    """
    _check_images(clean, "noise_pair")
    if corrupted.shape != clean.shape:
        raise ValueError(f"noise_pair: shapes differ: {tuple(clean.shape)} vs "
                         f"{tuple(corrupted.shape)}")
    params = draw_noise_params(clean.shape[0], generator, p_none, snr_range)
    params = replace(params, sigma=noise_sigma(tissue_level(clean), params))
    field = noise_field(params, tuple(clean.shape[-2:]), clean.device)
    return (apply_noise(clean, params, normalise, field),
            apply_noise(corrupted, params, normalise, field), params)


# ----------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class ResolutionParams:
    """Resolution of one batch (all (B,) CPU tensors).

    apply: bool, whether the sample is re-acquired at a lower matrix.
    matrix_h, matrix_w: float64, acquired matrix along H and W (<= the slice's size; the
    phase-encoding side is often coarser).
    kspace: bool, True = truncate k-space and zero-fill (Gibbs ringing), False = area
    down-sampling then bilinear up-sampling.
    window: float64 in [0, 0.5], Tukey roll-off of the kept k-space (0 = sharp cut, most
    ringing; scanners' filters are in between).
    """

    apply: torch.Tensor
    matrix_h: torch.Tensor
    matrix_w: torch.Tensor
    kspace: torch.Tensor
    window: torch.Tensor

    def __len__(self) -> int:
        return int(self.apply.numel())

    def band(self, size: tuple[int, int]) -> torch.Tensor:
        """(B, 2) float32: the share of the k-space lines of a `size` (H, W) slice acquired
        along (y, x); 1 where the sample keeps its full matrix. Motion acts on these lines
        (`motion.MotionParams.acquired`)."""
        h, w = size
        by = torch.where(self.apply, (self.matrix_h / h).clamp(max=1.0), torch.ones(len(self)))
        bx = torch.where(self.apply, (self.matrix_w / w).clamp(max=1.0), torch.ones(len(self)))
        return torch.stack([by, bx], dim=1).float()

    def select(self, index: torch.Tensor) -> ResolutionParams:
        """The parameters of samples `index`."""
        idx = torch.as_tensor(index, dtype=torch.long).cpu()
        return ResolutionParams(self.apply[idx], self.matrix_h[idx], self.matrix_w[idx],
                                self.kspace[idx], self.window[idx])


def draw_resolution_params(batch: int, generator: torch.Generator | None, size: int = 256,
                           p_apply: float = RES_P_APPLY,
                           min_matrix: int = RES_MIN_MATRIX) -> ResolutionParams:
    """Draw the acquired matrix of `batch` slices of size x size: with probability p_apply a
    matrix log-uniform on [min_matrix, size] along the readout side and 0.6-1 times that
    along the phase side (random which side is which); reconstruction by k-space zero-filling
    (70 %, half of them with a sharp cut-off) or by interpolation (30 %). Consumes 6 * batch
    draws of the generator."""
    if not (8 <= min_matrix <= size) or not (0.0 <= p_apply <= 1.0):
        raise ValueError(f"draw_resolution_params: need 8 <= min_matrix <= size and "
                         f"0 <= p_apply <= 1, got {min_matrix}, {size}, {p_apply}")
    u = _rand(6 * batch, generator).view(6, batch)
    apply = u[0] < p_apply
    readout = torch.exp(math.log(min_matrix) + (math.log(size) - math.log(min_matrix)) * u[1])
    phase = torch.clamp(readout * (0.6 + 0.4 * u[2]), min=8.0)
    swap = u[3] < 0.5
    mh = torch.where(swap, phase, readout)
    mw = torch.where(swap, readout, phase)
    kspace = u[4] < 0.7
    window = torch.where(u[5] < 0.5, torch.zeros_like(u[5]), u[5] - 0.5)   # 0 or U(0, 0.5)
    return ResolutionParams(apply=apply, matrix_h=mh, matrix_w=mw, kspace=kspace,
                            window=window)


def _kspace_weights(n: int, matrix: torch.Tensor, window: torch.Tensor,
                    device: torch.device) -> torch.Tensor:
    """(B, n) weights over fft frequencies: 1 inside the central `matrix` lines (Tukey roll-off
    over the outer `window` share), 0 outside. Symmetric in +-k (Nyquist excluded), so a real
    image stays real."""
    k = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=torch.float64).abs()[None]
    half = (matrix.to(device) / 2.0)[:, None]
    r = k / half                                             # 0 at the centre, 1 at the edge
    a = window.to(device)[:, None]
    start = 1.0 - a
    taper = 0.5 * (1.0 + torch.cos(math.pi * (r - start) / a.clamp(min=1e-9)))
    w = torch.where(r <= start, torch.ones_like(r), taper)
    return torch.where(r < 1.0, w, torch.zeros_like(w))


def _kspace_window(params: ResolutionParams, samples: torch.Tensor, h: int, w: int,
                   device: torch.device) -> torch.Tensor:
    """(len(samples), H, W) float32: the k-space window of `samples` (CPU indices), the kept
    central matrix with its Tukey roll-off."""
    mh, mw = params.matrix_h.clamp(max=h), params.matrix_w.clamp(max=w)
    wy = _kspace_weights(h, mh[samples], params.window[samples], device)
    wx = _kspace_weights(w, mw[samples], params.window[samples], device)
    return (wy[:, :, None] * wx[:, None, :]).float()


def _area_round_trip(out: torch.Tensor, params: ResolutionParams, samples: list[int]) -> None:
    """In place: area down-sampling of `samples` of out (B, C, H, W) to their rounded matrix,
    then bilinear up-sampling back (the interpolated acquisition)."""
    h, w = out.shape[-2:]
    mh, mw = params.matrix_h.clamp(max=h), params.matrix_w.clamp(max=w)
    # area resampling needs one output size per call: group samples of the same matrix
    groups: dict[tuple[int, int], list[int]] = {}
    for i in samples:
        groups.setdefault((max(2, round(float(mh[i]))), max(2, round(float(mw[i])))), []).append(i)
    for (gh, gw), members in groups.items():
        idx = torch.as_tensor(members, device=out.device)
        small = F.interpolate(out[idx], size=(gh, gw), mode="area")
        out[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def apply_resolution(x: torch.Tensor, params: ResolutionParams) -> torch.Tensor:
    """Re-acquire each slice at its drawn matrix and reconstruct it at its own size.

    x: (B, 1, H, W) float in [0, 1]. K-space samples: |ifft2(fft2(x) * window)|, the central
    matrix_h x matrix_w frequencies kept (a zero-filled reconstruction: blur plus Gibbs rings
    at edges). Interpolated samples: area down-sampling to round(matrix) then bilinear
    up-sampling. Changed slices are min-max normalised to [0, 1]; the others are returned
    unchanged. Returns (B, 1, H, W) float32 on x's device.
    """
    _check_images(x, "apply_resolution")
    b, _, h, w = x.shape
    if len(params) != b:
        raise ValueError(f"apply_resolution: parameters for {len(params)} samples, "
                         f"images for {b}")
    out = x.float().clone()
    ks = torch.nonzero(params.apply & params.kspace).flatten()
    if ks.numel():
        idx = ks.to(x.device)
        weights = _kspace_window(params, ks, h, w, x.device)[:, None]
        out[idx] = torch.fft.ifft2(torch.fft.fft2(out[idx]) * weights).abs()
    _area_round_trip(out, params, torch.nonzero(params.apply & ~params.kspace).flatten().tolist())
    changed = torch.nonzero(params.apply).flatten().to(x.device)
    if changed.numel():
        out[changed] = _minmax(out[changed])
    return out


def random_resolution(x: torch.Tensor, generator: torch.Generator | None,
                      p_apply: float = RES_P_APPLY, min_matrix: int = RES_MIN_MATRIX,
                      ) -> tuple[torch.Tensor, ResolutionParams]:
    """Draw and apply the resolution stage: (B, 1, S, S) -> ((B, 1, S, S), params). Call it on
    the clean slices before motion. min_matrix is clamped to the slice size."""
    _check_images(x, "random_resolution")
    size = int(min(x.shape[-2:]))
    params = draw_resolution_params(x.shape[0], generator, size, p_apply,
                                    min(min_matrix, size))
    return apply_resolution(x, params), params


# ----------------------------------------------------------------------------- storage
# The smallest stored model-input window (per side), as a share of the slice's: 40 of 256, a
# head of about 31 px. Until model v3's phase 5 it was 64 (heads of 49 px and more), so inputs
# the engine accepts (windows from 16 px) with smaller heads were never trained on: a 2 mm T1
# cut to the brain (41 x 33) read +0.16 with every model, stored or not.
STORE_MIN_MATRIX = 40


@dataclass(frozen=True)
class StorageParams:
    """Storage of one batch (all (B,) CPU tensors).

    apply: bool, whether the sample is stored at a lower matrix.
    factor: float64 in (0, 1], the stored matrix as a share of the slice's.
    """

    apply: torch.Tensor
    factor: torch.Tensor

    def __len__(self) -> int:
        return int(self.apply.numel())

    def select(self, index: torch.Tensor) -> StorageParams:
        """The parameters of samples `index`."""
        idx = torch.as_tensor(index, dtype=torch.long).cpu()
        return StorageParams(self.apply[idx], self.factor[idx])


def draw_storage_params(batch: int, generator: torch.Generator | None, size: int = 256,
                        p_apply: float = 0.5,
                        min_matrix: int = STORE_MIN_MATRIX) -> StorageParams:
    """Draw the stored matrix of `batch` slices of size x size: with probability p_apply a
    matrix log-uniform on [min_matrix, size] (the same share along both sides, as a reslicing
    to another pixel size). Consumes 2 * batch draws of the generator."""
    if not (8 <= min_matrix <= size) or not (0.0 <= p_apply <= 1.0):
        raise ValueError(f"draw_storage_params: need 8 <= min_matrix <= size and "
                         f"0 <= p_apply <= 1, got {min_matrix}, {size}, {p_apply}")
    u = _rand(2 * batch, generator).view(2, batch)
    factor = torch.exp(math.log(min_matrix / size) * u[1])
    return StorageParams(apply=u[0] < p_apply, factor=factor)


def apply_storage(x: torch.Tensor, params: StorageParams) -> torch.Tensor:
    """Store each slice at its drawn matrix (bilinear, anti-aliased) and fit it back to its own
    size (bicubic, clamped to [0, 1]). x: (B, 1, H, W) float in [0, 1]; samples not applied are
    returned unchanged. Returns (B, 1, H, W) float32 on x's device."""
    _check_images(x, "apply_storage")
    b, _, h, w = x.shape
    if len(params) != b:
        raise ValueError(f"apply_storage: parameters for {len(params)} samples, images for {b}")
    out = x.float().clone()
    # one output size per interpolate call: group samples stored at the same matrix
    groups: dict[tuple[int, int], list[int]] = {}
    for i in torch.nonzero(params.apply).flatten().tolist():
        f = float(params.factor[i])
        key = (max(8, round(h * f)), max(8, round(w * f)))
        if key != (h, w):
            groups.setdefault(key, []).append(i)
    for (gh, gw), members in groups.items():
        idx = torch.as_tensor(members, device=x.device)
        small = F.interpolate(out[idx], size=(gh, gw), mode="bilinear", antialias=True,
                              align_corners=False)
        out[idx] = F.interpolate(small, size=(h, w), mode="bicubic",
                                 align_corners=False).clamp_(0.0, 1.0)
    return out
