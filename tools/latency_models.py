"""Six torchvision classifiers for the latency benchmark: torchvision's own modules, or stand-ins.

With ``GRAPHPRUNE_TORCHVISION=1`` (or ``build(..., torchvision=True)``) the models are
torchvision's own (``torchvision.models.get_model(name, weights=None)``, BatchNorm statistics
randomised the same way); run from a venv that has torchvision (``pip install torch==2.14.1
torchvision==0.29.1``, 5.5 GB, kept out of the project's test install).

torchvision is not installed in the project's environment, so by default the latency
benchmark (tools/bench_latency.py) builds the same architectures at torchvision's widths,
depths, strides and 224x224 input from refmodels/cnn.py's building blocks: the layer shapes (and
so the kernels onnxruntime runs and their channel counts) are torchvision's; small details
differ (MobileNetV3's SE width is max(8, C/4) rather than rounded to 8, the ResNet stem's
max-pool follows its ReLU). Weights are random (``torch.manual_seed``; BatchNorm statistics
randomised as in refmodels/cnn.py), like the zoo's ``weights=None`` models.

    python tools/latency_models.py mobilenet_v2 /tmp/mobilenet_v2.onnx
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch import nn

from refmodels import cnn
from refmodels.cnn import ConvBNAct

NAMES = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_y_400mf", "resnet50")


def mobilenet_v2():
    class M(cnn.MobileNetV2):
        SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1)]
    m = M(num_classes=1000, stem=32, last=1280)
    m.features[0] = ConvBNAct(3, 32, 3, 2, act=nn.ReLU6)
    return m


def mobilenet_v3_large():
    RE, HS = nn.ReLU, nn.Hardswish

    class M(cnn.MobileNetV3):
        SETTING = [(3, 16, 16, False, RE, 1), (3, 64, 24, False, RE, 2), (3, 72, 24, False, RE, 1),
                   (5, 72, 40, True, RE, 2), (5, 120, 40, True, RE, 1), (5, 120, 40, True, RE, 1),
                   (3, 240, 80, False, HS, 2), (3, 200, 80, False, HS, 1), (3, 184, 80, False, HS, 1),
                   (3, 184, 80, False, HS, 1), (3, 480, 112, True, HS, 1), (3, 672, 112, True, HS, 1),
                   (5, 672, 160, True, HS, 2), (5, 960, 160, True, HS, 1), (5, 960, 160, True, HS, 1)]
    return M(num_classes=1000, stem=16, last=960, head=1280)


def efficientnet_b0():
    class M(cnn.EfficientNet):
        SETTING = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                   (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    m = M(stem=32, head=1280, num_classes=1000)
    m.features[0] = ConvBNAct(3, 32, 3, 2, act=nn.SiLU)
    return m


def shufflenet_v2_x1_0():
    m = cnn.ShuffleNetV2(stem=24, stages=((116, 4), (232, 8), (464, 4)), last=1024, num_classes=1000)
    m.conv1 = ConvBNAct(3, 24, 3, 2)
    return m


def regnet_y_400mf():
    return cnn.RegNet(stem=32, widths=(48, 104, 208, 440), depths=(1, 3, 6, 6), group_width=8, se_ratio=0.25,
                      num_classes=1000)


def resnet50():
    m = cnn.ResNet(cnn.Bottleneck, [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], stem=64, num_classes=1000)
    m.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    m.relu = nn.Sequential(nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    return m


def use_torchvision() -> bool:
    return os.environ.get("GRAPHPRUNE_TORCHVISION") == "1"


def build(name: str, seed: int = 0, torchvision: bool | None = None):
    if name not in NAMES:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(NAMES)}")
    torch.manual_seed(seed)
    if use_torchvision() if torchvision is None else torchvision:
        import torchvision as tv
        m = tv.models.get_model(name, weights=None)
    else:
        m = globals()[name]()
    cnn._randomize(m, torch.Generator().manual_seed(seed + 1))
    m.eval()
    return m, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed + 2))


def export(name: str, path: str, seed: int = 0) -> str:
    from refmodels.export import export as _export
    m, x = build(name, seed)
    _export(m, x, path, "legacy")
    return path


if __name__ == "__main__":
    export(sys.argv[1], sys.argv[2])
    print(sys.argv[2])
