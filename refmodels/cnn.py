"""Tiny reference CNNs that mirror the channel coupling of real model families.

Each model is written from scratch here (no torchvision) and kept deliberately small:
input ``1x3x32x32``, widths 8-128, one to three blocks per stage, 10 classes (the U-Net
returns a ``1x2x32x32`` per-pixel map).  They exist to exercise the pruner on the
structures that make channel pruning hard: residual adds, depthwise and grouped
convolutions, squeeze-excite gating, concatenation, channel split and shuffle,
flatten into a linear layer, transposed convolutions and channels-last LayerNorm.

Use :func:`build` to get a model in eval mode with deterministic random weights and
non-trivial BatchNorm statistics, plus a matching example input::

    model, example = build("resnet_basic", seed=0)
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REGISTRY", "build", "names"]


# --------------------------------------------------------------------------- helpers


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation."""

    def __init__(self, cin, cout, k=3, stride=1, groups=1, act: type[nn.Module] | None = nn.ReLU):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class ClassifierHead(nn.Module):
    """Global average pool -> flatten -> linear."""

    def __init__(self, cin, num_classes=10, dropout=0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.dropout(x))


class SqueezeExcite(nn.Module):
    """avgpool -> 1x1 conv (reduce) -> act -> 1x1 conv (expand) -> gate -> Mul."""

    def __init__(self, channels, squeeze, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x):
        s = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * s


def inverted_residual_trunk(stem, stem_stride, act, blocks, last) -> nn.Sequential:
    """The MobileNet / EfficientNet feature extractor: a 3x3 conv to ``stem`` channels (``stem_stride``),
    the blocks one after another, a 1x1 conv to ``last`` channels (both convs ConvBNAct with ``act``).
    ``blocks``: ``(cout, make)`` per block, ``make(cin)`` building it from the channels before it."""
    layers: list[nn.Module] = [ConvBNAct(3, stem, 3, stem_stride, act=act)]
    cin = stem
    for cout, make in blocks:
        layers.append(make(cin))
        cin = cout
    layers.append(ConvBNAct(cin, last, 1, act=act))
    return nn.Sequential(*layers)


