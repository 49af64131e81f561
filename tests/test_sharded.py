"""Sharded parameters (FSDP2): the finite-difference Hessian-vector product and a real 2-process measurement.

The 2-process run uses ``torch.multiprocessing`` and gloo directly (no Lightning, seconds); the
Lightning ``ModelParallelStrategy`` runs are in tests/test_fsdp.py. References: the exact Hessian of the
union batch (``torch.autograd.functional.hessian`` on an unsharded copy), and the gradient by autograd.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sharded_worker as W
from lightning_landscape.hessian import FiniteDifferenceHessianOperator, HessianOperator
from lightning_landscape.parameters import ParameterSpace


def _mlp_problem(dtype: torch.dtype):
    net, (x, y) = W.model(dtype), W.data(dtype)

    def loss() -> torch.Tensor:
        return ((net(x) - y) ** 2).mean()

    return net, loss


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-7), (torch.float32, 2e-3)])
def test_central_difference_product_matches_the_exact_one(dtype, tol) -> None:
    """Against the double-backward product on random directions; its error estimate covers the error.

    A forward difference (error ∝ h: ≈ 5e-3 relative in float32, 5e-6 in float64) or a step not scaled by
    |v| fails the tolerance; the estimate must not understate the actual error."""
    net, loss = _mlp_problem(dtype)
    space = ParameterSpace.from_module(net)
    exact = HessianOperator(loss(), space)
    g = torch.Generator().manual_seed(0)
    vectors = [scale * torch.randn(space.dim, generator=g, dtype=space.dtype) for scale in (1.0, 1e-3, 50.0)]
    wanted = [exact.matvec(v) for v in vectors]  # before the weights move (the graph saved them)
    fd = FiniteDifferenceHessianOperator(loss, space)
    assert torch.allclose(fd.gradient, exact.gradient, rtol=0, atol=10 * torch.finfo(dtype).eps)
    before = [p.detach().clone() for p in net.parameters()]
    for v, want in zip(vectors, wanted):  # the product is linear in v: the step follows |v|
        got = fd.matvec(v)
        err = float((got - want).norm() / want.norm())
        assert err < tol, err
        assert fd.error_estimate is not None and err <= 4 * fd.error_estimate + 10 * torch.finfo(dtype).eps
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))  # restored bit-exactly
    assert fd.num_gradients == 1 + 2 * 3 + 2  # the first product also takes the 2h estimate


def test_zero_vector_costs_nothing() -> None:
    net, loss = _mlp_problem(torch.float64)
    fd = FiniteDifferenceHessianOperator(loss, ParameterSpace.from_module(net))
    assert torch.equal(fd.matvec(torch.zeros(fd.dim, dtype=fd.dtype)), torch.zeros(fd.dim, dtype=fd.dtype))
    assert fd.num_gradients == 1


@pytest.fixture(scope="module", params=[False, True], ids=["every-linear-wrapped", "root-owns-the-head"])
def two_process(request, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sharded")
    torch.multiprocessing.spawn(W.worker, args=(str(out), "float64", request.param), nprocs=2)
    return torch.load(out / "result.pt", weights_only=False)


def _reference():
    net, loss = _mlp_problem(torch.float64)
    params = list(net.parameters())
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def flat_loss(theta: torch.Tensor) -> torch.Tensor:
        parts, start = [], 0
        for s in shapes:
            n = int(torch.tensor(s).prod())
            parts.append(theta[start:start + n].reshape(s))
            start += n
        names = [n for n, _ in net.named_parameters()]
        out = torch.func.functional_call(net, dict(zip(names, parts)), (W.data(torch.float64)[0],))
        return ((out - W.data(torch.float64)[1]) ** 2).mean()

    hess = torch.autograd.functional.hessian(flat_loss, flat)
    grad = torch.autograd.grad(loss(), params)
    return hess, grad


def test_two_processes_measure_the_union_batch_hessian(two_process) -> None:
    hess, grad = _reference()
    evals = torch.linalg.eigvalsh(hess)
    v = two_process["values"]
    assert two_process["global_dim"] == hess.shape[0]
    assert v["hessian_spectrum/lambda_max"] == pytest.approx(float(evals[-1]), rel=1e-3)
    assert v["hessian_spectrum/lambda_min"] == pytest.approx(float(evals[0]), rel=1e-3)
    # Hutch++ on the 267-dim Hessian: within 4 standard errors of the exact trace (a per-shard pattern
    # repeated on both shards would bias it; a wrong dim scale would be off by ×2)
    trace, se = v["hessian_trace/trace"], v["hessian_trace/trace_stderr"]
    assert abs(trace - float(torch.trace(hess))) <= 4 * se + 1e-6 * abs(trace)
    assert v["hvp_error"] is not None and v["hvp_error"] < 1e-6


def test_two_processes_gradient_shards_form_the_union_gradient(two_process) -> None:
    """Each process's flat gradient is its shard of the union-batch gradient (FSDP2 averages)."""
    _, grad = _reference()
    shards = sorted(two_process["shards"], key=lambda s: s[0])
    net = W.model(torch.float64)
    pieces: list[list[torch.Tensor]] = [[], []]
    for rank, dim, flat in shards:
        assert flat.numel() == dim
    for (rank0, _, flat0), (rank1, _, flat1) in [(shards[0], shards[1])]:
        offsets = [0, 0]
        for g in grad:
            rows = g.shape[0]
            first = (rows + 1) // 2  # torch.chunk: the first shard takes the larger half
            n0, n1 = first * g[0].numel(), (rows - first) * g[0].numel()
            pieces[0].append(flat0[offsets[0]:offsets[0] + n0])
            pieces[1].append(flat1[offsets[1]:offsets[1] + n1])
            offsets[0] += n0
            offsets[1] += n1
            whole = torch.cat([pieces[0][-1], pieces[1][-1]]).reshape(g.shape)
            assert torch.allclose(whole, g, rtol=1e-10, atol=1e-12)
    del net


