"""Model files: safetensors weights plus JSON metadata in the header. Nothing is unpickled.

A checkpoint is one `.safetensors` file. Its header metadata holds, under the key "motionssim",
a JSON object: format "motionssim-checkpoint", format_version, architecture, input_size,
ssim_convention, dtype, uncertainty, and whatever the trainer adds (training data summary,
schedule, metrics). `uncertainty` says where the model's per-slice uncertainty comes from:
{"kind": "head", ...its calibration} for a network with the uncertainty head (one forward
pass gives the SSIM and the sd of its error; format_version 2, which older MotionSSIM refuses
with "update MotionSSIM" rather than a weight mismatch), {"kind": "views"} otherwise (the
spread over flipped and transposed views, format_version 1). A file that is not such a checkpoint (a pickle or torch.save file, a truncated file,
another network's weights) is refused with a one-line CheckpointError naming the file; pickles
are recognised by their first bytes and never opened by an unpickler.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..base.errors import CheckpointError
from ..base.jsonable import jsonable
from ..base.resources import model_file
from .model import ARCHITECTURES, architecture_of, build_model, has_uncertainty_head, unwrap

FORMAT = "motionssim-checkpoint"
FORMAT_VERSION = 2  # the newest this code reads and writes (2: the uncertainty head)
HEAD_FORMAT_VERSION = 2
METADATA_KEY = "motionssim"
INPUT_SIZE = [256, 256]
SSIM_CONVENTION = ("skimage.metrics.structural_similarity(clean, corrupted, data_range=1.0), "
                   "7x7 uniform window, both images 256x256 model-input geometry, each min-max "
                   "normalised to [0, 1]")
DEFAULT_MODEL_NAME = "motionssim_resnet18.safetensors"
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# pickle protocol 2+ (also legacy torch.save) / zip archive (torch.save since 1.6)
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")
UNCERTAINTY_KINDS = ("views", "head")
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


@dataclass
class LoadedModel:
    model: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


def default_model_path() -> Path:
    """The bundled default model, MotionSSIM/Resources/Models/motionssim_resnet18.safetensors."""
    return model_file(DEFAULT_MODEL_NAME)


def save_checkpoint(path: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write `model`'s weights (stored as `dtype`) and metadata atomically to a .safetensors file.

    The file appears complete or not at all: it is written to a temporary file in the same
    folder and renamed over `path`. DDP / torch.compile wrappers are unwrapped. ValueError when
    the network is not one of ARCHITECTURES, the metadata names another architecture, or the
    weights do not fit `dtype`.
    """
    from safetensors.torch import save_file

    from ..base.version import __version__

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"checkpoint dtype must be one of {STORAGE_DTYPES}, got {dtype}")
    path = Path(path)
    net = unwrap(model)
    arch = architecture_of(net)
    meta = dict(metadata or {})
    if meta.get("architecture", arch) != arch:
        raise ValueError(f"metadata says architecture {meta['architecture']!r} but the network "
                         f"is a {arch}")
    head = has_uncertainty_head(net)
    unc = meta.get("uncertainty") if isinstance(meta.get("uncertainty"), dict) else {}
    if head:
        meta["uncertainty"] = {**unc, "kind": "head"}
    else:
        meta["uncertainty"] = {"kind": "views"}
    meta.update(format=FORMAT, format_version=HEAD_FORMAT_VERSION if head else 1,
                architecture=arch,
                input_size=list(INPUT_SIZE), ssim_convention=SSIM_CONVENTION,
                dtype=str(dtype).replace("torch.", ""), motionssim_version=__version__)
    header = json.dumps(jsonable(meta))
    tensors = {}
    for name, value in net.state_dict().items():
        t = value.detach().to("cpu")
        if t.is_floating_point():
            stored = t.to(dtype)
            if bool(torch.isfinite(t).all()) and not bool(torch.isfinite(stored).all()):
                raise ValueError(f"weight {name} does not fit {dtype}; save as torch.float32")
            t = stored
        tensors[name] = t.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: header})
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model file is meant to be shared
        with open(tmp, "rb") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its weights (CheckpointError if the
    file is not a MotionSSIM checkpoint)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        if path.resolve() == default_model_path():
            raise CheckpointError(
                f"{path}: no bundled model is installed (train one with `motionssim train "
                "--data DATA --out runs/r18` and pass --model runs/r18/best.safetensors)")
        raise CheckpointError(f"{path}: model file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a model file")
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the open, a device never end
            raise CheckpointError(f"{path}: not a regular file (a FIFO, device or socket); "
                                  "expected a model file")
        size = st.st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({_first_line(exc)})") from None
    # safetensors: 8-byte little-endian header length, then the JSON header
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    looks_safetensors = head[8:9] == b"{" and 0 < header_len <= min(size - 8, _MAX_HEADER)
    if not looks_safetensors:
        if head.startswith(_PICKLE_MAGIC):
            raise CheckpointError(f"{path}: this is a pickle/PyTorch file, not a MotionSSIM "
                                  "checkpoint; refusing to unpickle it")
        what = "empty file" if size == 0 else "truncated or not a safetensors file"
        raise CheckpointError(f"{path}: not a MotionSSIM checkpoint ({what})")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file "
                              f"({_first_line(exc)})") from None
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path}: safetensors file without MotionSSIM metadata; "
                              "not a MotionSSIM checkpoint")
    try:
        meta = json.loads(header[METADATA_KEY])
    except RecursionError:  # deeply nested JSON: refused, not a traceback
        raise CheckpointError(f"{path}: MotionSSIM metadata nested too deeply; not a "
                              "MotionSSIM checkpoint") from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: MotionSSIM metadata is not valid JSON "
                              f"({_first_line(exc)[:80]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: not a MotionSSIM checkpoint (format {found!r})")
    raw_version = meta.get("format_version", 0)
    # an integer (1e400 parses as float inf, 1.5 is no version, True is no number)
    if isinstance(raw_version, float) and np.isfinite(raw_version) and raw_version.is_integer():
        raw_version = int(raw_version)
    version = raw_version if isinstance(raw_version, int) and not isinstance(raw_version, bool) \
        else -1
    if version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint format_version "
                              f"{str(meta.get('format_version'))[:40]}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than "
                              f"this MotionSSIM reads ({FORMAT_VERSION}); update MotionSSIM")
    if not isinstance(meta.get("architecture"), str) or meta["architecture"] not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture "
                              f"{str(meta.get('architecture'))[:40]!r} "
                              f"(known: {', '.join(ARCHITECTURES)})")
    unc = meta.get("uncertainty", {"kind": "views"})
    if not isinstance(unc, dict) or unc.get("kind") not in UNCERTAINTY_KINDS:
        what = unc.get("kind") if isinstance(unc, dict) else unc
        raise CheckpointError(f"{path}: unknown uncertainty {str(what)[:40]!r} "
                              f"(known: {', '.join(UNCERTAINTY_KINDS)})")
    return meta


