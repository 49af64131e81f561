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
    "mlp_plain": ["--model", "mlp", "--monitor", "none"],
    "mlp_all": ["--model", "mlp", "--monitor", "all"],
    "transformer_plain": ["--model", "transformer", "--monitor", "none", "--optimizer", "sgd"],
    "transformer_all": ["--model", "transformer", "--monitor", "all", "--optimizer", "sgd"],
    # Memory: per-rank batch 4 (2 ranks) vs the single process on the union batch of 8, no strategy.
    "wide_sharded": ["--model", "wide", "--monitor", "default", "--steps", "2", "--batch-size", "4", "--peaks"],
    "wide_single": ["--model", "wide", "--monitor", "default", "--steps", "2", "--batch-size", "8", "--peaks",
                    "--devices", "0"],
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


def _measured_everything(final: dict[str, Any]) -> None:
    """The monitor ran under the strategy, every probe measured twice and none failed."""
    mon = final["monitor"]
    assert mon["enabled"], "the monitor disabled itself under ModelParallelStrategy"
    assert mon["measurements"] == 2 and not mon["failures"] and not mon["disabled_probes"], mon
    from fsdp_run import all_probes

    groups = {p.group for p in all_probes(2)}
    assert groups <= {k.split("/")[1] for k in mon["last_values"]}, sorted(mon["last_values"])


@needs_fsdp2
@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_monitor_does_not_change_sharded_training(runs: Runs, model: str) -> None:
    plain_dir, monitored_dir = runs.get(f"{model}_plain"), runs.get(f"{model}_all")
    for rank in (0, 1):
        plain = load_run(plain_dir, rank)["final"]
        monitored = load_run(monitored_dir, rank)["final"]
        _measured_everything(monitored)
        assert _same(plain["weights"], monitored["weights"]), f"rank {rank}: weights"
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


@needs_fsdp2
@pytest.mark.parametrize("model,optimizer", [("mlp", "adamw"), ("transformer", "sgd")])
def test_sharded_values_match_one_process_on_the_union_batch(runs: Runs, model: str, optimizer: str) -> None:
    from fsdp_run import all_probes

    out = runs.get(f"{model}_all")
    rec, net, opt, (x, y) = _union_reference(out, model, optimizer)
    sharded = rec["values_at"]
    other_rank = load_run(out, 1)["values_at"]
    physics = [k for k in sharded if not k.startswith("landscape/monitor/")]
    # Every rank logs the same decision-relevant numbers (rank 0's are logged; the others must agree).
    assert all(sharded[k] == pytest.approx(other_rank[k], rel=1e-6, abs=1e-9) for k in physics)

    # λmax/λmin and the trace against the exact float64 Hessian of the union batch at the gathered weights.
    net64 = reference_model(model, rec["weights_at"], torch.float64)
    H, _ = exact_hessian(net64, lambda f: torch.nn.functional.mse_loss(f(x.double()), y.double()))
    evals = torch.linalg.eigvalsh(H)
    lam_max, lam_min, trace = float(evals[-1]), float(evals[0]), float(torch.trace(H))
    assert sharded["landscape/hessian/lambda_max"] == pytest.approx(lam_max, rel=1e-3)
    assert sharded["landscape/hessian/lambda_min"] == pytest.approx(lam_min, rel=1e-3)
    stderr = sharded["landscape/hessian/trace_stderr"]
    assert 0 < stderr < 0.5 * abs(trace)  # estimated (> 256 parameters), and informative
    assert abs(sharded["landscape/hessian/trace"] - trace) <= 2 * stderr

    # Every other value against the library's exact single-process path on the union batch.
    single = reference_values(net, (x, y), all_probes(2), step=2, optimizer=opt)
    compared = [k for k in physics if k in single]
    assert len(compared) >= 60, compared  # every probe contributes
    # Forward-only probes and weight statistics: float tolerance (the only difference is the order of the
    # sums over shards and ranks).
    forward_only = [k for k in compared if k.split("/")[1] in ("l2", "flatness", "weights")]
    assert forward_only
    off = {k: (sharded[k], single[k]) for k in forward_only
           if sharded[k] != pytest.approx(single[k], rel=1e-4, abs=1e-6)}
    assert not off
    # Curvature estimates from the same random vectors (Lanczos, SLQ, geometry, saddle branches): close
    # to the single process's (finite-difference Hessian products: ≈ 1e-4 relative in float32).
    rest = [k for k in compared if k not in forward_only]
    off = {k: (sharded[k], single[k]) for k in rest if sharded[k] != pytest.approx(single[k], rel=2e-3, abs=1e-4)}
    assert not off


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
    """Peak RSS of each probe's measurement in parameter-sized vectors of the full model: each rank of the
    2-process run holds shards, so about half of what one process holding the whole model holds."""
    pytest.importorskip("ctypes")
    import json

    sharded_dir, single_dir = runs.get("wide_sharded"), runs.get("wide_single")
    single = json.loads((single_dir / "peaks_rank0.json").read_text())
    ranks = [json.loads((sharded_dir / f"peaks_rank{r}.json").read_text()) for r in (0, 1)]
    vector = 4 * single["numel"]  # float32 bytes of one full parameter vector
    assert single["numel"] > 500_000 and single["peaks"].keys() == ranks[0]["peaks"].keys() == ranks[1]["peaks"].keys()
    for name, (peak,) in single["peaks"].items():
        one = peak / vector
        per_rank = max(r["peaks"][name][0] for r in ranks) / vector
        assert one >= 2, (name, one)  # the probe holds vectors: the ratio is meaningful
        assert per_rank <= 0.5 * one + 1.0 and per_rank / one < 0.7, (name, per_rank, one)


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
