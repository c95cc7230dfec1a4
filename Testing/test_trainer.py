"""The trainer: learning, exact resume after a kill or a stop request, DDP, logs, CLI."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.training import run_state, trainer
from MotionSSIMLib.training.trainer import TrainingDiverged, TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]


def write_volume(path, array, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, str(path))
    return str(path)


def head(rng, shape):
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (k / 0.9) ** 2 + (j / 0.8) ** 2 + (i / 0.7) ** 2 < 1
    tex = rng.random(shape) * 0.3 + 0.7 + 0.5 * np.sin(6 * j + rng.random()) * np.cos(5 * i)
    return np.where(inside, 100 * tex, 0).astype(np.float32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """3 training and 1 validation volumes, 48 px, thick slices (+ one isotropic)."""
    d = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    train_v = [write_volume(d / f"t{i}.nii.gz", head(rng, (12, 48, 48)), (1, 1, 3))
               for i in range(2)]
    train_v.append(write_volume(d / "iso.nii.gz", head(rng, (40, 40, 40))))
    val_v = [write_volume(d / "v0.nii.gz", head(rng, (12, 48, 48)), (1, 1, 3))]
    split = {"train": [Path(p).name for p in train_v], "validation": [Path(val_v[0]).name],
             "test": [Path(val_v[0]).name]}
    (d / "split.json").write_text(json.dumps(split))
    return {"dir": d, "train": train_v, "val": val_v}


def small(**kw) -> TrainSettings:
    base = dict(epochs=2, samples_per_epoch=24, batch_size=8, input_size=48, val_samples=8,
                workers=0, progress=False, p_torchio=0.25, checkpoint_every=2, seed=7,
                bn_calibration=16)
    base.update(kw)
    return TrainSettings(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "state.pt", weights_only=True)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def log_rows(path: Path) -> list[dict]:
    with open(path / "log.csv") as f:
        return list(csv.DictReader(f))


class Killed(Exception):
    """Stands for the process being killed: nothing after it runs, no state is saved."""


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    """The uninterrupted seeded run (2 epochs x 3 batches) every resume is compared with."""
    out = tmp_path_factory.mktemp("ref")
    events = []
    res = train(small(), out, toy["train"], toy["val"], callback=events.append)
    return {"out": out, "events": events, "result": res}


def test_uninterrupted_run_writes_logs_and_checkpoints(reference):
    from MotionSSIMLib.assessment.checkpoint import load_checkpoint

    out, res = reference["out"], reference["result"]
    assert res.status == "finished" and res.epoch == 2 and res.step == 6
    assert [(e["epoch"], e["batch"]) for e in reference["events"]] == \
        [(e, b) for e in range(2) for b in range(3)]
    with open(out / "log.csv") as f:
        header = f.readline().strip().split(",")
    assert header == list(run_state.LOG_COLUMNS)
    rows = log_rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [3, 6]
    assert all(float(r["val_loss"]) >= 0 and float(r["samples_per_s"]) > 0 for r in rows)
    assert json.loads((out / "log.json").read_text())["status"] == "finished"
    last = load_checkpoint(out / "last.safetensors")
    assert last.metadata["architecture"] == "resnet18" and last.metadata["epoch"] == 2
    assert last.metadata["metrics"]["val_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
    assert last.metadata["training_data"]["train"]["volumes"] == 3
    best_epoch = 1 + int(np.argmin([float(r["val_loss"]) for r in rows]))
    assert load_checkpoint(out / "best.safetensors").metadata["epoch"] == best_epoch
    st = torch.load(out / "state.pt", weights_only=True)
    assert (st["epoch"], st["next_batch"], st["step"]) == (2, 0, 6)
    sd = last.model.state_dict()
    assert all(torch.equal(sd[k].float(), v.float()) for k, v in st["model"].items() if k in sd)
    # refuses to overwrite a run
    with pytest.raises(InputError, match="already holds"):
        train(small(), out, ["x.nii.gz"])


def test_resume_after_kill_mid_epoch_is_exact(toy, reference, tmp_path):
    def kill_at_5(event):
        if event["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        train(small(), tmp_path, toy["train"], toy["val"], callback=kill_at_5)
    st = torch.load(tmp_path / "state.pt", weights_only=True)
    assert (st["epoch"], st["next_batch"], st["step"]) == (1, 1, 4), "mid-epoch state"
    events = []
    res = train(small(), tmp_path, resume=True, callback=events.append)
    ref = reference["events"]
    assert res.status == "finished" and res.step == 6
    assert [(e["epoch"], e["batch"]) for e in events] == [(1, 1), (1, 2)]
    assert [e["loss"] for e in events] == [e["loss"] for e in ref[4:]], "not the same batches"
    assert same_weights(weights(tmp_path), weights(reference["out"]))
    keep = ("epoch", "step", "train_loss", "val_loss", "val_mae", "val_residual_sd")
    assert [{k: r[k] for k in keep} for r in log_rows(tmp_path)] == \
        [{k: r[k] for k in keep} for r in log_rows(reference["out"])]


PLAIN = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def _not_plain(value, where="state") -> list[str]:
    """The places in `value` holding anything but tensors and plain containers and scalars."""
    if not isinstance(value, PLAIN):
        return [f"{where}: {type(value).__module__}.{type(value).__qualname__}"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in
                (_not_plain(k, f"{where} key") + _not_plain(v, f"{where}[{k!r}]"))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _not_plain(v, f"{where}[{i}]")]
    return []


def test_saved_state_is_plain_data_that_no_module_path_can_break(toy, reference, tmp_path):
    """A long run's state.pt must resume whatever moves inside the package (issue 23: the engine
    went into wings while a run was going): it holds tensors and plain containers only, so
    `torch.load(weights_only=True)` reads it and no class is looked up by its module path; the
    checkpoints' metadata is plain JSON naming no module either."""
    import zipfile

    from safetensors import safe_open

    def press_stop(event):
        if event["step"] == 2:
            (tmp_path / "stop").write_text("")

    assert train(small(), tmp_path, toy["train"], toy["val"],
                 callback=press_stop).status == "stopped"
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    assert _not_plain(state) == []
    with zipfile.ZipFile(tmp_path / "state.pt") as z:
        pickles = b"".join(z.read(n) for n in z.namelist() if n.endswith(".pkl"))
    assert pickles and b"MotionSSIMLib" not in pickles
    # and it resumes to the uninterrupted run's weights
    assert train(small(), tmp_path, resume=True).status == "finished"
    assert same_weights(weights(tmp_path), weights(reference["out"]))
    with safe_open(str(tmp_path / "last.safetensors"), "pt") as f:
        assert "MotionSSIMLib" not in json.dumps(f.metadata())


