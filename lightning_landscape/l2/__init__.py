"""L2 phase transitions: order parameters, the critical weight decay along the current ray, closed
forms for deep linear nets, and the weight-decay convention of each optimizer. Pure torch."""

from lightning_landscape.l2.closed_form import (
    cross_moment_norm,
    deep_linear_critical_beta,
    deep_linear_order,
    deep_linear_radius,
    deep_linear_spinodal,
    is_whitened,
    linear_critical_beta,
    whiten,
)
from lightning_landscape.l2.convention import CONVENTION_TEXT, GroupDecay, decay_kind, group_decays
from lightning_landscape.l2.order import (
    collapse_ratio,
    parameter_norms,
    scaled_loss,
    squared_norm,
    swapped_values,
    trivial_loss,
)
from lightning_landscape.l2.ray import RayEstimate, ray_critical_beta

__all__ = [
    "CONVENTION_TEXT",
    "GroupDecay",
    "RayEstimate",
    "collapse_ratio",
    "cross_moment_norm",
    "decay_kind",
    "deep_linear_critical_beta",
    "deep_linear_order",
    "deep_linear_radius",
    "deep_linear_spinodal",
    "group_decays",
    "is_whitened",
    "linear_critical_beta",
    "parameter_norms",
    "ray_critical_beta",
    "scaled_loss",
    "squared_norm",
    "swapped_values",
    "trivial_loss",
    "whiten",
]
