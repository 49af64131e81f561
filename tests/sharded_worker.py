"""A 2-process FSDP2 (``fully_shard``) measurement without Lightning, for tests/test_sharded.py.

Spawned by ``torch.multiprocessing`` (importable by the workers, so not inside the test module). Each
process holds half of a teacher–student batch and its shards of an MLP; it measures with the library's
probes exactly as the monitor does (``ShardedParameterSpace``, ``sharded_reduction``, ``probe_guard``)
and rank 0 saves the values, the gathered weights before and after, and the union batch.
"""

from __future__ import annotations

import os

import torch
from torch import nn

DIMS = (6, 12, 12, 3)  # 267 parameters: the dense reference Hessian is cheap; rows split 6/6 and 2/1
BATCH = 16  # per process


def model(dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(DIMS[:-1], DIMS[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(DIMS) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).to(dtype)


def data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * BATCH, DIMS[0], generator=g, dtype=dtype)
    teacher = torch.randn(DIMS[0], DIMS[-1], generator=g, dtype=dtype)
    return x, torch.tanh(x @ teacher)


def worker(rank: int, out: str, dtype_name: str, root_owned: bool = False) -> None:
    """``root_owned``: the last Linear is not wrapped itself, so the root module owns its parameters (FSDP2
    keeps the root's gathered copy after a forward pass: the case where in-place writes could go stale)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import lightning_landscape.probes as P
    from lightning_landscape import ProbeContext
    from lightning_landscape.guards import probe_guard
    from lightning_landscape.linalg.reduction import sharded_reduction
    from lightning_landscape.sharded import ShardedParameterSpace, writes_resync

    torch.set_num_threads(1)
    # A file store, not a TCP store hosted by rank 0: no free-port race with the parallel suite's other
    # processes, and no store that vanishes when rank 0 exits first (a rank aborted once in CI, under load).
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out, 'store')}", rank=rank, world_size=2)
    try:
        dtype = getattr(torch, dtype_name)
        mesh = init_device_mesh("cpu", (2,))
        net = model(dtype)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        for m in linears[:-1] if root_owned else linears:
            fully_shard(m, mesh=mesh)
        fully_shard(net, mesh=mesh)
        x, y = data(dtype)
        xs, ys = x[rank * BATCH:(rank + 1) * BATCH], y[rank * BATCH:(rank + 1) * BATCH]

        def loss() -> torch.Tensor:
            return ((net(xs) - ys) ** 2).mean()

        # A user's gradients are there (as after a training step) and must come back unchanged.
        loss().backward()
        grads_before = [p.grad.to_local().clone() for p in net.parameters()]
        with torch.no_grad():
            net(xs)  # a forward without backward (validation, say) leaves the root's parameters gathered
        space = ShardedParameterSpace.from_module(net)  # reshards them first
        before = {n: p.detach().full_tensor().clone() for n, p in net.named_parameters()}
        rng = torch.get_rng_state()

        def reduce_mean(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().clone()
            dist.all_reduce(t)
            return t / 2

        probes = [P.HessianSpectrum(tol=1e-7, max_iter=80), P.HessianTrace(num_matvecs=60, rel_tol=None),
                  P.Sharpness(), P.L2Transition(), P.WeightDynamics()]
        values: dict[str, float] = {}
        with probe_guard(net), sharded_reduction(space.all_reduce_sum, space.dim, space.global_dim), \
                writes_resync(space.reshard):
            ctx = ProbeContext(net, loss, step=1, space=space, reduce_mean=reduce_mean)
            for probe in probes:
                values.update({f"{probe.name}/{k}": v for k, v in probe.run(ctx).scalars.items()})
            gradient_shard = ctx.gradient()
            values["hvp_error"] = ctx.hvp_error
            values["hvps"] = ctx.num_matvecs
        space.reshard()  # as the monitor does after a measurement
        with torch.no_grad():
            outputs = net(xs)  # what training would compute next: from the restored shards
        space.reshard()
        all_outputs = [None, None]
        dist.all_gather_object(all_outputs, outputs)
        after = {n: p.detach().full_tensor().clone() for n, p in net.named_parameters()}
        grads_same = all(torch.equal(p.grad.to_local(), g) for p, g in zip(net.parameters(), grads_before))
        flags = torch.tensor([float(grads_same), float(torch.equal(rng, torch.get_rng_state()))])
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        shards = [None, None]
        dist.all_gather_object(shards, (rank, space.dim, gradient_shard))
        # AdamW's decoupled decay as an L2 coefficient sums over every parameter entry: over the shards too.
        from lightning_landscape.l2.convention import group_decays

        opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
        for p in net.parameters():
            p.grad = None
        loss().backward()
        opt.step()
        with sharded_reduction(space.all_reduce_sum, space.dim, space.global_dim):
            values["adamw_beta"] = group_decays(opt)[0].beta
        if rank == 0:
            torch.save({"values": values, "before": before, "after": after, "grads_same": bool(flags[0]),
                        "rng_same": bool(flags[1]), "shards": shards, "global_dim": space.global_dim,
                        "outputs": torch.cat(all_outputs)},
                       os.path.join(out, "result.pt"))
        dist.barrier()  # leave together
    finally:
        dist.destroy_process_group()
