"""Clinical 3-class scheme and N equal-width classes: boundaries and settings."""

import numpy as np
import pytest

from MotionSSIMLib.assessment.classes import (
    CLASS_COLOURS,
    CLASS_LABELS,
    CLINICAL_NAMES,
    SLICE_COLUMNS,
    ClinicalThresholds,
    clinical_class,
    uniform_class,
)


def test_clinical_class_boundaries_belong_to_the_better_class():
    s = np.array([0.0, 0.5999, 0.60, 0.8499, 0.85, 1.0])
    assert clinical_class(s).tolist() == [3, 3, 2, 2, 1, 1]
    assert [CLINICAL_NAMES[c] for c in clinical_class([0.9, 0.7, 0.1])] == [
        "good", "sufficient", "insufficient"]


def test_clinical_thresholds_are_settings():
    s = np.array([0.0, 0.5999, 0.60, 0.8499, 0.85, 1.0])
    assert clinical_class(s, ClinicalThresholds(0.9, 0.5)).tolist() == [3, 2, 2, 2, 2, 1]
    assert clinical_class(s, ClinicalThresholds(good=0.6, sufficient=0.5)).tolist() == [
        3, 2, 1, 1, 1, 1]
    for good, sufficient in ((0.5, 0.6), (0.7, 0.7), (1.2, 0.5), (0.8, -0.1)):
        with pytest.raises(ValueError):
            ClinicalThresholds(good, sufficient)


def test_clinical_class_keeps_the_shape_of_its_input():
    grid = np.array([[0.95, 0.7], [0.3, 0.85]])
    assert clinical_class(grid).tolist() == [[1, 2], [3, 1]]
    assert int(clinical_class(0.61)) == 2


@pytest.mark.parametrize("n", [3, 5, 10])
def test_uniform_classes_equal_width_on_0_1(n):
    # just below and at every inner edge k/n; class 1 is the lowest SSIM
    edges = np.arange(1, n) / n
    below = uniform_class(edges - 1e-9, n)
    at = uniform_class(edges, n)
    assert below.tolist() == list(range(1, n))
    assert at.tolist() == list(range(2, n + 1))
    assert uniform_class([0.0, 1.0], n).tolist() == [1, n]  # 1.0 falls in the top class
    assert uniform_class([-0.2, 1.3], n).tolist() == [1, n]  # out of range: clipped
    mids = (np.arange(3000) + 0.5) / 3000  # evenly spread: equal widths give equal counts
    assert np.bincount(uniform_class(mids, n))[1:].tolist() == [3000 // n] * n


def test_uniform_class_rejects_zero_classes():
    with pytest.raises(ValueError):
        uniform_class([0.5], 0)


def test_one_vocabulary_names_labels_colours_and_columns():
    from MotionSSIMLib.assessment.report import CSV_COLUMNS

    keys = [*CLINICAL_NAMES.values(), "empty"]
    assert list(CLASS_LABELS) == keys and list(CLASS_COLOURS) == keys
    assert [CLASS_LABELS[CLINICAL_NAMES[c]] for c in (1, 2, 3)] == [1, 2, 3]
    assert sorted(CLASS_LABELS.values()) == [1, 2, 3, 4]  # 0 stays "no label"
    assert all(len(rgb) == 3 and all(0 <= v <= 1 for v in rgb) for rgb in CLASS_COLOURS.values())
    assert len(set(CLASS_COLOURS.values())) == len(keys)
    assert CSV_COLUMNS == ("index", *SLICE_COLUMNS)
