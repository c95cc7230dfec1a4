"""MRML bridge: assess a volume node and write the results into the Slicer scene.

This is the only engine module that touches Slicer. It uses MRML classes, ``slicer.util`` array
helpers and vtk only (no qt, no ``slicer.app``), so it runs inside Slicer, in ``PythonSlicer`` and
in pytest with the ``slicer-core`` wheel (set ``slicer.mrmlScene`` first). Views (layouts, slice
annotations) stay in the module widget; this file only computes what they show.

What one assessment writes, all found again through node references from the input volume node,
so that assessing the same volume twice updates the same nodes:

- a results table (one row per slice: index, position in mm, SSIM, class, foreground, empty),
- a plot table + chart (grey line over all slices, one scatter series per class, empty slices
  as grey crosses, the two clinical thresholds as dashed lines),
- a labelmap overlay with the input geometry whose voxels of each slice carry that slice's label
  (1 good, 2 sufficient, 3 insufficient, 4 empty) and a shared user colour table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import slicer
import vtk

from .classes import CLASS_COLOURS, CLASS_LABELS, CLINICAL_NAMES, SLICE_COLUMNS
from .errors import InputError
from .jsonable import jsonable

ROLE_ATTRIBUTE = "MotionSSIM.Role"
SOURCE_ATTRIBUTE = "MotionSSIM.SourceVolumeID"
AXIS_ATTRIBUTE = "MotionSSIM.Axis"
ORIENTATION_ATTRIBUTE = "MotionSSIM.Orientation"
SUMMARY_ATTRIBUTE = "MotionSSIM.Summary"
THRESHOLDS_ATTRIBUTE = "MotionSSIM.Thresholds"

REF_TABLE = "MotionSSIMTable"
REF_PLOT_TABLE = "MotionSSIMPlotTable"
REF_CHART = "MotionSSIMChart"
REF_OVERLAY = "MotionSSIMOverlay"
REF_SERIES_PREFIX = "MotionSSIMSeries."

OVERLAY_ALPHA = 0.6
OVERLAY_STYLES = ("frame", "slice")
COLOR_TABLE_NAME = "MotionSSIM classes"

SERIES_KEYS = (
    "all",
    "good",
    "sufficient",
    "insufficient",
    "empty",
    "threshold_good",
    "threshold_sufficient",
)
TABLE_COLUMNS = ("slice", *SLICE_COLUMNS)

AXES = ("i", "j", "k")


@dataclass
class SceneResult:
    """The nodes one assessment wrote (or that were found again for a volume)."""

    volume: Any  # vtkMRMLScalarVolumeNode that was assessed
    table: Any  # vtkMRMLTableNode, one row per slice (TABLE_COLUMNS)
    plot_table: Any  # vtkMRMLTableNode behind the chart (same rows, NaN-masked class columns)
    chart: Any  # vtkMRMLPlotChartNode
    series: dict[str, Any]  # SERIES_KEYS -> vtkMRMLPlotSeriesNode
    overlay: Any  # vtkMRMLLabelMapVolumeNode, input geometry, CLASS_LABELS per slice
    color_table: Any  # vtkMRMLColorTableNode (user type), shared by every overlay
    axis: str  # voxel axis cut through: "i", "j" or "k"
    orientation: str  # "axial", "coronal" or "sagittal"
    summary: dict = field(default_factory=dict)  # the engine's Assessment.summary
    assessment: Any = None  # the engine's Assessment (None when found again in a scene)


# --------------------------------------------------------------------------- geometry


def _scene():
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise RuntimeError("slicer.mrmlScene is not set")
    return scene


def ijk_to_ras_array(volumeNode) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix (local coordinates, parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_from_node(volumeNode):
    """A copy of a scalar volume node's voxels with its real geometry, as an engine Volume.

    The array keeps Slicer's [k, j, i] order; spacing, directions and origin come from the
    node's IJK-to-RAS matrix (so oblique and anisotropic volumes keep their geometry).
    """
    from .geometry import Volume

    if volumeNode is None:
        raise InputError("no input volume: select a volume")
    name = volumeNode.GetName()
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{name}: not a scalar (grey-value) volume: {volumeNode.GetClassName()}")
    if volumeNode.GetImageData() is None:
        raise InputError(f"{name}: the volume has no voxels")
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    if array.ndim != 3:
        raise InputError(f"{name}: expected a 3D scalar volume, got array shape {array.shape}")
    matrix = ijk_to_ras_array(volumeNode)
    columns = matrix[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"{name}: degenerate IJK-to-RAS matrix (zero spacing)")
    directions = columns / spacing
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in spacing),
        directions=directions,
        origin=tuple(float(o) for o in matrix[:3, 3]),
    )


def _transform_point(volumeNode, point, to_world: bool) -> np.ndarray:
    """Map a RAS point through the volume's parent transform (local -> world, or back)."""
    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return np.asarray(point, dtype=float)
    transform = vtk.vtkGeneralTransform()
    if to_world:
        parent.GetTransformToWorld(transform)
    else:
        parent.GetTransformFromWorld(transform)
    return np.asarray(transform.TransformPoint([float(v) for v in point]), dtype=float)


def _local_to_world(volumeNode, point) -> np.ndarray:
    return _transform_point(volumeNode, point, to_world=True)


def _world_to_local(volumeNode, point) -> np.ndarray:
    return _transform_point(volumeNode, point, to_world=False)


