"""How an assessment runs beside a caller that must stay responsive: two runners with one
interface (start at construction; `poll()`, `done`, progress, `cancel()`, `wait()`, then
`assessment` or `error`). Neither touches MRML, VTK or Qt; node_jobs.AssessmentJob wraps them.

- ThreadRun: the engine on a Python worker thread. For scripts and tests only: inside Slicer the
  main thread holds the GIL while it idles in the Qt event loop (PythonQt), so a worker thread
  runs only while the main thread runs Python (a timer callback, a click) and an assessment
  takes ten times as long (measured in Testing/test_jobs.py with an emulated idle main thread).
- ChildRun: the engine in a child process of Slicer's own Python (PythonSlicer), as
  MONAIAuto3DSeg and TotalSegmentator run inference. The input goes to a temporary folder
  (job_files), the child (assess_child) writes its progress as lines into a log file there,
  which `poll()` reads without blocking, and its result as JSON. Cancel ends the whole process
  tree at once; a crash or a kill (out of memory) becomes one line (AssessmentCrashed); the
  temporary folder is removed when the child has gone.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..base.errors import SettingsError

POLL_S = 0.05  # wait(): how often a blocking caller looks
LOG_LINES_KEPT = 40  # the child's last output lines, for the crash message
KILL_GRACE_S = 5.0  # a child that exited leaves strays: they get this long after SIGTERM


class AssessmentCrashed(RuntimeError):
    """The child process ended without a result: a crash, or killed (out of memory). The
    message is one line; `log` holds the child's last output lines."""

    def __init__(self, message: str, log: list[str] | None = None) -> None:
        super().__init__(message)
        self.log = list(log or [])


@dataclass(frozen=True)
class ChildProcess:
    """Where and how a ChildRun starts its process: `python` (default:
    processes.python_executable(): PythonSlicer, else this interpreter), `env` (the base
    environment; inside Slicer slicer.util.startupEnvironment()), `temp_root` (the folder for
    the temporary copy; default: the system's)."""

    python: str | None = None
    env: Mapping[str, str] | None = None
    temp_root: str | None = None


def _engine(data: Any):
    """assess_volume for a Volume, assess_series for a Series."""
    from ..imaging.geometry import Volume

    if isinstance(data, Volume):
        from ..assessment.inference import assess_volume

        return assess_volume
    from ..assessment.frames import assess_series

    return assess_series


