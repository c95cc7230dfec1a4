"""MotionSSIM engine: reference-free per-slice SSIM prediction for motion artefacts in brain MR.

Importing the package is cheap (no torch): the public names below are loaded on first use, so
the Slicer module can import it before torch is installed and offer to install it.

The engine lives in wings, one folder per role; each wing's ``__init__`` says what it holds and
which wings it may import (Testing/test_layering.py holds every import to that).

Wings, bottom to top: base, imaging, assessment, simulation, synthesis, training, archives,
bridge.

Above them sit this file, ``cli`` (the command line) and ``__main__``: they may import any wing,
and no wing imports them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base.version import __version__

# public name -> the module (under this package) that defines it
_EXPORTS = {
    "predict_slices": "assessment.inference",
    "assess_volume": "assessment.inference",
    "resolve_device": "assessment.devices",
    "Assessment": "assessment.results",
    "SliceRecord": "assessment.results",
    "assess_series": "assessment.frames",
    "SeriesAssessment": "assessment.frames",
    "write_report": "assessment.report",
    "write_series_report": "assessment.report",
    "build_model": "assessment.model",
    "load_checkpoint": "assessment.checkpoint",
    "save_checkpoint": "assessment.checkpoint",
    "default_model_path": "assessment.checkpoint",
    "ClinicalThresholds": "assessment.classes",
    "clinical_class": "assessment.classes",
    "uniform_class": "assessment.classes",
    "read_input": "imaging.io",
    "read_volume": "imaging.io",
    "read_series": "imaging.io",
    "Series": "imaging.series",
    "Volume": "imaging.geometry",
    "volume": "imaging.geometry",
    "extract_slices": "imaging.geometry",
    "to_model_input": "imaging.geometry",
    "MotionSSIMError": "base.errors",
    "InputError": "base.errors",
    "CheckpointError": "base.errors",
    "SettingsError": "base.errors",
    "Cancelled": "base.errors",
    # the Slicer bridge (needs slicer and vtk: inside Slicer or with the slicer-core wheel)
    "assess_volume_node": "bridge.node_jobs",
    "assess_sequence_node": "bridge.node_jobs",
    "SceneResult": "bridge.volume_results",
    "SeriesSceneResult": "bridge.series_results",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'MotionSSIMLib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
