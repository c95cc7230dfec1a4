"""One training run's state: device and precision, model and optimizer, progress, and the
files it writes.

`_Run` holds what `trainer` steps through and what `state.pt` saves: settings, epoch, step,
position in the epoch, loss sums, clocks, best epoch, log history, the data lists and the RNG
states (`train_support.rng_state`). `state.pt` holds only tensors and plain containers (dict,
list, tuple, str, int, float, bool, None), so `torch.load(weights_only=True)` reads it and no
saved state depends on where a class lives in the package (Testing/test_trainer.py checks it).
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..assessment.devices import cpu_native_bf16, resolve_device
from ..base.errors import MotionSSIMError
from ..base.settings import TrainSettings
from .train_support import (
    Dist,
    atomic_torch_save,
    atomic_write_bytes,
    rng_state,
    set_rng_state,
)

__all__ = ["LOG_COLUMNS"]

LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_mae", "val_residual_sd", "lr",
               "samples_per_s", "elapsed_s")
STATE_FORMAT = "motionssim-train-state"
STATE_VERSION = 1


def _default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, n - 1))


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ----------------------------------------------------------------------------- the trainer


class _Run:
    """One training run (fresh or resumed): state and the steps of the loop."""

    def __init__(self, settings: TrainSettings, out_dir: Path, dist: Dist) -> None:
        self.settings = settings
        self.out = out_dir
        self.dist = dist
        self.device = resolve_device(settings.device, index=dist.local_rank)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.set_device(self.device)
        # Channels-last is what oneDNN's and cuDNN's fast convolutions want: measured here on a
        # 2-core CPU, a bf16 ResNet-18 training step runs 32 samples/s channels-last against 22
        # in the default layout.
        self.channels_last = bool(settings.channels_last)
        self.amp_dtype: torch.dtype | None = None
        if settings.amp and self.cuda:
            self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported()
                              else torch.float16)
        elif settings.amp and self.device.type == "cpu" and cpu_native_bf16():
            # bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX): about 2.4x faster
            # ResNet-18 training steps measured here, and bf16 needs no loss scaling.
            self.amp_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        pipe = settings.pipeline
        if pipe == "auto":
            pipe = "device" if self.cuda else "workers"
        self.pipe = pipe
        self.workers = _default_workers() if settings.workers is None else int(settings.workers)
        # progress of the run
        self.epoch = 0
        self.next_batch = 0
        self.step = 0
        self.epoch_se = 0.0
        self.epoch_n = 0
        self.epoch_time = 0.0
        self.elapsed = 0.0
        self.best = math.inf
        self.best_epoch = -1
        self.history: list[dict] = []
        self.calibration: list[torch.Tensor] = []  # batches for calibrate_batchnorm
        self.data_summary: dict[str, Any] = {}
        self.train_paths: list[str] = []
        self.val_paths: list[str] = []

    # -- model ---------------------------------------------------------------------------

    def build(self, load_init: bool = True) -> None:
        from ..assessment.model import (
            build_model,  # looked up at call time (tests substitute a spy)
        )

        torch.manual_seed(self.settings.seed)  # the same initial weights for the same seed
        net = build_model(self.settings.architecture)
        if self.settings.init_from and load_init:
            from ..assessment.checkpoint import load_checkpoint

            init = load_checkpoint(self.settings.init_from)
            if init.metadata["architecture"] != self.settings.architecture:
                raise MotionSSIMError(f"{self.settings.init_from}: a {init.metadata['architecture']} "
                                      f"checkpoint cannot initialise a {self.settings.architecture}")
            # the backbone only: an uncertainty head describes the errors of the weights it was
            # fitted on, and fine-tuning changes them (fit a new head on the result)
            net.load_state_dict({k: v for k, v in init.model.state_dict().items()
                                 if not k.startswith("uncertainty.")})
        if self.settings.freeze:
            from ..assessment.model import freeze_stages

            freeze_stages(net, self.settings.freeze)
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.optimizer = torch.optim.Adam(net.parameters(), lr=self.settings.lr)
        if self.dist.enabled:
            ids = [self.device.index] if self.cuda else None
            self.model: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=ids)
        else:
            self.model = net

    # -- state -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "settings": asdict(self.settings),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "next_batch": self.next_batch, "step": self.step,
            "epoch_se": self.epoch_se, "epoch_n": self.epoch_n, "epoch_time": self.epoch_time,
            "elapsed": self.elapsed, "best": self.best, "best_epoch": self.best_epoch,
            "history": self.history, "data": self.data_summary,
            "train_paths": self.train_paths, "val_paths": self.val_paths,
            "rng": rng_state(),
        }

    def save_state(self) -> None:
        if self.dist.main:
            atomic_torch_save(self.state(), self.out / "state.pt")

    def load_state(self, st: dict[str, Any]) -> None:
        self.net.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        if st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        for k in ("epoch", "next_batch", "step", "epoch_n", "best_epoch"):
            setattr(self, k, int(st[k]))
        for k in ("epoch_se", "epoch_time", "elapsed", "best"):
            setattr(self, k, float(st[k]))
        self.history = list(st["history"])
        set_rng_state(st["rng"])

    # -- logs and checkpoints --------------------------------------------------------------

    def write_logs(self, status: str) -> None:
        if not self.dist.main:
            return
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(LOG_COLUMNS)
        for row in self.history:
            w.writerow(["nan" if row[c] is None else row[c] for c in LOG_COLUMNS])
        atomic_write_bytes(self.out / "log.csv", buf.getvalue().encode())
        doc = {
            "status": status, "settings": asdict(self.settings), "device": str(self.device),
            "world_size": self.dist.world, "pipeline": self.pipe, "workers": self.workers,
            "best_epoch": self.best_epoch if self.best_epoch >= 0 else None,
            "best_loss": _finite_or_none(self.best), "data": self.data_summary,
            "columns": list(LOG_COLUMNS), "history": self.history,
        }
        atomic_write_bytes(self.out / "log.json", json.dumps(doc, indent=1).encode())

    def metadata(self, metrics: dict[str, Any]) -> dict[str, Any]:
        settings = self.settings
        return {
            "architecture": settings.architecture,
            # checkpoint.py records the inference contract (input_size 256); the size this
            # network was trained at is kept apart (it differs only in tests).
            "train_input_size": settings.input_size,
            "training_data": self.data_summary,
            "schedule": {**{k: getattr(settings, k) for k in (
                "epochs", "samples_per_epoch", "batch_size", "lr")},
                "optimizer": "Adam", "loss": "MSE", "contrast_augmentation": settings.contrast,
                **{k: getattr(settings, k) for k in (
                    "p_torchio", "motion_families", "seed", "slices", "acquisition",
                    "storage", "p_clean", "array_noise",
                    "band_noise", "lr_schedule",
                    "bn_calibration")},
                "world_size": self.dist.world},
            "epoch": self.epoch + 1,
            "step": self.step,
            "metrics": metrics,
        }

    def save_checkpoints(self, metrics: dict[str, Any], best: bool) -> None:
        if not self.dist.main:
            return
        from ..assessment.checkpoint import save_checkpoint

        meta = self.metadata(metrics)
        save_checkpoint(self.out / "last.safetensors", self.net, meta)
        if best:
            save_checkpoint(self.out / "best.safetensors", self.net, meta)
