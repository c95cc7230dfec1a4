"""Volumes with their geometry, anatomical slicing, and the model-input fit (DESIGN.md).

Conventions: `Volume.array` is indexed [k, j, i] like `SimpleITK.GetArrayFromImage` and
`slicer.util.arrayFromVolume`; spacing is along (i, j, k); `directions` holds the unit RAS
direction of the i, j and k voxel axes as columns. Slices are returned the way Slicer's default
slice views show them (radiological: patient right on screen left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..base.errors import InputError, SettingsError

if TYPE_CHECKING:
    import torch

# torch is imported by the model-input fit only: Slicer's main process builds Volumes (the voxel
# copy handed to the assessment child) without loading torch.

ORIENTATIONS = ("axial", "coronal", "sagittal")
ANISOTROPY_RATIO = 1.5
# Fewer voxels than this along an axis: the volume is a stack of slices across that axis (a
# 2D image, a few thick slices); cutting it another way would give strips a few pixels wide.
THIN_AXIS = 8
# A slice whose standard deviation is below this share of the volume's robust intensity range
# (p0.5 - p99.5) has no structure to assess (constant, or a faint noise floor): it is flagged
# like an empty slice. Real head slices measure 0.04 - 0.3 (the sample, the MNI template).
BLANK_CONTRAST = 0.01
# Noise (`slice_structure`): a slice is cut into NOISE_BLOCKS x NOISE_BLOCKS blocks of b x b
# pixels, and the variance of the block means is compared with the pixels' variance. A head
# keeps much of its variance at that scale (head against background, tissue against CSF);
# noise without structure keeps 1 / b^2 of it (each block mean averages b^2 independent
# pixels), so a slice keeping less than NOISE_FACTOR / b^2 is noise, not a head. Measured in
# units of 1 / b^2: pure Rayleigh noise reads 1.0 on average, at most 2.0 over 1000 slices
# (48-128 pixels); the bundled sample's head slices with Rician noise added (SNR against the
# 99th percentile) at least 8.7 at SNR 4 (258 x 218) and 6.7 at SNR 8 (65 x 55, EPI-like);
# no head slice of the MNI template (1 mm and 3 mm, every plane, SNR 3-8) is flagged.
# Below that (a small matrix at SNR 4: 1.2-1.7) heads and noise cannot be told apart this
# way, and they are not flagged. Noise made smooth (interpolated) keeps more than 1 / b^2 and
# may pass. Slices under NOISE_MIN_SIDE pixels (b < 6) are never flagged.
NOISE_BLOCKS = 6
NOISE_FACTOR = 3.0
NOISE_MIN_SIDE = 36
MODEL_SIZE = 256

# Anatomical axis (0 = R, 1 = A, 2 = S) normal to each slice plane.
_NORMAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
# Screen directions in RAS of Slicer's default views: the column (left -> right on screen) and
# the row (top -> bottom) direction. From vtkMRMLSliceNode's Axial/Coronal/Sagittal presets.
_SCREEN = {
    "axial": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])),
    "coronal": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),
    "sagittal": (np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -1.0])),
}
_AXIS_NAMES = ("i", "j", "k")


@dataclass(frozen=True)
class Volume:
    """A 3D scalar volume and where its voxels are in patient (RAS) space."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    directions: np.ndarray = field(default_factory=lambda: np.eye(3))
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping voxel (i, j, k, 1) to RAS mm."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.directions, float) * np.asarray(self.spacing, float)[None, :]
        m[:3, 3] = self.origin
        return m

    @classmethod
    def from_lps(cls, array: np.ndarray, spacing, direction_lps, origin_lps) -> Volume:
        """From ITK's LPS geometry (SimpleITK's GetDirection() row-major 9 values or 3x3)."""
        d = np.asarray(direction_lps, float).reshape(3, 3)
        flip = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS
        o = np.asarray(origin_lps, float)
        return volume(array, spacing, flip @ d, tuple(flip @ o))


