"""What a training process needs around its loop: the random state saved with a resumable run,
atomic files, stop requests (signals, a stop file) and torch.distributed set-up."""

from __future__ import annotations

import contextlib
import io as _io
import os
import random
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.errors import InputError
from ..base.settings import TrainSettings

__all__ = ["Dist", "StopFlag", "atomic_torch_save", "atomic_write_bytes", "init_distributed",
           "rng_state", "set_rng_state"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = _io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    if saved.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different GPU count: not critical
            torch.cuda.set_rng_state_all(saved["cuda"])
    n = saved["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = saved["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


class StopFlag:
    """Set by SIGTERM/SIGINT (main thread only) or by a `stop` file in the output folder."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.signalled = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except (ValueError, OSError):
                pass

    def _handler(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def restore(self) -> None:
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, old)
        self._old.clear()

    def requested(self) -> bool:
        return self.signalled or self.stop_file.exists()


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False
    owned: bool = False    # we initialised the process group (and destroy it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        if not self.enabled:
            return flag
        return self.all_sum([1.0 if flag else 0.0], device)[0] > 0

    def broadcast(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(settings: TrainSettings) -> Dist:
    want = settings.distributed
    if want is None:
        want = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not want:
        return Dist()
    import torch.distributed as dist

    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", "0")), True, False)
    use_cuda = settings.device.startswith("cuda") or (
        settings.device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        if var not in os.environ:
            raise InputError(f"distributed training needs the environment variable {var} "
                             "(start it with torchrun)")
    dist.init_process_group(backend=backend, init_method="env://")
    return Dist(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", "0")), True, True)
