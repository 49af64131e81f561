"""A value out of range in a LightningCLI YAML prints one short error naming the setting, not ~150
lines of chained tracebacks; every other uncaught exception keeps its full traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lightning_landscape import _cli_errors

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    from lightning.pytorch.cli import LightningCLI
    from lightning_landscape.tasks import MLPTask, TeacherStudentDataModule
    LightningCLI(MLPTask, TeacherStudentDataModule, args=["fit", "--config", sys.argv[1]])
    """
)


def _run(tmp_path: Path, monitor_args: dict) -> subprocess.CompletedProcess:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 2, "accelerator": "cpu", "logger": False, "enable_progress_bar": False,
            "enable_checkpointing": False, "enable_model_summary": False,
            "callbacks": [{"class_path": "lightning_landscape.LandscapeMonitor", "init_args": monitor_args}],
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "cli.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("LIGHTNING_LANDSCAPE_TRACEBACK", None)
    return subprocess.run([sys.executable, str(tmp_path / "cli.py"), str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


EVERY_N_STEPS_0 = {"probes": [{"class_path": "lightning_landscape.HessianSpectrum", "init_args": {"every_n_steps": 0}}]}


def test_range_error_in_yaml_is_one_short_message(tmp_path: Path) -> None:
    """End to end, in a fresh interpreter (the hook acts on an uncaught exception only)."""
    result = _run(tmp_path, EVERY_N_STEPS_0)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "error: HessianSpectrum.every_n_steps must be an int >= 1, got 0" in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) <= 15, output


@pytest.mark.parametrize(
    "monitor_args, expected",
    [
        (EVERY_N_STEPS_0, "HessianSpectrum.every_n_steps must be an int >= 1, got 0"),
        ({"log_prefix": "a b//c"}, "log_prefix must be '/'-separated segments"),
        ({"alerts": {"sinks": [{"class_path": "WebhookSink", "init_args": {"url": "http://"}}]}}, "must name a host"),
    ],
)
def test_the_hook_finds_the_setting_error_inside_the_lightning_cli_chain(tmp_path: Path, monitor_args, expected,
                                                                          capsys) -> None:
    from lightning.pytorch.cli import LightningCLI

    from lightning_landscape.tasks import MLPTask, TeacherStudentDataModule

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning_landscape.LandscapeMonitor", "init_args": monitor_args}]}}))
    with pytest.raises(ValueError) as info:
        LightningCLI(MLPTask, TeacherStudentDataModule, args=["--config", str(tmp_path / "config.yaml")], run=False)
    assert expected not in str(info.value).splitlines()[0]  # what would be printed first without the hook
    root = _cli_errors.setting_error(info.value)
    assert root is not None and expected in str(root)
    _cli_errors._hook(lambda *a: pytest.fail("delegated"))(type(info.value), info.value, info.tb)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 2


def test_full_traceback_on_request(monkeypatch) -> None:
    err = _raise_chained(_package_error(), "jsonargparse._typehints")
    seen: list[BaseException] = []
    monkeypatch.setenv("LIGHTNING_LANDSCAPE_TRACEBACK", "1")
    _cli_errors._hook(lambda kind, exc, tb: seen.append(exc))(type(err), err, err.__traceback__)
    assert seen == [err]


def _package_error() -> ValueError:
    """A fresh setting error raised by the package (re-raising one exception object extends its traceback)."""
    from lightning_landscape.validation import check_positive_int

    try:
        check_positive_int("every_n_steps", 0)
    except ValueError as err:
        return err
    raise AssertionError("not raised")


def _raise_chained(inner: BaseException, outer_module: str) -> BaseException:
    """An exception chained the way jsonargparse chains it, raised from a frame of ``outer_module``."""
    scope = {"__name__": outer_module, "inner": inner}
    exec("def wrap():\n    try:\n        raise inner\n    except Exception as ex:\n"
         "        raise ValueError('Does not validate') from ex\n", scope)
    try:
        scope["wrap"]()
    except ValueError as err:
        return err
    raise AssertionError("not raised")


def test_hook_shortens_only_setting_errors_raised_by_the_package(capsys) -> None:
    ours = _package_error
    seen: list[BaseException] = []
    hook = _cli_errors._hook(lambda kind, exc, tb: seen.append(exc))

    shortened = _raise_chained(ours(), "jsonargparse._typehints")
    hook(type(shortened), shortened, shortened.__traceback__)
    assert seen == [] and capsys.readouterr().err.startswith("error: every_n_steps must be an int >= 1, got 0\n")

    not_jsonargparse = _raise_chained(ours(), "somewhere.else")  # the package's error outside a configuration
    user_error = _raise_chained(ValueError("user model"), "jsonargparse._typehints")  # the user's own class
    plain = RuntimeError("boom")
    for exc in (not_jsonargparse, user_error, plain):
        hook(type(exc), exc, exc.__traceback__)
    assert seen == [not_jsonargparse, user_error, plain] and capsys.readouterr().err == ""