def volume(array: np.ndarray, spacing=(1.0, 1.0, 1.0), directions=None,
           origin=(0.0, 0.0, 0.0), name: str = "volume") -> Volume:
    """Validated `Volume`; `directions` defaults to identity (i = R, j = A, k = S)."""
    a = np.asarray(array)
    if a.ndim != 3:
        raise InputError(f"{name}: expected a 3D volume, got array shape {a.shape}")
    if a.size == 0:
        raise InputError(f"{name}: the volume is empty (array shape {a.shape})")
    if (a.dtype != bool and not np.issubdtype(a.dtype, np.number)) or np.iscomplexobj(a):
        raise InputError(f"{name}: unsupported voxel type {a.dtype}")
    try:
        sp = tuple(float(s) for s in np.asarray(spacing, float).reshape(-1))
        d = np.eye(3) if directions is None else np.asarray(directions, float).reshape(3, 3)
        o = tuple(float(v) for v in np.asarray(origin, float).reshape(3))
    except (TypeError, ValueError) as exc:  # strings, wrong lengths: the user's one-line error
        raise InputError(f"{name}: invalid geometry ({str(exc)[:100]})") from None
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"{name}: invalid voxel spacing {str(spacing)[:100]}")
    norms = np.linalg.norm(d, axis=0)
    if not np.all(np.isfinite(d)) or np.any(norms < 1e-6) or abs(np.linalg.det(d / norms)) < 1e-3:
        raise InputError(f"{name}: degenerate direction matrix")
    if not all(np.isfinite(o)):
        raise InputError(f"{name}: invalid origin {o}")
    return Volume(a, sp, d / norms, o)


def _nearest_voxel_axis(directions: np.ndarray, ras_axis: int) -> int:
    return int(np.argmax(np.abs(directions[ras_axis, :])))


def _plane_of_voxel_axis(directions: np.ndarray, axis: int) -> str:
    """The anatomical plane normal to voxel axis `axis` (its nearest RAS axis)."""
    ras_axis = int(np.argmax(np.abs(np.asarray(directions)[:, axis])))
    return {0: "sagittal", 1: "coronal", 2: "axial"}[ras_axis]


def _thin_axis(vol: Volume) -> int | None:
    """The voxel axis (0 = i, 1 = j, 2 = k) with fewest voxels when it has < THIN_AXIS."""
    shape_ijk = vol.array.shape[::-1]
    thin = int(np.argmin(shape_ijk))
    return thin if shape_ijk[thin] < THIN_AXIS else None


def resolve_orientation(vol: Volume, orientation: str = "auto") -> str:
    """The slice plane: as asked, or for `auto` the acquisition plane: the plane normal to a
    thin axis (fewer than THIN_AXIS voxels: a stack of slices, or one 2D image), else the plane
    normal to the coarsest voxel axis when largest/smallest spacing > 1.5, else axial."""
    if not isinstance(orientation, str) or orientation not in (*ORIENTATIONS, "auto"):
        raise SettingsError(f"orientation must be auto, axial, coronal or sagittal, not "
                            f"{str(orientation)[:40]!r}")
    if orientation in ORIENTATIONS:
        return orientation
    thin = _thin_axis(vol)
    if thin is not None:
        return _plane_of_voxel_axis(vol.directions, thin)
    sp = np.asarray(vol.spacing, float)
    if sp.max() / sp.min() <= ANISOTROPY_RATIO:
        return "axial"
    return _plane_of_voxel_axis(vol.directions, int(np.argmax(sp)))


def slice_count(vol: Volume, orientation: str = "auto") -> int:
    """How many slices extract_slices cuts (the voxels along the plane's normal)."""
    plane = resolve_orientation(vol, orientation)
    through = _nearest_voxel_axis(np.asarray(vol.directions, float), _NORMAL_AXIS[plane])
    return int(vol.array.shape[::-1][through])


@dataclass
class SliceStack:
    """Slices of a volume in display orientation, with where each one is."""

    images: np.ndarray
    pixel_spacing: tuple[float, float]
    orientation: str
    indices: np.ndarray
    axis: str
    positions_mm: np.ndarray
    foreground: np.ndarray
    contrast: np.ndarray | None = None  # slice_contrast; below BLANK_CONTRAST: blank
    structure: np.ndarray | None = None  # slice_structure; below noise_structure_bound: noise

    @property
    def blank(self) -> np.ndarray:
        """Slices with no structure to assess (constant or nearly so): flagged, not scored."""
        if self.contrast is None:
            return np.zeros(len(self.images), dtype=bool)
        return np.asarray(self.contrast) < BLANK_CONTRAST

    @property
    def noise(self) -> np.ndarray:
        """Slices with variance but no structure at the head's scale (noise only, no head):
        flagged, not scored (they would read SSIM 1.0). Blank slices are not counted here."""
        if self.structure is None or self.images.ndim != 3:
            return np.zeros(len(self.images), dtype=bool)
        bound = noise_structure_bound(self.images.shape[1:])
        return (np.asarray(self.structure) < bound) & ~self.blank


