"""Add measured results to the bundled model's metadata and write its model card anew.

    .venv/bin/python scripts/update_model_card.py [--invariance DIR/invariance.json] \\
        [--leave-one-out DIR/leave_one_out.json] [--notes NOTES.md] [--model FILE] [--card DIR]

The model card is written from the checkpoint's metadata (`bundle_model.model_card`), so results
measured after bundling go into the metadata, where they travel with the weights and every later
card keeps them: the matrix invariance of this model (`scripts/check_invariance.py --model FILE
--out DIR`; its JSON must hold a reading of FILE) and the training recipe's leave-one-family-out
table (`scripts/leave_one_out.py`), and --notes: Markdown sections of the card (before its
limits), e.g. figures measured on another protocol than the card's own. The weights are
written back unchanged (same storage dtype, atomically). --model defaults to the bundled model,
--card to its folder (MODEL_CARD.md and the metadata as JSON beside it). Bad inputs: one line
`error: FILE: problem`, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MotionSSIM"))
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--invariance", type=Path, metavar="JSON")
    ap.add_argument("--leave-one-out", type=Path, metavar="JSON")
    ap.add_argument("--notes", type=Path, metavar="MARKDOWN",
                    help="further sections of the card, kept in the metadata (replaces any)")
    ap.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    ap.add_argument("--card", type=Path, metavar="DIR",
                    help="where MODEL_CARD.md goes (default: the model's folder)")
    args = ap.parse_args(argv)

    import bundle_model
    import torch

    from MotionSSIMLib.assessment.checkpoint import (
        default_model_path,
        load_checkpoint,
        read_metadata,
        save_checkpoint,
    )
    from MotionSSIMLib.base.errors import MotionSSIMError

    model = args.model or default_model_path()
    card = args.card or model.parent
    try:
        loaded = load_checkpoint(model)
        meta = bundle_model.attach_results(loaded.metadata, model, args.invariance,
                                           args.leave_one_out)
        if args.notes is not None:
            meta["notes"] = bundle_model.read_markdown(args.notes)
        if "evaluation" not in meta:
            raise bundle_model.BundleError(f"{model}: no evaluation in its metadata: a model "
                                           "card needs scripts/bundle_model.py first")
        meta["known_limits"] = bundle_model.LIMITS
        dtype = getattr(torch, str(meta.get("dtype", "float32")), torch.float32)
        save_checkpoint(model, loaded.model, meta, dtype=dtype)
        meta = read_metadata(model)  # as written (format fields included)
        written = bundle_model.write_card(meta, card, model.name)
    except (MotionSSIMError, OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    added = [k for k in ("invariance", "leave_one_out", "notes") if k in meta]
    print(f"wrote {model} (weights unchanged) and {written}"
          f"{'; with ' + ', '.join(added) if added else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
