"""The uncertainty head: the second output, its checkpoint format, one-pass inference with it,
its fit on a frozen backbone (training/uncertainty_head.py) and scripts/fit_uncertainty_head.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_trainer import small, toy  # noqa: F401 - toy: the tiny data set fixture

from MotionSSIMLib.assessment.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from MotionSSIMLib.assessment.inference import (
    DEFAULT_TTA,
    assess_volume,
    predict_views,
    uncertain_slices,
)
from MotionSSIMLib.assessment.model import (
    LOG_SD_RANGE,
    build_model,
    features,
    forward_outputs,
    forward_ssim,
    has_uncertainty_head,
)
from MotionSSIMLib.base.errors import CheckpointError
from MotionSSIMLib.imaging import geometry
from MotionSSIMLib.training import uncertainty_head as uh


def _net(head: bool, seed: int = 0):
    torch.manual_seed(seed)
    net = build_model("resnet18", uncertainty_head=head).eval()
    with torch.no_grad():  # outputs near 0.6 (inside the accepted raw range), sd near 0.05
        net.fc.bias.fill_(0.6)
        net.fc.weight.mul_(0.3)
        if head:
            net.uncertainty[-1].bias.fill_(np.log(0.05))
            net.uncertainty[-1].weight.mul_(0.5)
    return net


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same backbone saved without and with the head."""
    d = tmp_path_factory.mktemp("heads")
    plain, with_head = _net(False), _net(True)
    with_head.load_state_dict({**with_head.state_dict(), **plain.state_dict()})
    save_checkpoint(d / "plain.safetensors", plain)
    save_checkpoint(d / "head.safetensors", with_head, {"uncertainty": {"scale": 1.1}})
    return d / "plain.safetensors", d / "head.safetensors", with_head


