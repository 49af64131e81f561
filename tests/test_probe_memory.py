"""Peak memory of one measurement of every registered probe, in parameter-sized vectors.

Each probe runs once unmeasured (first-call allocations), then once measured: the peak resident set size
(``VmHWM`` after ``clear_refs``) above the RSS before the run, with glibc's mmap threshold fixed at 64 KiB so
that freed tensors leave the RSS at once (the peak counts live memory, as ``benchmarks/memory.py`` does).
The model is an MLP whose parameter vector (≈ 4.5 MiB) dwarfs its activations (batch 4), so the peak is
the vectors a probe holds: the gradient graph and gradient, Lanczos bases, directions, parameter copies.
``PEAK_VECTORS`` is the documented bound (README, "Memory per probe"); a probe over it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import lightning_landscape.probes as P
from lightning_landscape import PROBES, ProbeContext
from lightning_landscape.guards import probe_guard
from memory_peak import rss_meter

# Documented peak above the state before a measurement (parameters, gradients, optimizer state), in
# parameter-sized vectors, with the probes' defaults; the README's "Memory per probe" table.
PEAK_VECTORS: dict[str, float] = {
    # A Hessian-vector product here costs ≈ 5 vectors before the probe holds any of its own: the graph's
    # gradient and the flat gradient (2) and the double backward's transients (≈ 3: one layer holds 96 % of
    # this model's parameters, and autograd sums two products for it). A Krylov probe can therefore keep
    # its input and one more vector within 8 (the 10 M benchmark's layers are smaller: ≈ 1.2 less there).
    "hessian_spectrum": 16,  # graph + gradient, max_basis = 8 Lanczos vectors (a cold run), one HVP; warm ≈ 7
    "hessian_trace": 8,  # graph + gradient, Hutch++ sketch as scalars: recurrence (2) + sign bits (≈ 0.5), one HVP
    "hessian_density": 8,  # graph + gradient, three-term recurrence (no basis), one HVP
    "loss_geometry": 8,  # graph + gradient, three-term recurrence (no basis), one HVP (deflate=False)
    "l2_transition": 7,
    "sharpness": 6,  # one saved θ, the gradient, the perturbation (the point is formed in the parameters)
    "escape_radius": 6,  # one saved θ, a direction and its draw
    "landscape_slice": 5,  # one saved θ, two directions (each point formed in the parameters)
    "weight_dynamics": 5,  # the current weights (the initial and previous ones are state)
    "channels": 4,  # the largest layer's weights, Gram-matrix blocks of at most 1 MiB
    "saddle_branches": 8,  # graph + gradient, plain Lanczos recurrence (three vectors), one HVP
}

MAKE: dict[str, Callable[[], P.Probe]] = {
    "escape_radius": lambda: P.EscapeRadius(walkers=2),
    "landscape_slice": lambda: P.LandscapeSlice(points_1d=3, points_2d=3, dpi=20),
    "saddle_branches": lambda: P.SaddleBranches(grad_tol=1e9),  # worst case: its own Lanczos run
}


def _setup():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 1024), torch.nn.Tanh(), torch.nn.Linear(1024, 1024), torch.nn.Tanh(),
                              torch.nn.Linear(1024, 10))
    x, y = torch.randn(4, 32), torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(net(x), y)

    for _ in range(2):  # gradients and momentum exist, as during training
        opt.zero_grad()
        loss().backward()
        opt.step()
    vector = 4 * sum(p.numel() for p in net.parameters())
    return net, loss, opt, vector


def _measure_all() -> dict[str, float]:
    """Peak of every probe in parameter-sized vectors, and the calibration (5 vectors held) under "calibration"."""
    measure, restore = rss_meter()
    net, loss, opt, vector = _setup()
    n = vector // 4

    def hold() -> None:
        kept = [torch.ones(n) for _ in range(5)]
        del kept

    peaks = {"calibration": measure(hold) / vector}
    for name in sorted(PEAK_VECTORS):
        probe = MAKE.get(name, PROBES[name])()
        step = [10]

        def run() -> None:
            step[0] += 10
            with probe_guard(net):
                ctx = ProbeContext(net, loss, step=step[0], optimizer=opt)
                probe.run(ctx)
                ctx.release()

        run()
        # The least of three peaks: the measurement's own vectors are there every time, a transient
        # allocation elsewhere only in some.
        peaks[name] = min(measure(run) for _ in range(3)) / vector
    # The spectrum's documented bound is that of a cold run (no Ritz vectors to warm-start from: the longest).
    def cold() -> None:
        fresh = PROBES["hessian_spectrum"]()
        with probe_guard(net):
            ctx = ProbeContext(net, loss, step=5, optimizer=opt)
            fresh.run(ctx)
            ctx.release()

    peaks["hessian_spectrum_cold"] = min(measure(cold) for _ in range(3)) / vector
    bounded = P.HessianSpectrum(ritz_vectors=False)

    def without_ritz_vectors() -> None:
        with probe_guard(net):
            ctx = ProbeContext(net, loss, step=7, optimizer=opt)
            bounded.run(ctx)
            ctx.release()

    without_ritz_vectors()
    peaks["hessian_spectrum_no_ritz_vectors"] = min(measure(without_ritz_vectors) for _ in range(3)) / vector
    restore()
    return peaks


@pytest.fixture(scope="module")
def measured() -> dict[str, float]:
    """Measured in a fresh interpreter: the allocator state a long test process accumulates (other tests'
    threads, arenas, caches) added up to 4 vectors to some probes' peaks."""
    tests_dir = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_registered_probe_has_a_documented_bound() -> None:
    names = {n for n in PROBES if not n.startswith("test_")}
    assert names == set(PEAK_VECTORS)
    # ≤ 8 for every probe but the spectrum, whose warm start needs its Ritz vectors (hence a kept basis;
    # ritz_vectors=False gives that up and stays within 8: test_spectrum_without_ritz_vectors_stays_within_8)
    assert all(v <= 8 for name, v in PEAK_VECTORS.items() if name != "hessian_spectrum")
    assert PEAK_VECTORS["hessian_spectrum"] <= 16


