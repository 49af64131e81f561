"""Scoring and printing of the scenario benchmark: recall and lead time per rule and failure type, false
alarms on healthy runs, what the controller did, the monitor's overhead, and one line per run.

Definitions (printed with the tables):

* An *alert* is every event in ``monitor.alerts.history`` of the monitored run (no controller) except
  the controller's own ``weight_decay`` events.
* A failure run is *alerted* by a rule when the rule fired strictly before the failure step (for
  ``saddle_plateau``: inside the plateau, ``plateau_start <= step < escape``). Runs whose reference did
  not fail are left out of recall (and listed).
* ``lead = failure_step − first alert step``; ``lead fraction = lead / failure_step`` (the share of the
  time to failure still left when the alert came); ``saddle_plateau``: ``lead / (escape − plateau_start)``,
  the share of the plateau still ahead.
* ``onset``: where a ramp scenario's failure mechanism starts (learning-rate / weight-decay ramp). Alerts
  before it count for recall as specified, but cannot be about the ramp: the row "any rule, after
  onset" counts only alerts at or after the onset, and pre-onset alerts are listed.
* A *false alarm* is any alert on a healthy run; the rate is per 1,000 monitored healthy steps.
* ``overhead = probe seconds / (fit seconds − probe seconds)`` of the monitored run.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable, Sequence

from _scenario_runs import FAILURE_TYPES

Job = dict[str, Any]
ANY = "any rule"
AFTER_ONSET = "any rule, after onset"


def _median(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def _window(job: Job) -> tuple[int, int] | None:
    """Steps ``[lo, hi)`` in which an alert counts as a warning, or None if the reference did not fail."""
    gt = job["ground_truth"]
    if gt.get("failure_step") is None:
        return None
    if job["kind"] == "saddle_plateau":
        return int(gt["plateau_start"]), int(gt["escape_step"])
    return 0, int(gt["failure_step"])


def first_alerts(job: Job) -> dict[str, int]:
    """rule -> first alert step (any step) of the monitored run."""
    out: dict[str, int] = {}
    for e in job["alerts"]:
        out[e["rule"]] = min(out.get(e["rule"], e["step"]), e["step"])
    return out


def warnings_of(job: Job, after_onset: bool = False) -> dict[str, int]:
    """rule -> first alert inside the job's warning window (optionally only from the onset on)."""
    win = _window(job)
    if win is None:
        return {}
    lo, hi = win
    if after_onset:
        lo = max(lo, int(job["info"].get("onset_step", 0)))
    out: dict[str, int] = {}
    for e in job["alerts"]:
        if lo <= e["step"] < hi:
            out[e["rule"]] = min(out.get(e["rule"], e["step"]), e["step"])
    return out


def lead(job: Job, step: int) -> tuple[int, float]:
    gt = job["ground_truth"]
    fail = int(gt["failure_step"])
    span = fail - int(gt["plateau_start"]) if job["kind"] == "saddle_plateau" else fail
    return fail - step, (fail - step) / max(span, 1)


def _warnings(jobs: Sequence[Job]) -> dict[str, list[str]]:
    """Library warning text -> the scenarios whose monitored/controlled runs raised it."""
    out: dict[str, list[str]] = defaultdict(list)
    for j in jobs:
        for v in ("monitored", "controlled"):
            for w in j.get(v, {}).get("warnings", []):
                if j["scenario"] not in out[w]:
                    out[w].append(j["scenario"])
    return dict(sorted(out.items()))


