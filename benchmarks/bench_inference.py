"""Inference, SSIM and k-space simulator throughput (prints figures; no assertions).

    .venv/bin/python benchmarks/bench_inference.py [--device cpu|cuda] [--n 64] [--model FILE]

Ratios are measured within one run, because the machine may be shared, and always against the
fastest bare forward this machine really has (`bare_paths`): float32 in the default layout,
float32 channels-last and, only where the CPU has native bfloat16 (AVX512-BF16 or AMX; on an
AVX2-only CPU oneDNN emulates it, many times slower, and a ratio against it means nothing),
bfloat16 channels-last; on CUDA float16 autocast channels-last. The CPU model, its ISA flags and
the path taken as reference are printed first.
- predict_slices (preprocessing + model) vs that bare forward on the same batch, and the
  share of time spent preprocessing (target < 15 % on CPU);
- batched torch SSIM vs skimage one slice at a time (target on GPU: >= 20x);
- batched torch k-space simulator vs a numpy reference of the same algorithm, slice by slice
  (target on GPU: >= 20x);
- precision: the bundled model on the bundled sample's slices, through forward_views with
  precision fp32 and auto (bf16 on CPUs with native bf16, fp16 autocast on CUDA) against the
  bare paths: slices/s, the ratio to the fastest bare path and the largest |difference|;
- the default: predict_slices with every default (the sample's slices as read, so with the
  fit to the model input; one pass for a model with the uncertainty head, 4 views without)
  against the fastest bare forward on the fitted slices (target >= 0.9), and the share of its
  time spent fitting the slices;
- Table IV: --volumes variants of the bundled sample (flips and intensity scalings; 36 like the
  paper's 36 clinical volumes, 39.8 s on a desktop CPU, 8.8 s on a GTX 1080 Ti) through
  assess_volume with fp32 and one view, the fast path with one view, the default, and the fast
  path with 4 views: seconds, volumes/min, verdicts and classes against the default.
--json PATH writes the figures, with the precision used.
"""

from __future__ import annotations

import argparse
import json
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


def bare_paths(net: torch.nn.Module, dev: torch.device) -> dict[str, tuple[str, object]]:
    """The bare forwards this machine really has, name -> (layout, autocast dtype or None):
    float32 default and channels-last everywhere; bfloat16 channels-last only on a CPU with
    native bfloat16; float16 autocast channels-last on CUDA."""
    from MotionSSIMLib.assessment.devices import cpu_native_bf16

    paths = {"fp32": ("default", None), "fp32 channels-last": ("channels_last", None)}
    if dev.type == "cuda":
        paths["fp16 channels-last"] = ("channels_last", torch.float16)
    elif dev.type == "cpu" and cpu_native_bf16():
        paths["bf16 channels-last"] = ("channels_last", torch.bfloat16)
    return paths