def test_the_measurement_sees_vectors(measured) -> None:
    """Calibration: holding 5 parameter-sized vectors at once reads as 5 (so a probe's peak cannot hide)."""
    assert measured["calibration"] == pytest.approx(5.0, abs=0.3)


@pytest.mark.parametrize("name", sorted(PEAK_VECTORS))
def test_probe_peak_memory_is_bounded(measured, name: str) -> None:
    peak = measured[name]
    print(f"{name}: {peak:.2f} parameter-sized vectors")
    assert peak <= PEAK_VECTORS[name], f"{name} peaked at {peak:.2f} vectors (documented: {PEAK_VECTORS[name]})"


def test_cold_spectrum_peak_is_bounded(measured) -> None:
    """The spectrum's bound holds for its costliest run, the cold one (its basis grows towards max_basis)."""
    print(f"hessian_spectrum (cold): {measured['hessian_spectrum_cold']:.2f} parameter-sized vectors")
    assert measured["hessian_spectrum_cold"] <= PEAK_VECTORS["hessian_spectrum"]


if __name__ == "__main__":  # the measurement itself, in a fresh interpreter (see ``measured``)
    torch.set_num_threads(1)
    try:
        result = _measure_all()
    except RuntimeError as err:
        print(str(err))
        sys.exit(3)
    print(json.dumps(result))


def test_spectrum_without_ritz_vectors_stays_within_8(measured) -> None:
    """``ritz_vectors=False``: the plain recurrence (three vectors) besides the product's own — ≤ 8 in all."""
    print(f"hessian_spectrum (ritz_vectors=False): {measured['hessian_spectrum_no_ritz_vectors']:.2f} vectors")
    assert measured["hessian_spectrum_no_ritz_vectors"] <= 8
