"""One device resolver (MotionSSIMLib.devices) for assessment, training and evaluation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from MotionSSIMLib import devices, evaluation, inference, trainer
from MotionSSIMLib.errors import MotionSSIMError, SettingsError

LIB = Path(devices.__file__).parent


def test_every_caller_uses_the_one_resolver():
    assert inference.resolve_device is devices.resolve_device
    assert trainer.resolve_device is devices.resolve_device
    source = (LIB / "evaluation.py").read_text(encoding="utf-8")
    assert "from .devices import resolve_device" in source and "_resolve_device" not in source
    assert not hasattr(trainer, "_resolve_device") and evaluation is not None


def test_engine_modules_import_the_resolver_from_devices_not_through_inference():
    for path in sorted(LIB.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module != "devices":
                names = {alias.name for alias in node.names}
                assert "resolve_device" not in names, f"{path.name}:{node.lineno}"


def test_auto_prefers_cuda_then_mps_then_cpu():
    want = "cuda" if torch.cuda.is_available() else "mps" if devices.mps_available() else "cpu"
    assert devices.resolve_device("auto").type == want
    assert devices.resolve_device(" CPU ").type == "cpu"
    with pytest.raises(SettingsError, match="unknown device"):
        devices.resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_without_a_gpu_is_refused_not_replaced():
    for name in ("cuda", "gpu", "cuda:1"):
        with pytest.raises(MotionSSIMError, match="no CUDA GPU"):
            devices.resolve_device(name, index=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_bare_cuda_takes_the_local_rank():
    assert devices.resolve_device("cuda", index=0) == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:0", index=5) == torch.device("cuda", 0)
