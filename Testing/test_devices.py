"""One device resolver (MotionSSIMLib.assessment.devices) for assessment, training and
evaluation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from MotionSSIMLib.assessment import devices, inference
from MotionSSIMLib.base.errors import MotionSSIMError, SettingsError
from MotionSSIMLib.training import evaluation, run_state

LIB = Path(devices.__file__).parents[1]  # the engine package


def test_every_caller_uses_the_one_resolver():
    assert inference.resolve_device is devices.resolve_device
    assert run_state.resolve_device is devices.resolve_device
    source = (LIB / "training" / "evaluation.py").read_text(encoding="utf-8")
    assert "from ..assessment.devices import resolve_device" in source
    assert "_resolve_device" not in source
    assert not hasattr(run_state, "_resolve_device") and evaluation is not None


def test_engine_modules_import_the_resolver_from_devices_not_through_inference():
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level and \
                    (node.module or "").rsplit(".", 1)[-1] != "devices":
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


@pytest.fixture(autouse=True)
def _fresh_precision():
    """resolve_precision is cached: the faked CPUs below must neither see nor leave a cached
    answer."""
    inference.resolve_precision.cache_clear()
    yield
    inference.resolve_precision.cache_clear()


def _fake_cpu(monkeypatch, flags: set[str], onednn: bool = True) -> None:
    monkeypatch.setattr(devices, "_cpuinfo", lambda: ("Test CPU", frozenset(flags)))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn,
                        raising=False)
    for var in ("DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "avx512f", "avx512bw"}, False),          # Skylake to Ice Lake: oneDNN emulates
    ({"avx2"}, False),                                 # AVX2 only (AMD Zen 2/3, laptops)
    ({"avx2", "avx512f", "avx512_bf16"}, True),        # Cooper Lake, Zen 4
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, True),  # Sapphire Rapids
])
def test_native_bf16_needs_the_instructions_not_only_onednn(monkeypatch, flags, native):
    _fake_cpu(monkeypatch, flags)
    assert devices.cpu_native_bf16() is native
    assert inference.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    if not native:  # precision auto never picks an emulated bfloat16 path; asked for, refused
        with pytest.raises(SettingsError, match="no native bfloat16"):
            inference.resolve_precision("bf16", "cpu")


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False),
                                         ("SSE41", False), ("AVX512_CORE_BF16", True),
                                         ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_a_onednn_isa_cap_below_bf16_means_no_native_bf16(monkeypatch, cap, native):
    _fake_cpu(monkeypatch, {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", cap)
    assert devices.cpu_native_bf16() is native


def test_onednn_without_bf16_support_is_never_native(monkeypatch):
    _fake_cpu(monkeypatch, {"avx512_bf16", "amx_bf16"}, onednn=False)
    assert devices.cpu_native_bf16() is False


def test_cpu_description_names_the_cpu_and_its_flags():
    d = devices.cpu_description()
    assert d["model"] and d["cores"] >= 1 and set(d["flags"]) == set(devices.ISA_FLAGS)
    assert d["native_bf16"] is devices.cpu_native_bf16() and d["torch"] == torch.__version__
    line = devices.cpu_line()
    assert line.startswith("CPU ") and "\n" not in line and "avx2=" in line
    assert "amx_bf16=" in line and f"torch {torch.__version__}" in line
