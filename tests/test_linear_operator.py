"""The ``LinearOperator`` protocol: estimators take an operator (dim/dtype/device from it) or a bare callable."""

from __future__ import annotations

import pytest
import torch

from lightning_landscape.geometry.estimators import estimate_geometry, krylov_sketch
from lightning_landscape.hessian import ChunkedHessianOperator, HessianOperator
from lightning_landscape.linalg import (
    CallableOperator,
    LinearOperator,
    MatrixOperator,
    extreme_eigenvalues,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_extremes,
    lanczos_tridiagonal,
    spectral_density,
)
from lightning_landscape.parameters import ParameterSpace

D64 = torch.float64


def _matrix(n: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D64))[0]
    lam = torch.cat([torch.tensor([9.0, -4.0], dtype=D64), torch.linspace(-1.0, 2.0, n - 2, dtype=D64)])
    return U @ torch.diag(lam) @ U.T


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hessian_operators_satisfy_the_protocol() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0], dtype=D64))
    space = ParameterSpace([w])
    for op in (HessianOperator((w**3).sum(), space), ChunkedHessianOperator([(1.0, lambda: (w**3).sum())], space)):
        assert isinstance(op, LinearOperator)
        assert (op.dim, op.dtype, op.device) == (3, D64, torch.device("cpu"))
    assert not isinstance(lambda v: v, LinearOperator)


def test_operator_and_callable_forms_agree_bit_for_bit() -> None:
    """Same seeds, same numbers: the operator form only supplies dim/dtype/device."""
    A = _matrix()
    n = A.shape[0]
    op, f = MatrixOperator(A), (lambda v: A @ v)
    v0 = torch.ones(n, dtype=D64)
    pairs = [
        (hutchinson_trace(op, num_samples=7, generator=_gen(1)), hutchinson_trace(f, n, 7, _gen(1), D64)),
        (hutchpp_trace(op, num_matvecs=15, generator=_gen(2)), hutchpp_trace(f, n, 15, _gen(2), D64)),
    ]
    for a, b in pairs:
        assert (a.value, a.stderr, a.num_matvecs) == (b.value, b.stderr, b.num_matvecs)
    d_op = spectral_density(op, num_probes=2, num_steps=10, generator=_gen(3))
    d_fn = spectral_density(f, n, 2, 10, _gen(3), D64)
    assert torch.equal(d_op.nodes, d_fn.nodes) and torch.equal(d_op.weights, d_fn.weights)
    assert lanczos_extremes(op, v0.clone(), max_iter=30, tol=1e-10).lambda_max == \
        lanczos_extremes(f, v0.clone(), max_iter=30, tol=1e-10).lambda_max
    assert extreme_eigenvalues(op, v0.clone(), 30, 1e-10) == extreme_eigenvalues(f, v0.clone(), 30, 1e-10)
    assert torch.equal(lanczos_tridiagonal(op, v0, 8)[0], lanczos_tridiagonal(f, v0, 8)[0])
    s_op, s_fn = krylov_sketch(op, num_steps=6, generator=_gen(4)), krylov_sketch(f, n, 6, _gen(4), D64)
    assert (s_op.trace, s_op.frobenius_sq) == (s_fn.trace, s_fn.frobenius_sq)
    g = 0.1 * torch.ones(n, dtype=D64)
    assert estimate_geometry(op, g, 4, _gen(5)).trace == estimate_geometry(f, g, 4, _gen(5)).trace


def test_operator_supplies_its_dtype() -> None:
    """A float64 operator gets float64 probes (a float32 default would fail in ``A @ v``) and exact answers."""
    A = _matrix(12)
    op = MatrixOperator(A)
    est = hutchpp_trace(op, num_matvecs=24, generator=_gen(0))  # sketch spans the space: exact
    assert est.value == pytest.approx(float(torch.trace(A)), rel=1e-12)
    lam = torch.linalg.eigvalsh(A)
    lmax, lmin = extreme_eigenvalues(CallableOperator(lambda v: A @ v, 12, D64), torch.ones(12, dtype=D64), 12, 1e-12)
    assert (lmax, lmin) == (pytest.approx(float(lam[-1]), rel=1e-10), pytest.approx(float(lam[0]), rel=1e-10))


def test_hessian_operator_spectrum_is_the_exact_one() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1)).double()
    x = torch.randn(8, 3, dtype=D64)
    space = ParameterSpace(list(net.parameters()))
    op = HessianOperator(net(x).pow(2).mean(), space)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, p in net.named_parameters():
            params[name] = flat[i:i + p.numel()].view_as(p)
            i += p.numel()
        return torch.func.functional_call(net, params, (x,)).pow(2).mean()

    H = torch.autograd.functional.hessian(loss, torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    lam = torch.linalg.eigvalsh(H)
    r = lanczos_extremes(op, torch.ones(op.dim, dtype=op.dtype), max_iter=op.dim, tol=1e-12)
    assert (r.lambda_max, r.lambda_min) == (pytest.approx(float(lam[-1]), rel=1e-9), pytest.approx(float(lam[0]), rel=1e-9))
    est = hutchpp_trace(op, num_matvecs=3 * op.dim, generator=_gen(0), sketch="random")  # Q spans: exact
    assert est.value == pytest.approx(float(torch.trace(H)), rel=1e-9)


def test_bad_arguments_are_named() -> None:
    A = _matrix(5)
    with pytest.raises(ValueError, match="dim=4 disagrees"):
        hutchinson_trace(MatrixOperator(A), 4, 3, _gen(0))
    with pytest.raises(ValueError, match="dtype"):
        spectral_density(MatrixOperator(A), num_probes=1, num_steps=2, generator=_gen(0), dtype=torch.float32)
    with pytest.raises(TypeError, match="dim is required"):
        hutchinson_trace(lambda v: A @ v, num_samples=3, generator=_gen(0))
    with pytest.raises(TypeError, match="num_samples"):
        hutchinson_trace(MatrixOperator(A), generator=_gen(0))
    with pytest.raises(TypeError, match="generator"):
        krylov_sketch(MatrixOperator(A), num_steps=2)
    with pytest.raises(TypeError, match="LinearOperator or a matvec"):
        lanczos_extremes(A, torch.ones(5, dtype=D64))
    with pytest.raises(ValueError, match="square"):
        MatrixOperator(torch.ones(2, 3))
