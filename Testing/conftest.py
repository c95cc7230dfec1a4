"""Make the engine and the Slicer module folders importable without installing them."""

import locale
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "MotionSSIM", ROOT / "MotionSSIMTraining"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

# Two cores are shared: keep torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def c_locale():
    """The C locale (ASCII text I/O by default), as ITK sets it in the process it is loaded in
    and as a bare container has: files we write must not depend on the locale."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


# --------------------------------------------------------------------------- real MRML fixtures
# (test_scene.py, test_jobs.py; slicer-core is imported only by the tests that ask for them)


@pytest.fixture()
def mrml():
    """A fresh scene, installed as slicer.mrmlScene, with a volumes logic that can read files."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    # Without Slicer's application logic, loading logs a harmless "invalid Colors module logic".
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(scene)
    yield scene, volumes_logic
    slicer.mrmlScene = None
    scene.Clear(1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A randomly initialised ResNet-18 saved as a MotionSSIM checkpoint."""
    import torch

    from MotionSSIMLib.assessment.checkpoint import save_checkpoint
    from MotionSSIMLib.assessment.model import build_model

    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    with torch.no_grad():
        # inside the accepted raw range on any input the tests make: a random network's last
        # layer alone can read -1 on some (refused as broken), so its spread is cut 100-fold
        # about 0.5; the outputs still differ from slice to slice
        model.fc.weight.mul_(0.01)
        model.fc.bias.fill_(0.5)
    path = tmp_path_factory.mktemp("model") / "random_resnet18.safetensors"
    save_checkpoint(path, model, {"architecture": "resnet18", "note": "random weights, tests only"})
    return str(path)