def slice_center_ras(volumeNode, axis: str, index: int, world: bool = True) -> np.ndarray:
    """RAS point at the centre of voxel slice `index` cut through voxel axis `axis`."""
    dims = volumeNode.GetImageData().GetDimensions()  # (I, J, K)
    ijk = [(d - 1) / 2.0 for d in dims]
    ijk[AXES.index(axis)] = float(index)
    ras = ijk_to_ras_array(volumeNode) @ np.array([*ijk, 1.0])
    return _local_to_world(volumeNode, ras[:3]) if world else ras[:3]


# --------------------------------------------------------------------------- node bookkeeping


def _referenced(volumeNode, role: str, className: str):
    node = volumeNode.GetNodeReference(role)
    if node is not None and node.IsA(className) and node.GetScene() is not None:
        return node
    return None


def _get_or_create(volumeNode, role: str, className: str, name: str, tag: str):
    """The node `volumeNode` references under `role`, created (and referenced) if missing."""
    node = _referenced(volumeNode, role, className)
    if node is None:
        node = _scene().AddNewNodeByClass(className, name)
        volumeNode.SetNodeReferenceID(role, node.GetID())
    node.SetName(name)
    node.SetAttribute(ROLE_ATTRIBUTE, tag)
    node.SetAttribute(SOURCE_ATTRIBUTE, volumeNode.GetID())
    return node


def get_color_table():
    """The scene's MotionSSIM colour table (one per scene, created on first use)."""
    scene = _scene()
    nodes = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(ROLE_ATTRIBUTE) == "ColorTable":
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    node.SetAttribute(ROLE_ATTRIBUTE, "ColorTable")
    node.SetTypeToUser()
    node.SetNumberOfColors(len(CLASS_LABELS) + 1)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for key, label in CLASS_LABELS.items():
        r, g, b = CLASS_COLOURS[key]
        node.SetColor(label, key, r, g, b, OVERLAY_ALPHA)
    return node


def find_result(volumeNode) -> SceneResult | None:
    """The results written earlier for `volumeNode`, or None when it was never assessed.

    Creates nothing (the module panel calls it whenever the selected volume changes).
    """
    if volumeNode is None:
        return None
    table = _referenced(volumeNode, REF_TABLE, "vtkMRMLTableNode")
    plot_table = _referenced(volumeNode, REF_PLOT_TABLE, "vtkMRMLTableNode")
    chart = _referenced(volumeNode, REF_CHART, "vtkMRMLPlotChartNode")
    overlay = _referenced(volumeNode, REF_OVERLAY, "vtkMRMLLabelMapVolumeNode")
    if table is None or plot_table is None or chart is None or overlay is None:
        return None
    series = {}
    for key in SERIES_KEYS:
        node = _referenced(volumeNode, REF_SERIES_PREFIX + key, "vtkMRMLPlotSeriesNode")
        if node is not None:
            series[key] = node
    display = overlay.GetDisplayNode()
    summary_text = table.GetAttribute(SUMMARY_ATTRIBUTE)
    return SceneResult(
        volume=volumeNode,
        table=table,
        plot_table=plot_table,
        chart=chart,
        series=series,
        overlay=overlay,
        color_table=display.GetColorNode() if display is not None else None,
        axis=table.GetAttribute(AXIS_ATTRIBUTE) or "k",
        orientation=table.GetAttribute(ORIENTATION_ATTRIBUTE) or "",
        summary=json.loads(summary_text) if summary_text else {},
    )


# --------------------------------------------------------------------------- writing results


def slice_labels(assessment) -> np.ndarray:
    """Overlay label of every record: its clinical class, or CLASS_LABELS['empty'] for empty
    slices."""
    return np.array(
        [CLASS_LABELS["empty"] if r.empty else int(r.clinical_class) for r in assessment.records],
        dtype=np.uint8,
    )


def _label_name(label: int) -> str:
    return next(k for k, v in CLASS_LABELS.items() if v == label)


def _write_table(table, assessment) -> None:
    records = assessment.records
    columns = [
        np.array([r.index for r in records], dtype=np.int32),
        np.array([r.position_mm for r in records], dtype=np.float64),
        np.array([r.ssim for r in records], dtype=np.float64),
        np.array([r.clinical_class for r in records], dtype=np.int32),
        None,  # class_name: strings, added below
        np.array([r.foreground for r in records], dtype=np.float64),
        np.array([1 if r.empty else 0 for r in records], dtype=np.int32),
        np.array([getattr(r, "ssim_sd", 0.0) for r in records], dtype=np.float64),
        np.array([1 if getattr(r, "uncertain", False) else 0 for r in records], dtype=np.int32),
    ]
    numeric = [c for c in columns if c is not None]
    names = [n for n, c in zip(TABLE_COLUMNS, columns) if c is not None]
    was_modifying = table.StartModify()
    slicer.util.updateTableFromArray(table, numeric, names)
    # updateTableFromArray cannot take strings; insert the class name after "class".
    strings = vtk.vtkStringArray()
    strings.SetName("class_name")
    for r in records:
        strings.InsertNextValue(CLINICAL_NAMES[int(r.clinical_class)])
    vtable = table.GetTable()
    ordered = [vtable.GetColumnByName(n) for n in names]
    for _ in range(vtable.GetNumberOfColumns()):
        vtable.RemoveColumn(0)
    for name, column in zip(names, ordered):
        vtable.AddColumn(column)
        if name == "class":
            vtable.AddColumn(strings)
    descriptions = {
        "slice": ("voxel index of the slice along the assessed axis", ""),
        "position_mm": ("RAS coordinate of the slice centre along the assessed anatomical axis", "mm"),
        "ssim": ("predicted SSIM against a motion-free version of the slice", ""),
        "class": ("clinical class: 1 good, 2 sufficient, 3 insufficient (re-scan)", ""),
        "class_name": ("clinical class name", ""),
        "foreground": ("share of pixels above the volume's background threshold", ""),
        "empty": ("1 = too little foreground to be assessed (shown but not counted)", ""),
        "ssim_sd": ("spread of the predicted SSIM over flipped/transposed views of the slice", ""),
        "uncertain": ("1 = SSIM +- 2 ssim_sd contains a class threshold", ""),
    }
    for name, (description, unit) in descriptions.items():
        table.SetColumnDescription(name, description)
        if unit:
            table.SetColumnUnitLabel(name, unit)
    table.Modified()
    table.EndModify(was_modifying)


