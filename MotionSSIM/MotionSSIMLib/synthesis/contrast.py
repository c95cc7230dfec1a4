"""Stage 2 of a synthetic subject: tissue intensities and the clean image of the head.

`_contrast` draws one subject's mean intensity and texture per tissue class (T1, T2, PD, FLAIR,
DWI/EPI-like, post-contrast, inverted or fully random); `_tissue_image` paints the head model
with them on the model grid: the brain as a soft CSF/GM/WM mixture, scalp layers, and the
anatomical changes drawn in `anatomy` (atrophy, vessels, lesions, a mass).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from .anatomy import (
    _EXTRA_AIR,
    _EXTRA_EYE,
    _EXTRA_ORBIT_FAT,
    CLASSES,
    C,
    TissueModel,
    _euler,
    _smooth_noise,
)

__all__ = ["KINDS"]

# Named contrasts; "generic" draws every tissue intensity at random, "inverted" flips a named
# contrast's tissue intensities, "post" is a post-contrast (gadolinium) T1. "random" mixes all.
KINDS = ("t1", "t2", "pd", "flair", "dwi", "epi", "post", "inverted", "generic")
KIND_PROBS = (0.18, 0.16, 0.08, 0.10, 0.10, 0.06, 0.10, 0.06, 0.16)

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
