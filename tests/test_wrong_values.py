"""Values that must not be silently wrong: the nonfinite flag and trace error, duplicate prefixes, models
without (real) trainable parameters, tied weights, and probe batches that cannot be cut into rows."""

from __future__ import annotations

import math

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianSpectrum, HessianTrace, LandscapeMonitor, LandscapeMonitorWarning


def _alerts_into(events: list):
    from lightning_landscape.alerts import AlertManager, NonFinite, Sink

    class Collect(Sink):
        def emit(self, batch):
            events.extend(batch)

    return AlertManager([NonFinite(cooldown_steps=0)], sinks=[Collect("info")])


def test_nonfinite_flag_comes_down_when_the_probes_recover() -> None:
    def loss_fn(module, batch):  # NaN at the measurement after step 2 only
        loss = nn.functional.mse_loss(module(batch[0]), batch[1])
        return loss * float("nan") if module.trainer.global_step == 2 else loss

    events: list = []
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], loss_fn=loss_fn,
                               alerts=_alerts_into(events))
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((monitor.last_values.get("landscape/monitor/nonfinite"),
                         monitor.last_values.get("landscape/alerts/nonfinite")))

    t = trainer(max_steps=4, callbacks=[monitor, Watch()])
    with pytest.warns(LandscapeMonitorWarning, match="non-finite"):
        t.fit(small_task(), loaders())
    assert seen == [(0.0, 0.0), (1.0, 1.0), (0.0, 0.0), (0.0, 0.0)]
    assert "landscape/hessian/lambda_max" in monitor.last_values  # measured again after the NaN step


def test_trace_at_the_minimum_budget_never_logs_a_nan_stderr() -> None:
    events: list = []
    monitor = LandscapeMonitor(probes=[HessianTrace(every_n_steps=1, num_matvecs=3)], alerts=_alerts_into(events))
    trainer(max_steps=2, callbacks=[monitor]).fit(small_task(), loaders())
    values = monitor.last_values
    assert math.isfinite(values["landscape/hessian/trace"])
    stderr = values.get("landscape/hessian/trace_stderr")
    assert stderr is None or math.isfinite(stderr)
    if stderr is None:
        assert "num_matvecs" in monitor.not_measured["landscape/hessian/trace_stderr"]
    assert [e for e in events if e.rule == "nonfinite"] == []


def test_two_monitors_with_one_prefix_are_refused() -> None:
    first = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)])
    second = LandscapeMonitor(probes=[HessianTrace(every_n_steps=1)])
    with pytest.raises(RuntimeError, match="state_key"):  # Lightning itself, when the Trainer is built
        trainer(max_steps=1, callbacks=[first, second])
    t = trainer(max_steps=1, callbacks=[first])
    t.callbacks.append(second)  # added later: refused in setup, before training starts, naming the setting
    with pytest.raises(ValueError, match="log_prefix='landscape' is used by 2 LandscapeMonitors"):
        t.fit(small_task(), loaders())


# ---------------------------------------------------------------------------- parameters
class _Frozen(type(small_task())):
    """No trainable parameter at all; trains without an optimizer (Lightning allows it)."""

    def __init__(self) -> None:
        super().__init__(input_dim=6, hidden=(12,))
        for p in self.parameters():
            p.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y).requires_grad_()

    def configure_optimizers(self):
        return None


def test_no_trainable_parameters_warns_once_and_training_runs() -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)])
    t = trainer(max_steps=3, callbacks=[monitor])
    with pytest.warns(LandscapeMonitorWarning, match="no trainable parameters") as record:
        t.fit(_Frozen(), loaders())
    assert t.global_step == 3
    assert sum("no trainable parameters" in str(w.message) for w in record) == 1
    assert monitor.num_measurements == 0 and not monitor._enabled


class _WithComplex(type(small_task())):
    def __init__(self) -> None:
        super().__init__(input_dim=6, hidden=(12,), lr=0.05, momentum=0.0)
        self.phase = nn.Parameter(torch.tensor([0.5 + 0.5j, -0.2j]))

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + (self.phase.abs() ** 2).sum()


def test_complex_parameters_are_refused_with_a_warning_and_training_runs() -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1), HessianTrace(every_n_steps=1)])
    t = trainer(max_steps=3, callbacks=[monitor])
    with pytest.warns(LandscapeMonitorWarning, match=r"complex parameters are not supported \(\['phase'\]\)"):
        t.fit(_WithComplex(), loaders())
    assert t.global_step == 3
    assert not any(k.startswith("landscape/hessian/") for k in monitor.last_values)


