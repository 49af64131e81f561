"""Neuron discovery on real architectures: BatchNorm ResNets (basic and bottleneck blocks) and Transformers
(nn.TransformerEncoderLayer, a hand-written fc1 → GELU → fc2 block, attention heads)."""

from __future__ import annotations

import copy
import logging
import math
import warnings

import lightning.pytorch as L
import pytest
import torch
from arch_models import BasicBlock, ResNet, Transformer
from lightning_helpers import trainer
from torch import nn
from torch.nn import functional as F

from lightning_landscape.neurons import discovery
from lightning_landscape.neurons import (
    HeadLayer,
    NeuronDiscoveryWarning,
    candidate_pairs,
    discover_layers,
    effective_width,
    hidden_statistics,
    layer_effective_width,
)

RESNET_LAYERS = [  # (input, BatchNorm folded, activation, symmetry, output, width)
    ("layer1.0.conv1", "layer1.0.bn1", "relu", "homogeneous", "layer1.0.conv2", 8),
    ("layer1.1.conv1", "layer1.1.bn1", "relu", "homogeneous", "layer1.1.conv2", 8),
    ("layer2.0.conv1", "layer2.0.bn1", "relu", "homogeneous", "layer2.0.conv2", 16),
    ("layer3.0.conv1", "layer3.0.bn1", "relu", "homogeneous", "layer3.0.conv2", 8),  # bottleneck
    ("layer3.0.conv2", "layer3.0.bn2", "relu", "homogeneous", "layer3.0.conv3", 8),
]
RESNET_RESIDUAL = {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv2", "layer2.0.downsample.0",
                   "layer3.0.conv3", "layer3.0.downsample.0"}


def _randomise_batchnorms(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters (a fresh BatchNorm is the identity map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.3)
                m.weight.copy_(torch.randn(n, generator=g))  # negative γ too
                m.bias.copy_(torch.rand(n, generator=g) + 0.5)  # keeps every ReLU alive on the probe batch


def _resnet(seed: int = 0) -> tuple[ResNet, torch.Tensor]:
    torch.manual_seed(seed)
    net = ResNet()
    _randomise_batchnorms(net, seed)
    return net.eval(), torch.randn(16, 3, 8, 8)


def test_resnet_discovery_finds_every_block_hidden_layer_and_notes_the_residual_stream(caplog):
    net, x = _resnet()
    discovery._residual_noted.discard("ResNet")  # said once per model class and process: start afresh
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="lightning_landscape.neurons.discovery"):
        warnings.simplefilter("error")  # a clean discovery: no warning
        found = discover_layers(net, forward=lambda: net(x))
    assert [(l.input_name, l.norm_name, l.activation, l.symmetry, l.output_name, l.width) for l in found.layers] \
        == RESNET_LAYERS
    assert set(found.residual) == RESNET_RESIDUAL and found.skipped == []
    notes = [r.getMessage() for r in caplog.records if "residual stream" in r.getMessage()]
    assert len(notes) == 1 and all(name in notes[0] for name in RESNET_RESIDUAL)
    with caplog.at_level(logging.INFO, logger="lightning_landscape.neurons.discovery"):
        discover_layers(net, forward=lambda: net(x))  # a second discovery does not repeat it
    assert len([r for r in caplog.records if "residual stream" in r.getMessage()]) == 1


def test_transformer_discovery_mlp_blocks_and_heads_with_their_symmetry():
    torch.manual_seed(0)
    net, tokens = Transformer(), torch.randint(0, 16, (8, 6))
    for mode in (net.train, net.eval):  # eval mode: dropout returns its input, the fast path must stay off
        mode()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            found = discover_layers(net, forward=lambda: net(tokens))
        got = [(l.kind, l.input_name, l.activation, l.symmetry, l.output_name, l.width) for l in found.layers]
        assert got == [
            ("neurons", "enc0.linear1", "relu", "homogeneous", "enc0.linear2", 32),
            ("neurons", "enc1.linear1", "gelu", "none", "enc1.linear2", 32),
            ("neurons", "mlp.fc1", "gelu", "none", "mlp.fc2", 32),
            ("heads", "enc0.self_attn", "attention", "none", "enc0.self_attn.out_proj", 4),
            ("heads", "enc1.self_attn", "attention", "none", "enc1.self_attn.out_proj", 4),
        ]
        assert set(found.residual) == {"enc0.linear2", "enc1.linear2", "mlp.fc2"}