def _write_plot_table(plot_table, assessment, thresholds) -> None:
    records = assessment.records
    x = np.array([r.index for r in records], dtype=np.float64)
    y = np.array([r.ssim for r in records], dtype=np.float64)
    labels = slice_labels(assessment)
    columns = [x, y]
    names = ["slice", "ssim"]
    # One column per class with NaN outside the class: every series then has a point per row,
    # so a picked point index is a row index whatever series it came from. VTK charts skip NaN.
    for key in CLASS_LABELS:
        columns.append(np.where(labels == CLASS_LABELS[key], y, np.nan))
        names.append(key)
    columns.append(np.full_like(y, float(thresholds.good)))
    names.append("threshold_good")
    columns.append(np.full_like(y, float(thresholds.sufficient)))
    names.append("threshold_sufficient")
    slicer.util.updateTableFromArray(plot_table, columns, names)


def _configure_series(node, plot_table, key: str, thresholds) -> None:
    node.SetAndObserveTableNodeID(plot_table.GetID())
    node.SetXColumnName("slice")
    node.SetYColumnName("ssim" if key == "all" else key)
    if key == "all":
        node.SetName("SSIM (all slices)")
        node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        node.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        node.SetLineWidth(2)
        node.SetColor(0.55, 0.55, 0.55)
    elif key in CLASS_LABELS:
        node.SetName(f"{key} slices" if key != "empty" else "empty slices (not assessed)")
        node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        node.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
        marker = "MarkerStyleCross" if key == "empty" else "MarkerStyleCircle"
        node.SetMarkerStyle(getattr(slicer.vtkMRMLPlotSeriesNode, marker))
        node.SetMarkerSize(10 if key == "empty" else 9)
        node.SetColor(*CLASS_COLOURS[key])
    else:
        value = thresholds.good if key == "threshold_good" else thresholds.sufficient
        node.SetName(f"threshold {value:.2f}")
        node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        node.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
        node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        node.SetLineWidth(1)
        node.SetColor(*CLASS_COLOURS["good" if key == "threshold_good" else "insufficient"])


def _write_overlay(overlay, volumeNode, assessment, color_table, style: str) -> None:
    dims = volumeNode.GetImageData().GetDimensions()  # (I, J, K)
    labels_array = np.zeros(tuple(reversed(dims)), dtype=np.uint8)  # [k, j, i]
    axis_pos = {"k": 0, "j": 1, "i": 2}[assessment.axis]
    labels = slice_labels(assessment)
    for record, label in zip(assessment.records, labels):
        view = np.take(labels_array, record.index, axis=axis_pos)  # copy, 2D
        view[...] = label
        if style == "frame":
            height, width = view.shape
            band = max(1, int(round(0.04 * min(height, width))))
            if height > 2 * band and width > 2 * band:
                view[band:-band, band:-band] = 0
        index = [slice(None)] * 3
        index[axis_pos] = record.index
        labels_array[tuple(index)] = view
    was_modifying = overlay.StartModify()
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    overlay.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(overlay, labels_array)
    overlay.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    if overlay.GetDisplayNode() is None:
        overlay.CreateDefaultDisplayNodes()
    overlay.GetDisplayNode().SetAndObserveColorNodeID(color_table.GetID())
    overlay.EndModify(was_modifying)


