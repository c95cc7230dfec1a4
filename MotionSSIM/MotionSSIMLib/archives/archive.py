"""Archives: folders and BIDS datasets assessed scan by scan, resumable and sharded.

- Discovery (`discover`). A folder holding DICOM files is one input (a series), as before. A
  folder with `dataset_description.json` is a BIDS root: every NIfTI under it is a scan
  (anat, dwi, func, fmap, ...; `derivatives/`, `sourcedata/`, `code/`, `stimuli/` and hidden
  folders are not raw scans and are skipped). Any other folder is walked for volumes (NIfTI,
  NRRD, MetaImage) and DICOM series folders. A file given by itself is a scan too.
- Each scan has a *key*: its path under the report folder without the report suffixes. Under
  a BIDS root it mirrors the dataset (`sub-01/ses-1/anat/sub-01_ses-1_T1w`), so the reports
  carry the BIDS entities; a loose file keeps the flat `report.report_name`. With several
  folders, each folder's keys start with its name.
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
- A background thread reads the next scan while the model assesses the current one (a queue
  of PREFETCH volumes): reading a compressed NIfTI and inference overlap.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import json
import os
import queue
import re
import secrets
import stat
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputError, MotionSSIMError, SettingsError

BIDS_DESCRIPTION = "dataset_description.json"
# folders of a BIDS dataset that hold no raw scans (processed images, sources, scripts)
BIDS_SKIP = frozenset({"derivatives", "sourcedata", "code", "stimuli", "phenotype"})
BIDS_DATATYPES = frozenset({"anat", "dwi", "func", "fmap", "perf", "pet", "micr", "nirs",
                            "meg", "eeg", "ieeg", "beh", "motion", "mrs"})
NIFTI_SUFFIXES = (".nii.gz", ".nii")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
MANIFEST_DIR = "motionssim_shards"
MANIFEST_VERSION = 1
MAX_SHARDS = 100_000
PREFETCH = 1  # volumes read ahead: one waiting while one is assessed (memory: see README)
MANIFEST_EVERY_S = 30.0  # an interrupted shard loses at most this much of its record
# the options that change a scan's result: a finished scan is reused only if they are equal
# precision as asked ("auto" stays "auto" on another machine): bf16 and fp32 differ by up to 0.01
FINGERPRINT_OPTIONS = ("orientation", "good", "sufficient", "min_foreground", "series",
                       "frames", "tta", "precision")
_ENTITY = re.compile(r"^([A-Za-z0-9]+)-([A-Za-z0-9.+]+)$")


@dataclass(frozen=True)
class Scan:
    """One input of an archive run: `path` is read, its reports go to OUT/`key`_*."""

    path: Path
    key: str  # posix path under the report folder, without the report suffixes
    rel: str  # shown in the reports: the path under its folder, or the input as given
    root: str = ""  # the folder it was found in ("" for a file given by itself)
    bids: bool = False
    entities: tuple[tuple[str, str], ...] = ()
    error: str = ""  # found but unusable before reading (an unreadable folder)

    def entity(self, name: str) -> str:
        return dict(self.entities).get(name, "")

    def report_dir(self, out: str | Path) -> Path:
        return Path(out).joinpath(*self.key.split("/")[:-1])

    @property
    def stem(self) -> str:
        return self.key.rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------
# Discovery


def strip_suffix(name: str, suffixes: Sequence[str] = VOLUME_SUFFIXES + DICOM_SUFFIXES) -> str:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return name


def is_bids_root(folder: str | Path) -> bool:
    return (Path(folder) / BIDS_DESCRIPTION).is_file()


def _looks_dicom(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    if "." in name:  # volumes, notes, sidecars: not read to find out
        return False
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the open
            return False
        with open(path, "rb") as f:
            pre = f.read(132)
    except OSError:
        return False
    return len(pre) == 132 and pre[128:132] == b"DICM"


def is_series_folder(folder: str | Path) -> bool:
    """A folder that holds DICOM files itself: one input (a series), not an archive."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if _looks_dicom(Path(entry.path)):
                    return True
    except OSError:
        return False
    return False


