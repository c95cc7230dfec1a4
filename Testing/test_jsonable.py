"""The one JSON-cleaning rule (jsonable) that reports, scene attributes, evaluation reports and
checkpoint metadata share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from MotionSSIMLib.base.jsonable import jsonable


@dataclass
class _Record:
    index: int
    ssim: float


def test_numpy_torch_paths_dataclasses_and_non_finite_become_plain_json():
    value = {
        1: np.float32(0.5), "n": np.int64(7), "flag": np.bool_(True), "nan": np.float64("nan"),
        "inf": float("inf"), "grid": np.arange(4).reshape(2, 2), "pair": (1, np.float64(2.5)),
        "path": Path("a") / "b.nii.gz", "dtype": torch.float16, "device": torch.device("cpu"),
        "record": _Record(3, float("nan")), "tensor": torch.tensor([1.0, float("nan")]),
    }
    cleaned = jsonable(value)
    assert cleaned == {
        "1": 0.5, "n": 7, "flag": True, "nan": None, "inf": None, "grid": [[0, 1], [2, 3]],
        "pair": [1, 2.5], "path": str(Path("a") / "b.nii.gz"), "dtype": "torch.float16",
        "device": "cpu", "record": {"index": 3, "ssim": None}, "tensor": [1.0, None],
    }
    assert type(cleaned["n"]) is int and type(cleaned["flag"]) is bool
    assert type(cleaned["1"]) is float
    # strict JSON: no NaN token anywhere
    json.loads(json.dumps(cleaned, allow_nan=False))


def test_other_objects_are_left_for_json_to_refuse():
    thing = object()
    assert jsonable({"x": thing})["x"] is thing
    with pytest.raises(TypeError):
        json.dumps(jsonable({"x": thing}))
