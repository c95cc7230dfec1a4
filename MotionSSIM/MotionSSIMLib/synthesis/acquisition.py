"""Stage 3 of a synthetic subject: how the scanner acquires and reconstructs it.

`_acquisition` draws the plane, obliquity, voxel size (thick 2D slices with a box slice profile,
or 3D), matrix, field of view (cropping), and the reconstruction: direct, or k-space truncated
to the acquired matrix and zero-filled (Gibbs ringing). `_sample` resamples the clean head
through the random transform onto that grid in one trilinear pass; then bias field, Rician or
k-space noise at a random SNR, and the pipelines' background edits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from .anatomy import TissueModel

__all__ = ["INPLANE_RANGE", "MATRIX_RANGE"]

MATRIX_RANGE = (64, 512)        # output in-plane matrix (per side)
INPLANE_RANGE = (0.4, 3.0)      # acquired in-plane voxel size, mm (EPI up to 3.2)
_MAX_3D_MATRIX = 384            # 3D scans: more slices, so a smaller cap keeps them fast


def _acquisition(rng: np.random.Generator, kind: str, model: TissueModel,
                 options: dict | None = None) -> dict:
    """Plane, voxel size, slice profile, matrix, field of view and reconstruction of one scan.

    In-plane: an acquired matrix (64-512) over the field of view, then either a direct
    reconstruction (the image sampled on that grid) or a k-space one: the object is sampled on
    a finer grid, its k-space truncated to the acquired matrix (phase side sometimes at 60-100 %
    resolution, optional Tukey filter) and zero-filled to the output matrix (1-2x the acquired
    one), as scanners do; sharp cut-offs ring (Gibbs).
    """
    epi = kind in ("dwi", "epi")
    if epi:
        mode = "2d"
    else:
        p_3d = 0.5 if kind in ("t1", "post") else 0.2
        draw = rng.random()
        mode = "3d" if draw < p_3d else ("mild" if draw < p_3d + 0.1 else "2d")
    plane = str(rng.choice(("axial", "coronal", "sagittal"), p=(0.5, 0.25, 0.25)))
    normal = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    inplane = {"axial": [0, 1], "coronal": [0, 2], "sagittal": [1, 2]}[plane]
    if rng.random() < 0.2:
        inplane = inplane[::-1]          # transposed in-plane axes
    partial = rng.random() < 0.15        # field of view smaller than the head: cropped
    fov = rng.uniform(120, 175) if partial else rng.uniform(180, 260)
    fovs = [fov, fov * (rng.uniform(0.75, 1.0) if rng.random() < 0.3 else 1.0)]
    if rng.random() < 0.5:
        fovs = fovs[::-1]
    draw_pixel = rng.random()
    if kind == "dwi":
        acquired_mm = 1.2 + 1.8 * draw_pixel
        thick = rng.uniform(2.0, 5.5)
    elif kind == "epi":
        acquired_mm = 1.8 + 1.4 * draw_pixel
        thick = rng.uniform(2.5, 4.5)
    elif mode == "3d":
        acquired_mm = 0.7 + 0.6 * draw_pixel
        thick = acquired_mm * rng.uniform(0.9, 1.1)
    else:
        # Mostly clinical 0.4-1.5 mm (log-uniform), some fast low-resolution 1.5-3 mm scans.
        acquired_mm = (math.exp(math.log(0.4) + math.log(1.5 / 0.4) * draw_pixel)
                       if rng.random() < 0.85 else 1.5 + 1.5 * draw_pixel)
        thick = rng.uniform(1.5, 3.0) if mode == "mild" else rng.uniform(3.0, 6.0)
    cap = _MAX_3D_MATRIX if mode == "3d" else MATRIX_RANGE[1]
    kspace = rng.random() < (0.8 if epi else 0.6)
    zero_fill = 1.0 if rng.random() < 0.5 else rng.uniform(1.0, 2.0)
    phase_axis = int(rng.integers(0, 2))
    phase_fraction = rng.uniform(0.6, 1.0) if rng.random() < 0.5 else 1.0
    window = 0.0 if rng.random() < 0.4 else rng.uniform(0.05, 0.5)
    forced = options or {}
    acquired_mm = float(forced.get("spacing", acquired_mm))
    kspace = forced.get("recon", "kspace" if kspace else "direct") == "kspace"
    zero_fill = float(forced.get("zero_fill", zero_fill))
    phase_fraction = float(forced.get("phase_fraction", phase_fraction))
    window = float(forced.get("window", window))
    if not kspace:
        zero_fill, phase_fraction, window = 1.0, 1.0, 0.0
    # Readout side fixes the pixel; the other side gets the same (square) pixel.
    n_acq0 = int(np.clip(round(fovs[0] / acquired_mm), MATRIX_RANGE[0], cap))
    n_out0 = int(np.clip(round(n_acq0 * zero_fill), n_acq0, cap))
    pixel_mm = fovs[0] / n_out0
    n_out1 = int(np.clip(round(fovs[1] / pixel_mm), MATRIX_RANGE[0], cap))
    n_out = [n_out0, n_out1]
    ratio = n_out0 / n_acq0
    n_acq = [n_acq0, max(8, min(n_out1, int(round(n_out1 / ratio))))]
    if kspace:
        # Coarse acquisitions (>= 1.2 mm) are sampled up to 2x finer (not below 0.6 mm: the
        # template has no finer detail), so that k-space holds more than the acquired
        # frequencies and truncation rings at the template's edges. Finer ones ring little
        # anyway: they are sampled at the acquired pixel (speed).
        acquired_pixel = pixel_mm * ratio
        fine = max(0.6, acquired_pixel / 2.0) if acquired_pixel >= 1.2 else acquired_pixel
        n_sample = [int(min(cap, max(n_acq[side], round(n_out[side] * pixel_mm / fine))))
                    for side in (0, 1)]
    else:
        n_sample = list(n_out)
    sp_sample = [n_out[side] * pixel_mm / n_sample[side] for side in (0, 1)]
    gap = 1.0 if mode == "3d" else rng.uniform(1.0, 1.25)   # slice spacing / thickness
    slice_step = thick * gap
    head_n = float(model.extent[normal])
    cover = head_n * rng.uniform(0.55, 1.05)
    n_slices = max(8, int(round(cover / slice_step)))
    # Voxel axes: in-plane columns/rows along anatomical axes, random signs, slight obliquity.
    axes = np.zeros((3, 3))
    for col, anatomical in enumerate(inplane + [normal]):
        axes[anatomical, col] = rng.choice((-1.0, 1.0))
    oblique = 0.0
    if rng.random() < 0.5:
        oblique = rng.uniform(0, 12)
        axes = _rotation_about(rng, oblique) @ axes
    shift = np.zeros(3)
    shift[inplane] = rng.uniform(-30, 30, 2) if partial else rng.uniform(-15, 15, 2)
    shift[normal] = (rng.uniform(-1, 1) * max(0.0, (head_n - n_slices * slice_step) / 2)
                     + rng.uniform(-10, 10))
    recon = {"method": "kspace" if kspace else "direct", "acquired": n_acq,
             "sample": n_sample, "sample_spacing": sp_sample, "phase_axis": phase_axis,
             "phase_fraction": float(phase_fraction), "window": float(window),
             "zero_fill": float(ratio),
             "acquired_spacing": float(pixel_mm * ratio)}
    return {"mode": mode, "plane": plane, "spacing": (pixel_mm, pixel_mm, slice_step),
            "thickness": thick,
            "size": (n_out[0], n_out[1], n_slices), "directions": axes, "shift": shift,
            "oblique_deg": oblique, "partial_fov": bool(partial), "recon": recon}


def _rotation_about(rng: np.random.Generator, deg: float) -> np.ndarray:
    """Rotation by deg degrees about a uniformly random axis (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(deg)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * (cross @ cross)


def _sample(model: TissueModel, img: torch.Tensor, origin: np.ndarray, axes: np.ndarray,
            kpos: np.ndarray, ni: int, nj: int, lin: np.ndarray, head_centre: np.ndarray,
            disp: torch.Tensor | None, disp_box: tuple[np.ndarray, float], src_step: int,
            ) -> torch.Tensor:
    """Trilinear samples of `img` at the output points, through the inverse random transform.

    Output point (kk, j, i) lies at world = origin + i axes[:, 0] + j axes[:, 1] + kpos[kk]
    axes[:, 2] (axes: RAS mm per voxel step; kpos: position in k voxel steps, sub-slices
    included). lin maps world -> model space about head_centre (inverse affine); disp is a
    coarse displacement field (1, 3, g, g, g) in mm over the cube disp_box = (low corner,
    size). The map from output points to source voxels is affine plus a smooth warp, so it is
    computed exactly on every 4th point in-plane and interpolated trilinearly in between.
    """
    coarse_ni, coarse_nj = min(ni, (ni - 1) // 4 + 2), min(nj, (nj - 1) // 4 + 2)
    coarse_i, coarse_j = np.linspace(0, ni - 1, coarse_ni), np.linspace(0, nj - 1, coarse_nj)
    world = (origin + coarse_i[None, None, :, None] * axes[:, 0]
             + coarse_j[None, :, None, None] * axes[:, 1]
             + kpos[:, None, None, None] * axes[:, 2])               # (K, mj, mi, 3)
    source_mm = (world - head_centre) @ lin.T + head_centre
    if disp is not None:
        box_low, box_size = disp_box
        warp_unit = ((world - box_low) * (2.0 / box_size) - 1.0).astype(np.float32)
        warp_grid = torch.from_numpy(warp_unit)
        warp_mm = F.grid_sample(disp, warp_grid[None], mode="bilinear", padding_mode="border",
                          align_corners=True)[0]                     # (3, K, mj, mi) mm
        source_mm = source_mm + warp_mm.permute(1, 2, 3, 0).double().numpy()
    src_origin = model.origin + (src_step - 1) / 2.0   # pooled grid: centre of the 1st block
    n_src = np.array([voxels // src_step for voxels in model.shape[::-1]], float)   # x, y, z
    source_unit = ((source_mm - src_origin) / src_step) * (2.0 / (n_src - 1)) - 1.0
    coarse = torch.from_numpy(source_unit.astype(np.float32)).permute(3, 0, 1, 2)[None]
    grid = F.interpolate(coarse, size=(len(kpos), nj, ni), mode="trilinear",
                         align_corners=True)
    grid = grid.permute(0, 2, 3, 4, 1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=True)[0]


def _tukey(n: int, alpha: float) -> torch.Tensor:
    """Weights of n centred k-space lines (DC at n // 2): 1, cosine roll-off over the outer
    share alpha."""
    distance = (torch.arange(n, dtype=torch.float64) - n // 2).abs() / (n / 2.0)
    if alpha <= 0:
        return torch.ones(n, dtype=torch.float64)
    start = 1.0 - alpha
    taper = 0.5 * (1.0 + torch.cos(math.pi * (distance - start) / alpha))
    return torch.where(distance <= start, torch.ones_like(distance), taper.clamp(min=0.0))


def _kspace_recon(img: torch.Tensor, rec: dict, n_out: tuple[int, int], sigma: float,
                  rng: np.random.Generator) -> torch.Tensor:
    """Zero-filled k-space reconstruction of slices sampled on a fine grid.

    img: (K, Mj, Mi) float32, the object (times bias) on the sampling grid. The central
    acquired lines of its spectrum are kept (the phase side at rec["phase_fraction"]), complex
    Gaussian noise is added to them (image-domain sd sigma per channel), a Tukey filter
    (rec["window"]) applied, and the result zero-filled to n_out = (Nj, Ni) and transformed
    back; the magnitude is returned, (K, Nj, Ni). A smooth random phase makes the image
    complex as on a scanner. DC sits at index M // 2 (fftshift), so pixel M // 2 of the
    sampling grid and pixel N // 2 of the output are the same point.
    """
    n_slices, mj, mi = img.shape
    keep = [int(rec["acquired"][0]), int(rec["acquired"][1])]        # i, j
    phase_axis = int(rec["phase_axis"])
    keep[phase_axis] = max(8, int(round(keep[phase_axis] * rec["phase_fraction"])))
    lines_i, lines_j = keep
    ni, nj = n_out[1], n_out[0]
    y_unit = torch.linspace(-1, 1, mj)[:, None]
    x_unit = torch.linspace(-1, 1, mi)[None]
    coefficients = rng.uniform(-1, 1, 5) * rng.uniform(0, math.pi)
    phase = (coefficients[0] * x_unit + coefficients[1] * y_unit
             + coefficients[2] * x_unit * x_unit + coefficients[3] * y_unit * y_unit
             + coefficients[4] * x_unit * y_unit)
    complex_image = img.to(torch.complex64) * torch.polar(torch.ones_like(phase), phase)
    spec = torch.fft.fftshift(torch.fft.fft2(complex_image, norm="forward"), dim=(-2, -1))
    keep_top, keep_left = mj // 2 - lines_j // 2, mi // 2 - lines_i // 2
    data = spec[:, keep_top: keep_top + lines_j, keep_left: keep_left + lines_i]
    window_j, window_i = _tukey(lines_j, rec["window"]), _tukey(lines_i, rec["window"])
    if sigma > 0:
        # Noise sd per kept sample such that the image noise is sigma (per channel).
        sample_sd = sigma / math.sqrt(float((window_j ** 2).sum() * (window_i ** 2).sum()))
        noise = torch.from_numpy(rng.standard_normal((2, n_slices, lines_j, lines_i),
                                                     dtype=np.float32))
        data = data + sample_sd * torch.complex(noise[0], noise[1])
    data = data * (window_j[:, None] * window_i[None]).to(torch.float32)
    full = torch.zeros((n_slices, nj, ni), dtype=torch.complex64)
    out_top, out_left = nj // 2 - lines_j // 2, ni // 2 - lines_i // 2
    full[:, out_top: out_top + lines_j, out_left: out_left + lines_i] = data
    return torch.fft.ifft2(torch.fft.ifftshift(full, dim=(-2, -1)), norm="forward").abs()


def _to_output_grid(mask: np.ndarray, m: tuple[int, int], n: tuple[int, int],
                    ratio: tuple[float, float]) -> np.ndarray:
    """Nearest sample of a (K, Mj, Mi) sampling-grid array on the (K, Nj, Ni) output grid
    (both centred on pixel // 2; ratio = output pixel / sampling pixel, per axis j, i)."""
    idx = []
    for axis in (0, 1):
        pos = m[axis] // 2 + (np.arange(n[axis]) - n[axis] // 2) * ratio[axis]
        idx.append(np.clip(np.rint(pos).astype(int), 0, m[axis] - 1))
    return mask[:, idx[0][:, None], idx[1][None, :]]


def _isotropic_acquisition(model: TissueModel) -> dict:
    """1 mm on the model's grid, whole head, identity directions (what `_acquisition` draws)."""
    size = tuple(model.shape[::-1])
    return {"mode": "isotropic", "plane": "axial", "spacing": (1.0, 1.0, 1.0),
            "thickness": 1.0, "size": size, "directions": np.eye(3),
            "shift": np.zeros(3), "oblique_deg": 0.0, "partial_fov": False,
            "recon": {"method": "direct", "acquired": list(size[:2]),
                      "sample": list(size[:2]), "sample_spacing": [1.0, 1.0],
                      "zero_fill": 1.0}}


def _epi_distortion(rng: np.random.Generator, phase_direction: np.ndarray,
                    inverse_linear: np.ndarray) -> tuple[torch.Tensor, float]:
    """EPI distortion: a smooth shift (1, 3, 24, 24, 24) in mm along the phase-encoding
    direction (model space); returns it and its amplitude."""
    amplitude = rng.uniform(1.0, 5.0)
    shift = ndi.zoom(rng.standard_normal((5, 5, 5)), 24 / 5, order=3, mode="nearest",
                     grid_mode=False) * amplitude
    along = (inverse_linear @ phase_direction)[:, None, None, None]
    return torch.from_numpy((shift[None] * along).astype(np.float32))[None], float(amplitude)


def _slice_profile(acq: dict, slice_step: float) -> tuple[int, np.ndarray]:
    """Box slice profile: (sub-slices per slice, (nk, nsub) positions in slice steps). 2D
    slices are sampled at sub-slices spread over the thickness, averaged after sampling."""
    thickness = float(acq["thickness"])
    nsub = 1 if acq["mode"] in ("3d", "isotropic") else int(math.ceil(thickness / 1.5))
    sub = ((np.arange(nsub) + 0.5) / nsub - 0.5) * thickness if nsub > 1 else np.zeros(1)
    return nsub, np.arange(acq["size"][2])[:, None] + sub[None] / slice_step


def _bias_field(rng: np.random.Generator, options: dict,
                shape: tuple[int, int, int]) -> tuple[torch.Tensor, float]:
    """Smooth multiplicative bias field of `shape` (K, J, I) over the field of view, and its
    log standard deviation."""
    bias_sd = float(options.get("bias_sd", rng.uniform(0.0, 0.35)))
    coarse = torch.from_numpy(rng.standard_normal((4, 4, 4), dtype=np.float32) * bias_sd)
    bias = F.interpolate(coarse[None, None], size=shape, mode="trilinear",
                         align_corners=True)[0, 0].exp_()
    return bias, bias_sd


def _draw_snr(rng: np.random.Generator, kind: str, options: dict) -> float:
    """Log-uniform SNR: 6-30 for DWI/EPI, 6-80 otherwise (options["snr"] forces one)."""
    low, high = (6, 30) if kind in ("dwi", "epi") else (6, 80)
    snr = float(np.exp(rng.uniform(math.log(low), math.log(high))))
    return float(options.get("snr", snr))


def _rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of `image` plus complex Gaussian noise of sd `sigma` per channel."""
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def _direct_recon(image: torch.Tensor, sigma: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """In-plane partial-volume / reconstruction blur (sd in voxels, 0 in 40 %), then Rician
    noise on the sampled grid. Returns (image, blur sd)."""
    blur = float(rng.uniform(0.0, 0.7)) if rng.random() < 0.6 else 0.0
    array = image.numpy()
    if blur > 0:
        array = ndi.gaussian_filter(array, (0, blur, blur), mode="constant", truncate=3.0)
    return _rician(array, sigma, rng), blur


def _background_edits(image: np.ndarray, head: np.ndarray,
                      rng: np.random.Generator) -> list[str]:
    """Pipelines' edits of the background, in place: zero outside the head (10 %), a
    zero-padded matrix border (25 %). Returns their names."""
    extras = []
    if rng.random() < 0.1:
        image *= ndi.binary_dilation(head, iterations=3)
        extras.append("background_masked")
    if rng.random() < 0.25:
        for axis in (1, 2):
            n = image.shape[axis]
            low, high = (int(rng.integers(0, max(1, n // 8))) for _ in range(2))
            index = [slice(None)] * 3
            index[axis] = slice(0, low)
            image[tuple(index)] = 0
            index[axis] = slice(n - high, n)
            image[tuple(index)] = 0
        extras.append("zero_padded")
    return extras
