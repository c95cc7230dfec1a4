"""Child processes that can be followed and stopped as a whole (standard library only).

The Slicer modules run training, evaluation and inference as ``PythonSlicer ...``. PythonSlicer is
a launcher: it starts the real Python as its own child, so ``Popen.terminate()`` ends only the
launcher and leaves the Python process (and its data-loader workers) running. Here a job is
started in a process group of its own (a new session on POSIX, a new process group on Windows)
and stopped as a tree: the whole group on POSIX, ``taskkill /T`` on Windows.

The output is read by a thread as bytes and decoded as UTF-8 with replacement, so a line that
is not valid text (a library printing in the C locale's encoding, a binary dump) cannot kill the
reader and stall the child on a full pipe.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

MAX_LINES = 5000  # lines kept until taken (a GUI polls them every second or two)


class Job:
    """A running child process tree with its output lines (see `start`)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self._lines: collections.deque = collections.deque(maxlen=MAX_LINES)
        self._reader = threading.Thread(target=self._read, name="MotionSSIM output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            # '\r' progress updates arrive as one long line: keep the last state of each line
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self._lines.append(text.rsplit("\r", 1)[-1])
        stream.close()

    def take_lines(self) -> list[str]:
        """The output lines read since the last call."""
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
        self._reader.join(timeout=5)  # the last lines are in the deque once wait returns
        return code

    def interrupt(self) -> None:
        """Ask the whole tree to stop (SIGTERM on POSIX: the trainer saves its state)."""
        if self.is_running():
            _signal_tree(self.process, graceful=True)

    def kill(self, grace_s: float = 5.0) -> None:
        """End the whole tree: SIGTERM, then SIGKILL after `grace_s` (POSIX); taskkill /T /F
        (Windows). Returns when the launcher has exited."""
        kill_tree(self.process, grace_s)


def start(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Job:
    """Start `command` in its own process group with stdout and stderr merged into one pipe."""
    kwargs: dict = {}
    if os.name == "nt":
        # own group (for taskkill /T and CTRL_BREAK), and no console window
        kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                   | getattr(subprocess, "CREATE_NO_WINDOW", 0))
    else:
        kwargs["start_new_session"] = True  # setsid(): the child leads a new process group
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        **kwargs,
    )
    return Job(process)


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
