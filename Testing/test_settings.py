"""Training and evaluation settings described once (MotionSSIMLib.base.settings): the parsers come
from them, and the command lines other programs build parse back to the same settings."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from MotionSSIMLib.base import settings as st
from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.training.training_cli import add_evaluate_arguments, add_train_arguments

ROOT = Path(__file__).resolve().parents[1]


def parse_train_args(args):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(args)


def parse_evaluate_args(args):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(args)


def test_training_arguments_match_the_trainer_parser(tmp_path):
    chosen = st.TrainSettings(architecture="resnet101", epochs=7, samples_per_epoch=33,
                              batch_size=5, lr=2.5e-4, contrast=False, p_torchio=0.3,
                              device="cpu", slices="all", progress=False)
    args = st.train_arguments(chosen, out=str(tmp_path / "run"),
                              data=str(tmp_path / "split.json"), val_data=str(tmp_path / "val"))
    parsed = parse_train_args(args)
    assert parsed.out == str(tmp_path / "run")
    assert parsed.data == str(tmp_path / "split.json")
    assert parsed.val_data == str(tmp_path / "val")
    assert parsed.architecture == "resnet101"
    assert (parsed.epochs, parsed.samples_per_epoch, parsed.batch_size) == (7, 33, 5)
    assert parsed.lr == pytest.approx(2.5e-4)
    assert parsed.p_torchio == pytest.approx(0.3)
    assert parsed.contrast is False and parsed.resume is False
    assert parsed.device == "cpu" and parsed.progress is False and parsed.slices == "all"
    assert st.from_args(st.TrainSettings, parsed) == chosen
    default = parse_train_args(st.train_arguments(st.TrainSettings(), out="run",
                                                  data="split.json"))
    assert default.slices == "central"  # the paper's protocol unless asked otherwise
    assert st.from_args(st.TrainSettings, default) == st.TrainSettings()

    # resume: only the output folder and a longer schedule; data come from the saved run
    longer = st.TrainSettings(epochs=20, lr=0.5, init_from="x.safetensors", threads=2)
    resumed = parse_train_args(st.train_arguments(longer, out="run", resume=True))
    assert resumed.resume is True and resumed.data is None and resumed.epochs == 20
    assert resumed.lr == st.TrainSettings().lr and resumed.init_from is None  # the run's own
    assert resumed.threads == 2  # machine settings may change
    with pytest.raises(InputError, match="training data"):
        st.train_arguments(st.TrainSettings(), out="run")


def test_every_setting_round_trips_through_its_command_line():
    changed = st.TrainSettings(
        architecture="resnet101", epochs=3, samples_per_epoch=7, batch_size=2, lr=0.125,
        input_size=64, contrast=False, p_torchio=0.25, acquisition=False, val_samples=0,
        seed=9, workers=0, device="cpu", pipeline="workers", amp=False, channels_last=False,
        threads=1, max_time=60.5, checkpoint_every=0, cache_mb=16, progress=False,
        init_from="a.safetensors", slices="all", bn_calibration=0, lr_schedule="cosine",
        warmup=0.1, motion_families="torchio:2,epi:1", freeze=2, storage=0.5, p_clean=0.3,
        array_noise=0.2, band_noise=0.4)
    cli = [f.name for f in dataclasses.fields(st.TrainSettings) if f.metadata["cli"]]
    assert all(getattr(changed, n) != getattr(st.TrainSettings(), n) for n in cli)
    parsed = parse_train_args(st.train_arguments(changed, out="o", data="d"))
    assert st.from_args(st.TrainSettings, parsed) == changed


def test_training_module_evaluate_command_matches_the_evaluate_parser(tmp_path):
    """The command line MotionSSIMTraining's Logic.startEvaluation runs, parsed by the real
    `evaluate` parser."""
    chosen = st.EvaluateSettings(n=1000, device="cpu", progress=False)
    best = str(tmp_path / "run" / "best.safetensors")
    args = st.evaluate_arguments(chosen, str(tmp_path / "data"), [best],
                                 str(tmp_path / "run" / "evaluation"))
    parsed = parse_evaluate_args(args)
    assert parsed.checkpoint == [best] and parsed.data == str(tmp_path / "data")
    assert parsed.out == str(tmp_path / "run" / "evaluation")
    assert (parsed.n, parsed.device, parsed.progress) == (1000, "cpu", False)
    assert st.from_args(st.EvaluateSettings, parsed) == chosen
    # the module builds exactly this: its evaluate command goes through evaluate_arguments
    tree = ast.parse((ROOT / "MotionSSIMTraining" / "MotionSSIMTraining.py").read_text())
    methods = {n.name: ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "self.evaluationArguments(run, best)" in methods["startEvaluation"]
    assert "evaluate_arguments(chosen" in methods["evaluationArguments"]
    assert "EvaluateSettings(n=run.evaluationSlices, device=run.device, progress=False)" \
        in methods["evaluationArguments"]
    assert "train_arguments(" in methods["trainingArguments"]


def test_shared_settings_are_described_once():
    train = {f.name: f for f in dataclasses.fields(st.TrainSettings)}
    for f in dataclasses.fields(st.EvaluateSettings):
        if f.name in train:
            assert f.metadata == train[f.name].metadata, f.name
    assert st.EvaluateSettings().workers == 0 and st.TrainSettings().workers is None


def test_validate_refuses_with_the_setting_named():
    for bad, words in ((dict(lr_schedule="step"), "lr_schedule"), (dict(epochs=0), "epochs"),
                       (dict(p_torchio=1.5), "p_torchio"), (dict(threads=0), "threads"),
                       (dict(architecture="vgg"), "architecture"), (dict(warmup=1.0), "warmup"),
                       (dict(val_samples=-1), "val_samples")):
        with pytest.raises(InputError, match=words):
            st.TrainSettings(**bad).validate()
    st.TrainSettings().validate()
    with pytest.raises(SystemExit):
        parse_train_args(["--out", "o", "--epochs", "0"])


def test_motion_families_parse_check_and_default_to_the_two_simulators():
    """--motion-families: names with optional weights, or all; refused in one line naming the
    problem; the default shares out TorchIO's and the k-space lines by p_torchio exactly."""
    n = len(st.MOTION_FAMILIES)
    assert st.family_weights("", 0.3) == (0.3, 0.7) + (0.0,) * (n - 2)
    assert st.family_weights(None) == (0.5, 0.5) + (0.0,) * (n - 2)
    w = st.family_weights("torchio:2, epi:1,moves")
    assert w[st.MOTION_FAMILIES.index("torchio")] == 0.5
    assert w[st.MOTION_FAMILIES.index("epi")] == w[st.MOTION_FAMILIES.index("moves")] == 0.25
    assert sum(w) == pytest.approx(1.0)
    assert st.family_weights("all") == (1 / n,) * n
    assert st.parse_families({"epi": 1}) == {"epi": 1.0}
    for bad, words in (("epi,warp", "unknown motion family 'warp'"), ("epi,epi", "twice"),
                       ("epi:x", "not a number"), ("epi:-1", ">= 0"), ("epi:0", "sum to 0")):
        with pytest.raises(ValueError, match=words):
            st.parse_families(bad)
    parsed = parse_train_args(["--out", "o", "--motion-families", "torchio,kspace,epi"])
    assert parsed.motion_families == "torchio,kspace,epi"
    with pytest.raises(SystemExit):
        parse_train_args(["--out", "o", "--motion-families", "torchio,warp"])
    assert parse_evaluate_args(["--data", "d", "--checkpoint", "c", "--out", "o",
                                "--motion-families", "epi"]).motion_families == "epi"
    assert "motion_families" in st.RUN_KEYS  # it fixes the random stream: a resume keeps it
    with pytest.raises(InputError, match="p_torchio"):
        st.TrainSettings(motion_families="epi", p_torchio=0.3).validate()
    st.TrainSettings(motion_families="all").validate()


