"""Which parameters an optimizer decays, and the penalty strength β that its weight decay stands for.

Convention of the whole package: the *penalty* ``β‖θ‖²`` is added to the loss. An optimizer whose weight
decay is *coupled* (added to the gradient: ``g + wd·θ``) — SGD, Adam, NAdam/RAdam without decoupling,
Adamax, Adagrad, Adadelta, RMSprop, ASGD — minimises exactly ``L + (wd/2)‖θ‖²``, so ``β = wd/2``
(torch's ``weight_decay = 2β``).

*Decoupled* decay (AdamW, or Adam/NAdam/RAdam with ``decoupled_weight_decay=True``) shrinks the weights
outside the preconditioner: ``θ ← θ − lr·(m̂/(√v̂+ε) + wd·θ)``. No penalty reproduces it. At a fixed
point ``m̂ = ∇L`` and the update vanishes iff ``∇L + wd(√v̂+ε)⊙θ = 0``, the stationarity condition of
``L + Σᵢ βᵢθᵢ²`` with the per-coordinate ``βᵢ = wd(√v̂ᵢ+ε)/2`` (preconditioner frozen). We report that
frozen-preconditioner equivalent, averaged with weights ``θᵢ²`` (the average that matters along the
ray ``s·θ``: ``Σᵢ βᵢ(sθᵢ)² = s²·β̄·‖θ‖²``). It is a statement about the current step only (``v̂``
moves with training); before the optimizer's first step it is undefined (``None``). The raw
``weight_decay`` is always reported next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lightning_landscape.linalg.reduction import reduce_sum
from lightning_landscape.sharded import local_view

DecayKind = Literal["coupled", "decoupled", "none", "unknown"]

#: torch optimizers whose ``weight_decay`` is added to the gradient (a true L2 penalty ``wd/2 ‖θ‖²``).
_COUPLED = ("SGD", "Adam", "Adamax", "Adagrad", "Adadelta", "RMSprop", "ASGD", "NAdam", "RAdam", "SparseAdam")
_DECOUPLED = ("AdamW",)


@dataclass(frozen=True)
class GroupDecay:
    """Weight decay of one param group and the penalty strength β it corresponds to.

    ``beta`` is ``None`` when no penalty equivalent is defined (decoupled decay before the first step).
    ``exact`` says whether ``beta`` is an exact penalty (coupled decay) or an equivalent (decoupled).
    """

    index: int
    weight_decay: float
    beta: float | None
    kind: DecayKind
    exact: bool
    params: tuple[torch.Tensor, ...]

    @property
    def decays(self) -> bool:
        return self.weight_decay > 0


def unwrap_optimizer(optimizer: object) -> object:
    """The torch optimizer behind a wrapper (Lightning's ``LightningOptimizer`` keeps it in ``_optimizer``)."""
    seen = 0
    while hasattr(optimizer, "_optimizer") and seen < 4:
        optimizer = optimizer._optimizer  # type: ignore[attr-defined]
        seen += 1
    return optimizer


def decay_kind(optimizer: object, group: dict) -> DecayKind:
    """``"coupled"``, ``"decoupled"``, ``"none"`` (weight_decay 0) or ``"unknown"`` (a foreign optimizer).

    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.1)
    >>> decay_kind(opt, opt.param_groups[0])
    'decoupled'
    """
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    if wd == 0.0:
        return "none"
    cls = type(unwrap_optimizer(optimizer))
    names = {c.__name__ for c in cls.__mro__}
    if names & set(_DECOUPLED) or bool(group.get("decoupled_weight_decay", False)):
        return "decoupled"
    if cls.__module__.startswith("torch.optim") and names & set(_COUPLED):
        return "coupled"
    return "unknown"


def _decoupled_beta(optimizer: object, group: dict, wd: float) -> float | None:
    """``wd/2 · Σ(√v̂+ε)θ² / Σθ²`` over the group (see the module docstring); None without Adam state."""
    state = getattr(unwrap_optimizer(optimizer), "state", {})
    beta2 = float(group.get("betas", (0.9, 0.999))[1])
    eps = float(group.get("eps", 1e-8))
    num = den = 0.0
    for p in group["params"]:
        st = state.get(p)
        if not st or "exp_avg_sq" not in st:
            return None
        step = float(st.get("step", 0))
        if step <= 0:
            return None
        # AMSGrad divides by its running maximum, not by exp_avg_sq.
        v = st["max_exp_avg_sq"] if group.get("amsgrad") and "max_exp_avg_sq" in st else st["exp_avg_sq"]
        # FSDP2: the state is sharded like p; each process sums its shard (reduced below)
        v_hat = local_view(v.detach()).double() / (1.0 - beta2**step)
        theta2 = local_view(p.detach()).double() ** 2
        num += float(((v_hat.sqrt() + eps) * theta2).sum())
        den += float(theta2.sum())
    num, den = reduce_sum(torch.tensor([num, den], dtype=torch.float64)).tolist()
    if den == 0.0:
        return None
    return 0.5 * wd * num / den


def group_decays(optimizer: object) -> list[GroupDecay]:
    """One :class:`GroupDecay` per param group of ``optimizer``.

    Coupled decay (SGD, Adam, ...): ``beta = weight_decay / 2`` exactly. Decoupled (AdamW): the
    frozen-preconditioner equivalent described in the module docstring. Foreign optimizers: ``wd/2``,
    marked ``kind="unknown"`` (assumed coupled).

    >>> p = torch.nn.Parameter(torch.ones(3)); q = torch.nn.Parameter(torch.ones(1))
    >>> opt = torch.optim.SGD([{"params": [p], "weight_decay": 0.02}, {"params": [q]}], lr=0.1)
    >>> [(g.beta, g.kind) for g in group_decays(opt)]
    [(0.01, 'coupled'), (0.0, 'none')]
    """
    out = []
    opt = unwrap_optimizer(optimizer)
    for i, group in enumerate(getattr(opt, "param_groups", [])):
        wd = float(group.get("weight_decay", 0.0) or 0.0)
        kind = decay_kind(opt, group)
        if kind == "decoupled":
            beta, exact = _decoupled_beta(opt, group, wd), False
        elif kind == "none":
            beta, exact = 0.0, True
        else:
            beta, exact = wd / 2.0, kind == "coupled"
        params = tuple({id(p): p for p in group["params"]}.values())  # a tied tensor listed twice counts once
        out.append(GroupDecay(i, wd, beta, kind, exact, params))
    return out


CONVENTION_TEXT = (
    "Penalty convention: loss + β‖θ‖². Coupled weight decay (SGD, Adam, RMSprop, ...): β = weight_decay/2 "
    "(exact). Decoupled decay (AdamW): no exact penalty; β is the frozen-preconditioner equivalent "
    "weight_decay·Σ(√v̂+ε)θ²/(2Σθ²) at the current step (undefined before the first step); the raw "
    "weight_decay is logged as well."
)
