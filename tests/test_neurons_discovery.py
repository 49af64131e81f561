"""Layer discovery: Sequential, arbitrary modules (traced), convolutions, symmetry, explicit layers, warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_landscape.neurons import Erf, NeuronDiscoveryWarning, activation_symmetry, discover_layers


def _describe(found):
    return [(l.input_name, l.output_name, l.activation, l.symmetry, l.width) for l in found.layers]


@pytest.mark.parametrize(
    "act, name, symmetry",
    [(nn.Tanh(), "tanh", "odd"), (Erf(), "erf", "odd"), (nn.Hardtanh(), "hardtanh", "odd"),
     (nn.ReLU(), "relu", "homogeneous"), (nn.LeakyReLU(0.1), "leaky_relu", "homogeneous"),
     (nn.Softplus(), "softplus", "none"), (nn.GELU(), "gelu", "none"), (nn.SiLU(), "silu", "none"),
     (nn.Hardtanh(0.0, 6.0), "hardtanh", "none")],
)
def test_symmetry_sequential_and_trace_agree(act, name, symmetry):
    net = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.2), act, nn.Linear(5, 2), nn.Tanh(), nn.Linear(2, 1))
    x = torch.randn(7, 3)
    expected = [("0", "3", name, symmetry, 5), ("3", "5", "tanh", "odd", 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean discovery must not warn
        assert _describe(discover_layers(net)) == expected
        assert _describe(discover_layers(net, forward=lambda: net(x))) == expected


def test_activation_symmetry_names():
    assert activation_symmetry("tanh") == "odd" and activation_symmetry(nn.ReLU()) == "homogeneous"
    assert activation_symmetry("softplus") == "none"
    with pytest.raises(ValueError, match="activation must be one of"):
        activation_symmetry("swishy")


class Functional(nn.Module):
    """No Sequential: activations called functionally, an in-place ReLU, a scalar multiply before erf."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 1)  # defined first: module order is not data-flow order
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 1)

    def forward(self, x):
        h = F.relu(self.fc1(x), inplace=True)
        h = torch.erf(0.7 * self.fc2(h))
        return self.head(self.fc3(h))


def test_trace_finds_layers_outside_sequential():
    net, x = Functional(), torch.randn(8, 4)
    found = discover_layers(net, forward=lambda: net(x))
    assert found.method == "trace"
    assert _describe(found) == [("fc1", "fc2", "relu", "homogeneous", 6), ("fc2", "fc3", "erf", "odd", 5)]
    with pytest.warns(NeuronDiscoveryWarning, match="no hidden neuron layers"):
        assert discover_layers(net).layers == []  # no Sequential, no forward: says so


def test_conv_layers_by_channels():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3), nn.Tanh(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(NeuronDiscoveryWarning, match="output of 3 goes through 'flatten'"):
        found = discover_layers(net, forward=lambda: net(x))  # conv → tanh → flatten → linear: not analysed
    assert _describe(found) == [("0", "3", "relu", "homogeneous", 8)]
    layer = found.layers[0]
    assert tuple(layer.input_weights().shape) == (8, 3 * 9 + 1)  # filter + bias per channel
    assert tuple(layer.output_weights().shape) == (8, 4 * 9)  # input channel i of the next conv
    assert torch.equal(layer.output_weights()[5], net[3].weight[:, 5].detach().reshape(-1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.bn, self.fc3, self.fc4 = (nn.Linear(4, 4), nn.Linear(4, 4), nn.BatchNorm1d(4),
                                                          nn.Linear(4, 4), nn.Linear(4, 1))

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        h = h + self.fc2(h)  # the hidden values of fc1 also feed the residual add
        h = torch.relu(self.bn(self.fc3(h)))  # BatchNorm between layer and activation
        return self.fc4(h)


def test_residual_stream_and_batchnorm_patterns():
    net, x = Residual(), torch.randn(8, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the residual stream is noted (log), not warned about
        found = discover_layers(net, forward=lambda: net(x))
    # fc1's hidden values are the residual stream (read by the skip connection), fc2 writes into it;
    # the BatchNorm between fc3 and its ReLU is folded
    assert sorted(found.residual) == ["fc1", "fc2"]
    assert _describe(found) == [("fc3", "fc4", "relu", "homogeneous", 4)] and found.layers[0].norm is net.bn


class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(3, 1)

    def forward(self, x):
        h = torch.relu(self.fc1(x).reshape(-1, 3))  # a reshape between the layer and its activation
        return self.fc2(h)


def test_unsupported_patterns_are_reported_not_guessed():
    net, x = Unsupported(), torch.randn(8, 4)
    with pytest.warns(NeuronDiscoveryWarning) as record:
        found = discover_layers(net, forward=lambda: net(x))
    assert found.layers == []
    text = str(record[0].message)
    assert "fc1" in text and "reshape" in text and "layers=[" in text


def test_explicit_layers():
    net, x = Functional(), torch.randn(8, 4)
    found = discover_layers(net, forward=lambda: net(x), layers=[("fc1", "fc2"), ("fc2", "fc3", "tanh")])
    # activation of the first pair found by the trace; the second as given by the user
    assert _describe(found) == [("fc1", "fc2", "relu", "homogeneous", 6), ("fc2", "fc3", "tanh", "odd", 5)]
    with pytest.warns(NeuronDiscoveryWarning, match="could not be determined"):
        found = discover_layers(net, layers=[("fc1", "fc2")])  # no forward, no Sequential
    assert found.layers[0].symmetry == "none"  # the strictest choice, announced
    with pytest.raises(ValueError, match="no submodule named 'fc9'"):
        discover_layers(net, layers=[("fc1", "fc9")])
    with pytest.raises(ValueError, match="shape mismatch"):
        discover_layers(net, layers=[("fc1", "fc3", "relu")])
