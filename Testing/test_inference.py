"""Classes, checkpoints (round trip and refusals), predict_slices and assess_volume."""

import json
import pickle
import struct

import numpy as np
import pytest
import torch

from MotionSSIMLib import geometry
from MotionSSIMLib.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from MotionSSIMLib.classes import ClinicalThresholds, clinical_class, uniform_class
from MotionSSIMLib.errors import CheckpointError, MotionSSIMError
from MotionSSIMLib.inference import Cancelled, assess_volume, predict_slices, resolve_device
from MotionSSIMLib.model import build_model


def test_clinical_and_uniform_class_boundaries():
    s = np.array([0.0, 0.5999, 0.60, 0.8499, 0.85, 1.0])
    assert clinical_class(s).tolist() == [3, 3, 2, 2, 1, 1]
    assert clinical_class(s, ClinicalThresholds(0.9, 0.5)).tolist() == [3, 2, 2, 2, 2, 1]
    assert uniform_class([0.0, 0.33, 0.34, 0.66, 0.67, 1.0], 3).tolist() == [1, 1, 2, 2, 3, 3]
    assert uniform_class([0.05, 0.15, 0.95, 1.0], 10).tolist() == [1, 2, 10, 10]
    with pytest.raises(ValueError):
        ClinicalThresholds(0.5, 0.6)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "r18.safetensors"
    save_checkpoint(path, build_model("resnet18"), {"architecture": "resnet18", "note": "test"})
    return path


def test_models_shapes():
    net = build_model("resnet18").eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 64, 64)).shape == (2, 1)
    assert build_model("resnet101").conv1.in_channels == 1
    with pytest.raises(ValueError):
        build_model("vgg")


def test_checkpoint_round_trip_fp32_and_fp16(ckpt, tmp_path):
    loaded = load_checkpoint(ckpt)
    assert loaded.metadata["note"] == "test" and loaded.metadata["format_version"] == 1
    assert "structural_similarity" in loaded.metadata["ssim_convention"]
    x = torch.rand(2, 1, 64, 64)
    half = save_checkpoint(tmp_path / "h.safetensors", loaded.model, {"architecture": "resnet18"},
                           dtype=torch.float16)
    assert half.stat().st_size < 0.6 * ckpt.stat().st_size
    with torch.no_grad():
        a = loaded.model(x)
        b = load_checkpoint(half).model(x)
    assert torch.allclose(a, b, atol=5e-2 * a.abs().max().item() + 1e-3)
    assert read_metadata(half)["dtype"] == "float16"


def test_refuses_pickles_without_running_them(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(p)
    torch.save({"state_dict": {}}, tmp_path / "torch.safetensors")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(tmp_path / "torch.safetensors")
    assert not marker.exists()


def test_refuses_truncated_foreign_and_mismatched(ckpt, tmp_path):
    data = ckpt.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        load_checkpoint(tmp_path / "trunc.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="without MotionSSIM metadata"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    # resnet18 weights labelled as resnet101
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["motionssim"])
    meta["architecture"] = "resnet101"
    header["__metadata__"]["motionssim"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    (tmp_path / "mislabel.safetensors").write_bytes(
        struct.pack("<Q", len(new)) + new + data[8 + header_len:])
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "mislabel.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_predict_slices_shapes_ranges_and_batching(ckpt):
    rng = np.random.default_rng(0)
    imgs = rng.random((5, 100, 120)).astype(np.float32)
    a = predict_slices(imgs, model=ckpt, device="cpu", batch_size=1)
    b = predict_slices(imgs, model=ckpt, device="cpu", batch_size=7)
    assert a.shape == (5,) and np.all((a >= 0) & (a <= 1))
    assert np.allclose(a, b, atol=1e-5)
    # min-max normalisation: any intensity range gives the same prediction
    c = predict_slices(imgs * 4000 - 300, model=ckpt, device="cpu")
    assert np.allclose(a, c, atol=1e-5)
    assert predict_slices(imgs[0], model=ckpt, device="cpu").shape == (1,)
    with pytest.raises(MotionSSIMError):
        predict_slices(np.zeros((2, 3, 4, 5)), model=ckpt)


def test_assess_volume_records_and_summary(ckpt):
    rng = np.random.default_rng(1)
    arr = rng.normal(5, 1, (14, 48, 40)).clip(0)
    arr[3:11, 8:40, 6:34] += 200 * rng.random((8, 32, 28)) + 100
    vol = geometry.volume(arr, (1.0, 1.0, 4.0))
    a = assess_volume(vol, model=ckpt, device="cpu")
    assert a.orientation == "axial" and a.axis == "k" and len(a.records) == 14
    empty = [r.empty for r in a.records]
    assert empty[:3] == [True] * 3 and not any(empty[3:11])
    s = a.summary
    kept = [r.ssim for r in a.records if not r.empty]
    assert s["n_assessed"] == 8 and s["mean_ssim"] == pytest.approx(np.mean(kept))
    assert s["min_ssim"] == pytest.approx(min(kept))
    assert sum(s["counts"][k] for k in ("good", "sufficient", "insufficient")) == 8
    assert s["counts"]["empty"] == 6
    worst = max(r.clinical_class for r in a.records if not r.empty)
    assert s["verdict"].startswith({1: "good", 2: "sufficient", 3: "insufficient"}[worst])
    assert [w["ssim"] for w in s["worst_slices"]] == sorted(kept)[:5]
    calls = []
    assess_volume(vol, model=ckpt, device="cpu", batch_size=4,
                  progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (14, 14)
    with pytest.raises(Cancelled):
        assess_volume(vol, model=ckpt, device="cpu", cancel=lambda: True)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(MotionSSIMError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(MotionSSIMError):
        resolve_device("tpu")
