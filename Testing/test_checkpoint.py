"""Checkpoints: safetensors + JSON metadata round trip, atomic writes, and every refusal."""

import json
import pickle
import struct

import numpy as np
import pytest
import torch

from MotionSSIMLib.assessment.checkpoint import (
    FORMAT,
    default_model_path,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from MotionSSIMLib.assessment.model import build_model
from MotionSSIMLib.base.errors import CheckpointError


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model("resnet18").eval()


@pytest.fixture(scope="module")
def ckpt(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "r18.safetensors"
    save_checkpoint(path, net, {"training_data": {"volumes": 3}, "metrics": {"mae": 0.05}})
    return path


def rewrite_metadata(src, dst, change):
    """Copy a safetensors file with its MotionSSIM metadata edited by change(meta)."""
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["motionssim"])
    change(meta)
    header["__metadata__"]["motionssim"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n:])
    return dst


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_round_trip_fp32_is_exact_and_keeps_metadata(net, ckpt):
    loaded = load_checkpoint(ckpt)
    meta = loaded.metadata
    assert meta["format"] == FORMAT and meta["format_version"] == 1
    assert meta["architecture"] == "resnet18" and meta["input_size"] == [256, 256]
    assert meta["dtype"] == "float32"
    assert "structural_similarity" in meta["ssim_convention"] and "7x7" in meta["ssim_convention"]
    assert meta["training_data"] == {"volumes": 3} and meta["metrics"] == {"mae": 0.05}
    assert read_metadata(ckpt) == meta
    assert not loaded.model.training and loaded.path == str(ckpt)
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded.model(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage(net, ckpt, tmp_path, dtype):
    half = save_checkpoint(tmp_path / "h.safetensors", net, dtype=dtype)
    assert half.stat().st_size < 0.55 * ckpt.stat().st_size
    loaded = load_checkpoint(half)
    assert loaded.metadata["dtype"] == str(dtype).replace("torch.", "")
    assert loaded.model.conv1.weight.dtype == torch.float32  # computed in float32
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        a, b = net(x), loaded.model(x)
    assert torch.allclose(a, b, atol=0.05 * a.abs().max().item() + 1e-3)
    assert not torch.equal(a, b)  # really stored at lower precision


def test_metadata_may_hold_numpy_values(net, tmp_path):
    p = save_checkpoint(tmp_path / "np.safetensors", net,
                        {"metrics": {"mae": np.float32(0.25), "hist": np.arange(3)}})
    assert read_metadata(p)["metrics"] == {"mae": 0.25, "hist": [0, 1, 2]}


def test_save_refuses_inconsistent_requests(net, tmp_path):
    with pytest.raises(ValueError, match="resnet101"):
        save_checkpoint(tmp_path / "a.safetensors", net, {"architecture": "resnet101"})
    with pytest.raises(ValueError, match="not a MotionSSIM network"):
        save_checkpoint(tmp_path / "b.safetensors", torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="dtype"):
        save_checkpoint(tmp_path / "c.safetensors", net, dtype=torch.int8)
    big = build_model("resnet18")
    with torch.no_grad():
        big.fc.weight[0, 0] = 1e6  # beyond float16's range
    with pytest.raises(ValueError, match="does not fit"):
        save_checkpoint(tmp_path / "d.safetensors", big, dtype=torch.float16)
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic(net, ckpt, tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(ckpt.read_bytes())
    before = target.read_bytes()
    broken = build_model("resnet18")
    # two state-dict entries sharing memory: safetensors refuses to write them, mid-save
    broken.bn1.running_var = broken.bn1.running_mean
    with pytest.raises(RuntimeError):
        save_checkpoint(target, broken)
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp left
    save_checkpoint(target, build_model("resnet18"))  # overwrite in place
    assert target.read_bytes() != before and load_checkpoint(target).metadata
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert target.stat().st_mode & 0o044 == 0o044  # others may read it (mkstemp's is 0600)


def test_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(Evil()))
    assert "refusing to unpickle" in refusal(p)
    zipped = tmp_path / "zipped.safetensors"
    torch.save({"weights": torch.zeros(3), "evil": Evil()}, zipped)
    assert "pickle/PyTorch file" in refusal(zipped)
    legacy = tmp_path / "legacy.pt"
    torch.save({"weights": torch.zeros(3), "evil": Evil()}, legacy,
               _use_new_zipfile_serialization=False)
    assert "refusing to unpickle" in refusal(legacy)
    assert not marker.exists()
    pickle.loads(p.read_bytes())  # the payload is live: unpickling it does create the file
    assert marker.exists()


def test_broken_files_are_refused(ckpt, tmp_path):
    assert "not found" in refusal(tmp_path / "nothing.safetensors")
    assert "folder" in refusal(tmp_path)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert "empty file" in refusal(tmp_path / "empty.safetensors")
    data = ckpt.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    refusal(tmp_path / "trunc.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[:40])  # header cut short
    refusal(tmp_path / "head.safetensors")
    rng = np.random.default_rng(0)
    (tmp_path / "noise.safetensors").write_bytes(rng.bytes(4096))
    refusal(tmp_path / "noise.safetensors")
    (tmp_path / "text.safetensors").write_text("weights go here\n")
    refusal(tmp_path / "text.safetensors")


def test_foreign_and_mislabelled_checkpoints_are_refused(ckpt, tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    assert "without MotionSSIM metadata" in refusal(tmp_path / "foreign.safetensors")
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"),
              metadata={"motionssim": json.dumps({"format": "something-else"})})
    assert "not a MotionSSIM checkpoint" in refusal(tmp_path / "other.safetensors")

    def arch(name):
        return lambda m: m.update(architecture=name)

    p = rewrite_metadata(ckpt, tmp_path / "r50.safetensors", arch("resnet50"))
    assert "unknown architecture 'resnet50'" in refusal(p)
    p = rewrite_metadata(ckpt, tmp_path / "as101.safetensors", arch("resnet101"))
    assert "do not match a resnet101" in refusal(p)
    p = rewrite_metadata(ckpt, tmp_path / "v9.safetensors",
                         lambda m: m.update(format_version=9))
    assert "newer" in refusal(p)
    # the right keys, a wrong shape: another network with the same layer names
    bad = build_model("resnet18")
    bad.fc = torch.nn.Linear(512, 2)
    from safetensors.torch import save_file as sf

    sf({k: v.contiguous() for k, v in bad.state_dict().items()},
       str(tmp_path / "shape.safetensors"),
       metadata={"motionssim": json.dumps(read_metadata(ckpt))})
    assert "fc.weight has shape (2, 512)" in refusal(tmp_path / "shape.safetensors")


def test_nan_weights_are_refused(tmp_path):
    broken = build_model("resnet18")
    with torch.no_grad():
        broken.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
    p = save_checkpoint(tmp_path / "nan.safetensors", broken)
    assert "NaN" in refusal(p)


def test_default_model_path_and_missing_bundle_message():
    path = default_model_path()
    assert path.parts[-4:] == ("MotionSSIM", "Resources", "Models",
                               "motionssim_resnet18.safetensors")
    if path.exists():
        assert load_checkpoint(None).metadata["architecture"] == "resnet18"
    else:
        msg = refusal(path)
        assert "no bundled model" in msg and "train" in msg
        with pytest.raises(CheckpointError, match="no bundled model"):
            load_checkpoint()


def test_crafted_metadata_is_refused_in_one_line(ckpt, tmp_path):
    from safetensors.torch import save_file

    # deeply nested JSON (json.loads raises RecursionError), in a file that is otherwise right
    deep = '{"format": "' + FORMAT + '", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    save_file({"w": torch.zeros(3)}, str(tmp_path / "deep.safetensors"),
              metadata={"motionssim": deep})
    assert "nested too deeply" in refusal(tmp_path / "deep.safetensors")
    # format_version 1e400 parses as float inf (int() of it: OverflowError); 1.5, "1", true
    for bad in ("1e400", "-1e400", "1.5", '"1"', "true", "NaN"):
        text = json.dumps(read_metadata(ckpt)).replace('"format_version": 1',
                                                       f'"format_version": {bad}')
        assert bad in text
        path = tmp_path / "version.safetensors"
        save_file({"w": torch.zeros(3)}, str(path), metadata={"motionssim": text})
        assert "invalid checkpoint format_version" in refusal(path), bad
    save_file({"w": torch.zeros(3)}, str(tmp_path / "json.safetensors"),
              metadata={"motionssim": "{not json"})
    assert "not valid JSON" in refusal(tmp_path / "json.safetensors")
    p = rewrite_metadata(ckpt, tmp_path / "archlist.safetensors",
                         lambda m: m.update(architecture=["resnet18"]))
    assert "unknown architecture" in refusal(p)  # a list, not a name (was a TypeError)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.float64, torch.int32])
def test_unsupported_weight_dtypes_are_refused_at_load(net, ckpt, tmp_path, dtype):
    from safetensors.torch import save_file

    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
               for k, v in net.state_dict().items()}
    path = tmp_path / f"{str(dtype)[6:]}.safetensors"
    save_file(tensors, str(path), metadata={"motionssim": json.dumps(read_metadata(ckpt))})
    msg = refusal(path)
    assert f"stored as {str(dtype)[6:]}" in msg and "unsupported weight type" in msg
    # the BatchNorm batch counter may not be a float either
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    key = next(k for k in tensors if k.endswith("num_batches_tracked"))
    tensors[key] = tensors[key].float()
    save_file(tensors, str(path), metadata={"motionssim": json.dumps(read_metadata(ckpt))})
    assert "an integer" in refusal(path)
