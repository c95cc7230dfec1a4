"""Stage 1 of a synthetic subject: the head model and its random anatomy.

The head model (`load_tissue_model`, built once per process, ~4 s) comes from the nilearn MNI152
2009c template (1 mm) and its grey/white-matter probability maps: soft brain tissue fractions
(CSF, GM, WM) inside the intracranial volume, with sub-classes (cortical vs deep GM, darker vs
brighter WM) for texture; head tissues outside the brain (the nilearn T1 template is
skull-stripped, so skull, marrow, scalp fat and skin are layered at random thicknesses by
distance from the intracranial volume, and a neck, face, eyes, orbital fat and air sinuses are
added as simple shapes). Per subject: which anatomical changes it gets (`_draw_anatomy`:
atrophy, lesions, a mass, skull stripping, vessels) and its random spatial transform
(`_draw_deformation`: rotation up to 15 deg, scaling 0.85-1.15 per axis, a smooth warp).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..base.errors import MotionSSIMError

__all__ = ["CLASSES", "TissueModel", "load_tissue_model", "template_dir"]

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

# Extra labels of the head model (outside the intracranial volume), stored per voxel.
_EXTRA_NONE, _EXTRA_EYE, _EXTRA_ORBIT_FAT, _EXTRA_AIR = 0, 1, 2, 3
_PAD_BELOW = 40      # mm of neck added below the template's last slice
_SHELL_MAX = 32.0    # mm: farthest a scalp layer can reach from the intracranial volume
_DIST_MAX = 40.0     # mm: brain distance maps (ventricles, CSF) are clipped here
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
