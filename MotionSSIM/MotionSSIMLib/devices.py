"""Where torch runs: one resolver of device names for assessment, training and evaluation, and
what the CPU can do natively."""

from __future__ import annotations

import torch

from .errors import MotionSSIMError, SettingsError

__all__ = ["cpu_native_bf16", "mps_available", "resolve_device"]


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def cpu_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (oneDNN: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
