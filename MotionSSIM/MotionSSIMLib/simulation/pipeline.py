"""Batched corruption of clean slices: contrast augmentation, motion, SSIM label.

`corrupt_batch` runs on the device of its input. On CUDA the training loop calls it on the GPU
(the DataLoader only delivers clean slices); on CPU the same function runs inside the
DataLoader workers (`Collate(corrupt=True)`), so the main process only trains.

Seeding: a batch is identified by its first key (stream, epoch, first_index); its generator is
seeded from (seed, stream, epoch, first_index), so a run is reproducible and can resume in the
middle of an epoch with exactly the batches an uninterrupted run would have drawn. The
generator lives on the CPU whatever the device, so a seed gives the same random draws on CPU and
GPU (the arithmetic then differs only by floating-point rounding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..base.settings import P_CLEAN  # the default motion-free share (label 1)

__all__ = [
    "Collate",
    "CorruptionParams",
    "apply_corruption",
    "batch_generator",
    "batch_keys",
    "corrupt_batch",
    "draw_corruption",
    "fit_as_inference",
    "fixed_set",
    "make_loader",
    "to_device_batch",
]


def batch_generator(seed: int, key: Sequence[int]) -> torch.Generator:
    """The (CPU) torch generator of the batch whose first sample key is `key`."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in key) + (1,))
    g = torch.Generator(device="cpu")
    g.manual_seed(int(ss.generate_state(1, np.uint64)[0]) & ((1 << 63) - 1))
    return g


