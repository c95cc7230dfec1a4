"""What lets N jobs share an archive and a stopped run resume: shards, fingerprints, manifests.

- Sharding (`--shard I/N`): scan k belongs to shard 1 + (SHA-256(key) mod N). It depends on the
  key alone, not on the order or number of scans found, so N jobs that see the same archive
  cover it exactly once, whatever each one's file system listing order.
- Resume: a scan whose summary JSON records the same *fingerprint* (SHA-256 of the model file
  and the options that change the result) and the same input (`input_identity`: size, mtime
  and SHA-256 of its bytes) and whose report files exist is not assessed again unless
  `--force`.
- Each run (or shard) writes a manifest, `OUT/motionssim_shards/shard-I-of-N.json`: every
  scan of the shard with its status (assessed, resumed, failed with its one-line reason, or
  pending if the run was stopped). `group_report` merges the manifests into the group report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..base.errors import InputError, SettingsError
from .discovery import Scan

__all__ = [
    "file_sha256", "finished", "fingerprint", "input_identity", "inside_out", "manifest_path",
    "parse_shard", "same_input", "select_shard", "shard_of",
]

MANIFEST_DIR = "motionssim_shards"
MANIFEST_VERSION = 1
MAX_SHARDS = 100_000
MANIFEST_EVERY_S = 30.0  # an interrupted shard loses at most this much of its record
# the options that change a scan's result: a finished scan is reused only if they are equal
# precision as asked ("auto" stays "auto" on another machine): bf16 and fp32 differ by up to 0.01
FINGERPRINT_OPTIONS = ("orientation", "good", "sufficient", "min_foreground", "series",
                       "frames", "tta", "precision")


# ---------------------------------------------------------------------------------------------
# Sharding


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (1 <= I <= N) -> (I, N); SettingsError otherwise."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", str(text))
    if m is None:
        raise SettingsError(f"--shard {str(text)[:40]!r}: expected I/N, e.g. 3/8 (shard 3 of "
                            "8, counted from 1)")
    i, n = int(m.group(1)), int(m.group(2))
    if not 1 <= n <= MAX_SHARDS or not 1 <= i <= n:
        raise SettingsError(f"--shard {i}/{n}: I must lie in 1..N and N in 1..{MAX_SHARDS}")
    return i, n


def shard_of(key: str, n: int) -> int:
    """The shard (1..n) of a scan key: a stable hash, the same on every machine and run."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % n


def select_shard(scans: Iterable[Scan], i: int, n: int) -> list[Scan]:
    return [s for s in scans if shard_of(s.key, n) == i]


# ---------------------------------------------------------------------------------------------
# Resume


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(model_sha256: str, options: Any) -> dict[str, Any]:
    """What a finished scan's summary must record to be reused: the model file's SHA-256 and
    the options that change the result (FINGERPRINT_OPTIONS; absent ones are None)."""
    fp: dict[str, Any] = {"model_sha256": model_sha256}
    for name in FINGERPRINT_OPTIONS:
        value = getattr(options, name, None)
        fp[name] = value if value is None or isinstance(value, (str, int, float, bool)) \
            else str(value)
    return fp


def summary_path(out: str | Path, scan: Scan) -> Path:
    return scan.report_dir(out) / f"{scan.stem}_summary.json"


# formats whose header may name detached data files (any name, a list, a pattern)
DETACHED_HEADERS = (".mhd", ".nhdr")