def test_engine_constants_come_from_settings():
    from MotionSSIMLib.assessment import model
    from MotionSSIMLib.training import data, trainer

    assert model.ARCHITECTURES is st.ARCHITECTURES and data.SLICE_RANGES is st.SLICE_RANGES
    assert trainer.TrainSettings is st.TrainSettings and trainer.RUN_KEYS is st.RUN_KEYS
    from MotionSSIMLib.simulation import motion, scanner_motion

    assert motion.MOTION_FAMILIES is st.MOTION_FAMILIES
    assert list(scanner_motion.FAMILY_SIMULATORS) == list(st.MOTION_FAMILIES[2:])


def test_training_module_parameters_default_to_the_settings():
    """The Training module's parameter node cannot import the engine when Slicer loads it, so
    its defaults are literals: they must be TrainSettings' (through PARAMETER_SETTINGS)."""
    from test_slicer_module import module_constants, parameter_fields, parse

    tree = parse("MotionSSIMTraining")
    mapping = module_constants(tree)["PARAMETER_SETTINGS"]
    params = parameter_fields(tree)
    defaults = st.TrainSettings()
    for parameter, name in mapping.items():
        assert params[parameter]["default"] == getattr(defaults, name), parameter
    assert tuple(module_constants(tree)["ARCHITECTURES"]) == st.ARCHITECTURES
    assert params["allSlices"]["default"] is (defaults.slices == "all")
