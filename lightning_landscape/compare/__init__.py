"""Offline comparison of solutions (checkpoints): hidden-unit alignment, loss barriers, clustering.

Pure torch/numpy/scipy (no Lightning). The symmetry of a model (which tensor axes move together when
hidden units are permuted) is read off an ``nn.Sequential`` MLP/CNN directly, or derived by tracing the
forward pass of any other model on example inputs (ResNets: residual streams, BatchNorm, projection
shortcuts; Transformers: attention heads, MLP units), or written by hand as a :class:`PermutationSpec`.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0) is not None
True
>>> a = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
>>> b = permute_model(a, random_permutations(permutation_spec(a)))
>>> data = (torch.randn(64, 4), torch.randn(64, 1))
>>> result = compare_pair(a, b, data, num_points=5)
>>> result.distance_after < 1e-6, result.after.barrier
(True, 0.0)
"""

from lightning_landscape.compare.align import (
    METHODS,
    Alignment,
    activation_matching,
    align,
    parameter_distance,
    weight_matching,
)
from lightning_landscape.compare.barrier import (
    BarrierResult,
    PairComparison,
    compare_pair,
    interpolate_states,
    loss_barrier,
    permutation_barrier,
    plot_pair_paths,
    plot_paths,
    reset_batchnorm_stats,
)
from lightning_landscape.compare.cluster import (
    Clustering,
    PairwiseResult,
    Ultrametricity,
    cluster_solutions,
    pairwise_comparisons,
    plot_dendrogram,
    ultrametricity,
)
from lightning_landscape.compare.data import (
    classification_error,
    default_loss,
    example_input,
    iter_batches,
    mean_loss,
)
from lightning_landscape.compare.permute import (
    identity_permutations,
    invert,
    permute_model,
    permute_state_dict,
    random_permutations,
)
from lightning_landscape.compare.spec import (
    Axis,
    HiddenLayer,
    PermutationSpec,
    check_spec,
    find_sequential,
    permutation_spec,
)

__all__ = [
    "METHODS",
    "Alignment",
    "Axis",
    "BarrierResult",
    "Clustering",
    "HiddenLayer",
    "PairComparison",
    "PairwiseResult",
    "PermutationSpec",
    "Ultrametricity",
    "activation_matching",
    "align",
    "check_spec",
    "classification_error",
    "cluster_solutions",
    "compare_pair",
    "default_loss",
    "example_input",
    "find_sequential",
    "identity_permutations",
    "interpolate_states",
    "invert",
    "iter_batches",
    "loss_barrier",
    "mean_loss",
    "pairwise_comparisons",
    "parameter_distance",
    "permutation_barrier",
    "permutation_spec",
    "permute_model",
    "permute_state_dict",
    "plot_dendrogram",
    "plot_pair_paths",
    "plot_paths",
    "random_permutations",
    "reset_batchnorm_stats",
    "ultrametricity",
    "weight_matching",
]