def write_assessment(
    volumeNode, assessment, thresholds=None, overlay_style: str = "frame"
) -> SceneResult:
    """Write an engine Assessment of `volumeNode` into the scene (create or update the nodes)."""
    from .classes import ClinicalThresholds

    if overlay_style not in OVERLAY_STYLES:
        raise ValueError(f"overlay_style must be one of {OVERLAY_STYLES}, got {overlay_style!r}")
    thresholds = thresholds if thresholds is not None else ClinicalThresholds()
    name = volumeNode.GetName()
    color_table = get_color_table()

    table = _get_or_create(volumeNode, REF_TABLE, "vtkMRMLTableNode", f"{name} MotionSSIM", "Table")
    _write_table(table, assessment)
    summary = jsonable(assessment.summary)
    table.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(summary))
    table.SetAttribute(AXIS_ATTRIBUTE, assessment.axis)
    table.SetAttribute(ORIENTATION_ATTRIBUTE, assessment.orientation)
    table.SetAttribute(
        THRESHOLDS_ATTRIBUTE,
        json.dumps({"good": float(thresholds.good), "sufficient": float(thresholds.sufficient)}),
    )

    plot_table = _get_or_create(
        volumeNode, REF_PLOT_TABLE, "vtkMRMLTableNode", f"{name} MotionSSIM plot data", "PlotTable"
    )
    _write_plot_table(plot_table, assessment, thresholds)

    chart = _get_or_create(
        volumeNode, REF_CHART, "vtkMRMLPlotChartNode", f"{name} MotionSSIM chart", "Chart"
    )
    series = {}
    for key in SERIES_KEYS:
        node = _get_or_create(
            volumeNode,
            REF_SERIES_PREFIX + key,
            "vtkMRMLPlotSeriesNode",
            f"{name} MotionSSIM {key}",
            f"Series.{key}",
        )
        _configure_series(node, plot_table, key, thresholds)
        series[key] = node
    chart.RemoveAllPlotSeriesNodeIDs()
    for key in SERIES_KEYS:
        chart.AddAndObservePlotSeriesNodeID(series[key].GetID())
    verdict = summary.get("verdict", "")
    chart.SetTitle(f"MotionSSIM: {name}" + (f" ({verdict})" if verdict else ""))
    chart.SetXAxisTitle(f"{assessment.orientation} slice index ({assessment.axis})")
    chart.SetYAxisTitle("predicted SSIM")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(True)

    overlay = _get_or_create(
        volumeNode, REF_OVERLAY, "vtkMRMLLabelMapVolumeNode", f"{name} MotionSSIM verdict", "Overlay"
    )
    _write_overlay(overlay, volumeNode, assessment, color_table, overlay_style)

    return SceneResult(
        volume=volumeNode,
        table=table,
        plot_table=plot_table,
        chart=chart,
        series=series,
        overlay=overlay,
        color_table=color_table,
        axis=assessment.axis,
        orientation=assessment.orientation,
        summary=summary,
        assessment=assessment,
    )


def validate_settings(volumeNode, good: float = 0.85, sufficient: float = 0.60) -> list[str]:
    """What stops an assessment with these settings (empty list = ready). The panel shows the
    first problem on the disabled Apply button, before anything runs."""
    problems = []
    if volumeNode is None:
        problems.append("Select an input volume")
    elif volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        problems.append(f"{volumeNode.GetName()} is a labelmap (segmentation), not an MR image: "
                        "select a scalar volume")
    elif not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        problems.append(f"{volumeNode.GetName()} is not a scalar volume")
    elif volumeNode.GetImageData() is None:
        problems.append(f"{volumeNode.GetName()} has no voxels")
    if not (0.0 <= float(sufficient) < float(good) <= 1.0):
        problems.append(f"thresholds: 'sufficient' ({float(sufficient):.2f}) must be below "
                        f"'good' ({float(good):.2f}), both in [0, 1]")
    return problems


def _record_device(assessment, device) -> None:
    """The device the assessment ran on ('auto' resolved), kept in the summary (table, JSON)."""
    assessment.summary["device"] = str(device)


class AssessmentJob:
    """One assessment running beside the main thread, so that the GUI stays responsive.

    Created on the main thread: the voxels are copied there (so later edits of the node cannot
    reach the running job) and handed to a runner (MotionSSIMLib.jobs) that never touches MRML,
    VTK or Qt: a worker thread (default; scripts), or with `child` (a jobs.ChildProcess) a child
    process of Slicer's Python, which the panel uses because Slicer's idle main thread holds
    the GIL. `poll()` (a timer on the main thread) follows it without blocking; `finish()`,
    called on the main thread once `done`, writes the results into the scene, unless the
    volume left the scene (node deleted, scene closed) meanwhile.
    """

    def __init__(self, volumeNode, model=None, orientation: str = "auto", device: str = "auto",
                 thresholds=None, min_foreground: float = 0.05, batch_size: int = 4,
                 overlay_style: str = "frame", child=None) -> None:
        from . import jobs
        from .classes import ClinicalThresholds

        self.volume = volumeNode
        self.scene = _scene()
        self.volume_id = volumeNode.GetID()
        self.name = volumeNode.GetName()
        self.thresholds = thresholds if thresholds is not None else ClinicalThresholds()
        self.overlay_style = overlay_style
        data = self._read(volumeNode)  # main thread: MRML read here only
        args = dict(model=model, orientation=orientation, device=device,
                    batch_size=batch_size, thresholds=self.thresholds,
                    min_foreground=min_foreground)
        self.run = jobs.ChildRun(data, child=child, **args) if child is not None else \
            jobs.ThreadRun(data, **args)

    # -- what a subclass changes: what it reads and what it writes -----------------------

    def _read(self, node):
        """The input copied from the node (main thread)."""
        return volume_from_node(node)

    def _write(self) -> SceneResult:
        """The results written into the scene (main thread)."""
        return write_assessment(self.volume, self.assessment, self.thresholds, self.overlay_style)

    # -- the runner's state --------------------------------------------------------------

    done_slices = property(lambda self: self.run.done_slices)
    total_slices = property(lambda self: self.run.total_slices)
    stage = property(lambda self: self.run.stage)
    assessment = property(lambda self: self.run.assessment)
    error = property(lambda self: self.run.error)
    elapsed_s = property(lambda self: self.run.elapsed_s)
    cancelled = property(lambda self: self.run.cancelled)

    @property
    def done(self) -> bool:
        return self.run.poll()

    def poll(self) -> bool:
        """Follow the runner without blocking (a timer calls it); True once it has ended."""
        return self.run.poll()

    def cancel(self) -> None:
        """Stop the runner (a thread at its next batch, a child process at once); nothing will
        be written."""
        self.run.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        return self.run.wait(timeout)

    def volume_still_present(self) -> bool:
        scene = getattr(slicer, "mrmlScene", None)
        return (scene is self.scene and self.volume.GetScene() is scene
                and scene.GetNodeByID(self.volume_id) is self.volume)

    def finish(self) -> SceneResult | SeriesSceneResult | None:
        """Write the results into the scene (main thread, once `done`). Returns None when the
        job was cancelled or its volume is gone; raises the runner's error if it failed."""
        if not self.done:
            raise RuntimeError("the assessment is still running")
        if self.cancelled or not self.volume_still_present():
            return None
        if self.error is not None:
            raise self.error
        return self._write()


