"""A small CNN trained here on scikit-learn's bundled digits (8x8 images, upsampled to 16x16):
residual, depthwise-separable with squeeze-excite, and concat blocks. Trains in well under two
minutes on two CPU cores; used by tools/quality.py.

    python -m refmodels.digits OUT.onnx       # train (seed 0) and export (legacy exporter, dynamic batch)

``data()`` gives the fixed split: (x_train, y_train, x_test, y_test), float32 [N, 1, 16, 16]
scaled to [0, 1] then standardised, int64 labels.
"""

from __future__ import annotations

import time
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIZE = 16


def data(seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()
    x = ((x - 0.3) / 0.35).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = 360
    te, tr = order[:n_test], order[n_test:]
    return x[tr], y[tr], x[te], y[te]


def cbr(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = cbr(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)))


class SE(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class DWSE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = cbr(c, c, 3, groups=c)
        self.se = SE(c, c // 4)
        self.pw = cbr(c, c, 1)

    def forward(self, x):
        return self.pw(self.se(self.dw(x)))


class ConcatBlock(nn.Module):
    def __init__(self, cin, half):
        super().__init__()
        self.a = cbr(cin, half, 1)
        self.b = cbr(cin, half, 3)
        self.fuse = cbr(2 * half, cin, 1)

    def forward(self, x):
        return self.fuse(torch.cat([self.a(x), self.b(x)], 1))


class DigitsNet(nn.Module):
    def __init__(self, w=16):
        super().__init__()
        self.stem = cbr(1, w)
        self.res1 = Residual(w)
        self.down1 = cbr(w, 2 * w, 3, 2)
        self.dwse = DWSE(2 * w)
        self.cat = ConcatBlock(2 * w, w)
        self.down2 = cbr(2 * w, 4 * w, 3, 2)
        self.res2 = Residual(4 * w)
        self.fc = nn.Linear(4 * w, 10)

    def forward(self, x):
        x = self.res1(self.stem(x))
        x = self.cat(self.dwse(self.down1(x)))
        x = self.res2(self.down2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def train(seed: int = 0, epochs: int = 10, log=print) -> Tuple[DigitsNet, float]:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = data()
    model = DigitsNet()
    fit(model, xtr, ytr, epochs=epochs, lr=0.05, seed=seed, augment=True)
    model.eval()
    acc = accuracy(model, xte, yte)
    log(f"digits CNN: test accuracy {acc:.4f}")
    return model, acc


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0,
        augment: bool = True, batch: int = 64, adam: bool = False) -> None:
    """SGD with a one-cycle schedule (training), or Adam (fine-tuning pruned models, which may
    have their BatchNorms folded into the convolutions)."""
    g = torch.Generator().manual_seed(seed)
    if adam:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(Y), generator=g)
        for i in range(0, len(Y), batch):
            idx = perm[i:i + batch]
            xb = X[idx]
            if augment:   # random shifts of up to one pixel
                dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export(model: nn.Module, path: str) -> str:
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 1, SIZE, SIZE),), path, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    t = time.time()
    m, acc = train(a.seed)
    print(f"trained in {time.time() - t:.1f}s")
    print(export(m, a.out))
