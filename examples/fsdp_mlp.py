"""The loss landscape of a sharded model: FSDP2 through Lightning's ``ModelParallelStrategy`` on 2 CPU processes.

The LightningModule shards its MLP with ``fully_shard`` in ``configure_model`` (every Linear, then the root),
as a model that outgrew one device would; ``LandscapeMonitor`` needs no change. Each process holds half of
every parameter, and so half of every vector a measurement keeps (Lanczos and Hutch++ vectors are shards
whose inner products are summed over the processes); Hessian-vector products are central differences of
the sharded gradients, whose error estimate is logged as ``landscape/hessian/hvp_error``.

    python examples/fsdp_mlp.py               # < 1 min on 2 CPU cores (gloo)
    python examples/fsdp_mlp.py --steps 400

The strategy starts its second process by re-running this script, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, LandscapeMonitor
from lightning_landscape.probes import Sharpness, WeightDynamics
from lightning_landscape.tasks import make_teacher_student


class ShardedMLP(L.LightningModule):
    """A 3-hidden-layer tanh MLP trained with AdamW, sharded by FSDP2 over the data-parallel processes."""

    def __init__(self, input_dim: int = 32, width: int = 128, depth: int = 3, lr: float = 3e-3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = input_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.Tanh()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, 1))
        self.lr = lr

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    x, y = make_teacher_student(num_samples=4096, input_dim=32, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    monitor = LandscapeMonitor(probes=[
        # The default suite, at intervals that suit a short run...
        HessianSpectrum(every_n_steps=25),
        HessianTrace(every_n_steps=50),
        HessianDensity(every_n_steps=75, num_probes=2, num_steps=20),
        # ...and two forward-only probes that perturb the local shards in place and restore them.
        Sharpness(every_n_steps=50),
        WeightDynamics(every_n_steps=25),
    ])
    trainer = L.Trainer(
        accelerator="cpu", devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_steps=args.steps, callbacks=[monitor], logger=L.loggers.CSVLogger("lightning_logs", name="fsdp_mlp"),
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False, log_every_n_steps=25,
    )
    trainer.fit(ShardedMLP(), loader)
    if trainer.is_global_zero:
        summary = monitor.summary()
        print(f"\n{summary['measurements']} measurements, {summary['hvps']} Hessian-vector products, "
              f"overhead {summary['overhead']:.0%} of training time")
        for tag in ("hessian/lambda_max", "hessian/lambda_min", "hessian/eos_ratio", "hessian/trace",
                    "hessian/trace_stderr", "hessian/hvp_error", "flatness/sharpness", "weights/total/norm"):
            value = summary["last_values"].get(f"landscape/{tag}")
            print(f"  {tag:24s} {'not measured' if value is None else f'{value:.5g}'}")
        print(f"CSV log: {trainer.logger.log_dir}/metrics.csv")


if __name__ == "__main__":
    main()
