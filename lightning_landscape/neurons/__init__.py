"""Neuron-level dynamics (pure torch, no Lightning): layer discovery, weight dynamics, channels to
infinity, effective width and saddle branches, local recovery."""

from lightning_landscape.neurons.channels import ChannelTracker, LayerReport, PairMeasure, PairVerdict, candidate_pairs
from lightning_landscape.neurons.discovery import (
    Discovery,
    Erf,
    NeuronDiscoveryWarning,
    NeuronLayer,
    activation_symmetry,
    discover_layers,
)
from lightning_landscape.neurons.layers import HeadLayer, batchnorm_affine
from lightning_landscape.neurons.dynamics import distances, layer_norms, neuron_norms, parameter_layers, snapshot
from lightning_landscape.neurons.recovery import STATES, classify_state, convergence_rate
from lightning_landscape.neurons.width import (
    WidthReport,
    effective_width,
    hidden_statistics,
    layer_effective_width,
    saddle_branch_indicator,
    saddle_indicator,
)

__all__ = [
    "STATES",
    "ChannelTracker",
    "Discovery",
    "Erf",
    "HeadLayer",
    "LayerReport",
    "NeuronDiscoveryWarning",
    "NeuronLayer",
    "PairMeasure",
    "PairVerdict",
    "WidthReport",
    "activation_symmetry",
    "batchnorm_affine",
    "candidate_pairs",
    "classify_state",
    "convergence_rate",
    "discover_layers",
    "distances",
    "effective_width",
    "hidden_statistics",
    "layer_effective_width",
    "layer_norms",
    "neuron_norms",
    "parameter_layers",
    "saddle_branch_indicator",
    "saddle_indicator",
    "snapshot",
]
