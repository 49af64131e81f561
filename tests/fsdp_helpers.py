"""A realistic sharded user run under ``ModelParallelStrategy`` (FSDP2) and what it records.

Importable by the run script's processes (``tests/fsdp_run.py``, started by the tests with ``subprocess``:
Lightning's ``ModelParallelStrategy`` re-runs ``sys.argv`` for its other ranks, so a run cannot happen inside
pytest) and by the tests that compare the records with a single process.

The models are built by :func:`build_model` as plain ``nn.Module``s from a seed, so a test can rebuild the
same architecture unsharded and load the run's gathered weights into it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from lightning_landscape.tasks import make_teacher_student

#: Model configurations: name -> keyword arguments of :func:`build_model`.
MODELS: dict[str, dict[str, Any]] = {
    # ≈ 1.3 k parameters: big enough for the stochastic paths (Lanczos, Hutch++: > 256 parameters), small
    # enough for an exact float64 Hessian in the reference. Odd widths: uneven shards (Shard(0) of 15 rows).
    "mlp": dict(kind="mlp", input_dim=12, widths=(31, 15), output_dim=3),
    # A pre-norm Transformer block (LayerNorm, self-attention as Linear projections, GELU feed-forward).
    "transformer": dict(kind="transformer", input_dim=6, d_model=12, seq=4, d_ff=20, output_dim=3),
    # Parameters dominate memory (≈ 0.91 M parameters in seven 360² layers, batch 4): for the memory test.
    "wide": dict(kind="mlp", input_dim=360, widths=(360,) * 7, output_dim=3),
}


class Block(nn.Module):
    """Pre-norm single-head self-attention + feed-forward on ``(batch, seq, d_model)``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        h = h + self.proj(att @ v)
        return h + self.ff2(nn.functional.gelu(self.ff1(self.norm2(h))))


class TinyTransformer(nn.Module):
    """Inputs ``(batch, seq * input_dim)`` read as ``seq`` tokens; mean-pooled read-out."""

    def __init__(self, input_dim: int, d_model: int, seq: int, d_ff: int, output_dim: int) -> None:
        super().__init__()
        self.seq, self.input_dim = seq, input_dim
        self.embed = nn.Linear(input_dim, d_model)
        self.block = Block(d_model, d_ff)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(self.embed(x.view(x.shape[0], self.seq, self.input_dim)))
        return self.head(self.norm(h).mean(dim=1))


def build_model(name: str, seed: int = 0) -> nn.Module:
    """The plain (unsharded) model ``name`` of :data:`MODELS`, initialised from ``seed``."""
    cfg = dict(MODELS[name])
    kind = cfg.pop("kind")
    with torch.random.fork_rng():  # seeded init that leaves the caller's global RNG alone
        torch.manual_seed(seed)
        return TinyTransformer(**cfg) if kind == "transformer" else _mlp(**cfg)