def test_checkpoint_records_which_uncertainty_it_has(pair):
    plain, head, net = pair
    m0, m1 = read_metadata(plain), read_metadata(head)
    assert m0["uncertainty"] == {"kind": "views"} and m0["format_version"] == 1
    # the head makes a format-2 file: an older MotionSSIM says "update", not "wrong weights"
    assert m1["uncertainty"] == {"kind": "head", "scale": 1.1} and m1["format_version"] == 2
    loaded = load_checkpoint(head)
    assert has_uncertainty_head(loaded.model) and not has_uncertainty_head(
        load_checkpoint(plain).model)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_unknown_uncertainty_kind_is_refused(pair, tmp_path):
    plain, _, _ = pair
    net = load_checkpoint(plain).model
    path = save_checkpoint(tmp_path / "x.safetensors", net)
    from safetensors.torch import load_file, save_file

    meta = read_metadata(path)
    meta["uncertainty"] = {"kind": "dropout"}
    save_file(load_file(str(path)), str(path), metadata={"motionssim": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="unknown uncertainty 'dropout'"):
        load_checkpoint(path)


def test_one_pass_gives_the_ssim_and_its_sd(pair):
    _, _, net = pair
    x = torch.rand(5, 1, 256, 256)
    with torch.no_grad():
        raw, sd = forward_outputs(net, x)
        assert torch.allclose(raw, forward_ssim(net, x), atol=1e-6)  # the SSIM is unchanged
        expected = torch.exp(net.uncertainty(features(net, x)).reshape(-1).clamp(*LOG_SD_RANGE))
        assert torch.allclose(sd, expected) and sd.shape == (5,)
        assert forward_outputs(_net(False), x)[1] is None


def test_default_is_one_pass_with_a_head_and_views_without(pair):
    plain, head, net = pair
    imgs = np.random.default_rng(0).random((6, 70, 60)).astype(np.float32)
    a = predict_views(imgs, head, "cpu", precision="fp32")
    assert a.view_names == ("identity",) and a.uncertainty == "head"
    b = predict_views(imgs, plain, "cpu", precision="fp32")
    assert len(b.view_names) == DEFAULT_TTA and b.uncertainty == "views"
    assert np.allclose(a.ssim, b.views[:, 0], atol=1e-6)  # same backbone, same identity view
    x = torch.from_numpy(geometry.to_model_input(imgs, (1.0, 1.0)))[:, None]
    with torch.no_grad():
        assert np.allclose(a.sd, forward_outputs(net, x)[1].numpy(), atol=1e-5)
    # views on request, with either model; one view without a head: no uncertainty
    c = predict_views(imgs, head, "cpu", precision="fp32", tta=4)
    assert c.uncertainty == "views" and np.allclose(c.sd, c.views.std(1, ddof=1))
    d = predict_views(imgs, plain, "cpu", precision="fp32", tta=1)
    assert d.uncertainty == "none" and np.all(d.sd == 0)


def test_assessment_with_the_head(pair):
    _, head, _ = pair
    rng = np.random.default_rng(1)
    arr = rng.normal(5, 1, (10, 48, 40)).clip(0)
    arr[2:8, 8:40, 6:30] += 200 * rng.random((6, 32, 24)) + 100
    a = assess_volume(geometry.volume(arr, (1.0, 1.0, 4.0)), model=head, device="cpu",
                      precision="fp32")
    assert a.summary["inference"]["uncertainty"] == "head"
    assert a.summary["inference"]["views"] == ["identity"]
    sd = np.array([r.ssim_sd for r in a.records])
    kept = np.array([not r.empty for r in a.records])
    assert np.all(sd > 0)
    expected = uncertain_slices([r.ssim for r in a.records], sd) & kept
    assert [r.uncertain for r in a.records] == expected.tolist()


def test_fit_follows_the_error_and_the_scale_calibrates():
    rng = np.random.default_rng(0)
    n = 3000
    feats = rng.random((n, 16)).astype(np.float32)
    true_sd = 0.01 + 0.1 * feats[:, 3]  # the error's size is written in one feature
    res = rng.normal(0, true_sd)
    head = uh.fit_head(feats[:2000], res[:2000], torch.Generator().manual_seed(0), epochs=150)
    sd = uh.head_sd(head, feats)
    from scipy.stats import spearmanr

    assert spearmanr(sd, true_sd)[0] > 0.95
    scale = uh.coverage_scale(sd[2000:2500], res[2000:2500])
    uh.fold_scale(head, scale)
    figs = uh.uncertainty_figures(np.full(500, 0.5), uh.head_sd(head, feats[2500:]),
                                  0.5 - res[2500:])
    assert 0.90 <= figs["coverage"] <= 0.98 and figs["spearman_abs_error"] > 0.3
    assert len(figs["bins"]) == 5 and figs["bins"][0]["mean_sd"] < figs["bins"][-1]["mean_sd"]
    # same generator, same head
    again = uh.fit_head(feats[:2000], res[:2000], torch.Generator().manual_seed(0), epochs=150)
    assert np.allclose(uh.head_sd(again, feats), uh.head_sd(
        uh.fold_scale(head, 1 / scale), feats), rtol=1e-5)


def test_fine_tuning_from_a_head_model_starts_from_its_backbone(pair, toy, tmp_path):  # noqa: F811
    # the head fits the errors of the weights it was fitted on: fine-tuning drops it (before,
    # loading the head's weights into a plain network failed)
    from MotionSSIMLib.training.trainer import train

    _, head, _ = pair
    res = train(small(init_from=str(head), epochs=1, samples_per_epoch=8, val_samples=8,
                      bn_calibration=8), tmp_path / "run", toy["train"], toy["val"])
    assert res.status == "finished"
    assert read_metadata(tmp_path / "run" / "last.safetensors")["uncertainty"]["kind"] == "views"


def test_fit_script_writes_a_head_checkpoint_and_the_comparison(pair, tmp_path):
    from test_trainer import head as toy_head
    from test_trainer import write_volume

    plain, _, _ = pair
    rng = np.random.default_rng(3)
    for i in range(2):
        write_volume(tmp_path / f"v{i}.nii.gz", toy_head(rng, (12, 64, 64)), (1, 1, 3))
    (tmp_path / "split.json").write_text(json.dumps(
        {"train": [], "validation": ["v0.nii.gz"], "test": ["v1.nii.gz"]}))
    out = tmp_path / "with_head.safetensors"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fit_uncertainty_head.py"), "--data",
         str(tmp_path / "split.json"), "--model", str(plain), "--out", str(out), "--n", "60",
         "--test-n", "20", "--views", "2", "--precision", "fp32", "--report",
         str(tmp_path / "rep")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = read_metadata(out)
    assert meta["uncertainty"]["kind"] == "head"
    assert meta["uncertainty"]["fit"]["n_fit"] == 48
    assert set(meta["uncertainty"]["test"]["methods"]) == {"head (1 pass)", "2-view spread"}
    result = json.loads((tmp_path / "rep" / "uncertainty_head.json").read_text())
    assert result["test"]["n"] == 20
    assert (tmp_path / "rep" / "uncertainty_head.png").stat().st_size > 1000
    # the backbone is the original's
    a, b = load_checkpoint(out).model, load_checkpoint(plain).model
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k
