"""The Slicer bridge (MotionSSIMLib.bridge) on a real MRML scene from the slicer-core wheel.

Volumes are written as NIfTI to tmp_path and loaded the way Slicer loads them
(vtkSlicerVolumesLogic.AddArchetypeVolume), then assessed with a small randomly initialised
ResNet-18 checkpoint (no trained model is needed to test the plumbing).
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
torch = pytest.importorskip("torch")

from MotionSSIMLib.assessment.classes import (  # noqa: E402
    CLASS_COLOURS,
    CLASS_LABELS,
    CLINICAL_NAMES,
    ClinicalThresholds,
    clinical_class,
)
from MotionSSIMLib.base.errors import InputError  # noqa: E402
from MotionSSIMLib.bridge import node_jobs, nodes, volume_results  # noqa: E402

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def loaded_model(model_path):
    from MotionSSIMLib.assessment.checkpoint import load_checkpoint

    return load_checkpoint(model_path, device="cpu")


def phantom(shape_kji, empty_first=1, empty_last=1, axis=0, seed=0) -> np.ndarray:
    """A noisy ellipsoid 'head' in a [k, j, i] array, with empty (zero) slices at both ends of
    `axis` so that the empty-slice path is exercised."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_kji], indexing="ij")
    radius = sum(g**2 / 0.8**2 for g in grids)
    array = np.where(radius < 1.0, 100.0 + 50.0 * grids[1], 0.0)
    array += np.where(radius < 0.3, 80.0, 0.0)
    array = array + rng.normal(0.0, 3.0, shape_kji) * (radius < 1.0)
    index = [slice(None)] * 3
    for s in list(range(empty_first)) + list(range(shape_kji[axis] - empty_last, shape_kji[axis])):
        index[axis] = s
        array[tuple(index)] = 0.0
    return array.astype(np.float32)


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def load_nifti(volumes_logic, tmp_path, array_kji, spacing, directions, origin, name):
    """Write array ([k, j, i]) with RAS geometry to NIfTI and load it like Slicer does."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions) * np.asarray(spacing)[None, :]
    affine[:3, 3] = origin
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(array_kji, (2, 1, 0)), affine), str(path))
    node = volumes_logic.AddArchetypeVolume(str(path), name)
    assert node is not None, f"could not load {path}"
    return node


# Three geometries: (name, [k,j,i] shape, spacing i,j,k, directions, expected orientation, axis)
CASES = {
    # thick axial slices: acquisition plane axial, cut through k
    "axial": ((7, 40, 36), (1.0, 1.0, 3.0), np.eye(3), "axial", "k"),
    # isotropic but rotated 20 degrees about R and 10 about S: auto -> axial, nearest voxel axis k
    "oblique": (
        (8, 36, 36),
        (1.2, 1.2, 1.2),
        rotation("z", 10) @ rotation("x", 20),
        "axial",
        "k",
    ),
    # thick sagittal slices stored along i (spacing 4 mm in R): auto -> sagittal, cut through i
    "anisotropic": ((40, 36, 6), (4.0, 0.9, 0.9), np.eye(3), "sagittal", "i"),
}


def case_volume(volumes_logic, tmp_path, case):
    shape, spacing, directions, orientation, axis = CASES[case]
    axis_pos = {"k": 0, "j": 1, "i": 2}[axis]
    array = phantom(shape, axis=axis_pos)
    node = load_nifti(volumes_logic, tmp_path, array, spacing, directions, (-20.0, 15.0, 30.0), case)
    return node, array, orientation, axis


def column(table, name):
    col = table.GetTable().GetColumnByName(name)
    assert col is not None, f"no column {name}"
    return np.array([col.GetValue(i) for i in range(col.GetNumberOfTuples())])


def count_nodes(scene, class_name):
    return scene.GetNumberOfNodesByClass(class_name)


# --------------------------------------------------------------------------- geometry


def test_volume_from_node_keeps_geometry(mrml, tmp_path):
    _, volumes_logic = mrml
    node, array, _, _ = case_volume(volumes_logic, tmp_path, "oblique")
    vol = nodes.volume_from_node(node)
    np.testing.assert_allclose(vol.ijk_to_ras(), nodes.ijk_to_ras_array(node), atol=1e-6)
    np.testing.assert_allclose(vol.array, array, atol=1e-4)
    assert vol.array.shape == array.shape  # [k, j, i] kept
    # a copy: changing it does not change the node
    vol.array[...] = -1
    assert slicer.util.arrayFromVolume(node).min() >= 0


def test_labelmap_and_missing_input_are_refused(mrml):
    scene, _ = mrml
    label = slicer.util.addVolumeFromArray(
        np.ones((4, 20, 20), np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode"
    )
    with pytest.raises(InputError, match="not a scalar"):
        nodes.volume_from_node(label)
    with pytest.raises(InputError, match="no input volume"):
        nodes.volume_from_node(None)


# --------------------------------------------------------------------------- full assessment


def expected_positions(node, axis, orientation, n):
    """RAS coordinate (R, A or S) of each slice centre, from the node's IJK-to-RAS matrix."""
    m = nodes.ijk_to_ras_array(node)
    dims = node.GetImageData().GetDimensions()
    ras_index = {"sagittal": 0, "coronal": 1, "axial": 2}[orientation]
    out = []
    for s in range(n):
        ijk = [(d - 1) / 2.0 for d in dims]
        ijk[nodes.AXES.index(axis)] = s
        out.append((m @ np.array([*ijk, 1.0]))[ras_index])
    return np.array(out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_assess_volume_node_writes_consistent_results(mrml, tmp_path, case, loaded_model):
    from MotionSSIMLib.assessment.inference import assess_volume

    scene, volumes_logic = mrml
    node, array, orientation, axis = case_volume(volumes_logic, tmp_path, case)
    thresholds = ClinicalThresholds()
    calls = []
    result = node_jobs.assess_volume_node(
        node,
        model=loaded_model,
        device="cpu",
        thresholds=thresholds,
        progress=lambda done, total: calls.append((done, total)),
    )
    n = array.shape[{"k": 0, "j": 1, "i": 2}[axis]]
    assert result.axis == axis and result.orientation == orientation
    assert calls and calls[-1][0] == calls[-1][1]  # progress reached the end

    # table: one row per slice, in order, positions in mm from the real geometry
    table = result.table
    assert table.GetNumberOfRows() == n
    for name in volume_results.TABLE_COLUMNS:
        assert table.GetTable().GetColumnByName(name) is not None, name
    np.testing.assert_array_equal(column(table, "slice"), np.arange(n))
    np.testing.assert_allclose(
        column(table, "position_mm"), expected_positions(node, axis, orientation, n), atol=1e-3
    )
    # the SSIMs are the engine's for the same volume and model; classes follow the thresholds
    reference = assess_volume(
        nodes.volume_from_node(node), model=loaded_model, device="cpu", thresholds=thresholds
    )
    ssim = column(table, "ssim")
    np.testing.assert_allclose(ssim, [r.ssim for r in reference.records], atol=1e-5)
    np.testing.assert_array_equal(column(table, "class"), clinical_class(ssim, thresholds))
    assert list(column(table, "class_name")) == [
        CLINICAL_NAMES[int(c)] for c in column(table, "class")
    ]
    empty = column(table, "empty").astype(bool)
    assert empty[0] and empty[-1], "the all-zero end slices must be marked empty"
    assert not empty[n // 2]
    fg = column(table, "foreground")
    assert fg[0] == 0.0 and fg[n // 2] > 0.2

    # chart: every series drawn from the plot table, class series NaN outside their class
    chart = result.chart
    assert set(result.series) == set(volume_results.SERIES_KEYS)
    assert chart.GetNumberOfPlotSeriesNodes() == len(volume_results.SERIES_KEYS)
    assert chart.GetYAxisRange() == (0.0, 1.0) or tuple(chart.GetYAxisRange()) == (0.0, 1.0)
    labels = volume_results.slice_labels(reference)
    for key, series in result.series.items():
        assert series.GetTableNode() is result.plot_table
        y = column(result.plot_table, series.GetYColumnName())
        assert len(y) == n
        if key in CLASS_LABELS:
            mask = labels == CLASS_LABELS[key]
            np.testing.assert_allclose(y[mask], ssim[mask], atol=1e-6)
            assert np.all(np.isnan(y[~mask]))
            np.testing.assert_allclose(series.GetColor(), CLASS_COLOURS[key], atol=1e-6)
    np.testing.assert_allclose(column(result.plot_table, "threshold_good"), 0.85)
    np.testing.assert_allclose(column(result.plot_table, "threshold_sufficient"), 0.60)
    assert result.series["empty"].GetMarkerStyle() != result.series["good"].GetMarkerStyle()

    # overlay: input geometry; every slice carries exactly its label (frame band + 0 inside)
    overlay = result.overlay
    assert overlay.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_allclose(nodes.ijk_to_ras_array(overlay), nodes.ijk_to_ras_array(node))
    labels_array = slicer.util.arrayFromVolume(overlay)
    assert labels_array.shape == array.shape
    axis_pos = {"k": 0, "j": 1, "i": 2}[axis]
    for s in range(n):
        values = set(np.unique(np.take(labels_array, s, axis=axis_pos)).tolist())
        assert values == {0, int(labels[s])}, (s, values)
    assert overlay.GetDisplayNode().GetColorNode() is result.color_table


def test_apply_twice_updates_the_same_nodes(mrml, tmp_path, loaded_model, model_path):
    scene, volumes_logic = mrml
    node, _, _, _ = case_volume(volumes_logic, tmp_path, "axial")
    first = node_jobs.assess_volume_node(node, model=loaded_model, device="cpu")
    counts = {
        c: count_nodes(scene, c)
        for c in (
            "vtkMRMLTableNode",
            "vtkMRMLPlotChartNode",
            "vtkMRMLPlotSeriesNode",
            "vtkMRMLLabelMapVolumeNode",
            "vtkMRMLColorTableNode",
        )
    }
    # second run: a checkpoint path instead of a loaded model, other thresholds, whole-slice style
    strict = ClinicalThresholds(good=0.95, sufficient=0.90)
    second = node_jobs.assess_volume_node(
        node, model=model_path, device="cpu", thresholds=strict, overlay_style="slice"
    )
    for c, k in counts.items():
        assert count_nodes(scene, c) == k, c
    assert second.table.GetID() == first.table.GetID()
    assert second.chart.GetID() == first.chart.GetID()
    assert second.overlay.GetID() == first.overlay.GetID()
    assert {k: s.GetID() for k, s in second.series.items()} == {
        k: s.GetID() for k, s in first.series.items()
    }
    # ... and the contents are the new ones
    np.testing.assert_allclose(column(second.plot_table, "threshold_good"), 0.95)
    ssim = column(second.table, "ssim")
    np.testing.assert_array_equal(column(second.table, "class"), clinical_class(ssim, strict))
    labels_array = slicer.util.arrayFromVolume(second.overlay)
    labels = volume_results.slice_labels(second.assessment)
    for s in range(labels_array.shape[0]):
        assert np.all(labels_array[s] == labels[s])  # "slice" style: the whole slice

    # the results can be found again from the volume alone (e.g. after the module is reopened)
    found = volume_results.find_result(node)
    assert found is not None and found.table.GetID() == first.table.GetID()
    assert found.axis == "k" and found.summary == second.summary
    # a second volume gets its own nodes but shares the colour table
    other, _, _, _ = case_volume(volumes_logic, tmp_path, "anisotropic")
    assert volume_results.find_result(other) is None
    third = node_jobs.assess_volume_node(other, model=loaded_model, device="cpu")
    assert third.table.GetID() != first.table.GetID()
    assert third.color_table.GetID() == first.color_table.GetID()
    assert count_nodes(scene, "vtkMRMLColorTableNode") == counts["vtkMRMLColorTableNode"]


# --------------------------------------------------------------------------- classes and colours


def make_assessment(ssims, empty, axis="k", orientation="axial"):
    """An engine Assessment with chosen SSIMs (to cover every class with a random model)."""
    from MotionSSIMLib.assessment.inference import Assessment, SliceRecord

    classes = clinical_class(np.asarray(ssims), ClinicalThresholds())
    records = [
        SliceRecord(
            index=i,
            position_mm=float(i),
            ssim=float(s),
            clinical_class=int(c),
            foreground=0.0 if e else 0.5,
            empty=bool(e),
        )
        for i, (s, c, e) in enumerate(zip(ssims, classes, empty, strict=True))
    ]
    summary = {"mean_ssim": float(np.mean(ssims)), "verdict": "insufficient: re-scan"}
    return Assessment(records=records, summary=summary, orientation=orientation, axis=axis)


def test_every_class_gets_its_series_colour_and_label(mrml):
    scene, _ = mrml
    node = slicer.util.addVolumeFromArray(np.ones((5, 24, 20), np.float32), name="v")
    ssims = [0.95, 0.70, 0.30, 0.86, 0.50]
    empty = [False, False, False, False, True]
    result = volume_results.write_assessment(node, make_assessment(ssims, empty))
    expected = {
        "good": [0, 3],
        "sufficient": [1],
        "insufficient": [2],
        "empty": [4],
    }
    for key, rows in expected.items():
        y = column(result.plot_table, key)
        assert np.nonzero(~np.isnan(y))[0].tolist() == rows, key
        np.testing.assert_allclose(result.series[key].GetColor(), CLASS_COLOURS[key])
        # the colour table entry of the label has the same colour, semi-transparent
        rgba = [0.0] * 4
        result.color_table.GetColor(CLASS_LABELS[key], rgba)
        np.testing.assert_allclose(rgba[:3], CLASS_COLOURS[key], atol=1 / 255)
        assert 0.2 < rgba[3] < 1.0
        assert result.color_table.GetColorName(CLASS_LABELS[key]) == key
    rgba = [1.0] * 4
    result.color_table.GetColor(0, rgba)
    assert rgba[3] == 0.0  # background transparent
    assert result.series["all"].GetMarkerStyle() == slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone
    assert (
        result.series["threshold_good"].GetLineStyle()
        == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    )
    labels = slicer.util.arrayFromVolume(result.overlay)
    assert [int(labels[s].max()) for s in range(5)] == [1, 2, 3, 1, 4]
    # frame style: border labelled, centre clear
    assert labels[2, 0, 0] == 3 and labels[2, 12, 10] == 0
    assert "insufficient" in result.chart.GetTitle()


def test_bad_overlay_style_is_refused(mrml):
    node = slicer.util.addVolumeFromArray(np.ones((2, 20, 20), np.float32))
    with pytest.raises(ValueError, match="overlay_style"):
        volume_results.write_assessment(node, make_assessment([0.9, 0.9], [False, False]),
                                        overlay_style="x")


# --------------------------------------------------------------------------- interaction


def add_slice_node(scene, name, orientation):
    """A slice view's node as Slicer creates it (orientation presets from the scene defaults)."""
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    node = scene.CreateNodeByClass("vtkMRMLSliceNode")
    node.UnRegister(None)  # CreateNodeByClass hands over a reference
    node.SetLayoutName(name)
    node.SetDefaultOrientation(orientation)
    scene.AddNode(node)
    node.SetOrientation(orientation)
    return node


def test_chart_point_jumps_views_and_annotation_follows(mrml):
    scene, _ = mrml
    spacing, origin = 2.5, (10.0, -5.0, 40.0)
    ijk_to_ras = np.diag([1.0, 1.0, spacing, 1.0])
    ijk_to_ras[:3, 3] = origin
    node = slicer.util.addVolumeFromArray(np.ones((6, 20, 20), np.float32), ijk_to_ras, "v")
    # the volume sits under a linear transform: views must jump to world coordinates
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (0.0, 0.0, 100.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    ssims = [0.9, 0.8, 0.3, 0.95, 0.65, 0.7]
    result = volume_results.write_assessment(node, make_assessment(ssims, [False] * 6))
    assert result.overlay.GetTransformNodeID() == transform.GetID()

    red = add_slice_node(scene, "Red", "Axial")
    yellow = add_slice_node(scene, "Yellow", "Sagittal")

    # a point picked in the "insufficient" series -> row 2 -> slice k=2
    row = volume_results.row_for_point(result, result.series["insufficient"].GetID(), 2)
    assert row == 2
    assert volume_results.row_for_point(result, result.series["threshold_good"].GetID(), 2) is None
    assert volume_results.row_for_point(result, "vtkMRMLPlotSeriesNodeXYZ", 2) is None
    assert volume_results.row_for_point(result, result.series["all"].GetID(), 99) is None

    ras = volume_results.jump_to_row(result, row)
    expected_s = origin[2] + 2 * spacing + 100.0
    assert ras[2] == pytest.approx(expected_s)
    red_to_ras = slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())
    assert red_to_ras[2, 3] == pytest.approx(expected_s)  # the axial view moved to the slice

    text = volume_results.view_text(result, red.GetSliceToRAS())
    assert text == "slice 2: SSIM 0.30, insufficient"
    # a sagittal view cuts across the assessed slices: no single slice to name
    assert volume_results.view_text(result, yellow.GetSliceToRAS()) is None
    # moving the axial view to slice 4 updates the text
    volume_results.jump_to_row(result, 4)
    assert volume_results.view_text(result, red.GetSliceToRAS()) == "slice 4: SSIM 0.65, sufficient"
    # outside the volume: no row
    assert volume_results.row_at_ras(result, (0.0, 0.0, -500.0)) is None


# --------------------------------------------------------------------------- training panel


def test_training_log_becomes_a_live_chart(mrml, tmp_path):
    from MotionSSIMLib.bridge import training_chart
    from MotionSSIMLib.training.run_state import LOG_COLUMNS

    scene, _ = mrml
    log_path = tmp_path / "log.csv"
    assert training_chart.read_training_log(log_path) == {}
    rows = [
        [1, 2, 0.09, 0.08, 0.21, 0.11, 0.001, 50.0, 3.0],
        [2, 4, 0.05, "nan", 0.15, 0.10, 0.001, 51.0, 6.0],
    ]
    log_path.write_text(
        ",".join(LOG_COLUMNS) + "\n" + "\n".join(",".join(map(str, r)) for r in rows[:1]) + "\n"
    )
    log = training_chart.read_training_log(log_path)
    assert set(LOG_COLUMNS) <= set(log)
    table, chart, series = training_chart.write_training_chart(log, str(tmp_path))
    assert table.GetNumberOfRows() == 1
    # the trainer rewrote the log with one more epoch: the same nodes grow
    log_path.write_text(
        ",".join(LOG_COLUMNS) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    )
    log = training_chart.read_training_log(log_path)
    np.testing.assert_allclose(log["train_loss"], [0.09, 0.05])
    assert np.isnan(log["val_loss"][1])
    table2, chart2, series2 = training_chart.write_training_chart(log, str(tmp_path))
    assert table2.GetID() == table.GetID() and chart2.GetID() == chart.GetID()
    assert table2.GetNumberOfRows() == 2
    assert chart2.GetNumberOfPlotSeriesNodes() == 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2
    for key in ("train_loss", "val_loss"):
        assert series2[key].GetYColumnName() == key
        assert series2[key].GetTableNode() is table2
    np.testing.assert_allclose(column(table2, "epoch"), [1, 2])
    # another run folder gets its own chart
    _, other, _ = training_chart.write_training_chart(log, str(tmp_path / "other"))
    assert other.GetID() != chart.GetID()


def test_cancel_leaves_the_scene_unchanged(mrml, tmp_path, loaded_model):
    from MotionSSIMLib.assessment.inference import Cancelled

    scene, volumes_logic = mrml
    node, _, _, _ = case_volume(volumes_logic, tmp_path, "axial")
    before = scene.GetNumberOfNodes()
    with pytest.raises(Cancelled):
        node_jobs.assess_volume_node(node, model=loaded_model, device="cpu", cancel=lambda: True)
    assert scene.GetNumberOfNodes() == before
    assert volume_results.find_result(node) is None


# --------------------------------------------------------------------------- panel: validation


def test_settings_are_validated_before_apply(mrml):
    scene, _ = mrml
    volume = slicer.util.addVolumeFromArray(phantom((4, 20, 20)), name="mr")
    label = slicer.util.addVolumeFromArray(
        np.ones((4, 20, 20), np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode", name="seg"
    )
    assert node_jobs.validate_settings(volume, 0.85, 0.60) == []
    problems = node_jobs.validate_settings(label, 0.85, 0.60)
    assert len(problems) == 1 and "seg is a labelmap" in problems[0]
    assert node_jobs.validate_settings(None) == ["Select an input volume"]
    for good, sufficient in ((0.6, 0.6), (0.5, 0.7), (1.2, 0.6), (0.85, -0.1)):
        problems = node_jobs.validate_settings(volume, good, sufficient)
        assert len(problems) == 1 and "must be below" in problems[0], (good, sufficient)


# --------------------------------------------------------------------------- panel: background job


def test_background_job_writes_results_on_finish_and_records_device(mrml, tmp_path, loaded_model):
    scene, volumes_logic = mrml
    node, _, _, _ = case_volume(volumes_logic, tmp_path, "axial")
    before = scene.GetNumberOfNodes()
    job = node_jobs.AssessmentJob(node, model=loaded_model, device="auto", batch_size=2)
    assert job.wait(timeout=300)
    # the worker wrote nothing into the scene: that is finish()'s job, on the main thread
    assert scene.GetNumberOfNodes() == before and volume_results.find_result(node) is None
    assert job.error is None and job.stage == "done"
    assert job.total_slices == 7 and job.done_slices == 7  # progress reached the last slice
    result = job.finish()
    assert result is not None and result.table.GetNumberOfRows() == 7
    assert result.summary["device"] == "cpu"  # what "auto" chose on this machine
    found = volume_results.find_result(node)
    assert found.summary["device"] == "cpu"
    assert job.elapsed_s > 0


def test_background_job_progress_is_reported_per_batch(mrml, tmp_path, loaded_model):
    _, volumes_logic = mrml
    node, _, _, _ = case_volume(volumes_logic, tmp_path, "axial")
    job = node_jobs.AssessmentJob(node, model=loaded_model, device="cpu", batch_size=1)
    seen = set()
    while not job.done:
        seen.add(job.done_slices)
        job.wait(0.005)
    assert job.done_slices == 7 and job.finish() is not None
    assert len(seen) >= 2, seen  # the main thread saw intermediate states, not only 0 and 7


def test_background_job_cancel_writes_nothing(mrml, tmp_path, loaded_model):
    scene, volumes_logic = mrml
    node, _, _, _ = case_volume(volumes_logic, tmp_path, "axial")
    before = scene.GetNumberOfNodes()
    job = node_jobs.AssessmentJob(node, model=loaded_model, device="cpu", batch_size=1)
    job.cancel()
    assert job.wait(timeout=300)
    assert job.cancelled and job.finish() is None
    assert scene.GetNumberOfNodes() == before and volume_results.find_result(node) is None


def test_background_job_survives_node_deletion_and_scene_close(mrml, tmp_path, loaded_model):
    scene, volumes_logic = mrml
    node, _, _, _ = case_volume(volumes_logic, tmp_path, "axial")
    job = node_jobs.AssessmentJob(node, model=loaded_model, device="cpu", batch_size=1)
    scene.RemoveNode(node)  # deleted while the worker runs on its copy of the voxels
    assert job.wait(timeout=300)
    assert job.error is None  # the copy was assessed without touching the node
    assert job.finish() is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0

    other, _, _, _ = case_volume(volumes_logic, tmp_path, "oblique")
    job = node_jobs.AssessmentJob(other, model=loaded_model, device="cpu", batch_size=1)
    scene.Clear(0)  # File > Close Scene
    assert job.wait(timeout=300)
    assert job.finish() is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


def test_background_job_reports_engine_errors_on_finish(mrml):
    volume = slicer.util.addVolumeFromArray(np.zeros((4, 20, 20), np.float32), name="blank")
    job = node_jobs.AssessmentJob(volume, model=None, device="cpu")
    assert job.wait(timeout=300) and job.stage == "failed"
    with pytest.raises(InputError, match="no assessable slice"):
        job.finish()