def test_stop_file_saves_and_resume_finishes_identically(toy, reference, tmp_path):
    def press_stop(event):
        if event["step"] == 2:
            (tmp_path / "stop").write_text("")

    res = train(small(), tmp_path, toy["train"], toy["val"], callback=press_stop)
    assert res.status == "stopped" and res.step == 2
    assert not (tmp_path / "stop").exists(), "the stop request is consumed"
    assert json.loads((tmp_path / "log.json").read_text())["status"] == "stopped"
    res = train(small(epochs=2), tmp_path, resume=True)
    assert res.status == "finished" and res.step == 6
    assert same_weights(weights(tmp_path), weights(reference["out"]))


def test_resumed_fine_tuning_keeps_its_origin_without_reloading_it(toy, reference, tmp_path):
    # The model card names the checkpoint a run started from; a resume must neither forget it
    # nor need the file again (the saved state holds the weights).
    init = tmp_path / "init.safetensors"
    init.write_bytes((reference["out"] / "best.safetensors").read_bytes())
    out = tmp_path / "run"

    def kill_at_5(event):
        if event["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        train(small(init_from=str(init)), out, toy["train"], toy["val"], callback=kill_at_5)
    init.unlink()
    res = train(small(), out, resume=True)
    assert res.status == "finished" and res.step == 6
    assert json.loads((out / "log.json").read_text())["settings"]["init_from"] == str(init)


def test_bundle_model_writes_a_loadable_fp16_model_and_its_card(toy, reference, tmp_path,
                                                                c_locale):
    from MotionSSIMLib.assessment.checkpoint import load_checkpoint, save_checkpoint
    from MotionSSIMLib.training.evaluation import evaluate_checkpoints

    # The run, its best model's output spread cut 100-fold about 0.5: two toy epochs at 48 px
    # can read outside the accepted raw range on the bundled sample's slices (on some CPUs'
    # arithmetic), and bundle_model then rightly refuses it as broken.
    run = tmp_path / "run"
    shutil.copytree(reference["out"], run)
    best = load_checkpoint(run / "best.safetensors")
    with torch.no_grad():
        best.model.fc.weight.mul_(0.01)
        best.model.fc.bias.fill_(0.5)
    save_checkpoint(run / "best.safetensors", best.model, best.metadata)
    evaluate_checkpoints([run / "best.safetensors"], toy["val"], tmp_path / "eval",
                         n=16, batch_size=8, progress=False)
    (tmp_path / "phases.md").write_text("1. two toy epochs")
    spec = importlib.util.spec_from_file_location("bundle_model",
                                                  ROOT / "scripts" / "bundle_model.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    out = tmp_path / "models"
    assert bundle.main(["--run", str(run), "--evaluation", str(tmp_path / "eval"),
                        "--out", str(out), "--phases", str(tmp_path / "phases.md")]) == 0
    model = out / "motionssim_resnet18.safetensors"
    loaded, original = load_checkpoint(model), load_checkpoint(run / "best.safetensors")
    assert loaded.metadata["evaluation"]["n"] == 16
    assert loaded.metadata["sample_error"]["slices"] > 0
    # The run's own settings, not the machine defaults of a later command line.
    assert loaded.metadata["settings"]["seed"] == 7 and "device" not in loaded.metadata["settings"]
    from safetensors import safe_open

    with safe_open(str(model), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert {d for d in dtypes if d.is_floating_point} == {torch.float16}
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), original.model(x), atol=2e-2), "fp16 copy differs"
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "1. two toy epochs" in card and "## Known limits" in card and "| MAE |" in card


def test_ddp_world_size_one_matches_plain_run(toy, reference, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                 "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    res = train(small(distributed=True), tmp_path, toy["train"], toy["val"])
    assert res.status == "finished" and res.step == 6
    assert not torch.distributed.is_initialized(), "process group left behind"
    ref, got = weights(reference["out"]), weights(tmp_path)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-5, rtol=1e-4), k


def test_loss_falls_on_a_learnable_toy_set(toy, tmp_path):
    # The k-space simulator only (fast); 8 epochs x 2 batches of 16. The network must at
    # least find the label distribution: the validation loss falls well below its first value.
    res = train(small(epochs=8, samples_per_epoch=32, batch_size=16, val_samples=32,
                      p_torchio=0.0, contrast=False, checkpoint_every=0),
                tmp_path, toy["train"], toy["val"])
    rows = log_rows(tmp_path)
    train_loss = [float(r["train_loss"]) for r in rows]
    val_loss = [float(r["val_loss"]) for r in rows]
    assert res.epoch == 8
    assert min(train_loss[-3:]) < 0.5 * train_loss[0], train_loss
    assert min(val_loss[-3:]) < 0.5 * val_loss[0], val_loss


def test_nan_loss_stops_and_keeps_good_checkpoints(toy, tmp_path):
    # An absurd learning rate ruins the weights after the first step.
    with pytest.raises(TrainingDiverged, match="last good checkpoints"):
        train(small(lr=1e30, samples_per_epoch=8, epochs=3, checkpoint_every=0), tmp_path,
              toy["train"], toy["val"])
    assert json.loads((tmp_path / "log.json").read_text())["status"] == "diverged"
    for name in ("last.safetensors", "best.safetensors"):
        if (tmp_path / name).exists():
            from MotionSSIMLib.assessment.checkpoint import load_checkpoint

            m = load_checkpoint(tmp_path / name).model
            assert all(torch.isfinite(p).all() for p in m.parameters())


def test_cli_errors_are_one_line(toy, tmp_path, capsys):
    from MotionSSIMLib.training import training_cli

    parser = argparse.ArgumentParser()
    training_cli.add_train_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert training_cli.run_train(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"junk")
    args = parser.parse_args(["--data", str(bad), "--out", str(tmp_path / "o2"), "--epochs", "1"])
    assert training_cli.run_train(args) == 2
    err = capsys.readouterr().err
    assert "bad.nii.gz" in err and "no usable" in err
    args = parser.parse_args(["--out", str(tmp_path / "o3"), "--resume"])
    assert training_cli.run_train(args) == 2


def test_train_script_help_and_sigterm(toy, tmp_path):
    script = ROOT / "MotionSSIMTraining" / "MotionSSIMTrainingScripts" / "train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the script finds the engine by itself (../MotionSSIM) and explains the data layout
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, encoding="utf-8", env=env, timeout=120)
    assert out.returncode == 0 and "data layout" in out.stdout and "--resume" in out.stdout
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--", "--data", str(toy["dir"] / "split.json"),
         "--out", str(run), "--epochs", "1000", "--samples-per-epoch", "8", "--batch-size",
         "8", "--val-samples", "8", "--input-size", "48", "--workers", "0", "--no-progress",
         "--p-torchio", "0", "--bn-calibration", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env)
    try:
        import time

        deadline = time.time() + 90
        while time.time() < deadline and not (run / "log.csv").exists():
            time.sleep(0.2)
        assert (run / "log.csv").exists(), proc.stderr.read() if proc.poll() is not None else ""
        proc.terminate()  # SIGTERM: save and exit with status 3 (stopped)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err  # training_cli.EXIT_STOPPED
    assert "--resume" in err
    st = torch.load(run / "state.pt", weights_only=True)
    assert st["step"] >= 1 and st["settings"]["epochs"] == 1000



