import pytest
import torch

from kfaclab.errors import UsageError
from kfaclab.models import build_model, count_parameters


def resnet_parameters(n, classes=10, in_ch=3, widths=(16, 32, 64)):
    """Independent count for the CIFAR ResNet-(6n+2) with option-A shortcuts."""
    total = in_ch * widths[0] * 9 + 2 * widths[0]  # stem conv + BN
    prev = widths[0]
    for c in widths:
        for i in range(n):
            total += (prev if i == 0 else c) * c * 9 + c * c * 9 + 2 * 2 * c
        prev = c
    return total + widths[2] * classes + classes


@pytest.mark.parametrize("depth,n", [(8, 1), (14, 2), (20, 3), (26, 4), (32, 5), (56, 9), (110, 18)])
def test_resnet_parameter_counts_at_every_depth_6n_plus_2(depth, n):
    model = build_model(f"resnet{depth}", (3, 32, 32), 10)
    assert count_parameters(model) == resnet_parameters(n)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n convolutions in the blocks, the stem, and the head


@pytest.mark.parametrize("name,n,widths", [("resnet14x0.5", 2, (8, 16, 32)), ("resnet8x2", 1, (32, 64, 128)),
                                           ("resnet20x1", 3, (16, 32, 64)), ("resnet8x.25", 1, (4, 8, 16)),
                                           ("resnet8x0.75", 1, (12, 24, 48))])
def test_a_width_multiplier_scales_every_stage(name, n, widths):
    model = build_model(name, (3, 16, 16), 10)
    assert count_parameters(model) == resnet_parameters(n, widths=widths)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("name,why", [("resnet10", "6n\\+2"), ("resnet2", "6n\\+2"), ("resnet20x0", "width"),
                                      ("resnet20x99", "width"), ("resnet20x", "unknown model"),
                                      ("resnetx2", "unknown model"), ("resnet20x2x", "unknown model")])
def test_a_bad_resnet_name_says_what_is_wrong(name, why):
    from kfaclab.models import check_model_name

    with pytest.raises(UsageError, match=why):
        check_model_name(name)


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


@pytest.mark.parametrize("name", ["vgg", "mlp:", "mlp:a,b", "mlp:0", ""])
def test_unknown_model_names_the_choices(name):
    with pytest.raises(UsageError, match="resnet20|mlp:512,256"):
        build_model(name, (3, 32, 32), 10)


@pytest.mark.parametrize("name", ["resnet8", "resnet14x0.5"])
def test_folding_batchnorm_for_evaluation_keeps_the_function(name):
    """The folded copy computes what the model computes in eval mode (float64: to rounding), from
    running statistics that are not the identity, and leaves the model itself as it was."""

    from kfaclab.models import fold_batchnorm

    torch.manual_seed(0)
    model = build_model(name, (3, 12, 12), 10).double()
    model.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from (0, 1)
            model(torch.randn(32, 3, 12, 12, dtype=torch.float64) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # and affine parameters away from (1, 0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(16, 3, 12, 12, dtype=torch.float64)
    folded = fold_batchnorm(model)
    assert model.training and sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == 0
    with torch.no_grad():
        expected = model.eval()(x)
        assert torch.allclose(folded(x), expected, rtol=1e-10, atol=1e-10)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_folding_leaves_other_models_alone_and_keeps_channels_last():

    from kfaclab.models import fold_batchnorm

    for name in ("c1", "mlp:16"):
        m = build_model(name, (3, 8, 8), 10)
        assert fold_batchnorm(m) is m
    m = build_model("resnet8", (3, 8, 8), 10).to(memory_format=torch.channels_last)
    folded = fold_batchnorm(m)
    assert folded.layers[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
