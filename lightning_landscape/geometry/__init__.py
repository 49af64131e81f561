"""Curvature of the loss surface: the graph of L as a hypersurface in R^{n+1}.

``exact`` works from the dense Hessian (small n); ``estimators`` from Hessian-vector products
(any n). Pure torch, no Lightning.
"""

from lightning_landscape.geometry.estimators import (
    GeometryEstimate,
    KrylovSketch,
    estimate_geometry,
    krylov_sketch,
    ricci_from_hvp,
    ricci_second_form,
    scalar_curvature_from_moments,
    trace_shape_operator,
)
from lightning_landscape.geometry.exact import (
    ExactGeometry,
    exact_geometry,
    full_hessian,
    gauss_kronecker,
    inertia,
    metric_root,
    principal_curvatures,
    ricci_curvature,
    section_gauss_kronecker,
    symmetric_shape_operator,
)

__all__ = [
    "ExactGeometry",
    "GeometryEstimate",
    "KrylovSketch",
    "estimate_geometry",
    "exact_geometry",
    "full_hessian",
    "gauss_kronecker",
    "inertia",
    "krylov_sketch",
    "metric_root",
    "principal_curvatures",
    "ricci_curvature",
    "ricci_from_hvp",
    "ricci_second_form",
    "scalar_curvature_from_moments",
    "section_gauss_kronecker",
    "symmetric_shape_operator",
    "trace_shape_operator",
]
