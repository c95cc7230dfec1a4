"""One trainer per output folder: a lock file with the trainer's process id.

Two trainers on one folder overwrite each other's checkpoints and state (a Slicer restarted
while its old training still runs, a second command line). The trainer takes the lock when it
starts and removes it when it ends; a lock whose process is gone (a killed trainer, a reboot)
is taken over. Standard library only: the Slicer panel checks it before starting a process,
without torch.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..base.errors import InputError

LOCK_NAME = "train.lock"


def lock_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / LOCK_NAME


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this computer."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFO
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def holder(folder: str | os.PathLike) -> str | None:
    """Who holds the folder's lock ('process 1234', or 'process 1234 on host' when taken on
    another computer, which cannot be checked from here), or None: no lock, a stale one, or
    this process's own."""
    try:
        text = lock_path(folder).read_text(encoding="utf-8").split()
        pid, host = int(text[0]), text[1] if len(text) > 1 else ""
    except (OSError, ValueError, IndexError):
        return None
    if host and host != socket.gethostname():
        return f"process {pid} on {host}"
    return f"process {pid}" if pid != os.getpid() and pid_alive(pid) else None


def acquire(folder: str | os.PathLike) -> Path:
    """Take the folder's lock for this process, or refuse in one line (InputError) when a live
    trainer holds it. A stale lock is replaced."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            who = holder(folder)
            if who is not None:
                raise InputError(f"{folder}: a training ({who}) is already running in "
                                 "this folder; stop it first (or use another output folder)"
                                 ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its process is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return path
    raise InputError(f"{path}: cannot take the training lock (another trainer is starting?)")


def release(folder: str | os.PathLike) -> None:
    """Remove the lock if this process holds it."""
    path = lock_path(folder)
    try:
        pid = int(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return
    if pid == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def held(folder: str | os.PathLike) -> Iterator[Path]:
    """`with held(out):` the lock for the duration of a training."""
    path = acquire(folder)
    try:
        yield path
    finally:
        release(folder)
