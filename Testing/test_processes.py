"""Child-process handling of the Slicer modules (MotionSSIMLib.bridge.processes), with real
processes.

PythonSlicer is a launcher that starts the real Python as its child; the tests stand in for it
with a Python process that starts a grandchild and waits for it, as the launcher does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from MotionSSIMLib.bridge import processes

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")

# "launcher": starts the grandchild (which prints its pid and sleeps), waits for it
LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", *sys.argv[1:]])
    sys.exit(child.wait())
    """
)
SLEEPER = textwrap.dedent(
    """
    import os, signal, sys, time
    def on_term(signum, frame):
        if len(sys.argv) > 1:
            open(sys.argv[1], "w").write("saved")  # the trainer saves a resumable state
        sys.exit(1)
    signal.signal(signal.SIGTERM, on_term)
    print("grandchild", os.getpid(), flush=True)
    time.sleep(120)
    """
)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def grandchild_pid(job: processes.Job, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        for line in job.take_lines():
            seen.append(line)
            if line.startswith("grandchild "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError(f"no grandchild pid in {seen}")


def launch(*extra: str) -> processes.Job:
    return processes.start([sys.executable, "-c", LAUNCHER, SLEEPER, *extra])


@posix_only
def test_terminating_the_launcher_alone_leaves_the_child_running():
    """The defect: Popen.terminate() on the launcher does not reach the Python child."""
    job = launch()
    pid = grandchild_pid(job)
    try:
        job.process.terminate()
        job.process.wait(timeout=30)
        time.sleep(0.3)
        assert alive(pid), "the grandchild should still run after terminate() of the launcher"
    finally:
        processes.kill_tree(job.process, grace_s=2)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "kill_tree ends the orphaned grandchild too (same process group)"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill_ends_the_whole_tree():
    job = launch()
    pid = grandchild_pid(job)
    assert alive(pid)
    start = time.monotonic()
    job.kill(grace_s=5)
    assert job.poll() is not None
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "Stop left the Python child running"
    assert time.monotonic() - start < 10


@posix_only
def test_interrupt_lets_the_child_save_its_state(tmp_path):
    marker = tmp_path / "state"
    job = launch(str(marker))
    pid = grandchild_pid(job)
    job.interrupt()  # SIGTERM to the group: the child's handler runs
    job.wait(timeout=30)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert marker.read_text() == "saved"


def test_reader_survives_undecodable_output():
    code = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'first\\n')\n"
        "out.write(b'latin-1 caf\\xe9 \\xff\\xfe\\n')\n"  # not UTF-8
        "out.write(b'progress 1\\rprogress 2\\n')\n"
        "out.flush()\n"
        "sys.stderr.write('on stderr\\n')\n"
        "out.write('last \\u00e9\\n'.encode('utf-8'))\n"
    )
    job = processes.start([sys.executable, "-c", code])
    assert job.wait(timeout=30) == 0
    lines = job.take_lines()
    assert lines[0] == "first"
    assert lines[1] == "latin-1 caf\ufffd \ufffd\ufffd"
    assert lines[2] == "progress 2"
    assert set(lines[3:]) == {"on stderr", "last \u00e9"}
    assert job.take_lines() == []


def test_start_passes_environment_and_exit_status(tmp_path):
    env = {**os.environ, "MOTIONSSIM_TEST_VALUE": "42"}
    job = processes.start(
        [sys.executable, "-c", "import os, sys; print(os.environ['MOTIONSSIM_TEST_VALUE']); "
                               "print(os.getcwd()); sys.exit(3)"],
        env=env, cwd=str(tmp_path))
    assert job.wait(timeout=30) == 3
    assert job.take_lines() == ["42", str(tmp_path)]
    assert not job.is_running()


@posix_only
def test_child_runs_in_its_own_process_group():
    job = processes.start([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert os.getpgid(job.pid) == job.pid != os.getpgid(0)
    finally:
        job.kill(grace_s=2)
    assert job.poll() is not None


def test_kill_of_a_finished_job_is_harmless():
    job = processes.start([sys.executable, "-c", "pass"])
    job.wait(timeout=30)
    job.kill(grace_s=1)
    job.interrupt()
    assert job.poll() == 0
    slow = processes.start([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            slow.wait(timeout=0.1)
    finally:
        slow.kill(grace_s=1)


def test_output_into_a_file_is_read_without_a_thread(tmp_path):
    """The form for Slicer's main thread (its idle event loop holds the GIL: a reader thread
    would hardly run): the child writes into a file, take_lines reads what is new."""
    code = (
        "import sys, time\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'one\\ntw'); out.flush(); time.sleep(0.5)\n"
        "out.write(b'o\\ncaf\\xe9\\nno newline at the end'); out.flush()\n"
    )
    log = tmp_path / "log.txt"
    job = processes.start([sys.executable, "-c", code], log_path=log)
    assert job._reader is None  # no thread
    deadline = time.monotonic() + 30
    seen = []
    while not seen and time.monotonic() < deadline:
        seen = job.take_lines()
    assert seen == ["one"]  # the partial "tw" waits for its end of line
    assert job.wait(timeout=30) == 0
    assert job.take_lines() == ["two", "caf\ufffd", "no newline at the end"]
    assert job.take_lines() == []


def test_log_tail_of_a_missing_file_is_empty(tmp_path):
    tail = processes.LogTail(tmp_path / "not yet")
    assert tail.take_lines() == [] and tail.take_lines(final=True) == []


@posix_only
def test_stop_returns_at_once_and_step_escalates(tmp_path):
    """No sleeping on the GUI thread: stop() sends SIGTERM and returns; a child that ignores
    it is killed by step() (the panel's timer) once the grace time is over."""
    code = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    job = processes.start([sys.executable, "-c", code], log_path=tmp_path / "log.txt")
    deadline = time.monotonic() + 30
    while "ready" not in job.take_lines() and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    job.stop(grace_s=1.0)
    assert time.monotonic() - start < 0.5  # returned at once
    assert not job.step()  # SIGTERM ignored: still there
    while not job.step() and time.monotonic() - start < 10:
        time.sleep(0.05)
    assert job.step() and 1.0 <= time.monotonic() - start < 10
    assert job.poll() == -9


def test_child_environment_puts_the_engine_first(tmp_path):
    env = processes.child_environment({"PYTHONPATH": "/elsewhere", "KEEP": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [processes.engine_folder(), "/elsewhere"]
    assert env["KEEP"] == "1" and env["PYTHONIOENCODING"] == "utf-8"
    assert (Path(processes.engine_folder()) / "MotionSSIMLib" / "__init__.py").is_file()
    assert processes.python_executable()  # outside Slicer: this interpreter
