"""Small normalised nets for the L2 and scan tests (CPU-fast): a BatchNorm ResNet-style CNN and a
LayerNorm Transformer encoder, as LightningModules with their own synthetic data."""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import nn

F = nn.functional


def images(n: int = 64, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth 1×8×8 images labelled by a random linear teacher (learnable, classes balanced-ish)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=(8, 8), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    logits = x.flatten(1) @ torch.randn(64, classes, generator=g)
    return x, (logits - logits.mean(0)).argmax(1)


def tokens(n: int = 63, length: int = 6, vocab: int = 5, classes: int = 3, seed: int = 0):
    """Token sequences whose label (balanced: ``i % classes``) is planted in three of the positions.

    Balanced classes keep the collapsed model (all logits 0) a stationary point of the loss, which the
    ray estimate assumes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(classes, vocab, (n, length), generator=g)  # distractors only
    y = torch.arange(n) % classes
    pos = torch.rand(n, length, generator=g).argsort(1)[:, :3]
    x.scatter_(1, pos, y[:, None].expand(n, 3))
    return x, y


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class BNResNet(L.LightningModule):
    """conv → BN → ReLU stem, one residual basic block, global average pool, linear head."""

    def __init__(self, channels: int = 6, classes: int = 3, n: int = 64, seed: int = 0) -> None:
        super().__init__()
        g = torch.random.fork_rng(devices=[])
        with g:
            torch.manual_seed(seed)
            self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(channels)
            self.block = Block(channels)
            self.head = nn.Linear(channels, classes)
        self.data = images(n, classes, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(F.relu(self.bn(self.stem(x))))
        return self.head(out.mean((2, 3)))

    def training_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*self.data), batch_size=len(self.data[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


class LNTransformer(L.LightningModule):
    """Embedding + positions → one post-LN ``nn.TransformerEncoderLayer`` (no dropout) → final LayerNorm →
    mean pool → linear head."""

    def __init__(self, d_model: int = 8, vocab: int = 5, length: int = 6, classes: int = 3, n: int = 63,
                 seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(0.1 * torch.randn(length, d_model))
            self.layer = nn.TransformerEncoderLayer(d_model, 2, 16, dropout=0.0, batch_first=True)
            self.norm = nn.LayerNorm(d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.norm2 = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, classes)
        self.data = tokens(n, length, vocab, classes, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.layer(self.embed(x) + self.pos))
        return self.head(F.gelu(self.norm2(self.proj(h))).mean(1))

    def training_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*self.data), batch_size=len(self.data[0]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2, weight_decay=1e-2)
