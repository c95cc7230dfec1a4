"""The Training module's live loss chart: read a run's log.csv and show it as an MRML table and
plot chart (one per output folder, updated in place as the log grows).

The MotionSSIMTraining module runs `train.py` in a separate process and follows its log.csv;
this lives in the engine so that it is tested outside Slicer against the trainer's real log
format (the command lines come from `settings`). MRML and `slicer.util` only, like the rest of the bridge.
"""

from __future__ import annotations

import numpy as np
import slicer

from .nodes import ROLE_ATTRIBUTE, _scene
from .volume_results import REF_SERIES_PREFIX

__all__ = ["TRAINING_LOG_SERIES", "read_training_log", "write_training_chart"]

TRAINING_LOG_SERIES = ("train_loss", "val_loss")
TRAINING_COLORS = {"train_loss": (0.20, 0.40, 0.85), "val_loss": (0.90, 0.45, 0.10)}
TRAINING_OUT_ATTRIBUTE = "MotionSSIM.TrainingOutput"


def read_training_log(path) -> dict[str, np.ndarray]:
    """log.csv of a training run as float columns ('nan' for a missing value); {} if absent.

    The trainer rewrites the file atomically, so a partly written file is never seen.
    """
    import csv
    import os

    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]

    def number(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return float("nan")

    return {name: np.array([number(r[i]) for r in body], dtype=np.float64)
            for i, name in enumerate(header)}


def write_training_chart(log: dict[str, np.ndarray], out: str, title: str | None = None):
    """Show a training log (read_training_log) as a loss chart; one table/chart per output folder.

    Returns (table, chart, {series key: series node}). Calling it again with a longer log
    updates the same nodes (the panel calls it every time log.csv changes).
    """
    scene = _scene()
    out = str(out)
    table = chart = None
    for className in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode"):
        nodes = scene.GetNodesByClass(className)
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.GetAttribute(TRAINING_OUT_ATTRIBUTE) == out:
                if className == "vtkMRMLTableNode":
                    table = node
                else:
                    chart = node
    name = title or f"MotionSSIM training {out}"
    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} log")
        table.SetAttribute(TRAINING_OUT_ATTRIBUTE, out)
        table.SetAttribute(ROLE_ATTRIBUTE, "TrainingLog")
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} loss")
        chart.SetAttribute(TRAINING_OUT_ATTRIBUTE, out)
        chart.SetAttribute(ROLE_ATTRIBUTE, "TrainingChart")
    epochs = log.get("epoch", np.zeros(0))
    columns = [epochs.astype(np.float64)]
    names = ["epoch"]
    for key in TRAINING_LOG_SERIES + ("val_mae", "lr"):
        values = log.get(key, np.full(len(epochs), np.nan))
        columns.append(values.astype(np.float64))
        names.append(key)
    slicer.util.updateTableFromArray(table, columns, names)
    series = {}
    for key in TRAINING_LOG_SERIES:
        node = chart.GetNodeReference(REF_SERIES_PREFIX + key)
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {key}")
            node.SetAttribute(ROLE_ATTRIBUTE, f"TrainingSeries.{key}")
            chart.SetNodeReferenceID(REF_SERIES_PREFIX + key, node.GetID())
            chart.AddAndObservePlotSeriesNodeID(node.GetID())
        node.SetName(key.replace("_", " "))
        node.SetAndObserveTableNodeID(table.GetID())
        node.SetXColumnName("epoch")
        node.SetYColumnName(key)
        node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        node.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        node.SetMarkerSize(5)
        node.SetColor(*TRAINING_COLORS[key])
        series[key] = node
    chart.SetTitle(name)
    chart.SetXAxisTitle("epoch")
    chart.SetYAxisTitle("loss (MSE of SSIM)")
    chart.SetLegendVisibility(True)
    return table, chart, series