def _mlp(input_dim: int, widths: tuple[int, ...], output_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = input_dim
    for h in widths:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


def input_dim(name: str) -> int:
    cfg = MODELS[name]
    return cfg["input_dim"] * cfg.get("seq", 1)


def dataset(name: str, num_samples: int = 256, seed: int = 0) -> torch.utils.data.TensorDataset:
    """Teacher–student regression data for model ``name`` (seeded, independent of the global RNG)."""
    x, y = make_teacher_student(num_samples=num_samples, input_dim=input_dim(name),
                                output_dim=MODELS[name]["output_dim"], seed=seed)
    return torch.utils.data.TensorDataset(x, y)


def task_loss(net: nn.Module, batch: Any) -> torch.Tensor:
    """The user's loss: mean squared error (a per-sample mean, so the union batch's loss is the mean of
    the ranks' losses when their batches are equally large)."""
    x, y = batch
    return nn.functional.mse_loss(net(x), y)


class ShardedTask(L.LightningModule):
    """A user's LightningModule: ``fully_shard`` on every Linear/LayerNorm-carrying submodule and the root."""

    def __init__(self, model: str = "mlp", optimizer: str = "adamw", lr: float = 0.05, seed: int = 0,
                 shard: bool = True) -> None:
        super().__init__()
        self.net = build_model(model, seed)
        self.optimizer_name, self.lr, self.shard = optimizer, lr, shard

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        if not self.shard:  # the same module trained without a strategy (the single-process reference)
            return
        mesh = self.device_mesh["data_parallel"]
        # Innermost first: a Block then takes the LayerNorm parameters its sharded Linears left.
        for module in reversed(list(self.net.modules())):
            if isinstance(module, (nn.Linear, Block)):
                fully_shard(module, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        loss = nn.functional.mse_loss(out, y)
        # The user's own metrics: one per-rank, one synchronised (an all-reduce of its own).
        self.log("train_loss", loss)
        self.log("train_abs", (out - y).abs().mean().detach(), sync_dist=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-3)
        return torch.optim.AdamW(self.parameters(), lr=self.lr * 0.1, weight_decay=1e-2)


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to its full value (a collective: every rank calls it); a plain tensor cloned."""
    full_tensor = getattr(t, "full_tensor", None)
    return (full_tensor() if callable(full_tensor) else t).detach().clone()


def gathered_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: full(p) for name, p in module.named_parameters()}


def gathered_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """Per parameter name, every state entry gathered (exp_avg, exp_avg_sq, momentum_buffer, step)."""
    out = {}
    for name, p in module.named_parameters():
        state = optimizer.state.get(p, {})
        out[name] = {k: full(v) if isinstance(v, torch.Tensor) else v for k, v in sorted(state.items())}
    out["__param_groups__"] = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return out


def rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call (the user's ``self.log`` values and the monitor's tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((int(step or 0), {k: float(v) for k, v in metrics.items()}))


class Recorder(L.Callback):
    """Saves, per rank, into ``out_dir``: the first batch (the monitor's fixed probe batch), the gathered
    weights, gradients, optimizer state and the monitor's values after step ``at_step``, and at the end the gathered weights, optimizer
    state, RNG states, the user's logged metrics and the per-step ``callback_metrics`` of the user's tags."""

    def __init__(self, out_dir: str, at_step: int = 1) -> None:
        self.out = Path(out_dir)
        self.at_step = at_step
        self.user_metrics: list[dict[str, float]] = []

    def _path(self, trainer: Any, name: str) -> Path:
        return self.out / f"{name}_rank{trainer.global_rank}.pt"

    @staticmethod
    def _monitor(trainer: Any) -> Any:
        return next((cb for cb in trainer.callbacks if type(cb).__name__ == "LandscapeMonitor"), None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and batch_idx == 0:
            torch.save([t.detach().cpu().clone() for t in batch], self._path(trainer, "batch"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.user_metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()
                                  if not k.startswith("landscape/")})
        if trainer.global_step == self.at_step and not self._path(trainer, "weights_at").exists():
            torch.save(gathered_weights(pl_module.net), self._path(trainer, "weights_at"))
            torch.save(gathered_optimizer_state(pl_module.net, trainer.optimizers[0]), self._path(trainer, "optimizer_at"))
            # The step's gradients as the user's hooks after ours see them (a measurement must put them back).
            torch.save({n: None if p.grad is None else full(p.grad) for n, p in pl_module.net.named_parameters()},
                       self._path(trainer, "grads_at"))
            monitor = self._monitor(trainer)
            if monitor is not None:
                torch.save(dict(monitor.last_values), self._path(trainer, "values_at"))

    def on_train_end(self, trainer, pl_module):
        logged = [
            (step, {k: v for k, v in m.items() if not k.startswith("landscape/")})
            for lg in trainer.loggers if isinstance(lg, RecordingLogger) for step, m in lg.calls
        ]
        monitor = self._monitor(trainer)
        torch.save({
            "weights": gathered_weights(pl_module.net),
            "optimizer": gathered_optimizer_state(pl_module.net, trainer.optimizers[0]),
            "rng": rng_states(),
            "logged": [entry for entry in logged if entry[1]],
            "callback_metrics": self.user_metrics,
            "monitor": None if monitor is None else {
                "last_values": dict(monitor.last_values),
                "measurements": monitor.num_measurements,
                "enabled": bool(monitor._enabled),
                "disabled_probes": sorted(monitor._disabled_probes),
                "failures": dict(monitor._failures),
                "not_measured": dict(monitor.not_measured),
            },
        }, self._path(trainer, "final"))


def instrument_peaks(probes: list[Any], meter: Callable[[Callable[[], object]], int], record: dict[str, list[int]],
                     steps: set[int]) -> None:
    """Wrap each probe's ``run`` so that its peak RSS (``meter``) is recorded at the measured ``steps``."""
    for probe in probes:
        original = probe.run

        def run(ctx, original=original, name=probe.name):
            if ctx.step not in steps:
                return original(ctx)
            out: list[Any] = []
            record.setdefault(name, []).append(meter(lambda: out.append(original(ctx))))
            return out[0]

        probe.run = run


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def load_run(out: Path, rank: int = 0) -> dict[str, Any]:
    """The records of one rank of a run (see :class:`Recorder`)."""
    out = Path(out)
    records: dict[str, Any] = {}
    for name in ("batch", "weights_at", "optimizer_at", "grads_at", "values_at", "final"):
        path = out / f"{name}_rank{rank}.pt"
        if path.exists():
            records[name] = torch.load(path, weights_only=False)
    return records


def union_batch(out: Path, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's probe batch concatenated: the batch a single process measures."""
    batches = [torch.load(Path(out) / f"batch_rank{r}.pt") for r in range(world)]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


class Holder(nn.Module):
    """``ShardedTask``'s layout without Lightning: parameter names ``net.*`` as in the run's tags."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def reference_model(model: str, weights: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Holder:
    """The plain model ``model`` holding the gathered ``weights`` (named as in the run: ``net.*``)."""
    net = build_model(model).to(dtype)
    net.load_state_dict({k: v.to(dtype) for k, v in weights.items()})
    return Holder(net)


def reference_optimizer(net: nn.Module, state: dict[str, Any], kind: str) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer over ``net`` holding the gathered optimizer ``state``."""
    groups = state["__param_groups__"]
    opt_cls = torch.optim.SGD if kind == "sgd" else torch.optim.AdamW
    opt = opt_cls(net.parameters(), **{k: v for k, v in groups[0].items() if k in _OPT_KEYS[kind]})
    names = [n for n, _ in net.named_parameters()]
    opt.load_state_dict({
        "state": {i: state[n] for i, n in enumerate(names) if state[n]},
        "param_groups": [{**g, "params": list(range(len(names)))} for g in groups],
    })
    return opt


_OPT_KEYS = {"sgd": ("lr", "momentum", "weight_decay"), "adamw": ("lr", "betas", "eps", "weight_decay")}


def reference_values(net: nn.Module, batch: Any, probes: list[Any], step: int,
                     optimizer: torch.optim.Optimizer | None = None, seed: int = 0) -> dict[str, float]:
    """What the library measures in one process on ``batch`` (its exact path: ``ProbeContext`` on a plain
    module), as full tags ``landscape/<group>/<key>``."""
    from lightning_landscape.guards import probe_guard
    from lightning_landscape.optim_info import describe_optimizer
    from lightning_landscape.probes import ProbeContext, order_probes

    values: dict[str, float] = {}
    with probe_guard(net):
        ctx = ProbeContext(net, lambda: task_loss(net, batch), step, optimizer=optimizer,
                           optimizer_info=describe_optimizer(optimizer), seed=seed, batch=batch)
        for probe in order_probes(probes):
            values.update({f"landscape/{probe.group}/{k}": v for k, v in probe.run(ctx).scalars.items()})
        ctx.release()
    return values
