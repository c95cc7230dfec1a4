"""Training loop: MSE regression of the SSIM label with Adam, on-the-fly corrupted slices.

Files in the output folder (only the first process writes them):
- ``best.safetensors`` / ``last.safetensors``: model checkpoints (`checkpoint.save_checkpoint`)
  after the epoch with the lowest validation loss / after the latest epoch;
- ``state.pt``: everything needed to resume (model, optimizer, epoch, step, position in the
  epoch, RNG states, log history), written atomically after every epoch and every
  ``checkpoint_every`` steps; loaded with ``torch.load(weights_only=True)``;
- ``log.csv`` (one row per epoch, columns `LOG_COLUMNS`) and ``log.json``.
A file named ``stop`` in the output folder, SIGTERM or SIGINT make the trainer save its state
and return; a later run with ``resume=True`` continues with exactly the batches and weights an
uninterrupted run would have had.

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (NCCL on
CUDA, gloo on CPU); each process takes an equal share of every global batch.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..assessment.model import forward_ssim
from ..base.errors import InputError, MotionSSIMError
from ..base.settings import COSINE_FLOOR, RUN_KEYS, TrainSettings
from ..simulation import pipeline
from .data import STREAMS, SliceDataset, check_volumes, summarize_volumes
from .run_state import STATE_FORMAT, _finite_or_none, _Run
from .train_support import (
    StopFlag,
    init_distributed,
)

__all__ = ["TrainResult", "TrainSettings", "TrainingDiverged", "learning_rate", "train"]


class TrainingDiverged(MotionSSIMError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    status: str                     # "finished" or "stopped"
    epoch: int                      # epochs completed
    step: int                       # optimizer steps taken
    best_val_loss: float
    out_dir: Path
    history: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- small helpers


def learning_rate(settings: TrainSettings, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based) under the run's schedule.

    "cosine": linear warm-up over the first `warmup` share of all steps (Adam's early updates
    from random or foreign weights are large; a ramp avoids wrecking a fine-tuned start), then
    cosine decay to COSINE_FLOOR x lr at the last step. A pure function of the step, so a
    resumed run continues on the same curve; extending `epochs` stretches the curve."""
    if settings.lr_schedule == "constant":
        return float(settings.lr)
    per_epoch = _batches_per_epoch(settings)
    total = max(1, settings.epochs * per_epoch)
    warm = int(settings.warmup * total)
    if step < warm:
        return float(settings.lr) * (step + 1) / warm
    t = min(1.0, (step - warm + 1) / max(1, total - warm))  # 1 at the last step
    floor = COSINE_FLOOR * settings.lr
    return float(floor + (settings.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))


def _check_data(run: _Run, train_paths: Sequence[str | Path], val_paths: Sequence[str | Path],
                report: Callable[[str], None] | None) -> None:
    """Rank 0 reads every volume once (unreadable ones are reported and dropped) and shares
    the usable lists with the other processes."""
    result: Any = None
    if run.dist.main:
        try:
            good_t, info_t = check_volumes(train_paths, report, run.settings.progress, "training volumes")
            good_v, info_v = ([], [])
            if val_paths:
                good_v, info_v = check_volumes(val_paths, report, run.settings.progress,
                                               "validation volumes")
            result = (good_t, good_v, {"train": summarize_volumes(info_t),
                                       "validation": summarize_volumes(info_v)})
        except MotionSSIMError as exc:
            result = exc
    result = run.dist.broadcast(result)
    if isinstance(result, Exception):
        raise result
    run.train_paths, run.val_paths, run.data_summary = result


def _corruption(settings: TrainSettings) -> dict[str, Any]:
    """The corruption settings every sample set of a run shares (training, validation, BatchNorm
    calibration), in one place, so that a new option cannot reach one set and miss another."""
    return dict(acquisition=settings.acquisition, families=settings.motion_families,
                storage=settings.storage, p_clean=settings.p_clean,
                array_noise=settings.array_noise, band_noise=settings.band_noise)


