"""The weight-decay sweep: thresholds against closed forms, order verdicts, hysteresis, resume, CLI,
and the user-module path."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from lightning_landscape.cli.main import main
from lightning_landscape.scan import ScanConfig, analyse, builtin_problem, run_scan
from lightning_landscape.scan.user import user_problem

FAST = dict(max_steps=1500, curvature=False)


@pytest.fixture(scope="module")
def linear1():
    p = builtin_problem("linear-1")
    cfg = ScanConfig(beta_max=1.5 * p.theory["beta_c"], num_points=12, **FAST)
    return p, analyse(run_scan(p, cfg))


@pytest.fixture(scope="module")
def linear2():
    p = builtin_problem("linear-2")
    cfg = ScanConfig(beta_max=1.5 * p.theory["beta_spinodal"], num_points=12, **FAST)
    return p, analyse(run_scan(p, cfg))


def test_one_hidden_layer_is_continuous_at_the_closed_form(linear1) -> None:
    p, a = linear1
    beta_c = p.theory["beta_c"]
    assert a.order == "continuous", a.evidence
    lo, hi = a.collapse_up_interval
    assert lo - 1e-9 <= beta_c <= hi + 1e-9 or abs(a.collapse_up - beta_c) <= a.grid_step
    assert abs(a.global_beta - beta_c) <= a.grid_step
    assert a.ray_beta == pytest.approx(beta_c, rel=0.01)
    assert a.recover_down is not None and a.hysteresis_gap_steps < 2  # no hysteresis
    assert a.jump_fraction < 0.3


def test_two_hidden_layers_jump_with_hysteresis(linear2) -> None:
    p, a = linear2
    assert a.order == "jump", a.evidence
    assert a.jump_fraction > 0.4
    # going up, the trained branch survives to its spinodal; the global threshold is the closed-form β_c
    assert abs(a.collapse_up - p.theory["beta_spinodal"]) <= a.grid_step
    assert abs(a.global_beta - p.theory["beta_c"]) <= a.grid_step
    assert a.ray_beta == pytest.approx(p.theory["beta_c"], rel=0.01)
    # going down, the collapsed model never comes back (the trivial point is a local minimum for β > 0)
    assert a.hysteresis_lower_bound and a.recover_down is None and a.hysteresis_gap_steps >= 2


def test_resume_continues_exactly(tmp_path) -> None:
    p = builtin_problem("linear-1", width=4, input_dim=4, num_samples=64)
    cfg = ScanConfig(beta_max=1.5 * p.theory["beta_c"], num_points=4, max_steps=300, curvature=False)
    reference = run_scan(builtin_problem("linear-1", width=4, input_dim=4, num_samples=64), cfg)

    class Stop(Exception):
        pass

    def interrupt(point, index, total):
        if index == 3:
            raise Stop

    with pytest.raises(Stop):
        run_scan(p, cfg, state_dir=tmp_path, on_point=interrupt)
    saved = json.loads((tmp_path / "scan_state.json").read_text())
    assert len(saved["points"]) == 4 and not saved["finished"]
    resumed = run_scan(builtin_problem("linear-1", width=4, input_dim=4, num_samples=64), cfg, state_dir=tmp_path)
    assert [q.index for q in resumed] == list(range(7))
    assert [q.theta_sq for q in resumed] == pytest.approx([q.theta_sq for q in reference], rel=1e-6, abs=1e-12)
    with pytest.raises(RuntimeError, match="different scan"):
        run_scan(p, ScanConfig(beta_max=1.0, num_points=4, max_steps=300, curvature=False), state_dir=tmp_path)


def test_cli_writes_outputs_and_table(tmp_path, capsys) -> None:
    out = tmp_path / "scan"
    args = ["scan", "--task", "linear-1", "--width", "4", "--input-dim", "4", "--samples", "64", "--points", "4",
            "--steps", "300", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "order" in text and "evidence:" in text and "β_c" in text
    for name in ("points.csv", "scan.json", "phase_diagram.png", "scan_state.json"):
        assert (out / name).stat().st_size > 0
    payload = json.loads((out / "scan.json").read_text())
    assert len(payload["points"]) == 7 and payload["analysis"]["order"] in ("continuous", "jump", "none")
    assert "lambda_max" in payload["points"][0]
    assert main(args) == 0  # a rerun of a finished scan only re-reads it
    assert main(["scan", "--task", "linear-1", "--beta-max", "oops", "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        ScanConfig(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="increasing"):
        ScanConfig(betas=[0.2, 0.1])
    with pytest.raises(ValueError, match="task must be one of"):
        builtin_problem("cnn-3")


DM_SOURCE = textwrap.dedent(
    """
    import torch
    import lightning.pytorch as L
    from lightning_landscape.tasks import make_teacher_student

    class TinyData(L.LightningDataModule):
        def __init__(self, n: int = 128, input_dim: int = 4):
            super().__init__()
            self.n, self.input_dim = n, input_dim

        def setup(self, stage=None):
            x, y = make_teacher_student(self.n, self.input_dim, seed=1)
            self.ds = torch.utils.data.TensorDataset(x, y - y.mean())

        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.ds, batch_size=self.n)
    """
)


def test_user_module_by_import_path_and_cli_config(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "tiny_dm.py").write_text(DM_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = user_problem("lightning_landscape.tasks.models:MLPTask",
                           '{"input_dim": 4, "hidden": [6], "activation": "tanh", "bias": false}',
                           "tiny_dm:TinyData", '{"n": 128}')
    assert len(problem.batches) == 1 and problem.decayed == ["net.0.weight", "net.2.weight"]
    points = run_scan(problem, ScanConfig(beta_max=0.6, num_points=3, directions="up", max_steps=200, curvature=False))
    assert points[0].theta_sq > points[-1].theta_sq and all(torch.isfinite(torch.tensor(q.loss)) for q in points)

    config = tmp_path / "fit.yaml"
    config.write_text(textwrap.dedent(
        """
        model:
          class_path: lightning_landscape.tasks.models.MLPTask
          init_args: {input_dim: 4, hidden: [6, 6], activation: tanh, bias: false}
        data:
          class_path: tiny_dm.TinyData
          init_args: {n: 96}
        trainer: {max_epochs: 1}
        """
    ))
    rc = main(["scan", "--config", str(config), "--betas", "0,0.05,0.1", "--up-only", "--steps", "100",
               "--no-curvature", "--no-plot", "--no-progress", "--out", str(tmp_path / "user_scan")])
    assert rc == 0
    assert "MLPTask on 1 batch(es) of tiny_dm.TinyData" in capsys.readouterr().out


def test_config_builds_only_documented_kinds(tmp_path, monkeypatch, capsys) -> None:
    """A nested class_path naming a callable that is not an allowed class is refused before it is called
    (the marker file is never written); model/data must be LightningModule/LightningDataModule classes."""
    from lightning_landscape.scan.user import read_cli_config

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.yaml"
    evil.write_text(textwrap.dedent(
        f"""
        model:
          class_path: lightning_landscape.tasks.models.MLPTask
          init_args:
            input_dim: 4
            hidden: [{{class_path: os.system, init_args: {{command: "touch {marker}"}}}}]
        """
    ))
    rc = main(["scan", "--config", str(evil), "--betas", "0,0.1", "--up-only", "--no-plot", "--no-progress",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    assert "model.init_args.hidden[0]" in err and "'os.system' is not a class" in err
    for path, where in (("builtins.eval", "model"), ("subprocess.Popen", "model")):
        evil.write_text(f"model:\n  class_path: lightning_landscape.tasks.models.MLPTask\n  init_args:\n"
                        f"    act: {{class_path: {path}, init_args: {{args: 'touch {marker}'}}}}\n")
        with pytest.raises(ValueError, match="may only build nn.Module"):
            read_cli_config(evil)
    top = tmp_path / "top.yaml"
    top.write_text(f"model:\n  class_path: subprocess.Popen\n  init_args: {{args: [touch, '{marker}']}}\n")
    with pytest.raises(ValueError, match="must name a LightningModule subclass"):
        user_problem(config=top)
    with pytest.raises(ValueError, match="--module.*must name a LightningModule"):
        user_problem("torch.nn:Linear", '{"in_features": 2, "out_features": 1}')
    assert not marker.exists()
    ok = tmp_path / "ok.yaml"
    ok.write_text("model:\n  class_path: x.Y\n  init_args:\n    act: {class_path: torch.nn.Tanh}\n"
                  "    opt: [{class_path: torch.nn.Linear, init_args: {in_features: 2, out_features: 3}}]\n")
    built = read_cli_config(ok)["model"]["init_args"]
    assert isinstance(built["act"], torch.nn.Tanh) and built["opt"][0].weight.shape == (3, 2)


def test_analysis_flags_a_branch_worse_than_its_own_rays() -> None:
    """critical_beta is a lower bound of the global threshold: a median ray estimate above the detected
    global threshold means the trained branch is not the model's best — said, not hidden."""
    from lightning_landscape.scan.engine import ScanPoint

    def pt(i, b, theta, obj, ray):
        return ScanPoint(i, "up", b, obj - b * theta, obj, theta, 1.0, 0.9 if theta > 0.1 else 0.0,
                         critical_beta=ray, converged=True)

    pts = [pt(0, 0.0, 4.0, 0.1, 0.5), pt(1, 0.1, 3.0, 0.9, 0.5), pt(2, 0.2, 2.0, 1.1, 0.5), pt(3, 0.3, 0.0, 1.0, 0.5)]
    a = analyse(pts)
    assert a.global_beta == pytest.approx(0.15) and a.ray_beta == 0.5
    assert any("exceeds the global threshold" in w for w in a.warnings)
    assert a.num_converged == 4 and a.order != "undetermined"
    pts = [pt(i, p.beta, p.theta_sq, p.objective, 0.12) for i, p in enumerate(pts)]
    assert not any("exceeds" in w for w in analyse(pts).warnings)