def assess_volume_node(
    volumeNode,
    model=None,
    orientation: str = "auto",
    device: str = "auto",
    thresholds=None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    batch_size: int = 32,
    min_foreground: float = 0.05,
    overlay_style: str = "frame",
) -> SceneResult:
    """Assess every slice of `volumeNode` and write table, chart and overlay into the scene.

    `model`: None (bundled default), a checkpoint path, or a loaded model (as the engine's
    assess_volume accepts). `progress(done, total)` and `cancel() -> bool` are passed to the
    engine; when cancelled, nothing is written to the scene.
    """
    from .classes import ClinicalThresholds
    from .devices import resolve_device
    from .inference import assess_volume

    thresholds = thresholds if thresholds is not None else ClinicalThresholds()
    vol = volume_from_node(volumeNode)
    dev = resolve_device(device)
    assessment = assess_volume(
        vol,
        model=model,
        orientation=orientation,
        device=dev,
        batch_size=batch_size,
        thresholds=thresholds,
        min_foreground=min_foreground,
        progress=progress,
        cancel=cancel,
    )
    _record_device(assessment, dev)
    return write_assessment(volumeNode, assessment, thresholds, overlay_style)


# --------------------------------------------------------------------------- interaction


def row_for_point(result: SceneResult, seriesNodeID: str, pointIndex: int) -> int | None:
    """Table row of a point picked in the chart (None for threshold lines or bad indices).

    Every data series is drawn from the full-length plot table, so a point index is the row.
    """
    key = next((k for k, n in result.series.items() if n.GetID() == seriesNodeID), None)
    if key is None or key.startswith("threshold"):
        return None
    rows = result.plot_table.GetNumberOfRows()
    return int(pointIndex) if 0 <= int(pointIndex) < rows else None


def _table_column(result: SceneResult, name: str) -> np.ndarray:
    column = result.table.GetTable().GetColumnByName(name)
    return np.array([column.GetValue(i) for i in range(column.GetNumberOfTuples())])


def jump_to_row(result: SceneResult, row: int) -> np.ndarray:
    """Move every slice view to the slice of table row `row`; returns the world RAS point."""
    index = int(_table_column(result, "slice")[row])
    ras = slice_center_ras(result.volume, result.axis, index, world=True)
    slicer.vtkMRMLSliceNode.JumpAllSlices(_scene(), float(ras[0]), float(ras[1]), float(ras[2]))
    return ras


def row_of_slice(result: SceneResult, index: int) -> int | None:
    """Table row of voxel slice `index` (None if the table has no such slice)."""
    matches = np.nonzero(_table_column(result, "slice") == int(index))[0]
    return int(matches[0]) if len(matches) else None


def row_at_ras(result: SceneResult, ras_world) -> int | None:
    """Table row of the assessed slice that contains a world RAS point (None if outside)."""
    local = _world_to_local(result.volume, ras_world)
    ras_to_ijk = np.linalg.inv(ijk_to_ras_array(result.volume))
    ijk = ras_to_ijk @ np.array([*local, 1.0])
    return row_of_slice(result, int(round(float(ijk[AXES.index(result.axis)]))))


def row_text(result: SceneResult, row: int) -> str:
    """Corner-annotation text of a table row: 'slice k: SSIM x, class'."""
    index = int(_table_column(result, "slice")[row])
    ssim = float(_table_column(result, "ssim")[row])
    empty = bool(_table_column(result, "empty")[row])
    name = CLINICAL_NAMES[int(_table_column(result, "class")[row])]
    if empty:
        return f"slice {index}: SSIM {ssim:.2f}, empty (not assessed)"
    return f"slice {index}: SSIM {ssim:.2f}, {name}"


def view_text(result: SceneResult, sliceToRAS) -> str | None:
    """Annotation for a slice view given its SliceToRAS (4x4 array or vtkMatrix4x4).

    Only views cut parallel to the assessed slices get a text (within ~25 degrees); others
    would show a mixture of slices. The view centre picks the slice.
    """
    if isinstance(sliceToRAS, vtk.vtkMatrix4x4):
        sliceToRAS = slicer.util.arrayFromVTKMatrix(sliceToRAS)
    sliceToRAS = np.asarray(sliceToRAS, dtype=float)
    normal = sliceToRAS[:3, 2] / max(np.linalg.norm(sliceToRAS[:3, 2]), 1e-12)
    centre = sliceToRAS[:3, 3]
    axis_dir = slice_center_ras(result.volume, result.axis, 1) - slice_center_ras(
        result.volume, result.axis, 0
    )
    axis_dir = axis_dir / max(np.linalg.norm(axis_dir), 1e-12)
    if abs(float(normal @ axis_dir)) < 0.9:
        return None
    row = row_at_ras(result, centre)
    return None if row is None else row_text(result, row)


