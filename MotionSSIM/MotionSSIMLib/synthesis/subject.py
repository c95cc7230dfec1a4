"""Synthetic MR "subjects" from the MNI152 template shipped with nilearn (the SynthSeg idea).

Real brain MR is scarce here, and a default model has to generalise to contrasts and
resolutions it never saw. So each subject is drawn at random, stage by stage, each stage a
module of this wing: the head model and its anatomy (`anatomy`), tissue intensities with texture
(`contrast`), the acquisition geometry and reconstruction with bias field and noise
(`acquisition`); `synth_subject_info` here runs the stages in a fixed order, and `writing`
writes data sets. Deformation and resampling to the acquisition grid are one trilinear
`grid_sample` pass, so one subject takes 0.5-2 s on one core (the tissue model is built once
per process, ~4 s).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..imaging.geometry import Volume, volume
from .acquisition import (
    _acquisition,
    _background_edits,
    _bias_field,
    _direct_recon,
    _draw_snr,
    _epi_distortion,
    _isotropic_acquisition,
    _kspace_recon,
    _rician,
    _sample,
    _slice_profile,
    _to_output_grid,
)
from .anatomy import _draw_anatomy, _draw_deformation, load_tissue_model
from .contrast import KIND_PROBS, KINDS, _contrast, _tissue_image

__all__ = ["OPTION_KEYS", "resample", "synth_subject", "synth_subject_info"]


OPTION_KEYS = ("ventricle_mm", "sulcal_mm", "lesions", "mass", "skull_stripped", "vessels",
               "recon", "spacing", "zero_fill", "phase_fraction", "window", "snr", "bias_sd")


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [round(item, 3) if isinstance(item, float) else item for item in value]
    return value


def _checked_options(options: dict | None) -> dict:
    """A copy of the forced draws; ValueError for a key not in OPTION_KEYS."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown synth option(s) {unknown}; known: {OPTION_KEYS}")
    return options


