"""One sharded training run under ``ModelParallelStrategy`` (FSDP2, CPU, gloo), for the tests.

Run as a script: Lightning's ``ModelParallelStrategy`` starts its other ranks by re-running ``sys.argv``, so
the tests start this with ``subprocess`` (never inside pytest). Every rank writes its records into ``--out``
(see :class:`fsdp_helpers.Recorder`); with ``--peaks`` each rank also writes the peak RSS of every probe's
measurement at ``--at-step`` (``peaks_rank{r}.json``, bytes above the RSS before it).

    python tests/fsdp_run.py --out /tmp/run --model mlp --monitor all --steps 4
    python tests/fsdp_run.py --out /tmp/single --model wide --devices 0 --monitor default --peaks
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402

from fsdp_helpers import (  # noqa: E402
    RecordingLogger, Recorder, ShardedTask, build_model, dataset, instrument_peaks, write_json,
)
from lightning_landscape import LandscapeMonitor  # noqa: E402
from lightning_landscape.probes import (  # noqa: E402
    PROBES, EscapeRadius, HessianDensity, HessianSpectrum, HessianTrace, L2Transition, LandscapeSlice,
    LossSurfaceGeometry, Probe, SaddleBranches,
)
from lightning_landscape.tags import load_all_probes  # noqa: E402


def all_probes(every: int) -> list[Probe]:
    """Every registered probe (a new one is covered automatically) with small budgets, every ``every`` steps;
    the spectrum converged tightly (its λ are compared with an exact Hessian)."""
    load_all_probes()
    tuned = {
        "hessian_spectrum": HessianSpectrum(every_n_steps=every, max_iter=80, tol=1e-7, max_basis=None,
                                            fast_every_n_steps=None),
        "hessian_trace": HessianTrace(every_n_steps=every, num_matvecs=30, rel_tol=None),
        "hessian_density": HessianDensity(every_n_steps=every, num_probes=2, num_steps=20, stderr_tol=None),
        "loss_geometry": LossSurfaceGeometry(every_n_steps=every, num_samples=4, lanczos_steps=20),
        "saddle_branches": SaddleBranches(every_n_steps=every, max_iter=30),
        "l2_transition": L2Transition(every_n_steps=every, ready_collapse_ratio=-1e9, ready_balance=-1e9,
                                      fast_every_n_steps=None, num_scales=6, refine_steps=4),
        "landscape_slice": LandscapeSlice(every_n_steps=every, points_1d=7, points_2d=5),
        "escape_radius": EscapeRadius(every_n_steps=every, walkers=4),
    }
    return [tuned.get(name) or PROBES[name](every_n_steps=every) for name in sorted(PROBES) if not name.startswith("test_")]


def default_probes(every: int) -> list[Probe]:
    """The default suite (spectrum, trace, density) at interval ``every``."""
    return [HessianSpectrum(every_n_steps=every, max_iter=20, fast_every_n_steps=None),
            HessianTrace(every_n_steps=every), HessianDensity(every_n_steps=every, num_probes=2, num_steps=20)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    parser.add_argument("--monitor", default="all", choices=("none", "all", "default"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--every", type=int, default=2, help="measurement interval of every probe")
    parser.add_argument("--at-step", type=int, default=2, help="step whose weights and values are recorded")
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--devices", type=int, default=2,
                        help="ModelParallelStrategy processes; 0: one process, no strategy (the plain path)")
    parser.add_argument("--peaks", action="store_true", help="record each probe's peak RSS at --at-step")
    parser.add_argument("--hang-timeout", type=float, default=150.0,
                        help="dump every thread's stack and exit after this many seconds (a stuck collective)")
    args = parser.parse_args(argv)
    faulthandler.enable()  # a crash prints every stack
    faulthandler.dump_traceback_later(args.hang_timeout, exit=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(1234, workers=True, verbose=False)
    callbacks: list[L.Callback] = []
    monitor = None
    if args.monitor != "none":
        probes = all_probes(args.every) if args.monitor == "all" else default_probes(args.every)
        monitor = LandscapeMonitor(probes=probes, measure_first_step=False)
        callbacks.append(monitor)
    callbacks.append(Recorder(str(out), at_step=args.at_step))
    peaks: dict[str, list[int]] = {}
    if args.peaks and monitor is not None:
        from memory_peak import rss_meter

        meter, _ = rss_meter()
        instrument_peaks(monitor.probes, meter, peaks, {args.at_step})
    if args.devices:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy: object = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1)
    else:
        strategy = "auto"
    trainer = L.Trainer(
        accelerator="cpu", devices=max(args.devices, 1), strategy=strategy, max_steps=args.steps,
        logger=RecordingLogger(), callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, log_every_n_steps=1, num_sanity_val_steps=0,
    )
    task = ShardedTask(args.model, args.optimizer, shard=args.devices > 0)
    loader = torch.utils.data.DataLoader(dataset(args.model), batch_size=args.batch_size, shuffle=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(task, loader)
    rank = trainer.global_rank
    write_json(out / f"warnings_rank{rank}.json",
               sorted({str(w.message) for w in caught if "LandscapeMonitor" in str(w.message)}))
    if args.peaks:
        numel = sum(p.numel() for p in build_model(args.model).parameters())
        write_json(out / f"peaks_rank{rank}.json", {"peaks": peaks, "numel": numel, "world": trainer.world_size,
                                                    "pid": os.getpid()})


if __name__ == "__main__":
    main()
