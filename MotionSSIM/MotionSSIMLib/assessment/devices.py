"""Where torch runs: one resolver of device names for assessment, training and evaluation, and
what the CPU can do natively."""

from __future__ import annotations

import functools

import torch

from ..base.errors import MotionSSIMError, SettingsError

__all__ = ["ISA_FLAGS", "cpu_description", "cpu_line", "cpu_native_bf16", "mps_available", "resolve_device"]


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


# oneDNN ISA caps (DNNL_MAX_CPU_ISA / ONEDNN_MAX_CPU_ISA) at or above the first with bfloat16
# instructions: a lower cap makes oneDNN emulate bfloat16, many times slower than float32.
_DNNL_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                   "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX",
                   "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT"}


def cpu_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively: oneDNN supports it, the hardware has the
    instructions (AVX512-BF16 or AMX on x86, BF16 on Arm) and no ISA cap rules them out. oneDNN
    alone also says yes on AVX-512 CPUs without them (Skylake to Ice Lake), where it emulates."""
    import os

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(var, "").strip().upper()
        if cap and cap not in _DNNL_BF16_ISAS:
            return False
    _, flags = _cpuinfo()
    # no /proc/cpuinfo (macOS): oneDNN's word stands
    return not flags or bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


# The instruction-set flags that decide which kernels torch and oneDNN can run fast here.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo; ("", set()) where there is none (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 20)
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_description() -> dict:
    """What this CPU offers and what torch will use of it, for benchmarks and CI logs: the model,
    the logical cores, the ISA flags the hardware reports (ISA_FLAGS), the kernels ATen
    dispatches to (narrowed by ATEN_CPU_CAPABILITY) and whether oneDNN runs bfloat16 natively
    (narrowed by DNNL_MAX_CPU_ISA): the flags alone say nothing of the last two."""
    import os
    import platform

    model, flags = _cpuinfo()
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return {"model": model or platform.processor() or platform.machine(),
            "cores": os.cpu_count() or 1,
            "flags": {f: f in flags for f in ISA_FLAGS},
            "aten_capability": capability,
            "native_bf16": cpu_native_bf16(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def cpu_line() -> str:
    """`cpu_description` in one line."""
    d = cpu_description()
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in d["flags"].items())
    return (f"CPU {d['model']} ({d['cores']} logical cores; {flags}); torch {d['torch']}, "
            f"{d['threads']} threads, ATen kernels {d['aten_capability']}, native bf16 "
            f"{'yes' if d['native_bf16'] else 'no (emulated: not used)'}")


def resolve_device(device: str | torch.device = "auto", index: int | None = None) -> torch.device:
    """`auto` = CUDA when available, else Apple MPS, else CPU. Asking for CUDA (or MPS) where
    there is none is an error, not a silent fall-back. `index`: the GPU a bare "cuda" means
    (a torchrun process's local rank); by default torch's current one."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MotionSSIMError(f"device {device!r}: no CUDA GPU is available to PyTorch "
                                  f"{torch.__version__}; use --device cpu")
        if name.startswith("cuda:"):
            return torch.device(name)
        return torch.device("cuda") if index is None else torch.device("cuda", index)
    if name == "mps":
        if not mps_available():
            raise MotionSSIMError("device 'mps': Apple MPS is not available; use --device cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise SettingsError(f"unknown device {str(device)[:40]!r}: use auto, cpu, cuda or mps")
