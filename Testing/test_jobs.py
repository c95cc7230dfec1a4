"""Assessment beside Slicer's main thread (MotionSSIMLib.bridge.jobs, node_jobs.AssessmentJob):
the panel's child-process job on real MRML nodes (slicer-core), its speed while the main thread holds the
GIL as Slicer's idle Qt event loop does, Cancel, crashes, scene close, and the files it
exchanges with its child (job_files).

Slicer's main thread holds the GIL while it idles in the Qt event loop (PythonQt); it lets
other Python threads run only while it runs Python itself (a timer callback). The emulation
below does the same: `ctypes.PyDLL` calls keep the GIL, so `usleep` through it is an idle event
loop, and the job's `poll()` between two sleeps is the panel's QTimer callback.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")

from MotionSSIMLib.base.errors import CheckpointError, InputError  # noqa: E402
from MotionSSIMLib.bridge import (  # noqa: E402
    job_files,
    jobs,
    node_jobs,
    series_results,
    volume_results,
)
from MotionSSIMLib.imaging.geometry import Volume  # noqa: E402
from MotionSSIMLib.imaging.series import series_from_array  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and usleep")
IDLE_TICK_S = 0.1  # the panel polls every 100 ms (MotionSSIM.POLL_INTERVAL_MS)


@pytest.fixture()
def temp_root(tmp_path):
    """The jobs' temporary folders go here, so a test can see that none is left."""
    root = tmp_path / "jobs"
    root.mkdir()
    return root


def head(shape=(6, 64, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = g[1] ** 2 + g[2] ** 2 < 0.6
    return np.where(inside, 100.0 + 30.0 * g[1] + rng.normal(0, 2, shape), 0.0).astype("float32")


def nifti(tmp_path, volumes_logic, array, name="v"):
    path = tmp_path / f"{name}.nii.gz"
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    nib.save(nib.Nifti1Image(np.transpose(array, (2, 1, 0)), affine), str(path))
    return path, volumes_logic.AddArchetypeVolume(str(path), name)


def idle_main_thread(job, cap_s: float = 120.0) -> tuple[float, bool]:
    """Slicer's idle event loop: the GIL held in C for IDLE_TICK_S, then the panel's poll.
    Returns (seconds, finished)."""
    libc = ctypes.PyDLL(None)  # PyDLL: calls keep the GIL
    start = time.monotonic()
    while not job.poll():
        if time.monotonic() - start > cap_s:
            return time.monotonic() - start, False
        libc.usleep(int(IDLE_TICK_S * 1e6))
    return time.monotonic() - start, True


def child(temp_root, **kw) -> jobs.ChildProcess:
    return jobs.ChildProcess(temp_root=str(temp_root), **kw)


# --------------------------------------------------------------------------- speed


@posix_only
def test_child_job_runs_at_command_line_speed_while_the_main_thread_holds_the_gil(
        mrml, tmp_path, model_path, temp_root):
    _, volumes_logic = mrml
    path, node = nifti(tmp_path, volumes_logic, head())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "MotionSSIM")}

    def command_line() -> float:
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "MotionSSIMLib", "assess", str(path), "--model",
                        model_path, "--device", "cpu", "--batch-size", "4", "--out",
                        str(tmp_path / "cli"), "--no-progress"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.monotonic() - start

    def child_job() -> float:
        job = node_jobs.AssessmentJob(node, model=model_path, device="cpu", child=child(temp_root))
        seconds, finished = idle_main_thread(job)
        assert finished and job.finish() is not None
        return seconds

    cli_s, child_s = command_line(), child_job()
    if child_s > 1.3 * cli_s:  # two cores shared with other work: one more try of each
        cli_s, child_s = min(cli_s, command_line()), min(child_s, child_job())
    assert child_s <= 1.3 * cli_s, (child_s, cli_s)

    # the same job on a worker thread: torch is already imported and the model file cached
    # here, so free-running it is faster than the command line, but with the GIL held by the
    # idle main thread it crawls (measured: 1.9 s free, 26 s idle-held, the child 5.5 s)
    job = node_jobs.AssessmentJob(node, model=model_path, device="cpu")
    assert job.wait(300)
    free_s = job.elapsed_s
    job = node_jobs.AssessmentJob(node, model=model_path, device="cpu")
    # the cap follows the free run alone: the command line's time grows with other load on
    # the cores (15 s measured beside a training run) and let the crawling job finish
    held_s, finished = idle_main_thread(job, cap_s=4 * free_s)
    job.cancel()
    job.wait(300)
    print(f"command line {cli_s:.1f} s; child job, main thread idle holding the GIL "
          f"{child_s:.1f} s; thread job free {free_s:.1f} s, idle-held > {held_s:.1f} s")
    assert not finished and held_s >= 4 * free_s, (held_s, free_s, cli_s, child_s)
    assert not any(temp_root.iterdir())


