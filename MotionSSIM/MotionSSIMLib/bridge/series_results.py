"""A 4D series in the scene: sequence and multi-volume nodes read as an engine Series, and
a series assessment written back.

A sequence node (Sequences module) or a multi-volume node is assessed frame by frame
(`assessment.frames`). What is written: a frame x slice table referenced from the sequence
node (one row per frame: frame, label, verdict, min and mean SSIM, then one SSIM column per
slice, empty for an empty slice), and for the frame shown, the usual per-slice table, chart
and overlay (`volume_results.write_assessment`) on the node the slice views show: the sequence
browser's proxy node, or the multi-volume node. An observer on the browser node rewrites those
whenever the browser shows another frame, so the chart follows the frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import vtk

from ..base.errors import InputError
from ..base.jsonable import jsonable
from .nodes import (
    AXIS_ATTRIBUTE,
    ORIENTATION_ATTRIBUTE,
    _get_or_create,
    _scene,
    ijk_to_ras_array,
    slice_center_ras,
    volume_from_node,
)
from .volume_results import SceneResult, write_assessment

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
    from ..imaging.series import series_from_array

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

    from ..imaging.series import series_from_array

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
    from ..assessment.classes import ClinicalThresholds

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