def _slice_axes(directions: np.ndarray, orientation: str) -> tuple[int, int, int, bool, bool]:
    """Voxel axes (through, row, col) for a plane, and whether row/col must be flipped."""
    through = _nearest_voxel_axis(directions, _NORMAL_AXIS[orientation])
    col_dir, row_dir = _SCREEN[orientation]
    rest = [c for c in range(3) if c != through]
    dots = [abs(directions[:, c] @ col_dir) for c in rest]
    col = rest[int(np.argmax(dots))]
    row = rest[1 - int(np.argmax(dots))]
    return through, row, col, directions[:, row] @ row_dir < 0, directions[:, col] @ col_dir < 0


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (the split maximising the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


def background_threshold(array: np.ndarray) -> float:
    """Intensity above which a voxel counts as foreground (head), for the whole volume.

    MR background is noise (Rayleigh in magnitude images, or exact zeros where the scanner or a
    pipeline masked it), so the threshold is taken from the noise itself: Otsu's split of the
    robust range [p0.5, p99.5] finds the dark class, whose median m sits ~1.2 sigma above the
    floor for Rayleigh noise; floor + 4 (m - floor) is ~4.5 sigma, which pure noise exceeds in
    fewer than 1 in 10^4 pixels. Tissue darkened by a bias field still lies above it, because
    the threshold never exceeds Otsu's split and is usually far below it. A floor of 5 % of the
    robust range keeps zero-filled (masked) backgrounds, whose noise estimate is 0, from counting
    interpolation ripples as head.
    """
    a = np.asarray(array)
    flat = a.reshape(-1)
    step = max(1, flat.size // 1_000_000)  # a strided sample is plenty for percentiles
    v = flat[::step].astype(np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:  # (nearly) constant volume: anything above its value is foreground
        return float(hi)
    v = np.clip(v, lo, hi)
    otsu = _otsu(v)
    dark = v[v <= otsu]
    noise = lo + 4.0 * (float(np.median(dark)) - lo) if dark.size else lo
    return float(min(otsu, max(noise, lo + 0.05 * (hi - lo))))


def foreground_fraction(images: np.ndarray, threshold: float) -> np.ndarray:
    """Share of each slice's pixels above `threshold`."""
    return (np.asarray(images) > threshold).mean(axis=(-2, -1))


def slice_contrast(images: np.ndarray, array: np.ndarray) -> np.ndarray:
    """Standard deviation of each slice of `images` over the robust intensity range (p0.5 to
    p99.5, else min to max) of `array`, the whole volume: 0 for a constant slice."""
    flat = np.asarray(array).reshape(-1)
    v = flat[::max(1, flat.size // 1_000_000)].astype(np.float64)
    v = v[np.isfinite(v)]
    spread = 0.0
    if v.size:
        lo, hi = np.percentile(v, [0.5, 99.5])
        spread = float(hi - lo) or float(v.max() - v.min())
    # one slice at a time: a float64 copy of the whole stack would double the memory
    sd = np.array([float(np.std(s, dtype=np.float64)) for s in images], dtype=np.float64)
    if spread <= 0 or not np.isfinite(spread):
        return np.zeros(len(sd))
    return sd / spread


def _block_size(shape: tuple[int, int]) -> int:
    return min(int(shape[0]), int(shape[1])) // NOISE_BLOCKS


def noise_structure_bound(shape: tuple[int, int]) -> float:
    """The `slice_structure` below which a slice of `shape` is noise (see NOISE_FACTOR);
    0 (never noise) for slices under NOISE_MIN_SIDE pixels."""
    if min(shape) < NOISE_MIN_SIDE:
        return 0.0
    return NOISE_FACTOR / _block_size(shape) ** 2


def slice_structure(images: np.ndarray) -> np.ndarray:
    """For each slice of (N, H, W) `images`: the variance of its b x b block means (b = the
    shorter side // NOISE_BLOCKS; the central whole blocks) over the variance of those pixels,
    in [0, 1]: about 1 / b^2 for noise without structure, far more for a head. 1 for a
    constant slice (blank, not noise)."""
    out = np.ones(len(images), dtype=np.float64)
    if len(images) == 0 or _block_size(images.shape[1:]) < 1:
        return out
    b = _block_size(images.shape[1:])
    h, w = images.shape[1:]
    rows, cols = (h // b) * b, (w // b) * b
    top, left = (h - rows) // 2, (w - cols) // 2
    for n, image in enumerate(images):  # one slice at a time: no float64 copy of the stack
        cut = np.asarray(image[top:top + rows, left:left + cols], dtype=np.float64)
        var = float(cut.var())
        if var > 0 and np.isfinite(var):
            means = cut.reshape(rows // b, b, cols // b, b).mean(axis=(1, 3))
            out[n] = float(means.var()) / var
    return out


def extract_slices(vol: Volume, orientation: str = "auto") -> SliceStack:
    """Every slice of `vol` in the anatomical plane `orientation`, in display orientation.

    The through-plane voxel axis is the one most aligned with the plane's normal, so an oblique
    volume is cut along its nearest voxel plane (no resampling).
    """
    plane = resolve_orientation(vol, orientation)
    d = np.asarray(vol.directions, float)
    through, row, col, flip_row, flip_col = _slice_axes(d, plane)
    shape_ijk = vol.array.shape[::-1]
    if min(shape_ijk[row], shape_ijk[col]) < THIN_AXIS:  # never cut a stack into strips
        thin = row if shape_ijk[row] < shape_ijk[col] else col
        size = "x".join(str(v) for v in shape_ijk)
        raise InputError(
            f"volume {size} (i x j x k) has only {shape_ijk[thin]} voxel(s) along "
            f"{_AXIS_NAMES[thin]}: {plane} slices would be strips "
            f"{shape_ijk[row]}x{shape_ijk[col]} pixels; assess it as "
            f"{_plane_of_voxel_axis(d, thin)} slices (orientation auto)")
    # array axis of voxel axis c is 2 - c ([k, j, i] order)
    images = np.transpose(vol.array, (2 - through, 2 - row, 2 - col))
    if flip_row:
        images = images[:, ::-1, :]
    if flip_col:
        images = images[:, :, ::-1]
    images = np.ascontiguousarray(images, dtype=np.float32)

    n = images.shape[0]
    shape_ijk = np.array(vol.array.shape[::-1], float)
    centre = (shape_ijk - 1) / 2
    ijk = np.repeat(centre[None, :], n, axis=0)
    ijk[:, through] = np.arange(n)
    ras = (vol.ijk_to_ras() @ np.c_[ijk, np.ones(n)].T).T[:, :3]
    positions = ras[:, _NORMAL_AXIS[plane]]
    fg = foreground_fraction(images, background_threshold(vol.array))
    return SliceStack(
        images=images,
        pixel_spacing=(float(vol.spacing[row]), float(vol.spacing[col])),
        orientation=plane,
        indices=np.arange(n),
        axis=_AXIS_NAMES[through],
        positions_mm=positions,
        foreground=fg.astype(np.float32),
        contrast=slice_contrast(images, vol.array),
        structure=slice_structure(images),
    )


# Model-input crop (issue "Model v2", point 0): the head's bounding box, squared, with a margin.
# A margin relative to the box keeps the head's share of the window fixed (1 / 1.3 = 77 % of its
# side) whatever the head size or field of view, and keeps the ghosts next to the head, the
# motion evidence outside it, in view. 15 %: on the bundled sample the bundled model's mean
# error was 0.077 / 0.068 / 0.061 / 0.058 / 0.060 at 4 / 8 / 12 / 16 / 20 %.
CROP_MARGIN = 0.15
# Model v3 (issue "Model v3", contract change): every window is resampled to the model input,
# larger ones scaled down (anti-aliased), smaller ones scaled up (bicubic), so the label and the
# input no longer depend on how many pixels the head has. Until v2 a smaller window was
# zero-padded and the padding counted as agreement in the label: the same motion read 0.99 on a
# 64 px head and 0.86 on a 256 px one (MNI152 slice, k-space motion stored at both matrices).
# Resampled, the labels of one pair stored at 96-512 px across the head agree within 0.03, at 64
# px within 0.06 (what a 64 px copy has lost cannot be compared): Testing/test_label.py.
# Bicubic rather than bilinear up-sampling: a 64 px pair reads 0.01-0.03 closer to its 256 px
# self. Heads of 200 px and more (windows above 256) are scaled down as before: same label.
UPSCALE_WINDOW = True
_MIN_HEAD_PIXELS = 16   # fewer foreground pixels than this: no head (the whole slice is used)
# The head box's threshold is never below this share of the way from the slice minimum to its
# tissue's 99th percentile. Where the background is exactly zero (templates, skull-stripped or
# masked slices) the noise threshold is taken from the tissue alone on the clean slice, but
# from the faint ghosts on a corrupted one: the box then grew to the whole frame (by 25-30 % on
# MNI slices), the head shrank in the input, and the bundled model read severe motion 0.15-0.2
# milder there (real-scan set through the product's path: MNI template +0.167, skull-stripped
# T1 +0.205; with 0.3: +0.047, +0.023; scripts/check_real_scans.py, model v3 phase 5).
HEAD_TISSUE_SHARE = 0.3
_LINE_SHARE = 0.05      # a row/column is inside the box when it holds >= 5 % of the fullest one's
_MIN_LINE_PIXELS = 2    # ... and at least 2 pixels: isolated noise spikes never stretch the box


def slice_threshold(image: np.ndarray) -> float:
    """Foreground threshold of one slice on its own (`background_threshold` of its pixels above
    the slice minimum), never below `HEAD_TISSUE_SHARE` of the way from the minimum to the 99th
    percentile of the pixels above that threshold (the tissue). Leaving out the pixels at the
    minimum makes it independent of constant padding: a slice zero-padded into any larger
    matrix gets exactly the same threshold."""
    a = np.asarray(image, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0
    lo = float(a.min())
    v = a[a > lo]
    if v.size < _MIN_HEAD_PIXELS:
        return lo
    # a strided sample is plenty for the percentiles and the histogram; taken from the pixels
    # above the minimum, it is the same sample whatever the padding
    sample = v[:: max(1, v.size // 65536)]
    noise = background_threshold(sample)
    # the tissue level from the pixels above the noise threshold only, so that how much
    # background the slice holds (its field of view, a crop) does not move it
    tissue = sample[sample > noise]
    if tissue.size < _MIN_HEAD_PIXELS:
        return noise
    return max(noise, lo + HEAD_TISSUE_SHARE * (float(np.percentile(tissue, 99)) - lo))


def head_box(image: np.ndarray, threshold: float | None = None) -> tuple[int, int, int, int] | None:
    """The head's bounding box (row0, row1, col0, col1), half-open, of one 2D slice: the rows and
    columns holding enough pixels above `threshold` (default: `slice_threshold`). None when the
    slice has no head (fewer than 16 foreground pixels)."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"head_box: expected a 2D slice, got shape {a.shape}")
    thr = slice_threshold(a) if threshold is None else float(threshold)
    mask = np.asarray(a > thr)
    if int(mask.sum()) < _MIN_HEAD_PIXELS:
        return None
    out = []
    for counts in (mask.sum(axis=1), mask.sum(axis=0)):
        keep = np.flatnonzero(counts >= max(_MIN_LINE_PIXELS, _LINE_SHARE * counts.max()))
        if keep.size == 0:
            return None
        out += [int(keep[0]), int(keep[-1]) + 1]
    return out[0], out[1], out[2], out[3]


def crop_window(box: tuple[int, int, int, int] | None, shape: tuple[int, int],
                pixel_spacing=(1.0, 1.0), margin: float = CROP_MARGIN,
                ) -> tuple[int, int, int, int]:
    """The model-input window (row0, row1, col0, col1) of a slice of `shape` whose head box is
    `box`: square in mm, centred on the box, its side the box's longer side (mm) times
    1 + 2 * margin. It may reach past the slice (filled with the slice minimum when cropped).
    Without a box, the whole slice, squared about its centre."""
    h, w = shape
    sr, sc = (float(s) for s in pixel_spacing)
    r0, r1, c0, c1 = (0, h, 0, w) if box is None else box
    side_mm = max((r1 - r0) * sr, (c1 - c0) * sc)
    if box is not None:
        side_mm *= 1.0 + 2.0 * margin
    nr, nc = max(1, round(side_mm / sr)), max(1, round(side_mm / sc))
    # centre rounded down to the half pixel grid, so an integer shift of the slice shifts the
    # window by exactly as much (the same pixels come out, whatever the padding around them)
    top = (r0 + r1 - nr) // 2
    left = (c0 + c1 - nc) // 2
    return top, top + nr, left, left + nc


def _crop(x: torch.Tensor, window: tuple[int, int, int, int], fill: float) -> torch.Tensor:
    """x (H, W) cut to `window`, the part outside x filled with `fill`."""
    h, w = x.shape
    t, b, lft, rgt = window
    if t >= 0 and lft >= 0 and b <= h and rgt <= w:
        return x[t:b, lft:rgt]
    out = x.new_full((b - t, rgt - lft), fill)
    st, sb, sl, sr_ = max(t, 0), min(b, h), max(lft, 0), min(rgt, w)
    if sb > st and sr_ > sl:
        out[st - t:sb - t, sl - lft:sr_ - lft] = x[st:sb, sl:sr_]
    return out


def to_model_input(images: np.ndarray, pixel_spacing=(1.0, 1.0), size: int = MODEL_SIZE,
                   threshold: float | None = None, crop: bool = True,
                   windows: list[tuple[int, int, int, int]] | None = None) -> np.ndarray:
    """Fit slices to the model input: (N, H, W) or (H, W), any range -> (N, size, size) float32.

    With `crop` (the model-input contract, docs/how-it-works.md): each slice is cut to
    `crop_window` of its head box (`head_box`: pixels above `threshold`, default each slice's own
    `slice_threshold`), i.e. a square around the head with a 15 % margin, the part past the
    slice filled with the slice minimum. So the field of view around the head (zero padding,
    a larger matrix, a tighter crop) does not change the input. `windows` (one per slice, from
    `model_windows`) cuts given windows instead: the label uses the clean slice's window for
    the corrupted one too. Then, per slice: square pixels (the coarser axis resampled to the
    finer spacing), min-max to [0, 1], zero-padded centred if both sides fit in size, else
    scaled down (anti-aliased) so the longer side is size, then padded. `crop=False`: the fit alone
    on the whole slice (the contract before the crop; a slice already size x size with min 0
    and max 1 then comes back unchanged).
    """
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"to_model_input: expected (N, H, W) or (H, W), got shape {a.shape}")
    sr, sc = (float(s) for s in pixel_spacing)
    if sr <= 0 or sc <= 0 or not np.isfinite(sr + sc):
        raise ValueError(f"to_model_input: invalid pixel spacing {pixel_spacing}")
    if windows is not None and len(windows) != len(a):
        raise ValueError(f"to_model_input: {len(windows)} windows for {len(a)} slices")
    import torch

    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if not crop and windows is None:
        return _fit(x, (sr, sc), size).numpy()
    if windows is None:
        windows = model_windows(a, (sr, sc), threshold)
    out = x.new_empty((len(x), size, size))
    for i, win in enumerate(windows):
        xi = x[i]
        cut = _crop(xi, tuple(int(v) for v in win), float(xi.min()) if xi.numel() else 0.0)
        out[i] = _fit(cut[None], (sr, sc), size)[0]
    return out.numpy()


def model_windows(images: np.ndarray, pixel_spacing=(1.0, 1.0), threshold: float | None = None,
                  ) -> list[tuple[int, int, int, int]]:
    """The model-input window (`crop_window` of `head_box`) of each slice of (N, H, W) or
    (H, W) `images`."""
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    return [crop_window(head_box(s, threshold), s.shape, pixel_spacing) for s in a]


def _fit(x: torch.Tensor, pixel_spacing, size: int) -> torch.Tensor:
    """Slices (n, h, w) of one shape: square pixels (the coarser axis resampled to the finer
    spacing), min-max to [0, 1], then scaled so the longer side is size (UPSCALE_WINDOW; a
    window that fits was only padded before model v3), then padded centred."""
    import torch.nn.functional as F

    from .intensity import minmax

    n, h, w = x.shape
    sr, sc = pixel_spacing
    if abs(sr - sc) > 1e-3 * min(sr, sc):
        fine = min(sr, sc)
        h2, w2 = max(1, round(h * sr / fine)), max(1, round(w * sc / fine))
        x = F.interpolate(x[:, None], size=(h2, w2), mode="bilinear", align_corners=False)[:, 0]
        h, w = h2, w2
    x = minmax(x)
    if max(h, w) > size or (UPSCALE_WINDOW and max(h, w) < size):
        scale = size / max(h, w)
        h2, w2 = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
        down = max(h, w) > size
        x = F.interpolate(x[:, None], size=(h2, w2), mode="bilinear" if down else "bicubic",
                          antialias=down, align_corners=False)[:, 0].clamp_(0.0, 1.0)
        h, w = h2, w2
    if (h, w) != (size, size):
        top, left = (size - h) // 2, (size - w) // 2
        out = x.new_zeros((n, size, size))
        out[:, top:top + h, left:left + w] = x
        x = out
    return x
