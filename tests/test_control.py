"""WeightDecayController: raises/lowers within limits, cooldown, per group, initial_weight_decay, state."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_landscape.alerts import Event
from lightning_landscape.control import WeightDecayController

MARGIN = "landscape/l2/margin_tracked"


def channel(step=0, key="fc:1-2"):
    return Event("channel_entry", step, 0, {"eps": 1e-3}, "warning", "pair", key=key)


def make_opt(wds=(1e-3,), cls=torch.optim.SGD):
    net = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in wds])
    groups = [{"params": list(layer.parameters()), "weight_decay": wd} for layer, wd in zip(net, wds)]
    return cls(groups, lr=0.1)


def wds(opt):
    return [g["weight_decay"] for g in opt.param_groups]


def test_raise_on_channel_entry_by_factor_up_to_max_with_cooldown():
    opt = make_opt()
    c = WeightDecayController(raise_factor=3.0, max_wd=5e-3, cooldown_steps=10)
    evs = c.apply(opt, 1, 0, {}, [channel(1)])
    assert wds(opt) == [pytest.approx(3e-3)]
    (ev,) = evs
    assert (ev.rule, ev.step, ev.key, ev.severity) == ("weight_decay", 1, "group_0", "warning")
    assert ev.values["old"] == 1e-3 and ev.values["new"] == pytest.approx(3e-3) and "channel_entry" in ev.message
    assert c.apply(opt, 5, 0, {}, [channel(5)]) == []  # cooling down
    assert wds(opt) == [pytest.approx(3e-3)]
    c.apply(opt, 11, 0, {}, [channel(11)])
    assert wds(opt) == [5e-3]  # capped at max_wd
    assert c.apply(opt, 30, 0, {}, [channel(30)]) == []  # at the limit: no change, no event
    assert opt.param_groups[0]["initial_weight_decay"] == 1e-3
    assert c.scalars() == {"landscape/l2/weight_decay": 5e-3} and c.num_raises == 2


def test_lower_when_margin_below_target_restores_margin():
    opt = make_opt((1e-2,))
    c = WeightDecayController(target_margin=2.0, lower_factor=0.5, cooldown_steps=0)
    (ev,) = c.apply(opt, 1, 0, {MARGIN: 1.6}, [])
    assert wds(opt) == [pytest.approx(1e-2 * 1.6 / 2.0)]  # wd * margin / target
    assert "1.6" in ev.message and ev.values["margin"] == 1.6
    c.apply(opt, 2, 0, {MARGIN: 0.5}, [])  # far below: bounded by lower_factor (at most halve)
    assert wds(opt) == [pytest.approx(8e-3 * 0.5)]
    assert c.apply(opt, 3, 0, {MARGIN: 2.5}, []) == []  # above target: nothing
    assert c.apply(opt, 4, 0, {MARGIN: math.inf}, []) == [] and c.apply(opt, 5, 0, {MARGIN: math.nan}, []) == []
    assert opt.param_groups[0]["initial_weight_decay"] == 1e-2 and c.num_lowers == 2


def test_margin_feedback_loop_converges_to_target():
    """Margin = beta_c / wd (exact for the ray estimate of a deep linear net): the controller must
    bring a run at margin 1.2 back to >= target and stay there."""
    beta_c = 0.012
    opt = make_opt((1e-2,))
    c = WeightDecayController(target_margin=2.0, lower_factor=0.5, cooldown_steps=5, min_wd=1e-4)
    margins = []
    for step in range(0, 60):
        m = beta_c / opt.param_groups[0]["weight_decay"]
        margins.append(m)
        c.apply(opt, step, 0, {MARGIN: m}, [])
    assert margins[0] == pytest.approx(1.2)
    assert margins[-1] == pytest.approx(2.0) and min(margins[10:]) >= 2.0 - 1e-9


def test_lower_respects_min_wd():
    opt = make_opt((1e-3,))
    c = WeightDecayController(min_wd=8e-4, cooldown_steps=0)
    c.apply(opt, 1, 0, {MARGIN: 1.0}, [])
    assert wds(opt) == [8e-4]


def test_collapse_avoidance_wins_and_caps_raises():
    opt = make_opt((1e-3,))
    c = WeightDecayController(raise_factor=4.0, target_margin=2.0, cooldown_steps=0)
    # channel and a thin margin at once: lower, not raise
    c.apply(opt, 1, 0, {MARGIN: 1.5}, [channel(1)])
    assert wds(opt)[0] < 1e-3
    # margin 3 (last known): a raise may go at most to margin 2, i.e. by 1.5x, not 4x
    opt = make_opt((1e-3,))
    c = WeightDecayController(raise_factor=4.0, target_margin=2.0, cooldown_steps=0)
    c.apply(opt, 1, 0, {MARGIN: 3.0}, [])
    c.apply(opt, 2, 0, {}, [channel(2)])
    assert wds(opt) == [pytest.approx(1.5e-3)]
    assert c.apply(opt, 3, 0, {MARGIN: 2.0}, [channel(3)]) == []  # no room left: no raise


def test_per_param_group_selection():
    opt = make_opt((1e-3, 0.0, 2e-3))
    c = WeightDecayController(raise_factor=2.0, cooldown_steps=0)  # default: groups with wd > 0
    evs = c.apply(opt, 1, 0, {}, [channel(1)])
    assert wds(opt) == [pytest.approx(2e-3), 0.0, pytest.approx(4e-3)]
    assert [e.key for e in evs] == ["group_0", "group_2"]
    assert "initial_weight_decay" not in opt.param_groups[1]
    assert set(c.scalars()) == {"landscape/l2/weight_decay", "landscape/l2/weight_decay/group_0",
                                "landscape/l2/weight_decay/group_2"}
    opt = make_opt((1e-3, 0.0))
    c = WeightDecayController(param_groups=[1], raise_from_zero=1e-5, cooldown_steps=0)
    c.apply(opt, 1, 0, {}, [channel(1)])
    assert wds(opt) == [1e-3, 1e-5]  # only group 1, raised from zero
    with pytest.raises(ValueError, match="param_groups.*out of range"):
        WeightDecayController(param_groups=[3]).apply(opt, 1, 0, {}, [])


def test_trigger_rules_and_dict_events():
    opt = make_opt()
    c = WeightDecayController(trigger_rules=["saddle_branch"], cooldown_steps=0)
    assert c.apply(opt, 1, 0, {}, [channel(1)]) == []
    assert len(c.apply(opt, 2, 0, {}, [{"rule": "saddle_branch", "values": {}}])) == 1


def test_works_with_adamw_and_training_uses_the_new_value():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.0)
    c = WeightDecayController(param_groups=[0], raise_from_zero=0.5, max_wd=0.5, cooldown_steps=0)
    c.apply(opt, 1, 0, {}, [channel(1)])
    w.grad = torch.zeros(3)
    opt.step()  # zero gradient: only the decoupled decay moves w
    assert torch.allclose(w.detach(), torch.full((3,), 1 - 0.1 * 0.5))


def test_state_round_trip_and_reapply():
    def script(c, opt, lo, hi):
        out = []
        for t in range(lo, hi):
            scal = {MARGIN: 1.5} if t in (40, 41, 70) else {}
            evs = [channel(t)] if t % 7 == 0 else []
            out += [e.to_dict() for e in c.apply(opt, t, 0, scal, evs)]
        return out, wds(opt)

    kw = dict(raise_factor=1.5, target_margin=2.0, max_wd=1e-2, cooldown_steps=15)
    full, final = script(WeightDecayController(**kw), make_opt(), 0, 100)
    assert len(full) >= 4
    for split in (10, 41, 75):
        c, opt = WeightDecayController(**kw), make_opt()
        before, _ = script(c, opt, 0, split)
        state = copy.deepcopy(c.state_dict())
        opt_state = copy.deepcopy(opt.state_dict())
        # resume: a fresh optimizer built by configure_optimizers, then the checkpoint's optimizer state
        c2, opt2 = WeightDecayController(**kw), make_opt()
        c2.load_state_dict(state)
        opt2.load_state_dict(opt_state)
        c2.reapply(opt2)
        after, final2 = script(c2, opt2, split, 100)
        assert before + after == full and final2 == final
        assert opt2.param_groups[0]["initial_weight_decay"] == 1e-3
    # reapply restores the applied value into an optimizer rebuilt without its state (weights-only resume)
    c, opt = WeightDecayController(**kw), make_opt()
    script(c, opt, 0, 50)
    fresh = make_opt()
    c2 = WeightDecayController(**kw)
    c2.load_state_dict(c.state_dict())
    c2.reapply(fresh)
    assert wds(fresh) == wds(opt) and fresh.param_groups[0]["initial_weight_decay"] == 1e-3


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(raise_factor=1.0), "raise_factor"),
        (dict(lower_factor=0.0), "lower_factor"),
        (dict(lower_factor=1.5), "lower_factor"),
        (dict(target_margin=1.0), "target_margin"),
        (dict(min_wd=-1.0), "min_wd"),
        (dict(min_wd=0.2, max_wd=0.1), "max_wd"),
        (dict(cooldown_steps=-1), "cooldown_steps"),
        (dict(param_groups=[]), "param_groups"),
        (dict(param_groups=[-1]), "param_groups"),
        (dict(raise_from_zero=0.0), "raise_from_zero"),
        (dict(margin_tag=""), "margin_tag"),
    ],
)
def test_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=rf"WeightDecayController\.{word}"):
        WeightDecayController(**kwargs)


def test_warmup_steps_defers_every_change() -> None:
    import torch

    from lightning_landscape.alerts import Event
    from lightning_landscape.control import WeightDecayController

    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, weight_decay=1e-2)
    c = WeightDecayController(warmup_steps=50, cooldown_steps=0)
    assert c.apply(opt, 10, 0, {"landscape/l2/margin_tracked": 0.5}, [Event("channel_entry", 10)]) == []
    assert opt.param_groups[0]["weight_decay"] == 1e-2
    assert [round(e.values["new"], 6) for e in c.apply(opt, 50, 0, {"landscape/l2/margin_tracked": 0.5}, [])] == [0.005]
    with pytest.raises(ValueError, match="warmup_steps"):
        WeightDecayController(warmup_steps=-1)
