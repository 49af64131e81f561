"""L2 on normalised nets: scale-invariant groups (BatchNorm CNN, LayerNorm Transformer), the probe's ray
without them, the effective learning rate, and a scan of the same BatchNorm net whose printed verdict is
checked against its own points.csv."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import torch

from lightning_landscape.cli.main import main
from lightning_landscape.l2.invariance import scale_invariant_groups
from lightning_landscape.l2.order import scaled_loss
from lightning_landscape.probes import ProbeContext
from lightning_landscape.probes.l2 import L2Transition

TESTS = Path(__file__).resolve().parent
BN_ARGS = '{"channels": 4, "n": 32}'


@pytest.fixture(autouse=True)
def _nets_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def _loss(net):
    return lambda: net.training_step(net.data)


def _changes(net, names: list[str], loss_fn, c: float) -> float:
    params = [dict(net.named_parameters())[n] for n in names]
    base = scaled_loss(params, loss_fn, 1.0)
    return abs(scaled_loss(params, loss_fn, c) - base) / abs(base)


def test_scale_invariant_groups_are_found_and_really_invariant() -> None:
    """Expected groups from the architectures (conv → BN; proj → LayerNorm); each checked at c = 0.6 and
    1.8 (not the detection's own 1/2 and 2); parameters left out must change the loss when scaled."""
    from l2_nets import BNResNet, LNTransformer

    bn = BNResNet(channels=4, n=32).train()  # BatchNorm: invariant with batch statistics
    groups = scale_invariant_groups(bn, _loss(bn))
    assert [g.names for g in groups] == [("stem.weight",), ("block.conv1.weight",), ("block.conv2.weight",)]
    for g in groups:
        for c in (0.6, 1.8):
            assert _changes(bn, list(g.names), _loss(bn), c) < 1e-3
    for name in ("bn.weight", "block.bn2.weight", "head.weight"):
        assert _changes(bn, [name], _loss(bn), 0.6) > 1e-2

    tf = LNTransformer().eval()  # LayerNorm: per-sample statistics, invariant in eval mode too
    groups = scale_invariant_groups(tf, _loss(tf))
    assert [g.names for g in groups] == [("proj.weight", "proj.bias")]
    assert _changes(tf, ["proj.weight", "proj.bias"], _loss(tf), 1.8) < 1e-3
    # post-LN: linear2 feeds norm2 through the residual sum, so it is *not* invariant (and not reported)
    assert _changes(tf, ["layer.linear2.weight"], _loss(tf), 1.8) > 2e-3


def _train(net, opt, steps: int) -> None:
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        net.training_step(net.data).backward()
        opt.step()


def test_probe_leaves_invariant_groups_out_and_reports_effective_lr() -> None:
    from l2_nets import LNTransformer

    torch.manual_seed(0)
    tf = LNTransformer()
    opt = torch.optim.Adam(tf.parameters(), lr=1e-2, weight_decay=1e-2)
    _train(tf, opt, 60)
    tf.eval()
    out = L2Transition().run(ProbeContext(tf, _loss(tf), step=1, optimizer=opt)).scalars
    w, b = tf.proj.weight.detach().double(), tf.proj.bias.detach().double()
    inv_sq = float(w.pow(2).sum() + b.pow(2).sum())
    total = sum(float(p.detach().double().pow(2).sum()) for p in tf.parameters())
    assert out["invariant_groups"] == 1
    assert out["invariant_sq"] == pytest.approx(inv_sq, rel=1e-9)
    assert out["theta_sq"] == pytest.approx(total - inv_sq, rel=1e-9)
    assert out["effective_lr/median"] == pytest.approx(1e-2 / inv_sq, rel=1e-9)
    assert out["effective_lr/proj"] == out["effective_lr/max"]
    whole = L2Transition(scale_invariant="include").run(ProbeContext(tf, _loss(tf), step=1, optimizer=opt)).scalars
    assert whole["theta_sq"] == pytest.approx(total, rel=1e-9) and "invariant_sq" not in whole


def _table(text: str, label: str) -> str:
    line = next(ln for ln in text.splitlines() if ln.startswith(label))
    return re.split(r"\s{2,}", line[len(label):].strip())[0]  # the "detected" column


def _interval(cell: str) -> tuple[float, float] | None:
    m = re.search(r"\[([-\d.e]+), ([-\d.e]+)\]", cell)
    return None if m is None else (float(m.group(1)), float(m.group(2)))


@pytest.fixture(scope="module")
def bn_scan(tmp_path_factory):
    import sys

    sys.path.insert(0, str(TESTS))
    out = tmp_path_factory.mktemp("bn_scan")
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["scan", "--module", "l2_nets:BNResNet", "--module-args", BN_ARGS, "--betas", "0,0.04,0.08,0.12,0.16",
                   "--steps", "120", "--no-curvature", "--no-plot", "--no-progress", "--out", str(out)])
    assert rc == 0
    with open(out / "points.csv") as fh:
        rows = list(csv.DictReader(fh))
    return buf.getvalue(), rows


