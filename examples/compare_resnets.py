"""Align two independently trained ResNets (BatchNorm, basic and bottleneck blocks, a projection shortcut).

Trains two small ResNets on scikit-learn's digits (8×8 images, 1300 train / 497 test) from different
initialisations and mini-batch orders, then measures the loss barrier (training set) and the test-error
barrier on the straight path between them, before and after aligning hidden units. The permutation spec is
derived by tracing the forward pass: one permutation per residual stream, shared by the stem, every block
that adds into the stream and the projection shortcut that opens the next one; BatchNorm statistics move
with their channels. BatchNorm statistics of every network on the path are recomputed on the training set.

Run:  python examples/compare_resnets.py   (needs scikit-learn; about a minute on one CPU core)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from lightning_landscape.compare import align, classification_error, loss_barrier, parameter_distance, permutation_spec


class Basic(nn.Module):
    """3×3 conv–BN–ReLU–3×3 conv–BN plus the shortcut (1×1 conv–BN projection when the shape changes)."""

    def __init__(self, cin: int, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != c:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce – 3×3 – 1×1 expand, each with BatchNorm, plus the identity."""

    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(x + self.bn3(self.conv3(out)))


class DigitsResNet(nn.Module):
    """Stem (16 ch) → basic + bottleneck blocks → basic block with stride 2 and projection (32 ch) → pool → linear."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(Basic(width, width), Bottleneck(width, width // 2))
        self.layer2 = Basic(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(data.target)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return (x[idx[:1300]], y[idx[:1300]]), (x[idx[1300:]], y[idx[1300:]])


def train(seed: int, data: tuple[torch.Tensor, torch.Tensor], epochs: int, width: int = 16) -> DigitsResNet:
    """SGD (lr 0.05, momentum 0.9, batch 64); ``seed`` fixes the initial weights and the batch order."""
    torch.manual_seed(seed)
    model = DigitsResNet(width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data
    order = torch.Generator().manual_seed(1000 + seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=order).split(64):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def measure(a: nn.Module, b: nn.Module, train_data: tuple, test_data: tuple, spec, num_points: int = 11) -> dict:
    """Loss barrier (training set), test-error barrier and parameter distance: raw, then after weight and
    after activation matching (``b`` aligned to ``a``)."""
    out = {}
    for method in ("none", "weight", "activation"):
        aligned = b if method == "none" else align(a, b, method, data=train_data, spec=spec)[0]
        out[method] = {
            "loss": loss_barrier(a, aligned, train_data, num_points=num_points).barrier,
            "error": loss_barrier(a, aligned, test_data, num_points=num_points, loss_fn=classification_error).barrier,
            "distance": parameter_distance(a, aligned),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    train_data, test_data = digits()
    a, b = train(1, train_data, args.epochs), train(2, train_data, args.epochs)
    print(f"trained two ResNets ({sum(p.numel() for p in a.parameters())} parameters each) in "
          f"{time.perf_counter() - start:.0f}s")
    for name, m in (("a", a), ("b", b)):
        with torch.no_grad():
            loss = float(F.cross_entropy(m(train_data[0]), train_data[1]))
        print(f"  {name}: train loss {loss:.4f}, test error {float(classification_error(m, test_data)):.3f}")
    spec = permutation_spec(a, train_data[0][:64])
    print("permutation groups: " + ", ".join(f"{h.name}[{h.size}]" for h in spec.layers))
    results = measure(a, b, train_data, test_data, spec)
    print(f"\n{'alignment':<11} {'loss barrier':>10} {'test-error barrier':>19} {'distance':>9}")
    for method, r in results.items():
        print(f"{method:<11} {r['loss']:>10.4f} {r['error']:>19.4f} {r['distance']:>9.2f}")
    print(f"\ntotal {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