def uncertainty_kind(meta: dict[str, Any]) -> str:
    """"head" for a checkpoint with the uncertainty head, else "views"."""
    unc = meta.get("uncertainty")
    return unc.get("kind", "views") if isinstance(unc, dict) else "views"


def load_checkpoint(path: str | Path | None = None, device: str | torch.device = "cpu",
                    ) -> LoadedModel:
    """Load a checkpoint (default: the bundled model) as an eval-mode float32 network."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_model_path()
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated weights ({_first_line(exc)})"
                              ) from None
    model = build_model(meta["architecture"], uncertainty_head=uncertainty_kind(meta) == "head")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or extra or wrong:
        first = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                 else f"{wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}")
        raise CheckpointError(f"{path}: weights do not match a {meta['architecture']} "
                              f"(a different network? {first})")
    # weights stored as STORAGE_DTYPES only (int8 and other quantised or exotic types would be
    # cast silently and fail, or mislead, later); integer buffers (BatchNorm's batch counter)
    # stay integers
    for k, v in tensors.items():
        want_float = expected[k].is_floating_point()
        if (want_float and v.dtype not in STORAGE_DTYPES) or \
                (not want_float and (v.is_floating_point() or v.is_complex()
                                     or v.dtype == torch.bool)):
            kind = "float32, float16 or bfloat16" if want_float else "an integer"
            raise CheckpointError(f"{path}: weight {k} is stored as "
                                  f"{str(v.dtype).replace('torch.', '')}; MotionSSIM reads "
                                  f"{kind} there (unsupported weight type)")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: weights contain NaN or infinite values ({bad[0]})")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return LoadedModel(model.to(device).eval(), meta, str(path))