def test_bn_scan_verdict_matches_its_own_points(bn_scan) -> None:
    """An independent reading of points.csv (raw columns, the documented rule) gives the printed collapse
    interval, recovery, and the converged count."""
    text, rows = bn_scan
    up = [r for r in rows if r["direction"] == "up"]
    down = [r for r in rows if r["direction"] == "down"]
    scale = max(float(r["theta_sq"]) for r in up if float(r["beta"]) > 0)
    fit = max(float(r["collapse_ratio"]) for r in up)

    def collapsed(r) -> bool:
        return float(r["theta_sq"]) / scale < 0.02 or float(r["collapse_ratio"]) < 0.02 * fit

    flags = [collapsed(r) for r in up]
    first = next(k for k in range(len(up)) if all(flags[k:]))
    assert first > 0, "the test net must fit at β = 0 and collapse inside the grid"
    assert _interval(_table(text, "collapse, up sweep (β_up)")) == (float(up[first - 1]["beta"]), float(up[first]["beta"]))
    recovered = [r for r in down if not collapsed(r)]
    rec = _table(text, "recovery, down sweep (β_down)")
    assert rec.startswith("none") if not recovered else _interval(rec)[0] == float(recovered[0]["beta"])
    n_conv = sum(r["converged"] == "True" for r in rows)
    assert _table(text, "points converged (|∇ objective| < tol)") == f"{n_conv} of {len(rows)}"
    if n_conv < len(rows):
        assert f"warning: {len(rows) - n_conv} of {len(rows)} points did not converge" in text
    assert [r["collapsed"] == "True" for r in rows] == [collapsed(r) for r in rows]


def test_bn_probe_margin_is_a_lower_bound_of_the_scan(bn_scan) -> None:
    """L2Transition on the same BatchNorm net trained with SGD at β = 0.02: the threshold it implies
    (critical_beta) lies below where the scan loses the fit going up."""
    from l2_nets import BNResNet

    text, _ = bn_scan
    lo, _hi = _interval(_table(text, "collapse, up sweep (β_up)"))
    torch.manual_seed(0)
    net = BNResNet(channels=4, n=32)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=0.04)
    _train(net, opt, 150)
    out = L2Transition().run(ProbeContext(net, _loss(net), step=1, optimizer=opt)).scalars
    # 3 conv → BN groups; one shrunk by the decay towards BatchNorm's eps may no longer pass as invariant
    assert out["invariant_groups"] >= 2
    print(_table(text, "collapse, up sweep (β_up)"), _table(text, "global threshold (L+β‖θ‖² = L_trivial)"),
          out["critical_beta"], _table(text, "order"))
    assert 0 < out["critical_beta"] <= lo
    glob = _table(text, "global threshold (L+β‖θ‖² = L_trivial)")
    if glob != "—":
        assert out["critical_beta"] <= float(glob)
    assert out["margin"] == pytest.approx(out["critical_beta"] / 0.02)


def test_scan_without_convergence_gives_no_verdict(tmp_path, capsys) -> None:
    rc = main(["scan", "--module", "l2_nets:BNResNet", "--module-args", BN_ARGS, "--betas", "0,0.1", "--up-only",
               "--steps", "3", "--no-curvature", "--no-plot", "--no-progress", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert rc == 0
    assert _table(text, "order") == "undetermined"
    assert "no verdict: 0 of 2 points converged" in text