def _validation_set(run: _Run) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not run.val_paths or run.settings.val_samples == 0:
        return []
    ds = SliceDataset(run.val_paths, seed=run.settings.seed, input_size=run.settings.input_size,
                      cache_bytes=run.settings.cache_mb << 20, slices=run.settings.slices)
    return list(pipeline.fixed_set(
        ds, STREAMS["validation"], run.settings.val_samples, run.settings.seed, run.settings.contrast,
        run.settings.p_torchio, run.device if run.pipe == "device" else "cpu",
        chunk=min(run.settings.batch_size, 100), workers=run.workers,
        rank=run.dist.rank, world_size=run.dist.world, **_corruption(run.settings)))


def _calibration_set(run: _Run) -> list[torch.Tensor]:
    """A fixed, seeded set of corrupted training slices (its own random stream) in batches of
    the training batch size, for `calibrate_batchnorm`."""
    n = run.settings.bn_calibration
    if n == 0:
        return []
    ds = SliceDataset(run.train_paths, seed=run.settings.seed, input_size=run.settings.input_size,
                      cache_bytes=run.settings.cache_mb << 20, slices=run.settings.slices)
    # every process calibrates on the whole set, so that all hold the same statistics
    return [images for images, _ in pipeline.fixed_set(
        ds, STREAMS["calibration"], n, run.settings.seed, run.settings.contrast, run.settings.p_torchio,
        run.device if run.pipe == "device" else "cpu", chunk=run.settings.batch_size,
        workers=run.workers, **_corruption(run.settings))]


@torch.no_grad()
def calibrate_batchnorm(net: torch.nn.Module, batches: Sequence[torch.Tensor],
                        device: torch.device | str = "cpu",
                        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                        channels_last: bool = False) -> None:
    """Set every BatchNorm layer's running mean and variance to their average over `batches`
    (forward passes in training mode, no gradient), in place; the weights are untouched.

    Why: the running averages (momentum 0.1) follow the last ten or so training batches. One
    batch of unusual slices (top of the head, a harsh contrast) shifts them, and the model then
    predicts with statistics that fit no real input: measured here, a validation MSE of 0.034
    with the running averages and 0.0062 with the same weights after calibration."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    was_training = net.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    net.train()
    try:
        for images in batches:
            x = images.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast() if autocast is not None else contextlib.nullcontext():
                net(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        net.train(was_training)


def _autocast(run: _Run) -> contextlib.AbstractContextManager:
    if run.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=run.device.type, dtype=run.amp_dtype)


@torch.no_grad()
def _validate(run: _Run, val_set: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    nan = float("nan")
    if not run.val_paths or run.settings.val_samples == 0:
        return {"val_loss": nan, "val_mae": nan, "val_residual_sd": nan}
    run.model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=run.device)
    for images, labels in val_set:
        images = images.to(run.device)
        if run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(run):
            pred = forward_ssim(run.net, images)
        r = (pred - labels.to(run.device)).double()
        sums += torch.stack([r.square().sum(), r.abs().sum(), r.sum(),
                             torch.tensor(float(r.numel()), dtype=torch.float64,
                                          device=run.device)])
    se, ae, rs, n = run.dist.all_sum(sums.tolist(), run.device)
    mean = rs / n
    sd = math.sqrt(max(0.0, se / n - mean * mean))
    return {"val_loss": se / n, "val_mae": ae / n, "val_residual_sd": sd}


def _batches_per_epoch(settings: TrainSettings) -> int:
    return -(-settings.samples_per_epoch // settings.batch_size)  # ceil division


def _train_batches(run: _Run, n_batches: int):
    """Sample keys of every remaining batch of the run, epoch after epoch (lazily: one
    DataLoader for the whole run keeps the workers and their volume caches alive)."""
    settings = run.settings
    first_epoch, first_batch = run.epoch, run.next_batch

    class Batches(torch.utils.data.Sampler):
        def __iter__(self):
            for epoch in range(first_epoch, settings.epochs):
                start = first_batch if epoch == first_epoch else 0
                yield from pipeline.batch_keys(STREAMS["train"], epoch,
                                               settings.samples_per_epoch, settings.batch_size,
                                               start, run.dist.rank, run.dist.world)

        def __len__(self) -> int:
            return max(0, (settings.epochs - first_epoch) * n_batches - first_batch)

    return Batches()


def _train_loader(run: _Run, n_batches: int) -> tuple[Any, pipeline.Collate]:
    settings = run.settings
    train_ds = SliceDataset(run.train_paths, seed=settings.seed, input_size=settings.input_size,
                            cache_bytes=settings.cache_mb << 20, slices=settings.slices)
    collate = pipeline.Collate(settings.seed, settings.contrast, settings.p_torchio,
                               corrupt=run.pipe == "workers", tio_backend=settings.tio_backend,
                               **_corruption(settings))
    loader = pipeline.make_loader(train_ds, _train_batches(run, n_batches), collate,
                                  run.workers, pin_memory=run.cuda)
    return loader, collate


def _diverged(run: _Run, what: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"training stopped: {what} at epoch {run.epoch + 1}, step {run.step}; the last good "
        f"checkpoints in {run.out} are kept (try a smaller --lr)")


# ----------------------------------------------------------------------------- the loop's parts
# The loop (`_loop`) only takes batches and steps; what happens around a step or at an epoch's
# end is one of the small parts below, called in a fixed order (as MONAI's engines call their
# handlers). None of them draws random numbers, so the exact-resume contract rests on the loop.


class _Session:
    """Clock and sample count of this process's session (the time limit and samples/s)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.samples, self.train_time = 0, 0.0

    def count_step(self, run: _Run, batch_index: int, batch_se: float, n_global: int) -> None:
        """Book one step: position in the epoch, the epoch's loss sums, the clocks."""
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        run.next_batch = batch_index + 1
        run.epoch_se += batch_se
        run.epoch_n += n_global
        run.epoch_time += dt
        run.elapsed += dt
        self.samples += n_global
        self.train_time += dt

    def restart_epoch(self) -> None:
        """After an epoch's end work: its time does not count as training time."""
        self.samples, self.train_time = 0, 0.0
        self.last = time.perf_counter()

    def out_of_time(self, max_time: float) -> bool:
        return bool(max_time) and time.perf_counter() - self.start > max_time


