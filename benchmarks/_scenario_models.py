"""Models, data and the LightningModule of the scenario benchmark (``benchmarks/scenarios.py``).

Everything here is small on purpose: a training step takes a few milliseconds on one CPU thread, so
the benchmark can afford many realistic runs (the point is coverage of architectures, optimizers and
schedules, not scale). All data come from private generators (or sklearn's bundled digits), so
building a data set never moves the global RNG that the training run itself consumes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

import lightning.pytorch as L

F = nn.functional
Batch = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=None)
def digits(images: bool = False) -> Batch:
    """sklearn's 8×8 digits (1,797 samples), standardised per pixel; ``images`` → ``[n, 1, 8, 8]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)  # constant border pixels stay 0
    y = torch.tensor(d.target, dtype=torch.long)
    return (x.reshape(-1, 1, 8, 8) if images else x), y


def majority_tokens(num_samples: int = 2048, length: int = 16, vocab: int = 6, classes: int = 4,
                    seed: int = 0, label_noise: float = 0.0) -> Batch:
    """Synthetic token sequences: the label is the most frequent of the first ``classes`` tokens.

    A class token is planted with probability 0.3 and the rest is uniform over the vocabulary, so the
    majority is usually but not always the planted token: a Transformer must count (attend) across the
    whole sequence; tokens ``>= classes`` are distractors. ``label_noise``: that fraction of labels is
    replaced by a random class (keeps the training loss away from 0, where mini-batch noise alone
    triples the loss from one step to the next).
    """
    g = torch.Generator().manual_seed(1000 + seed)
    planted = torch.randint(0, classes, (num_samples, 1), generator=g)
    x = torch.randint(0, vocab, (num_samples, length), generator=g)
    plant = torch.rand(num_samples, length, generator=g) < 0.3
    x = torch.where(plant, planted.expand(-1, length), x)
    counts = torch.stack([(x == c).sum(1) for c in range(classes)], 1)
    y = counts.argmax(1)  # ties -> smallest token (deterministic)
    if label_noise > 0:
        flip = torch.rand(num_samples, generator=g) < label_noise
        y = torch.where(flip, torch.randint(0, classes, (num_samples,), generator=g), y)
    return x, y


def teacher_student(num_samples: int = 512, input_dim: int = 10, teacher_width: int = 4, depth: int = 1,
                    activation: str = "tanh", noise: float = 0.0, seed: int = 0) -> Batch:
    """Regression targets of a random teacher (``depth`` hidden layers of ``teacher_width``), x ~ N(0, I)."""
    g = torch.Generator().manual_seed(2000 + seed)
    x = torch.randn(num_samples, input_dim, generator=g)
    h, width = x, input_dim
    act = {"tanh": torch.tanh, "linear": (lambda t: t), "relu": torch.relu}[activation]
    for _ in range(depth):
        w = torch.randn(width, teacher_width, generator=g) / math.sqrt(width)
        h, width = act(h @ w) * (1.5 if activation == "tanh" else 1.0), teacher_width
    y = h @ (torch.randn(width, 1, generator=g) / math.sqrt(width))
    y = y / y.std()
    return x, y + noise * torch.randn(y.shape, generator=g)