def bids_entities(rel: str) -> dict[str, str]:
    """subject, session, datatype, run, acq, task and suffix of a path under a BIDS root
    (`sub-01/ses-2/func/sub-01_ses-2_task-rest_run-1_bold.nii.gz`); the folders give the
    subject and session when the file name lacks them. Missing ones are ''."""
    parts = rel.split("/")
    chunks = strip_suffix(parts[-1], NIFTI_SUFFIXES).split("_")
    found: dict[str, str] = {}
    for c in chunks:
        m = _ENTITY.match(c)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    for p in parts[:-1]:
        m = _ENTITY.match(p)
        if m and m.group(1) in ("sub", "ses") and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    suffix = chunks[-1] if len(chunks) > 1 and not _ENTITY.match(chunks[-1]) else ""
    datatype = parts[-2] if len(parts) >= 2 and parts[-2] in BIDS_DATATYPES else ""
    return {"subject": found.get("sub", ""), "session": found.get("ses", ""),
            "datatype": datatype, "run": found.get("run", ""), "acq": found.get("acq", ""),
            "task": found.get("task", ""), "suffix": suffix}


def _walk(root: Path, bids: bool) -> Iterator[tuple[str, bool, str]]:
    """(relative posix path, is a DICOM folder, error) of the scans under `root`, sorted.
    Folder symlinks are followed (a subject folder linked in from elsewhere is part of the
    dataset); a folder reached twice (a link loop, two links to one folder) is walked once."""
    errors: list[OSError] = []
    walked: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, onerror=errors.append, followlinks=True):
        here = Path(folder)
        try:
            st = here.stat()
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        if ident is not None and ident in walked:
            dirs[:] = []
            continue
        if ident is not None:
            walked.add(ident)
        rel_dir = here.relative_to(root).as_posix()
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (bids and d in BIDS_SKIP))
        files = sorted(f for f in files if not f.startswith("."))
        if not bids and rel_dir != "." and any(_looks_dicom(here / f) for f in files):
            yield rel_dir, True, ""
        for f in files:
            low = f.lower()
            if low.endswith(NIFTI_SUFFIXES if bids else VOLUME_SUFFIXES):
                yield (f if rel_dir == "." else f"{rel_dir}/{f}"), False, ""
    for exc in errors:  # a folder that could not be listed: reported, not silently skipped
        where = Path(exc.filename) if exc.filename else root
        try:
            rel = where.relative_to(root).as_posix()
        except ValueError:
            rel = where.name
        yield rel, True, f"cannot list the folder ({exc.strerror or exc})"


def _report_key(key: str) -> str:
    """`key` with its last component as the report files will be named (report.safe_stem)."""
    from .report import safe_stem

    head, _, stem = key.rpartition("/")
    return f"{head}/{safe_stem(stem)}" if head else safe_stem(stem)


def discover(inputs: Sequence[str | os.PathLike]) -> list[Scan]:
    """The scans of the inputs (module docstring): folders walked, files as they are. A scan
    found twice (the same file through two inputs) is kept once; two scans whose keys
    collide get the 8-hex SHA-256 of their resolved path appended."""
    from .report import report_name

    folders = [Path(p) for p in inputs if Path(p).is_dir() and not is_series_folder(p)]
    prefix = len({str(f.resolve()) for f in folders}) > 1
    scans: list[Scan] = []
    for raw in inputs:
        p = Path(raw)
        if p in folders:
            bids = is_bids_root(p)
            name = p.resolve().name or "root"
            before = len(scans)
            for rel, is_dir, error in _walk(p, bids):
                base = rel if is_dir else strip_suffix(rel)
                if is_dir and rel in ("", "."):
                    base = name
                key = _report_key(f"{name}/{base}" if prefix else base)
                ent = tuple(bids_entities(rel).items()) if bids else ()
                scans.append(Scan(p / rel, key, rel, str(p), bids, ent, error))
            if len(scans) == before:  # listed as a failure: an empty folder is no success
                what = ("no NIfTI file in this BIDS dataset" if bids else
                        "no scan in this folder (NIfTI, NRRD, MetaImage files or folders of "
                        "DICOM files, in it or below)")
                scans.append(Scan(p, _report_key(name), str(raw), str(p), bids, (), what))
        else:
            scans.append(Scan(p, report_name(p), str(raw)))
    return _unique(scans)


