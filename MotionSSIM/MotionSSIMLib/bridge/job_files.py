"""The files an assessment in a child process exchanges with its parent.

Input: the voxels and their geometry (a Volume or a Series) in an uncompressed ``.npz`` (numpy
only, read without pickle: fast to write on Slicer's main thread, exact in every value and in
the IJK-to-RAS geometry). Result: the engine's Assessment or SeriesAssessment as JSON (every
field the scene writer uses), or the error that stopped the child.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..base import errors
from ..base.jsonable import jsonable
from ..imaging.geometry import Volume

RESULT_FORMAT = "motionssim-child-result-1"


def write_input(path: str | os.PathLike, data: Any) -> None:
    """Save a Volume or a Series (series.Series) with its geometry."""
    arrays = {"array": np.ascontiguousarray(data.array),
              "spacing": np.asarray(data.spacing, dtype=float),
              "directions": np.asarray(data.directions, dtype=float),
              "origin": np.asarray(data.origin, dtype=float)}
    if not isinstance(data, Volume):  # a Series: which input frames these are
        arrays.update(frame_indices=np.asarray(data.frame_indices, dtype=np.int64),
                      frame_labels=np.asarray([str(v) for v in data.frame_labels], dtype=str),
                      n_input_frames=np.asarray(int(data.n_input_frames)),
                      name=np.asarray(str(data.name)))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def read_input(path: str | os.PathLike) -> Any:
    """The Volume or Series written by write_input."""
    with np.load(path, allow_pickle=False) as z:
        geometry = (z["array"], tuple(float(v) for v in z["spacing"]), z["directions"],
                    tuple(float(v) for v in z["origin"]))
        if "frame_indices" not in z:
            return Volume(*geometry)
        from ..imaging.series import Series

        return Series(*geometry, tuple(int(v) for v in z["frame_indices"]),
                      tuple(str(v) for v in z["frame_labels"]), int(z["n_input_frames"]),
                      str(z["name"]))


def assessment_to_dict(a: Any) -> dict[str, Any]:
    """An Assessment or SeriesAssessment as plain JSON-able data."""
    if hasattr(a, "records"):
        return {"kind": "volume", **jsonable(a.to_dict())}
    return jsonable({"kind": "series", "orientation": a.orientation, "axis": a.axis,
                     "pixel_spacing": list(a.pixel_spacing), "model": a.model,
                     "summary": a.summary,
                     "frames": [{"frame": f.frame, "label": f.label, "error": f.error,
                                 "assessment": (assessment_to_dict(f.assessment)
                                                if f.assessment is not None else None)}
                                for f in a.frames]})


def assessment_from_dict(d: dict[str, Any]) -> Any:
    """The Assessment or SeriesAssessment that assessment_to_dict wrote."""
    if d["kind"] == "volume":
        from ..assessment.results import Assessment, SliceRecord

        return Assessment([SliceRecord(**r) for r in d["slices"]], d["summary"],
                          d["orientation"], d["axis"], tuple(d["pixel_spacing"]), d["model"])
    from ..assessment.frames import FrameResult, SeriesAssessment

    frames = [FrameResult(f["frame"], f["label"],
                          assessment_from_dict(f["assessment"]) if f["assessment"] else None,
                          f["error"]) for f in d["frames"]]
    return SeriesAssessment(frames, d["summary"], d["orientation"], d["axis"],
                            tuple(d["pixel_spacing"]), d["model"])


def _write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Atomically: the parent never reads half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": RESULT_FORMAT, **data}), encoding="utf-8")
    os.replace(tmp, path)


def write_result(path: str | os.PathLike, assessment: Any) -> None:
    _write_json(path, {"assessment": assessment_to_dict(assessment)})


def write_error(path: str | os.PathLike, exc: BaseException) -> None:
    """A user-facing engine error (MotionSSIMError), re-raised with its type by read_result."""
    _write_json(path, {"error": {"type": type(exc).__name__, "message": str(exc)}})


def read_result(path: str | os.PathLike) -> Any:
    """The assessment in a result file, or raise the error it records (its engine error class:
    InputError, CheckpointError, ...). OSError/ValueError when the file is missing or broken."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path}: not a MotionSSIM child result")
    if "error" in data:
        error = data["error"]
        cls = getattr(errors, str(error.get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.MotionSSIMError)):
            cls = errors.MotionSSIMError
        raise cls(error.get("message", ""))
    return assessment_from_dict(data["assessment"])