def test_calibrate_batchnorm_sets_the_average_statistics_of_the_batches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3),
                              torch.nn.BatchNorm2d(2)).eval()
    bn = net[1]
    bn.running_mean.fill_(50.0)  # what one odd training batch can leave behind
    bn.running_var.fill_(1e3)
    batches = [torch.rand(8, 1, 16, 16) * (1 + i) for i in range(3)]
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    trainer.calibrate_batchnorm(net, batches)
    hook.remove()
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen])
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in seen])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), rtol=1e-4)
    assert not net.training and bn.momentum == 0.1, "mode and momentum are restored"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())
    # in eval mode the model now normalises like in training mode on such batches
    with torch.no_grad():
        ev = net(batches[1])
        net.train()
        tr = net(batches[1])
    assert (ev - tr).abs().max() < 0.5 * tr.abs().max()


def test_cosine_schedule_warms_up_decays_and_resumes_on_the_same_curve(toy, tmp_path):
    s = small(lr_schedule="cosine", warmup=0.2, epochs=5, samples_per_epoch=16, batch_size=8)
    lrs = [trainer.learning_rate(s, t) for t in range(10)]  # 5 epochs x 2 steps
    assert lrs[0] == pytest.approx(s.lr / 2) and lrs[1] == pytest.approx(s.lr), "warm-up ramp"
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:])), "decays after the warm-up"
    assert lrs[-1] == pytest.approx(trainer.COSINE_FLOOR * s.lr, rel=0.05)
    assert trainer.learning_rate(small(), 123) == small().lr, "constant is the paper's"
    # the logged learning rate follows the curve, and a stopped run resumes on it exactly
    full = tmp_path / "full"
    train(s, full, toy["train"], toy["val"])
    logged = [float(r["lr"]) for r in log_rows(full)]
    assert logged == pytest.approx([lrs[2 * e + 1] for e in range(5)])
    part = tmp_path / "part"

    def press_stop(event):
        if event["step"] == 3:
            (part / "stop").write_text("")

    assert train(s, part, toy["train"], toy["val"], callback=press_stop).status == "stopped"
    train(s, part, resume=True)
    assert same_weights(weights(part), weights(full))
    with pytest.raises(InputError, match="lr_schedule"):
        train(small(lr_schedule="step"), tmp_path / "bad", toy["train"])


