"""Invalid configurations are rejected at construction (or YAML parse) time, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, LandscapeMonitor

INVALID_CONSTRUCTIONS = [
    (lambda: HessianSpectrum(every_n_steps=0), ValueError, "every_n_steps"),
    (lambda: HessianSpectrum(every_n_steps=-5), ValueError, "every_n_steps"),
    (lambda: HessianSpectrum(every_n_steps=2.5), TypeError, "every_n_steps"),
    (lambda: HessianSpectrum(every_n_steps="10"), TypeError, "every_n_steps"),
    (lambda: HessianSpectrum(every_n_steps=True), TypeError, "every_n_steps"),
    (lambda: HessianSpectrum(max_iter=0), ValueError, "max_iter"),
    (lambda: HessianSpectrum(tol=0.0), ValueError, "tol"),
    (lambda: HessianSpectrum(tol=float("nan")), ValueError, "tol"),
    (lambda: HessianSpectrum(warm_noise=-1.0), ValueError, "warm_noise"),
    (lambda: HessianTrace(num_matvecs=2), ValueError, "num_matvecs"),
    (lambda: HessianTrace(method="exact"), ValueError, "method"),
    (lambda: HessianDensity(num_probes=0), ValueError, "num_probes"),
    (lambda: HessianDensity(bins=1), ValueError, "bins"),
    (lambda: HessianDensity(reorthogonalize="false"), TypeError, "reorthogonalize"),
    (lambda: HessianDensity(reorthogonalize=1), TypeError, "reorthogonalize"),
    (lambda: LandscapeMonitor(probes=["hessian_spectrum", "curvature"]), ValueError, "unknown probe name 'curvature'"),
    (lambda: LandscapeMonitor(probes="hessian_spectrum"), TypeError, "probes must be a list"),
    (lambda: LandscapeMonitor(probes=[42]), TypeError, "probes"),
    (lambda: LandscapeMonitor(probes=[HessianSpectrum(), HessianSpectrum(max_iter=5)]), ValueError, "more than once"),
    (lambda: LandscapeMonitor(probe_batch="random"), ValueError, "probe_batch"),
    (lambda: LandscapeMonitor(num_probe_batches=0), ValueError, "num_probe_batches"),
    (lambda: LandscapeMonitor(max_probe_samples=0), ValueError, "max_probe_samples"),
    (lambda: LandscapeMonitor(loss_fn=5), TypeError, "loss_fn"),
    (lambda: LandscapeMonitor(precision="fp16"), ValueError, "precision"),
    (lambda: LandscapeMonitor(on_error="ignore"), ValueError, "on_error"),
    (lambda: LandscapeMonitor(max_failures=0), ValueError, "max_failures"),
    (lambda: LandscapeMonitor(seed="a"), TypeError, "seed"),
    (lambda: LandscapeMonitor(log_prefix=""), ValueError, "log_prefix"),
    (lambda: LandscapeMonitor(log_prefix="a/"), ValueError, "log_prefix"),
    (lambda: LandscapeMonitor(every_n_steps=10), TypeError, "every_n_steps"),  # unknown option name
]


@pytest.mark.parametrize("build,error,fragment", INVALID_CONSTRUCTIONS, ids=[f[2] + str(i) for i, f in enumerate(INVALID_CONSTRUCTIONS)])
def test_invalid_construction_names_the_setting(build, error, fragment) -> None:
    with pytest.raises(error, match=fragment.replace("(", r"\(")):
        build()


def test_probe_names_build_defaults() -> None:
    monitor = LandscapeMonitor(probes=["hessian_spectrum", "hessian_trace"])
    assert [type(p) for p in monitor.probes] == [HessianSpectrum, HessianTrace]
    assert [p.every_n_steps for p in monitor.probes] == [500, 2000]


def test_state_key_depends_on_the_prefix_only() -> None:
    a = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=5)])
    b = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=7)])  # a changed interval keeps the saved state
    c = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=5)], log_prefix="other")
    d = LandscapeMonitor(probes=[HessianTrace()])  # so does a changed probe list (alert, controller state)
    assert a.state_key == b.state_key == d.state_key
    assert a.state_key != c.state_key


# ---------------------------------------------------------------------------- LightningCLI, both flavours
def _config(tmp_path: Path, flavour: str, monitor_args: dict) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 6,
            "accelerator": "cpu",
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "logger": {"class_path": f"{flavour}.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
            "callbacks": [{"class_path": "lightning_landscape.LandscapeMonitor", "init_args": monitor_args}],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(flavour: str):
    if flavour == "lightning.pytorch":
        from lightning.pytorch.cli import LightningCLI

        from lightning_landscape.tasks import MLPTask, TeacherStudentDataModule

        return LightningCLI, MLPTask, TeacherStudentDataModule
    from pytorch_lightning.cli import LightningCLI

    from pl_task import PLDataModule, PLTask

    return LightningCLI, PLTask, PLDataModule


GOOD = {
    "probe_batch": "cached",
    "num_probe_batches": 2,
    "probes": [
        {"class_path": "lightning_landscape.HessianSpectrum", "init_args": {"every_n_steps": 2, "max_iter": 10}},
        "hessian_trace",
    ],
}


@pytest.mark.parametrize("flavour", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_cli_yaml_runs(tmp_path: Path, flavour: str) -> None:
    cli_cls, model, data = _cli(flavour)
    path = _config(tmp_path, flavour, GOOD)
    cli = cli_cls(model, data, args=["fit", "--config", str(path)], save_config_kwargs={"overwrite": True})
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LandscapeMonitor))
    assert monitor.probe_batch == "cached" and monitor.probes[0].max_iter == 10
    assert monitor.num_measurements == 4  # steps 1, 2, 4, 6
    assert "landscape/hessian/lambda_max" in cli.trainer.callback_metrics


@pytest.mark.parametrize(
    "monitor_args,fragment",
    [
        ({"probes": [{"class_path": "lightning_landscape.HessianSpectrum", "init_args": {"every_n_step": 2}}]}, "every_n_step"),
        ({"probe_batchh": "fixed"}, "probe_batchh"),
        ({"probe_batch": "random"}, "probe_batch"),
        ({"num_probe_batches": "two"}, "num_probe_batches"),
        ({"on_error": "ignore"}, "on_error"),
    ],
)
def test_lightning_cli_rejects_typos_and_bad_values_at_parse_time(tmp_path: Path, capsys, monitor_args, fragment) -> None:
    cli_cls, model, data = _cli("lightning.pytorch")
    path = _config(tmp_path, "lightning.pytorch", monitor_args)
    with pytest.raises(SystemExit):
        cli_cls(model, data, args=["--config", str(path)], run=False)
    assert fragment in capsys.readouterr().err


def test_lightning_cli_rejects_out_of_range_values(tmp_path: Path, capsys) -> None:
    cli_cls, model, data = _cli("lightning.pytorch")
    args = {"probes": [{"class_path": "lightning_landscape.HessianSpectrum", "init_args": {"every_n_steps": 0}}]}
    path = _config(tmp_path, "lightning.pytorch", args)
    with pytest.raises((SystemExit, ValueError)) as info:
        cli_cls(model, data, args=["--config", str(path)], run=False)
    assert "every_n_steps" in str(info.value) + capsys.readouterr().err


def test_lightning_cli_yaml_configures_alerts_and_controller(tmp_path: Path) -> None:
    cli_cls, model, data = _cli("lightning.pytorch")
    args = {
        "probes": ["hessian_spectrum", "l2_transition"],
        "alerts": {
            "rules": [
                {"class_path": "L2Threshold", "init_args": {"margin_below": 1.5, "k": 2}},
                {"class_path": "EdgeOfStability", "init_args": {"level": 1.0, "k": 3}},
                {"class_path": "ChannelEntry"},
            ],
            "sinks": [{"class_path": "LoggingSink"}, {"class_path": "TensorBoardSink"}],
            "stop_on": ["l2_threshold"],
        },
        "weight_decay": {"target_margin": 2.0, "max_wd": 0.05, "cooldown_steps": 200, "warmup_steps": 100},
    }
    path = _config(tmp_path, "lightning.pytorch", args)
    cli = cli_cls(model, data, args=["--config", str(path)], run=False)
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LandscapeMonitor))
    assert [r.name for r in monitor.alerts.rules] == ["l2_threshold", "edge_of_stability", "channel_entry"]
    assert monitor.weight_decay.max_wd == 0.05 and monitor.weight_decay.warmup_steps == 100
    assert [p.name for p in monitor.probes] == ["hessian_spectrum", "l2_transition"]
