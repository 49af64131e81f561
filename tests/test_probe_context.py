"""What probes share at one step (typed ``ctx.shared``) and the order their declarations imply."""

from __future__ import annotations

import pytest
import torch

from lightning_landscape.probes import (
    PROBES,
    ChannelDetector,
    HessianSpectrum,
    HessianTrace,
    LossSurfaceGeometry,
    Probe,
    ProbeContext,
    ProbeResult,
    SaddleBranches,
    order_probes,
)


class _Provider(Probe):
    """Publishes λmax without touching the Hessian (so a sort on ``needs_hessian`` alone runs it last)."""

    name = "test_shared_provider"
    provides = ("lambda_max",)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        ctx.shared.lambda_max = 7.0
        return ProbeResult()


class _Consumer(Probe):
    name = "test_shared_consumer"
    needs_hessian = True
    needs = ("lambda_max",)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        return ProbeResult(scalars={"seen": ctx.shared.lambda_max})


for _cls in (_Provider, _Consumer):
    PROBES.pop(_cls.name)  # test doubles: keep them out of the registry other tests walk


def _names(probes: list[Probe]) -> list[str]:
    return [p.name for p in probes]


def test_providers_run_before_the_probes_that_need_them() -> None:
    # The consumer needs the Hessian, the provider does not: only the declaration puts the provider first.
    assert _names(order_probes([_Consumer(), HessianTrace(), _Provider()])) == [
        "hessian_trace", "test_shared_provider", "test_shared_consumer"]
    # The spectrum runs before the neuron and geometry probes wherever it is listed; others keep their order.
    order = _names(order_probes([ChannelDetector(), SaddleBranches(), LossSurfaceGeometry(), HessianTrace(),
                                 HessianSpectrum()]))
    assert order == ["hessian_trace", "hessian_spectrum", "saddle_branches", "loss_geometry", "channels"]


def test_order_keeps_hessian_probes_first_and_the_given_order_otherwise() -> None:
    assert _names(order_probes([HessianTrace(), HessianSpectrum()])) == ["hessian_trace", "hessian_spectrum"]
    assert _names(order_probes([ChannelDetector(), HessianTrace()])) == ["hessian_trace", "channels"]


def test_undeclared_shared_field_is_rejected_at_class_creation() -> None:
    with pytest.raises(TypeError, match="lambda_maxx"):
        class _Typo(Probe):
            needs = ("lambda_maxx",)

            def run(self, ctx):
                return ProbeResult()


def test_shared_values_are_typed_fields_and_extras_is_a_view_of_them() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
    assert ctx.shared.lambda_max is None and dict(ctx.extras) == {}
    # SaddleBranches listed first still reuses the spectrum's values: the order comes from the declarations.
    saddle, spectrum = SaddleBranches(grad_tol=1e9), HessianSpectrum(max_iter=40, tol=1e-10)
    for probe in order_probes([saddle, spectrum]):
        probe.run(ctx)
    # the independent truth: eigenvalues of the exact Hessian
    params = [p for p in net.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        out, i = [], 0
        for p in params:
            out.append(theta[i:i + p.numel()].view_as(p))
            i += p.numel()
        h = torch.tanh(x @ out[0].T + out[1])
        return ((h @ out[2].T + out[3] - y) ** 2).mean()

    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))
    assert ctx.shared.lambda_max == pytest.approx(float(eig[-1]), rel=1e-8)
    assert ctx.shared.lambda_min == pytest.approx(float(eig[0]), rel=1e-6, abs=1e-9)
    assert ctx.num_matvecs <= 40  # one Lanczos run: SaddleBranches ran none of its own
    top = ctx.shared.hessian_top_vector
    assert top is not None and float(top @ top) == pytest.approx(1.0)
    assert ctx.extras["lambda_max"] == ctx.shared.lambda_max and set(ctx.extras) == {
        "lambda_max", "lambda_min", "hessian_top_vector"}
    with pytest.raises(KeyError, match="not a shared value"):
        ctx.extras["trace"] = 1.0
