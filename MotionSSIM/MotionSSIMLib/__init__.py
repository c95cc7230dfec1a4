"""MotionSSIM engine: reference-free per-slice SSIM prediction for motion artefacts in brain MR.

Importing the package is cheap (no torch): the public names below are loaded on first use, so
the Slicer module can import it before torch is installed and offer to install it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "predict_slices": "inference",
    "assess_volume": "inference",
    "resolve_device": "devices",
    "Assessment": "results",
    "SliceRecord": "results",
    "build_model": "model",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "default_model_path": "checkpoint",
    "read_input": "io",
    "read_volume": "io",
    "Volume": "geometry",
    "volume": "geometry",
    "extract_slices": "geometry",
    "to_model_input": "geometry",
    "ClinicalThresholds": "classes",
    "clinical_class": "classes",
    "uniform_class": "classes",
    "MotionSSIMError": "errors",
    "InputError": "errors",
    "CheckpointError": "errors",
    "SettingsError": "errors",
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
