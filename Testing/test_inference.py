"""predict_slices and assess_volume on a small random ResNet-18 (no trained model needed)."""

import numpy as np
import pytest
import torch

from MotionSSIMLib.assessment.checkpoint import load_checkpoint, save_checkpoint
from MotionSSIMLib.assessment.classes import ClinicalThresholds
from MotionSSIMLib.assessment.inference import (
    NO_VERDICT,
    Cancelled,
    assess_volume,
    get_model,
    predict_slices,
    resolve_device,
    summarize,
    verdict_of,
)
from MotionSSIMLib.assessment.model import build_model
from MotionSSIMLib.base.errors import CheckpointError, InputError, MotionSSIMError
from MotionSSIMLib.imaging import geometry


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("resnet18")
    with torch.no_grad():
        net.fc.bias.fill_(0.5)  # outputs near the middle of [0, 1], so the clamp rarely bites
        net.fc.weight.mul_(0.1)
    path = tmp_path_factory.mktemp("m") / "r18.safetensors"
    save_checkpoint(path, net, {"note": "test"})
    return path


@pytest.fixture(scope="module")
def head_volume():
    """14 axial slices of 48 x 40: 3 empty (noise only) at each end, 8 with a 'head'."""
    rng = np.random.default_rng(1)
    arr = rng.normal(5, 1, (14, 48, 40)).clip(0)
    arr[3:11, 8:40, 6:34] += 200 * rng.random((8, 32, 28)) + 100
    return geometry.volume(arr, (1.0, 1.0, 4.0))


def test_predict_slices_shapes_ranges_and_batching(ckpt):
    # fp32: these are exactness checks of the fit and batching (bf16: test_precision.py)
    rng = np.random.default_rng(0)
    imgs = rng.random((5, 100, 120)).astype(np.float32)
    a = predict_slices(imgs, model=ckpt, device="cpu", precision="fp32", batch_size=1)
    b = predict_slices(imgs, model=ckpt, device="cpu", precision="fp32", batch_size=7)
    assert a.shape == (5,) and a.dtype == np.float64 and np.all((a >= 0) & (a <= 1))
    assert np.allclose(a, b, atol=1e-5)
    assert np.ptp(a) > 0  # really per slice, not one value for all
    # min-max normalisation: any intensity range (and integer types) gives the same prediction
    c = predict_slices(imgs * 4000 - 300, model=ckpt, device="cpu", precision="fp32")
    assert np.allclose(a, c, atol=1e-5)
    d = predict_slices(np.round(imgs * 1000).astype(np.int16), model=ckpt, device="cpu", precision="fp32")
    assert np.allclose(a, d, atol=2e-3)
    one = predict_slices(imgs[2], model=ckpt, device="cpu", precision="fp32")
    assert one.shape == (1,) and one[0] == pytest.approx(a[2], abs=1e-5)
    assert predict_slices(torch.from_numpy(imgs[:2]), model=ckpt, device="cpu", precision="fp32") == \
        pytest.approx(a[:2], abs=1e-5)


def test_predict_slices_is_model_on_fitted_input(ckpt):
    rng = np.random.default_rng(3)
    imgs = rng.random((3, 300, 180)).astype(np.float32) * 50
    pred = predict_slices(imgs, model=ckpt, device="cpu", pixel_spacing=(0.8, 1.2),
                          precision="fp32", tta=1)
    net = load_checkpoint(ckpt).model
    x = torch.from_numpy(geometry.to_model_input(imgs, (0.8, 1.2)))[:, None]
    with torch.no_grad():
        ref = net(x).reshape(-1).clamp(0, 1).numpy()
        # the default: the mean over 4 views (identity, h-flip, v-flip, transpose)
        views = [net(v).reshape(-1).clamp(0, 1).numpy()
                 for v in (x, x.flip(-1), x.flip(-2), x.transpose(-2, -1))]
    assert np.allclose(pred, ref, atol=1e-5)
    four = predict_slices(imgs, model=ckpt, device="cpu", pixel_spacing=(0.8, 1.2),
                          precision="fp32")
    assert np.allclose(four, np.mean(views, axis=0), atol=1e-5)
    assert not np.allclose(four, ref, atol=1e-4)  # the views really differ
    # a different pixel spacing changes the fitted input, hence the prediction
    other = predict_slices(imgs, model=ckpt, device="cpu", pixel_spacing=(1.2, 0.8))
    assert not np.allclose(pred, other, atol=1e-4)