# --------------------------------------------------------------------------- MRML results


def test_child_job_writes_the_same_nodes_as_the_console_api(mrml, tmp_path, model_path,
                                                            temp_root):
    scene, volumes_logic = mrml
    _, node = nifti(tmp_path, volumes_logic, head())
    direct = node_jobs.assess_volume_node(node, model=model_path, device="cpu", batch_size=4)
    expected = [r.ssim for r in direct.assessment.records]
    counts = {c: scene.GetNumberOfNodesByClass(c) for c in (
        "vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLLabelMapVolumeNode")}
    for _ in range(2):  # re-Apply: the same nodes, none added
        job = node_jobs.AssessmentJob(node, model=model_path, device="cpu", child=child(temp_root))
        assert job.wait(300)
        result = job.finish()
        assert result.table.GetID() == direct.table.GetID()
        assert result.chart.GetID() == direct.chart.GetID()
        assert result.overlay.GetID() == direct.overlay.GetID()
        assert {c: scene.GetNumberOfNodesByClass(c) for c in counts} == counts
    got = slicer.util.arrayFromTableColumn(result.table, "ssim")
    assert np.allclose(got, expected, atol=1e-5)
    assert result.summary["device"] == "cpu" and job.total_slices == job.done_slices == 6
    assert not any(temp_root.iterdir())


def test_child_series_job_on_a_multivolume_node(mrml, model_path, temp_root):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    scene, _ = mrml
    frames = np.stack([head((5, 32, 36), seed=s) for s in range(3)])
    image = vtk.vtkImageData()
    image.SetDimensions(36, 32, 5)
    image.GetPointData().SetScalars(
        numpy_to_vtk(np.moveaxis(frames, 0, -1).reshape(-1, 3).copy(), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mv")
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([1.0, 1.0, 3.0, 1.0])))
    node.SetAttribute(series_results.MULTIVOLUME_FRAMES_ATTRIBUTE, "3")
    job = node_jobs.SeriesAssessmentJob(node, model=model_path, device="cpu", batch_size=8,
                                        child=child(temp_root))
    assert job.wait(300), list(job.run.log)
    result = job.finish()
    assert result.heatmap.GetNumberOfRows() == 3 and result.frame_result is not None
    assert job.total_slices == job.done_slices == 15
    assert not any(temp_root.iterdir())


# --------------------------------------------------------------------------- cancel, crash, close


@posix_only
def test_cancel_ends_the_child_tree_at_once_and_writes_nothing(mrml, tmp_path, model_path,
                                                               temp_root):
    scene, volumes_logic = mrml
    _, node = nifti(tmp_path, volumes_logic, head())
    before = scene.GetNumberOfNodes()
    job = node_jobs.AssessmentJob(node, model=model_path, device="cpu", child=child(temp_root))
    pid = job.run.pid
    job.cancel()
    start = time.monotonic()
    assert job.wait(30) and time.monotonic() - start < 5
    assert job.cancelled and job.stage == "cancelled" and job.finish() is None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of the process group is left
    assert scene.GetNumberOfNodes() == before and volume_results.find_result(node) is None
    assert not any(temp_root.iterdir())


