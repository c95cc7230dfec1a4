"""The networks: one input channel, one output, no download, architecture recognised."""

import pytest
import torch
from torch import nn

from MotionSSIMLib.assessment.model import (
    ARCHITECTURES,
    architecture_of,
    build_model,
    forward_ssim,
    unwrap,
)


def test_resnet18_maps_slices_to_one_value():
    torch.manual_seed(0)
    net = build_model("resnet18").eval()
    assert net.conv1.in_channels == 1 and net.fc.out_features == 1
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64))
        assert out.shape == (2, 1)
        # 256 x 256 is the inference size: the global pool makes the head size-independent
        assert net(torch.rand(1, 1, 256, 256)).shape == (1, 1)
    assert architecture_of(net) == "resnet18"


def test_resnet101_instantiates_with_one_channel_and_one_output():
    net = build_model("resnet101")
    assert net.conv1.in_channels == 1 and net.fc.out_features == 1
    assert len(net.layer3) == 23
    n18 = sum(p.numel() for p in build_model("resnet18").parameters())
    n101 = sum(p.numel() for p in net.parameters())
    assert 10e6 < n18 < 12e6 and 40e6 < n101 < 45e6
    assert architecture_of(net) == "resnet101"


def test_two_builds_are_independently_initialised():
    a, b = build_model(), build_model()
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_architecture_is_recognised_without_the_tag_and_through_wrappers():
    net = build_model("resnet18")
    del net.motionssim_architecture
    assert architecture_of(net) == "resnet18"

    class Wrapper(nn.Module):  # the shape of DistributedDataParallel: the net under .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    assert unwrap(Wrapper(Wrapper(net))) is net
    assert architecture_of(Wrapper(net)) == "resnet18"
    with pytest.raises(ValueError, match="not a MotionSSIM network"):
        architecture_of(nn.Linear(3, 1))


def test_unknown_architecture_is_refused():
    assert ARCHITECTURES == ("resnet18", "resnet101")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vgg16")


def test_forward_ssim_is_the_plain_forward_in_float32_or_the_mixed_one():
    torch.manual_seed(1)
    net = build_model("resnet18").eval()
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = net(x).reshape(-1)
        out = forward_ssim(net, x)
        wrapped = forward_ssim(nn.Sequential(net), x)  # through a wrapper's own forward
        mixed = forward_ssim(net, x, torch.bfloat16)
    assert out.shape == (3,) and out.dtype == torch.float32
    assert torch.equal(out, plain) and torch.equal(wrapped, plain)
    # stem and fc in float32, the residual layers in bfloat16: close, not equal
    assert mixed.dtype == torch.float32 and mixed.shape == (3,)
    torch.testing.assert_close(mixed, plain, rtol=0.05, atol=0.05 * float(plain.abs().max()))
