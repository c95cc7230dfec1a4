"""Training and evaluation settings, each with its default, help text, choices and range once.

`TrainSettings` and `EvaluateSettings` are plain dataclasses whose field metadata say how a
setting appears on the command line. From them come the argument parsers (`add_arguments`),
the checks (`TrainSettings.validate`) and the command lines other programs build
(`train_arguments`, `evaluate_arguments`: the Slicer Training module starts its processes with
them). Standard library only, so that the Slicer modules import it before torch is installed,
and Python 3.9 syntax (Slicer 5.8).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .errors import InputError

__all__ = [
    "ARCHITECTURES",
    "EvaluateSettings",
    "LR_SCHEDULES",
    "MOTION_FAMILIES",
    "RUN_KEYS",
    "SLICE_RANGES",
    "TrainSettings",
    "add_arguments",
    "evaluate_arguments",
    "family_weights",
    "from_args",
    "parse_families",
    "train_arguments",
]

ARCHITECTURES = ("resnet18", "resnet101")
SLICE_RANGES = ("central", "all")
LR_SCHEDULES = ("constant", "cosine")
PIPELINES = ("auto", "device", "workers")
TIO_BACKENDS = ("torch", "torchio")
# Motion families (`motion.draw_motion_params`), in the order their draws and picks use: the
# paper's two, then those of `scanner_motion` (issue 22).
MOTION_FAMILIES = ("torchio", "kspace", "trajectory", "ordering", "epi", "through_plane",
                   "moves")
# Share of samples left motion-free (label 1) by default (training, validation, evaluation).
# Most slices of real scans are clean: without them the model never sees SSIM 1 and reads clean
# slices as mildly corrupted (a -0.1 bias on the bundled sample's clean slices after 5 epochs
# without them). A run may train with another share (--p-clean); evaluation keeps this one.
P_CLEAN = 0.15
COSINE_FLOOR = 0.01  # the cosine schedule decays to this share of the peak learning rate
# Settings that fix the random stream or the model: on resume the saved values win.
RUN_KEYS = ("architecture", "samples_per_epoch", "batch_size", "lr", "input_size", "contrast",
            "p_torchio", "motion_families", "val_samples", "seed", "slices",
            "bn_calibration", "lr_schedule", "warmup", "acquisition", "freeze", "storage",
            "p_clean", "array_noise", "band_noise")
SCHEDULE, MACHINE = "model and schedule (defaults: the paper's)", "machine"


# ----------------------------------------------------------------------------- value checks
# Each returns the value or raises ValueError with the problem; the parser and `validate` share
# them, so a value refused on the command line is refused in Python with the same words.


def at_least_1(value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return int(value)


def not_negative(value: int) -> int:
    if int(value) < 0:
        raise ValueError(f"must not be negative, got {value}")
    return int(value)


def share(value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"must lie in [0, 1], got {value}")
    return float(value)


def parse_families(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """Motion families and weights from "torchio,kspace,epi" (equal weights),
    "torchio:2,epi:1" or "all"; a mapping is checked the same way. Empty or None: {} (the
    default families). ValueError names what is wrong."""
    if spec is None or isinstance(spec, str) and not spec.strip():
        return {}
    if isinstance(spec, str):
        if spec.strip() == "all":
            return {f: 1.0 for f in MOTION_FAMILIES}
        items = [item.partition(":") for item in spec.split(",")]
        pairs = [(name.strip(), weight.strip() or "1") for name, _, weight in items]
    else:
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    out: dict[str, float] = {}
    for name, text in pairs:
        if name not in MOTION_FAMILIES:
            raise ValueError(f"unknown motion family {name!r}; choose from "
                             f"{', '.join(MOTION_FAMILIES)} (or all)")
        if name in out:
            raise ValueError(f"motion family {name!r} given twice")
        try:
            weight = float(text)
        except ValueError:
            raise ValueError(f"motion family {name}: weight {text!r} is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"motion family {name}: weight must be finite and >= 0, got {text}")
        out[name] = weight
    if sum(out.values()) <= 0:
        raise ValueError("the motion family weights sum to 0")
    return out


def motion_families(value: str) -> str:
    """A `--motion-families` value, checked (kept as given)."""
    parse_families(value)
    return str(value)


def family_weights(spec: str | Mapping[str, float] | None = None,
                   p_torchio: float = 0.5) -> tuple[float, ...]:
    """Each family's share, in MOTION_FAMILIES order. The default (None or ""): TorchIO's
    with p_torchio and the k-space lines with the rest, exactly as before the families."""
    chosen = parse_families(spec)
    if not chosen:
        return (float(p_torchio), 1.0 - float(p_torchio)) + (0.0,) * (len(MOTION_FAMILIES) - 2)
    total = sum(chosen.values())
    return tuple(chosen.get(f, 0.0) / total for f in MOTION_FAMILIES)


def _parser_type(check: Callable[[Any], Any], kind: type) -> Callable[[str], Any]:
    """`check` as an argparse type: text -> kind -> checked (argparse's one-line error)."""
    def parse(text: str) -> Any:
        try:
            return check(kind(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def setting(default: Any, help: str = "", *, kind: type | None = None,
            check: Callable[[Any], Any] | None = None, choices: Sequence[str] | None = None,
            metavar: str | None = None, group: str = SCHEDULE, cli: bool = True,
            hidden: bool = False) -> Any:
    """A dataclass field with its command-line description in the metadata. A bool setting
    (default True) appears as --no-NAME; `kind` is the value type where the default is None;
    `cli=False`: Python only."""
    meta = {"help": help, "kind": kind or type(default), "check": check, "choices": choices,
            "metavar": metavar, "group": group, "cli": cli, "hidden": hidden}
    return field(default=default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- settings


@dataclass
class TrainSettings:
    """Training settings; the defaults are the paper's (ResNet-18, Adam 1e-3, batch 100, MSE,
    2000 epochs; one slice per training volume per epoch with 200 volumes = 200 samples)."""

    architecture: str = setting("resnet18", "network", choices=ARCHITECTURES)
    epochs: int = setting(2000, "epochs to train (a resumed run may extend them)",
                          check=at_least_1)
    samples_per_epoch: int = setting(
        200, "random slices per epoch (default 200: one per volume of the paper's 200 "
        "training volumes)", check=at_least_1)
    batch_size: int = setting(100, "slices per optimizer step", check=at_least_1)
    lr: float = setting(1e-3, "Adam learning rate (the peak of a schedule)")
    input_size: int = setting(256, "model input side; only tests change it", check=at_least_1,
                              hidden=True)
    contrast: bool = setting(True, "no contrast augmentation")
    p_torchio: float = setting(0.5, "share of slices corrupted by TorchIO; the rest by the "
                               "k-space line simulator (default 0.5)", check=share)
    motion_families: str = setting(
        "", "motion families and weights: e.g. torchio,kspace,epi (equal shares), "
        "torchio:2,kspace:2,trajectory:1 or all; families: " + ", ".join(MOTION_FAMILIES)
        + " (default: torchio and kspace by --p-torchio)", check=motion_families,
        metavar="LIST")
    acquisition: bool = setting(True, "no acquisition stages (lower acquired matrix, Rician "
                                "noise on the model input): the paper's corruption only")
    storage: float = setting(0.0, "share of slices stored at a lower matrix after the "
                             "acquisition, as a reslicing stores a series (the model input "
                             "only: the label stays the acquired pair's; default 0)",
                             check=share, metavar="SHARE")
    p_clean: float = setting(P_CLEAN, "share of training and validation slices left "
                             f"motion-free (label 1; default {P_CLEAN})", check=share,
                             metavar="SHARE")
    array_noise: float = setting(0.0, "share of the noisy training and validation slices "
                                 "whose noise is a phased-array coil's (root sum of squares of "
                                 "2-32 channels: a higher, smoother floor in air than Rician "
                                 "noise; default 0)", check=share, metavar="SHARE")
    band_noise: float = setting(0.0, "share of the noisy training and validation slices "
                                "acquired at a lower matrix whose noise has that matrix's "
                                "grain, as a scanner's (default 0: the slice grid's)",
                                check=share, metavar="SHARE")
    val_samples: int = setting(500, "size of the fixed validation set (default 500)",
                               check=not_negative)
    seed: int = setting(0, "seed of every random draw (same seed, same slices)")
    workers: int | None = setting(None, "data loader processes (default: cores - 1, at most 8)",
                                  kind=int, check=not_negative, group=MACHINE)
    device: str = setting("auto", "auto (GPU if any), cpu, cuda, cuda:1, mps, ...",
                          group=MACHINE)
    pipeline: str = setting("auto", "where slices are corrupted: on the GPU (device) or in the "
                            "loader processes (workers); auto: GPU when training on one",
                            choices=PIPELINES, group=MACHINE)
    amp: bool = setting(True, "no mixed precision (bf16/fp16 on CUDA, bf16 on CPUs with "
                        "native bf16)", group=MACHINE)
    channels_last: bool = setting(True, "default memory layout instead of channels-last "
                                  "(slower)", group=MACHINE)
    threads: int | None = setting(None, "torch threads of the training process (default: all "
                                  "cores)", kind=int, check=at_least_1, group=MACHINE)
    # TorchIO's motion: batched torch, or "torchio" (the real library, one slice at a time:
    # checks and benchmarks)
    tio_backend: str = setting("torch", choices=TIO_BACKENDS, cli=False)
    max_time: float = setting(0.0, "stop after this much training time in this session, "
                              "resumable (default: no limit)", metavar="SECONDS", group=MACHINE)
    checkpoint_every: int = setting(50, "also save the resume state every STEPS steps (default "
                                    "50; 0: only at epoch ends)", check=not_negative,
                                    metavar="STEPS", group=MACHINE)
    cache_mb: int = setting(2048, "volume cache per process in MB (default 2048)",
                            check=at_least_1, group=MACHINE)
    progress: bool = setting(True, "no progress bar", group=MACHINE)
    distributed: bool | None = setting(None, "None = when WORLD_SIZE > 1", kind=bool, cli=False)
    init_from: str | None = setting(None, "start from this checkpoint's weights (fine-tune) "
                                    "instead of random ones", kind=str, metavar="CHECKPOINT")
    freeze: int = setting(0, "leading stages kept fixed in fine-tuning (0: none; 1: the stem; "
                          "2: stem and layer1; 3: and layer2): no backward pass through them",
                          check=not_negative, metavar="N")
    slices: str = setting("central", "slices drawn from each volume: the central half (the "
                          "paper's) or all non-empty ones (top and bottom of the head included)",
                          choices=SLICE_RANGES)
    bn_calibration: int = setting(320, "training samples that set the BatchNorm statistics "
                                  "saved with each epoch (default 320; 0 keeps the running "
                                  "averages)", check=not_negative, metavar="N")
    lr_schedule: str = setting("constant", "constant (the paper's) or cosine: linear warm-up, "
                               "then cosine decay to 1 % of --lr at the last epoch",
                               choices=LR_SCHEDULES)
    warmup: float = setting(0.02, "share of all steps spent warming up with --lr-schedule "
                            "cosine (default 0.02)", metavar="SHARE")

    def validate(self) -> None:
        """InputError naming the first setting out of its choices or range."""
        _check_fields(self)
        if self.input_size < 32:
            raise InputError(f"input_size: must be at least 32, got {self.input_size}")
        if not (self.lr > 0):
            raise InputError(f"lr: must be positive, got {self.lr}")
        if not (0.0 <= self.warmup < 1.0):
            raise InputError(f"warmup: must lie in [0, 1), got {self.warmup}")
        if self.max_time < 0:
            raise InputError("max_time must not be negative")
        if self.freeze > 3:
            raise InputError(f"freeze: at most 3 stages (the stem, layer1, layer2), got "
                             f"{self.freeze}")
        _check_families(self)


def _like(name: str, default: Any = MISSING) -> Any:
    """A field described as TrainSettings' `name` (help, choices, checks), with its default
    unless another is given: each setting is described once."""
    train = {f.name: f for f in fields(TrainSettings)}[name]
    return field(default=train.default if default is MISSING else default,
                 metadata=train.metadata)


@dataclass
class EvaluateSettings:
    """The test protocol of `evaluation.evaluate_checkpoints` (the paper's: 10000 slices)."""

    n: int = setting(10000, "number of test slices (default 10000, as in the paper)",
                     check=at_least_1)
    seed: int = _like("seed")
    slices: str = _like("slices")
    contrast: bool = _like("contrast")
    p_torchio: float = _like("p_torchio")
    motion_families: str = _like("motion_families")
    acquisition: bool = _like("acquisition")
    storage: float = _like("storage")
    good: float = setting(0.85, "clinical threshold: SSIM >= this is good (default 0.85)")
    sufficient: float = setting(0.60, "clinical threshold: SSIM >= this is sufficient "
                                "(default 0.60)")
    device: str = _like("device")
    batch_size: int = _like("batch_size")
    workers: int | None = _like("workers", 0)
    progress: bool = _like("progress")


# Model v3's motion mix (issue "Model v3", point 2): the two original families at twice the
# weight of each scanner family (scanner_motion), so every family is seen in training.
V3_MOTION_FAMILIES = "torchio:2,kspace:2,trajectory:1,ordering:1,epi:1,through_plane:1,moves:1"
# Model v3's storage share (phases 4-5): trained without it, the model read strong motion on
# held-out synthetic slices stored at 41-128 px windows 0.12-0.24 milder than its label
# (MODEL_HISTORY, "Model v3, phase 5").
V3_STORAGE = 0.6


def _check_families(settings: Any) -> None:
    """p_torchio shares out the default families only: refused beside motion_families."""
    default = {f.name: f.default for f in fields(settings)}["p_torchio"]
    if settings.motion_families and settings.p_torchio != default:
        raise InputError("p_torchio: applies to the default families only; give the torchio "
                         "and kspace weights in motion_families instead")


def _check_fields(settings: Any) -> None:
    for f in fields(settings):
        value, meta = getattr(settings, f.name), f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise InputError(f"{f.name}: {value!r} is not one of {tuple(meta['choices'])}")
        if meta.get("check") and value is not None:
            try:
                meta["check"](value)
            except ValueError as exc:
                raise InputError(f"{f.name}: {exc}") from None


# ----------------------------------------------------------------------------- command lines


def add_arguments(parser: argparse.ArgumentParser, settings_class: type,
                  groups: bool = True) -> None:
    """One option per command-line setting of `settings_class` (in groups by `group`)."""
    made: dict[str, Any] = {}
    for f in fields(settings_class):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        target = parser
        if groups:
            target = made.setdefault(meta["group"], None) or parser.add_argument_group(
                meta["group"])
            made[meta["group"]] = target
        text = argparse.SUPPRESS if meta["hidden"] else meta["help"].replace("%", "%%") or None
        if meta["kind"] is bool:
            target.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name,
                                action="store_false", help=text)
            continue
        kind = meta["kind"]
        target.add_argument(_flag(f.name), default=f.default, help=text, choices=meta["choices"],
                            metavar=meta["metavar"],
                            type=_parser_type(meta["check"], kind) if meta["check"] else kind)


def from_args(settings_class: type, args: argparse.Namespace) -> Any:
    """The settings object of parsed `add_arguments` options (other settings, and options left
    at None, e.g. `train --epochs` when not given: the defaults)."""
    given = vars(args)
    return settings_class(**{f.name: given[f.name] for f in fields(settings_class)
                             if given.get(f.name) is not None})


def _value_text(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _options(settings: Any, skip: Sequence[str] = ()) -> list[str]:
    """Options that parse back to `settings`: those whose value differs from the default."""
    args: list[str] = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if not f.metadata.get("cli", True) or f.name in skip or value == f.default:
            continue
        if isinstance(f.default, bool):
            args.append("--no-" + f.name.replace("_", "-"))  # bool settings default to True
        else:
            args += [_flag(f.name), _value_text(value)]
    return args


def train_arguments(settings: TrainSettings, out: str, data: str | None = None,
                    val_data: str | None = None, resume: bool = False) -> list[str]:
    """Arguments of `train.py` / `python -m MotionSSIMLib train` that train with `settings`.

    With `resume`, the data and the settings that fix the run (`RUN_KEYS`, the first weights)
    come from the run saved in `out`: only `epochs` and the machine settings are given."""
    args = ["--out", str(out)]
    if resume:
        return args + ["--resume"] + _options(settings, skip=RUN_KEYS + ("init_from",))
    if not data:
        raise InputError("training data: choose a split file or a folder of volumes")
    args += ["--data", str(data)]
    if val_data:
        args += ["--val-data", str(val_data)]
    return args + _options(settings)


def evaluate_arguments(settings: EvaluateSettings, data: str, checkpoints: Sequence[str],
                       out: str) -> list[str]:
    """Arguments of `python -m MotionSSIMLib evaluate` that evaluate with `settings`."""
    return ["--data", str(data), "--checkpoint", *map(str, checkpoints), "--out", str(out),
            *_options(settings)]