def test_time_limit_stops_a_run_resumably(toy, tmp_path):
    res = train(small(max_time=1e-6), tmp_path, toy["train"], toy["val"])
    assert res.status == "stopped" and res.step == 1, "stops after the first step"
    st = torch.load(tmp_path / "state.pt", weights_only=True)
    assert (st["step"], st["next_batch"]) == (1, 1)
    assert train(small(), tmp_path, resume=True).status == "finished"


def test_cpu_training_uses_channels_last_by_default(toy, tmp_path):
    seen = []

    def hook(module, args):
        # a 1-channel batch is contiguous in both layouts: look at a 64-channel weight
        w = next(p for p in module.parameters() if p.ndim == 4 and p.shape[1] > 1)
        seen.append(w.is_contiguous(memory_format=torch.channels_last)
                    and not w.is_contiguous())

    from MotionSSIMLib.assessment.model import build_model

    orig = build_model

    def spy(name):
        net = orig(name)
        net.register_forward_pre_hook(hook)
        return net

    import MotionSSIMLib.assessment.model as model_mod

    model_mod.build_model, saved = spy, model_mod.build_model
    try:
        train(small(epochs=1, val_samples=0, bn_calibration=0), tmp_path / "a", toy["train"])
        assert seen and all(seen), "the batches reach the model channels-last on the CPU"
        seen.clear()
        train(small(epochs=1, val_samples=0, bn_calibration=0, channels_last=False),
              tmp_path / "b", toy["train"])
        assert seen and not any(seen)
    finally:
        model_mod.build_model = saved