class _Run:
    """What both runners report (read on the caller's thread)."""

    def __init__(self) -> None:
        self.done_slices = 0
        self.total_slices = 0
        self.stage = "starting"
        self.assessment: Any = None
        self.error: BaseException | None = None
        self.elapsed_s = 0.0
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._start = time.monotonic()

    @property
    def done(self) -> bool:
        return self.poll()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def poll(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _progress(self, done: int, total: int) -> None:
        self.done_slices, self.total_slices = int(done), int(total)
        self.stage = "predicting"


class ThreadRun(_Run):
    """The engine on a daemon thread of this process (see the module docstring)."""

    def __init__(self, data: Any, model: Any = None, orientation: str = "auto",
                 device: str = "auto", batch_size: int = 4, thresholds: Any = None,
                 min_foreground: float = 0.05) -> None:
        super().__init__()
        self.device = None
        self._data = data
        self._args = dict(model=model, orientation=orientation, device=device,
                          batch_size=batch_size, thresholds=thresholds,
                          min_foreground=min_foreground)
        self._thread = threading.Thread(target=self._run, name="MotionSSIM assessment",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            from ..assessment.devices import resolve_device

            self.stage = "loading the model"
            args = dict(self._args)
            self.device = resolve_device(args.pop("device"))
            self.assessment = _engine(self._data)(
                self._data, device=self.device, progress=self._progress,
                cancel=self._cancel.is_set, **args)
            self.assessment.summary["device"] = str(self.device)
            self.stage = "done"
        except BaseException as exc:  # reported on the caller's thread
            self.error = exc
            self.stage = "cancelled" if self._cancel.is_set() else "failed"
        finally:
            self.elapsed_s = time.monotonic() - self._start
            self._data = None
            self._done.set()

    def cancel(self) -> None:
        """Stop at the next batch."""
        self._cancel.set()

    def close(self) -> None:
        self.cancel()


class ChildRun(_Run):
    """The engine in a child process (see the module docstring). `model`: None (the bundled
    model) or a checkpoint path; a model object cannot cross into another process."""

    def __init__(self, data: Any, model: Any = None, orientation: str = "auto",
                 device: str = "auto", batch_size: int = 4, thresholds: Any = None,
                 min_foreground: float = 0.05, child: ChildProcess | None = None) -> None:
        from ..assessment.classes import ClinicalThresholds
        from . import job_files, processes

        super().__init__()
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise SettingsError("an assessment in a child process takes a checkpoint path or "
                                f"None (the bundled model), not a {type(model).__name__}")
        child = child or ChildProcess()
        thresholds = thresholds if thresholds is not None else ClinicalThresholds()
        self.log: collections.deque = collections.deque(maxlen=LOG_LINES_KEPT)
        self.exit_code: int | None = None
        self.folder = tempfile.mkdtemp(prefix="MotionSSIM-", dir=child.temp_root)
        try:
            source = os.path.join(self.folder, "input.npz")
            self._result_path = os.path.join(self.folder, "result.json")
            job_files.write_input(source, data)
            command = [child.python or processes.python_executable(), "-m",
                       "MotionSSIMLib.bridge.assess_child", source, self._result_path,
                       "--orientation", orientation, "--device", device,
                       "--batch-size", str(int(batch_size)), "--good", repr(thresholds.good),
                       "--sufficient", repr(thresholds.sufficient),
                       "--min-foreground", repr(float(min_foreground))]
            if model is not None:
                command += ["--model", os.fspath(model)]
            self.command = command
            self._job = processes.start(command, env=processes.child_environment(child.env),
                                        cwd=self.folder,
                                        log_path=os.path.join(self.folder, "log.txt"))
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    @property
    def pid(self) -> int:
        return self._job.pid

    def _line(self, line: str) -> None:
        from .assess_child import PROGRESS_PREFIX, STAGE_PREFIX

        if line.startswith(PROGRESS_PREFIX):
            try:
                done, total = (int(v) for v in line[len(PROGRESS_PREFIX):].split())
            except ValueError:
                return
            self._progress(done, total)
        elif line.startswith(STAGE_PREFIX):
            self.stage = line[len(STAGE_PREFIX):]
        elif line.strip():
            self.log.append(line)

    def poll(self) -> bool:
        """Read the new output lines; once the child has gone, its result (or error) and the
        temporary folder's removal. Never blocks."""
        if self._done.is_set():
            return True
        for line in self._job.take_lines():
            self._line(line)
        code = self._job.poll()
        if code is None:
            return False
        if self.exit_code is None:  # the launcher has exited: nothing of the tree may stay
            self.exit_code = code
            self._job.stop(KILL_GRACE_S)
        if not self._job.step():
            return False
        for line in self._job.take_lines():
            self._line(line)
        self._finish(code)
        return True

    def _finish(self, code: int) -> None:
        from ..base.errors import Cancelled
        from . import job_files

        try:
            if self.cancelled:
                self.error = Cancelled("assessment cancelled")
            elif os.path.isfile(self._result_path):
                try:
                    self.assessment = job_files.read_result(self._result_path)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    self.error = AssessmentCrashed(f"the assessment process left an unreadable "
                                                   f"result ({exc})", list(self.log))
                except Exception as exc:  # the engine's error, re-raised with its class
                    self.error = exc
            else:
                self.error = AssessmentCrashed(crash_line(code, list(self.log)), list(self.log))
            self.stage = ("done" if self.error is None else
                          "cancelled" if self.cancelled else "failed")
        finally:
            self.elapsed_s = time.monotonic() - self._start
            shutil.rmtree(self.folder, ignore_errors=True)
            self._done.set()

    def cancel(self) -> None:
        """End the whole process tree now (nothing to save); poll() then reports cancelled."""
        if not self._done.is_set():
            self._cancel.set()
            self._job.kill_now()

    def close(self) -> None:
        """Cancel if running and wait for the tree to go (removes the temporary folder)."""
        self.cancel()
        self.wait(30)


def crash_line(code: int, log: list[str]) -> str:
    """One line for a child that ended without a result: how it ended and its last words (the
    last line of a traceback names the exception)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed ({name}{': out of memory?' if -code == 9 else ''})"
    else:
        how = f"crashed (exit status {code})"
    last = next((line.strip() for line in reversed(log) if line.strip()
                 and not line.startswith((" ", "\t"))), "")
    return f"the assessment process {how}" + (f": {last}" if last else "") + \
        ". Slicer is unaffected; see the log for details."


def series_estimate(n_frames: int, slices_per_frame: int,
                    seconds_per_slice: float | None) -> str:
    """'150 slices, about 2 min' for the question before a whole sequence is assessed; the
    time from the last assessment's speed, when there was one."""
    slices = int(n_frames) * int(slices_per_frame)
    if not seconds_per_slice:
        return f"{slices} slices"
    seconds = slices * float(seconds_per_slice)
    when = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    return f"{slices} slices, about {when} at the speed of the last assessment"
