"""Training throughput: data pipeline, training step, end-to-end, and the paper's schedule.

    .venv/bin/python benchmarks/bench_training.py                       # CPU, small numbers
    .venv/bin/python benchmarks/bench_training.py --device cuda --batch-size 100 --batches 10

Measures (samples/s):
  clean slices      the data set alone (read once, cached; pick slice; fit to 256 x 256)
  CPU workers       clean + contrast + motion + SSIM label in DataLoader workers
  GPU pipeline      (--device cuda) clean slices from workers, corruption on the GPU
  train step        forward + backward + Adam on a ready batch (model compute only)
  end-to-end        `trainer.train` for a short run (includes everything; from log.csv)
and projects the paper's full schedule: 2000 epochs x 200 samples (one slice per training
volume per epoch, 200 volumes) = 400,000 samples at batch 100.
Volumes: --data (split file or folder; its train split) or synthetic test heads (--volumes N,
--size S: N random ellipsoid heads of S^2 x S/3 voxels at 1 x 1 x 3 mm).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    import MotionSSIMLib  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MotionSSIM"))

PAPER_SAMPLES = 2000 * 200


def _heads(folder: Path, n: int, size: int, seed: int) -> list[str]:
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    out = []
    shape = (max(8, size // 3), size, size)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (k / 0.9) ** 2 + (j / 0.8) ** 2 + (i / 0.7) ** 2 < 1
    for v in range(n):
        arr = np.where(inside, 60 + 30 * rng.random(shape)
                       + 40 * np.sin(9 * j + v) * np.cos(7 * i), 0).astype(np.float32)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 3.0))
        p = folder / f"head{v}.nii.gz"
        sitk.WriteImage(img, str(p))
        out.append(str(p))
    return out


def _rate(fn, n_samples: int) -> float:
    t = time.perf_counter()
    fn()
    return n_samples / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="split file or folder (train split used)")
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--p-torchio", type=float, default=0.5)
    ap.add_argument("--architecture", default="resnet18")
    ap.add_argument("--skip-end-to-end", action="store_true")
    args = ap.parse_args()

    from MotionSSIMLib import data, pipeline
    from MotionSSIMLib.model import build_model
    from MotionSSIMLib.trainer import TrainSettings, train

    dev = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_training_"))
    paths = (data.resolve_split(args.data, "train") if args.data
             else _heads(tmp, args.volumes, args.size, 0))
    B, nb = args.batch_size, args.batches
    n = B * nb
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}, "
          f"{len(paths)} volumes, batch {B} x {nb}, workers {args.workers}, "
          f"p_torchio {args.p_torchio}")
    results: dict[str, float] = {}

    ds = data.SliceDataset(paths, seed=0)
    for p in paths:  # warm the cache: steady-state figures (volumes are read once per worker)
        ds[(0, 0, hash(p) % 1000)]
    results["clean slices (main process, cached)"] = _rate(
        lambda: [ds[(0, 1, i)] for i in range(n)], n)

    keys = pipeline.batch_keys(0, 0, n, B)
    collate = pipeline.Collate(seed=0, contrast=True, p_torchio=args.p_torchio, corrupt=True)

    def consume(loader, on_device=None):
        for batch in loader:
            if on_device is not None:
                images, labels = pipeline.to_device_batch(batch, dev, on_device)
                if dev.type == "cuda":
                    torch.cuda.synchronize()

    for p_tio, what in ((0.0, "k-space simulator only"), (1.0, "TorchIO only")):
        c = pipeline.Collate(seed=0, contrast=True, p_torchio=p_tio, corrupt=True)
        results[f"CPU pipeline, 0 workers, {what}"] = _rate(
            lambda c=c: consume(pipeline.make_loader(ds, keys, c, workers=0)), n)
    for w in sorted({0, args.workers}):
        results[f"CPU pipeline, {w} workers (incl. start-up)"] = _rate(
            lambda w=w: consume(pipeline.make_loader(ds, keys, collate, workers=w)), n)
    if dev.type == "cuda":
        lazy = pipeline.Collate(seed=0, contrast=True, p_torchio=args.p_torchio, corrupt=False)
        consume(pipeline.make_loader(ds, keys[:1], lazy, workers=0), lazy)  # warm-up
        results[f"GPU pipeline, {args.workers} workers for clean slices"] = _rate(
            lambda: consume(pipeline.make_loader(ds, keys, lazy, workers=args.workers), lazy), n)
        results["GPU pipeline, k-space motion only (p_torchio 0)"] = _rate(
            lambda: consume(pipeline.make_loader(ds, keys, pipeline.Collate(0, True, 0.0, False),
                                                 workers=args.workers),
                            pipeline.Collate(0, True, 0.0, False)), n)

    model = build_model(args.architecture).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(B, 1, 256, 256, device=dev)
    y = torch.rand(B, device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def steps(k: int) -> None:
        for _ in range(k):
            ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                   else torch.autocast("cpu", enabled=False))
            with ctx:
                loss = (model(x).float().flatten() - y).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    steps(1)
    results["train step only (model compute)"] = _rate(lambda: steps(nb), n)

    if not args.skip_end_to_end:
        pipes = ["workers"] + (["device"] if dev.type == "cuda" else [])
        for pipe in pipes:
            out = tmp / f"run_{pipe}"
            s = TrainSettings(architecture=args.architecture, epochs=2, samples_per_epoch=n,
                              batch_size=B, val_samples=0, workers=args.workers,
                              device=args.device, pipeline=pipe, progress=False,
                              p_torchio=args.p_torchio, checkpoint_every=0)
            train(s, out, paths, [])
            with open(out / "log.csv", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            # epoch 2: workers already running and caches warm
            results[f"end-to-end training ({pipe} pipeline), epoch 2"] = float(
                rows[-1]["samples_per_s"])

    width = max(len(k) for k in results)
    print(f"\n{'measure':<{width}}  samples/s")
    for k, v in results.items():
        print(f"{k:<{width}}  {v:9.1f}")
    e2e = [v for k, v in results.items() if k.startswith("end-to-end")]
    rate = max(e2e) if e2e else min(results["train step only (model compute)"],
                                    results[f"CPU pipeline, {args.workers} workers (incl. start-up)"])
    hours = PAPER_SAMPLES / rate / 3600
    print(f"\npaper schedule: 2000 epochs x 200 samples/epoch (one slice per training volume "
          f"per epoch, 200 volumes) = {PAPER_SAMPLES:,} samples at batch 100")
    print(f"projected at {rate:.1f} samples/s: {hours:.1f} h ({hours / 24:.1f} days), "
          "plus validation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