@pytest.mark.parametrize("name", [spec[0] for spec in RESNET_LAYERS])
def test_folded_weights_reproduce_the_batchnorm_in_eval_mode(name):
    net, x = _resnet(seed=1)
    layer = next(l for l in discover_layers(net, forward=lambda: net(x)).layers if l.name == name)
    conv, bn = layer.input_module, layer.norm
    inputs = []
    handle = conv.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with torch.no_grad():
        net(x)
    handle.remove()
    with torch.no_grad():
        expected = bn(conv(inputs[0]))  # independent: the BatchNorm module itself, eval mode
    w = layer.input_weights()
    folded_w, folded_b = w[:, :-1].reshape(conv.weight.shape), w[:, -1]
    got = F.conv2d(inputs[0], folded_w, folded_b, conv.stride, conv.padding)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # a fold that forgets the running mean (or the running variance) is off by O(1)
    assert (F.conv2d(inputs[0], folded_w, folded_b + (bn.weight / torch.sqrt(bn.running_var + bn.eps)
                                                      * bn.running_mean).detach(), conv.stride, conv.padding)
            - expected).abs().max() > 1e-2


def _plant_duplicate(block: BasicBlock, i: int, j: int, scale: float = 2.5, shift: float = 0.7) -> None:
    """Channel j of conv1 → bn1 computes exactly channel i's pre-activation, with different raw weights:
    w_j = c·w_i, running_mean_j = c·μ_i + shift (c > 0), γ_j chosen so that γ_j c / σ_j = γ_i / σ_i."""
    conv, bn = block.conv1, block.bn1
    with torch.no_grad():
        conv.weight[j] = scale * conv.weight[i]
        bn.running_mean[j] = scale * bn.running_mean[i] + shift
        bn.running_var[j] = 3.0 * bn.running_var[i] + 0.5
        a_i = bn.weight[i] / torch.sqrt(bn.running_var[i] + bn.eps)
        bn.weight[j] = a_i * torch.sqrt(bn.running_var[j] + bn.eps) / scale
        # β_j − a_j μ_j = β_i − a_i μ_i with a_j = a_i / c
        bn.bias[j] = bn.bias[i] - a_i * bn.running_mean[i] + a_i / scale * bn.running_mean[j]


def test_duplicate_channels_behind_a_batchnorm_merge_effective_width_drops_by_one():
    net, x = _resnet(seed=2)
    block = net.layer1[0]

    def width_of(found):
        layer = next(l for l in found.layers if l.name == "layer1.0.conv1")
        return layer_effective_width(layer, *hidden_statistics([layer], lambda: net(x))[layer.name])

    assert width_of(discover_layers(net, forward=lambda: net(x))).effective_width == 8  # before the plant
    _plant_duplicate(block, 1, 5)
    # independent check of the plant: the two channels' BatchNorm outputs are identical
    with torch.no_grad():
        pre = block.bn1(block.conv1(torch.randn(4, 8, 6, 6)))
    assert torch.allclose(pre[:, 1], pre[:, 5], atol=1e-5)
    found = discover_layers(net, forward=lambda: net(x))
    stats = hidden_statistics(found.layers, lambda: net(x))
    report = width_of(found)
    assert report.effective_width == 8 - 1 and report.negligible == []
    assert [sorted(u for u, _ in g) for g in report.groups] == [[1, 5]]
    layer = next(l for l in found.layers if l.name == "layer1.0.conv1")
    # channels: the planted pair is the closest, at ε = 0 on folded weights
    best = candidate_pairs(layer.input_weights(), layer.output_weights(), layer.symmetry, k=1)[0]
    assert (best.i, best.j) == (1, 5) and best.eps < 1e-5
    # the raw (unfolded) filters do not coincide: without the fold nothing merges
    raw = layer.input_module.weight.detach().reshape(8, -1)
    h_rms, scale = stats["layer1.0.conv1"]
    assert effective_width(raw, layer.output_weights(), h_rms, scale, "none").effective_width == 8


