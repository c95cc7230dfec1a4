"""Archives: folders and BIDS datasets assessed scan by scan, resumable and sharded.

`run_archive` is `motionssim assess` on folders: the scans found (`discovery`), this shard's
share of them, those not finished before (`manifest`), each read in a background thread while
the model assesses the one before (a queue of PREFETCH volumes: reading a compressed NIfTI and
inference overlap), its reports written under its key, and the shard's manifest kept up to date.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..base.errors import CheckpointError, InputError, MotionSSIMError, SettingsError
from .discovery import Scan, discover, is_series_folder
from .manifest import (
    MANIFEST_EVERY_S,
    _entry,
    _shown,
    file_sha256,
    fingerprint,
    finished,
    input_identity,
    inside_out,
    manifest_path,
    parse_shard,
    select_shard,
    summary_path,
    write_manifest,
)

PREFETCH = 1  # volumes read ahead: one waiting while one is assessed (memory: docs/archives.md)


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


def _reader(args: Any) -> Callable[[Scan], Any]:
    from ..imaging.io import read_series

    def read(scan: Scan) -> tuple[dict[str, Any] | None, Any]:
        """(input_identity or None when it cannot be taken, the Volume or Series): the
        identity first, so that a file changed while it is read is assessed again next run."""
        if scan.error:
            raise InputError(f"{scan.path}: {scan.error}")
        try:
            identity = input_identity(scan.path)
        except OSError:  # the reader says what is wrong with it in its own words
            identity = None
        return identity, read_series(scan.path, series=args.series,
                                     frames=getattr(args, "frames", None))
    return read


def _assess(obj: Any, args: Any, model: Any, device: Any, thresholds: Any) -> Any:
    """Assess a Volume (3D) or a Series (4D) with the run's options, every one of them
    (`--precision` and `--tta` too), as `assess` does for a file given by itself."""
    from ..assessment.frames import assess_series
    from ..assessment.inference import assess_volume
    from ..imaging.series import Series

    kw = dict(model=model, orientation=args.orientation, device=device,
              batch_size=args.batch_size, thresholds=thresholds,
              min_foreground=args.min_foreground, precision=args.precision, tta=args.tta)
    if isinstance(obj, Series):
        return assess_series(obj, **kw)
    return assess_volume(obj, **kw)


def _is_series(a: Any) -> bool:
    from ..assessment.frames import SeriesAssessment

    return isinstance(a, SeriesAssessment)


def _write(a: Any, out: Path, scan: Scan) -> dict[str, Path]:
    from ..assessment import report

    write = report.write_series_report if _is_series(a) else report.write_report
    folder = inside_out(out, scan.key.split("/")[:-1])
    return write(a, folder, scan.stem, source=str(scan.path))


def _line(scan: Scan, a: Any, summary: Path) -> str:
    from ..assessment import lines

    if _is_series(a):
        return lines.series_line(Path(scan.rel), a, summary)
    return lines.assess_line(Path(scan.rel), a, summary)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_archive(args: Any, model: Any, device: Any, thresholds: Any) -> int:
    """`motionssim assess` on folders / BIDS datasets (module docstring). Exit status: 0 all
    scans assessed (or resumed), 2 any scan unusable (each listed with its reason), 1 an
    internal error, 130 interrupted (the manifest records what was done)."""
    from tqdm import tqdm

    from ..assessment.lines import say
    from ..assessment.report import printable

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
            from .ratings import match_ratings, read_ratings

            match_ratings([{"path": s.rel} for s in scans], read_ratings(args.ratings),
                          args.ratings)
    except (MotionSSIMError, OSError) as exc:
        say(f"error: {exc}", sys.stderr)
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
        say(f"error: {exc}", sys.stderr)
        return 2
    where = f"shard {i}/{n}: " if n > 1 else ""
    if lost:
        say(f"note: {manifest_path(out, i, n)} of an earlier run listed {lost} scan(s) this "
            "run does not have: replaced, they leave the group report (assess them with "
            "these inputs, or use another --out)", sys.stderr)
    say(f"{where}{len(mine)} of {len(scans)} scans found"
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
        say(f"error: {stopped}", sys.stderr)
        return 2
    wall = time.perf_counter() - t_start
    say(f"{where}{len(todo)} assessed or tried in {wall:.1f} s (reading {reader.read_seconds:.1f} "
        f"s of it in the background), {resumed} resumed, {failed + internal} failed",
        sys.stderr)
    if n == 1:
        from .group_report import build_group_report

        try:
            report = build_group_report(out, getattr(args, "ratings", None))
        except (MotionSSIMError, OSError) as exc:
            say(f"error: {exc}", sys.stderr)
            return 2
        say(f"group report: {report['csv']} and {report['html']}", sys.stderr)
    else:
        say(f"{where}manifest {manifest_path(out, i, n)}; when every shard is done: "
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


__all__ = ["archive_mode", "run_archive"]