def fit_as_inference(corrupted: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) corrupted slices -> the same slices fitted to the model input the way
    inference fits a slice (`geometry.to_model_input`): cut to the head window found on the
    CORRUPTED slice, min-max, resampled to S. Inference has only the corrupted slice, and its
    ghosts move the head box: the window grows and the head shrinks in the input. A model that
    saw only clean-slice windows read the same motion 0.08-0.19 milder through the product's
    path than on its training input (`predict_slices` against a direct forward; held-out
    synthetic and MNI slices, model v3 phase 5; docs/synthetic-data.md)."""
    from ..imaging import geometry

    a = corrupted[:, 0].detach().float().cpu().numpy()
    fitted = geometry.to_model_input(a, size=int(corrupted.shape[-1]))
    return torch.from_numpy(fitted)[:, None].to(corrupted.device, corrupted.dtype)


@dataclass
class CorruptionParams:
    """Everything :func:`corrupt_batch` drew for a batch (CPU tensors): the contrast choice
    per sample (names and the parameter draw of ``intensity.sample_contrast_batch``; None when
    contrast augmentation was off) and the motion (``motion.MotionParams``: simulator,
    severity, poses, times, line groups, PE axis). ``apply_corruption`` replays it exactly."""

    contrast_names: list[str] | None
    contrast_params: dict[str, torch.Tensor] | None
    motion: Any  # motion.MotionParams (imported lazily, like the simulators)
    resolution: Any = None  # augment.ResolutionParams, or None: the acquisition stages off
    noise: Any = None       # augment.NoiseParams, or None
    storage: Any = None     # augment.StorageParams, or None: no storage stage

    @property
    def batch(self) -> int:
        return self.motion.batch

    def select(self, index: torch.Tensor | list[int]) -> CorruptionParams:
        """The draws of samples `index` (replay a few samples of a batch)."""
        idx = torch.as_tensor(index, dtype=torch.long).cpu()
        names = None if self.contrast_names is None else [self.contrast_names[i]
                                                          for i in idx.tolist()]
        cparams = None if self.contrast_params is None else {
            k: v[idx.to(v.device)] for k, v in self.contrast_params.items()}
        return CorruptionParams(
            names, cparams, self.motion.select(idx),
            None if self.resolution is None else self.resolution.select(idx),
            None if self.noise is None else self.noise.select(idx),
            None if self.storage is None else self.storage.select(idx))

    def describe(self, i: int) -> dict[str, Any]:
        """What sample i went through, as plain Python values (JSON-serialisable)."""
        from ..imaging import intensity

        out: dict[str, Any] = {"contrast": None, "contrast_params": {}}
        if self.contrast_names is not None and self.contrast_params is not None:
            out["contrast"] = self.contrast_names[i]
            out["contrast_params"] = intensity.sample_params(self.contrast_names,
                                                             self.contrast_params, i)
        out.update(self.motion.describe(i))
        if self.resolution is not None:
            r = self.resolution
            out["resolution"] = ({"matrix": [round(float(r.matrix_h[i]), 1),
                                             round(float(r.matrix_w[i]), 1)],
                                  "reconstruction": "zero-filled k-space" if bool(r.kspace[i])
                                  else "interpolated", "window": float(r.window[i])}
                                 if bool(r.apply[i]) else None)
        if self.noise is not None:
            snr = float(self.noise.snr[i])
            out["noise_snr"] = None if snr == float("inf") else round(snr, 2)
            if self.noise.coils is not None:
                out["noise_coils"] = int(self.noise.coils[i])
            if self.noise.band is not None:
                out["noise_acquired_grain"] = bool(self.noise.band[i])
        if self.storage is not None:
            st = self.storage
            out["stored_share"] = round(float(st.factor[i]), 3) if bool(st.apply[i]) else None
        return out


def draw_corruption(batch: int, size: tuple[int, int], generator: torch.Generator | None,
                    contrast: bool = True, p_torchio: float = 0.5,
                    p_clean: float = P_CLEAN, acquisition: bool = True,
                    families: str | Mapping[str, float] | None = None,
                    storage: float = 0.0, array_noise: float = 0.0,
                    band_noise: float = 0.0) -> CorruptionParams:
    """Draw a batch's corruption (TorchIO's make_params step), in a fixed order: contrast
    names and parameters, then the severities (a share p_clean motion-free), then the motion
    (`motion.draw_motion_params`: the family of each sample, among `families` or by default
    TorchIO's with p_torchio and the k-space lines, and every chosen family's parameters for
    every sample), then (acquisition=True) the acquired matrix and the noise (`augment`), then
    (acquisition=True and storage > 0: the share of samples stored) the stored matrix.
    array_noise: the share of noisy samples with array-coil noise (`augment.draw_noise_params`'s
    p_array); band_noise: the share with noise of the acquired grain (p_band). Deterministic
    for a seeded generator; storage, array_noise and band_noise 0 draw nothing more (a stream
    drawn before they existed is unchanged)."""
    from ..imaging import intensity
    from . import augment, motion

    names, cparams = (intensity.sample_contrast_batch(batch, generator) if contrast
                      else (None, None))
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand((2, batch), generator=generator, device=gen_device).cpu()
    severity = torch.where(u[0] < p_clean, torch.zeros_like(u[1]), u[1])
    mparams = motion.draw_motion_params(batch, size, generator, p_torchio=p_torchio,
                                        severity=severity, families=families)
    if not acquisition:
        return CorruptionParams(names, cparams, mparams)
    rparams = augment.draw_resolution_params(batch, generator, int(min(size)),
                                             min_matrix=min(augment.RES_MIN_MATRIX,
                                                            int(min(size))))
    nparams = augment.draw_noise_params(batch, generator, p_array=array_noise,
                                        p_band=band_noise)
    sparams = (augment.draw_storage_params(batch, generator, int(min(size)), storage,
                                           min(augment.STORE_MIN_MATRIX, int(min(size))))
               if storage > 0 else None)
    return CorruptionParams(names, cparams, mparams, rparams, nparams, sparams)


def apply_corruption(clean: torch.Tensor, params: CorruptionParams,
                     tio_backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Apply drawn corruption (deterministic): clean (B, 1, S, S) in [0, 1] -> (corrupted,
    labels), on the device of `clean`. Order: contrast, acquired matrix (resolution), motion
    over the acquired k-space lines only, the label, then noise on the corrupted slice (the
    model input), its storage, and (with the acquisition stages) its fit to the model input
    from its own head window (`fit_as_inference`). The label is the SSIM
    between the clean slice so acquired (contrast, resolution) and its corrupted version,
    taken before the noise: noise neither lowers it (motion-free samples keep label 1) nor
    raises it. Taken after a noise field shared by both images, as first built, it rose by
    0.15 on average over the same motion (0.29 at SNR 3-5, 0.09 at SNR 20-100: identical
    noise swamps the ghosts in dark regions), and a model trained on it read real scans 0.04
    to 0.12 high (the model before it: at most 0.065)."""
    from ..imaging import intensity
    from . import augment, motion, ssim

    if clean.ndim != 4 or clean.shape[1] != 1:
        raise ValueError(f"corrupt_batch: expected (B, 1, H, W), got {tuple(clean.shape)}")
    if params.batch != clean.shape[0]:
        raise ValueError(f"apply_corruption: parameters for {params.batch} samples, "
                         f"images for {clean.shape[0]}")
    x = clean.float()
    if params.contrast_names is not None:
        x = intensity.apply_contrast_batch(x, params.contrast_names, params.contrast_params)
    moves = params.motion
    if params.resolution is not None:
        x = augment.apply_resolution(x, params.resolution)
        # the motion happens while the acquired lines are acquired, not over the whole grid
        moves = moves.acquired(params.resolution.band(tuple(x.shape[-2:])))
    corrupted = motion.apply_motion(x, moves, tio_backend)
    # The label is the acquired pair's, whatever the storage does afterwards: storing a series
    # at another matrix does not undo the motion. (Taken on the stored pair, as first built,
    # blurred pairs read higher for the same motion, and the model learned to read smooth
    # slices as milder motion: its bias on the real EPI and MNI scans rose from +0.01 to +0.04
    # and +0.05, check_real_scans.py.)
    labels = ssim.ssim_label(x, corrupted)
    stored = params.storage
    if params.noise is not None:
        # sigma from the clean slice's tissue, as a scanner's noise does not follow the motion
        noise = dataclasses.replace(
            params.noise, sigma=augment.noise_sigma(augment.tissue_level(x), params.noise))
        field = augment.noise_field(noise, tuple(x.shape[-2:]), x.device)
        if params.resolution is not None:
            field = augment.band_limit_field(field, noise, params.resolution)
        corrupted = augment.apply_noise(corrupted, noise, field=field)
    if stored is not None:
        corrupted = augment.apply_storage(corrupted, stored)
    if params.resolution is not None:
        # last, as the product fits what the scanner stored (model v3 phase 6 on)
        corrupted = fit_as_inference(corrupted)
    return corrupted.float(), labels.float()


