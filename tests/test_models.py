import pytest
import torch

from kfaclab.errors import UsageError
from kfaclab.models import build_model, count_parameters


def resnet_parameters(n, classes=10, in_ch=3):
    """Independent count for the CIFAR ResNet-(6n+2) with option-A shortcuts."""
    total = in_ch * 16 * 9 + 2 * 16  # stem conv + BN
    prev = 16
    for c in (16, 32, 64):
        for i in range(n):
            total += (prev if i == 0 else c) * c * 9 + c * c * 9 + 2 * 2 * c
        prev = c
    return total + 64 * classes + classes


@pytest.mark.parametrize("depth,n", [(20, 3), (32, 5), (56, 9)])
def test_resnet_parameter_counts(depth, n):
    model = build_model(f"resnet{depth}", (3, 32, 32), 10)
    assert count_parameters(model) == resnet_parameters(n)


def test_resnet20_is_the_papers_size():
    assert round(count_parameters(build_model("resnet20", (3, 32, 32), 10)) / 1e6, 2) == 0.27


def test_c1_layers_and_count():
    model = build_model("c1", (3, 32, 32), 10)
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 64, (5, 5)), (64, 64, (5, 5))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(64 * 8 * 8, 384), (384, 192), (192, 10)]
    expected = (3 * 64 * 25 + 64) + 128 + (64 * 64 * 25 + 64) + 128 + (4096 * 384 + 384) + (384 * 192 + 192) + 1930
    assert count_parameters(model) == expected


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "c1", "mlp", "mlp:64", "mlp:32,16,8"])
@pytest.mark.parametrize("shape,classes", [((3, 32, 32), 10), ((3, 16, 16), 7), ((1, 8, 8), 3)])
def test_output_shapes(name, shape, classes):
    model = build_model(name, shape, classes)
    assert model(torch.zeros(2, *shape)).shape == (2, classes)


def test_mlp_widths():
    model = build_model("mlp:32,16", (3, 4, 4), 5)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(48, 32), (32, 16), (16, 5)]


@pytest.mark.parametrize("name", ["resnet18", "vgg", "mlp:", "mlp:a,b", "mlp:0", ""])
def test_unknown_model_names_the_choices(name):
    with pytest.raises(UsageError, match="resnet20|mlp:512,256"):
        build_model(name, (3, 32, 32), 10)
