"""Child processes that can be followed and stopped as a whole (standard library only).

The Slicer modules run training, evaluation and inference as ``PythonSlicer ...``. PythonSlicer is
a launcher: it starts the real Python as its own child, so ``Popen.terminate()`` ends only the
launcher and leaves the Python process (and its data-loader workers) running. Here a job is
started in a process group of its own (a new session on POSIX, a new process group on Windows)
and stopped as a tree: the whole group on POSIX, ``taskkill /T`` on Windows.

The output is decoded as UTF-8 with replacement, so a line that is not valid text (a library
printing in the C locale's encoding, a binary dump) cannot kill the reader and stall the child.
It goes either to a pipe read by a thread, or (``log_path``) to a file that the caller reads
without blocking (``LogTail``). Inside Slicer use the file: the main thread holds the GIL while it
idles in the Qt event loop, so a Python reader thread runs only while the main thread runs
Python, and a child writing into a full pipe would wait for it.

Stopping without blocking the caller (a GUI timer): ``Job.stop(grace_s)`` sends SIGTERM to the
tree and ``Job.step()``, called from the timer, sends SIGKILL once the grace time is over;
``Job.kill_now()`` ends the tree at once. ``kill_tree`` is the blocking form for scripts.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

MAX_LINES = 5000  # lines kept until taken (a GUI polls them every second or two)


def _decode(raw: bytes) -> str:
    # '\r' progress updates arrive as one long line: keep the last state of each line
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    return text.rsplit("\r", 1)[-1]


class LogTail:
    """The complete lines appended to a file since the last call, read without blocking (no
    thread: a timer on the main thread calls `take_lines`). A partial last line waits for its
    end, unless `final` (the writer has exited)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._offset = 0
        self._partial = b""

    def take_lines(self, final: bool = False) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:  # not created yet, or removed with its folder
            data = b""
        self._offset += len(data)
        data = self._partial + data
        raw_lines = data.split(b"\n")
        self._partial = raw_lines.pop()  # b"" when the data ends with a newline
        if final and self._partial:
            raw_lines.append(self._partial)
            self._partial = b""
        return [_decode(raw) for raw in raw_lines]


class Job:
    """A running child process tree with its output lines (see `start`)."""

    def __init__(self, process: subprocess.Popen, log_path: str | None = None) -> None:
        self.process = process
        self.log_path = log_path
        self._kill_at: float | None = None  # stop(): when step() escalates to SIGKILL
        self._lines: collections.deque = collections.deque(maxlen=MAX_LINES)
        self._tail = LogTail(log_path) if log_path is not None else None
        self._reader = None
        if self._tail is None:
            self._reader = threading.Thread(target=self._read, name="MotionSSIM output",
                                            daemon=True)
            self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            self._lines.append(_decode(raw))
        stream.close()

    def take_lines(self) -> list[str]:
        """The output lines read since the last call."""
        if self._tail is not None:
            return self._tail.take_lines(final=self.process.poll() is not None)
        lines = []
        while self._lines:
            lines.append(self._lines.popleft())
        return lines

    def poll(self) -> int | None:
        return self.process.poll()

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)  # the last lines are in the deque once wait returns
        return code

    def interrupt(self) -> None:
        """Ask the whole tree to stop (SIGTERM on POSIX: the trainer saves its state)."""
        if self.is_running():
            _signal_tree(self.process, graceful=True)

    def kill(self, grace_s: float = 5.0) -> None:
        """End the whole tree: SIGTERM, then SIGKILL after `grace_s` (POSIX); taskkill /T /F
        (Windows). Returns when the launcher has exited: blocks, so not for a GUI thread
        (use stop() and step())."""
        kill_tree(self.process, grace_s)

    def kill_now(self) -> None:
        """End the whole tree at once (SIGKILL to the group; taskkill /T /F). Does not wait:
        step() or poll() reaps the launcher."""
        _signal_tree(self.process, graceful=False)
        self._kill_at = None

    def stop(self, grace_s: float = 5.0) -> None:
        """Ask the whole tree to stop (SIGTERM) and let step() end it (SIGKILL) if any of it
        is still there after `grace_s`. Returns at once. On Windows the tree ends at once."""
        if os.name == "nt":
            self.kill_now()
            return
        _signal_tree(self.process, graceful=True)
        if self._kill_at is None:
            self._kill_at = time.monotonic() + grace_s

    def step(self) -> bool:
        """Non-blocking follow-up for a timer: reap the launcher, escalate a stop() whose grace
        time is over. True when nothing of the tree is left."""
        self.process.poll()  # reap the leader, or it stays a zombie member of the group
        gone = not group_alive(self.process) if os.name != "nt" else \
            self.process.poll() is not None
        if gone:
            self._kill_at = None
            return self.process.poll() is not None
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            self.kill_now()
        return False


def start(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    log_path: str | os.PathLike | None = None,
) -> Job:
    """Start `command` in its own process group with stdout and stderr merged into one pipe,
    or into the file `log_path` (created or emptied; see the module docstring)."""
    kwargs: dict = {}
    if os.name == "nt":
        # own group (for taskkill /T and CTRL_BREAK), and no console window
        kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                   | getattr(subprocess, "CREATE_NO_WINDOW", 0))
    else:
        kwargs["start_new_session"] = True  # setsid(): the child leads a new process group
    log = open(log_path, "wb") if log_path is not None else None  # noqa: SIM115 (closed below)
    try:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log if log is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            **kwargs,
        )
    finally:
        if log is not None:
            log.close()  # the child has its own handle
    return Job(process, os.fspath(log_path) if log_path is not None else None)


def python_executable() -> str:
    """Slicer's own Python for child processes: PythonSlicer (a launcher that sets Slicer's
    paths, found on PATH inside Slicer as MONAIAuto3DSeg and TotalSegmentator find it, or beside
    this interpreter), else this interpreter (outside Slicer: tests, the command line)."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.isfile(candidate) else sys.executable


def engine_folder() -> str:
    """The folder holding the MotionSSIMLib package (put on a child's PYTHONPATH)."""
    # MotionSSIMLib/bridge/processes.py -> the folder above MotionSSIMLib
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment; inside Slicer pass
    slicer.util.startupEnvironment()) with the engine folder first on PYTHONPATH, unbuffered
    UTF-8 output whatever the locale."""
    env = dict(os.environ if base is None else base)
    paths = [engine_folder()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1",
                "PYTHONIOENCODING": "utf-8"})
    return env


def _signal_tree(process: subprocess.Popen, graceful: bool) -> None:
    if os.name == "nt":
        flags = ["/T"] if graceful else ["/T", "/F"]
        subprocess.run(["taskkill", *flags, "/PID", str(process.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return
    try:
        # the group id is the child's pid (start_new_session); it outlives the leader as long
        # as any member is alive, so this also reaches orphaned grandchildren
        os.killpg(process.pid, signal.SIGTERM if graceful else signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the job's group still exists (POSIX; the launcher on Windows)."""
    if os.name == "nt":
        return process.poll() is None
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_tree(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """End `process` and every process it started (see the module docstring)."""
    if os.name == "nt":
        _signal_tree(process, graceful=False)
        try:
            process.wait(timeout=max(grace_s, 1.0))
        except subprocess.TimeoutExpired:
            process.kill()
        return
    _signal_tree(process, graceful=True)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or it stays a zombie member of the group
        if not group_alive(process):
            break
        time.sleep(0.05)
    else:
        _signal_tree(process, graceful=False)
    try:
        process.wait(timeout=max(grace_s, 1.0))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