def test_plain_resume_keeps_the_saved_schedule(toy, tmp_path):
    # `train --out RUN --resume` without --epochs must not stretch a cosine curve to the
    # default 2000 epochs (it did: the learning rate fell 16x at the first resume)
    from MotionSSIMLib.training.training_cli import add_train_arguments

    s = small(lr_schedule="cosine", warmup=0.2)

    def press_stop(event):
        if event["step"] == 2:
            (tmp_path / "stop").write_text("")

    assert train(s, tmp_path, toy["train"], toy["val"], callback=press_stop).status == "stopped"
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert parser.parse_args(["--out", "x", "--resume"]).epochs is None
    res = train(small(epochs=2000, lr_schedule="cosine", warmup=0.2), tmp_path, resume=True,
                keep_epochs=True)
    assert res.status == "finished" and res.epoch == 2 and res.step == 6
    assert float(log_rows(tmp_path)[-1]["lr"]) == pytest.approx(trainer.learning_rate(s, 5))


def test_motion_free_share_is_a_run_setting_that_resumes(toy, tmp_path):
    """--p-clean is kept in the saved state and the checkpoints' schedule; a state saved before
    the option existed resumes with the old fixed share (settings.P_CLEAN)."""
    from MotionSSIMLib.assessment.checkpoint import read_metadata
    from MotionSSIMLib.base.settings import P_CLEAN

    def stop_at_4(event):  # in epoch 2, after the first epoch's checkpoints
        if event["step"] == 4:
            (tmp_path / "stop").write_text("")

    assert train(small(p_clean=0.4), tmp_path, toy["train"], toy["val"],
                 callback=stop_at_4).status == "stopped"
    assert read_metadata(tmp_path / "last.safetensors")["schedule"]["p_clean"] == 0.4
    # a plain resume keeps the run's share, whatever the default
    res = train(small(), tmp_path, resume=True)
    assert res.status == "finished"
    assert read_metadata(tmp_path / "last.safetensors")["schedule"]["p_clean"] == 0.4
    # an older state (no p_clean saved) resumes with the share it was trained with
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    del state["settings"]["p_clean"]
    torch.save(state, tmp_path / "state.pt")
    res = train(small(epochs=3, p_clean=0.9), tmp_path, resume=True)
    assert res.status == "finished"
    assert read_metadata(tmp_path / "last.safetensors")["schedule"]["p_clean"] == P_CLEAN
    with pytest.raises(InputError, match="p_clean"):
        train(small(p_clean=1.5), tmp_path / "bad", toy["train"], toy["val"])


def test_noise_options_are_run_settings_that_resume(toy, tmp_path):
    """--array-noise and --band-noise are kept in the saved state and the checkpoints'
    schedule; a state saved before they existed resumes with neither (0)."""
    from MotionSSIMLib.assessment.checkpoint import read_metadata

    assert train(small(epochs=1, array_noise=0.5, band_noise=0.25), tmp_path, toy["train"],
                 toy["val"]).status == "finished"
    schedule = read_metadata(tmp_path / "last.safetensors")["schedule"]
    assert (schedule["array_noise"], schedule["band_noise"]) == (0.5, 0.25)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert (state["settings"]["array_noise"], state["settings"]["band_noise"]) == (0.5, 0.25)
    del state["settings"]["array_noise"], state["settings"]["band_noise"]
    torch.save(state, tmp_path / "state.pt")
    res = train(small(epochs=2, array_noise=0.9, band_noise=0.9), tmp_path, resume=True)
    assert res.status == "finished"
    schedule = read_metadata(tmp_path / "last.safetensors")["schedule"]
    assert (schedule["array_noise"], schedule["band_noise"]) == (0.0, 0.0)
    with pytest.raises(InputError, match="band_noise"):
        train(small(band_noise=2.0), tmp_path / "bad", toy["train"], toy["val"])