# --------------------------------------------------------------------------- 4D series
# A sequence node (Sequences module) or a multi-volume node is assessed frame by frame
# (MotionSSIMLib.series). What is written: a frame x slice table referenced from the sequence
# node (one row per frame: frame, label, verdict, min and mean SSIM, then one SSIM column per
# slice, empty for an empty slice), and for the frame shown, the usual per-slice table, chart
# and overlay (write_assessment) on the node the slice views show: the sequence browser's proxy
# node, or the multi-volume node. An observer on the browser node rewrites those whenever the
# browser shows another frame, so the chart follows the frame.

REF_HEATMAP = "MotionSSIMFrameSliceTable"
SERIES_SUMMARY_ATTRIBUTE = "MotionSSIM.SeriesSummary"
HEATMAP_FIXED_COLUMNS = ("frame", "label", "verdict", "min_ssim", "mean_ssim")
MULTIVOLUME_FRAMES_ATTRIBUTE = "MultiVolume.NumberOfFrames"
MULTIVOLUME_LABELS_ATTRIBUTE = "MultiVolume.FrameLabels"


def is_multivolume(node) -> bool:
    """A multi-volume node (MultiVolumeExplorer): frames as the components of one image."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
        return False
    return node.IsA("vtkMRMLMultiVolumeNode") or (
        node.GetImageData().GetNumberOfScalarComponents() > 1
        and node.GetAttribute(MULTIVOLUME_FRAMES_ATTRIBUTE) is not None)


def series_from_sequence(sequenceNode):
    """The frames of a sequence of scalar volumes as an engine Series (copies of the voxels,
    geometry from the first frame; every frame must have the same matrix and geometry).
    Frame labels are the sequence's index values (`time = 2.5 s`)."""
    from .series import series_from_array

    if sequenceNode is None or not sequenceNode.IsA("vtkMRMLSequenceNode"):
        raise InputError("no input sequence: select a sequence node")
    name = sequenceNode.GetName()
    n = sequenceNode.GetNumberOfDataNodes()
    if n < 1:
        raise InputError(f"{name}: the sequence has no frames")
    arrays, first, labels = [], None, []
    unit = sequenceNode.GetIndexUnit() or ""
    for t in range(n):
        node = sequenceNode.GetNthDataNode(t)
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode") \
                or node.IsA("vtkMRMLLabelMapVolumeNode"):
            kind = node.GetClassName() if node is not None else "nothing"
            raise InputError(f"{name}: frame {t} is {kind}, not a scalar volume")
        vol = volume_from_node(node)
        if first is None:
            first = vol
        elif vol.array.shape != first.array.shape or not np.allclose(
                vol.ijk_to_ras(), first.ijk_to_ras(), atol=1e-4):
            raise InputError(f"{name}: frame {t} has another matrix or geometry than frame 0 "
                             "(a sequence of different volumes, not a 4D series)")
        arrays.append(vol.array)
        labels.append(f"{sequenceNode.GetIndexName() or 'index'} = "
                      f"{sequenceNode.GetNthIndexValue(t)}{(' ' + unit) if unit else ''}")
    return series_from_array(np.stack(arrays), first.spacing, first.directions, first.origin,
                             list(range(n)), labels, n, name=name)


def series_from_multivolume(volumeNode):
    """The frames of a multi-volume node (its scalar components) as an engine Series."""
    from vtk.util.numpy_support import vtk_to_numpy

    from .series import series_from_array

    name = volumeNode.GetName()
    image = volumeNode.GetImageData()
    dims = image.GetDimensions()
    ncomp = image.GetNumberOfScalarComponents()
    flat = vtk_to_numpy(image.GetPointData().GetScalars())
    frames = np.moveaxis(flat.reshape(dims[2], dims[1], dims[0], ncomp), -1, 0).copy()
    matrix = ijk_to_ras_array(volumeNode)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    text = volumeNode.GetAttribute(MULTIVOLUME_LABELS_ATTRIBUTE) or ""
    labels = [v.strip() for v in text.split(",")] if text else []
    if len(labels) != ncomp:
        labels = [""] * ncomp
    return series_from_array(frames, spacing, matrix[:3, :3] / spacing, matrix[:3, 3],
                             list(range(ncomp)), labels, ncomp, name=name)


@dataclass
class SeriesSceneResult:
    """A series assessment in the scene: the frame x slice table, and the per-frame results
    (SceneResult) of the frame shown, which follow the sequence browser."""

    source: Any  # vtkMRMLSequenceNode, or the multi-volume node
    browser: Any  # vtkMRMLSequenceBrowserNode showing the sequence, or None
    display: Any  # the volume node the views show: the browser's proxy, or the multi-volume
    heatmap: Any  # vtkMRMLTableNode, one row per frame
    assessment: Any  # series.SeriesAssessment
    thresholds: Any
    overlay_style: str = "frame"
    frame_result: SceneResult | None = None  # results of the frame shown
    shown_frame: int | None = None  # input index of that frame (None: not assessed)
    observer: int | None = None  # tag of the observer on the browser node