def test_predict_slices_mixed_sizes(ckpt):
    rng = np.random.default_rng(2)
    slices = [rng.random((64, 80)), rng.random((300, 200)), rng.random((64, 80)),
              rng.random((256, 256))]
    mixed = predict_slices(slices, model=ckpt, device="cpu", batch_size=3)
    single = np.array([predict_slices(s, model=ckpt, device="cpu")[0] for s in slices])
    assert mixed.shape == (4,) and np.allclose(mixed, single, atol=1e-5)


def test_outputs_are_clamped_to_0_1_and_far_outside_refused():
    net = build_model("resnet18")
    imgs = np.random.default_rng(0).random((2, 32, 32))
    for bias, expected in ((1.3, 1.0), (-0.3, 0.0)):  # a little outside: clamped
        with torch.no_grad():
            net.fc.weight.zero_()
            net.fc.bias.fill_(bias)
        assert predict_slices(imgs, model=net, device="cpu").tolist() == [expected] * 2
    for bias in (50.0, -50.0, float("nan")):  # far outside: a broken model, not "good"
        with torch.no_grad():
            net.fc.bias.fill_(bias)
        with pytest.raises(CheckpointError, match="broken model"):
            predict_slices(imgs, model=net, device="cpu")


def test_predict_slices_refuses_bad_input(ckpt):
    with pytest.raises(MotionSSIMError, match="expected"):
        predict_slices(np.zeros((2, 3, 4, 5)), model=ckpt, device="cpu")
    bad = np.ones((2, 32, 32))
    bad[1, 3, 3] = np.nan
    with pytest.raises(MotionSSIMError, match="NaN"):
        predict_slices(bad, model=ckpt, device="cpu")
    with pytest.raises(MotionSSIMError, match="batch size"):
        predict_slices(np.ones((2, 32, 32)), model=ckpt, device="cpu", batch_size=0)
    assert predict_slices(np.zeros((0, 32, 32)), model=ckpt, device="cpu").shape == (0,)


def test_checkpoints_are_cached_until_the_file_changes(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("resnet18"))
    first = get_model(path, "cpu")
    assert get_model(str(path), "cpu") is first  # str or Path, same entry
    save_checkpoint(path, build_model("resnet18"), dtype=torch.float16)  # rewritten in place
    second = get_model(path, "cpu")
    assert second is not first and second.metadata["dtype"] == "float16"


def test_a_callers_module_keeps_its_training_mode(ckpt):
    net = load_checkpoint(ckpt).model.train()
    imgs = np.random.default_rng(4).random((3, 40, 40))
    p = predict_slices(imgs, model=net, device="cpu", precision="fp32")
    assert net.training  # eval for the prediction only
    assert np.allclose(p, predict_slices(imgs, model=ckpt, device="cpu", precision="fp32"), atol=1e-6)


def test_assess_volume_records_and_summary(ckpt, head_volume):
    a = assess_volume(head_volume, model=ckpt, device="cpu")
    assert a.orientation == "axial" and a.axis == "k" and len(a.records) == 14
    empty = [r.empty for r in a.records]
    assert empty == [True] * 3 + [False] * 8 + [True] * 3
    s = a.summary
    kept = [r.ssim for r in a.records if not r.empty]
    assert s["n_slices"] == 14 and s["n_assessed"] == 8
    assert s["mean_ssim"] == pytest.approx(np.mean(kept))
    assert s["min_ssim"] == pytest.approx(min(kept))
    assert s["median_ssim"] == pytest.approx(np.median(kept))
    assert sum(s["counts"][k] for k in ("good", "sufficient", "insufficient")) == 8
    assert s["counts"]["empty"] == 6
    assert sum(s["fractions"].values()) == pytest.approx(1.0)
    worst = max(r.clinical_class for r in a.records if not r.empty)
    assert s["verdict"] == verdict_of([worst])
    assert [w["ssim"] for w in s["worst_slices"]] == sorted(kept)[:5]
    assert {w["index"] for w in s["worst_slices"]} <= {r.index for r in a.records if not r.empty}
    for r in a.records:
        assert r.clinical_class == (1 if r.ssim >= 0.85 else 2 if r.ssim >= 0.6 else 3)
    # positions: 4 mm apart along S
    pos = [r.position_mm for r in a.records]
    assert np.allclose(np.diff(pos), 4.0) or np.allclose(np.diff(pos), -4.0)
    assert a.model["path"] == str(ckpt) and a.model["architecture"] == "resnet18"
    # the same predictions as predict_slices on the extracted slices
    stack = geometry.extract_slices(head_volume)
    direct = predict_slices(stack.images, model=ckpt, device="cpu",
                            pixel_spacing=stack.pixel_spacing)
    assert np.allclose([r.ssim for r in a.records], direct, atol=1e-6)