def test_a_bad_model_file_gives_one_line(mrml, tmp_path, temp_root):
    _, volumes_logic = mrml
    _, node = nifti(tmp_path, volumes_logic, head())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    job = node_jobs.AssessmentJob(node, model=str(bad), device="cpu", child=child(temp_root))
    assert job.wait(300)
    with pytest.raises(CheckpointError) as info:
        job.finish()
    assert "\n" not in str(info.value) and "bad.safetensors" in str(info.value)
    assert job.run.exit_code == 2 and not any(temp_root.iterdir())


def test_engine_errors_keep_their_class_across_the_process(mrml, temp_root):
    volume = slicer.util.addVolumeFromArray(np.zeros((4, 20, 20), np.float32), name="blank")
    job = node_jobs.AssessmentJob(volume, device="cpu", child=child(temp_root))
    assert job.wait(300) and job.stage == "failed"
    with pytest.raises(InputError, match="no assessable slice"):
        job.finish()


@posix_only
def test_a_killed_child_gives_one_line_and_leaves_no_files(mrml, tmp_path, model_path,
                                                           temp_root):
    """What the out-of-memory killer does: SIGKILL to the Python process."""
    scene, volumes_logic = mrml
    _, node = nifti(tmp_path, volumes_logic, head())
    before = scene.GetNumberOfNodes()
    job = node_jobs.AssessmentJob(node, model=model_path, device="cpu", child=child(temp_root))
    deadline = time.monotonic() + 60
    while job.stage == "starting" and time.monotonic() < deadline:  # the engine has started
        job.poll()
        time.sleep(0.05)
    os.kill(job.run.pid, signal.SIGKILL)
    assert job.wait(30) and job.stage == "failed"
    with pytest.raises(jobs.AssessmentCrashed) as info:
        job.finish()
    message = str(info.value)
    assert "\n" not in message and "killed (SIGKILL: out of memory?)" in message
    assert scene.GetNumberOfNodes() == before and not any(temp_root.iterdir())


def test_a_crashing_child_names_its_exception(mrml, tmp_path, temp_root):
    """A child that dies with a traceback (here: an interpreter that cannot import the engine):
    the line names the exception, the traceback stays in `log`."""
    _, volumes_logic = mrml
    _, node = nifti(tmp_path, volumes_logic, head())
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport sys\nraise MemoryError('cannot allocate')\n")
    fake.chmod(0o755)
    job = node_jobs.AssessmentJob(node, device="cpu", child=child(temp_root, python=str(fake)))
    assert job.wait(60)
    with pytest.raises(jobs.AssessmentCrashed, match=r"crashed \(exit status 1\): "
                                                     r"MemoryError: cannot allocate"):
        job.finish()
    assert any("Traceback" in line for line in job.run.log)
    assert not any(temp_root.iterdir())


def test_scene_close_during_a_child_job_writes_nothing(mrml, tmp_path, model_path, temp_root):
    scene, volumes_logic = mrml
    _, node = nifti(tmp_path, volumes_logic, head())
    job = node_jobs.AssessmentJob(node, model=model_path, device="cpu", child=child(temp_root))
    scene.Clear(0)  # File > Close Scene (the panel also cancels the job)
    assert job.wait(300)
    assert job.finish() is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    assert not any(temp_root.iterdir())


def test_a_loaded_model_cannot_go_to_a_child(mrml, tmp_path, temp_root):
    from MotionSSIMLib.assessment.model import build_model
    from MotionSSIMLib.base.errors import SettingsError

    _, volumes_logic = mrml
    _, node = nifti(tmp_path, volumes_logic, head())
    with pytest.raises(SettingsError, match="checkpoint path"):
        node_jobs.AssessmentJob(node, model=build_model("resnet18"), child=child(temp_root))
    assert not any(temp_root.iterdir())


# --------------------------------------------------------------------------- job files


