"""Flatness: filter normalisation, SAM/ASAM sharpness, escape radius and slices against closed forms.

Ground truth is a quadratic loss ``L(w) = ½ Σ a_i (w_i − c_i)²`` (Hessian ``diag(a)``) in float64, where
``L(θ + ε) − L(θ) = gᵀε + ½ εᵀHε`` holds exactly, so the probes' numbers are checked, not just their order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.flatness import (
    asam_perturbation,
    escape_radius,
    filter_normalize,
    filter_normalized_direction,
    sharpness,
    slice_1d,
    slice_2d,
)
from lightning_landscape.flatness.directions import move_to, restored
from lightning_landscape.parameters import ParameterSpace
from lightning_landscape.slice_plots import plot_slice_1d, plot_slice_2d
from lightning_landscape.probes import ProbeContext
from lightning_landscape.probes.flatness import EscapeRadius, LandscapeSlice, Sharpness


class Quadratic(nn.Module):
    """``½ Σ a_i (w_i − c_i)²`` with ``w`` one filter of shape ``(1, n)`` (so filter normalisation scales the
    whole direction to ``|w|``)."""

    def __init__(self, a: torch.Tensor, centre: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a.double().reshape(1, -1))
        self.register_buffer("c", centre.double().reshape(1, -1))
        self.w = nn.Parameter(self.c.clone())

    def loss(self) -> torch.Tensor:
        return 0.5 * (self.a * (self.w - self.c) ** 2).sum()


def _ctx(model: nn.Module, closure, step: int = 3, seed: int = 0) -> ProbeContext:
    return ProbeContext(model, closure, step=step, seed=seed)


def _quadratic(a, centre=None, n: int = 6, seed: int = 0) -> Quadratic:
    g = torch.Generator().manual_seed(seed)
    a = torch.as_tensor(a, dtype=torch.float64).expand(n).clone() if not torch.is_tensor(a) or a.numel() == 1 else a
    centre = 1.0 + torch.rand(n, generator=g, dtype=torch.float64) if centre is None else centre
    return Quadratic(a, centre)


def _small_mlp(dropout: float = 0.0, dtype=torch.float32, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Dropout(dropout), nn.Linear(12, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    net = net.to(dtype)
    x = torch.randn(40, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (40,), generator=g)
    return net, x, y


# ----------------------------------------------------------------------------- filter normalisation
def test_filter_normalisation_matches_row_norms_and_bias_modes():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4))
    with torch.no_grad():
        net[2].weight[1].zero_()  # a dead neuron: its direction must be zero
    space = ParameterSpace.from_module(net)
    theta = space.flatten_params()
    for mode in ("ignore", "filter"):
        d = filter_normalized_direction(space, torch.Generator().manual_seed(1), bias_bn=mode)
        for p, part in zip(space.params, space.unflatten(d)):
            if p.ndim >= 2:
                rows_p = p.detach().reshape(p.shape[0], -1).norm(dim=1)
                rows_d = part.reshape(p.shape[0], -1).norm(dim=1)
                torch.testing.assert_close(rows_d, rows_p, rtol=1e-5, atol=0)
            elif mode == "ignore":
                assert torch.count_nonzero(part) == 0
            else:
                torch.testing.assert_close(part.norm(), p.detach().norm(), rtol=1e-5, atol=0)
    assert torch.count_nonzero(space.unflatten(d)[2][1]) == 0
    with pytest.raises(ValueError, match="bias_bn"):
        filter_normalize(theta, theta, space, "zero")  # type: ignore[arg-type]


def test_directions_come_from_the_generator_only():
    net, _, _ = _small_mlp()
    space = ParameterSpace.from_module(net)
    state = torch.get_rng_state()
    d1 = filter_normalized_direction(space, torch.Generator().manual_seed(5))
    d2 = filter_normalized_direction(space, torch.Generator().manual_seed(5))
    assert torch.equal(d1, d2) and torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- sharpness
def test_sam_sharpness_equals_closed_form_on_quadratic():
    a = torch.tensor([100.0, 30.0, 5.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    model = _quadratic(a)
    offset = torch.tensor([1e-3, -2e-3, 0.01, 0.03, -0.02, 0.05], dtype=torch.float64)
    with torch.no_grad():
        model.w.add_(offset)
    g = a * offset
    space = ParameterSpace.from_module(model)
    loss_fn = lambda: float(model.loss())
    for rho in (0.01, 0.1, 1.0):
        r = sharpness(loss_fn, space, g, rho)
        u = g / g.norm()
        expected = rho * float(g.norm()) + 0.5 * rho**2 * float((a * u * u).sum())
        assert r.sharpness == pytest.approx(expected, rel=1e-10)
        assert r.curvature == pytest.approx(float((a * u * u).sum()), rel=1e-6)


def test_asam_sharpness_equals_closed_form_on_quadratic():
    a = torch.tensor([50.0, 8.0, 2.0, 1.0], dtype=torch.float64)
    centre = torch.tensor([2.0, -0.5, 1e-3, 3.0], dtype=torch.float64)
    model = Quadratic(a, centre)
    offset = torch.tensor([0.02, -0.01, 0.03, 0.01], dtype=torch.float64)
    with torch.no_grad():
        model.w.add_(offset)
    g = a * offset
    theta = model.w.detach().reshape(-1)
    space = ParameterSpace.from_module(model)
    for eta in (0.0, 0.01):
        t = theta.abs() + eta
        eps = 0.5 * t * t * g / (t * g).norm()  # ρ T²g/|Tg|, computed independently of the library
        expected = float(g @ eps + 0.5 * (a * eps * eps).sum())
        torch.testing.assert_close(asam_perturbation(g, theta, 0.5, eta), eps, rtol=1e-12, atol=0)
        r = sharpness(lambda: float(model.loss()), space, g, rho=0.5, adaptive=True, eta=eta)
        assert r.sharpness == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("curvature", [1.0, 100.0])
def test_sharpness_probe_numbers_and_ranking(curvature):
    """Isotropic quadratic λ I near its minimum: SAM sharpness is exactly ρ|g| + ½ρ²λ."""
    model = _quadratic(curvature, n=6)
    offset = torch.full((1, 6), 1e-4, dtype=torch.float64)
    with torch.no_grad():
        model.w.add_(offset)
    rho = 0.05
    out = Sharpness(rho=rho, adaptive=False).run(_ctx(model, model.loss)).scalars
    grad_norm = curvature * float(offset.norm())
    assert out["gradient_norm"] == pytest.approx(grad_norm, rel=1e-10)
    assert out["sharpness"] == pytest.approx(rho * grad_norm + 0.5 * rho**2 * curvature, rel=1e-9)
    assert out["sharpness_curvature"] == pytest.approx(curvature, rel=1e-6)
    # the first-order term is negligible here: sharpness ≈ ρ²λ/2 (the textbook value at a minimum)
    assert out["sharpness"] == pytest.approx(0.5 * rho**2 * curvature, rel=0.02)


def test_sharpness_ranks_sharp_above_flat_minimum_on_anisotropic_quadratic():
    a = torch.tensor([10.0, 4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    results = {}
    for label, scale in (("flat", 1.0), ("sharp", 50.0)):
        model = Quadratic(scale * a, torch.ones(5, dtype=torch.float64))
        with torch.no_grad():
            model.w.add_(1e-5 * torch.arange(1, 6, dtype=torch.float64) / scale)  # same gradient for both
        results[label] = Sharpness(rho=0.05).run(_ctx(model, model.loss)).scalars
    ratio = results["sharp"]["sharpness_curvature"] / results["flat"]["sharpness_curvature"]
    assert ratio == pytest.approx(50.0, rel=1e-6)
    assert results["sharp"]["sharpness"] > 10 * results["flat"]["sharpness"]
    assert results["sharp"]["adaptive_sharpness"] > 10 * results["flat"]["adaptive_sharpness"]


def test_sharpness_uses_the_shared_hessian_gradient_when_built():
    net, x, y = _small_mlp(dtype=torch.float64)
    closure = lambda: nn.functional.cross_entropy(net(x), y)
    fresh = Sharpness(rho=0.1).run(_ctx(net, closure)).scalars
    ctx = _ctx(net, closure)
    ctx.hessian()
    shared = Sharpness(rho=0.1).run(ctx).scalars
    for key in fresh:
        assert shared[key] == pytest.approx(fresh[key], rel=1e-10, abs=1e-14)


def test_asam_is_invariant_to_relu_rescaling_and_sam_is_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = torch.randn(64, 2, generator=g, dtype=torch.float64)

    def build(alpha: float) -> nn.Module:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double()
        with torch.no_grad():  # same function for every α
            net[0].weight.mul_(alpha)
            net[0].bias.mul_(alpha)
            net[2].weight.div_(alpha)
        return net

    out = {}
    for alpha in (1.0, 5.0):
        net = build(alpha)
        probe = Sharpness(rho=0.05, adaptive_rho=0.5, adaptive_eta=0.0)
        s = probe.run(_ctx(net, lambda net=net: nn.functional.mse_loss(net(x), y))).scalars
        e = EscapeRadius(walkers=3, delta=0.05, rel_tol=1e-3).run(_ctx(net, lambda net=net: nn.functional.mse_loss(net(x), y))).scalars
        out[alpha] = (s, e)
    assert out[5.0][0]["adaptive_sharpness"] == pytest.approx(out[1.0][0]["adaptive_sharpness"], rel=1e-8)
    assert out[5.0][1]["escape_radius"] == pytest.approx(out[1.0][1]["escape_radius"], rel=1e-8)
    assert abs(out[5.0][0]["sharpness"] / out[1.0][0]["sharpness"] - 1) > 0.1


# ----------------------------------------------------------------------------- escape radius
def test_escape_radius_along_known_directions_equals_closed_form():
    a = torch.tensor([40.0, 9.0, 1.0, 0.25], dtype=torch.float64)
    model = Quadratic(a, torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=torch.float64))
    space = ParameterSpace.from_module(model)
    directions = [torch.tensor(v, dtype=torch.float64) for v in ([1.0, 0, 0, 0], [0, 0, 0, 2.0], [0.3, -0.2, 0.5, 1.0])]
    delta = 0.2
    r = escape_radius(lambda: float(model.loss()), space, directions, delta, rel_tol=1e-3)
    expected = [math.sqrt(2 * delta / float((a * d * d).sum())) for d in directions]
    np.testing.assert_allclose(r.radii, expected, rtol=1e-3)
    assert r.escaped == [True] * 3 and r.censored_fraction == 0.0
    assert r.forward_passes <= 1 + 3 * 25


@pytest.mark.parametrize("curvature", [1.0, 100.0])
def test_escape_probe_exact_radius_on_isotropic_minimum(curvature):
    """H = λI, one filter w* ⇒ every filter-normalised direction has |d| = |w*|: σ = sqrt(2δ/λ)/|w*|."""
    model = _quadratic(curvature, n=8)
    delta = 0.05
    out = EscapeRadius(walkers=5, delta=delta, rel_tol=0.005).run(_ctx(model, model.loss)).scalars
    expected = math.sqrt(2 * delta / curvature) / float(model.c.norm())
    assert out["escape_radius"] == pytest.approx(expected, rel=0.005)
    assert out["escape_radius_min"] == pytest.approx(expected, rel=0.005)
    assert out["escape_radius_max"] == pytest.approx(expected, rel=0.005)
    assert out["escape_radius_std"] < 0.005 * expected
    assert out["escape_censored"] == 0.0


def test_escape_probe_ranks_sharp_and_flat_minima_by_sqrt_curvature():
    a = torch.tensor([20.0, 5.0, 3.0, 1.0, 0.2, 0.1], dtype=torch.float64)
    centre = torch.tensor([1.0, -1.0, 0.5, 2.0, 1.5, -0.7], dtype=torch.float64)
    probe = EscapeRadius(walkers=6, delta=0.01, rel_tol=0.005)
    flat = Quadratic(a, centre)
    sharp = Quadratic(100 * a, centre)
    r_flat = probe.run(_ctx(flat, flat.loss)).scalars
    r_sharp = probe.run(_ctx(sharp, sharp.loss)).scalars
    # same seed and step ⇒ same directions; H × 100 ⇒ every radius ÷ 10
    assert r_flat["escape_radius"] / r_sharp["escape_radius"] == pytest.approx(10.0, rel=0.01)
    assert r_flat["escape_radius_min"] > r_sharp["escape_radius_max"]
    assert r_flat["escape_radius_std"] > 0  # anisotropic: walkers differ


def test_escape_radius_censoring_and_nonfinite_losses():
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    space = ParameterSpace([w])
    d = [torch.ones(3, dtype=torch.float64)]
    flat = escape_radius(lambda: 1.0, space, d, delta=0.1, sigma_max=2.0)
    assert flat.radii == [2.0] and flat.censored_fraction == 1.0
    blow_up = escape_radius(lambda: 0.0 if float(w.abs().max()) < 0.3 else math.inf, space, d, delta=0.1, rel_tol=1e-3)
    assert blow_up.radii[0] == pytest.approx(0.3, rel=2e-3)
    with pytest.raises(FloatingPointError):
        escape_radius(lambda: math.nan, space, d, delta=0.1)


# ----------------------------------------------------------------------------- no side effects
@pytest.mark.parametrize("probe", [
    Sharpness(rho=0.1),
    EscapeRadius(walkers=2, delta=0.1),
    LandscapeSlice(points_1d=5, points_2d=3),
], ids=lambda p: p.name)
def test_probes_restore_weights_bit_exactly_and_touch_no_rng_or_grad(probe):
    net, x, y = _small_mlp(dropout=0.3)
    net.train()
    closure = lambda: nn.functional.cross_entropy(net(x), y)
    grads = [torch.full_like(p, 0.125) for p in net.parameters()]
    for p, gr in zip(net.parameters(), grads):
        p.grad = gr.clone()
    before = [p.detach().clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    probe.run(_ctx(net, closure))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    assert all(torch.equal(p.grad, gr) for p, gr in zip(net.parameters(), grads))
    assert torch.equal(torch.get_rng_state(), rng)  # even without the monitor's probe_guard


def test_weights_restored_when_the_loss_fails_midway():
    net, x, y = _small_mlp()
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(net(x), y)

    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        EscapeRadius(walkers=2).run(_ctx(net, closure))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_dropout_sees_common_random_numbers_and_results_are_reproducible():
    net, x, y = _small_mlp(dropout=0.5)
    net.train()
    closure = lambda: nn.functional.cross_entropy(net(x), y)
    probe = Sharpness(rho=1e-4, adaptive=False)
    first = probe.run(_ctx(net, closure)).scalars
    second = probe.run(_ctx(net, closure)).scalars
    assert first == second
    # with independent dropout masks the difference would be O(0.1); with common ones it is ~ρ|g|
    assert abs(first["sharpness"]) < 5 * 1e-4 * first["gradient_norm"] + 1e-5


def test_nonfinite_loss_raises_the_context_error():
    from lightning_landscape.probes import NonFiniteLossError

    net, x, _ = _small_mlp()
    with pytest.raises(NonFiniteLossError):
        Sharpness().run(_ctx(net, lambda: net(x).sum() * math.inf))


# ----------------------------------------------------------------------------- slices and images
def test_slices_equal_closed_form_on_quadratic():
    a = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    model = Quadratic(a, torch.ones(3, dtype=torch.float64))
    space = ParameterSpace.from_module(model)
    d1 = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    d2 = torch.tensor([0.0, -1.0, 2.0], dtype=torch.float64)
    alphas = torch.linspace(-1, 1, 5, dtype=torch.float64)
    loss_fn = lambda: float(model.loss())
    exact_1d = 0.5 * alphas**2 * float((a * d1 * d1).sum())
    torch.testing.assert_close(slice_1d(loss_fn, space, d1, alphas), exact_1d, rtol=1e-12, atol=1e-15)
    grid = slice_2d(loss_fn, space, d1, d2, alphas, alphas[:3])
    for i, b in enumerate(alphas[:3]):
        for j, al in enumerate(alphas):
            v = al * d1 + b * d2
            assert float(grid[i, j]) == pytest.approx(0.5 * float((a * v * v).sum()), rel=1e-12, abs=1e-15)


def _not_blank(img: np.ndarray) -> None:
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, lines, colour map
    assert img.std() > 10
    assert (img < 250).any(axis=2).mean() > 0.02  # a few percent of the pixels are ink


def test_landscape_slice_probe_images():
    net, x, y = _small_mlp()
    ctx = _ctx(net, lambda: nn.functional.cross_entropy(net(x), y), step=1200)
    r = LandscapeSlice(points_1d=7, points_2d=5, dpi=80).run(ctx)
    assert set(r.images) == {"slice_1d", "slice_2d"}
    for img in r.images.values():
        assert img.shape == (384, 512, 3)
        _not_blank(img)
    assert r.scalars["slice_descent"] >= 0.0
    only_1d = LandscapeSlice(mode="1d", points_1d=5).run(ctx)
    assert set(only_1d.images) == {"slice_1d"} and only_1d.images["slice_1d"].shape == (480, 640, 3)


def test_plot_2d_has_a_colour_bar_and_differs_from_another_landscape():
    a = np.linspace(-1, 1, 9)
    bowl = plot_slice_2d(a, a, a[None, :] ** 2 + a[:, None] ** 2, step=3)
    ridge = plot_slice_2d(a, a, np.abs(a[None, :]) + 0 * a[:, None], step=3)
    _not_blank(bowl)
    assert np.mean(bowl != ridge) > 0.05
    # the colour bar: a column strip right of the axes holding the colour map's many colours
    strip = bowl[100:380, 540:570].reshape(-1, 3)
    assert len(np.unique(strip, axis=0)) > 10
    flat = plot_slice_2d(a, a, np.ones((9, 9)))  # constant loss must still render
    _not_blank(flat)
    with pytest.raises(ValueError, match="shape"):
        plot_slice_2d(a, a[:3], np.ones((9, 9)))
    _not_blank(plot_slice_1d(a, np.where(a > 0.5, np.inf, a**2), step=1))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("build, match", [
    (lambda: Sharpness(rho=0.0), "Sharpness.rho"),
    (lambda: Sharpness(adaptive="yes"), "Sharpness.adaptive"),
    (lambda: Sharpness(adaptive_eta=-1.0), "Sharpness.adaptive_eta"),
    (lambda: EscapeRadius(walkers=0), "EscapeRadius.walkers"),
    (lambda: EscapeRadius(delta=-0.1), "EscapeRadius.delta"),
    (lambda: EscapeRadius(delta_mode="percent"), "EscapeRadius.delta_mode"),
    (lambda: EscapeRadius(sigma_min=1.0, sigma_max=0.5), "EscapeRadius.sigma_max"),
    (lambda: EscapeRadius(growth=1.0), "EscapeRadius.growth"),
    (lambda: EscapeRadius(bias_bn="zero"), "EscapeRadius.bias_bn"),
    (lambda: LandscapeSlice(mode="3d"), "LandscapeSlice.mode"),
    (lambda: LandscapeSlice(points_2d=2), "LandscapeSlice.points_2d"),
    (lambda: LandscapeSlice(span=float("inf")), "LandscapeSlice.span"),
    (lambda: LandscapeSlice(every_n_steps=0), "every_n_steps"),
])
def test_bad_arguments_name_themselves(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_relative_delta_and_registry():
    from lightning_landscape.probes.base import PROBES

    assert {"sharpness", "escape_radius", "landscape_slice"} <= set(PROBES)
    model = _quadratic(4.0, n=4)
    with torch.no_grad():
        model.w.add_(0.1)  # L(θ) = ½·4·4·0.01 = 0.08
    out = EscapeRadius(walkers=2, delta=0.5, delta_mode="relative").run(_ctx(model, model.loss)).scalars
    assert out["escape_censored"] == 0.0 and out["escape_radius"] > 0


# ----------------------------------------------------------------------------- end to end
def test_monitor_logs_flatness_scalars_and_images(tmp_path):
    import lightning.pytorch as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_landscape.callbacks import LandscapeMonitor
    from lightning_landscape.tasks import MLPTask, make_teacher_student

    x, y = make_teacher_student(num_samples=64, input_dim=4, classes=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    monitor = LandscapeMonitor(
        probes=[Sharpness(every_n_steps=2), EscapeRadius(every_n_steps=2, walkers=2),
                LandscapeSlice(every_n_steps=4, points_1d=5, points_2d=3, dpi=50)],
        on_error="raise",
    )
    model = MLPTask(input_dim=4, hidden=(8,), output_dim=3, loss="cross_entropy", dropout=0.2)
    trainer = L.Trainer(max_steps=4, callbacks=[monitor], logger=TensorBoardLogger(tmp_path, name="tb"),
                        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(model, loader)
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for key in ("sharpness", "adaptive_sharpness", "escape_radius", "escape_radius_std", "slice_descent"):
        assert f"landscape/flatness/{key}" in scalars
    assert {"landscape/flatness/slice_1d", "landscape/flatness/slice_2d"} <= set(acc.Tags()["images"])


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float32), (torch.float32, torch.float64), (torch.float16,)])
def test_restored_is_bit_exact_for_mixed_dtypes(dtypes) -> None:
    """One flat copy restores parameters it holds exactly (bf16/fp16 in fp32); a float64 parameter behind a
    float32 first one (flat dtype float32) is restored from its own clone, not from the rounded flat copy."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=torch.float64).to(d)) for d in dtypes]
    for p in params:  # values a float32 round trip would change when p is float64
        with torch.no_grad():
            p.add_(1e-12 if p.dtype == torch.float64 else 0.0)
    space = ParameterSpace(params)
    before = [p.detach().clone() for p in params]
    d = torch.randn(space.dim, generator=gen, dtype=space.dtype)
    with restored(space) as theta:
        move_to(space, theta, (0.3, d))
        assert not all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(p, b) and p.dtype == b.dtype for p, b in zip(params, before))


def test_move_to_matches_the_flat_sum() -> None:
    """θ + a·d1 + b·d2 formed in place equals the flat sum (to one rounding: the in-place form may fuse)."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))
    space = ParameterSpace.from_module(net)
    gen = torch.Generator().manual_seed(1)
    theta = space.flatten_params()
    d1, d2 = (torch.randn(space.dim, generator=gen) for _ in range(2))
    move_to(space, theta, (0.5, d1), (-2.0, d2))
    torch.testing.assert_close(space.flatten_params(), theta + 0.5 * d1 - 2.0 * d2, rtol=1e-6, atol=1e-6)


def test_dot64_is_float64_exact_beyond_one_chunk() -> None:
    """Chunked float64 products: the same value as the float64 dot of float64 copies (a float32 dot is off)."""
    from lightning_landscape.linalg.dot import CHUNK, dot64
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3 * CHUNK + 17, generator=gen) * 1e3
    b = a + torch.randn(a.numel(), generator=gen) * 1e-3
    exact = float(torch.dot(a.double(), b.double()))
    assert dot64(a, b) == pytest.approx(exact, rel=1e-14)
    assert abs(float(torch.dot(a, b)) - exact) > 1e-14 * abs(exact)  # what float32 accumulation would give