def _write_heatmap_table(table, assessment) -> None:
    frames, slices, ssim, empty = assessment.matrix()
    entries = {e["frame"]: e for e in assessment.summary["frames"]}
    cells = np.where(empty, np.nan, ssim)
    columns = [frames.astype(np.int32),
               np.array([np.nan if entries[int(f)].get("min_ssim") is None
                         else entries[int(f)]["min_ssim"] for f in frames]),
               np.array([np.nan if entries[int(f)].get("mean_ssim") is None
                         else entries[int(f)]["mean_ssim"] for f in frames])]
    names = ["frame", "min_ssim", "mean_ssim"]
    for k, index in enumerate(slices):
        columns.append(cells[:, k])
        names.append(f"slice {int(index)}")
    was_modifying = table.StartModify()
    slicer.util.updateTableFromArray(table, columns, names)
    vtable = table.GetTable()
    ordered = [vtable.GetColumnByName(n) for n in names]
    for _ in range(vtable.GetNumberOfColumns()):
        vtable.RemoveColumn(0)
    texts = {}
    for key in ("label", "verdict"):
        arr = vtk.vtkStringArray()
        arr.SetName(key)
        for f in frames:
            arr.InsertNextValue(str(entries[int(f)].get(key, "")))
        texts[key] = arr
    vtable.AddColumn(ordered[0])
    vtable.AddColumn(texts["label"])
    vtable.AddColumn(texts["verdict"])
    for column in ordered[1:]:
        vtable.AddColumn(column)
    table.SetUseColumnNameAsColumnHeader(True)
    table.SetUseFirstColumnAsRowHeader(False)
    table.SetLocked(True)  # results, not for editing: a click selects a cell
    table.SetColumnDescription("frame", "frame index in the input series")
    table.SetColumnDescription("min_ssim", "lowest predicted SSIM of the frame's slices")
    table.Modified()
    table.EndModify(was_modifying)


def write_series_assessment(source, assessment, thresholds=None, browser=None,
                            overlay_style: str = "frame", follow: bool = True
                            ) -> SeriesSceneResult:
    """Write a series assessment of `source` (a sequence node or a multi-volume node) into
    the scene: the frame x slice table, and the results of the frame shown (the browser's
    selected item, or the first frame) on the node the views show. `follow`: observe the
    browser so that the chart, table and overlay follow the frame it shows."""
    from .classes import ClinicalThresholds

    thresholds = thresholds if thresholds is not None else ClinicalThresholds()
    name = source.GetName()
    heatmap = _get_or_create(source, REF_HEATMAP, "vtkMRMLTableNode",
                             f"{name} MotionSSIM frames x slices", "FrameSliceTable")
    _write_heatmap_table(heatmap, assessment)
    summary = jsonable(assessment.summary)
    heatmap.SetAttribute(SERIES_SUMMARY_ATTRIBUTE, json.dumps(summary))
    heatmap.SetAttribute(AXIS_ATTRIBUTE, assessment.axis)
    heatmap.SetAttribute(ORIENTATION_ATTRIBUTE, assessment.orientation)
    display = source
    if source.IsA("vtkMRMLSequenceNode"):
        display = browser.GetProxyNode(source) if browser is not None else None
    result = SeriesSceneResult(source, browser, display, heatmap, assessment, thresholds,
                               overlay_style)
    shown = browser.GetSelectedItemNumber() if browser is not None else \
        assessment.frames[0].frame
    show_frame(result, shown)
    if follow and browser is not None:
        follow_browser(result)
    return result


def show_frame(result: SeriesSceneResult, frame: int) -> SceneResult | None:
    """Write the per-slice table, chart and overlay of input frame `frame` on the displayed
    node (create or update). None (the nodes left as they were) when that frame was not
    assessed or nothing is displayed (a sequence without a browser)."""
    result.shown_frame = int(frame) if frame is not None else None
    fr = next((f for f in result.assessment.frames if f.frame == frame), None)
    if fr is None or fr.assessment is None or result.display is None:
        return None
    out = write_assessment(result.display, fr.assessment, result.thresholds,
                           result.overlay_style)
    label = f", {fr.label}" if fr.label else ""
    out.chart.SetTitle(f"MotionSSIM: {result.source.GetName()} frame {fr.frame}{label} "
                       f"({fr.assessment.summary.get('verdict', '')})")
    result.frame_result = out
    return out


def follow_browser(result: SeriesSceneResult) -> int | None:
    """Observe the sequence browser: when it shows another frame, show_frame() that frame.
    Returns the observer tag (kept in the result; stop_following removes it)."""
    browser = result.browser
    if browser is None:
        return None
    stop_following(result)

    def on_browser_modified(caller, event) -> None:
        item = caller.GetSelectedItemNumber()
        if item != result.shown_frame:  # other browser changes (playback settings): ignored
            show_frame(result, item)

    result.observer = browser.AddObserver(vtk.vtkCommand.ModifiedEvent, on_browser_modified)
    return result.observer


def stop_following(result: SeriesSceneResult) -> None:
    if result.browser is not None and result.observer is not None:
        result.browser.RemoveObserver(result.observer)
    result.observer = None


def heatmap_cell(result: SeriesSceneResult, row: int, column: int) -> tuple[int, int] | None:
    """(input frame, slice index) of a frame x slice table cell (table row and column), or
    None for the fixed columns (frame, label, verdict, min/mean SSIM) and bad indices."""
    table = result.heatmap.GetTable()
    if not (0 <= row < table.GetNumberOfRows() and 0 <= column < table.GetNumberOfColumns()):
        return None
    name = table.GetColumnName(column) or ""
    if not name.startswith("slice "):
        return None
    return int(table.GetValue(row, 0).ToInt()), int(name.split()[1])


