"""Join the weight shards of a GPU campaign into one checkpoint, verifying every checksum.

    .venv/bin/python scripts/join_shards.py CAMPAIGN_OUT_DIR OUT.safetensors

CAMPAIGN_OUT_DIR holds manifest.json and the `*.partNNN` files that `gpu_campaign.py run`
wrote. The joined file is checked against the manifest's SHA-256 and loaded as a MotionSSIM
checkpoint before it is renamed into place, so a damaged transfer never yields a model file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MotionSSIM"))


def join(folder: Path, target: Path) -> Path:
    """Join, verify and load-check; returns `target`. SystemExit with one line on a problem."""
    from MotionSSIMLib.assessment.checkpoint import load_checkpoint
    from MotionSSIMLib.base.errors import MotionSSIMError

    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        parts = manifest["parts"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"error: {manifest_path}: not a campaign manifest ({exc})") from None
    data = bytearray()
    for part in parts:
        path = folder / Path(part["file"]).name  # never outside the folder
        try:
            chunk = path.read_bytes()
        except OSError as exc:
            raise SystemExit(f"error: {path}: cannot read the shard ({exc.strerror})") from None
        if hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise SystemExit(f"error: {path}: checksum mismatch (damaged or wrong shard)")
        data += chunk
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise SystemExit(f"error: {folder}: the joined weights do not match the manifest")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_bytes(bytes(data))
    try:
        load_checkpoint(tmp)
    except MotionSSIMError as exc:
        tmp.unlink()
        raise SystemExit(f"error: {folder}: the joined file is not a valid checkpoint ({exc})") \
            from None
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("target", type=Path)
    args = ap.parse_args(argv)
    out = join(args.folder, args.target)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB, checksums verified, loads as a "
          "MotionSSIM checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