def input_files(path: str | Path) -> list[Path]:
    """The files whose bytes make up an input, sorted: a file itself; a folder's regular,
    non-hidden files (a DICOM series); for a header that may name detached data (.mhd,
    .nhdr) every regular file of its folder, since its data files may have any name."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent if p.name.lower().endswith(DETACHED_HEADERS) \
        else None
    if folder is None:
        return [p]
    with os.scandir(folder) as it:
        found = [Path(e.path) for e in it if not e.name.startswith(".")
                 and e.is_file(follow_symlinks=True)]
    return sorted(set(found) | ({p} if p.is_file() else set()))


def _stat_files(files: Sequence[Path]) -> tuple[int, int]:
    """(total size, latest mtime_ns) of `files`; OSError if one cannot be stat'ed or is not
    a regular file (a FIFO would block the hash's open: the reader refuses it instead)."""
    sts = [f.stat() for f in files]
    if not all(stat.S_ISREG(st.st_mode) for st in sts):
        raise OSError(f"{files[0]}: not a regular file")
    return sum(st.st_size for st in sts), max((st.st_mtime_ns for st in sts), default=0)


def input_identity(path: str | Path) -> dict[str, Any]:
    """What a stored result is keyed on besides the fingerprint: the input's size, latest
    mtime (ns) and SHA-256 over its files' names and bytes (`input_files`). OSError when a
    file cannot be read."""
    files = input_files(path)
    size, mtime = _stat_files(files)
    h = hashlib.sha256()
    for f in files:
        h.update(os.fsencode(f.name) + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return {"size": size, "mtime_ns": mtime, "n_files": len(files), "sha256": h.hexdigest()}


def same_input(recorded: Any, path: str | Path) -> bool:
    """Whether the input at `path` is still the one `recorded` (input_identity) describes:
    size and mtime compared first (no read), then the content hash (a file replaced by
    another of the same size and time, e.g. copied with its time kept)."""
    if not isinstance(recorded, dict):
        return False
    try:
        files = input_files(path)
        if (*_stat_files(files), len(files)) != (recorded.get("size"),
                                                 recorded.get("mtime_ns"),
                                                 recorded.get("n_files")):
            return False
        return input_identity(path)["sha256"] == recorded.get("sha256")
    except OSError:
        return False


def finished(out: str | Path, scan: Scan, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a scan already assessed with fingerprint `fp` from the input as it is
    now (`same_input`) whose report files are all there, else None."""
    p = summary_path(out, scan)
    try:
        st = p.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 16 * 2**20:  # links, FIFOs: no
            return None
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("archive"), dict) \
            or data["archive"].get("fingerprint") != fp:
        return None
    files = data.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(v, str) and "/" not in v and (p.parent / v).is_file()
            for v in files.values()):
        return None
    if not same_input(data["archive"].get("input"), scan.path):
        return None
    return data


# ---------------------------------------------------------------------------------------------
# Manifests


def manifest_path(out: str | Path, i: int, n: int) -> Path:
    return Path(out) / MANIFEST_DIR / f"shard-{i:04d}-of-{n:04d}.json"


def _entry(scan: Scan, status: str, reason: str = "") -> dict[str, Any]:
    return {"key": scan.key, "input": _shown(scan.path), "rel": _shown(scan.rel),
            "root": _shown(scan.root), "bids": scan.bids, "entities": dict(scan.entities),
            "status": status, "reason": reason}


def _shown(text: Any) -> str:
    from ..assessment.report import printable

    return printable(text)


def write_json_atomic(path: Path, data: Any) -> None:
    """`data` as JSON at `path`, through a fresh temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_manifest(out: str | Path, i: int, n: int, fp: dict[str, Any], n_found: int,
                   entries: list[dict[str, Any]], complete: bool,
                   inputs: Sequence[str]) -> Path:
    path = inside_out(Path(out), [MANIFEST_DIR]) / manifest_path(out, i, n).name
    write_json_atomic(path, {
        "motionssim_manifest": MANIFEST_VERSION, "shard": [i, n], "complete": complete,
        "n_scans_found": n_found, "fingerprint": fp, "inputs": [_shown(x) for x in inputs],
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "scans": entries})
    return path


def inside_out(out: Path, parts: Sequence[str]) -> Path:
    """OUT/parts..., each folder on the way created if needed and none of them a symlink
    (InputError otherwise): a link planted in OUT (`qc/sub-01 -> elsewhere`) would put the
    reports outside it."""
    here = Path(out)
    for part in parts:
        here = here / part
        if here.is_symlink():
            raise InputError(f"{_shown(here)}: a symlink inside the report folder; refusing "
                             "to write the reports through it")
        here.mkdir(exist_ok=True)
    return here
