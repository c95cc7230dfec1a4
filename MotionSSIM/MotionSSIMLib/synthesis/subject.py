"""Synthetic MR "subjects" from the MNI152 template shipped with nilearn (the SynthSeg idea).

Real brain MR is scarce here, and a default model has to generalise to contrasts and
resolutions it never saw. So each subject is drawn at random from a tissue model built once
from the nilearn MNI152 2009c template (1 mm) and its grey/white-matter probability maps:

* soft brain tissue fractions (CSF, GM, WM) inside the intracranial volume, with sub-classes
  (cortical vs deep GM, darker vs brighter WM) for texture;
* head tissues outside the brain. The nilearn T1 template is skull-stripped, so skull, marrow,
  scalp fat and skin are layered at random thicknesses by distance from the intracranial
  volume, and a neck, face, eyes, orbital fat and air sinuses are added as simple shapes.

Per subject: random affine (rotation up to 15 deg, scaling 0.85-1.15 per axis) and a smooth
random displacement field; random tissue intensities (T1, T2, PD, FLAIR, DWI/EPI-like or fully
random) with texture; random acquisition geometry (plane, obliquity, voxel size including
thick 2D slices with a box slice profile, matrix, field of view, cropping, zero padding);
multiplicative smooth bias field; Rician noise at a random SNR. Deformation and resampling to
the acquisition grid are one trilinear `grid_sample` pass, so one subject takes 0.5-2 s on one
core (the tissue model is built once per process, ~4 s).

Seeds: `write_dataset` derives the generator of subject `index` of split `split` from
`numpy.random.SeedSequence(entropy=seed, spawn_key=(SPLIT_IDS[split], index))`, so every
subject (and its deformation) is independent of the others, of the split sizes and of the
number of workers, and held-out subjects never share a stream with training subjects.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from .errors import MotionSSIMError
from .geometry import Volume, volume

__all__ = [
    "CLASSES", "KINDS", "SPLIT_IDS", "TissueModel", "load_tissue_model", "template_dir",
    "synth_subject", "synth_subject_info", "resample", "subject_rng", "write_dataset",
    "OPTION_KEYS", "MATRIX_RANGE", "INPLANE_RANGE",
]

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Tissue classes (index = label value). "background" is air. The last five are painted per
# subject: dura (a layer under the skull), vessels, lesions / oedema, necrosis, enhancing rims.
CLASSES = ("background", "csf", "gm", "gm_deep", "wm", "wm_bright", "skull", "marrow", "fat",
           "skin", "muscle", "eye", "dura", "vessel", "lesion", "necrosis", "rim")
C = {name: i for i, name in enumerate(CLASSES)}
# Named contrasts; "generic" draws every tissue intensity at random, "inverted" flips a named
# contrast's tissue intensities, "post" is a post-contrast (gadolinium) T1. "random" mixes all.
KINDS = ("t1", "t2", "pd", "flair", "dwi", "epi", "post", "inverted", "generic")
KIND_PROBS = (0.18, 0.16, 0.08, 0.10, 0.10, 0.06, 0.10, 0.06, 0.16)
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}

# Extra labels of the head model (outside the intracranial volume), stored per voxel.
_EXTRA_NONE, _EXTRA_EYE, _EXTRA_ORBIT_FAT, _EXTRA_AIR = 0, 1, 2, 3
_PAD_BELOW = 40      # mm of neck added below the template's last slice
_SHELL_MAX = 32.0    # mm: farthest a scalp layer can reach from the intracranial volume
_DIST_MAX = 40.0     # mm: brain distance maps (ventricles, CSF) are clipped here

# Mean intensity per class (CLASSES order, background first) of the named contrasts, on a
# [0, 1] scale; each subject multiplies them by U(0.9, 1.1), which never flips the brain
# orderings (T1: WM > GM > CSF, T2/DWI-b0: CSF > GM > WM, FLAIR: GM > WM > CSF). Lesions and
# oedema are T1-dark and T2/FLAIR-bright; necrosis is fluid; rims and vessels enhance only in
# "post"; vessels are flow voids elsewhere.
_MEANS = {
    #     bg   csf   gm   gmD   wm   wmB  skull marrow fat  skin  musc  eye  dura  vess lesn necr rim
    "t1": (0, 0.14, 0.50, 0.58, 0.78, 0.84, 0.04, 0.72, 0.95, 0.45, 0.35, 0.12,
           0.10, 0.25, 0.38, 0.12, 0.50),
    "t2": (0, 1.00, 0.55, 0.50, 0.37, 0.33, 0.04, 0.50, 0.75, 0.40, 0.28, 1.00,
           0.08, 0.06, 0.85, 0.95, 0.60),
    "pd": (0, 0.88, 0.78, 0.74, 0.62, 0.60, 0.05, 0.70, 0.90, 0.60, 0.50, 0.90,
           0.10, 0.12, 0.90, 0.88, 0.75),
    "flair": (0, 0.06, 0.62, 0.58, 0.45, 0.42, 0.04, 0.55, 0.75, 0.45, 0.35, 0.08,
              0.08, 0.06, 0.92, 0.20, 0.75),
    "dwi_b0": (0, 1.00, 0.56, 0.52, 0.42, 0.40, 0.03, 0.10, 0.06, 0.20, 0.22, 1.00,
               0.05, 0.05, 0.80, 0.95, 0.60),
    "dwi_trace": (0, 0.10, 0.60, 0.56, 0.50, 0.48, 0.03, 0.08, 0.05, 0.15, 0.20, 0.10,
                  0.05, 0.05, 0.75, 0.08, 0.55),
    # Gradient-echo EPI (fMRI): T2*-weighted, fat-suppressed, weak GM/WM contrast.
    "epi": (0, 0.85, 0.60, 0.52, 0.48, 0.46, 0.03, 0.10, 0.08, 0.25, 0.25, 0.85,
            0.05, 0.05, 0.75, 0.85, 0.55),
    # Post-contrast T1: dura, vessels and lesion rims enhance.
    "post": (0, 0.14, 0.50, 0.58, 0.78, 0.84, 0.04, 0.72, 0.95, 0.45, 0.40, 0.12,
             0.85, 0.95, 0.38, 0.12, 0.95),
}
# Share of subjects with each anatomical change (each drawn independently).
P_ATROPHY = 0.3          # ventricles dilated 1-6 mm, sulci widened 0-2 mm
P_LESIONS = 0.2          # 1-20 small lesions (1.5-6 mm), 60 % of them periventricular
P_MASS = 0.12            # one tumour-like mass (8-30 mm) with rim, optional necrosis, oedema
P_SKULL_STRIPPED = 0.08  # everything outside the intracranial volume set to 0
P_VESSELS = 0.5          # vessel network (always in "post")


def template_dir() -> Path:
    """Folder of nilearn's bundled MNI152 files (found without importing nilearn: slow), or the
    folder named by the environment variable MOTIONSSIM_TEMPLATE_DIR (a machine without nilearn,
    such as the GPU campaign's, carries the three files)."""
    env = os.environ.get("MOTIONSSIM_TEMPLATE_DIR")
    if env:
        folder = Path(env)
        for name in TEMPLATE_FILES.values():
            if not (folder / name).is_file():
                raise MotionSSIMError(f"{folder / name}: MNI152 template file missing "
                                      "(MOTIONSSIM_TEMPLATE_DIR)")
        return folder
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MotionSSIMError("nilearn is not installed: it provides the MNI152 template that "
                              "synthetic subjects are made from (pip install nilearn)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    for name in TEMPLATE_FILES.values():
        if not (folder / name).is_file():
            raise MotionSSIMError(f"{folder / name}: MNI152 template file missing from nilearn")
    return folder


@dataclass(frozen=True)
class TissueModel:
    """Head model on a 1 mm RAS grid (arrays indexed [k, j, i] = [z, y, x])."""

    shape: tuple[int, int, int]          # (nz, ny, nx)
    origin: np.ndarray                   # RAS mm of voxel (0, 0, 0); spacing 1 mm, identity axes
    brain_index: np.ndarray              # flat indices of intracranial voxels (int64)
    brain_frac: np.ndarray               # (3, n) float32 fractions of CSF, GM, WM (sum 1)
    brain_deep_gm: np.ndarray            # (n,) bool: GM here is deep (basal ganglia, thalamus)
    brain_bright_wm: np.ndarray          # (n,) bool: WM brighter than median in the T1 template
    shell_index: np.ndarray              # flat indices of candidate head voxels outside the brain
    shell_dist: np.ndarray               # (m,) float32 mm from the intracranial volume
    shell_depth: np.ndarray              # (m,) float32 mm depth inside the neck/face (0 outside)
    shell_extra: np.ndarray              # (m,) uint8 eye / orbital fat / air sinus override
    centre: np.ndarray                   # RAS mm, centre of the head's bounding box
    extent: np.ndarray                   # mm, size of the head's bounding box along R, A, S
    brain_vent_dist: np.ndarray          # (n,) float32 mm from the ventricles (clipped at 40)
    brain_csf_dist: np.ndarray           # (n,) float32 mm from any CSF (fraction > 0.5)
    brain_depth: np.ndarray              # (n,) float32 mm from the intracranial surface

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    def ijk_to_ras(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, 3] = self.origin
        return m

    def tissue_masks(self, purity: float = 0.5) -> dict[str, np.ndarray]:
        """Masks of csf, gm, wm (fraction > purity; the dominant one at 0.5) on the grid."""
        out = {}
        for c, name in enumerate(("csf", "gm", "wm")):
            mask = np.zeros(self.n_voxels, bool)
            mask[self.brain_index[self.brain_frac[c] > purity]] = True
            out[name] = mask.reshape(self.shape)
        return out


def _ellipsoid(shape, origin, centre, radii) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    x = (x + origin[0] - centre[0]) / radii[0]
    y = (y + origin[1] - centre[1]) / radii[1]
    z = (z + origin[2] - centre[2]) / radii[2]
    return x * x + y * y + z * z <= 1.0


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the mask's bounding box grown by margin voxels (clipped to the array)."""
    out = []
    for ax in range(mask.ndim):
        others = tuple(other for other in range(mask.ndim) if other != ax)
        occupied = np.flatnonzero(mask.any(axis=others))
        out.append(slice(max(0, occupied[0] - margin),
                         min(mask.shape[ax], occupied[-1] + 1 + margin)))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def load_tissue_model() -> TissueModel:
    """Build (once per process, ~5 s) the head model from the nilearn MNI152 files."""
    import nibabel as nib

    folder = template_dir()
    maps = {}
    for key, name in TEMPLATE_FILES.items():
        img = nib.load(folder / name)
        maps[key] = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0) / 255.0
        affine = img.affine
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise MotionSSIMError(f"{folder}: unexpected MNI152 template orientation")
    # Add a neck below the template; the lowest slices (medulla) continue as the spinal cord.
    for key in maps:
        maps[key] = np.concatenate([np.repeat(maps[key][:1], _PAD_BELOW, axis=0), maps[key]])
    origin = affine[:3, 3] - np.array([0.0, 0.0, _PAD_BELOW])
    shape = maps["t1"].shape
    gm_map, wm_map = maps["gm"], maps["wm"]

    # Intracranial volume: the template's brain mask (it includes ventricles and sulci), closed.
    brain = (maps["t1"] > 0) | (gm_map + wm_map > 0.3)
    ball = _ellipsoid((7, 7, 7), (-3, -3, -3), (0, 0, 0), (3.2, 3.2, 3.2))
    box = _bbox(brain, margin=6)   # morphology on the brain's box only: 3x faster
    icv = np.zeros_like(brain)
    icv[box] = ndi.binary_fill_holes(ndi.binary_closing(brain[box], ball, iterations=1))
    # Depth inside the brain only picks deep GM (> 22 mm): a 2 mm grid is precise enough.
    depth_in = ndi.distance_transform_edt(icv[::2, ::2, ::2], sampling=2.0)
    depth_in = np.repeat(np.repeat(np.repeat(depth_in, 2, 0), 2, 1), 2, 2)[
        : shape[0], : shape[1], : shape[2]]
    dist_out = ndi.distance_transform_edt(~icv).astype(np.float32)

    idx = np.flatnonzero(icv)
    gm_frac, wm_frac = gm_map.ravel()[idx], wm_map.ravel()[idx]
    gm_wm = gm_frac + wm_frac
    scale = np.where(gm_wm > 1, 1 / np.maximum(gm_wm, 1e-6), 1.0)
    gm_frac, wm_frac = gm_frac * scale, wm_frac * scale
    frac = np.stack([1 - gm_frac - wm_frac, gm_frac, wm_frac]).astype(np.float32)
    deep = depth_in.ravel()[idx] > 22.0           # GM far from the surface: subcortical nuclei
    t1v = maps["t1"].ravel()[idx]
    wm_vox = wm_frac > 0.5
    bright = t1v > np.median(t1v[wm_vox])
    vent_dist, csf_dist, depth_b = _brain_distances(icv, box, idx, frac[0])

    # Lower head: neck (elliptic cylinder, cord at its back) and face (ellipsoid).
    z_mm = np.arange(shape[0])[:, None, None] + origin[2]
    # 2D ellipses (broadcast along z): the z term of _ellipsoid vanishes at centre z = origin.
    flat = (1, shape[1], shape[2])
    neck = _ellipsoid(flat, origin, (0, -22, origin[2]), (56, 52, 1)) & (z_mm < -30)
    face = _ellipsoid(shape, origin, (0, 38, -58), (50, 52, 40))
    lower = (neck | face) & ~icv
    depth = np.zeros(shape, np.float32)
    low_box = _bbox(neck | face, margin=2)
    depth[low_box] = ndi.distance_transform_edt((neck | face)[low_box])
    depth *= lower
    extra = np.zeros(shape, np.uint8)
    for side in (-1, 1):  # eyes with their orbital fat; maxillary sinuses below them
        orbit = _ellipsoid(shape, origin, (32 * side, 50, -36), (18, 20, 16))
        extra[orbit & ~icv] = _EXTRA_ORBIT_FAT
        extra[_ellipsoid(shape, origin, (32 * side, 55, -36), (12, 12, 12)) & ~icv] = _EXTRA_EYE
        extra[_ellipsoid(shape, origin, (24 * side, 40, -66), (12, 16, 14)) & ~icv] = _EXTRA_AIR
    airway = _ellipsoid(flat, origin, (0, 10, origin[2]), (9, 7, 1)) & (z_mm < -62)
    extra[airway & ~icv] = _EXTRA_AIR

    cand = (~icv) & ((dist_out <= _SHELL_MAX) | lower | (extra > 0))
    shell_index = np.flatnonzero(cand)
    head = icv | (dist_out <= 20) | lower
    occupied = [np.flatnonzero(head.any(axis=tuple(other for other in range(3) if other != axis)))
                for axis in range(3)]
    head_low = np.array([occupied[2][0], occupied[1][0], occupied[0][0]], float) + origin  # RAS
    head_high = np.array([occupied[2][-1], occupied[1][-1], occupied[0][-1]], float) + origin
    return TissueModel(
        shape=tuple(int(size) for size in shape), origin=origin.astype(float),
        brain_index=idx, brain_frac=frac, brain_deep_gm=deep, brain_bright_wm=bright,
        shell_index=shell_index, shell_dist=dist_out.ravel()[shell_index],
        shell_depth=depth.ravel()[shell_index], shell_extra=extra.ravel()[shell_index],
        centre=(head_low + head_high) / 2, extent=head_high - head_low + 1,
        brain_vent_dist=vent_dist, brain_csf_dist=csf_dist, brain_depth=depth_b,
    )


def _brain_distances(icv: np.ndarray, box: tuple[slice, ...], idx: np.ndarray,
                     csf_frac: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per intracranial voxel: mm to the ventricles, to any CSF, and to the brain surface.

    Ventricles: the large connected CSF regions (fraction > 0.5) deeper than 12 mm: the
    template's two lateral ventricles (~43 ml). Computed on the brain's box.
    """
    icv_b = icv[box]
    csf = np.zeros(icv.size, bool)
    csf[idx[csf_frac > 0.5]] = True
    csf_b = csf.reshape(icv.shape)[box]
    depth = ndi.distance_transform_edt(icv_b).astype(np.float32)
    regions, n_regions = ndi.label(csf_b & (depth > 12))
    sizes = (ndi.sum(np.ones_like(regions), regions, np.arange(1, n_regions + 1)) if n_regions
             else np.zeros(0))
    keep = np.flatnonzero(sizes > 5000) + 1   # the two lateral ventricles, not sulcal CSF
    vent = np.isin(regions, keep)
    vent_mm = np.minimum(ndi.distance_transform_edt(~vent), _DIST_MAX).astype(np.float32)
    csf_mm = np.minimum(ndi.distance_transform_edt(~csf_b), _DIST_MAX).astype(np.float32)
    # Flat model index -> position inside the box.
    k, j, i = np.unravel_index(idx, icv.shape)
    loc = (k - box[0].start, j - box[1].start, i - box[2].start)
    return vent_mm[loc], csf_mm[loc], depth[loc]


# --------------------------------------------------------------------------- random draws
def _euler(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation from three independent angles in [-max_deg, max_deg]."""
    rotation = np.eye(3)
    for axis in range(3):
        angle = math.radians(rng.uniform(-max_deg, max_deg))
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        turn = np.eye(3)
        first, second = [other for other in range(3) if other != axis]
        turn[first, first], turn[first, second] = cos_a, -sin_a
        turn[second, first], turn[second, second] = sin_a, cos_a
        rotation = turn @ rotation
    return rotation


def _contrast(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-class mean and texture std (relative) for one subject, and what was drawn."""
    info: dict = {"kind": kind}
    if kind == "generic":
        means = rng.uniform(0.0, 1.0, len(CLASSES))
        means[C["skull"]] = rng.uniform(0.0, 0.25)   # cortical bone has no MR signal anywhere
        means[C["eye"]] = means[C["csf"]] * rng.uniform(0.8, 1.2)
        for a, b in (("gm_deep", "gm"), ("wm_bright", "wm")):   # sub-classes stay related
            if rng.random() < 0.7:
                means[C[a]] = means[C[b]] * rng.uniform(0.85, 1.15)
    else:
        variant = kind
        if kind == "dwi":
            variant = "dwi_b0" if rng.random() < 0.4 else "dwi_trace"
        elif kind == "inverted":
            variant = str(rng.choice(("t1", "t2", "pd", "flair")))
        info["variant"] = variant
        means = np.array(_MEANS[variant], float) * rng.uniform(0.9, 1.1, len(CLASSES))
        if variant in ("t2", "pd", "flair", "post") and rng.random() < 0.25:   # fat saturation
            means[C["fat"]] *= 0.15
            means[C["marrow"]] *= 0.3
            info["fat_suppressed"] = True
        if variant in ("t1", "post") and rng.random() < 0.2:   # MPRAGE-like: darker CSF
            means[C["csf"]] *= 0.4
            means[C["eye"]] *= 0.4
        if kind == "inverted":   # tissue intensities flipped; air stays dark
            means = np.clip(means.max() - means, 0.0, None) + 0.02
    means[C["background"]] = 0.0
    std = np.concatenate([[0.0], rng.uniform(0.01, 0.06, 5), rng.uniform(0.03, 0.15, 6),
                          rng.uniform(0.02, 0.10, 5)])
    return means.astype(np.float32), std.astype(np.float32), info


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


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], step: int) -> torch.Tensor:
    """Unit-variance-ish Gaussian noise correlated over ~step voxels, as (1, 1, *shape)."""
    coarse = [max(2, -(-size // step) + 1) for size in shape]
    noise = torch.from_numpy(rng.standard_normal(coarse, dtype=np.float32))[None, None]
    return F.interpolate(noise, size=shape, mode="trilinear", align_corners=True)


def _draw_anatomy(rng: np.random.Generator, kind: str, options: dict) -> dict:
    """Which anatomical changes one subject gets (see P_* above); options override draws."""
    draws = rng.random(5)
    ventricle_mm, sulcal_mm = rng.uniform(1.0, 6.0), rng.uniform(0.0, 2.0)
    n_lesions = int(rng.integers(1, 21))
    anat = {
        "ventricle_mm": float(ventricle_mm) if draws[0] < P_ATROPHY else 0.0,
        "sulcal_mm": float(sulcal_mm) if draws[0] < P_ATROPHY else 0.0,
        "lesions": n_lesions if draws[1] < P_LESIONS else 0,
        "mass": bool(draws[2] < P_MASS),
        "skull_stripped": bool(draws[3] < P_SKULL_STRIPPED),
        "vessels": bool(kind == "post" or draws[4] < P_VESSELS),
    }
    for key in anat:
        if key in options:
            anat[key] = type(anat[key])(options[key])
    return anat


def _paint(img3: np.ndarray, icv3: np.ndarray, centre: np.ndarray, radii: np.ndarray,
           rot: np.ndarray, shells: list[tuple[float, float]], tex_std: float,
           fine: np.ndarray, rng: np.random.Generator) -> None:
    """Paint nested ellipsoids (voxel units, [z, y, x]) into img3, inside the brain only.

    shells: (normalised radius, intensity) from the outermost in; each replaces what lies
    inside it, with a ~1 mm soft edge and an irregular, smoothly varying boundary; texture
    1 + tex_std * fine (fine: the subject's flat texture noise).
    """
    reach = float(radii.max() * max(shell_radius for shell_radius, _ in shells) * 1.2) + 2
    box_low = np.maximum(np.floor(centre - reach).astype(int), 0)
    box_high = np.minimum(np.ceil(centre + reach).astype(int) + 1, img3.shape)
    if np.any(box_high <= box_low):
        return
    box = tuple(slice(int(low), int(high)) for low, high in zip(box_low, box_high))
    z, y, x = np.meshgrid(*(np.arange(low, high) - mid
                            for low, high, mid in zip(box_low, box_high, centre)),
                          indexing="ij")
    local = np.stack([z, y, x], -1) @ rot                     # into the ellipsoid's own axes
    radius_map = np.sqrt(((local / radii) ** 2).sum(-1))              # 1 on the ellipsoid surface
    bumps = ndi.zoom(rng.standard_normal((4, 4, 4)), np.array(radius_map.shape) / 4.0, order=1,
                     mode="nearest", grid_mode=True)[tuple(slice(n) for n in radius_map.shape)]
    radius_map = radius_map * (1.0 + 0.08 * bumps)
    mm_per_unit = float(radii.mean())
    inside = icv3[box]
    tex = 1.0 + tex_std * fine.reshape(img3.shape)[box]
    for radius, intensity in shells:
        alpha = np.clip((radius - radius_map) * mm_per_unit + 0.5, 0.0, 1.0) * inside
        img3[box] = img3[box] * (1 - alpha) + intensity * tex * alpha


def _tissue_image(rng: np.random.Generator, model: TissueModel, means: np.ndarray,
                  std: np.ndarray, anat: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Clean intensity image of the head on the model grid, (1, 1, nz, ny, nx) float32, or
    (1, 2, ...) with the intracranial mask as channel 2 when the subject is skull-stripped."""
    anat = anat or {"ventricle_mm": 0.0, "sulcal_mm": 0.0, "lesions": 0, "mass": False,
                    "skull_stripped": False, "vessels": False}
    drawn: dict = {}
    fine = _smooth_noise(rng, model.shape, 2).view(-1).numpy()      # intra-tissue texture
    coarse = _smooth_noise(rng, model.shape, 12).view(-1).numpy()   # thickness variation
    img = np.zeros(model.n_voxels, np.float32)

    # Brain: soft mixture of CSF / GM / WM, each with its own texture amplitude.
    brain_index = model.brain_index
    brain_texture = fine[brain_index]
    gm_class = np.where(model.brain_deep_gm, C["gm_deep"], C["gm"])
    wm_class = np.where(model.brain_bright_wm, C["wm_bright"], C["wm"])
    fractions = model.brain_frac
    if anat["ventricle_mm"] > 0 or anat["sulcal_mm"] > 0:
        # Atrophy: CSF spaces grow by a distance (ventricles more than sulci), soft 1 mm edge.
        grown_csf = np.maximum(np.clip(anat["ventricle_mm"] - model.brain_vent_dist + 0.5, 0, 1),
                       np.clip(anat["sulcal_mm"] - model.brain_csf_dist + 0.5, 0, 1)
                       * (anat["sulcal_mm"] > 0))
        fractions = fractions * (1 - grown_csf)
        fractions[0] += grown_csf
    img[brain_index] = (fractions[0] * means[C["csf"]] * (1 + std[C["csf"]] * brain_texture)
                        + fractions[1] * means[gm_class] * (1 + std[gm_class] * brain_texture)
                        + fractions[2] * means[wm_class] * (1 + std[wm_class] * brain_texture))
    if anat["vessels"]:
        # Curvilinear vessels: where two independent smooth fields are both near zero.
        vessel_a = _smooth_noise(rng, model.shape, 10).view(-1).numpy()[brain_index]
        vessel_b = _smooth_noise(rng, model.shape, 10).view(-1).numpy()[brain_index]
        width = rng.uniform(0.08, 0.16)
        tube = np.clip(1.5 - np.maximum(np.abs(vessel_a), np.abs(vessel_b)) / width, 0, 1)
        tube *= np.where(fractions[0] > 0.3, 1.0, 0.5)   # mostly in the sulci, some deep
        img[brain_index] = img[brain_index] * (1 - tube) + means[C["vessel"]] * tube
        drawn["vessel_width"] = round(float(width), 3)

    # Head: layers by distance from the intracranial volume, thickness varying smoothly.
    thick = {"csf": rng.uniform(0.5, 3.0), "dura": rng.uniform(0.5, 1.5),
             "table_in": rng.uniform(1.0, 2.5), "diploe": rng.uniform(1.0, 5.0),
             "table_out": rng.uniform(1.0, 2.5), "fat": rng.uniform(2.0, 7.0),
             "skin": rng.uniform(1.5, 4.0)}
    edges = np.cumsum(list(thick.values()))
    layers = np.array([C["csf"], C["dura"], C["skull"], C["marrow"], C["skull"], C["fat"],
                       C["skin"], C["background"]], np.int64)
    shell_index = model.shell_index
    shell_dist = model.shell_dist + coarse[shell_index] * rng.uniform(0.5, 3.0)
    labels = layers[np.searchsorted(edges, shell_dist, side="right")]
    depth = model.shell_depth
    skin_t, fat_t = rng.uniform(1.5, 3.5), rng.uniform(2.0, 8.0)
    # In the neck and face, soft tissue replaces scalp layers (not the bone round the cord).
    low = np.isin(labels, (C["background"], C["fat"], C["skin"])) & (depth > 0)
    labels[low] = np.where(depth[low] <= skin_t, C["skin"],
                        np.where(depth[low] <= skin_t + fat_t, C["fat"], C["muscle"]))
    extra = model.shell_extra
    labels[extra == _EXTRA_ORBIT_FAT] = C["fat"]
    labels[extra == _EXTRA_EYE] = C["eye"]
    labels[extra == _EXTRA_AIR] = C["background"]
    img[shell_index] = means[labels] * (1 + std[labels] * fine[shell_index])

    if anat["lesions"] or anat["mass"]:
        img3 = img.reshape(model.shape)
        icv3 = np.zeros(model.n_voxels, np.float32)
        icv3[brain_index] = 1.0
        icv3 = icv3.reshape(model.shape)
        brain_zyx = np.stack(np.unravel_index(brain_index, model.shape), -1)
        lesions = []
        if anat["lesions"]:
            # White-matter lesions, 60 % of them next to the ventricles (MS-like).
            wm_index = np.flatnonzero(fractions[2] > 0.6)
            peri = wm_index[model.brain_vent_dist[wm_index] < 12]
            for _ in range(int(anat["lesions"])):
                pool = peri if (rng.random() < 0.6 and peri.size) else wm_index
                centre = brain_zyx[pool[rng.integers(0, pool.size)]].astype(float)
                radii = rng.uniform(1.5, 6.0) * rng.uniform(0.6, 1.0, 3)
                level = means[C["lesion"]] * rng.uniform(0.85, 1.15)
                _paint(img3, icv3, centre, radii, _euler(rng, 90.0), [(1.0, level)],
                       float(std[C["lesion"]]),
                       fine, rng)
                lesions.append(round(float(radii.max()), 1))
            drawn["lesion_radii_mm"] = lesions
        if anat["mass"]:
            # Tumour-like mass: oedema halo, enhancing rim, necrotic or solid core.
            cand = np.flatnonzero((model.brain_depth > 15) & (model.brain_vent_dist > 3))
            centre = brain_zyx[cand[rng.integers(0, cand.size)]].astype(float)
            radius = rng.uniform(8.0, 30.0)
            radii = radius * rng.uniform(0.7, 1.0, 3)
            rim_mm = rng.uniform(1.5, 4.0)
            halo = rng.uniform(1.2, 2.0) if rng.random() < 0.6 else 0.0
            necrotic = rng.random() < 0.6
            shells = []
            if halo:
                shells.append((halo, means[C["lesion"]] * rng.uniform(0.9, 1.1)))
            solid = means[C["rim"]] if necrotic else means[C["lesion"]] * rng.uniform(0.7, 1.3)
            shells.append((1.0, solid))
            if necrotic:
                shells.append((max(0.2, 1.0 - rim_mm / radius), means[C["necrosis"]]))
            _paint(img3, icv3, centre, radii, _euler(rng, 90.0), shells, float(std[C["rim"]]),
                   fine, rng)
            drawn["mass"] = {"radius_mm": round(float(radius), 1),
                             "centre_vox": [int(value) for value in centre],
                             "oedema": round(halo, 2),
                             "necrotic": bool(necrotic), "rim_mm": round(float(rim_mm), 1)}
    np.maximum(img, 0, out=img)
    out = torch.from_numpy(img).view(1, 1, *model.shape)
    if anat["skull_stripped"]:
        mask = np.zeros(model.n_voxels, np.float32)
        mask[brain_index] = 1.0
        img[shell_index] = 0.0
        out = torch.cat([out, torch.from_numpy(mask).view(1, 1, *model.shape)], dim=1)
    drawn["layers_mm"] = {key: round(float(value), 2) for key, value in thick.items()}
    return out, drawn


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


OPTION_KEYS = ("ventricle_mm", "sulcal_mm", "lesions", "mass", "skull_stripped", "vessels",
               "recon", "spacing", "zero_fill", "phase_fraction", "window", "snr", "bias_sd")


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


# --------------------------------------------------------------------------- subject stages
# synth_subject_info runs these in a fixed order; each draws from the subject's generator, so
# the order of the calls (and of the draws inside them) fixes the subject for a seed.


def _draw_deformation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                          torch.Tensor | None, dict]:
    """Random spatial transform world = affine (p - c) + c + translation plus a smooth
    displacement field (1, 3, 24, 24, 24) in mm. Returns (affine, translation, field, record)."""
    rotation = _euler(rng, 15.0)
    scale = rng.uniform(0.85, 1.15, 3)
    affine = rotation @ np.diag(scale)
    translation = rng.uniform(-8, 8, 3)
    warp_sd = rng.uniform(0.0, 3.5)
    grid = int(rng.integers(4, 9))
    coarse = rng.standard_normal((3, grid, grid, grid)) * warp_sd
    fine = ndi.zoom(coarse, (1, 24 / grid, 24 / grid, 24 / grid), order=3, mode="nearest",
                    grid_mode=False)
    displacement = torch.from_numpy(fine.astype(np.float32))[None]
    record = dict(rotation=np.round(rotation, 4).tolist(), scale=np.round(scale, 3).tolist(),
                  translation_mm=np.round(translation, 2).tolist(),
                  warp_mm=round(float(warp_sd), 2), warp_grid=grid)
    return affine, translation, displacement, record


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


# --------------------------------------------------------------------------- data sets
def subject_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of subject `index` of `split` ("train", "validation", "test")."""
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(SPLIT_IDS[split], int(index)))
    return np.random.default_rng(sequence)


def _worker_init() -> None:
    # The processes are the parallelism; a forked torch thread pool is also unsafe to use.
    torch.set_num_threads(1)


def save_subject(vol: Volume, path: str | Path) -> Path:
    """Write a synthetic subject as NIfTI (int16, scanner geometry in qform and sform)."""
    import nibabel as nib

    # int16 like most scanners' output; synth_subject already drew a random intensity scale.
    data = np.clip(np.round(vol.array), 0, 32767).astype(np.int16)
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), vol.ijk_to_ras())
    img.set_qform(vol.ijk_to_ras(), code=1)
    img.set_sform(vol.ijk_to_ras(), code=1)
    img.header.set_xyzt_units("mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def _write_one(job: tuple) -> dict:
    """Generate and save one subject (run in a worker process)."""
    out_dir, split, index, seed, kind, isotropic, options = job
    vol, info = synth_subject_info(subject_rng(seed, split, index), kind, isotropic,
                                   options=options)
    folder = "train" if split == "train" else ("val" if split == "validation" else "test")
    rel = f"{folder}/synth_{split}_{index:05d}.nii.gz"
    save_subject(vol, Path(out_dir) / rel)
    info.update(path=rel, split=split, index=index)
    return info


def write_dataset(out_dir: str | Path, n_train: int, n_val: int, n_test: int, seed: int = 0,
                  kind: str = "random", isotropic: bool = False, workers: int = 1,
                  progress: Callable[[int, int], None] | None = None,
                  options: dict | None = None) -> Path:
    """Write synthetic subjects as int16 NIfTI under out_dir/{train,val,test}/.

    Also writes out_dir/split.json ({"train", "validation", "test"}: paths relative to
    out_dir) and out_dir/dataset.json (generation parameters, seed streams, per-subject draws).
    options: draws forced on every subject (see `synth_subject`), e.g. {"skull_stripped":
    True} for a supplement that raises one feature's share in a training mix; recorded in
    dataset.json. Returns out_dir. Output is identical for any number of workers.
    """
    if kind not in ("random", *KINDS):
        raise ValueError(f"kind must be 'random' or one of {KINDS}, not {kind!r}")
    options = _checked_options(options)  # refused before any subject is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_tissue_model()   # build once here, so forked workers inherit it
    jobs = [(str(out), split, index, int(seed), kind, isotropic, options)
            for split, count in (("train", n_train), ("validation", n_val), ("test", n_test))
            for index in range(int(count))]
    results: list[dict] = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # fork shares the tissue model built above; spawn (Windows) rebuilds it per worker.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method),
                                 initializer=_worker_init) as pool:
            for info in pool.map(_write_one, jobs):
                results.append(info)
                if progress:
                    progress(len(results), len(jobs))
    else:
        for job in jobs:
            results.append(_write_one(job))
            if progress:
                progress(len(results), len(jobs))
    split = {name: [record["path"] for record in results if record["split"] == name]
             for name in SPLIT_IDS}
    (out / "split.json").write_text(json.dumps(split, indent=1), encoding="utf-8")
    meta = {
        "generator": "MotionSSIMLib.synth",
        "template": {key: f"nilearn/datasets/data/{file}" for key, file in TEMPLATE_FILES.items()},
        "seed": int(seed),
        "seed_streams": "numpy.random.default_rng(numpy.random.SeedSequence(entropy=seed, "
                        "spawn_key=(split_id, index))), split_id: train=0, validation=1, test=2",
        "kind": kind, "isotropic": bool(isotropic), "options": options,
        "counts": {"train": int(n_train), "validation": int(n_val), "test": int(n_test)},
        "format": "NIfTI-1 int16 (random intensity scale), qform = sform = scanner RAS",
        "subjects": results,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out
