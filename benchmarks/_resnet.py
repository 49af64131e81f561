"""The CIFAR-size ResNet-18 benchmark model and synthetic CIFAR-shaped data (no download, no torchvision).

The model is the usual CIFAR variant of ResNet-18 (He et al. 2016, as in most CIFAR code bases): a 3×3
stem convolution with 64 channels and no max-pool, BasicBlocks [2, 2, 2, 2] with 64/128/256/512
channels (stride 2 from the second stage on, 1×1 projection shortcuts), BatchNorm after every
convolution, global average pooling and a linear layer to 10 classes: 11,173,962 parameters.

The data are smooth random 3×32×32 images labelled by the argmax of a small random convolutional
teacher, so the task is learnable and the Hessian changes as the student fits it.
"""

from __future__ import annotations

import torch
from torch import nn

F = nn.functional


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers and a residual connection (1×1 conv–BN projection when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3×3 stem, no max-pool, BasicBlocks [2, 2, 2, 2], global average pool, linear head."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512), blocks: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_channels = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(in_channels if b == 0 else width, width, stride if b == 0 else 1)
                                          for b in range(blocks)]))
            in_channels = width
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def make_cifar_like(num_samples: int = 4096, classes: int = 10, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: smooth random images ``(n, 3, size, size)`` and labels from a random conv teacher.

    Images are 8×8 Gaussian noise upsampled bilinearly (image-like spatial correlation) plus a little
    pixel noise, standardised per channel. The teacher (conv 5×5 → ReLU → 4×4 average pool → linear)
    has its logits standardised per class over the data set before the argmax, so the classes are
    roughly balanced. A private generator is used: the global RNG is not touched.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_samples, 3, size // 4, size // 4, generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    conv = torch.randn(32, 3, 5, 5, generator=g) / (3 * 25) ** 0.5
    hidden = F.avg_pool2d(F.relu(F.conv2d(x, conv, padding=2)), 4).flatten(1)  # (n, 32·8·8)
    head = torch.randn(hidden.shape[1], classes, generator=g) / hidden.shape[1] ** 0.5
    logits = hidden @ head
    logits = (logits - logits.mean(0)) / logits.std(0)
    return x, logits.argmax(dim=1)