def corrupt_batch(
    clean: torch.Tensor,
    generator: torch.Generator | None,
    contrast: bool = True,
    p_torchio: float = 0.5,
    p_clean: float = P_CLEAN,
    tio_backend: str = "torch",
    return_params: bool = False,
    acquisition: bool = True,
    families: str | Mapping[str, float] | None = None,
    storage: float = 0.0,
    array_noise: float = 0.0,
    band_noise: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, CorruptionParams]:
    """Clean slices (B, 1, S, S) in [0, 1] -> (corrupted (B, 1, S, S), labels (B,)), on the
    device of `clean`: optional random contrast (one of the paper's five per sample), motion
    with TorchIO's algorithm (probability p_torchio; batched torch unless
    tio_backend="torchio", the real TorchIO on the CPU) or the k-space line simulator, then
    the SSIM label between the (contrast-augmented) clean slice and its corrupted version. A
    share p_clean of the samples gets no motion (severity 0, label 1); the others a severity
    uniform on [0, 1]. acquisition=True adds the acquisition stages (`augment`: a lower
    acquired matrix before motion, Rician noise on the model input after the label). Draw
    (:func:`draw_corruption`) then apply (:func:`apply_corruption`); return_params=True also
    returns the CorruptionParams drawn. families: the motion families and their weights
    (`settings.parse_families`; default: TorchIO's and the k-space lines by p_torchio).
    storage: the share of samples stored at a lower matrix after the acquisition
    (`augment.apply_storage`; 0: none). array_noise: the share of noisy samples whose noise
    is an array coil's (`augment`; 0: all Rician); band_noise: the share whose noise has the
    acquired matrix's grain where it is lower (0: all at the slice grid)."""
    if clean.ndim != 4 or clean.shape[1] != 1:
        raise ValueError(f"corrupt_batch: expected (B, 1, H, W), got {tuple(clean.shape)}")
    from . import tio_motion

    if tio_backend not in tio_motion.TIO_BACKENDS:
        raise ValueError(f"corrupt_batch: tio_backend must be one of {tio_motion.TIO_BACKENDS}, "
                         f"got {tio_backend!r}")
    params = draw_corruption(clean.shape[0], tuple(clean.shape[-2:]), generator, contrast,
                             p_torchio, p_clean, acquisition, families, storage,
                             array_noise, band_noise)
    corrupted, labels = apply_corruption(clean, params, tio_backend)
    return (corrupted, labels, params) if return_params else (corrupted, labels)


@dataclass
class Collate:
    """DataLoader collate_fn (picklable, so it runs in worker processes): stacks the clean
    slices of one batch; with corrupt=True also corrupts them there (CPU training)."""

    seed: int
    contrast: bool = True
    p_torchio: float = 0.5
    corrupt: bool = True
    tio_backend: str = "torch"  # "torchio": the real TorchIO, one slice at a time (checks)
    acquisition: bool = True    # resolution and noise stages (augment)
    families: str | None = None  # motion families and weights (None / "": the default two)
    storage: float = 0.0        # share stored at a lower matrix after the acquisition
    p_clean: float = P_CLEAN    # share left motion-free (label 1)
    array_noise: float = 0.0    # share of noisy samples with array-coil noise
    band_noise: float = 0.0     # share of noisy samples with noise of the acquired grain

    def __call__(self, items: list[tuple[torch.Tensor, tuple[int, int, int]]]) -> dict[str, Any]:
        clean = torch.stack([img for img, _ in items])
        key = items[0][1]
        if not self.corrupt:
            return {"clean": clean, "key": key}
        corrupted, labels = corrupt_batch(clean, batch_generator(self.seed, key),
                                          self.contrast, self.p_torchio, self.p_clean,
                                          tio_backend=self.tio_backend,
                                          acquisition=self.acquisition, families=self.families,
                                          storage=self.storage,
                                          array_noise=self.array_noise,
                                          band_noise=self.band_noise)
        return {"images": corrupted, "labels": labels, "key": key}


