"""Leave-one-family-out: does training on the other motion families teach a family never seen?

    .venv/bin/python scripts/leave_one_out.py --data ../train/data_v2plus/split.json \\
        --base MODEL_V2.safetensors --out ../train/lofo [--families trajectory,ordering,...]
        [--samples 3200] [--n 200] [--seed 0]

For each left-out family F (default: the five scanner families, `scanner_motion`; the base
model, model v2, was trained on TorchIO and k-space motion, so only these can be left out of
everything it saw) a short fine-tuning run starts from `--base` on the v3 recipe's mix
(`settings.V3_MOTION_FAMILIES`) without F; a control run of the same length keeps every family.
Then the held-out slices of F (`check_families.measure`: the evaluation's test slices with F's
motion) are read by the base model (F never seen), the run without F and the control. Per
family: bias (predicted - true SSIM), residual sd and the recall of truly insufficient slices.
Target (issue 22): every left-out family's bias within +-0.02. The runs live in OUT/runs/
(resumed if interrupted, reused when finished); the table goes to OUT/leave_one_out.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_families  # noqa: E402  (the per-family reading, shared)

TARGET_BIAS = 0.02
SCANNER_FAMILIES = ("trajectory", "ordering", "epi", "through_plane", "moves")


def mix_without(left_out: str | None) -> str:
    """The v3 training mix less one family (None: the whole mix, the control)."""
    from MotionSSIMLib.base.settings import V3_MOTION_FAMILIES, parse_families

    weights = parse_families(V3_MOTION_FAMILIES)
    return ",".join(f"{f}:{w:g}" for f, w in weights.items() if f != left_out)


def train_command(data: str, base: str, out: Path, families: str, samples: int, seed: int,
                  lr: float, freeze: int) -> list[str]:
    """The training CLI call of one short run (two epochs of a cosine schedule)."""
    cmd = [sys.executable, "-m", "MotionSSIMLib", "train", "--data", data, "--out", str(out),
           "--slices", "all", "--lr", str(lr), "--lr-schedule", "cosine", "--warmup", "0.05",
           "--epochs", "2", "--samples-per-epoch", str(max(1, samples // 2)),
           "--batch-size", "64", "--val-samples", "0", "--checkpoint-every", "10",
           "--freeze", str(freeze), "--seed", str(seed), "--motion-families", families,
           "--no-progress"]
    if (out / "state.pt").exists():
        return cmd + ["--resume"]
    return cmd + ["--init-from", base]


def finished(out: Path) -> bool:
    log = out / "log.json"
    return log.exists() and json.loads(log.read_text()).get("status") == "finished"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Leave-one-family-out: short runs of {result['samples']} samples from "
             f"`{Path(result['base']).name}` (v3 label and input, stem and layer1 frozen), "
             f"each without one family, a control with every family; {result['n']} held-out "
             f"slices of the left-out family, seed {result['seed']}. Bias = predicted - true "
             f"SSIM (target within +-{TARGET_BIAS}); sd = residual sd; recall = truly "
             "insufficient slices read insufficient.", "",
             "| left-out family | base (never seen): bias / sd / recall | without it: bias / sd "
             "/ recall | control (all families): bias / sd / recall | within target |",
             "|---|---|---|---|---|"]

    def cell(f: dict[str, Any]) -> str:
        recall = f["recall"]["insufficient"]
        return (f"{f['bias']:+.3f} / {f['residual_sd']:.3f} / "
                f"{'–' if recall is None else format(recall, '.2f')}")

    for family, row in result["families"].items():
        ok = abs(row["without"]["bias"]) <= TARGET_BIAS
        lines.append(f"| {family} | {cell(row['base'])} | {cell(row['without'])} | "
                     f"{cell(row['control'])} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="split file (train, validation, test)")
    ap.add_argument("--base", required=True, help="the model the runs start from")
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default=",".join(SCANNER_FAMILIES))
    ap.add_argument("--samples", type=int, default=3200, help="samples per run")
    ap.add_argument("--n", type=int, default=200, help="held-out slices per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--freeze", type=int, default=2)
    args = ap.parse_args(argv)

    from MotionSSIMLib.assessment.checkpoint import load_checkpoint
    from MotionSSIMLib.base.errors import MotionSSIMError
    from MotionSSIMLib.base.jsonable import write_tables
    from MotionSSIMLib.training.data import check_volumes, resolve_split

    out = Path(args.out)
    try:
        families = check_families._chosen_families(args.families)
        test, _ = check_volumes(resolve_split(args.data, "test"), what="test volumes")
        runs = {None: out / "runs" / "control"}
        runs.update({f: out / "runs" / f"without_{f}" for f in families})
        for left_out, folder in runs.items():
            if finished(folder):
                continue
            folder.parent.mkdir(parents=True, exist_ok=True)
            cmd = train_command(args.data, args.base, folder, mix_without(left_out),
                                args.samples, args.seed, args.lr, args.freeze)
            print(f"leave_one_out: training {folder.name}", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        base = load_checkpoint(args.base).model.eval()
        control = load_checkpoint(runs[None] / "last.safetensors").model.eval()
        rows = {}
        for family in families:
            without = load_checkpoint(runs[family] / "last.safetensors").model.eval()
            figures = check_families.measure(
                {"base": base, "without": without, "control": control}, test, [family],
                args.n, args.seed, "central")
            rows[family] = figures[family]
    except (MotionSSIMError, OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"leave_one_out: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    result = {"base": args.base, "samples": args.samples, "n": args.n, "seed": args.seed,
              "target_bias": TARGET_BIAS, "families": rows}
    text = markdown(result)
    print(text, end="")
    write_tables(out, "leave_one_out", result, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
