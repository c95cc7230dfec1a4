"""The model input, hence the prediction and the label, does not depend on the field of view
(issue "Model v2", point 0): slices are cut to a square window around the head first."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MotionSSIMLib.imaging import geometry
from MotionSSIMLib.training import data

PAD_SIZES = (320, 400, 512, 800)


def head_slice(rng: np.random.Generator, shape=(150, 130), axes=(55, 45), centre=(75, 62)):
    """A textured elliptical 'head' on magnitude noise whose rounding leaves exact zeros (as a
    scanner's integer background does), so zero padding adds pixels at the slice minimum."""
    r, c = np.mgrid[: shape[0], : shape[1]].astype(float)
    inside = ((r - centre[0]) / axes[0]) ** 2 + ((c - centre[1]) / axes[1]) ** 2 < 1
    noise = rng.rayleigh(4.0, shape)
    tex = 300 + 150 * np.sin(r / 5.0) * np.cos(c / 7.0) + 40 * rng.random(shape)
    img = np.round(np.where(inside, tex, 0) + noise)
    img[0, 0] = 0.0  # at least one exact zero
    return img.astype(np.float32)


def pad(img: np.ndarray, size: int, top: int, left: int) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    out[top:top + img.shape[0], left:left + img.shape[1]] = img
    return out


def test_zero_padding_leaves_threshold_box_and_input_unchanged():
    rng = np.random.default_rng(0)
    img = head_slice(rng)
    thr = geometry.slice_threshold(img)
    box = geometry.head_box(img)
    assert box is not None
    # the box holds the ellipse (rows 20..130, cols 17..107) and not the noise around it
    assert abs(box[0] - 20) <= 2 and abs(box[1] - 130) <= 2
    assert abs(box[2] - 17) <= 2 and abs(box[3] - 107) <= 2
    ref = geometry.to_model_input(img)
    for size in PAD_SIZES:
        for top, left in (((size - 150) // 2, (size - 130) // 2), (0, 0), (size - 150, 7)):
            p = pad(img, size, top, left)
            assert geometry.slice_threshold(p) == thr
            assert geometry.head_box(p) == (box[0] + top, box[1] + top, box[2] + left,
                                            box[3] + left)
            assert np.array_equal(geometry.to_model_input(p), ref), (size, top, left)
    # the fit alone (the contract before the crop) shrinks the head with the matrix
    old = geometry.to_model_input(pad(img, 800, 0, 0), crop=False)
    assert (old > 0.2).mean() < 0.25 * (ref > 0.2).mean()


def test_tighter_crop_keeps_the_head_and_its_window():
    rng = np.random.default_rng(1)
    img = head_slice(rng, shape=(200, 180), centre=(100, 90))
    ref = geometry.to_model_input(img)
    t, b, lft, rgt = geometry.model_windows(img)[0]
    # the window lies inside the slice here; cut the slice down to it, two pixels to spare
    assert t >= 2 and lft >= 2 and b <= 198 and rgt <= 178
    cut = img[t - 2:b + 2, lft - 2:rgt + 2]
    assert np.allclose(geometry.to_model_input(cut), ref, atol=1e-6)
    # cut into the margin: the head is unchanged, the band past the cut reads as padding
    box = geometry.head_box(img)
    tight = img[box[0] - 3:box[1] + 3, box[2] - 3:box[3] + 3]
    out = geometry.to_model_input(tight)[0]
    assert geometry.head_box(tight) == (3, box[1] - box[0] + 3, 3, box[3] - box[2] + 3)
    # the window is the same size, so the head lands on the same model-input pixels
    centre = (slice(100, 156), slice(100, 156))
    assert np.allclose(out[centre], ref[0][centre], atol=1e-6)


def test_given_windows_and_square_millimetres():
    rng = np.random.default_rng(2)
    img = head_slice(rng)
    wins = geometry.model_windows(img)
    assert np.array_equal(geometry.to_model_input(img, windows=wins),
                          geometry.to_model_input(img))
    # another slice cut in the first one's window (the label: the clean slice's window for
    # its corrupted copy) is cut exactly there, whatever its own foreground
    other = head_slice(rng, axes=(30, 20))
    own = geometry.to_model_input(other)
    theirs = geometry.to_model_input(other, windows=wins)
    assert not np.allclose(own, theirs)
    shifted = geometry.to_model_input(pad(other, 400, 10, 20),
                                      windows=[(w[0] + 10, w[1] + 10, w[2] + 20, w[3] + 20)
                                               for w in wins])
    assert np.array_equal(shifted, theirs)
    with pytest.raises(ValueError, match="windows"):
        geometry.to_model_input(np.stack([img, img]), windows=wins)
    # 1 x 2 mm pixels: the window is square in mm (twice as many rows as columns)
    t, b, lft, rgt = geometry.crop_window((10, 50, 5, 25), (60, 30), (1.0, 2.0))
    assert (b - t) == 2 * (rgt - lft) and (b - t) == round(40 * (1 + 2 * geometry.CROP_MARGIN))


def test_slices_without_a_head():
    # a constant slice: no box, zeros, never NaN; a slice of pure noise: its whole extent
    flat = np.full((40, 60), 7.0)
    assert geometry.head_box(flat) is None
    out = geometry.to_model_input(flat)
    assert out.shape == (1, 256, 256) and not np.isnan(out).any() and out.max() == 0
    assert geometry.crop_window(None, (40, 60)) == (-10, 50, 0, 60)
    noise = np.random.default_rng(3).rayleigh(4.0, (64, 64))
    w = geometry.model_windows(noise)[0]
    assert w[1] - w[0] >= 64 or geometry.head_box(noise) is not None


def _write(path, array, spacing):
    img = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, str(path))
    return path


def test_training_samples_ignore_the_field_of_view(tmp_path):
    # the same head in a 150 x 130 and a 400 x 400 matrix: the same clean training samples
    # (heads large enough to count as non-empty in both: >= 5 % of the 400 x 400 pixels)
    rng = np.random.default_rng(4)
    vol = np.stack([head_slice(rng, axes=(58 + k % 3, 50 - k % 4)) for k in range(12)])
    big = np.zeros((12, 400, 400), np.float32)
    big[:, 100:250, 37:167] = vol
    a = data.SliceDataset([_write(tmp_path / "a.nii.gz", vol, (0.9, 0.9, 4.0))], seed=5,
                          input_size=128)
    b = data.SliceDataset([_write(tmp_path / "b.nii.gz", big, (0.9, 0.9, 4.0))], seed=5,
                          input_size=128)
    for i in range(6):
        x, y = a[(0, 0, i)][0], b[(0, 0, i)][0]
        assert x.shape == (1, 128, 128) and torch.equal(x, y), i


# ------------------------------------------------------------------- the bundled model

def _sample_slices():
    from MotionSSIMLib.assessment.checkpoint import default_model_path
    from MotionSSIMLib.imaging.io import read_volume

    path = default_model_path().parents[1] / "Samples" / "sample_t2_motion.nii.gz"
    stack = geometry.extract_slices(read_volume(path), "auto")
    keep = np.flatnonzero(stack.foreground >= 0.05)[::3]  # 14 slices, clean and corrupted
    return stack.images[keep], stack.pixel_spacing


# Measured with the bundled model (phase 4, precision auto): padding moves a prediction by at
# most 0.008, cutting the slice down to its window by 0.003 (the old fit: 0.59 at 800 x 800).
FOV_TOLERANCE = 0.02


def test_bundled_model_reads_padded_and_cropped_copies_alike():
    from MotionSSIMLib.assessment.inference import predict_slices

    imgs, spacing = _sample_slices()
    n, h, w = imgs.shape

    def predict(x):
        return predict_slices(list(x), device="cpu", pixel_spacing=spacing)

    ref = predict(imgs)
    assert np.ptp(ref) > 0.2  # the subset holds clean and corrupted slices
    for size in PAD_SIZES:
        top, left = (size - h) // 2, (size - w) // 2
        p = np.stack([pad(s, size, top, left) for s in imgs])
        assert np.abs(predict(p) - ref).max() < FOV_TOLERANCE, size
    cut = []
    for s, (t, b, lft, rgt) in zip(imgs, geometry.model_windows(imgs, spacing), strict=True):
        cut.append(s[max(t, 0):b, max(lft, 0):rgt])
    assert np.abs(predict(cut) - ref).max() < FOV_TOLERANCE