def to_device_batch(batch: dict[str, Any], device: torch.device | str, collate: Collate,
                    channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) on `device` from a loader batch: moved if the workers already
    corrupted it, else corrupted here on the device (the GPU pipeline)."""
    device = torch.device(device)
    if "images" in batch:
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
    else:
        clean = batch["clean"].to(device, non_blocking=True)
        images, labels = corrupt_batch(clean, batch_generator(collate.seed, batch["key"]),
                                       collate.contrast, collate.p_torchio, collate.p_clean,
                                       tio_backend=collate.tio_backend,
                                       acquisition=collate.acquisition,
                                       families=collate.families, storage=collate.storage,
                                       array_noise=collate.array_noise,
                                       band_noise=collate.band_noise)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def batch_keys(stream: int, epoch: int, n: int, batch_size: int, start_batch: int = 0,
               rank: int = 0, world_size: int = 1) -> list[list[tuple[int, int, int]]]:
    """The sample keys of each batch this process handles in one pass over n samples.

    Global batch t holds samples [t*B, min(n, (t+1)*B)); with world_size > 1 it is split into
    world_size nearly equal consecutive chunks and this rank takes chunk `rank` (so a global
    batch is the same set of samples whatever the number of processes). Batches before
    `start_batch` are skipped (resume in the middle of an epoch)."""
    if batch_size < world_size:
        raise ValueError(f"batch size {batch_size} is smaller than the {world_size} processes")
    n_batches = -(-n // batch_size)
    out = []
    for t in range(start_batch, n_batches):
        lo, hi = t * batch_size, min(n, (t + 1) * batch_size)
        idx = np.array_split(np.arange(lo, hi), world_size)[rank]
        out.append([(stream, epoch, int(i)) for i in idx])
    return out


class _KeyBatches(torch.utils.data.Sampler):
    def __init__(self, batches: list[list[tuple[int, int, int]]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(dataset: torch.utils.data.Dataset,
                batches: list[list[tuple[int, int, int]]] | torch.utils.data.Sampler,
                collate: Collate, workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader that yields `batches` (lists of sample keys, or a Sampler of them) in
    order, collated by `collate` (in `workers` worker processes; 0 = in this process)."""
    sampler = batches if isinstance(batches, torch.utils.data.Sampler) else _KeyBatches(batches)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate,
        num_workers=int(workers), pin_memory=pin_memory,
        persistent_workers=False, prefetch_factor=2 if workers > 0 else None,
    )


def fixed_set(dataset: torch.utils.data.Dataset, stream: int, n: int, seed: int,
              contrast: bool, p_torchio: float, device: torch.device | str = "cpu",
              chunk: int = 100, workers: int = 0, rank: int = 0,
              world_size: int = 1, acquisition: bool = True,
              families: str | None = None, storage: float = 0.0,
              p_clean: float = P_CLEAN, array_noise: float = 0.0,
              band_noise: float = 0.0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed, seeded sample set of `stream` (validation or test): n corrupted slices in
    chunks of `chunk`, yielded as (images, labels) on `device`. Deterministic for a given
    (seed, n, chunk): two models evaluated with the same seed see the same slices. With
    world_size > 1 this rank yields only the chunks rank, rank + world_size, ... (whole chunks,
    so the set is the same whatever the number of processes). p_clean: the motion-free share
    (a training run's validation set follows its --p-clean; evaluation keeps P_CLEAN);
    array_noise and band_noise likewise (--array-noise, --band-noise; evaluation keeps 0)."""
    collate = Collate(seed, contrast, p_torchio, corrupt=torch.device(device).type == "cpu",
                      acquisition=acquisition, families=families, storage=storage,
                      p_clean=p_clean, array_noise=array_noise, band_noise=band_noise)
    batches = batch_keys(stream, 0, n, chunk)[rank::world_size]
    if not batches:
        return
    for batch in make_loader(dataset, batches, collate, workers):
        yield to_device_batch(batch, device, collate)
