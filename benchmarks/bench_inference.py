"""Inference, SSIM and k-space simulator throughput (prints figures; no assertions).

    .venv/bin/python benchmarks/bench_inference.py [--device cpu|cuda] [--n 64]

Ratios are measured within one run, because the machine may be shared:
- predict_slices (preprocessing + model) vs the bare model forward on the same batch, and the
  share of time spent preprocessing (target < 15 % on CPU);
- batched torch SSIM vs skimage one slice at a time (target on GPU: >= 20x);
- batched torch k-space simulator vs a numpy reference of the same algorithm, slice by slice
  (target on GPU: >= 20x).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _timeit(fn, repeat: int = 3, sync=None) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def numpy_kspace_motion(image: np.ndarray, rng: np.random.Generator, n_segments: int = 8,
                        max_deg: float = 6.0, max_shift: float = 6.0) -> np.ndarray:
    """Per-slice numpy reference of the k-space line algorithm: PE lines split into segments,
    each outer segment taken from a rigidly moved copy; the centre segment stays unmoved."""
    from scipy import ndimage

    h = image.shape[0]
    k = np.fft.fftshift(np.fft.fft2(image))
    edges = np.linspace(0, h, n_segments + 1).astype(int)
    centre = n_segments // 2
    for s in range(n_segments):
        if s == centre:
            continue
        moved = ndimage.rotate(image, rng.uniform(-max_deg, max_deg), reshape=False, order=1)
        moved = ndimage.shift(moved, rng.uniform(-max_shift, max_shift, 2), order=1)
        km = np.fft.fftshift(np.fft.fft2(moved))
        k[edges[s]:edges[s + 1]] = km[edges[s]:edges[s + 1]]
    out = np.abs(np.fft.ifft2(np.fft.ifftshift(k)))
    return (out - out.min()) / max(out.max() - out.min(), 1e-12)


def brain_like(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    head = ((yy / 0.42) ** 2 + (xx / 0.35) ** 2 < 1).astype(np.float32)
    inner = ((yy / 0.3) ** 2 + (xx / 0.25) ** 2 < 1).astype(np.float32)
    base = 0.4 * head + 0.4 * inner
    return np.clip(base[None] + 0.05 * rng.standard_normal((n, size, size)), 0, None
                   ).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=64, help="slices per batch")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    from skimage.metrics import structural_similarity

    from MotionSSIMLib import motion, ssim
    from MotionSSIMLib.geometry import to_model_input
    from MotionSSIMLib.inference import predict_slices
    from MotionSSIMLib.model import build_model

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    rng = np.random.default_rng(0)
    n = args.n
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"N = {n} slices")

    net = build_model("resnet18").to(dev).eval()
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    for label, imgs, spacing in (("256x256", rng.random((n, 256, 256)).astype(np.float32),
                                  (1.0, 1.0)),
                                 ("320x320", rng.random((n, 320, 320)).astype(np.float32),
                                  (0.7, 0.7)),
                                 ("180x220 0.9x1.2mm", rng.random((n, 180, 220)).astype(
                                     np.float32), (0.9, 1.2))):
        t_pre = _timeit(lambda imgs=imgs, spacing=spacing: to_model_input(imgs, spacing))
        x = torch.from_numpy(to_model_input(imgs, spacing))[:, None]

        def forward(x=x):
            with torch.inference_mode():
                for i in range(0, n, args.batch_size):
                    b = x[i:i + args.batch_size].to(dev)
                    if dev.type == "cuda":
                        with torch.autocast("cuda", dtype=torch.float16):
                            net(b.contiguous(memory_format=torch.channels_last))
                    else:
                        net(b)

        t_fwd = _timeit(forward, sync=sync)
        t_all = _timeit(lambda imgs=imgs, spacing=spacing: predict_slices(
            imgs, net, dev, args.batch_size, spacing), sync=sync)
        print(f"predict_slices {label:>18}: {n / t_all:8.1f} slices/s | bare forward "
              f"{n / t_fwd:8.1f} slices/s | preprocessing {n / t_pre:8.0f} slices/s = "
              f"{100 * t_pre / t_all:4.1f} % of predict_slices")

    clean = torch.from_numpy(brain_like(n, 256, rng))[:, None]
    corrupted = motion.kspace_motion(clean, 0.6, torch.Generator().manual_seed(0))
    a_np, b_np = clean[:, 0].numpy(), corrupted[:, 0].numpy()
    t_sk = _timeit(lambda: [structural_similarity(a_np[i], b_np[i], data_range=1.0)
                            for i in range(n)], repeat=1)
    ca, cb = clean.to(dev), corrupted.to(dev)
    t_ssim = _timeit(lambda: ssim.ssim(ca, cb), sync=sync)
    print(f"SSIM: torch {n / t_ssim:9.1f} slices/s | skimage {n / t_sk:7.1f} slices/s | "
          f"ratio {t_sk / t_ssim:6.1f}x")

    gen = torch.Generator(device="cpu").manual_seed(0)
    sev = torch.full((n,), 0.6)
    t_ks = _timeit(lambda: motion.kspace_motion(ca, sev.to(dev), gen), sync=sync)
    nrng = np.random.default_rng(0)
    t_np = _timeit(lambda: [numpy_kspace_motion(a_np[i], nrng) for i in range(n)], repeat=1)
    print(f"k-space motion: torch {n / t_ks:9.1f} slices/s | numpy reference {n / t_np:7.1f} "
          f"slices/s | ratio {t_np / t_ks:6.1f}x")


if __name__ == "__main__":
    main()