def test_explicit_layers_across_a_normalisation_are_folded_or_refused():
    net, x = _resnet()
    spec = [("layer1.0.conv1", "layer1.0.conv2", "relu")]
    layer = discover_layers(net, forward=lambda: net(x), layers=spec).layers[0]
    assert layer.norm is net.layer1[0].bn1 and layer.norm_name == "layer1.0.bn1"
    with pytest.raises(ValueError, match="'layer1.0.conv2' is a residual stream"):  # conv2 → bn2 → + x
        discover_layers(net, forward=lambda: net(x), layers=[("layer1.0.conv2", "layer1.1.conv1", "relu")])
    with pytest.warns(NeuronDiscoveryWarning, match="layer1.0.bn1"):  # no forward, not a Sequential: cannot check
        discover_layers(net, layers=spec)

    class LNBlock(nn.Module):
        def __init__(self, norm: nn.Module) -> None:
            super().__init__()
            self.fc1, self.norm, self.fc2 = nn.Linear(4, 6), norm, nn.Linear(6, 1)

        def forward(self, x):
            return self.fc2(torch.relu(self.norm(self.fc1(x))))

    for norm, what in ((nn.LayerNorm(6), "LayerNorm 'norm'"),
                       (nn.BatchNorm1d(6, track_running_stats=False), "BatchNorm1d 'norm'.*no running statistics")):
        block, xs = LNBlock(norm), torch.randn(8, 4)
        with pytest.raises(ValueError, match=what):
            discover_layers(block, forward=lambda: block(xs), layers=[("fc1", "fc2", "relu")])
        with pytest.warns(NeuronDiscoveryWarning, match=what):  # automatic discovery: skipped, with the reason
            assert discover_layers(block, forward=lambda: block(xs)).layers == []
    # Sequential without a forward: BatchNorm folded there too, LayerNorm refused
    seq = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 1))
    assert discover_layers(seq).layers[0].norm is seq[1]
    seq = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 1))
    with pytest.raises(ValueError, match="LayerNorm '1'"):
        discover_layers(seq, layers=[("0", "3", "tanh")])


def _mha_model(seed: int = 0):
    torch.manual_seed(seed)
    enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    return enc, torch.randn(6, 5, 16)


def test_head_outputs_captured_match_an_independent_attention_computation():
    enc, x = _mha_model()
    heads = next(l for l in discover_layers(enc, forward=lambda: enc(x)).layers if isinstance(l, HeadLayer))
    stats = hidden_statistics([heads], lambda: enc(x))
    mha = enc.self_attn
    with torch.no_grad():  # z_h = softmax(q_h k_hᵀ/√d) v_h, by hand
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        split = lambda t: t.reshape(6, 5, 4, 4).transpose(1, 2)  # noqa: E731 [batch, head, seq, d_head]
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 2.0, dim=-1)
        z = att @ split(v)
        ms = z.double().pow(2).sum(-1).mean(dim=(0, 2))  # per head E‖z_h‖²
        out = z.transpose(1, 2).reshape(6, 5, 16) @ mha.out_proj.weight.T
    h_rms, scale = stats["self_attn"]
    assert torch.allclose(h_rms, ms.sqrt(), rtol=1e-5)
    assert math.isclose(scale, float(out.double().pow(2).mean().sqrt()), rel_tol=1e-5)


def test_duplicate_and_dead_heads_reduce_the_effective_number_of_heads():
    enc, x = _mha_model(seed=3)
    mha, e, dh = enc.self_attn, 16, 4

    def heads_width():
        layer = next(l for l in discover_layers(enc, forward=lambda: enc(x)).layers if isinstance(l, HeadLayer))
        return layer_effective_width(layer, *hidden_statistics([layer], lambda: enc(x))["self_attn"]).effective_width

    assert heads_width() == 4
    with torch.no_grad():
        for part in range(3):  # head 2 := head 0 in q, k and v
            rows = slice(part * e + 2 * dh, part * e + 3 * dh)
            src = slice(part * e, part * e + dh)
            mha.in_proj_weight[rows] = mha.in_proj_weight[src]
            mha.in_proj_bias[rows] = mha.in_proj_bias[src]
    assert heads_width() == 3
    # the merge is exact: head 0 with output columns O_0 + O_2 and head 2 silenced gives the same output
    with torch.no_grad():
        before = enc(x)
        o = mha.out_proj.weight
        saved = o.clone()
        o[:, 0:dh] += o[:, 2 * dh:3 * dh]
        o[:, 2 * dh:3 * dh] = 0
        assert torch.allclose(enc(x), before, atol=1e-5)
        o.copy_(saved)
        o[:, 3 * dh:4 * dh] = 0  # head 3 dead: no output weights
    assert heads_width() == 2