def test_input_files_keep_voxels_and_geometry(tmp_path):
    rng = np.random.default_rng(1)
    directions = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    vol = Volume(rng.normal(size=(3, 4, 5)).astype(np.float32), (0.9, 1.1, 3.0), directions,
                 (-1.5, 2.0, 30.25))
    job_files.write_input(tmp_path / "v.npz", vol)
    back = job_files.read_input(tmp_path / "v.npz")
    assert isinstance(back, Volume) and back.array.dtype == np.float32
    assert np.array_equal(back.array, vol.array)
    assert np.array_equal(back.ijk_to_ras(), vol.ijk_to_ras())
    s = series_from_array(rng.normal(size=(2, 3, 4, 5)), (1.0, 1.0, 2.0), directions,
                          (0.0, 1.0, 2.0), [3, 7], ["b=0", "b=1000"], 9, name="dwi")
    job_files.write_input(tmp_path / "s.npz", s)
    back = job_files.read_input(tmp_path / "s.npz")
    assert np.array_equal(back.array, s.array) and back.frame_indices == (3, 7)
    assert back.frame_labels == ("b=0", "b=1000") and back.n_input_frames == 9
    assert back.name == "dwi" and np.array_equal(back.ijk_to_ras(), s.ijk_to_ras())


def test_results_come_back_whole(tmp_path, model_path):
    from MotionSSIMLib.assessment.frames import assess_series
    from MotionSSIMLib.assessment.inference import assess_volume

    a = assess_volume(head(), model=model_path, device="cpu", batch_size=8)
    job_files.write_result(tmp_path / "r.json", a)
    back = job_files.read_result(tmp_path / "r.json")
    assert back.records == a.records and back.axis == a.axis
    assert back.orientation == a.orientation and back.summary["verdict"] == a.summary["verdict"]
    frames = np.stack([head((5, 32, 32), seed=s) for s in range(2)])
    frames[1] = 0.0  # a blank frame: kept with its reason
    sa = assess_series(series_from_array(frames), model=model_path, device="cpu")
    job_files.write_result(tmp_path / "s.json", sa)
    back = job_files.read_result(tmp_path / "s.json")
    assert back.frames[1].assessment is None and back.frames[1].error == sa.frames[1].error
    assert back.frames[0].assessment.records == sa.frames[0].assessment.records
    assert np.array_equal(back.matrix()[2], sa.matrix()[2], equal_nan=True)


def test_crash_line_is_one_line():
    log = ["Traceback (most recent call last):", '  File "x.py", line 1', "    boom()",
           "RuntimeError: CUDA out of memory"]
    line = jobs.crash_line(1, log)
    assert line.startswith("the assessment process crashed (exit status 1): RuntimeError: CUDA")
    assert "\n" not in line
    assert "killed (SIGKILL: out of memory?)" in jobs.crash_line(-9, [])


@posix_only
def test_the_main_process_never_imports_torch(tmp_path, model_path, temp_root):
    """Slicer's main process copies the voxels, starts the child and writes its results into
    the scene without importing torch (no pause of seconds at the first Apply): a fresh
    interpreter runs a whole child job on real MRML and then looks at its own modules."""
    script = tmp_path / "main_process.py"
    script.write_text(f"""
import sys
import numpy as np
import slicer
from MotionSSIMLib.bridge import jobs, node_jobs

slicer.mrmlScene = slicer.vtkMRMLScene()
node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
g = np.meshgrid(*[np.linspace(-1, 1, n) for n in (4, 48, 48)], indexing="ij")
array = np.where(g[1] ** 2 + g[2] ** 2 < 0.6, 100.0 + 30.0 * g[1], 0.0).astype("float32")
slicer.util.updateVolumeFromArray(node, array)
job = node_jobs.AssessmentJob(node, model={str(model_path)!r}, device="cpu",
                       child=jobs.ChildProcess(temp_root={str(temp_root)!r}))
assert job.wait(300)
result = job.finish()
assert result.table.GetNumberOfRows() == 4
print("torch imported:", "torch" in sys.modules)
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "MotionSSIM"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch imported: False" in done.stdout, done.stdout
