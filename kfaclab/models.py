"""Models by name: CIFAR ResNets of any depth 6n+2 and width, the AlexNet-like C1 net, and MLPs.

`build_model(name, input_shape, num_classes)`; the input shape and class count come from
the dataset, so one name works at any resolution.
"""

from __future__ import annotations

import copy
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from kfaclab.errors import UsageError

MODELS = ("resnet20", "resnet32", "resnet56", "resnetD (D = 6n+2: resnet8, resnet14, ...)",
          "resnetDxK (K times the channels, e.g. resnet14x0.5)", "c1", "mlp", "mlp:W1,W2,...")
# resnet<depth>, or resnet<depth>x<width multiplier>: e.g. resnet8, resnet20, resnet14x2, resnet20x0.5
RESNET = re.compile(r"resnet(\d+)(?:x(\d+(?:\.\d+)?|\.\d+))?")


# --------------------------------------------------------------------------- CIFAR ResNet

class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; the shortcut is the parameter-free "option A" of
    He et al. (2016, Sec. 4.2): subsample and pad channels with zeros, as in the CIFAR ResNets
    whose parameter counts the paper quotes (ResNet-20: 0.27M)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra = stride, planes - in_planes

    def shortcut(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet_widths(width: float) -> tuple[int, int, int]:
    """The three stages' channels of a CIFAR ResNet `width` times as wide as He et al.'s 16/32/64."""
    return tuple(max(1, round(c * width)) for c in (16, 32, 64))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images (any resolution works: the head pools globally): 3 stages
    of n blocks with 16/32/64 channels, times `width`."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        check_resnet(depth, width)
        n = (depth - 2) // 6
        widths = resnet_widths(width)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for planes, stride in zip(widths, (1, 2, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """For evaluation: a copy of a CIFAR ResNet in eval mode with each BatchNorm folded into the
    convolution before it (W' = W g / sqrt(v + eps), b' = beta - m g / sqrt(v + eps), from the
    running statistics): the same function up to rounding, one pass over each activation fewer.
    Evaluation on the CPU runs 1.7-2x faster so. Any other model is returned as it is (C1's
    BatchNorm follows a ReLU and cannot be folded)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if not isinstance(model, CifarResNet):
        return model
    folded = copy.deepcopy(model).eval()
    for parent in [folded, *(m for m in folded.modules() if isinstance(m, BasicBlock))]:
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
            if not hasattr(parent, conv):
                continue
            layer = fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn))
            if getattr(parent, conv).weight.is_contiguous(memory_format=torch.channels_last):
                layer = layer.to(memory_format=torch.channels_last)
            setattr(parent, conv, layer)
            setattr(parent, bn, nn.Identity())
    return folded


# --------------------------------------------------------------------------- C1 (AlexNet-like)

def c1_net(input_shape, num_classes: int) -> nn.Sequential:
    """The AlexNet-like C1 net this research group used for SVHN (after the cuda-convnet
    layers-18pct / TensorFlow CIFAR-10 tutorial net):
    conv5x5 64 -> ReLU -> BN -> maxpool 3/2 -> conv5x5 64 -> ReLU -> BN -> maxpool 3/2
    -> FC 384 -> FC 192 -> FC classes (ReLU between the FC layers)."""
    c, h, w = input_shape
    pooled = lambda s: (s + 2 * 1 - 3) // 2 + 1  # maxpool 3, stride 2, padding 1
    fh, fw = pooled(pooled(h)), pooled(pooled(w))
    return nn.Sequential(
        nn.Conv2d(c, 64, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(),
        nn.Linear(64 * fh * fw, 384), nn.ReLU(),
        nn.Linear(384, 192), nn.ReLU(),
        nn.Linear(192, num_classes),
    )


# --------------------------------------------------------------------------- MLP

def mlp(input_shape, num_classes: int, widths=(512, 256)) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear to the classes."""
    layers, fan_in = [nn.Flatten()], math.prod(input_shape)
    for w in widths:
        layers += [nn.Linear(fan_in, w), nn.ReLU()]
        fan_in = w
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


def _mlp_widths(spec: str):
    try:
        widths = tuple(int(w) for w in spec.split(",") if w.strip())
    except ValueError:
        widths = ()
    if not widths or min(widths) <= 0:
        raise UsageError(f"bad MLP widths '{spec}'; write positive integers like mlp:512,256")
    return widths


def check_resnet(depth: int, width: float) -> None:
    if depth < 8 or (depth - 2) % 6:
        raise UsageError(f"a CIFAR ResNet's depth is 6n+2 with n >= 1 (8, 14, 20, 26, 32, ...), got {depth}")
    if not (0 < width <= 16):
        raise UsageError(f"a ResNet's width multiplier must be in (0, 16], got {width:g}")


def resnet_shape(name: str) -> tuple[int, float] | None:
    """(depth, width multiplier) of a ResNet name, or None if `name` is not one."""
    m = RESNET.fullmatch(name)
    if m is None:
        return None
    return int(m.group(1)), float(m.group(2)) if m.group(2) else 1.0


def check_model_name(name: str) -> None:
    """A one-line UsageError unless `name` names a model (see MODELS); builds nothing, so specs
    and dry runs check their models before any run starts."""
    if name in ("c1", "mlp"):
        return
    shape = resnet_shape(name)
    if shape is not None:
        check_resnet(*shape)
        return
    if name.startswith("mlp:"):
        _mlp_widths(name[4:])
        return
    raise UsageError(f"unknown model '{name}'; choose from {', '.join(MODELS)}")


def build_model(name: str, input_shape, num_classes: int) -> nn.Module:
    """A model by name (see MODELS) for inputs of `input_shape` (C, H, W) and `num_classes`."""
    if num_classes <= 0:
        raise UsageError("num_classes must be positive")
    check_model_name(name)
    shape = resnet_shape(name)
    if shape is not None:
        return CifarResNet(shape[0], input_shape[0], num_classes, width=shape[1])
    if name == "c1":
        return c1_net(input_shape, num_classes)
    if name == "mlp":
        return mlp(input_shape, num_classes)
    return mlp(input_shape, num_classes, _mlp_widths(name[4:]))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