def bare_forward(net: torch.nn.Module, x: torch.Tensor, dev: torch.device, batch_size: int,
                 layout: str, amp) -> np.ndarray:
    """The network alone on ready inputs, in batches: no preprocessing, no views, no checks."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            b = x[i:i + batch_size].to(dev).contiguous(memory_format=fmt)
            if amp is None:
                outs.append(net(b).float())
            else:
                with torch.autocast(dev.type, dtype=amp):
                    outs.append(net(b).float())
    return torch.cat(outs).reshape(-1).cpu().numpy()


def fastest_bare(net: torch.nn.Module, x: torch.Tensor, dev: torch.device, batch_size: int,
                 sync=None, rounds: int = 2) -> tuple[str, dict[str, float]]:
    """Slices/s of every bare path (interleaved, best of `rounds`: the machine may be shared)
    and the name of the fastest, the reference of every ratio."""
    paths = bare_paths(net, dev)
    rates: dict[str, float] = {}
    for _ in range(rounds):
        for name, (layout, amp) in paths.items():
            t = _timeit(lambda layout=layout, amp=amp: bare_forward(net, x, dev, batch_size,
                                                                    layout, amp),
                        repeat=1, sync=sync)
            rates[name] = max(rates.get(name, 0.0), len(x) / t)
    net.to(memory_format=torch.contiguous_format)
    return max(rates, key=rates.get), rates


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


def precision_and_table4(args) -> dict:
    """The bundled model, the bundled sample: fp32 vs the fast path, and the Table IV batch."""
    from MotionSSIMLib.assessment.checkpoint import default_model_path, load_checkpoint
    from MotionSSIMLib.assessment.devices import cpu_description
    from MotionSSIMLib.assessment.inference import (
        DEFAULT_TTA,
        assess_volume,
        forward_views,
        get_model,
        has_head,
        predict_slices,
        resolve_precision,
    )
    from MotionSSIMLib.imaging.geometry import extract_slices, to_model_input, volume
    from MotionSSIMLib.imaging.io import read_volume

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    fast = resolve_precision("auto", dev)
    sample = read_volume(default_model_path().parents[1] / "Samples" /
                         "sample_t2_motion.nii.gz")
    stack = extract_slices(sample, "auto")
    x_all = torch.from_numpy(to_model_input(stack.images, stack.pixel_spacing))[:, None]
    x = x_all[:args.batch_size]
    bare_net = load_checkpoint(args.model or default_model_path(), device=dev).model.eval()
    ref, bare = fastest_bare(bare_net, x, dev, args.batch_size, sync)
    loaded = get_model(args.model, dev)
    runs = {"forward_views fp32": lambda: forward_views(x, loaded, dev, args.batch_size,
                                                        "fp32", 1)[:, 0],
            f"forward_views {fast} (auto)": lambda: forward_views(x, loaded, dev,
                                                                 args.batch_size, "auto", 1)[:, 0]}
    rates, outs = {}, {}
    for _ in range(2):  # interleaved, best of two: the machine may be shared
        for name, fn in runs.items():
            t = _timeit(fn, repeat=1, sync=sync)
            rates[name] = max(rates.get(name, 0.0), len(x) / t)
            outs[name] = fn()
    base = bare[ref]
    diff = np.abs(np.clip(outs[f"forward_views {fast} (auto)"], 0, 1)
                  - np.clip(outs["forward_views fp32"], 0, 1))
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"bundled model, {len(x)} sample slices; reference: bare {ref}")
    for name, r in {**{f"bare {k}": v for k, v in bare.items()}, **rates}.items():
        print(f"  {name:>30}: {r:7.1f} slices/s  ({r / base:4.2f}x bare {ref})")
    print(f"  fast path vs fp32: mean |difference| {diff.mean():.5f}, max {diff.max():.5f}")

    # the default on the sample's slices as read, against the fastest bare forward on them
    images = np.asarray(stack.images)
    ref_all, bare_all = fastest_bare(bare_net, x_all, dev, args.batch_size, sync)
    t_default = t_fit = float("inf")
    for _ in range(3):  # interleaved, best of three
        t_default = min(t_default, _timeit(lambda: predict_slices(
            images, loaded, dev, args.batch_size, stack.pixel_spacing), repeat=1, sync=sync))
        t_fit = min(t_fit, _timeit(lambda: to_model_input(images, stack.pixel_spacing),
                                   repeat=1))
    default_rate = len(images) / t_default
    default_views = 1 if has_head(loaded) else DEFAULT_TTA
    print(f"  predict_slices default ({default_views} pass{'es' if default_views > 1 else ''} "
          f"per slice, {'uncertainty head' if has_head(loaded) else 'views'}): "
          f"{default_rate:7.1f} slices/s = {default_rate / bare_all[ref_all]:4.2f} of the "
          f"fastest bare forward ({ref_all}, {bare_all[ref_all]:.1f} slices/s, "
          f"{len(images)} slices); fitting the slices {100 * t_fit / t_default:4.1f} % of it")

    arr, spacing = sample.array, sample.spacing
    variants = []
    for v in range(args.volumes):  # flips and intensity scalings: 36 distinct inputs
        a = arr[:, :, ::-1] if v % 2 else arr
        a = a[:, ::-1] if (v // 2) % 2 else a
        variants.append(volume(np.ascontiguousarray(a) * (1.0 + 0.1 * (v // 4)), spacing,
                               sample.directions, sample.origin))
    n_slices = sum(len(extract_slices(v, "auto").indices) for v in variants)
    table, per_slice = {}, {}
    views_name = f"{fast}, {DEFAULT_TTA} views"
    rows = dict.fromkeys([("fp32, 1 view", "fp32", 1), (f"{fast}, 1 view", "auto", 1),
                          ("default", "auto", None), (views_name, "auto", DEFAULT_TTA)])
    for name, precision, tta in rows:  # (fp32 and the fast path are one row where equal)
        t = time.perf_counter()
        results = [assess_volume(v, loaded, device=dev, precision=precision, tta=tta)
                   for v in variants]
        if sync:
            sync()
        dt = time.perf_counter() - t
        per_slice[name] = [(np.array([r.ssim for r in a.records]),
                            np.array([r.clinical_class for r in a.records])) for a in results]
        table[name] = {"precision": resolve_precision(precision, dev),
                       "views": len(results[0].summary["inference"]["views"]),
                       "uncertainty": results[0].summary["inference"]["uncertainty"],
                       "seconds": dt, "volumes_per_min": 60 * len(variants) / dt,
                       "seconds_per_36": 36 * dt / len(variants),
                       "verdicts": [a.summary["verdict"] for a in results]}
        print(f"  Table IV, {len(variants)} volumes ({n_slices} slices), {name:>16}: "
              f"{dt:6.1f} s = {60 * len(variants) / dt:5.1f} volumes/min "
              f"({36 * dt / len(variants):5.1f} s per 36; {table[name]['views']} view(s), "
              f"uncertainty {table[name]['uncertainty']})")
    same = table["fp32, 1 view"]["verdicts"] == table[f"{fast}, 1 view"]["verdicts"]
    print(f"  same verdicts fp32 vs {fast} (1 view): {same}; paper: 36 volumes in 39.8 s "
          f"(desktop CPU), 8.8 s (GTX 1080 Ti)")
    moved = [(np.abs(a[0] - b[0]), a[1] != b[1])
             for a, b in zip(per_slice["default"], per_slice[views_name])]
    far = sum(int((c & (np.minimum(np.abs(d[0] - 0.85), np.abs(d[0] - 0.60)) > 0.005)).sum())
              for (_, c), d in zip(moved, per_slice[views_name]))
    changed = sum(int(c.sum()) for _, c in moved)
    same_views = table["default"]["verdicts"] == table[views_name]["verdicts"]
    print(f"  default vs {views_name}: same verdicts {same_views}; slice classes changed "
          f"{changed} of {n_slices}, {far} of them more than 0.005 from a threshold; largest "
          f"SSIM move {max(float(m.max()) for m, _ in moved):.4f}")
    return {"device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": cpu_description(), "reference": f"bare {ref}",
            "precision_fast": fast, "slices": len(x), "slices_per_s": {**bare, **rates},
            "ratio_fast_vs_reference": rates[f"forward_views {fast} (auto)"] / base,
            "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
            "default_slices_per_s": default_rate,
            "default_vs_fastest_bare": default_rate / bare_all[ref_all],
            "default_fit_share": t_fit / t_default,
            "default_vs_views": {"same_verdicts": same_views, "classes_changed": changed,
                                 "classes_changed_away_from_threshold": far},
            "table4": table, "table4_same_verdicts": same, "table4_volumes": len(variants),
            "table4_slices": n_slices}


def main() -> None:
    from MotionSSIMLib.assessment.devices import cpu_line

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--n", type=int, default=64, help="slices per batch")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--volumes", type=int, default=36, help="volumes of the Table IV batch")
    ap.add_argument("--only-precision", action="store_true",
                    help="only the precision and Table IV parts")
    ap.add_argument("--json", metavar="PATH", help="write the precision/Table IV figures")
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    figures = precision_and_table4(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    if args.only_precision:
        return

    from skimage.metrics import structural_similarity

    from MotionSSIMLib.assessment.inference import predict_slices
    from MotionSSIMLib.assessment.model import build_model
    from MotionSSIMLib.imaging.geometry import to_model_input
    from MotionSSIMLib.simulation import kspace_motion, ssim

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    rng = np.random.default_rng(0)
    n = args.n
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"N = {n} slices")

    net = build_model("resnet18").to(dev).eval()
    for label, imgs, spacing in (("256x256", rng.random((n, 256, 256)).astype(np.float32),
                                  (1.0, 1.0)),
                                 ("320x320", rng.random((n, 320, 320)).astype(np.float32),
                                  (0.7, 0.7)),
                                 ("180x220 0.9x1.2mm", rng.random((n, 180, 220)).astype(
                                     np.float32), (0.9, 1.2))):
        t_pre = _timeit(lambda imgs=imgs, spacing=spacing: to_model_input(imgs, spacing))
        x = torch.from_numpy(to_model_input(imgs, spacing))[:, None]
        ref, bare = fastest_bare(net, x, dev, args.batch_size, sync)
        t_all = _timeit(lambda imgs=imgs, spacing=spacing: predict_slices(
            imgs, net, dev, args.batch_size, spacing), sync=sync)
        print(f"predict_slices {label:>18}: {n / t_all:8.1f} slices/s = "
              f"{n / t_all / bare[ref]:4.2f} of the fastest bare forward ({ref}, "
              f"{bare[ref]:.1f} slices/s) | preprocessing {n / t_pre:8.0f} slices/s = "
              f"{100 * t_pre / t_all:4.1f} % of predict_slices")

    clean = torch.from_numpy(brain_like(n, 256, rng))[:, None]
    corrupted = kspace_motion.kspace_motion(clean, 0.6, torch.Generator().manual_seed(0))
    a_np, b_np = clean[:, 0].numpy(), corrupted[:, 0].numpy()
    t_sk = _timeit(lambda: [structural_similarity(a_np[i], b_np[i], data_range=1.0)
                            for i in range(n)], repeat=1)
    ca, cb = clean.to(dev), corrupted.to(dev)
    t_ssim = _timeit(lambda: ssim.ssim(ca, cb), sync=sync)
    print(f"SSIM: torch {n / t_ssim:9.1f} slices/s | skimage {n / t_sk:7.1f} slices/s | "
          f"ratio {t_sk / t_ssim:6.1f}x")

    gen = torch.Generator(device="cpu").manual_seed(0)
    sev = torch.full((n,), 0.6)
    t_ks = _timeit(lambda: kspace_motion.kspace_motion(ca, sev.to(dev), gen), sync=sync)
    nrng = np.random.default_rng(0)
    t_np = _timeit(lambda: [numpy_kspace_motion(a_np[i], nrng) for i in range(n)], repeat=1)
    print(f"k-space motion: torch {n / t_ks:9.1f} slices/s | numpy reference {n / t_np:7.1f} "
          f"slices/s | ratio {t_np / t_ks:6.1f}x")


if __name__ == "__main__":
    main()