def summarise(healthy: Sequence[Job], failures: Sequence[Job], rules: Sequence[str]) -> dict[str, Any]:
    """Everything the tables show, JSON-friendly."""
    types = [t for t in FAILURE_TYPES if any(j["kind"] == t for j in failures)]
    keys = [*rules, ANY, AFTER_ONSET]
    recall: dict[str, dict[str, float | None]] = {r: {} for r in keys}
    lead_steps: dict[str, dict[str, float | None]] = {r: {} for r in keys}
    lead_frac: dict[str, dict[str, float | None]] = {r: {} for r in keys}
    counts: dict[str, dict[str, int]] = {}
    for t in types:
        jobs = [j for j in failures if j["kind"] == t]
        failed = [j for j in jobs if _window(j) is not None]
        late = sum(1 for j in failed if not warnings_of(j) and any(
            e["step"] >= int(j["ground_truth"]["failure_step"]) for e in j["alerts"]))
        counts[t] = {"runs": len(jobs), "failed": len(failed), "detected_only_late": late}
        for r in [*rules, ANY, AFTER_ONSET]:
            hits = []
            for j in failed:
                w = warnings_of(j, after_onset=r == AFTER_ONSET)
                step = min(w.values()) if (r in (ANY, AFTER_ONSET) and w) else w.get(r)
                if step is not None:
                    hits.append(lead(j, step))
            recall[r][t] = len(hits) / len(failed) if failed else None
            lead_steps[r][t] = _median(h[0] for h in hits)
            lead_frac[r][t] = _median(h[1] for h in hits)
    pre_onset = [{"run": f"{j['scenario']}/s{j['seed']}", "rule": e["rule"], "step": e["step"],
                  "onset": int(j["info"]["onset_step"]), "message": e["message"]}
                 for j in failures if "onset_step" in j["info"] for e in j["alerts"]
                 if e["step"] < j["info"]["onset_step"]]
    steps = sum(j["monitored"]["steps"] for j in healthy)
    false_alarms = [{"run": f"{j['scenario']}/s{j['seed']}", "rule": e["rule"], "step": e["step"], "key": e["key"],
                     "message": e["message"]} for j in healthy for e in j["alerts"]]
    per_rule_fa = {r: 1000 * sum(f["rule"] == r for f in false_alarms) / steps if steps else None for r in rules}
    prevented: dict[str, float | None] = {}
    for t in ("l2_collapse", "channel"):
        jobs = [j for j in failures if j["kind"] == t and "controlled" in j and _window(j) is not None]
        if jobs:
            prevented[t] = sum(j["controlled"]["failure_step"] is None for j in jobs) / len(jobs)
    changed = [f"{j['scenario']}/s{j['seed']}" for j in healthy if j.get("controller_actions", 0) > 0]
    with_ctl = [j for j in healthy if "controlled" in j]
    mismatch = [f"{j['scenario']}/s{j['seed']}" for j in [*healthy, *failures]
                if not j["monitored_vs_reference"]["identical"]]
    mismatch_ctl = [f"{j['scenario']}/s{j['seed']}" for j in [*healthy, *failures]
                    if "controlled" in j and not j["controlled"]["vs_reference_before_first_action"]["identical"]]
    all_jobs = [*healthy, *failures]
    return {
        "failure_counts": counts,
        "recall": recall[ANY],
        "median_lead_steps": lead_steps[ANY],
        "median_lead_fraction": lead_frac[ANY],
        "recall_after_onset": recall[AFTER_ONSET],
        "pre_onset_alerts": pre_onset,
        "recall_per_rule": recall,
        "median_lead_steps_per_rule": lead_steps,
        "median_lead_fraction_per_rule": lead_frac,
        "healthy_runs": len(healthy),
        "healthy_steps": steps,
        "false_alarms": len(false_alarms),
        "false_alarms_per_1000_steps": 1000 * len(false_alarms) / steps if steps else None,
        "false_alarms_per_1000_steps_per_rule": per_rule_fa,
        "false_alarm_list": false_alarms,
        "controller_prevented": prevented,
        "healthy_runs_changed": len(changed),
        "healthy_runs_with_controller": len(with_ctl),
        "healthy_runs_changed_list": changed,
        "median_overhead": _median(j["overhead"] for j in all_jobs),
        "median_overhead_per_scenario": {s: _median(j["overhead"] for j in all_jobs if j["scenario"] == s)
                                         for s in dict.fromkeys(j["scenario"] for j in all_jobs)},
        "monitored_differs_from_reference": mismatch,
        "controlled_differs_before_first_action": mismatch_ctl,
        "healthy_not_trained": [f"{j['scenario']}/s{j['seed']}" for j in healthy if j["trained_ok"] is False],
        "failure_runs_that_did_not_fail": [f"{j['scenario']}/s{j['seed']}" for j in failures if _window(j) is None],
        "warnings": _warnings(all_jobs),
    }


