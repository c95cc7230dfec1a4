"""The regression networks: torchvision ResNets with one input channel and one output, and an
optional second output (the uncertainty head) that predicts the size of the first one's error."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..base.settings import ARCHITECTURES  # the one list of networks (torch-free module)

# Blocks in layer3 tell the two ResNets apart (resnet18: 2 BasicBlocks, resnet101: 23 Bottlenecks)
_LAYER3_BLOCKS = {2: "resnet18", 23: "resnet101"}


def build_model(architecture: str = "resnet18", uncertainty_head: bool = False) -> nn.Module:
    """A freshly initialised ResNet-18/101 for 1 x 256 x 256 slices -> one raw SSIM value.

    No pretrained weights: nothing is downloaded (the paper trains from scratch). The output is
    an unbounded regression value; inference clamps it to [0, 1]. `uncertainty_head`: also
    the second output (add_uncertainty_head).
    """
    import torchvision

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    net = getattr(torchvision.models, architecture)(weights=None)
    # grey-level MR slices: one input channel instead of RGB, same stem geometry
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Linear(net.fc.in_features, 1)
    net.motionssim_architecture = architecture
    if uncertainty_head:
        add_uncertainty_head(net)
    return net


UNCERTAINTY_HIDDEN = 64  # units of the head's hidden layer
# log sd is clamped here: an sd below 0.002 or above 0.5 would claim more than the label's
# own precision or less than "anywhere in [0, 1]"
LOG_SD_RANGE = (-6.2, -0.7)


def add_uncertainty_head(net: nn.Module) -> nn.Module:
    """Give a ResNet its second output: a small MLP on the pooled features (the input of `fc`)
    that predicts log sd, the standard deviation of the SSIM output's error on that slice.
    It sits beside `fc` as `net.uncertainty`; the torchvision forward ignores it, so training
    the backbone is unchanged and only forward_outputs reads it. Trained on the frozen backbone
    (training/uncertainty_head.py)."""
    inner = unwrap(net)
    width = inner.fc.in_features
    inner.uncertainty = nn.Sequential(nn.Linear(width, UNCERTAINTY_HIDDEN), nn.ReLU(),
                                      nn.Linear(UNCERTAINTY_HIDDEN, 1))
    return net


def has_uncertainty_head(net: nn.Module) -> bool:
    return isinstance(getattr(unwrap(net), "uncertainty", None), nn.Module)


# A ResNet's stages in input order: the stem, then layer1..layer4 (the head, fc, always trains)
STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def freeze_stages(net: nn.Module, n: int) -> list[str]:
    """Keep the first `n` stages of a ResNet (0: none; 1: the stem; 2: stem and layer1; ...)
    fixed in fine-tuning: their weights get no gradient, so the backward pass stops before
    them (the early, high-resolution stages cost most of it). Their BatchNorm statistics still
    follow the data (calibration). Returns the names of the frozen modules."""
    net = unwrap(net)
    if not 0 <= n <= len(STAGES) - 1:
        raise ValueError(f"freeze: 0 to {len(STAGES) - 1} stages, got {n}")
    names = [name for stage in STAGES[:n] for name in stage]
    for name in names:
        for p in getattr(net, name).parameters():
            p.requires_grad_(False)
    return names


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def architecture_of(model: nn.Module) -> str:
    """Which of ARCHITECTURES `model` is (ValueError for any other network)."""
    net = unwrap(model)
    tag = getattr(net, "motionssim_architecture", None)
    if tag in ARCHITECTURES:
        return tag
    layer3 = getattr(net, "layer3", None)
    conv1 = getattr(net, "conv1", None)
    fc = getattr(net, "fc", None)
    if (isinstance(layer3, nn.Sequential) and isinstance(conv1, nn.Conv2d)
            and conv1.in_channels == 1 and isinstance(fc, nn.Linear) and fc.out_features == 1
            and len(layer3) in _LAYER3_BLOCKS):
        return _LAYER3_BLOCKS[len(layer3)]
    raise ValueError(f"not a MotionSSIM network ({type(net).__name__}); build it with "
                     f"build_model(), one of {ARCHITECTURES}")


_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                 "avgpool", "fc")


def forward_ssim(model: nn.Module, batch: torch.Tensor,
                 amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 1, H, W) -> (B,) raw regression output in float32: the one forward pass of every
    caller (assessment, evaluation, the trainer's steps and validation, scripts).

    amp_dtype None: the plain forward through `model` itself, wrappers included (DDP needs its
    own forward to synchronise gradients), inside whatever autocast the caller opened (the
    trainer runs the whole network under its own).

    amp_dtype (torch.bfloat16 / torch.float16): the residual layers run under autocast in that
    dtype on the batch's device; the stem (conv1 to maxpool) and the last layer (fc) in
    float32. The stem reads the image itself, whose faint ghosts bfloat16 (8 significant bits)
    would round away, for about 2 % of the arithmetic; the output is a value near [0, 1] whose
    rounding in bfloat16 alone would be up to 0.002. Measured on held-out slices, the largest
    difference from float32 halves (0.0035 -> 0.0019); on the seeded held-out views of
    Testing/test_precision.py a bfloat16 stem gave 0.011, past PRECISION_BOUND. The price on an
    AMX CPU: a third of the throughput (40 against 61 slices/s at batch 32, measured in one
    run), since the stem's single input channel runs in float32. A network that is not a
    torchvision ResNet runs wholly under autocast. Wrappers are bypassed here: for inference
    only.
    """
    if amp_dtype is None:
        return model(batch).float().reshape(-1)
    net = unwrap(model)
    if not all(isinstance(getattr(net, k, None), nn.Module) for k in _RESNET_PARTS):
        with torch.autocast(batch.device.type, dtype=amp_dtype):
            return model(batch).float().reshape(-1)
    return net.fc(features(net, batch, amp_dtype)).reshape(-1)


def features(net: nn.Module, batch: torch.Tensor,
             amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 1, H, W) -> (B, C) float32 pooled features of a torchvision ResNet (the input of
    `fc`), the residual layers under autocast in `amp_dtype` (None: float32) and the stem in
    float32 (forward_ssim says why)."""
    net = unwrap(net)
    x = net.maxpool(net.relu(net.bn1(net.conv1(batch))))
    with (torch.autocast(batch.device.type, dtype=amp_dtype) if amp_dtype is not None
          else contextlib.nullcontext()):
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        x = torch.flatten(net.avgpool(x), 1)
    return x.float()


def forward_outputs(model: nn.Module, batch: torch.Tensor, amp_dtype: torch.dtype | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 1, H, W) -> ((B,) raw SSIM output, (B,) predicted sd of its error, or None for a
    network without the uncertainty head): both from one forward pass, the two last layers in
    float32. For inference only (wrappers bypassed)."""
    net = unwrap(model)
    if not all(isinstance(getattr(net, k, None), nn.Module) for k in _RESNET_PARTS):
        return forward_ssim(model, batch, amp_dtype), None
    feats = features(net, batch, amp_dtype)
    raw = net.fc(feats).reshape(-1)
    if not has_uncertainty_head(net):
        return raw, None
    return raw, sd_from_head(net.uncertainty(feats))


def sd_from_head(log_sd: torch.Tensor) -> torch.Tensor:
    """The head's raw output (B, 1) -> (B,) sd, clamped to LOG_SD_RANGE."""
    return torch.exp(log_sd.reshape(-1).float().clamp(*LOG_SD_RANGE))
