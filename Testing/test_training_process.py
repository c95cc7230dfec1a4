"""The training process as the Slicer module starts it: train.py's exit on every path (inside
Slicer's `--python-script` nothing else would end the application), the exit status of a
requested stop versus a crash, and the lock that keeps a second trainer out of a folder."""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.training import folder_lock

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = ROOT / "MotionSSIMTraining" / "MotionSSIMTrainingScripts" / "train.py"


@pytest.fixture()
def fake_slicer(monkeypatch):
    """A `slicer` module as inside the application, whose util.exit records the status (the
    real one ends Slicer)."""
    exits = []
    module = types.ModuleType("slicer")
    module.app = object()
    module.util = types.SimpleNamespace(exit=exits.append)
    monkeypatch.setitem(sys.modules, "slicer", module)
    return exits


def run_train_py(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", [str(TRAIN_PY), "--", *argv])
    runpy.run_path(str(TRAIN_PY), run_name="__main__")


def test_a_crash_in_slicer_prints_the_traceback_and_exits_1(fake_slicer, monkeypatch, capsys):
    from MotionSSIMLib.training import training_cli

    def boom(argv):
        raise RuntimeError("boom in the trainer")

    monkeypatch.setattr(training_cli, "train_main", boom)
    run_train_py(monkeypatch, ["--out", "x"])
    err = capsys.readouterr().err
    assert fake_slicer == [1]
    assert "Traceback" in err and "RuntimeError: boom in the trainer" in err


def test_an_import_failure_in_slicer_also_exits(fake_slicer, monkeypatch, capsys):
    # cannot be imported
    monkeypatch.setitem(sys.modules, "MotionSSIMLib.training.training_cli", None)
    run_train_py(monkeypatch, ["--out", "x"])
    assert fake_slicer == [1] and "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("status", [0, 2, 3])
def test_the_trainers_status_reaches_slicer_exit(fake_slicer, monkeypatch, status):
    from MotionSSIMLib.training import training_cli

    seen = []
    monkeypatch.setattr(training_cli, "train_main", lambda argv: seen.append(argv) or status)
    run_train_py(monkeypatch, ["--out", "x", "--epochs", "2"])
    assert fake_slicer == [status] and seen == [["--out", "x", "--epochs", "2"]]


def test_a_usage_error_in_slicer_exits_2(fake_slicer, monkeypatch, capsys):
    run_train_py(monkeypatch, ["--no-such-option"])
    assert fake_slicer == [2] and "usage" in capsys.readouterr().err


def test_stopped_and_crashed_have_different_exit_statuses():
    from MotionSSIMLib.training.training_cli import EXIT_STOPPED

    namespace = runpy.run_path(str(TRAIN_PY), run_name="train_module")  # no training
    assert EXIT_STOPPED not in (0, 1, 2) and namespace["EXIT_CRASHED"] == 1


def test_a_missing_torch_is_one_line(monkeypatch, tmp_path, capsys):
    from MotionSSIMLib.training import training_cli

    monkeypatch.setitem(sys.modules, "MotionSSIMLib.training.trainer", None)
    assert training_cli.train_main(["--out", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "motionssim: error:" in err


# --------------------------------------------------------------------------- folder lock


@pytest.fixture()
def other_process():
    """A live process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_lock_is_taken_and_released(tmp_path):
    out = tmp_path / "run"
    with folder_lock.held(out) as path:
        assert path.read_text().split()[0] == str(os.getpid())
        assert folder_lock.holder(out) is None  # our own lock does not stop us
    assert not path.exists()


def test_a_live_trainer_keeps_a_second_one_out(tmp_path, other_process):
    folder_lock.lock_path(tmp_path).write_text(f"{other_process} {socket.gethostname()}\n")
    assert folder_lock.holder(tmp_path) == f"process {other_process}"
    with pytest.raises(InputError, match=f"process {other_process}.*already running"):
        folder_lock.acquire(tmp_path)
    folder_lock.release(tmp_path)  # not ours: left alone
    assert folder_lock.lock_path(tmp_path).exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its id is free now
    folder_lock.lock_path(tmp_path).write_text(f"{proc.pid} {socket.gethostname()}\n")
    assert folder_lock.holder(tmp_path) is None
    folder_lock.acquire(tmp_path)
    assert folder_lock.lock_path(tmp_path).read_text().split()[0] == str(os.getpid())
    folder_lock.release(tmp_path)


def test_a_lock_from_another_computer_is_respected(tmp_path):
    folder_lock.lock_path(tmp_path).write_text("123 some-other-host\n")
    with pytest.raises(InputError, match="process 123 on some-other-host"):
        folder_lock.acquire(tmp_path)


def test_the_command_line_refuses_a_folder_held_by_a_live_trainer(tmp_path, other_process,
                                                                   capsys):
    pytest.importorskip("torch")
    from MotionSSIMLib.training import training_cli

    out = tmp_path / "run"
    out.mkdir()
    folder_lock.lock_path(out).write_text(f"{other_process} {socket.gethostname()}\n")
    assert training_cli.train_main(["--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"process {other_process}" in err
    assert not (out / "state.pt").exists()
