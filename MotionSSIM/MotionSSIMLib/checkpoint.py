"""Model files: safetensors weights plus JSON metadata in the header. Nothing is unpickled.

A file that is not a MotionSSIM checkpoint (a pickle, a truncated file, another network) is
refused with a one-line CheckpointError naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .model import ARCHITECTURES, build_model

FORMAT = "motionssim-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "motionssim"
SSIM_CONVENTION = ("skimage.metrics.structural_similarity(clean, corrupted, data_range=1.0), "
                   "7x7 uniform window, both images 256x256 model-input geometry, each min-max "
                   "normalised to [0, 1]")
DEFAULT_MODEL_NAME = "motionssim_resnet18.safetensors"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ / zip (torch.save)


@dataclass
class LoadedModel:
    model: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


def default_model_path() -> Path:
    """The bundled default model, MotionSSIM/Resources/Models/motionssim_resnet18.safetensors."""
    return Path(__file__).resolve().parents[1] / "Resources" / "Models" / DEFAULT_MODEL_NAME


def save_checkpoint(path: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write `model`'s weights (as `dtype`) and metadata atomically to a .safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    module = getattr(model, "module", model)  # unwrap DDP
    meta = dict(metadata or {})
    meta.setdefault("architecture", getattr(module, "motionssim_architecture", "resnet18"))
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, input_size=[256, 256],
                ssim_convention=SSIM_CONVENTION, dtype=str(dtype).replace("torch.", ""))
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta)})
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model file is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        if path == default_model_path():
            raise CheckpointError(f"{path}: no bundled model is installed; train one with "
                                  "`python -m MotionSSIMLib train` and pass --model")
        raise CheckpointError(f"{path}: model file not found")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then the JSON header
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    looks_safetensors = head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8
    if not looks_safetensors and head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{path}: this is a pickle/PyTorch file, not a MotionSSIM "
                              "checkpoint; refusing to unpickle it")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file "
                              f"({str(exc).splitlines()[0][:120]})") from None
    try:
        meta = json.loads(header[METADATA_KEY])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: safetensors file without MotionSSIM metadata; "
                              "not a MotionSSIM checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a MotionSSIM checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta['format_version']} is "
                              "newer than this MotionSSIM; update MotionSSIM")
    if meta.get("architecture") not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {meta.get('architecture')!r}")
    return meta


def load_checkpoint(path: str | Path | None = None, device: str | torch.device = "cpu",
                    ) -> LoadedModel:
    """Load a checkpoint (default: the bundled model) as an eval-mode float32 network."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_model_path()
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated weights "
                              f"({str(exc).splitlines()[0][:120]})") from None
    model = build_model(meta["architecture"])
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(
            tensors[k].shape != expected[k].shape for k in expected):
        raise CheckpointError(f"{path}: weights do not match a {meta['architecture']} "
                              "(a different network?)")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    model.motionssim_architecture = meta["architecture"]
    return LoadedModel(model.to(device).eval(), meta, str(path))