def jump_to_frame_and_slice(result: SeriesSceneResult, frame: int, index: int) -> np.ndarray:
    """Show input frame `frame` (the browser's selected item: the observer updates the chart)
    and move every slice view to slice `index` of it; returns the world RAS point."""
    if result.browser is not None:
        result.browser.SetSelectedItemNumber(int(frame))
    if result.shown_frame != frame:  # no browser, or not observed
        show_frame(result, frame)
    ras = slice_center_ras(result.display, result.assessment.axis, int(index), world=True)
    slicer.vtkMRMLSliceNode.JumpAllSlices(_scene(), float(ras[0]), float(ras[1]), float(ras[2]))
    return ras


def find_browser(node):
    """The sequence browser showing `node` (a proxy node or a sequence node), or None."""
    if node is None:
        return None
    modules = getattr(slicer, "modules", None)  # the application's logic, inside Slicer
    logic = modules.sequences.logic() if hasattr(modules, "sequences") else None
    temporary = logic is None
    if temporary:  # slicer-core: a logic of our own, for the look-up only
        logic = slicer.vtkSlicerSequencesLogic()
        logic.SetMRMLScene(_scene())
    try:
        if node.IsA("vtkMRMLSequenceNode"):
            return logic.GetFirstBrowserNodeForSequenceNode(node)
        return logic.GetFirstBrowserNodeForProxyNode(node)
    finally:
        if temporary:
            logic.SetMRMLScene(None)


def series_source(volumeNode):
    """What a series assessment of the selected volume reads: (sequence node, browser) when
    the volume is a sequence browser's proxy of a sequence with several frames, (the node,
    None) for a multi-volume node, else None (a 3D volume)."""
    if volumeNode is None:
        return None
    if is_multivolume(volumeNode):
        return volumeNode, None
    browser = find_browser(volumeNode)
    if browser is None:
        return None
    sequence = browser.GetSequenceNode(volumeNode)
    if sequence is None or sequence.GetNumberOfDataNodes() < 2:
        return None
    return sequence, browser


def read_series_source(source):
    """The engine Series of a sequence node or a multi-volume node (main thread: MRML)."""
    if source.IsA("vtkMRMLSequenceNode"):
        return series_from_sequence(source)
    return series_from_multivolume(source)


def assess_sequence_node(source, browser=None, model=None, orientation: str = "auto",
                         device: str = "auto", thresholds=None, frames=None,
                         progress: Callable[[int, int], None] | None = None,
                         cancel: Callable[[], bool] | None = None, batch_size: int = 32,
                         min_foreground: float = 0.05, overlay_style: str = "frame",
                         follow: bool = True) -> SeriesSceneResult:
    """Assess every frame of a sequence node (or multi-volume node) slice by slice, with the
    model loaded once, and write the results (write_series_assessment). `browser`: the
    sequence browser whose proxy the views show (found when None); `frames`: a subset as
    `series.parse_frames` accepts (indices into the sequence)."""
    from .classes import ClinicalThresholds
    from .devices import resolve_device
    from .series import assess_series, parse_frames

    thresholds = thresholds if thresholds is not None else ClinicalThresholds()
    if browser is None and source.IsA("vtkMRMLSequenceNode"):
        browser = find_browser(source)
    series = read_series_source(source)
    if frames is not None:
        try:
            chosen = parse_frames(frames, series.n_frames)
        except ValueError as exc:
            raise InputError(f"{source.GetName()}: {exc}") from None
        series = _select_frames(series, chosen)
    dev = resolve_device(device)
    assessment = assess_series(series, model=model, orientation=orientation, device=dev,
                               batch_size=batch_size, thresholds=thresholds,
                               min_foreground=min_foreground, progress=progress,
                               cancel=cancel)
    _record_device(assessment, dev)
    return write_series_assessment(source, assessment, thresholds, browser, overlay_style,
                                   follow)


def _select_frames(series, chosen):
    """The frames `chosen` (input indices) of a Series."""
    from .series import Series

    keep = [series.frame_indices.index(c) for c in chosen]
    return Series(series.array[keep], series.spacing, series.directions, series.origin,
                  tuple(series.frame_indices[k] for k in keep),
                  tuple(series.frame_labels[k] for k in keep), series.n_input_frames,
                  series.name)


class SeriesAssessmentJob(AssessmentJob):
    """AssessmentJob for a sequence or multi-volume node: the frames are copied on the main
    thread, the runner assesses them (series.assess_series, one model load), finish() writes
    the frame x slice table and the shown frame's results, and follows the browser."""

    def __init__(self, source, browser=None, model=None, orientation: str = "auto",
                 device: str = "auto", thresholds=None, min_foreground: float = 0.05,
                 batch_size: int = 4, overlay_style: str = "frame", child=None) -> None:
        self.browser = browser if browser is not None or not source.IsA(
            "vtkMRMLSequenceNode") else find_browser(source)
        super().__init__(source, model=model, orientation=orientation, device=device,
                         thresholds=thresholds, min_foreground=min_foreground,
                         batch_size=batch_size, overlay_style=overlay_style, child=child)

    def _read(self, node):
        return read_series_source(node)

    def _write(self) -> SeriesSceneResult:
        return write_series_assessment(self.volume, self.assessment, self.thresholds,
                                       self.browser, self.overlay_style)