def _resolved(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return os.path.abspath(path)


def distinct_inputs(inputs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The inputs with each file or folder once, by resolved path (the first spelling kept),
    and the (dropped, kept) pairs: `a.nii` named twice, or once through a symlink, is one scan."""
    kept: dict[str, str] = {}
    dropped = []
    for raw in inputs:
        ident = _resolved(Path(raw))
        if ident in kept:
            dropped.append((raw, kept[ident]))
        else:
            kept[ident] = raw
    return list(kept.values()), dropped


def _unique(scans: list[Scan]) -> list[Scan]:
    """Each input once (by its resolved path: a file named twice, or given by name and found
    in a folder, is one scan, the first found), then keys made distinct: two scans whose keys
    would name the same report files (equal once case is ignored, since macOS and Windows
    file systems ignore it) each get the 8-hex SHA-256 of their resolved path appended."""
    seen: set[str] = set()
    kept = []
    for s in scans:
        ident = _resolved(s.path)
        if ident not in seen:
            seen.add(ident)
            kept.append(s)
    by_key: dict[str, int] = {}
    for s in kept:
        by_key[s.key.casefold()] = by_key.get(s.key.casefold(), 0) + 1
    out = []
    for s in kept:
        if by_key[s.key.casefold()] > 1:
            digest = hashlib.sha256(os.fsencode(_resolved(s.path))).hexdigest()[:8]
            s = Scan(s.path, f"{s.key}_{digest}", s.rel, s.root, s.bids, s.entities, s.error)
        out.append(s)
    return out


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
    from .report import printable

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


# ---------------------------------------------------------------------------------------------
# Reading ahead


class Prefetch:
    """Iterate over (item, value, error) with `read(item)` run in a background thread, at
    most `depth` results waiting: the next scan is read while the current one is assessed.
    An exception from `read` is handed over as `error`, never raised in the thread."""

    _END = object()

    def __init__(self, items: Iterable[Any], read: Callable[[Any], Any], depth: int = PREFETCH):
        self._items, self._read = list(items), read
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="motionssim-reader",
                                        daemon=True)
        self.read_seconds = 0.0

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        for item in self._items:
            if self._stop.is_set():
                return
            t0 = time.perf_counter()
            try:
                res = (item, self._read(item), None)
            except BaseException as exc:  # handed to the consumer, whatever it is
                res = (item, None, exc)
            self.read_seconds += time.perf_counter() - t0
            if not self._put(res):
                return
        self._put(self._END)

    def __iter__(self) -> Iterator[tuple[Any, Any, BaseException | None]]:
        self._thread.start()
        while True:
            got = self._q.get()
            if got is self._END:
                return
            yield got

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._q.get_nowait()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[Callable[[], str]]:
    """While the reader thread runs, keep what image libraries print off the terminal: fd 2
    (process-wide, where ITK and GDCM write) goes to a temporary file and Python warnings are
    recorded, for every thread; Python's own sys.stderr keeps writing to the terminal. Yields
    a function returning what was captured. `io` does the same per read, but only in the main
    thread, since fd 2 is shared by all threads."""
    if not enabled:
        yield lambda: ""
        return
    import tempfile

    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreters)
        yield lambda: ""
        return
    tmp = tempfile.TemporaryFile()
    old_stderr = sys.stderr
    try:
        on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by a Python object (a test's)
        on_fd2 = False
    terminal = None
    if on_fd2:  # sys.stderr keeps writing to the terminal through a copy of the old fd 2
        terminal = _io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0),
                                     encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                     errors="backslashreplace", line_buffering=True)
        sys.stderr = terminal
    os.dup2(tmp.fileno(), 2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            def text() -> str:
                tmp.flush()
                tmp.seek(0)
                out = tmp.read(1 << 16).decode("utf-8", "replace")
                tmp.seek(0, os.SEEK_END)
                notes = [f"{w.category.__name__}: {w.message}" for w in caught]
                return "\n".join([*captured, out, *notes]).strip()
            yield text
    finally:
        sys.stderr = old_stderr
        os.dup2(saved, 2)
        os.close(saved)
        if terminal is not None:
            with contextlib.suppress(OSError, ValueError):
                terminal.close()
        tmp.close()


# ---------------------------------------------------------------------------------------------
# The run


def archive_mode(args: Any) -> bool:
    """An archive run: a folder to walk among the inputs (not a DICOM series folder), or
    --shard / --ratings given."""
    if getattr(args, "shard", None) or getattr(args, "ratings", None):
        return True
    return any(Path(p).is_dir() and not is_series_folder(p) for p in args.inputs)


def _series_module():
    """The 4D series engine (series.py with report.write_series_report) when this
    installation has it, else None (4D files are then listed with io's reason)."""
    try:
        from . import report, series
    except ImportError:
        return None
    needed = (hasattr(series, n) for n in ("read_series", "assess_series", "Series",
                                           "SeriesAssessment"))
    return series if all(needed) and hasattr(report, "write_series_report") else None


def _reader(args: Any) -> Callable[[Scan], Any]:
    from .io import read_input

    series = _series_module()

    def read(scan: Scan) -> tuple[dict[str, Any] | None, Any]:
        """(input_identity or None when it cannot be taken, the Volume or Series): the
        identity first, so that a file changed while it is read is assessed again next run."""
        if scan.error:
            raise InputError(f"{scan.path}: {scan.error}")
        try:
            identity = input_identity(scan.path)
        except OSError:  # the reader says what is wrong with it in its own words
            identity = None
        if series is not None:
            return identity, series.read_series(scan.path, series=args.series,
                                                frames=getattr(args, "frames", None))
        return identity, read_input(scan.path, series=args.series)
    return read


def _assess(obj: Any, args: Any, model: Any, device: Any, thresholds: Any) -> Any:
    """Assess a Volume (3D) or a series.Series (4D) with the run's options, every one of them
    (`--precision` and `--tta` too), as `assess` does for a file given by itself."""
    from .inference import assess_volume

    kw = dict(model=model, orientation=args.orientation, device=device,
              batch_size=args.batch_size, thresholds=thresholds,
              min_foreground=args.min_foreground, precision=args.precision, tta=args.tta)
    series = _series_module()
    if series is not None and isinstance(obj, series.Series):
        return series.assess_series(obj, **kw)
    return assess_volume(obj, **kw)


def _is_series(a: Any) -> bool:
    series = _series_module()
    return series is not None and isinstance(a, series.SeriesAssessment)


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


def _write(a: Any, out: Path, scan: Scan) -> dict[str, Path]:
    from . import report

    write = report.write_series_report if _is_series(a) else report.write_report
    folder = inside_out(out, scan.key.split("/")[:-1])
    return write(a, folder, scan.stem, source=str(scan.path))


def _line(scan: Scan, a: Any, summary: Path) -> str:
    from . import cli

    if _is_series(a) and hasattr(cli, "series_line"):
        return cli.series_line(Path(scan.rel), a, summary)
    return cli.assess_line(Path(scan.rel), a, summary)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_archive(args: Any, model: Any, device: Any, thresholds: Any) -> int:
    """`motionssim assess` on folders / BIDS datasets (module docstring). Exit status: 0 all
    scans assessed (or resumed), 2 any scan unusable (each listed with its reason), 1 an
    internal error, 130 interrupted (the manifest records what was done)."""
    from tqdm import tqdm

    from .cli import _say
    from .report import printable

    out = Path(args.out)
    try:
        i, n = parse_shard(args.shard) if getattr(args, "shard", None) else (1, 1)
        if args.true_ssim:
            raise SettingsError("--true-ssim goes with one input, not with a folder or "
                                "--shard")
        if getattr(args, "ratings", None) and n > 1:
            raise SettingsError("--ratings: give it to `motionssim group` once every "
                                "shard is done (a shard sees only its part)")
        if model.path is None:
            raise SettingsError("an archive run needs a model file (its SHA-256 is how "
                                "finished scans are recognised)")
        model_sha = file_sha256(model.path)
        scans = discover(args.inputs)
        if getattr(args, "ratings", None):  # refused now, not after hours of work: a bad
            # rating, one scan rated twice differently under two spellings
            from .group_report import match_ratings, read_ratings

            match_ratings([{"path": s.rel} for s in scans], read_ratings(args.ratings),
                          args.ratings)
    except (MotionSSIMError, OSError) as exc:
        _say(f"error: {exc}", sys.stderr)
        return 2
    fp = fingerprint(model_sha, args)
    mine = select_shard(scans, i, n)
    entries = {s.key: _entry(s, "pending") for s in mine}
    todo: list[Scan] = []
    resumed = 0
    for s in mine:
        if not args.force and finished(out, s, fp) is not None:
            entries[s.key]["status"] = "resumed"
            entries[s.key]["summary"] = summary_path(out, s).relative_to(out).as_posix()
            resumed += 1
        else:
            todo.append(s)

    def save(complete: bool) -> Path:
        return write_manifest(out, i, n, fp, len(scans), list(entries.values()), complete,
                              [str(x) for x in args.inputs])

    lost = _replaced_scans(out, i, n, entries)
    try:
        save(False)
    except (MotionSSIMError, OSError) as exc:  # a symlink planted in OUT, a full disk
        _say(f"error: {exc}", sys.stderr)
        return 2
    where = f"shard {i}/{n}: " if n > 1 else ""
    if lost:
        _say(f"note: {manifest_path(out, i, n)} of an earlier run listed {lost} scan(s) this "
             "run does not have: replaced, they leave the group report (assess them with "
             "these inputs, or use another --out)", sys.stderr)
    _say(f"{where}{len(mine)} of {len(scans)} scans found"
         + (f", {resumed} already assessed with this model (skipped; --force assesses them "
            "again)" if resumed else ""), sys.stderr)
    failed = internal = 0
    stopped: str | None = None
    t_start = last_save = time.perf_counter()
    with quiet_libraries(not args.debug) as _captured:
        reader = Prefetch(todo, _reader(args))
        bar = tqdm(total=len(todo), unit="scan", disable=not args.progress or len(todo) < 2,
                   file=sys.stderr)
        try:
            for scan, obj, err in reader:
                entry = entries[scan.key]
                try:
                    if err is not None:
                        raise err
                    identity, obj = obj
                    a = _assess(obj, args, model, device, thresholds)
                    del obj
                    a.model = {**a.model, "sha256": model_sha}
                    a.summary["archive"] = {"fingerprint": fp, "input": identity,
                                            "key": scan.key,
                                            "rel": _shown(scan.rel), "root": _shown(scan.root),
                                            "entities": dict(scan.entities)}
                    paths = _write(a, out, scan)
                    entry.update(status="assessed", reason="",
                                 summary=paths["json"].relative_to(out).as_posix())
                    tqdm.write(printable(_line(scan, a, paths["json"])), file=sys.stdout)
                except CheckpointError as exc:  # the model is broken: every scan would fail
                    stopped = _one_line(exc)
                    break
                except MotionSSIMError as exc:
                    failed += 1
                    entry.update(status="failed", reason=_about(scan, exc))
                except OSError as exc:
                    failed += 1
                    entry.update(status="failed", reason=f"{_shown(scan.path)}: cannot "
                                 f"write the report ({exc.strerror or exc})")
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # a bug: one line, and on with the other scans
                    if args.debug:
                        raise
                    internal += 1
                    entry.update(status="failed", reason=f"{_shown(scan.path)}: internal "
                                 f"error ({type(exc).__name__}: {_one_line(exc)})")
                if entry["status"] == "failed":
                    tqdm.write(printable(f"error: {entry['reason']}"), file=sys.stderr)
                bar.update(1)
                if time.perf_counter() - last_save > MANIFEST_EVERY_S:
                    save(False)
                    last_save = time.perf_counter()
        finally:
            reader.close()
            bar.close()
            # a stopped or interrupted shard still records what it did (pending = not done)
            save(stopped is None and all(e["status"] != "pending" for e in entries.values()))
    if stopped is not None:
        _say(f"error: {stopped}", sys.stderr)
        return 2
    wall = time.perf_counter() - t_start
    _say(f"{where}{len(todo)} assessed or tried in {wall:.1f} s (reading {reader.read_seconds:.1f} "
         f"s of it in the background), {resumed} resumed, {failed + internal} failed",
         sys.stderr)
    if n == 1:
        from .group_report import build_group_report

        try:
            report = build_group_report(out, getattr(args, "ratings", None))
        except (MotionSSIMError, OSError) as exc:
            _say(f"error: {exc}", sys.stderr)
            return 2
        _say(f"group report: {report['csv']} and {report['html']}", sys.stderr)
    else:
        _say(f"{where}manifest {manifest_path(out, i, n)}; when every shard is done: "
             f"motionssim group {out}", sys.stderr)
    return 1 if internal else 2 if failed else 0


def _replaced_scans(out: Path, i: int, n: int, entries: dict[str, Any]) -> int:
    """How many scans the manifest this run is about to replace lists that this run lacks
    (an earlier run on other inputs into the same --out): 0 when none or unreadable."""
    try:
        old = json.loads(manifest_path(out, i, n).read_text(encoding="utf-8"))
        keys = {e["key"] for e in old["scans"] if isinstance(e.get("key"), str)}
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return 0
    return len(keys - set(entries))


def _about(scan: Scan, exc: BaseException) -> str:
    msg = _shown(_one_line(exc))
    shown = _shown(scan.path)
    return msg if msg.startswith(shown) else f"{shown}: {msg}"


__all__ = ["Scan", "archive_mode", "bids_entities", "discover", "distinct_inputs",
           "file_sha256", "finished", "fingerprint", "input_identity", "inside_out",
           "is_bids_root", "manifest_path", "parse_shard", "run_archive", "same_input",
           "select_shard", "shard_of"]
