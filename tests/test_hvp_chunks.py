"""Memory-light Hessian products (``hvp_chunks``): same Hessian, no graph kept between products."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import nn

from exact import exact_hessian
from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianSpectrum, LandscapeMonitor
from lightning_landscape.callbacks.probe_batch import split_batch
from lightning_landscape.hessian import ChunkedHessianOperator, HessianOperator
from lightning_landscape.linalg import lanczos_extremes
from lightning_landscape.parameters import ParameterSpace
from lightning_landscape.probes import ProbeContext
from test_purity import _assert_identical, _run


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double()


def _data(n: int = 23):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _chunks(net: nn.Module, x: torch.Tensor, y: torch.Tensor, parts: int):
    def loss(batch):
        return nn.functional.cross_entropy(net(batch[0]), batch[1])

    return [(w, lambda b=b: loss(b)) for w, b in split_batch((x, y), parts)], lambda: loss((x, y))


@pytest.mark.parametrize("parts", [2, 5, 23])
def test_chunked_operator_is_the_full_batch_hessian(parts: int) -> None:
    net, (x, y) = _cnn(), _data()
    chunks, full = _chunks(net, x, y, parts)
    space = ParameterSpace.from_module(net)
    H, g = exact_hessian(net, lambda fwd: nn.functional.cross_entropy(fwd(x), y))
    op = ChunkedHessianOperator(chunks, space)
    assert float(op.loss) == pytest.approx(float(full().detach()), rel=1e-12)
    torch.testing.assert_close(op.gradient, g, rtol=1e-10, atol=1e-12)
    v = torch.randn(space.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(op.matvec(v), HessianOperator(full(), space).matvec(v), rtol=1e-9, atol=1e-12)
    res = lanczos_extremes(op.matvec, torch.ones(space.dim, dtype=torch.float64), max_iter=space.dim, tol=1e-10)
    exact = torch.linalg.eigvalsh(H)
    assert res.lambda_max == pytest.approx(float(exact[-1]), rel=1e-8)
    assert res.lambda_min == pytest.approx(float(exact[0]), rel=1e-6, abs=1e-10)
    assert op.num_matvecs == 2 + res.num_matvecs


def test_dropout_masks_are_fixed_per_chunk_so_the_operator_is_one_symmetric_matrix() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 2)).train()
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    chunks, _ = _chunks(net, x, y, 4)
    state = torch.get_rng_state()
    op = ChunkedHessianOperator(chunks, ParameterSpace.from_module(net), seed=3)
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(op.dim, generator=g), torch.randn(op.dim, generator=g)
    hv = op.matvec(v)
    assert torch.equal(hv, op.matvec(v))  # same masks in every product
    assert float(u @ hv) == pytest.approx(float(v @ op.matvec(u)), rel=1e-4)
    assert torch.equal(torch.get_rng_state(), state)  # the per-chunk seeds never touch the global stream
    other = ChunkedHessianOperator(chunks, ParameterSpace.from_module(net), seed=4)
    assert not torch.allclose(other.matvec(v), hv)  # the masks really are drawn (and differ by seed)


def test_split_batch_covers_every_row_once_and_keeps_structure() -> None:
    Batch = namedtuple("Batch", "x y")
    batch = {"inputs": Batch(torch.arange(10.0).view(5, 2), torch.arange(5)), "scale": torch.tensor(2.0), "tag": "a"}
    pieces = split_batch(batch, 3)
    assert [w for w, _ in pieces] == [0.4, 0.4, 0.2]
    assert torch.equal(torch.cat([p["inputs"].y for _, p in pieces]), torch.arange(5))
    assert all(isinstance(p["inputs"], Batch) and p["tag"] == "a" and float(p["scale"]) == 2.0 for _, p in pieces)
    assert len(split_batch(torch.ones(3, 2), 8)) == 3  # never an empty slice
    assert split_batch("no tensors", 4) == [(1.0, "no tensors")]


def test_monitor_with_hvp_chunks_logs_the_same_spectrum(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_landscape.probes.context as context

    built = []

    class Spy(ChunkedHessianOperator):
        def __init__(self, chunks, *args, **kwargs):
            built.append(len(chunks))
            super().__init__(chunks, *args, **kwargs)

    monkeypatch.setattr(context, "ChunkedHessianOperator", Spy)
    values = {}
    for chunks in (1, 3):
        torch.manual_seed(0)
        monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2, tol=1e-6, max_iter=60)], hvp_chunks=chunks)
        trainer(max_steps=4, callbacks=[monitor]).fit(small_task(), loaders(n=128, batch_size=32))
        values[chunks] = monitor.last_values
    assert built and set(built) == {3}  # only the hvp_chunks=3 run took the memory-light path
    for key in ("landscape/hessian/lambda_max", "landscape/hessian/lambda_min"):
        assert values[3][key] == pytest.approx(values[1][key], rel=1e-4, abs=1e-7)


def test_hvp_chunks_keep_training_bit_identical() -> None:
    baseline = _run(None)
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2)], hvp_chunks=4, on_error="raise")
    _assert_identical(baseline, _run(monitor))
    assert monitor.num_measurements > 0


def test_hvp_chunks_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="hvp_chunks"):
        LandscapeMonitor(hvp_chunks=0)