class _ProgressBar:
    """tqdm bar of the main process (a no-op without one)."""

    def __init__(self, run: _Run, n_batches: int) -> None:
        self.bar = None
        if run.settings.progress and run.dist.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.settings.epochs * n_batches,
                            initial=run.epoch * n_batches + run.next_batch,
                            unit="batch", dynamic_ncols=True, desc="training")

    def step(self, epoch: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4g}", refresh=False)

    def epoch_end(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(epoch=row["epoch"], loss=f"{row['train_loss']:.4g}",
                                 val=f"{row['val_loss']}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _after_step(run: _Run, callback: Callable[[dict[str, Any]], None] | None, epoch: int,
                batch_index: int, loss: float) -> None:
    """The caller's callback, then the mid-epoch state save every `checkpoint_every` steps."""
    if callback is not None:
        callback({"epoch": epoch, "batch": batch_index, "step": run.step, "loss": loss})
    if run.settings.checkpoint_every and run.step % run.settings.checkpoint_every == 0:
        run.save_state()


def _check_weights(run: _Run) -> None:
    # A step can ruin the weights while its own loss was still finite: check before saving.
    if not all(torch.isfinite(p).all() for p in run.net.parameters()):
        raise _diverged(run, "the weights became NaN or infinite")


def _validation_metrics(run: _Run, val_set: list) -> dict[str, float]:
    """BatchNorm statistics calibrated, then the validation figures (NaN-free or diverged)."""
    calibrate_batchnorm(run.net, run.calibration, run.device, lambda: _autocast(run),
                        run.channels_last)
    metrics = _validate(run, val_set)
    if run.val_paths and run.settings.val_samples and not math.isfinite(metrics["val_loss"]):
        raise _diverged(run, f"the validation loss became {metrics['val_loss']}")
    return metrics


def _log_epoch(run: _Run, metrics: dict[str, float], samples: int, train_time: float) -> bool:
    """Append the epoch's log row; True when it is the best epoch so far (the validation loss,
    or the training loss without validation data)."""
    train_loss = run.epoch_se / max(1, run.epoch_n)
    key = metrics["val_loss"] if math.isfinite(metrics["val_loss"]) else train_loss
    best = key < run.best
    if best:
        run.best, run.best_epoch = key, run.epoch + 1
    run.history.append({
        "epoch": run.epoch + 1, "step": run.step, "train_loss": round(train_loss, 8),
        "val_loss": _finite_or_none(round(metrics["val_loss"], 8)),
        "val_mae": _finite_or_none(round(metrics["val_mae"], 8)),
        "val_residual_sd": _finite_or_none(round(metrics["val_residual_sd"], 8)),
        "lr": run.optimizer.param_groups[0]["lr"],
        "samples_per_s": round(samples / max(train_time, 1e-9), 3),
        "elapsed_s": round(run.elapsed, 3),
    })
    return best


def _next_epoch(run: _Run) -> None:
    run.epoch += 1
    run.next_batch = 0
    run.epoch_se, run.epoch_n, run.epoch_time = 0.0, 0, 0.0


def _end_epoch(run: _Run, val_set: list, samples: int, train_time: float) -> None:
    """Checks, validation, log row, checkpoints, then the next epoch's state saved."""
    _check_weights(run)
    metrics = _validation_metrics(run, val_set)
    best = _log_epoch(run, metrics, samples, train_time)
    row = run.history[-1]
    run.save_checkpoints({k: row[k] for k in ("train_loss", "val_loss", "val_mae",
                                              "val_residual_sd")}, best)
    _next_epoch(run)
    run.write_logs("running")
    run.save_state()


def _stop_reason(run: _Run, stop: StopFlag, session: _Session) -> str | None:
    """"stopped" (signal or stop file on any process) or "time limit reached", agreed by all
    processes; None to go on."""
    out_of_time = session.out_of_time(run.settings.max_time)
    if not run.dist.any(stop.requested() or out_of_time, run.device):
        return None
    return "time limit reached" if out_of_time else "stopped"


def _stop(run: _Run, why: str) -> None:
    """Save a resumable state, take the stop request away and say how to go on."""
    run.save_state()
    if run.dist.main:
        with contextlib.suppress(FileNotFoundError):
            (run.out / "stop").unlink()
        print(f"MotionSSIM: training {why} at epoch {run.epoch + 1}, step {run.step}; "
              "continue with --resume", file=sys.stderr, flush=True)


def train(
    settings: TrainSettings,
    out_dir: str | Path,
    train_paths: Sequence[str | Path] = (),
    val_paths: Sequence[str | Path] = (),
    resume: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    report: Callable[[str], None] | None = None,
    keep_epochs: bool = False,
) -> TrainResult:
    """Train (or, with resume=True, continue training) a model; see the module docstring.

    On resume the data lists and the settings that fix the random stream (`RUN_KEYS`) come
    from ``state.pt``; `epochs` and the machine settings (device, workers, ...) come from
    `settings`, so a finished run can be extended. `callback(event)` is called after every
    optimizer step with {"epoch", "batch", "step", "loss"}. Raises MotionSSIMError subclasses
    for user errors, TrainingDiverged on a NaN loss (the last checkpoints stay as they were).
    """
    from .data import _report

    report = _report if report is None else report
    out = Path(out_dir)
    state_path = out / "state.pt"
    saved: dict[str, Any] | None = None
    if resume:
        if not state_path.is_file():
            raise InputError(f"{state_path}: no saved state to resume from")
        try:
            saved = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means "not a state file"
            raise InputError(f"{state_path}: cannot read the saved state ({exc})") from None
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise InputError(f"{state_path}: not a MotionSSIM training state")
        known = {f.name for f in fields(TrainSettings)}
        base = {k: v for k, v in saved["settings"].items() if k in known}
        base.setdefault("storage", 0.0)  # runs saved before the storage stage had none
        base.setdefault("p_clean", pipeline.P_CLEAN)  # nor a motion-free share of their own
        base.setdefault("array_noise", 0.0)  # nor array-coil noise
        base.setdefault("band_noise", 0.0)  # nor noise of the acquired grain
        now = asdict(settings)
        settings = TrainSettings(**{**now, **{k: base[k] for k in RUN_KEYS if k in base}})
        if keep_epochs and "epochs" in base:
            # no --epochs given: the saved schedule, not the default (a cosine curve would
            # otherwise be stretched to 2000 epochs on every plain --resume)
            settings.epochs = int(base["epochs"])
        # Where the first weights came from stays on record (model card); they are not reloaded.
        settings.init_from = base.get("init_from")
        train_paths, val_paths = saved["train_paths"], saved["val_paths"]
    elif state_path.exists():
        raise InputError(f"{out}: already holds a training run (state.pt); resume it with "
                         "--resume or choose another output folder")
    settings.validate()
    if not train_paths:
        raise InputError("no training volumes given")
    dist = init_distributed(settings)
    stop = StopFlag(out / "stop")
    threads_before = torch.get_num_threads()
    try:
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (out / "stop").unlink()  # a stale stop request from an earlier run
        dist.barrier()
        run = _Run(settings, out, dist)
        if settings.batch_size < dist.world:
            raise InputError(f"batch size {settings.batch_size} is smaller than the number of "
                             f"processes ({dist.world})")
        _check_data(run, train_paths, val_paths, report)
        run.build(load_init=saved is None)
        if saved is not None:
            run.load_state(saved)
            run.train_paths, run.val_paths = list(saved["train_paths"]), list(saved["val_paths"])
            run.data_summary = saved.get("data", run.data_summary)
            saved = None  # free the copy of the weights
        stop.install()
        if settings.threads:
            torch.set_num_threads(int(settings.threads))
        return _loop(run, stop, callback)
    except torch.OutOfMemoryError:
        raise MotionSSIMError(
            f"out of GPU memory at batch size {settings.batch_size}: try a smaller --batch-size "
            f"(e.g. {max(1, settings.batch_size // 2)})") from None
    finally:
        stop.restore()
        if settings.threads:
            torch.set_num_threads(threads_before)
        if dist.owned:
            torch.distributed.destroy_process_group()


def _step(run: _Run, images: torch.Tensor, labels: torch.Tensor, n_global: int) -> float:
    """One optimizer step on a batch; returns its summed squared error (all processes)."""
    with _autocast(run):
        pred = forward_ssim(run.model, images)
    se = (pred - labels.float()).square().sum()
    # DDP averages gradients over processes: scale so that the gradient is that of the
    # global batch mean, whatever the split of the batch.
    loss = se * (run.dist.world / n_global)
    batch_se = run.dist.all_sum([se.item()], run.device)[0]
    if not math.isfinite(batch_se):
        raise _diverged(run, f"the loss became {batch_se}")
    run.optimizer.zero_grad(set_to_none=True)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(run.settings, run.step)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.step += 1
    return batch_se


def _loop(run: _Run, stop: StopFlag,
          callback: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    settings = run.settings
    n_batches = _batches_per_epoch(settings)
    val_set = _validation_set(run)
    run.calibration = _calibration_set(run)
    loader, collate = _train_loader(run, n_batches)
    bar = _ProgressBar(run, n_batches)
    status = "finished"
    session = _Session()
    try:
        if run.epoch < settings.epochs and run.next_batch >= n_batches:  # saved just before
            _end_epoch(run, val_set, 0, 1.0)                                 # validation
        session.restart_epoch()
        for batch in loader:
            epoch, first = batch["key"][1], batch["key"][2]
            batch_index = first // settings.batch_size
            assert epoch == run.epoch and batch_index == run.next_batch, "loader out of step"
            run.model.train()
            images, labels = pipeline.to_device_batch(batch, run.device, collate,
                                                      run.channels_last)
            n_global = (min(settings.samples_per_epoch, (batch_index + 1) * settings.batch_size)
                        - batch_index * settings.batch_size)
            batch_se = _step(run, images, labels, n_global)
            session.count_step(run, batch_index, batch_se, n_global)
            bar.step(epoch, batch_se / n_global)
            _after_step(run, callback, epoch, batch_index, batch_se / n_global)
            if run.next_batch == n_batches:
                _end_epoch(run, val_set, session.samples, session.train_time)
                bar.epoch_end(run.history[-1])
                session.restart_epoch()
            why = _stop_reason(run, stop, session)
            if why is not None:
                _stop(run, why)
                status = "stopped"
                break
    except TrainingDiverged:
        run.write_logs("diverged")
        raise
    finally:
        bar.close()
    run.write_logs(status)
    run.dist.barrier()
    return TrainResult(status, run.epoch, run.step, run.best, run.out, list(run.history))