def test_two_processes_change_nothing(two_process) -> None:
    """Weights, gradients and RNG as before; the next forward runs on the restored weights (a gathered copy
    left from a probe's perturbed forward pass would make it differ)."""
    before, after = two_process["before"], two_process["after"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert two_process["grads_same"] and two_process["rng_same"]
    net = W.model(torch.float64)
    with torch.no_grad():
        assert torch.allclose(two_process["outputs"], net(W.data(torch.float64)[0]), rtol=1e-12, atol=1e-12)


def test_two_processes_forward_only_values_match_one_process(two_process) -> None:
    """Sharpness, the L2 ray and weight norms are deterministic: they equal the unsharded measurement."""
    import lightning_landscape.probes as P
    from lightning_landscape import ProbeContext
    from lightning_landscape.guards import probe_guard

    net, loss = _mlp_problem(torch.float64)
    ctx = ProbeContext(net, loss, step=1)
    want = {}
    with probe_guard(net):
        for probe in (P.Sharpness(), P.L2Transition(), P.WeightDynamics()):
            want.update({f"{probe.name}/{k}": val for k, val in probe.run(ctx).scalars.items()})
    got = two_process["values"]
    for key in ("sharpness/sharpness", "sharpness/gradient_norm", "l2_transition/critical_beta",
                "l2_transition/theta_sq", "l2_transition/loss_trivial", "weight_dynamics/total/norm"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


class _Mesh:
    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    def __getitem__(self, name: str) -> "_Mesh":
        return _Mesh({"": self.sizes[name]})

    def size(self) -> int:
        return self.sizes[""]


@pytest.mark.parametrize("flavour", ["lightning.pytorch", "pytorch_lightning"])
def test_tensor_parallel_layouts_are_refused_with_the_supported_one_named(flavour) -> None:
    import importlib

    from lightning_landscape.callbacks.monitor import _strategy_refusal

    strategies = importlib.import_module(f"{flavour}.strategies")
    tp = strategies.ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    tp._device_mesh = _Mesh({"data_parallel": 1, "tensor_parallel": 2})
    why = _strategy_refusal(tp)
    assert why is not None and "tensor_parallel_size=2" in why and "tensor_parallel_size=1" in why
    dp = strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    dp._device_mesh = _Mesh({"data_parallel": 2, "tensor_parallel": 1})
    assert _strategy_refusal(dp) is None
    assert _strategy_refusal(strategies.DDPStrategy()) is None


def test_two_processes_adamw_decay_coefficient_sums_every_shard(two_process) -> None:
    """``wd/2·Σ(√v̂+ε)θ²/Σθ²`` of AdamW over the whole model after one step on the union batch (one shard's
    own sums are 4 % off here)."""
    from lightning_landscape.l2.convention import group_decays

    net, loss = _mlp_problem(torch.float64)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    loss().backward()
    opt.step()
    assert two_process["values"]["adamw_beta"] == pytest.approx(group_decays(opt)[0].beta, rel=1e-9)


def test_relu_kinks_show_in_the_error_estimate() -> None:
    """A ReLU net's gradient jumps where units change sign within the step: the central difference is then
    far from the (almost-everywhere) autograd product, and the estimate says so (the monitor warns above 0.05)."""
    from lightning_landscape.callbacks.monitor import HVP_ERROR_WARN

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(net(x), y)

    space = ParameterSpace.from_module(net)
    v = torch.randn(space.dim, generator=torch.Generator().manual_seed(0))
    want = HessianOperator(loss(), space).matvec(v)
    fd = FiniteDifferenceHessianOperator(loss, space)
    err = float((fd.matvec(v) - want).norm() / want.norm())
    assert err > HVP_ERROR_WARN and fd.error_estimate > HVP_ERROR_WARN