class SEInvertedResidual(nn.Module):
    """MobileNetV3 / EfficientNet block: 1x1 expand to ``exp`` channels (none when exp == cin) -> kxk
    depthwise (``stride``) -> squeeze-excite (``se``: its squeeze width, activation and gate; None: no SE)
    -> 1x1 project without activation; a residual add when the block keeps the shape."""

    def __init__(self, cin, exp, cout, k, stride, act, se: tuple[int, type[nn.Module], type[nn.Module]] | None):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBNAct(cin, exp, 1, act=act))
        layers.append(ConvBNAct(exp, exp, k, stride, groups=exp, act=act))
        if se is not None:
            squeeze, se_act, gate = se
            layers.append(SqueezeExcite(exp, squeeze, act=se_act, gate=gate))
        layers.append(ConvBNAct(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res else out


# --------------------------------------------------------------------------- ResNet


class ResidualBlock(nn.Module):
    """Base of the ResNet blocks: ``relu(residual(x) + shortcut)``, the shortcut ``x`` itself or, where the
    block changes the shape, ``downsample(x)`` (1x1 conv + BN)."""

    def _add_shortcut(self, cin, cout, stride):
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def residual(self, x):
        raise NotImplementedError

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


class BasicBlock(ResidualBlock):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self._add_shortcut(cin, cout, stride)

    def residual(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """1x1 reduce -> 3x3 (optionally grouped) -> 1x1 expand, residual add."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, groups=1, base_width=None):
        super().__init__()
        width = planes if base_width is None else base_width
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self._add_shortcut(cin, cout, stride)

    def residual(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """stem -> stages of residual blocks -> avgpool -> fc.

    ``stages`` is a list of ``(planes, num_blocks, stride)``; ``block_kwargs`` goes to
    every block (ResNeXt passes ``groups`` and ``base_width``-per-planes via a callable).
    """

    def __init__(self, block, stages, stem=16, num_classes=10, block_kwargs=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        layers = []
        cin = stem
        for planes, n, stride in stages:
            blocks = []
            for i in range(n):
                kw = block_kwargs(planes) if block_kwargs else {}
                blocks.append(block(cin, planes, stride if i == 0 else 1, **kw))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_basic():
    return ResNet(BasicBlock, [(16, 2, 1), (32, 2, 2), (64, 1, 2)], stem=16)


def resnet_bottleneck():
    # outputs 32 -> 64 channels (planes 8/16, expansion 4)
    return ResNet(Bottleneck, [(8, 2, 1), (16, 2, 2)], stem=16)


def resnext():
    # ResNeXt "32x4d"-style: grouped 3x3 in every bottleneck, width = 2 * planes.
    def kw(planes):
        groups = 4 if planes <= 8 else 8
        return {"groups": groups, "base_width": planes * 2}

    return ResNet(Bottleneck, [(8, 2, 1), (16, 1, 2)], stem=16, block_kwargs=kw)


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand_ratio):
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    # (expand t, out c, repeats n, stride s)
    SETTING = [(1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 2, 2)]

    def __init__(self, num_classes=10, stem=16, last=64):
        super().__init__()
        self.features = inverted_residual_trunk(stem, 1, nn.ReLU6, [
            (c, partial(InvertedResidual, cout=c, stride=s if i == 0 else 1, expand_ratio=t))
            for t, c, n, s in self.SETTING for i in range(n)], last)
        self.classifier = ClassifierHead(last, num_classes, dropout=0.2)

    def forward(self, x):
        return self.classifier(self.features(x))


def mobilenetv2():
    return MobileNetV2()


# --------------------------------------------------------------------------- MobileNetV3


class MBv3Block(SEInvertedResidual):
    def __init__(self, cin, k, exp, cout, use_se, act, stride):
        super().__init__(cin, exp, cout, k, stride, act,
                         (max(8, exp // 4), nn.ReLU, nn.Hardsigmoid) if use_se else None)


class MobileNetV3(nn.Module):
    # (kernel, expanded, out, SE, activation, stride)
    SETTING = [
        (3, 16, 16, True, nn.ReLU, 2),
        (3, 48, 24, False, nn.ReLU, 2),
        (3, 64, 24, False, nn.ReLU, 1),
        (5, 72, 32, True, nn.Hardswish, 1),
        (5, 96, 32, True, nn.Hardswish, 1),
    ]

    def __init__(self, num_classes=10, stem=16, last=96, head=64):
        super().__init__()
        self.features = inverted_residual_trunk(stem, 2, nn.Hardswish, [
            (c, partial(MBv3Block, k=k, exp=exp, cout=c, use_se=se, act=act, stride=s))
            for k, exp, c, se, act, s in self.SETTING], last)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last, head), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(head, num_classes)
        )

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenetv3():
    return MobileNetV3()


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(bn_size*growth) -> BN-ReLU-Conv3x3(growth); output is concatenated."""

    def __init__(self, cin, growth, bn_size=4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]):
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, n, cin, growth):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2)
        )