# ---------------------------------------------------------------- in a Trainer
class _Task(L.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.mark.parametrize("kind", ["resnet", "transformer"])
def test_neuron_probes_run_in_a_trainer_and_emit_per_layer_values(kind):
    from lightning_landscape import LandscapeMonitor
    from lightning_landscape.probes.neurons import ChannelDetector, SaddleBranches, WeightDynamics

    L.seed_everything(0, verbose=False)
    if kind == "resnet":
        net, x = ResNet(), torch.randn(64, 3, 8, 8)
        neurons = [spec[0] for spec in RESNET_LAYERS]
        heads: list[str] = []
    else:
        net, x = Transformer(), torch.randint(0, 16, (64, 6))
        neurons, heads = ["enc0.linear1", "enc1.linear1", "mlp.fc1"], ["enc0.self_attn", "enc1.self_attn"]
    y = torch.randint(0, 3, (64,))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    probes = [WeightDynamics(every_n_steps=2, histogram_every=0), ChannelDetector(every_n_steps=1, min_points=3,
                                                                                  window=3),
              SaddleBranches(every_n_steps=2, compute_spectrum=False)]
    monitor = LandscapeMonitor(probes=probes)
    plain = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NeuronDiscoveryWarning)
        L.seed_everything(1, verbose=False)
        trainer(max_steps=4, callbacks=[monitor]).fit(_Task(net), data)
    L.seed_everything(1, verbose=False)
    trainer(max_steps=4).fit(_Task(plain), data)
    for (name, p), q in zip(net.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(p, q), name  # weights and BatchNorm buffers: the probes changed nothing
    tags = monitor.last_values
    widths = {n: spec[-1] for n, spec in zip(neurons, RESNET_LAYERS)} if kind == "resnet" else \
        {**{n: 32 for n in neurons}, **{n: 4 for n in heads}}
    widths = {f"net.{n}": w for n, w in widths.items()}
    neurons, heads = [f"net.{n}" for n in neurons], [f"net.{n}" for n in heads]
    for name, width in widths.items():
        assert tags[f"landscape/neurons/{name}/width"] == width
        assert 0 < tags[f"landscape/neurons/{name}/effective_width"] <= width
        assert tags[f"landscape/weights/{name}/max_in_norm"] > 0
        assert tags[f"landscape/weights/{name}/max_out_norm"] > 0
    for name in neurons:  # channels are a neuron notion: heads are not searched
        assert 0 < tags[f"landscape/neurons/{name}/channel_eps"] < math.inf
        assert f"landscape/neurons/{name}/channel_score" in tags
    for name in heads:
        assert f"landscape/neurons/{name}/channel_eps" not in tags


class _Attend(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, **kwargs)

    def forward(self, q, kv, mask):
        return self.attn(q, kv, kv, key_padding_mask=mask)[0]


@pytest.mark.parametrize("kwargs", [{}, {"kdim": 8, "vdim": 8}, {"add_bias_kv": True, "add_zero_attn": True},
                                    {"bias": False, "batch_first": True}])
def test_head_capture_leaves_the_attention_output_unchanged(kwargs):
    torch.manual_seed(0)
    net = _Attend(**kwargs).eval()
    batch_first = kwargs.get("batch_first", False)
    kdim = kwargs.get("kdim", 16)
    q = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    kv = torch.randn(3, 7, kdim) if batch_first else torch.randn(7, 3, kdim)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, -2:] = True
    layer = discover_layers(net, forward=lambda: net(q, kv, mask)).layers[0]
    assert isinstance(layer, HeadLayer) and layer.width == 4 and layer.input_weights().shape[0] == 4
    seen = []
    with torch.no_grad():
        expected = net(q, kv, mask)
    stats = hidden_statistics([layer], lambda: seen.append(net(q, kv, mask)))
    assert torch.allclose(seen[0], expected, atol=1e-6)
    h_rms, scale = stats["attn"]
    assert h_rms.shape == (4,) and bool((h_rms > 0).all()) and scale > 0