def synth_subject_info(rng: np.random.Generator, kind: str = "random", isotropic: bool = False,
                       deform: bool = True, options: dict | None = None,
                       ) -> tuple[Volume, dict]:
    """One synthetic subject and a JSON-able record of what was drawn (see synth_subject)."""
    if kind not in ("random", *KINDS):
        raise ValueError(f"kind must be 'random' or one of {KINDS}, not {kind!r}")
    options = _checked_options(options)
    model = load_tissue_model()
    if kind == "random":
        kind = str(rng.choice(KINDS, p=KIND_PROBS))
    means, std, info = _contrast(rng, kind)
    anat = _draw_anatomy(rng, kind, options)
    img, drawn = _tissue_image(rng, model, means, std, anat)
    info["scalp_layers_mm"] = drawn.pop("layers_mm")
    info["anatomy"] = {**anat, **drawn}

    centre = model.centre
    affine, translation, displacement = np.eye(3), np.zeros(3), None
    if deform:
        affine, translation, displacement, record = _draw_deformation(rng)
        info.update(record)
    inverse_linear = np.linalg.inv(affine)
    head_world = centre + translation
    half = float(np.max(model.extent)) * 0.75
    displacement_box = (head_world - half, 2 * half)

    acq = _isotropic_acquisition(model) if isotropic else _acquisition(rng, kind, model, options)
    rec = acq["recon"]
    directions = np.asarray(acq["directions"], float)
    spacing = np.asarray(acq["spacing"], float)
    ni, nj, nk = acq["size"]                    # output matrix
    mi, mj = rec["sample"]                      # sampling matrix (finer for k-space recons)
    sample_spacing = np.array([rec["sample_spacing"][0], rec["sample_spacing"][1], spacing[2]])
    if isotropic:
        origin = sample_origin = model.origin.copy()
    else:
        fov_centre = head_world + acq["shift"]
        half_k = (nk - 1) / 2.0 * spacing[2]
        origin = fov_centre - directions @ np.array([ni // 2 * spacing[0],
                                                     nj // 2 * spacing[1], half_k])
        sample_origin = fov_centre - directions @ np.array(
            [mi // 2 * sample_spacing[0], mj // 2 * sample_spacing[1], half_k])
        if kind in ("dwi", "epi"):
            phase = directions[:, int(rec.get("phase_axis", 0))]
            epi, amplitude = _epi_distortion(rng, phase, inverse_linear)
            info["epi_distortion_mm"] = round(amplitude, 2)
            displacement = epi if displacement is None else displacement + epi
    nsub, kpos = _slice_profile(acq, spacing[2])

    # Coarse sampling grids: sample a 2 mm average-pooled image (anti-aliasing, blur).
    src_step = 2 if min(sample_spacing[0], sample_spacing[1]) >= 1.5 else 1
    src = F.avg_pool3d(img, 2) if src_step == 2 else img
    # Slices in chunks of ~6 M sample points: bounded memory for 512 x 512 matrices.
    per_chunk = max(1, int(6e6 // (nsub * mi * mj)))
    chunks = []
    for first in range(0, nk, per_chunk):
        part = _sample(model, src, sample_origin, directions * sample_spacing[None, :],
                       kpos[first: first + per_chunk].ravel(), mi, mj, inverse_linear, centre,
                       displacement, displacement_box, src_step)
        chunks.append(part.view(part.shape[0], -1, nsub, mj, mi).mean(2))
    del img, src
    sampled = torch.cat(chunks, dim=1)                  # (channels, nk, mj, mi)
    brain_mask = sampled[1].numpy() > 0.5 if sampled.shape[0] > 1 else None

    bias, bias_sd = _bias_field(rng, options, (nk, mj, mi))
    obj = sampled[0] * bias
    head = (obj > 0.05 * float(obj.max())).numpy()
    ref = float(obj.numpy()[head].mean()) if head.any() else 1.0
    snr = _draw_snr(rng, kind, options)
    sigma = ref / snr if math.isfinite(snr) and snr > 0 else 0.0
    blur = 0.0
    if rec["method"] == "kspace":
        # Noise enters in k-space: zero-filling then correlates it, as on scanners.
        image = _kspace_recon(obj, rec, (nj, ni), sigma, rng).numpy()
        ratio = (spacing[1] / sample_spacing[1], spacing[0] / sample_spacing[0])
        head = _to_output_grid(head, (mj, mi), (nj, ni), ratio)
        if brain_mask is not None:
            brain_mask = _to_output_grid(brain_mask, (mj, mi), (nj, ni), ratio)
    else:
        image, blur = _direct_recon(obj, sigma, rng)
    extras = []
    if brain_mask is not None:   # skull-stripped: the mask is applied after reconstruction
        image = image * brain_mask
        extras.append("skull_stripped")
    if not isotropic:
        image = np.array(image, np.float32)  # a writable copy for the in-place edits
        extras += _background_edits(image, head, rng)
    image = (np.asarray(image, np.float32) * rng.uniform(1000, 4000)).astype(np.float32)
    vol = volume(image, spacing=tuple(float(value) for value in spacing), directions=directions,
                 origin=tuple(float(value) for value in origin))
    info.update(
        mode=acq["mode"], plane=acq["plane"], spacing=[round(float(value), 3) for value in spacing],
        slice_thickness=round(float(acq["thickness"]), 3), shape_kji=list(image.shape),
        oblique_deg=round(float(acq["oblique_deg"]), 2), pv_blur=round(blur, 3),
        bias_sd=round(float(bias_sd), 3), snr=round(snr, 2) if math.isfinite(snr) else None,
        extras=extras, recon={key: _rounded(value) for key, value in rec.items()},
        partial_fov=bool(acq["partial_fov"]),
    )
    return vol, info


def synth_subject(rng: np.random.Generator, kind: str = "random", isotropic: bool = False,
                  deform: bool = True, options: dict | None = None) -> Volume:
    """A random synthetic head MR volume.

    kind: "t1", "t2", "pd", "flair", "dwi" (EPI b0 or trace), "epi" (gradient-echo EPI),
    "post" (post-contrast T1: enhancing dura, vessels, lesion rims), "inverted" (a named
    contrast with its tissue intensities flipped), "generic" (every tissue intensity random)
    or "random" (any of these).
    isotropic: 1 mm isotropic on the model's RAS grid (identity directions, whole head);
    otherwise a random acquisition: plane, obliquity, in-plane voxel 0.4-3 mm, matrix
    64-512, partial fields of view, 2D slices of 1.5-6 mm or 3D, direct or zero-filled
    k-space reconstruction (Gibbs ringing). Anatomy varies too: atrophy (dilated ventricles,
    wider sulci), white-matter lesions, a tumour-like mass, skull stripping, vessels.
    deform=False turns off the random affine and warp (the head stays on the template).
    options: force draws, for tests and special sets: any of OPTION_KEYS, e.g.
    {"ventricle_mm": 6.0, "lesions": 0, "mass": True, "skull_stripped": False,
    "vessels": False, "recon": "kspace", "spacing": 2.0, "zero_fill": 2.0,
    "phase_fraction": 1.0, "window": 0.0, "snr": float("inf"), "bias_sd": 0.0}.
    The subject is a deterministic function of (rng state, kind, isotropic, deform, options).
    """
    return synth_subject_info(rng, kind, isotropic, deform, options)[0]


def resample(vol: Volume, spacing: tuple[float, float, float],
             rng: np.random.Generator | None = None) -> Volume:
    """The volume on a grid of the given spacing (mm along i, j, k), same axes and extent.

    Coarser axes are box-averaged over the new voxel size first (a slice profile, so thick
    slices show partial volume as scanners' do). With rng, Rician noise at a random SNR
    (8-60) is added afterwards, because averaging removes most of the fine-grid noise.
    """
    arr = vol.array.astype(np.float32)
    old = np.asarray(vol.spacing, float)
    new = np.asarray(spacing, float)
    if new.shape != (3,) or np.any(new <= 0):
        raise ValueError(f"spacing must be 3 positive numbers, not {spacing!r}")
    shape_ijk = np.array(arr.shape[::-1])
    n_new = np.maximum(1, np.floor(shape_ijk * old / new + 1e-6).astype(int))
    coords = []
    for axis in range(3):   # i, j, k; array axis = 2 - ax
        factor = new[axis] / old[axis]
        if factor > 1.0:
            arr = ndi.uniform_filter1d(arr, size=max(1, int(round(factor))), axis=2 - axis,
                                       mode="nearest")
        # Edge-aligned: the new grid covers the same physical extent as the old one.
        coords.append((np.arange(n_new[axis]) + 0.5) * factor - 0.5)
    grid_k, grid_j, grid_i = np.meshgrid(coords[2], coords[1], coords[0], indexing="ij")
    out = ndi.map_coordinates(arr, [grid_k, grid_j, grid_i], order=1,
                              mode="nearest").astype(np.float32)
    shift = (new - old) / 2.0
    origin = np.asarray(vol.origin, float) + np.asarray(vol.directions, float) @ shift
    if rng is not None:
        head = out > 0.05 * float(out.max())
        ref = float(out[head].mean()) if head.any() else 1.0
        sigma = ref / float(np.exp(rng.uniform(math.log(8), math.log(60))))
        out = _rician(out, sigma, rng)
    return volume(out, spacing=tuple(float(value) for value in new), directions=vol.directions,
                  origin=tuple(float(value) for value in origin))
