"""FSDP2 through Lightning's ``ModelParallelStrategy`` (2 CPU processes, gloo, ``fully_shard`` per layer).

Each run is ``tests/fsdp_run.py`` in a subprocess (the strategy re-runs ``sys.argv`` for its second rank);
the runs start together once per module and the tests read their records:

* purity — weights, optimizer state, RNG streams and the user's own logged metrics bit-identical with and
  without the monitor (every registered probe measuring);
* agreement — the 2-process values against one process on the union of both ranks' probe batches at the
  same gathered weights: λmax/λmin against the exact float64 Hessian, the Hutch++ trace within its
  reported standard error of the exact trace, the other probes against the library's exact single-process
  path (``ProbeContext`` on a plain module);
* memory — each rank's peak during a measurement, in parameter-sized vectors of the full model, about half
  of the single-process peak (the vectors are held as shards).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from exact import exact_hessian
from fsdp_helpers import load_run, reference_model, reference_optimizer, reference_values, union_batch

RUN = Path(__file__).resolve().parent / "fsdp_run.py"
ROOT = Path(__file__).resolve().parent.parent


def _fsdp2_available() -> bool:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return False
    try:
        from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: F401
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


needs_fsdp2 = pytest.mark.skipif(not _fsdp2_available(), reason="needs torch.distributed (gloo), FSDP2 and "
                                 "Lightning's ModelParallelStrategy")

#: name -> fsdp_run.py arguments. Started together (≈ 20 s each on a shared 2-core machine).
RUNS: dict[str, list[str]] = {
    # Purity and agreement: an MLP (SGD + momentum), 4 steps, measured at steps 2 and 4 ...
    "mlp_plain": ["--model", "mlp", "--monitor", "none", "--optimizer", "sgd"],
    "mlp_all": ["--model", "mlp", "--monitor", "all", "--optimizer", "sgd"],
    # ... and a Transformer block (LayerNorm, attention; AdamW; the root owns the final LayerNorm), 3 steps,
    # measured at step 2 and tracked at step 3.
    "transformer_plain": ["--model", "transformer", "--monitor", "none", "--steps", "3"],
    "transformer_all": ["--model", "transformer", "--monitor", "all", "--steps", "3"],
    # Memory: per-rank batch 4 (2 ranks) vs the single process on the union batch of 8, no strategy.
    "wide_sharded": ["--model", "wide", "--monitor", "default", "--steps", "2", "--batch-size", "4", "--peaks",
                     "--optimizer", "sgd"],
    "wide_single": ["--model", "wide", "--monitor", "default", "--steps", "2", "--batch-size", "8", "--peaks",
                    "--optimizer", "sgd", "--devices", "0"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runs:
    """The runs of :data:`RUNS`, started at once; :meth:`get` waits for one and checks it succeeded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, tuple[subprocess.Popen, Path, float]] = {}
        for name, args in RUNS.items():
            out = root / name
            env = {**os.environ, "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(ROOT), str(RUN.parent), os.environ.get("PYTHONPATH", "")])}
            log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed when the process is reaped
            # Its own session: the second rank is a child of the first, and a stuck run is killed whole.
            proc = subprocess.Popen([sys.executable, str(RUN), "--out", str(out), *args], env=env, cwd=root,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs[name] = (proc, out, time.perf_counter())
        self.seconds: dict[str, float] = {}

    def get(self, name: str) -> Path:
        proc, out, started = self.procs[name]
        try:
            rc = proc.wait(timeout=240)  # the run dumps its stacks and exits after 150 s (--hang-timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            pytest.fail(f"run {name} timed out:\n{(self.root / f'{name}.log').read_text()[-3000:]}")
        self.seconds.setdefault(name, time.perf_counter() - started)
        if rc != 0:
            pytest.fail(f"run {name} exited with {rc}:\n{(self.root / f'{name}.log').read_text()[-3000:]}")
        return out

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the run's session: both ranks
        except ProcessLookupError:
            pass
        proc.wait()

    def close(self) -> None:
        for proc, _, _ in self.procs.values():
            if proc.poll() is None:
                self._kill(proc)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    started = Runs(tmp_path_factory.mktemp("fsdp"))
    yield started
    started.close()


def _same(a: Any, b: Any) -> bool:
    """Bit-identical, recursively (tensors by ``torch.equal`` with equal dtypes, arrays by value)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _measured_everything(final: dict[str, Any], measurements: int) -> None:
    """The monitor ran under the strategy, measured every probe ``measurements`` times and none failed."""
    mon = final["monitor"]
    assert mon["enabled"], "the monitor disabled itself under ModelParallelStrategy"
    assert mon["measurements"] == measurements and not mon["failures"] and not mon["disabled_probes"], mon
    from fsdp_run import all_probes

    groups = {p.group for p in all_probes(2)}
    assert groups <= {k.split("/")[1] for k in mon["last_values"]}, sorted(mon["last_values"])


@needs_fsdp2
@pytest.mark.parametrize("model,measurements", [("mlp", 2), ("transformer", 1)])
def test_monitor_does_not_change_sharded_training(runs: Runs, model: str, measurements: int) -> None:
    plain_dir, monitored_dir = runs.get(f"{model}_plain"), runs.get(f"{model}_all")
    for rank in (0, 1):
        plain = load_run(plain_dir, rank)["final"]
        monitored = load_run(monitored_dir, rank)["final"]
        _measured_everything(monitored, measurements)
        assert _same(plain["weights"], monitored["weights"]), f"rank {rank}: weights"
        grads = load_run(plain_dir, rank)["grads_at"], load_run(monitored_dir, rank)["grads_at"]
        assert _same(*grads), f"rank {rank}: gradients after the measured step"
        assert _same(plain["optimizer"], monitored["optimizer"]), f"rank {rank}: optimizer state"
        for stream in ("torch", "numpy", "python"):
            assert _same(plain["rng"][stream], monitored["rng"][stream]), f"rank {rank}: {stream} RNG"
        # The user's self.log values (per-rank and sync_dist) at every step, as loggers and callbacks see them.
        assert plain["logged"] and _same(plain["logged"], monitored["logged"]), f"rank {rank}: logged metrics"
        assert _same(plain["callback_metrics"], monitored["callback_metrics"]), f"rank {rank}: callback_metrics"
    # The records are real: training moved the weights and the ranks hold the same gathered model.
    r0, r1 = (load_run(monitored_dir, r)["final"]["weights"] for r in (0, 1))
    assert _same(r0, r1)
    first = load_run(monitored_dir, 0)["weights_at"]
    assert any(not torch.equal(first[k], r0[k]) for k in r0)


def _union_reference(out: Path, model: str, optimizer: str, dtype=torch.float32):
    rec = load_run(out, 0)
    net = reference_model(model, rec["weights_at"], dtype)
    return rec, net, reference_optimizer(net.net, rec["optimizer_at"], optimizer), union_batch(out, 2)


#: Costs and diagnostics, not measurements of the landscape (they may differ between the two paths).
COSTS = {"hvps", "lanczos_hvps", "geometry_hvps", "escape_forward_passes", "residual", "hvp_error"}
#: Estimates with a reported standard error: within 3 standard errors of the exact value.
WITH_STDERR = ("trace", "mean_curvature", "scalar_curvature", "ricci_top", "ricci_gradient")
#: SLQ's negative mass is that of a quadrature-smoothed density: a Gauss node within the resolution of a
#: few-step Lanczos run of zero carries the mass of every eigenvalue near it to one side. Checked against
#: the exact fraction of negative eigenvalues, allowing 3 standard errors plus the exact mass within
#: ±1e-3·λmax of zero (the band a node may land on either side of; finite-difference products move it).
SMOOTHED = ("negative_mass",)
#: Estimates with no reported error (top-k Ritz values of a 20-step Krylov sketch): 10 % of the exact value.
SKETCHED = ("gauss_kronecker_topk_log_abs", "gauss_kronecker_topk_sign")
#: Krylov-converged values (start-independent once converged): 1e-3 relative of the single process.
CONVERGED = {"eos_ratio", "eos_ratio_tracked", "preconditioned_lambda_max", "lambda_min_ratio",
             "gauss_kronecker_topk_sign"}
#: Forward-only probes along random directions (escape-radius walkers, slice planes).
RANDOM_DIRECTIONS = ("landscape/flatness/escape_", "landscape/flatness/slice_")


def _exact_landscape(model: str, rec: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Exact values from the float64 Hessian and gradient of the union batch at the gathered weights."""
    from lightning_landscape.geometry.exact import exact_geometry, ricci_curvature


    net64 = reference_model(model, rec["weights_at"], torch.float64)
    H, g = exact_hessian(net64, lambda f: torch.nn.functional.mse_loss(f(x.double()), y.double()))
    evals, evecs = torch.linalg.eigh(H)
    geo = exact_geometry(H, g)
    band = 1e-3 * float(evals[-1])
    return {
        "negative_mass_band": float((evals.abs() <= band).double().mean()),
        "gauss_kronecker_topk_log_abs": geo.topk_gauss_kronecker(5, g)[1],
        "lambda_max": float(evals[-1]), "lambda_min": float(evals[0]), "trace": float(torch.trace(H)),
        "negative_mass": float((evals < 0).double().mean()), "mean_curvature": geo.mean_curvature,
        "scalar_curvature": geo.scalar_curvature, "ricci_top": ricci_curvature(H, g, evecs[:, -1]),
        "ricci_gradient": ricci_curvature(H, g, g), "num_negative": float((evals < 0).sum()), "dim": H.shape[0],
    }


def _key(tag: str) -> str:
    return tag.rsplit("/", 1)[1]


@needs_fsdp2
@pytest.mark.parametrize("model,optimizer", [("mlp", "sgd"), ("transformer", "adamw")])
def test_sharded_values_match_one_process_on_the_union_batch(runs: Runs, model: str, optimizer: str) -> None:
    from fsdp_run import all_probes

    out = runs.get(f"{model}_all")
    rec, net, opt, (x, y) = _union_reference(out, model, optimizer)
    sharded = rec["values_at"]
    other_rank = load_run(out, 1)["values_at"]
    physics = [k for k in sharded if not k.startswith("landscape/monitor/")]
    # Every rank holds the same values (rank 0's are logged; alerts and the controller run on every rank).
    assert all(sharded[k] == pytest.approx(other_rank[k], rel=1e-6, abs=1e-9) for k in physics)

    exact = _exact_landscape(model, rec, x, y)
    # λmax/λmin against the exact float64 Hessian of the union batch at the gathered weights.
    assert sharded["landscape/hessian/lambda_max"] == pytest.approx(exact["lambda_max"], rel=1e-3)
    assert sharded["landscape/hessian/lambda_min"] == pytest.approx(exact["lambda_min"], rel=1e-3)
    # Stochastic estimates: within 3 of their reported standard errors, which must be informative.
    for key in WITH_STDERR:
        tags = [k for k in physics if _key(k) == key]
        assert len(tags) == 1, (key, tags)
        value, stderr = sharded[tags[0]], sharded[tags[0] + "_stderr"]
        informative = 0.25 if key == "trace" else 1.0  # curvatures of the graph: a few samples, wide errors
        assert 0 < stderr < informative * abs(exact[key]) + 0.05, (key, value, stderr, exact[key])
        assert abs(value - exact[key]) <= 3 * stderr, (key, value, stderr, exact[key])
    mass, mass_stderr = sharded["landscape/hessian/negative_mass"], sharded["landscape/hessian/negative_mass_stderr"]
    assert 0 < mass_stderr < 0.1
    assert abs(mass - exact["negative_mass"]) <= 3 * mass_stderr + exact["negative_mass_band"], (mass, exact)
    # The Krylov sketch's inertia counts the whole model (not one shard) and roughly matches the exact one.
    counts = [sharded[f"landscape/geometry/num_{s}"] for s in ("negative", "zero", "positive")]
    assert sum(counts) == pytest.approx(exact["dim"], rel=1e-6)
    assert abs(counts[0] - exact["num_negative"]) <= 0.15 * exact["dim"]

    # Everything else against the library's exact single-process path on the union batch.
    single = reference_values(net, (x, y), all_probes(2), step=2, optimizer=opt)
    compared = [k for k in physics if k in single and _key(k) not in COSTS and not _key(k).endswith("_stderr")
                and _key(k) not in WITH_STDERR + SMOOTHED + SKETCHED and not k.startswith("landscape/geometry/num_")
                and not k.startswith(RANDOM_DIRECTIONS) and _key(k) not in ("lambda_max", "lambda_min")]
    assert len(compared) >= 40, compared  # every probe contributes
    converged = [k for k in compared if _key(k) in CONVERGED]
    off = {k: (sharded[k], single[k]) for k in converged if sharded[k] != pytest.approx(single[k], rel=1e-3)}
    assert not off
    # Forward-only probes, gradients and weight statistics: float tolerance (the sums over shards and
    # ranks run in another order).
    rest = [k for k in compared if k not in converged]
    assert any(k.startswith("landscape/l2/") for k in rest) and any(k.startswith("landscape/weights/") for k in rest)
    off = {k: (sharded[k], single[k]) for k in rest if sharded[k] != pytest.approx(single[k], rel=1e-4, abs=1e-6)}
    assert not off


@needs_fsdp2
@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_sharded_topk_section_is_not_measured(runs: Runs, model: str) -> None:
    """The basis-free run tells ghost and spurious Ritz values apart at the products' rounding level, which
    finite-difference products (≈ 1e-4 relative) swamp: a spurious value in the section gave log|K_5| 0.55
    against 0.23 exact (MLP). Under sharding the section is absent, the rest of the geometry is measured."""
    values = load_run(runs.get(f"{model}_all"), 0)["values_at"]
    assert not any(k.startswith("landscape/geometry/gauss_kronecker_topk") for k in values)
    assert "landscape/geometry/scalar_curvature" in values and "landscape/geometry/ricci_top" in values


@needs_fsdp2
@pytest.mark.parametrize("model,optimizer", [("mlp", "sgd"), ("transformer", "adamw")])
def test_sharded_escape_radius_agrees_with_one_process(runs: Runs, model: str, optimizer: str) -> None:
    """The escape radius walks along random directions, drawn per shard in the sharded run (another sample
    than the single process's): the walkers' mean radii agree within 3 combined standard errors."""
    from fsdp_run import all_probes

    out = runs.get(f"{model}_all")
    rec, net, opt, (x, y) = _union_reference(out, model, optimizer)
    sharded = rec["values_at"]
    probes = [p for p in all_probes(2) if p.name == "escape_radius"]
    single = reference_values(net, (x, y), probes, step=2, optimizer=opt)
    walkers = probes[0].walkers
    tag = "landscape/flatness/escape_radius"
    assert sharded[tag + "_std"] > 0 and single[tag + "_std"] > 0
    combined = ((sharded[tag + "_std"] ** 2 + single[tag + "_std"] ** 2) / walkers) ** 0.5
    assert abs(sharded[tag] - single[tag]) <= 3 * combined, (sharded[tag], single[tag], combined)
    assert sharded["landscape/flatness/escape_censored"] == single["landscape/flatness/escape_censored"] == 0


@needs_fsdp2
def test_sharded_weight_dynamics_over_steps(runs: Runs) -> None:
    """weight_dynamics at its second measurement (distance from the weights at its first) equals the
    single process's on the same two gathered weight sets."""
    from lightning_landscape.probes import WeightDynamics

    out = runs.get("mlp_all")
    rec = load_run(out, 0)
    probe = WeightDynamics(every_n_steps=2)
    x, y = union_batch(out, 2)
    reference_values(reference_model("mlp", rec["weights_at"]), (x, y), [probe], step=2)
    second = reference_values(reference_model("mlp", rec["final"]["weights"]), (x, y), [probe], step=4)
    final = rec["final"]["monitor"]["last_values"]
    keys = [k for k in second if k.startswith("landscape/weights/")]
    assert any("distance_from_init" in k and second[k] > 0 for k in keys)
    off = {k: (final[k], second[k]) for k in keys if final[k] != pytest.approx(second[k], rel=1e-5, abs=1e-7)}
    assert not off


@needs_fsdp2
def test_per_rank_measurement_memory_is_half_the_single_process(runs: Runs) -> None:
    """Peak RSS of each probe's measurement in parameter-sized vectors of the full model (≈ 0.9 M parameters
    in 360-wide layers, batch 4 per rank: the vectors dominate). Each rank of the 2-process run holds its
    shards, so about half of what one process holding the whole model holds, plus the working set of a
    finite-difference product (the saved θ shard, two gradient shards and the flattening of one: ≤ 1.5 full
    vectors) and one vector of slack: the spectrum's Lanczos length (how many basis blocks it grows) varies
    between runs (per rank 8.6 and 10.3 of 16.6–17.6 in two CI runs). A rank holding full vectors (gathered
    Lanczos basis, unsharded random vectors) fails: it reads about the single process's peak."""
    import json

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS needs Linux /proc/self/clear_refs")
    sharded_dir, single_dir = runs.get("wide_sharded"), runs.get("wide_single")
    single = json.loads((single_dir / "peaks_rank0.json").read_text())
    ranks = [json.loads((sharded_dir / f"peaks_rank{r}.json").read_text()) for r in (0, 1)]
    vector = 4 * single["numel"]  # float32 bytes of one full parameter vector
    assert single["numel"] > 500_000 and single["peaks"].keys() == ranks[0]["peaks"].keys() == ranks[1]["peaks"].keys()
    table = {}
    for name, (peak,) in single["peaks"].items():
        one = peak / vector
        per_rank = max(r["peaks"][name][0] for r in ranks) / vector
        table[name] = (round(one, 2), round(per_rank, 2))
        assert one >= 2, (name, one)  # the probe holds vectors: the comparison is meaningful
    print("vectors (single process, per rank):", table)
    for name, (one, per_rank) in table.items():
        assert per_rank <= 0.5 * one + 2.5, (name, table)
        if one >= 8:  # a probe whose vectors dwarf the product's working set: the ratio itself
            assert per_rank / one < 0.65, (name, table)

class _Trainer:
    """What ``LandscapeMonitor.setup`` reads of a Trainer."""

    def __init__(self, strategy: Any) -> None:
        self.strategy, self.callbacks = strategy, []


def _refusal(strategy: Any) -> str:
    from lightning_landscape import LandscapeMonitor
    from lightning_landscape.callbacks.monitor import LandscapeMonitorWarning
    from lightning_helpers import small_task

    monitor = LandscapeMonitor()
    with pytest.warns(LandscapeMonitorWarning) as caught:
        monitor.setup(_Trainer(strategy), small_task(), "fit")
    assert not monitor._enabled  # switched off; training goes on
    return " ".join(str(w.message) for w in caught)


def test_fsdp1_is_refused_with_a_pointer_to_model_parallel() -> None:
    """FSDP1 (``FSDPStrategy``; Lightning runs it on GPUs only, but the object builds anywhere): refused,
    naming FSDP1 and the supported ``ModelParallelStrategy``."""
    from lightning.pytorch.strategies import FSDPStrategy

    message = _refusal(FSDPStrategy())
    assert "FSDPStrategy" in message and "ModelParallelStrategy" in message and "fully_shard" in message


def test_deepspeed_is_refused() -> None:
    pytest.importorskip("deepspeed")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    message = _refusal(DeepSpeedStrategy())
    assert "DeepSpeedStrategy" in message and "ModelParallelStrategy" in message
