"""Other CPU runtimes for the network, measured before adopted (prints figures; no assertions).

    .venv/bin/python benchmarks/bench_runtimes.py [--model FILE] [--batch-size 32] [--json PATH]

Optional packages (not MotionSSIM's requirements; each path is skipped when missing):
`pip install onnxruntime openvino onnx onnxscript`.

The bundled model (or --model) on the bundled sample's slices and seeded corrupted copies of
them (the whole SSIM range), in one run, interleaved, best of 3 (the machine may be shared):
- torch float32 (default layout and channels-last), and bfloat16 channels-last only where the
  CPU has it natively (the fast path of `--precision auto`);
- ONNX Runtime float32 (CPUExecutionProvider) on the ONNX export of the same network;
- OpenVINO on the same ONNX file, float32 forced (`INFERENCE_PRECISION_HINT f32`) and its own
  default (which is bfloat16 on CPUs with AMX);
- int8 post-training static quantization in torch (FX graph mode, x86 backend), calibrated on
  the sample's clean slices.
For each: slices/s, the ratio to torch float32 and to the fastest torch path, the largest
|difference| from torch float32 and the number of clinical classes that change other than
within 0.005 of a threshold (the rule the bfloat16 path keeps). The CPU is printed first: the
adoption rule of issue 25 asks for >= 1.3x on an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))

NEAR = 0.005  # a class may change within this distance of a threshold (as for bfloat16)


def slices_for(n_corrupt: int = 3, seed: int = 0) -> torch.Tensor:
    """The sample's non-empty slices fitted to the model input, plus `n_corrupt` seeded
    corrupted copies of each: (N, 1, 256, 256)."""
    from MotionSSIMLib.assessment.checkpoint import default_model_path
    from MotionSSIMLib.imaging.geometry import extract_slices, to_model_input
    from MotionSSIMLib.imaging.io import read_volume
    from MotionSSIMLib.simulation.pipeline import corrupt_batch

    sample = read_volume(default_model_path().parents[1] / "Samples" / "sample_t2_motion.nii.gz")
    stack = extract_slices(sample, "auto")
    keep = np.flatnonzero(np.asarray(stack.foreground) > 0.05)
    x = torch.from_numpy(to_model_input(np.asarray(stack.images)[keep], stack.pixel_spacing))
    x = x[:, None]
    gen = torch.Generator().manual_seed(seed)
    copies = [corrupt_batch(x, gen)[0] for _ in range(n_corrupt)]
    return torch.cat([x, *copies]).contiguous()


def run_batches(fn, x: torch.Tensor, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch])).reshape(-1)
                           for i in range(0, len(x), batch)]).astype(np.float64)


def torch_paths(net: torch.nn.Module) -> dict:
    from MotionSSIMLib.assessment.devices import cpu_native_bf16
    from MotionSSIMLib.assessment.model import forward_ssim

    def plain(b):
        with torch.inference_mode():
            return net(b).float().numpy()

    def cl(b, amp=None):
        with torch.inference_mode():
            return forward_ssim(net, b.contiguous(memory_format=torch.channels_last),
                                amp).numpy()

    paths = {"torch fp32": ("contiguous", plain), "torch fp32 channels-last": ("cl", cl)}
    if cpu_native_bf16():
        paths["torch bf16 channels-last (native)"] = ("cl", lambda b: cl(b, torch.bfloat16))
    return paths


def onnx_file(net: torch.nn.Module, folder: Path) -> Path | None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return None
    path = folder / "motionssim.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 256, 256),), str(path), input_names=["x"],
                      output_names=["ssim"], dynamic_axes={"x": {0: "n"}, "ssim": {0: "n"}},
                      dynamo=False)
    return path


def ort_path(path: Path, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda b: sess.run(None, {"x": b.numpy()})[0]


def openvino_paths(path: Path, threads: int) -> dict:
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    out = {}
    for name, config in (("openvino fp32", {"INFERENCE_PRECISION_HINT": "f32"}),
                         ("openvino default precision", {})):
        compiled = core.compile_model(str(path), "CPU",
                                      {**config, "INFERENCE_NUM_THREADS": threads})
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        req = compiled.create_infer_request()
        out[f"{name} ({hint})"] = (lambda b, req=req: req.infer({0: b.numpy()})[0])
    return out


def int8_path(net: torch.nn.Module, calib: torch.Tensor):
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(net).eval()
    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (calib[:1],))
    with torch.inference_mode():
        for i in range(0, len(calib), 16):
            prepared(calib[i:i + 16])
    q = convert_fx(prepared)

    def fn(b):
        with torch.inference_mode():
            return q(b).float().numpy()
    return fn


def main() -> None:
    from MotionSSIMLib.assessment.checkpoint import default_model_path, load_checkpoint
    from MotionSSIMLib.assessment.classes import ClinicalThresholds, clinical_class
    from MotionSSIMLib.assessment.devices import cpu_line

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    threads = torch.get_num_threads()
    net = load_checkpoint(args.model or default_model_path()).model.eval()
    x = slices_for()
    n_clean = len(x) // 4
    paths = {k: fn for k, (_, fn) in torch_paths(net).items()}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = onnx_file(net, Path(tmp))
        skipped = []
        if onnx is None:
            skipped.append("onnx (not installed): no ONNX Runtime, no OpenVINO")
        else:
            ort = ort_path(onnx, threads)
            if ort is None:
                skipped.append("onnxruntime (not installed)")
            else:
                paths["onnxruntime fp32"] = ort
            ov = openvino_paths(onnx, threads)
            if not ov:
                skipped.append("openvino (not installed)")
            paths.update(ov)
        paths["torch int8 (FX, x86)"] = int8_path(net, x[:n_clean])
        outs, rates = {}, {}
        for _ in range(3):  # interleaved, best of 3
            for name, fn in paths.items():
                run_batches(fn, x[:args.batch_size], args.batch_size)  # warm-up
                t = time.perf_counter()
                outs[name] = run_batches(fn, x, args.batch_size)
                rates[name] = max(rates.get(name, 0.0), len(x) / (time.perf_counter() - t))
    ref = outs["torch fp32"]
    th = ClinicalThresholds()
    ref_c = clinical_class(np.clip(ref, 0, 1), th)
    near = np.zeros(len(ref), bool)
    for t in (th.good, th.sufficient):
        near |= np.abs(np.clip(ref, 0, 1) - t) <= NEAR
    fastest_torch = max((k for k in rates if k.startswith("torch") and "int8" not in k),
                        key=rates.get)
    print(f"{len(x)} slices (the sample's {n_clean} and 3 corrupted copies of each), batch "
          f"{args.batch_size}, {threads} threads; fastest torch path: {fastest_torch}")
    rows = {}
    for name in paths:
        p = np.clip(outs[name], 0, 1)
        diff = np.abs(p - np.clip(ref, 0, 1))
        changed = (clinical_class(p, th) != ref_c)
        rows[name] = {"slices_per_s": rates[name], "vs_torch_fp32": rates[name] / rates["torch fp32"],
                      "vs_fastest_torch": rates[name] / rates[fastest_torch],
                      "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                      "classes_changed": int(changed.sum()),
                      "classes_changed_away_from_threshold": int((changed & ~near).sum())}
        r = rows[name]
        print(f"  {name:>38}: {r['slices_per_s']:6.1f} slices/s  {r['vs_torch_fp32']:4.2f}x "
              f"torch fp32  {r['vs_fastest_torch']:4.2f}x {fastest_torch} | max |diff| "
              f"{r['max_abs_diff']:.4f}, classes changed {r['classes_changed']} "
              f"({r['classes_changed_away_from_threshold']} away from a threshold)")
    for s in skipped:
        print(f"  skipped: {s}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_line(), "threads": threads,
                                               "slices": len(x), "fastest_torch": fastest_torch,
                                               "paths": rows, "skipped": skipped}, indent=2))


if __name__ == "__main__":
    main()