# ----------------------------------------------------------------------------- printing
def _f(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def _short(rule: str) -> str:
    return {"edge_of_stability": "eos", "sharpness_spike": "sharp_spike", "channel_entry": "channel",
            "saddle_branch": "saddle_br", "l2_threshold": "l2"}.get(rule, rule)


def render(healthy: Sequence[Job], failures: Sequence[Job], summary: dict[str, Any], rules: Sequence[str]) -> str:
    out: list[str] = []
    types = list(summary["failure_counts"])
    # ---- ground truth
    out.append("## Ground truth (unmonitored reference runs)\n")
    rows = []
    for j in failures:
        gt = j["ground_truth"]
        extra = ""
        if j["kind"] == "saddle_plateau":
            extra = f"plateau {gt.get('plateau_start')}..{gt.get('escape_step')} at loss {_f(gt.get('plateau_level'))}"
        elif j["kind"] == "channel":
            extra = f"bound max|a| > {_f(gt['bound'], '.4g')} (start {_f(gt['max_abs_a_start'], '.4g')}, end {_f(gt['max_abs_a_end'], '.4g')})"
        elif j["kind"] == "l2_collapse" and "wd_c" in j["info"]:
            extra = (f"wd/wd_c at failure {_f(gt.get('wd_at_failure_over_wd_c'))} (spinodal "
                     f"{_f(j['info']['wd_sp'] / j['info']['wd_c'])}, predicted step {_f(j['info'].get('predicted_collapse_step'), '.0f')})")
        elif j["kind"] == "l2_collapse":
            extra = f"wd at failure {_f(gt.get('wd_at_failure'))}"
        rows.append([j["kind"], j["scenario"], j["seed"], j["reference"]["steps"], _f(gt["failure_step"]), extra])
    out.append(_table(["type", "scenario", "seed", "steps run", "failure step", "detail"], rows))
    # ---- recall
    out.append("\n## Recall (alert strictly before the failure; plateau: inside it) and lead\n")
    out.append("lead = failure_step − alert_step; fraction = lead / failure_step (saddle_plateau: lead / "
               "(escape − plateau_start)); medians over the alerted runs.\n")
    counts = summary["failure_counts"]
    header = ["rule", *[f"{t} (n={counts[t]['failed']})" for t in types]]
    rows = []
    for r in [*rules, ANY, AFTER_ONSET]:
        row = [r]
        for t in types:
            rec = summary["recall_per_rule"][r].get(t)
            if rec is None:
                row.append("-")
                continue
            ls, lf = summary["median_lead_steps_per_rule"][r][t], summary["median_lead_fraction_per_rule"][r][t]
            row.append(f"{rec:.2f}" + (f" (lead {_f(ls, '.0f')}, {_f(lf, '.2f')})" if ls is not None else ""))
        rows.append(row)
    out.append(_table(header, rows))
    for a in summary["pre_onset_alerts"]:
        out.append(f"pre-onset alert: {a['run']} {a['rule']} at step {a['step']} (ramp starts at {a['onset']}): "
                   f"{a['message'][:110]}")
    late = {t: c["detected_only_late"] for t, c in counts.items() if c["detected_only_late"]}
    if late:
        out.append(f"\nfailing runs alerted only at/after the failure: {late}")
    if summary["failure_runs_that_did_not_fail"]:
        out.append(f"failure runs whose reference did not fail (left out of recall): "
                   f"{summary['failure_runs_that_did_not_fail']}")
    # ---- false alarms
    fa = summary["false_alarms_per_1000_steps"]
    out.append(f"\n## False alarms on healthy runs\n\n{summary['false_alarms']} alerts in "
               f"{summary['healthy_runs']} healthy runs, {summary['healthy_steps']} steps: {_f(fa)} per 1,000 steps")
    per_rule = {r: v for r, v in summary["false_alarms_per_1000_steps_per_rule"].items() if v}
    if per_rule:
        out.append("per rule (per 1,000 steps): " + ", ".join(f"{r} {v:.3g}" for r, v in per_rule.items()))
    fl = summary["false_alarm_list"]
    for f in fl[:40]:
        out.append(f"  {f['run']:<26} {f['rule']:<18} step {f['step']:>5}  {f['message'][:150]}")
    if len(fl) > 40:
        out.append(f"  ... {len(fl) - 40} more (see --json)")
    # ---- controller
    out.append("\n## Weight-decay controller (default WeightDecayController)\n")
    prev = summary["controller_prevented"]
    out.append("failures prevented (failure criterion absent by the end of the controlled run): "
               + (", ".join(f"{t} {v:.2f}" for t, v in prev.items()) or "-"))
    out.append(f"healthy runs changed (any weight_decay event): {summary['healthy_runs_changed']} of "
               f"{summary['healthy_runs_with_controller']}" + (f": {summary['healthy_runs_changed_list']}"
                                                                if summary["healthy_runs_changed_list"] else ""))
    rows = []
    for j in [*failures, *healthy]:
        if "controlled" not in j:
            continue
        c = j["controlled"]
        if j["kind"] == "healthy" and not c["controller_actions"]:
            continue
        rows.append([f"{j['scenario']}/s{j['seed']}", c["controller_actions"],
                     _f(j["reference"]["final_wd"], ".3g"), _f(c["final_wd"], ".3g"),
                     _f(j["ground_truth"]["failure_step"]), _f(c["failure_step"]),
                     _f(j["reference"]["final_loss"], ".4g"), _f(c["final_loss"], ".4g"),
                     (c["actions"][0]["message"][:90] if c["actions"] else "")])
    if rows:
        out.append(_table(["run", "actions", "wd ref end", "wd ctl end", "failure ref", "failure ctl", "loss ref",
                           "loss ctl", "first action"], rows))
    # ---- side effects
    out.append("\n## Side-effect check (loss curves bit for bit)\n")
    mm, mc = summary["monitored_differs_from_reference"], summary["controlled_differs_before_first_action"]
    out.append("monitored vs reference: " + ("identical in every run" if not mm else f"DIFFERENT in {mm}"))
    out.append("controlled vs reference up to the first controller action: "
               + ("identical in every run" if not mc else f"DIFFERENT in {mc}"))
    for j in [*healthy, *failures]:
        c = j["monitored_vs_reference"]
        if not c["identical"]:
            out.append(f"  {j['scenario']}/s{j['seed']}: first difference at step {c['first_difference_step']}, "
                       f"max relative difference {_f(c['max_relative_difference'])}")
    if summary["warnings"]:
        out.append("\nwarnings from the library during monitored runs (scenarios):")
        out += [f"  {w[:200]}  [{', '.join(s)}]" for w, s in list(summary["warnings"].items())[:20]]
    # ---- per run
    out.append("\n## Runs\n")
    rows = []
    for j in [*healthy, *failures]:
        ref = j["reference"]
        firsts = first_alerts(j)
        alerts = " ".join(f"{_short(r)}@{s}" for r, s in sorted(firsts.items(), key=lambda kv: kv[1])) or "-"
        m = j["monitored"].get("measured", {})
        rows.append([j["scenario"], j["seed"], ref["steps"], _f(ref["final_loss"], ".3g"), _f(ref["final_acc"], ".3f"),
                     {True: "yes", False: "NO", None: ""}[j["trained_ok"]], _f(j["ground_truth"]["failure_step"]),
                     alerts, _f(j.get("controller_actions")), _f(m.get("hessian/eos_ratio", {}).get("max"), ".2f"),
                     _f(m.get("l2/margin", {}).get("min"), ".3g"), _f(100 * j["overhead"], ".1f"),
                     _f(j["seconds"], ".0f")])
    out.append(_table(["scenario", "seed", "steps", "final loss", "acc", "trained", "failure", "first alert per rule",
                       "ctl actions", "max eos", "min margin", "overhead %", "s"], rows))
    out.append(f"\nmedian overhead (probe s / (fit s − probe s)): {_f(100 * (summary['median_overhead'] or math.nan), '.1f')} %")
    if summary["healthy_not_trained"]:
        out.append(f"healthy runs that missed their training target: {summary['healthy_not_trained']}")
    return "\n".join(out)


def summary_table(summary: dict[str, Any]) -> str:
    """The headline numbers in one table."""
    rows = [[t, c["failed"], _f(summary["recall"].get(t), ".2f"), _f(summary["median_lead_steps"].get(t), ".0f"),
             _f(summary["median_lead_fraction"].get(t), ".2f"), _f(summary["controller_prevented"].get(t), ".2f")]
            for t, c in summary["failure_counts"].items()]
    head = _table(["failure type", "failing runs", "recall (any rule)", "median lead (steps)", "median lead fraction",
                   "controller prevented"], rows)
    return (f"{head}\n\nfalse alarms: {_f(summary['false_alarms_per_1000_steps'])} per 1,000 healthy steps "
            f"({summary['false_alarms']} in {summary['healthy_runs']} runs); healthy runs changed by the controller: "
            f"{summary['healthy_runs_changed']} of {summary['healthy_runs_with_controller']}; median overhead "
            f"{_f(100 * (summary['median_overhead'] or math.nan), '.1f')} %")
