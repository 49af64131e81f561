"""Shared set-up for the benchmarks: the MLP and ResNet-18 benchmarks, timing helpers, the PyHessian peer, tables.

Every benchmark runs both sides in one process, on the same model, data and seeds, and interleaves
them so that load from other processes hits both alike; costs are medians, reported as ratios to the
median training step measured in the same process.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from _resnet import ResNet18, make_cifar_like
from torch import nn

from lightning_landscape.guards import isolated_rng
from lightning_landscape.tasks import build_mlp, make_teacher_student

F = nn.functional


def proc_status(key: str) -> int:
    """A byte count from ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...): the peak-memory benchmarks' meter."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def set_threads(threads: int) -> None:
    """Pin intra-op threads (the CPU figures in the README use 1 thread on a shared 2-core machine)."""
    if threads > 0:
        torch.set_num_threads(threads)


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Bench:
    """A benchmark: model, optimizer, training data, the fixed probe batch, one SGD step.

    The model stays in train mode: the probes measure the Hessian of the training loss, with BatchNorm
    using batch statistics (PyHessian switches to eval mode, i.e. running statistics: another loss).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    batch: int
    device: torch.device
    description: str
    generator: torch.Generator

    def loss(self, xb: torch.Tensor | None = None, yb: torch.Tensor | None = None) -> torch.Tensor:
        xb = self.probe_x if xb is None else xb
        yb = self.probe_y if yb is None else yb
        return F.cross_entropy(self.model(xb), yb)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A random training batch (drawn with the bench's own generator)."""
        idx = torch.randint(0, self.x.shape[0], (self.batch,), generator=self.generator).to(self.device)
        return self.x[idx], self.y[idx]

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
        """One SGD step on ``batch`` (default: a random one); returns its wall time (seconds, synchronised)."""
        xb, yb = self.next_batch() if batch is None else batch
        sync(self.device)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(xb, yb).backward()
        self.optimizer.step()
        sync(self.device)
        return time.perf_counter() - t0


def make_mlp_bench(
    input_dim: int = 784,
    hidden: Sequence[int] = (256, 256),
    batch: int = 512,
    num_samples: int = 8192,
    activation: str = "relu",
    lr: float = 0.1,
    momentum: float = 0.9,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Bench:
    """MLP ``input_dim``-hidden-10 on 10-class teacher–student data, SGD with momentum."""
    device = torch.device(device)
    x, y = make_teacher_student(num_samples=num_samples, input_dim=input_dim, classes=10, teacher_width=32, seed=seed)
    torch.manual_seed(seed)
    model = build_mlp(input_dim, tuple(hidden), 10, activation).to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    dims = "-".join(str(d) for d in (input_dim, *hidden, 10))
    n = sum(p.numel() for p in model.parameters())
    desc = f"MLP {dims} ({activation}, {n:,} parameters), batch {batch}, SGD lr {lr} momentum {momentum}, {device}"
    return Bench(model, opt, x, y, x[:batch], y[:batch], batch, device, desc, torch.Generator().manual_seed(seed + 1))


def make_resnet_bench(
    batch: int = 32,
    num_samples: int = 4096,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    widths: Sequence[int] = (64, 128, 256, 512),
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Bench:
    """CIFAR ResNet-18 (11.17M parameters) on synthetic CIFAR-shaped teacher data, SGD with momentum.

    ``widths`` smaller than the default give a narrow ResNet-18 for smoke runs. Weight decay acts in the
    optimizer only; the measured Hessian is that of the cross-entropy (the library's convention).
    """
    device = torch.device(device)
    x, y = make_cifar_like(num_samples=num_samples, classes=10, seed=seed)
    torch.manual_seed(seed)
    model = ResNet18(10, tuple(widths)).to(device).train()
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = sum(p.numel() for p in model.parameters())
    name = "ResNet-18 (CIFAR)" if tuple(widths) == (64, 128, 256, 512) else f"ResNet-18 (CIFAR, widths {'/'.join(map(str, widths))})"
    desc = (f"{name}, {n:,} parameters, BatchNorm in train mode, 3×32×32 synthetic teacher data ({num_samples:,} samples), "
            f"batch {batch}, SGD lr {lr} momentum {momentum} weight decay {weight_decay:g}, {device}")
    return Bench(model, opt, x, y, x[:batch], y[:batch], batch, device, desc, torch.Generator().manual_seed(seed + 1))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (floats formatted by the caller)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def environment() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), {os.cpu_count()} CPU(s), {dev}, "
            f"Python {sys.version.split()[0]}")


# ---------------------------------------------------------------------------------------------- PyHessian
def import_pyhessian() -> tuple[Any, str]:
    """``(pyhessian.hessian class or None, version or the import error)``."""
    try:
        import pyhessian  # noqa: F401
        from pyhessian import hessian
    except Exception as err:  # not installed, or broken on this torch
        return None, f"{type(err).__name__}: {err} (pip install --no-deps pyhessian==0.1)"
    try:
        from importlib.metadata import version

        return hessian, version("pyhessian")
    except Exception:
        return hessian, "unknown"


@contextlib.contextmanager
def pyhessian_sandbox(model: nn.Module) -> Iterator[None]:
    """Run PyHessian without letting it change the training it looks at.

    PyHessian switches the model to eval mode, calls ``loss.backward(create_graph=True)`` (so ``.grad``
    fields hold graph-attached tensors, a reference cycle) and draws from the global RNG. Restore all three.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        with isolated_rng():
            yield
    finally:
        for m, mode in modes:
            m.train(mode)
        for p, g in grads:
            p.grad = g


def pyhessian_top(hessian_cls: Any, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], device: torch.device,
                  maxiter: int) -> tuple[float, torch.Tensor, int]:
    """PyHessian's top eigenvalue/vector and the number of HVPs it spent (counted by wrapping its HVP)."""
    ph = sys.modules["pyhessian.hessian"]  # the package re-exports the class under the module's name

    count = [0]
    original = ph.hessian_vector_product

    def counting(*a, **k):
        count[0] += 1
        return original(*a, **k)

    ph.hessian_vector_product = counting
    try:
        with pyhessian_sandbox(model):
            h = hessian_cls(model, F.cross_entropy, data=data, cuda=device.type == "cuda")
            values, vectors = h.eigenvalues(maxIter=maxiter)
    finally:
        ph.hessian_vector_product = original
    flat = torch.cat([v.reshape(-1) for v in vectors[0]]).detach()
    return float(values[0]), flat / flat.norm(), count[0]


def error_text(err: BaseException) -> str:
    """The exception and where in the peer it was raised (one line)."""
    frames = traceback.extract_tb(err.__traceback__)
    where = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(frames) if "pyhessian" in f.filename), "")
    return f"{type(err).__name__}: {err}".replace("\n", " ") + (f" (at {where})" if where else "")
