"""A whole GPU training campaign in one call: data, training, evaluation, sharded weights.

Made for the GPU machine that is sometimes lent to this project (one H200, 16 cores, no
network, torch/torchvision/scipy/scikit-image/safetensors/matplotlib/tqdm installed, but no
torchio, nilearn, nibabel or SimpleITK, and at most 64 MiB of files carried there, repository
included). Two steps:

    # here, once (needs PyPI): the MNI152 template files and the nibabel wheel -> campaign_carry/
    .venv/bin/python scripts/gpu_campaign.py prepare
    # there (device tool, carry ["campaign_carry"]): about 9 minutes of wall time
    bash scripts/gpu_campaign.sh            # = python3 scripts/gpu_campaign.py run --out $OUT
    # here, afterwards: one checkpoint from the shards, then evaluate and bundle as usual
    .venv/bin/python scripts/join_shards.py FILES_AT model.safetensors

`run` installs nibabel from the carried wheel when it is missing, makes synthetic subjects in
parallel (MotionSSIMLib.synthesis), measures the training rate, plans the schedule to fill the time
budget (cosine learning rate with warm-up, from the bundled model's weights), trains the model
v3 recipe (the v3 label and input: windows resampled to 256; motion over the acquired lines;
every motion family, settings.V3_MOTION_FAMILIES; a share settings.V3_STORAGE of the
slices stored at a lower matrix) with the corruption on the GPU (batched torch motion: torchio
and SimpleITK are never imported), evaluates the best weights on held-out subjects and writes
at most 8 files of at most 16 MiB into --out: the fp16 weights in shards, manifest.json (shard checksums, the plan,
samples/s, GPU memory, timings), train_log.csv, report.md, report.json and campaign.log.
`run --device cpu --tiny` is the dry run the test suite makes of the same code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))

from MotionSSIMLib.base.settings import (  # noqa: E402  (torch-free)
    P_CLEAN,
    V3_MOTION_FAMILIES,
    V3_STORAGE,
)

CARRY = ROOT / "campaign_carry"
SHARD_BYTES = 15 << 20          # below the 16 MiB a returned file may have
MAX_OUTPUT_FILES = 8
NEEDED = {"nibabel": "nibabel"}  # module -> wheel name, installed from the carry when missing
MODEL_NAME = "motionssim_resnet18.safetensors"


class Log:
    """Timestamped lines to stdout and OUT/campaign.log (flushed: a killed run keeps them)."""

    def __init__(self, path: Path) -> None:
        self.t0 = time.monotonic()
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f} s] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


# ----------------------------------------------------------------------------- prepare (here)


def prepare(carry: Path, download: bool = True) -> None:
    """Fill `carry` with what the GPU machine lacks: the MNI152 files (from nilearn) and the
    nibabel wheel (pip download, pure Python)."""
    from importlib.metadata import version

    from MotionSSIMLib.synthesis import anatomy

    template = carry / "template"
    template.mkdir(parents=True, exist_ok=True)
    os.environ.pop("MOTIONSSIM_TEMPLATE_DIR", None)
    src = anatomy.template_dir()
    for name in anatomy.TEMPLATE_FILES.values():
        shutil.copy2(src / name, template / name)
    wheels = carry / "wheels"
    wheels.mkdir(exist_ok=True)
    if download:
        for wheel in NEEDED.values():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "-d", str(wheels),
                            f"{wheel}=={version(wheel)}"], check=True)
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(f"{carry}: {size / 2**20:.1f} MiB to carry (with the repository: keep the total "
          "under 64 MiB)")


# ----------------------------------------------------------------------------- run (there)


def ensure_packages(carry: Path, log: Log) -> None:
    import importlib.util

    for module, wheel in NEEDED.items():
        if importlib.util.find_spec(module) is not None:
            continue
        found = sorted((carry / "wheels").glob(f"{wheel}-*.whl"))
        if not found:
            raise SystemExit(f"campaign: {module} is missing and no {wheel} wheel is in "
                             f"{carry / 'wheels'} (run 'gpu_campaign.py prepare' first)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                        "--no-deps", str(found[-1])], check=True)
        importlib.invalidate_caches()
        log(f"installed {found[-1].name}")
    if (carry / "template").is_dir():
        os.environ["MOTIONSSIM_TEMPLATE_DIR"] = str(carry / "template")


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:  # the dry run: every stage, minutes -> seconds
        return dict(train=3, val=1, test=1, batch=8, samples_per_epoch=16, val_samples=8,
                    bn=8, eval_n=24, input_size=64, probe=16, workers=0)
    cores = os.cpu_count() or 2
    return dict(train=args.subjects, val=max(4, args.subjects // 10),
                test=max(4, args.subjects // 10), batch=args.batch_size,
                samples_per_epoch=args.samples_per_epoch, val_samples=args.val_samples,
                bn=512, eval_n=args.eval_n, input_size=256, probe=args.batch_size * 12,
                workers=max(1, min(14, cores - 2)))


def measure_rate(settings_kw: dict, paths: list[str], work: Path, probe: int,
                 batch: int) -> float:
    """Training samples/s on the real pipeline: a short run, timed from its third step on
    (the first steps pay for cuDNN autotuning, worker start-up and cold caches)."""
    from MotionSSIMLib.training.trainer import TrainSettings, train

    times: list[float] = []
    s = TrainSettings(**{**settings_kw, "epochs": 1, "samples_per_epoch": probe,
                         "val_samples": 0, "bn_calibration": 0, "lr_schedule": "constant",
                         "checkpoint_every": 0, "init_from": None})
    train(s, work / "probe", paths, [], callback=lambda e: times.append(time.perf_counter()))
    if len(times) < 4:
        return batch / max(1e-9, times[-1] - times[0]) if len(times) > 1 else 1.0
    return batch * (len(times) - 3) / (times[-1] - times[2])


def shard(src: Path, out: Path) -> list[dict[str, Any]]:
    data = src.read_bytes()
    parts = []
    for k in range(0, max(1, len(data)), SHARD_BYTES):
        name = f"{src.name}.part{k // SHARD_BYTES:03d}"
        chunk = data[k:k + SHARD_BYTES]
        (out / name).write_bytes(chunk)
        parts.append({"file": name, "bytes": len(chunk),
                      "sha256": hashlib.sha256(chunk).hexdigest()})
    return parts


def run(args: argparse.Namespace) -> int:
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or (out.parent / f".{out.name}_work"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = Log(out / "campaign.log")
    budget = 60.0 * args.minutes
    ensure_packages(Path(args.carry), log)

    from MotionSSIMLib.assessment.checkpoint import (
        default_model_path,
        load_checkpoint,
        save_checkpoint,
    )
    from MotionSSIMLib.synthesis import writing
    from MotionSSIMLib.training.data import resolve_split
    from MotionSSIMLib.training.evaluation import evaluate_checkpoints
    from MotionSSIMLib.training.trainer import TrainSettings, train

    dev = torch.device(args.device if args.device != "auto"
                       else ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none"
    log(f"torch {torch.__version__}, device {dev} ({gpu}), {os.cpu_count()} cores, "
        f"budget {budget:.0f} s")
    plan = _plan(args)

    # 1. synthetic subjects, in parallel (deterministic for the seed whatever the workers)
    t = time.monotonic()
    data = writing.write_dataset(work / "data", plan["train"], plan["val"], plan["test"],
                                 seed=args.seed, workers=max(1, (os.cpu_count() or 2) - 1))
    split = data / "split.json"
    train_paths = [str(p) for p in resolve_split(split, "train")]
    val_paths = [str(p) for p in resolve_split(split, "validation")]
    test_paths = [str(p) for p in resolve_split(split, "test")]
    log(f"data: {len(train_paths)}/{len(val_paths)}/{len(test_paths)} subjects in "
        f"{time.monotonic() - t:.0f} s")

    init = args.init_from or str(default_model_path())
    # the dry run checks the stages, not learning: 4 steps of 8 slices at the campaign's lr
    # can throw the bundled weights far off (an evaluation MAE of 3.3 once), so it steps gently
    lr = min(args.lr, 1e-5) if args.tiny else args.lr
    base = dict(architecture="resnet18", batch_size=plan["batch"], lr=lr,
                input_size=plan["input_size"], motion_families=args.motion_families,
                freeze=args.freeze, seed=args.seed, storage=args.storage,
                p_clean=args.p_clean, array_noise=args.array_noise,
                band_noise=args.band_noise, workers=plan["workers"],
                device=str(dev), pipeline="auto", amp=True, channels_last=True, progress=False,
                slices="all", cache_mb=4096)

    # 2. the rate, then a schedule that fills the time left (minus evaluation and writing)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rate = measure_rate(base, train_paths, work, plan["probe"], plan["batch"])
    reserve = args.eval_seconds + 20.0
    train_seconds = max(10.0, budget - log.elapsed() - reserve)
    # per epoch: validation and BatchNorm calibration cost about this many training samples
    overhead = plan["val_samples"] * 0.4 + plan["bn"] * 0.4
    per_epoch_s = (plan["samples_per_epoch"] + overhead) / rate
    epochs = max(1, int(train_seconds * 0.97 / per_epoch_s))
    if args.tiny:
        epochs = 2
    log(f"probe: {rate:.1f} samples/s -> {epochs} epochs x {plan['samples_per_epoch']} samples "
        f"= {epochs * plan['samples_per_epoch']:,} samples in at most {train_seconds:.0f} s")

    # 3. training (stops itself at the time limit, resumable state kept in the work folder)
    settings = TrainSettings(**base, epochs=epochs, samples_per_epoch=plan["samples_per_epoch"],
                             val_samples=plan["val_samples"], bn_calibration=plan["bn"],
                             lr_schedule="cosine", warmup=0.03, init_from=init,
                             max_time=train_seconds, checkpoint_every=0)
    t = time.monotonic()
    result = train(settings, work / "run", train_paths, val_paths)
    train_time = time.monotonic() - t
    history = result.history
    samples = result.step * plan["batch"]
    peak = (torch.cuda.max_memory_allocated(dev) / 2**30) if dev.type == "cuda" else None
    log(f"training {result.status}: {result.epoch} epochs, {result.step} steps, "
        f"~{samples:,} samples in {train_time:.0f} s = {samples / train_time:.1f} samples/s "
        f"(validation included); best validation MSE {result.best_val_loss:.5f}"
        + (f"; peak GPU memory {peak:.1f} GiB" if peak is not None else ""))

    # 4. evaluation of the best weights on held-out subjects
    t = time.monotonic()
    best = work / "run" / "best.safetensors"
    evaluation = evaluate_checkpoints([best], test_paths, work / "eval", n=plan["eval_n"],
                                      seed=0, device=str(dev), batch_size=250,
                                      workers=plan["workers"], progress=False, slices="central")
    fig = next(iter(evaluation.report["models"].values()))["figures"]
    reg, acc = fig["regression"], fig["classification"]
    log(f"evaluation ({plan['eval_n']} slices, {time.monotonic() - t:.0f} s): residual "
        f"{reg['normal_fit']['mu']:+.4f} +- {reg['normal_fit']['sigma']:.4f}, MAE {reg['mae']:.4f},"
        f" 3/5/10-class {acc['3']['accuracy']:.3f}/{acc['5']['accuracy']:.3f}/"
        f"{acc['10']['accuracy']:.3f}")

    # 5. outputs: fp16 weights in shards, the logs and the evaluation
    loaded = load_checkpoint(best)
    meta = dict(loaded.metadata)
    meta["trained_on"] = {"device": gpu if dev.type == "cuda" else "cpu", "campaign": True}
    fp16 = work / MODEL_NAME
    save_checkpoint(fp16, loaded.model, meta, dtype=torch.float16)
    parts = shard(fp16, out)
    shutil.copy2(work / "run" / "log.csv", out / "train_log.csv")
    for name in ("report.md", "report.json"):
        shutil.copy2(work / "eval" / name, out / name)
    manifest = {
        "model": MODEL_NAME, "bytes": fp16.stat().st_size,
        "sha256": hashlib.sha256(fp16.read_bytes()).hexdigest(), "parts": parts,
        "device": str(dev), "gpu": gpu, "torch": torch.__version__, "cores": os.cpu_count(),
        "plan": {**plan, "epochs": epochs, "lr": lr, "init_from": Path(init).name,
                 "motion_families": args.motion_families, "freeze": args.freeze,
                 "storage": args.storage, "p_clean": args.p_clean,
                 "array_noise": args.array_noise, "band_noise": args.band_noise,
                 "budget_s": budget},
        "measured": {"probe_samples_per_s": round(rate, 2), "train_s": round(train_time, 1),
                     "steps": result.step, "samples": samples,
                     "samples_per_s": round(samples / max(train_time, 1e-9), 2),
                     "peak_gpu_memory_gib": None if peak is None else round(peak, 2),
                     "status": result.status, "best_val_loss": result.best_val_loss,
                     "epochs": result.epoch, "history_rows": len(history)},
        "evaluation": {"n": plan["eval_n"], "residual_mean": reg["normal_fit"]["mu"],
                       "residual_sd": reg["normal_fit"]["sigma"], "mae": reg["mae"],
                       "accuracy": {k: acc[k]["accuracy"] for k in ("3", "5", "10")}},
        "elapsed_s": round(log.elapsed(), 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    for module in ("torchio", "SimpleITK"):
        if sys.modules.get(module) is not None:  # None: blocked (the dry run's guard)
            log(f"warning: {module} was imported")
    files = [p for p in out.iterdir() if p.is_file()]
    too_big = [p.name for p in files if p.stat().st_size > 16 << 20]
    log(f"done in {log.elapsed():.0f} s: {len(files)} files in {out}"
        + (f"; TOO BIG: {too_big}" if too_big else ""))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if len(files) <= MAX_OUTPUT_FILES and not too_big else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="fill campaign_carry/ (here, with PyPI)")
    p.add_argument("--carry", default=str(CARRY))
    p.add_argument("--no-download", action="store_true", help="template files only")
    r = sub.add_parser("run", help="the campaign (on the GPU machine)")
    r.add_argument("--out", default=os.environ.get("OUT", "campaign_out"))
    r.add_argument("--work", help="scratch folder (default: beside --out)")
    r.add_argument("--carry", default=str(CARRY))
    r.add_argument("--device", default="auto")
    r.add_argument("--minutes", type=float, default=8.5, help="wall-time budget of the run")
    r.add_argument("--subjects", type=int, default=240, help="training subjects")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--samples-per-epoch", type=int, default=25600)
    r.add_argument("--val-samples", type=int, default=2000)
    r.add_argument("--eval-n", type=int, default=10000)
    r.add_argument("--eval-seconds", type=float, default=45.0,
                   help="time kept for the evaluation")
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--seed", type=int, default=11)
    r.add_argument("--init-from", help="starting weights (default: the bundled model)")
    r.add_argument("--motion-families", default=V3_MOTION_FAMILIES,
                   help=f"training motion mix (default, model v3's: {V3_MOTION_FAMILIES})")
    r.add_argument("--storage", type=float, default=V3_STORAGE,
                   help=f"share stored at a lower matrix (default, model v3's: {V3_STORAGE})")
    r.add_argument("--p-clean", type=float, default=P_CLEAN,
                   help=f"share of training slices left motion-free (default {P_CLEAN})")
    r.add_argument("--array-noise", type=float, default=0.0,
                   help="share of noisy training slices with array-coil noise (default 0)")
    r.add_argument("--band-noise", type=float, default=0.0,
                   help="share of noisy training slices with the acquired matrix's noise grain "
                        "(default 0)")
    r.add_argument("--freeze", type=int, default=0,
                   help="leading stages kept fixed (default 0: a GPU has the time to train all)")
    r.add_argument("--tiny", action="store_true", help="dry run at a tiny scale (tests)")
    r.add_argument("--keep-work", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        prepare(Path(args.carry), download=not args.no_download)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
