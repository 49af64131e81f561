"""What each ready-made alert means, how sure we are, and what to do: the runbook.

Every event a ready-made rule fires carries its entry's ``action`` (``Event.runbook``), so the log
line, the TensorBoard text and the webhook payload tell the person reading it what to try first. The
README's runbook table is this dictionary (a test keeps the two in step).

>>> RUNBOOK["edge_of_stability"].action.split(";")[0]
'Lower the learning rate (or stretch its warm-up)'
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_landscape._readme import replace_block


@dataclass(frozen=True)
class RunbookEntry:
    """One alert's runbook: ``meaning`` (what was measured), ``confidence`` (how sure the verdict is, and
    what it is judged on) and ``action`` (what to do, first thing first)."""

    meaning: str
    confidence: str
    action: str


RUNBOOK: dict[str, RunbookEntry] = {
    "edge_of_stability": RunbookEntry(
        meaning="The sharpness (Adam: the preconditioned sharpness) exceeds what the optimizer can follow at the "
        "current learning rate: eos_ratio (tracked at every step from the last λmax and the current learning "
        "rate) stayed at or above the rule's level. Past the edge of stability the loss oscillates, spikes or "
        "diverges.",
        confidence="λmax is exact to the Lanczos tolerance and the threshold is the optimizer's own (2/lr, "
        "(2+2μ)/lr, 38/lr for Adam at β1 = 0.9); a ratio near 1 is normal in large-learning-rate training, so "
        "the default level is well above 1. Adam's ratio is judged only once its second-moment estimate has "
        "warmed up.",
        action="Lower the learning rate (or stretch its warm-up); for Adam/AdamW add or lengthen the warm-up; "
        "gradient clipping bounds the damage of a spike but does not remove the cause.",
    ),
    "sharpness_spike": RunbookEntry(
        meaning="λmax jumped well above the trend of the previous measurements (a change point, not progressive "
        "sharpening).",
        confidence="A CUSUM change point on log λmax against a trend model, ≥ +25 % over its prediction: steady "
        "sharpening does not fire it, a single jump does. Causes differ (a learning-rate step, a bad batch in a "
        "'current' probe batch, a channel meeting the edge of stability).",
        action="Look at the learning-rate schedule and the loss around this step; if eos_ratio is also rising, "
        "lower the learning rate.",
    ),
    "l2_threshold": RunbookEntry(
        meaning="Weight decay is close to the strength at which the network collapses to the trivial solution "
        "(key 'margin'), or the collapse is under way: the collapse ratio fell to a fraction of its best (key "
        "'collapse').",
        confidence="The margin is a lower bound on the true threshold (errs towards alarm), exact for deep linear "
        "nets; it is judged only once the model has learned and its weights are in equilibrium with the decay. "
        "The 'collapse' key is a direct observation, not a forecast.",
        action="Lower the weight decay (or let WeightDecayController do it), or stop a weight-decay ramp; after a "
        "collapse of a net with two or more hidden layers, lowering it does not bring the fit back (hysteresis): "
        "restore a checkpoint from before it.",
    ),
    "channel_entry": RunbookEntry(
        meaning="Two neurons are entering a channel to infinity: their input weights merge while their output "
        "weights grow with opposite signs; the loss creeps down slowly and λmax grows until it meets the edge of "
        "stability.",
        confidence="All six criteria held over a full window of measurements (ε shrinking, ‖a‖ growing, log-log "
        "slope ≈ −1, a stable GLU coefficient, opposite signs, slow loss decrease); 'confirmed' when λmax also "
        "grew. Channels are slow: this is a warning, not an emergency.",
        action="Add or raise weight decay (WeightDecayController raises it on this event), or lower the learning "
        "rate; the pair is named in the event's key.",
    ),
    "saddle": RunbookEntry(
        meaning="Training sits near a strict saddle: the gradient is small and the Hessian has a clearly negative "
        "eigenvalue.",
        confidence="Judged only with a small gradient and |λmin| above both ratio_tol·λmax and the rounding floor; "
        "gradient descent with noise usually escapes by itself.",
        action="Usually wait; if the loss stays flat, raise the learning rate or momentum, or restart from a "
        "larger initialisation scale.",
    ),
    "saddle_branch": RunbookEntry(
        meaning="The function is representable by a narrower network (dead, zero-output or duplicated units) "
        "while the gradient is small and the loss is above its floor: a saddle branch of the wider net.",
        confidence="Effective width below the width with a small gradient; the named layers lost units.",
        action="Re-initialise the dead or duplicated units, raise the initialisation scale, or lower weight decay "
        "if it drove units to zero.",
    ),
    "nonfinite": RunbookEntry(
        meaning="A measured value (or the probe-batch loss) is NaN/Inf: training has diverged or overflowed.",
        confidence="A direct observation.",
        action="Restore the last good checkpoint and lower the learning rate; with mixed precision check the "
        "loss scaler; add gradient clipping.",
    ),
    "weight_decay": RunbookEntry(
        meaning="WeightDecayController changed a param group's weight decay (the event says from what to what, "
        "and why).",
        confidence="An action taken, not a measurement.",
        action="Nothing, if intended; the original value is kept in param_groups[i]['initial_weight_decay'].",
    ),
}


def runbook_action(rule: str) -> str:
    """The action line for events of ``rule`` ("" for a rule without an entry).

    >>> runbook_action("nonfinite").startswith("Restore")
    True
    >>> runbook_action("my_custom_rule")
    ''
    """
    entry = RUNBOOK.get(rule)
    return entry.action if entry is not None else ""


def markdown() -> str:
    """The README's runbook table (one row per entry)."""
    lines = ["| rule | what it means | how sure we are | what to do |", "|---|---|---|---|"]
    for name, e in RUNBOOK.items():
        lines.append(f"| `{name}` | {e.meaning} | {e.confidence} | {e.action} |")
    return "\n".join(lines)


def update_readme(path: str) -> None:
    """Replace the table between ``<!-- runbook:start -->`` and ``<!-- runbook:end -->`` in ``path``."""
    replace_block(path, "runbook", markdown())


if __name__ == "__main__":  # python -m lightning_landscape.alerts.runbook --update README.md
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update_readme(sys.argv[2])
    else:
        print(markdown())