class DenseNet(nn.Module):
    def __init__(self, growth=8, blocks=(3, 3), stem=16, num_classes=10):
        super().__init__()
        self.conv0 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.norm0 = nn.BatchNorm2d(stem)
        stages: list[nn.Module] = []
        c = stem
        for i, n in enumerate(blocks):
            stages.append(DenseBlock(n, c, growth))
            c += n * growth
            if i != len(blocks) - 1:
                stages.append(Transition(c, c // 2))
                c //= 2
        self.stages = nn.Sequential(*stages)
        self.norm_final = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.norm0(self.conv0(x))), 3, 2, 1)
        x = F.relu(self.norm_final(self.stages(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def densenet():
    return DenseNet()


# --------------------------------------------------------------------------- ShuffleNetV2


def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                ConvBNAct(cin, cin, 3, stride, groups=cin, act=None),
                ConvBNAct(cin, branch, 1),
            )
            b2_in = cin
        else:
            assert cin == cout
            self.branch1 = None
            b2_in = branch
        self.branch2 = nn.Sequential(
            ConvBNAct(b2_in, branch, 1),
            ConvBNAct(branch, branch, 3, stride, groups=branch, act=None),
            ConvBNAct(branch, branch, 1),
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stem=16, stages=((32, 2), (64, 2)), last=128, num_classes=10):
        super().__init__()
        self.conv1 = ConvBNAct(3, stem, 3, 1)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers = []
        cin = stem
        for cout, n in stages:
            layers.append(ShuffleUnit(cin, cout, 2))
            for _ in range(n - 1):
                layers.append(ShuffleUnit(cout, cout, 1))
            cin = cout
        self.stages = nn.Sequential(*layers)
        self.conv5 = ConvBNAct(cin, last, 1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stages(x))
        x = x.mean([2, 3])
        return self.fc(x)


def shufflenetv2():
    return ShuffleNetV2()


# --------------------------------------------------------------------------- RegNet


class RegNetBlock(nn.Module):
    """RegNetY-style X block: 1x1 -> grouped 3x3 (fixed group width) -> SE -> 1x1, residual."""

    def __init__(self, cin, cout, stride, group_width=8, bottleneck=1.0, se_ratio=0.25):
        super().__init__()
        w_b = int(round(cout * bottleneck))
        groups = w_b // group_width
        self.a = ConvBNAct(cin, w_b, 1)
        self.b = ConvBNAct(w_b, w_b, 3, stride, groups=groups)
        self.se = SqueezeExcite(w_b, max(1, int(round(cin * se_ratio)))) if se_ratio else None
        self.c = ConvBNAct(w_b, cout, 1, act=None)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = ConvBNAct(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        y = self.b(self.a(x))
        if self.se is not None:
            y = self.se(y)
        return self.relu(self.c(y) + shortcut)


class RegNet(nn.Module):
    def __init__(self, stem=16, widths=(24, 48), depths=(1, 2), group_width=8, se_ratio=0.25,
                 num_classes=10):
        super().__init__()
        self.stem = ConvBNAct(3, stem, 3, 2)
        blocks = []
        cin = stem
        for w, d in zip(widths, depths):
            for i in range(d):
                blocks.append(RegNetBlock(cin, w, 2 if i == 0 else 1, group_width, 1.0, se_ratio))
                cin = w
        self.trunk = nn.Sequential(*blocks)
        self.head = ClassifierHead(cin, num_classes)

    def forward(self, x):
        return self.head(self.trunk(self.stem(x)))


def regnet():
    return RegNet()


# --------------------------------------------------------------------------- EfficientNet


class MBConv(SEInvertedResidual):
    def __init__(self, cin, cout, k, stride, expand_ratio, se_ratio=0.25):
        super().__init__(cin, cin * expand_ratio, cout, k, stride, nn.SiLU,
                         (max(1, int(cin * se_ratio)), nn.SiLU, nn.Sigmoid))


class EfficientNet(nn.Module):
    # (expand, kernel, stride, out, repeats)
    SETTING = [(1, 3, 1, 8, 1), (6, 3, 2, 16, 2), (6, 5, 2, 24, 1)]

    def __init__(self, stem=16, head=64, num_classes=10):
        super().__init__()
        self.features = inverted_residual_trunk(stem, 1, nn.SiLU, [
            (c, partial(MBConv, cout=c, k=k, stride=s if i == 0 else 1, expand_ratio=e))
            for e, k, s, c, n in self.SETTING for i in range(n)], head)
        self.classifier = ClassifierHead(head, num_classes, dropout=0.2)

    def forward(self, x):
        return self.classifier(self.features(x))


def efficientnet():
    return EfficientNet()


# --------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    CFG = [16, 16, "M", 32, "M", 64, 64, "M"]  # 32 -> 4x4 spatial

    def __init__(self, num_classes=10, hidden=64, use_view=False):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.use_view = use_view
        self.classifier = nn.Sequential(
            nn.Linear(cin * 4 * 4, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        if self.use_view:
            x = x.view(x.size(0), -1)
        else:
            x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg():
    return VGG(use_view=False)


def vgg_view():
    return VGG(use_view=True)


# --------------------------------------------------------------------------- SqueezeNet


class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1x1(x)), self.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 8, 16, 16), Fire(32, 8, 16, 16),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 16, 32, 32),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(64, num_classes, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet():
    return SqueezeNet()


# --------------------------------------------------------------------------- Inception


class InceptionBlock(nn.Module):
    """Four branches concatenated: 1x1 | 1x1->3x3 | 1x1->5x5 (or 3x3->3x3) | pool->1x1."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj, double3x3=False):
        super().__init__()
        self.branch1 = ConvBNAct(cin, c1, 1)
        self.branch2 = nn.Sequential(ConvBNAct(cin, c3r, 1), ConvBNAct(c3r, c3, 3))
        if double3x3:
            self.branch3 = nn.Sequential(
                ConvBNAct(cin, c5r, 1), ConvBNAct(c5r, c5, 3), ConvBNAct(c5, c5, 3)
            )
        else:
            self.branch3 = nn.Sequential(ConvBNAct(cin, c5r, 1), ConvBNAct(c5r, c5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvBNAct(cin, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class Inception(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = ConvBNAct(3, 32, 3, 1)
        self.inc3a = InceptionBlock(32, 16, 16, 24, 8, 8, 8)  # -> 56, 5x5 branch
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.inc4a = InceptionBlock(56, 24, 16, 32, 8, 16, 8, double3x3=True)  # -> 80
        self.head = ClassifierHead(self.inc4a.out_channels, num_classes, dropout=0.2)

    def forward(self, x):
        x = self.inc3a(self.pool(self.stem(x)))
        x = self.inc4a(self.pool(x))
        return self.head(x)


def inception():
    return Inception()


# --------------------------------------------------------------------------- U-Net


class DoubleConv(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(ConvBNAct(cin, cout, 3), ConvBNAct(cout, cout, 3))


class UNet(nn.Module):
    def __init__(self, in_ch=3, out_ch=2, widths=(16, 32, 64)):
        super().__init__()
        w1, w2, w3 = widths
        self.enc1 = DoubleConv(in_ch, w1)
        self.enc2 = DoubleConv(w1, w2)
        self.bottom = DoubleConv(w2, w3)
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = DoubleConv(w2 * 2, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = DoubleConv(w1 * 2, w1)
        self.out = nn.Conv2d(w1, out_ch, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


def unet():
    return UNet()


# --------------------------------------------------------------------------- ConvNeXt


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW tensor, written out as ConvNeXt does."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, layer_scale=1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x)
        y = y.permute(0, 2, 3, 1)  # NCHW -> NHWC
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = self.gamma * y
        y = y.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return x + y


class ConvNeXt(nn.Module):
    def __init__(self, dims=(16, 32, 64), depths=(2, 2, 1), num_classes=10):
        super().__init__()
        self.downsample = nn.ModuleList()
        self.downsample.append(nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0])))
        for i in range(len(dims) - 1):
            self.downsample.append(
                nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(d) for _ in range(n)]) for d, n in zip(dims, depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean([-2, -1]))
        return self.head(x)


def convnext():
    return ConvNeXt()


# --------------------------------------------------------------------------- registry

REGISTRY: dict[str, Callable[[], nn.Module]] = {
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "mobilenetv2": mobilenetv2,
    "mobilenetv3": mobilenetv3,
    "densenet": densenet,
    "shufflenetv2": shufflenetv2,
    "resnext": resnext,
    "regnet": regnet,
    "efficientnet": efficientnet,
    "vgg": vgg,
    "vgg_view": vgg_view,
    "squeezenet": squeezenet,
    "inception": inception,
    "unet": unet,
    "convnext": convnext,
}


def names() -> list[str]:
    """Registered model names, in registry order."""
    return list(REGISTRY)


INPUT_SHAPE = (1, 3, 32, 32)


@torch.no_grad()
def _randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Make normalisation layers and layer scales non-trivial, deterministically."""

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            normal(m.running_mean, 0.2)
            uniform(m.running_var, 0.5, 2.0)
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.2)
        elif isinstance(m, (nn.LayerNorm, LayerNorm2d)):
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.2)
        if isinstance(m, ConvNeXtBlock):
            # real checkpoints have trained layer scales well away from the 1e-6 init
            uniform(m.gamma, 0.2, 1.0)


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Return ``(model in eval mode, example input)`` for a registered model.

    Weights come from ``torch.manual_seed(seed)`` (PyTorch's default initialisers);
    BatchNorm running statistics and affine parameters, LayerNorm affine parameters
    and ConvNeXt layer scales are then randomised so none of them is the identity.
    The example input is ``1x3x32x32`` standard normal, also derived from ``seed``.
    """
    try:
        ctor = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None
    torch.manual_seed(seed)
    model = ctor()
    gen = torch.Generator().manual_seed(seed + 1)
    _randomize(model, gen)
    model.eval()
    example = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(seed + 2))
    return model, example