class Repeat(torch.utils.data.Dataset):
    """The same full batch at every step: full-batch training as one Lightning epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> Batch:
        return self.x, self.y


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int | None, steps: int) -> torch.utils.data.DataLoader:
    """Full batch (``batch_size=None``) or shuffled mini-batches. The shuffle draws from the *global*
    RNG at every epoch start, as in a normal run: a probe that moved it would change the batch order."""
    if batch_size is None:
        return torch.utils.data.DataLoader(Repeat(x, y, steps), batch_size=None)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size,
                                       shuffle=True, drop_last=True, num_workers=0)


# ----------------------------------------------------------------------------- networks
def mlp(input_dim: int, hidden: tuple[int, ...], output_dim: int, activation: str = "relu", dropout: float = 0.0,
        bias: bool = True, init_scale: float = 1.0) -> nn.Sequential:
    """Linear → activation → [Dropout] blocks and a linear read-out; ``init_scale`` multiplies the
    default initialisation of every weight (small values start the net near the saddle at 0)."""
    acts: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU,
                                                "linear": nn.Identity}
    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h, bias=bias), acts[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, output_dim, bias=bias))
    net = nn.Sequential(*layers)
    if init_scale != 1.0:
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.Linear):
                    m.weight.mul_(init_scale)
                    if m.bias is not None:
                        m.bias.zero_()
    return net


class ResBlock(nn.Module):
    """Conv → BN → ReLU → Conv → BN, plus the identity, then ReLU (ResNet basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class ResCNN(nn.Module):
    """A small ResNet for 1×8×8 digits: stem Conv→BN→ReLU, ``blocks`` residual blocks, global average
    pool, linear read-out."""

    def __init__(self, channels: int = 16, blocks: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class TokenTransformer(nn.Module):
    """Token + learned position embeddings, a post-LN ``TransformerEncoder`` (GELU, dropout 0.1), a
    final LayerNorm, mean pooling and a linear classifier."""

    def __init__(self, vocab: int = 6, length: int = 16, d_model: int = 32, nhead: int = 4, layers: int = 2,
                 dim_ff: int = 64, classes: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(length, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_ff, dropout=dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.pos[: x.shape[1]])
        return self.head(self.norm(h).mean(1))


# ----------------------------------------------------------------------------- optimisation
@dataclass(frozen=True)
class Optim:
    """Optimizer and learning-rate schedule of a run.

    ``warmup`` linear warm-up steps; ``cosine`` cosine decay to ``min_lr_ratio`` over ``total`` steps;
    ``lr_growth`` multiplies the learning rate by this factor every step from ``growth_start`` on (the
    divergence scenarios' exponential ramp, as a ``LambdaLR`` like any other schedule).
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    warmup: int = 0
    cosine: bool = False
    total: int = 0
    min_lr_ratio: float = 0.0
    lr_growth: float = 1.0
    growth_start: int = 0

    def build(self, params: Any) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        cls = torch.optim.Adam if self.name == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def factor(self, step: int) -> float:
        """Learning-rate multiplier at optimizer step ``step`` (0-based)."""
        f = 1.0
        if self.warmup and step < self.warmup:
            f *= (step + 1) / self.warmup
        if self.cosine and self.total:
            t = min(max(step - self.warmup, 0) / max(self.total - self.warmup, 1), 1.0)
            f *= self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if self.lr_growth != 1.0 and step >= self.growth_start:
            f *= self.lr_growth ** (step - self.growth_start)
        return f

    @property
    def scheduled(self) -> bool:
        return bool(self.warmup or self.cosine or self.lr_growth != 1.0)

    def describe(self) -> str:
        parts = [f"{self.name} lr {self.lr:g}"]
        if self.momentum:
            parts.append(f"momentum {self.momentum:g}")
        if self.weight_decay:
            parts.append(f"wd {self.weight_decay:g}")
        if self.warmup:
            parts.append(f"warm-up {self.warmup}")
        if self.cosine:
            parts.append("cosine")
        if self.lr_growth != 1.0:
            parts.append(f"lr x{self.lr_growth:g}/step from {self.growth_start}")
        return ", ".join(parts)


class Task(L.LightningModule):
    """A normal LightningModule: ``training_step`` logs and returns the loss, ``configure_optimizers``
    returns the optimizer and, where the run has one, a per-step ``LambdaLR`` schedule."""

    def __init__(self, net: nn.Module, loss: Literal["ce", "mse", "mse_onehot"], optim: Optim,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.net, self.loss_kind, self.optim, self.label_smoothing = net, loss, optim, label_smoothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        return self._loss(out, y)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "ce":
            return F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
        if self.loss_kind == "mse_onehot":  # classification with the square loss (Cohen et al.'s EoS setting)
            return F.mse_loss(out, F.one_hot(y, out.shape[1]).to(out.dtype))
        return F.mse_loss(out, y)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        opt = self.optim.build(self.parameters())
        if not self.optim.scheduled:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.optim.factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float | None]:
        """(loss, accuracy) on the whole training set in eval mode (accuracy: classification only)."""
        was = self.training
        self.eval()
        out = torch.cat([self.net(x[i:i + 512]) for i in range(0, len(x), 512)])
        self.train(was)
        if self.loss_kind in ("ce", "mse_onehot"):
            return float(self._loss(out, y)), float((out.argmax(1) == y).float().mean())
        return float(self._loss(out, y)), None
