"""Flatness of the loss landscape: pure maths on a parameter space and a loss function (no Lightning).

* :mod:`.directions` — filter-normalised random directions (Li et al., 2018), moving/restoring weights;
* :mod:`.sharpness` — SAM sharpness ``L(θ + ρ g/|g|) − L(θ)`` and adaptive ASAM sharpness;
* :mod:`.escape` — random-walk escape radius (smallest relative step raising the loss by δ);
* :mod:`.slices` — 1-D and 2-D loss slices around θ.

Every function takes ``loss_fn`` (a no-argument callable returning the loss at the parameters as they
are *now*) and a :class:`~lightning_landscape.parameters.ParameterSpace`; weights are always put back
bit-exactly.
"""

from lightning_landscape.flatness.directions import (
    BIAS_MODES,
    filter_normalize,
    filter_normalized_direction,
    restored,
    set_flat,
)
from lightning_landscape.flatness.escape import EscapeResult, escape_radius, escape_radius_along
from lightning_landscape.flatness.sharpness import (
    SharpnessResult,
    asam_perturbation,
    perturbed_loss_change,
    sam_perturbation,
    sharpness,
)
from lightning_landscape.flatness.slices import cosine, slice_1d, slice_2d

__all__ = [
    "BIAS_MODES",
    "EscapeResult",
    "SharpnessResult",
    "asam_perturbation",
    "cosine",
    "escape_radius",
    "escape_radius_along",
    "filter_normalize",
    "filter_normalized_direction",
    "perturbed_loss_change",
    "restored",
    "sam_perturbation",
    "set_flat",
    "sharpness",
    "slice_1d",
    "slice_2d",
]