class _Tied(nn.Module):
    """An encoder and a decoder sharing one weight (as a language model ties its embedding and head)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 6, bias=False)
        self.act = nn.Tanh()
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight
        self.out = nn.Linear(6, 1)

    def forward(self, x):
        return self.out(self.dec(self.act(self.enc(x))))


def test_tied_weights_count_once_in_weight_totals() -> None:
    from lightning_landscape.probes import ProbeContext
    from lightning_landscape.probes.neurons import WeightDynamics

    torch.manual_seed(0)
    net = _Tied()
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    probe = WeightDynamics(every_n_steps=1, histogram_every=0)
    probe.run(ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1))
    init = [p.detach().clone() for p in net.parameters()]  # parameters(): each tensor once
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = probe.run(ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=3)).scalars
    unique = list(net.parameters())
    assert len(unique) == 4 and sum(1 for _ in net.named_parameters(remove_duplicate=False)) == 5
    norm = float(torch.cat([p.detach().flatten() for p in unique]).double().norm())
    moved = float(torch.cat([(p.detach() - q).flatten() for p, q in zip(unique, init)]).double().norm())
    assert out["total/norm"] == pytest.approx(norm, rel=1e-12)
    assert out["total/distance_from_init"] == pytest.approx(moved, rel=1e-12)
    assert out["total/update_ratio"] == pytest.approx(moved / (norm * 2), rel=1e-12)


# ---------------------------------------------------------------------------- probe batches
def test_variable_length_list_batch_is_never_cut_along_time() -> None:
    from lightning_landscape.callbacks.probe_batch import ProbeBatchCache, split_batch

    seqs = [torch.randn(7, 3), torch.randn(5, 3), torch.randn(9, 3)]  # three samples of different lengths
    messages: list[str] = []
    cache = ProbeBatchCache("cached", num_batches=2, max_samples=2, warn=messages.append)
    cache.observe(seqs)
    cache.observe(seqs)
    kept = cache.batches(current=None)[0]
    assert [tuple(t.shape) for t in kept] == [(7, 3), (5, 3), (9, 3)]
    assert all(torch.equal(a, b) for a, b in zip(kept, seqs))
    assert len(messages) == 1 and "different leading sizes [5, 7, 9]" in messages[0]
    assert split_batch(seqs, 2) == [(1.0, seqs)]
    # A shared leading dimension is still cut (the batch size), and only that one.
    x, y = torch.randn(8, 7), torch.randn(8)
    assert [tuple(t.shape) for t in split_batch((x, y), 2)[0][1]] == [(4, 7), (4,)]


class _Record:
    """A custom batch object (as graph libraries build them)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y


def test_custom_batch_object_warns_once_that_it_is_not_truncated() -> None:
    from lightning_landscape.callbacks.probe_batch import ProbeBatchCache

    messages: list[str] = []
    cache = ProbeBatchCache("cached", num_batches=3, max_samples=4, warn=messages.append)
    for _ in range(3):
        cache.observe(_Record(torch.randn(16, 2), torch.randn(16)))
    assert len(messages) == 1 and "max_probe_samples=4" in messages[0] and "_Record" in messages[0]
    silent: list[str] = []
    ProbeBatchCache("fixed", warn=silent.append).observe(_Record(torch.randn(16, 2), torch.randn(16)))
    assert silent == []  # no cap asked for: nothing to say


def test_an_empty_first_batch_is_not_kept_as_the_probe_batch() -> None:
    from lightning_landscape.callbacks.probe_batch import ProbeBatchCache

    empty, full = (torch.zeros(0, 6), torch.zeros(0, 1)), (torch.randn(4, 6), torch.randn(4, 1))
    fixed = ProbeBatchCache("fixed")
    fixed.observe(empty)
    assert fixed.batches(current=None) == []
    fixed.observe(full)
    fixed.observe((torch.randn(4, 6), torch.randn(4, 1)))
    (kept,) = fixed.batches(current=None)
    assert all(torch.equal(a, b) for a, b in zip(kept, full))
    messages: list[str] = []
    current = ProbeBatchCache("current", warn=messages.append)
    assert current.batches(current=empty) == [] and "empty" in messages[0]


class _SeqTask(type(small_task())):
    """Batches are ``(list of variable-length sequences, targets)``; the model averages each over time."""

    def __init__(self) -> None:
        super().__init__(input_dim=3, hidden=(5,), lr=0.05, momentum=0.0)

    def _loss(self, batch):
        seqs, y = batch
        feats = torch.stack([s.mean(0) for s in seqs])
        return nn.functional.mse_loss(self(feats).squeeze(-1), y)

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def landscape_loss(self, batch):
        return self._loss(batch)


def _seq_loader():
    g = torch.Generator().manual_seed(0)
    samples = [(torch.randn(int(n), 3, generator=g), torch.randn((), generator=g))
               for n in torch.randint(2, 9, (24,), generator=g)]
    return torch.utils.data.DataLoader(samples, batch_size=6, collate_fn=lambda b: ([s for s, _ in b],
                                                                                     torch.stack([t for _, t in b])))


def test_variable_length_batches_measure_the_same_curvature_with_cap_and_chunks() -> None:
    values = []
    for kwargs in ({}, {"max_probe_samples": 2, "hvp_chunks": 3}):
        torch.manual_seed(0)
        monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1, max_iter=30, tol=1e-6, max_basis=None)],
                                   **kwargs)
        t = trainer(max_steps=2, callbacks=[monitor])
        if kwargs:
            with pytest.warns(LandscapeMonitorWarning, match="different leading sizes"):
                t.fit(_SeqTask(), _seq_loader())
        else:
            t.fit(_SeqTask(), _seq_loader())
        values.append(monitor.last_values["landscape/hessian/lambda_max"])
    assert values[1] == pytest.approx(values[0], rel=1e-5)  # the whole batch both times, not time slices


def test_tied_weight_listed_twice_in_a_param_group_counts_once() -> None:
    from lightning_landscape.l2.convention import group_decays

    net = _Tied()
    with pytest.warns(UserWarning, match="duplicate parameters"):  # torch accepts it, with a warning
        opt = torch.optim.SGD([net.enc.weight, net.dec.weight, net.dec.bias], lr=0.1, weight_decay=0.01)
    (group,) = group_decays(opt)
    assert [id(p) for p in group.params] == [id(net.enc.weight), id(net.dec.bias)]