def test_thresholds_and_min_foreground_are_settings(ckpt, head_volume):
    strict = assess_volume(head_volume, model=ckpt, device="cpu",
                           thresholds=ClinicalThresholds(good=0.999, sufficient=0.998))
    assert strict.summary["verdict"] == "insufficient: re-scan"  # a random net is not perfect
    assert strict.summary["thresholds"] == {"good": 0.999, "sufficient": 0.998}
    lax = assess_volume(head_volume, model=ckpt, device="cpu",
                        thresholds=ClinicalThresholds(good=1e-6, sufficient=0.0))
    assert lax.summary["verdict"] == "good"
    # min_foreground 0 counts the noise-only slices too... unless they are blank: here the
    # noise (sd 1) is 0.3 % of the volume's range, no structure to assess
    none_empty = assess_volume(head_volume, model=ckpt, device="cpu", min_foreground=0.0)
    assert none_empty.summary["n_assessed"] == 8 and none_empty.summary["n_blank"] == 6
    noisy = geometry.volume(head_volume.array + np.random.default_rng(9).normal(
        0, 20, head_volume.array.shape).clip(-5), head_volume.spacing)
    # ... and noise with variance but no head at all is flagged as noise, not counted
    s = assess_volume(noisy, model=ckpt, device="cpu", min_foreground=0.0).summary
    assert s["n_assessed"] == 8 and s["n_noise"] == 6
    with pytest.raises(MotionSSIMError, match="min_foreground"):
        assess_volume(head_volume, model=ckpt, device="cpu", min_foreground=2.0)


def test_assess_bare_array_other_orientation_and_blank_volume(ckpt):
    rng = np.random.default_rng(5)
    arr = rng.random((20, 24, 28))
    a = assess_volume(arr, model=ckpt, device="cpu", orientation="sagittal")
    assert a.orientation == "sagittal" and a.axis == "i" and len(a.records) == 28
    blank = np.zeros((6, 32, 32))
    blank[0, 0, 0] = 1.0  # not constant, but no slice has a head in it: refused, no verdict
    with pytest.raises(InputError, match="no assessable slice"):
        assess_volume(blank, model=ckpt, device="cpu")


def test_progress_and_cancel(ckpt, head_volume):
    calls = []
    assess_volume(head_volume, model=ckpt, device="cpu", batch_size=4,
                  progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 14), (8, 14), (12, 14), (14, 14)]
    with pytest.raises(Cancelled):
        assess_volume(head_volume, model=ckpt, device="cpu", cancel=lambda: True)
    # cancelled half-way: after the first batch
    done = []
    with pytest.raises(Cancelled):
        assess_volume(head_volume, model=ckpt, device="cpu", batch_size=4,
                      progress=lambda d, t: done.append(d), cancel=lambda: len(done) >= 1)
    assert done == [4]
    assert issubclass(Cancelled, MotionSSIMError)


def test_verdict_rule_and_summary():
    ssim = np.array([0.95, 0.9, 0.7, 0.1, 0.99, 0.5])
    cls = np.array([1, 1, 2, 3, 1, 3])
    empty = np.array([False, False, False, True, False, False])
    s = summarize(ssim, cls, empty, np.arange(10, 16))
    assert s["verdict"] == "insufficient: re-scan"  # slice 15 (0.5) is insufficient
    assert s["counts"] == {"good": 3, "sufficient": 1, "insufficient": 1, "empty": 1}
    assert s["fractions"]["good"] == pytest.approx(0.6)
    assert [w["index"] for w in s["worst_slices"]] == [15, 12, 11, 10, 14]
    assert s["min_ssim"] == 0.5 and s["mean_ssim"] == pytest.approx(np.mean(ssim[~empty]))
    # the empty slice's class never counts: without slice 15 the verdict is sufficient
    empty[5] = True
    assert summarize(ssim, cls, empty, np.arange(6))["verdict"] == "sufficient"
    assert verdict_of([1, 1]) == "good" and verdict_of([]) == NO_VERDICT


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_device(torch.device("cpu")).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(MotionSSIMError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(MotionSSIMError, match="unknown device"):
        resolve_device("tpu")
