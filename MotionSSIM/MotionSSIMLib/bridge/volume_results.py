"""The results of one volume's assessment in the Slicer scene, and the interaction with them.

What one assessment writes, all found again through node references from the input volume node,
so that assessing the same volume twice updates the same nodes:

- a results table (one row per slice: index, position in mm, SSIM, class, foreground, empty),
- a plot table + chart (grey line over all slices, one scatter series per class, empty slices
  as grey crosses, the two clinical thresholds as dashed lines),
- a labelmap overlay with the input geometry whose voxels of each slice carry that slice's label
  (1 good, 2 sufficient, 3 insufficient, 4 empty) and a shared user colour table.

Interaction: the table row of a point picked in the chart or of a slice view's position, a
jump of every slice view to a row's slice, and the corner-annotation text of a view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import slicer
import vtk

from ..assessment.classes import CLASS_COLOURS, CLASS_LABELS, CLINICAL_NAMES, SLICE_COLUMNS
from ..base.jsonable import jsonable
from .nodes import (
    AXES,
    AXIS_ATTRIBUTE,
    ORIENTATION_ATTRIBUTE,
    ROLE_ATTRIBUTE,
    SUMMARY_ATTRIBUTE,
    THRESHOLDS_ATTRIBUTE,
    _get_or_create,
    _referenced,
    _scene,
    _world_to_local,
    ijk_to_ras_array,
    slice_center_ras,
)

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
        "ssim_sd": ("uncertainty of the predicted SSIM (sd): the model's uncertainty head, or "
                    "the spread over flipped/transposed views", ""),
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
    from ..assessment.classes import ClinicalThresholds

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
