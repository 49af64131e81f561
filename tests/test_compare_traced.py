"""``compare`` on real architectures: the permutation spec derived by tracing ResNets and Transformers.

Each permuted twin is built here by weight surgery on the modules themselves (not from the derived spec),
so the tests check the derived spec against an independent account of the network's symmetries.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_landscape.compare import (
    Axis,
    PermutationSpec,
    compare_pair,
    permutation_spec,
    permute_model,
    random_permutations,
    weight_matching,
)
from arch_models import BasicBlock
from lightning_landscape.compare.spec import check_spec


# ------------------------------------------------------------------------------------------- models
class Bottleneck(nn.Module):
    """ResNet bottleneck block (1×1 → 3×3 → 1×1, functional ReLUs, identity shortcut)."""

    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(x + self.bn3(self.conv3(out)))


class ResNet(nn.Module):
    def __init__(self, c: int = 6, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(c, c), Bottleneck(c, 5))
        self.layer2 = nn.Sequential(BasicBlock(c, 2 * c, stride=2), BasicBlock(2 * c, 2 * c))
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TokenTransformer(nn.Module):
    """Embedding (+ an optional learned position tensor), 2 post-LN encoder layers, LayerNorm, mean, head."""

    def __init__(self, pos: bool, vocab: int = 6, length: int = 10, d: int = 16, heads: int = 4, ff: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(length, d)) if pos else None
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if self.pos is not None:
            h = h + self.pos[: x.shape[1]]
        return self.head(self.norm(self.encoder(h)).mean(1))


def _randomise(model: nn.Module, x: torch.Tensor, seed: int) -> nn.Module:
    """Parameters and BatchNorm statistics away from their defaults (so a missed tensor shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


def _resnet(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 100))
    y = torch.randint(0, 10, (48,), generator=torch.Generator().manual_seed(seed + 200))
    return _randomise(ResNet(), x, seed), x, y


def _transformer(pos: bool, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randint(0, 6, (32, 10), generator=torch.Generator().manual_seed(seed + 100))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(seed + 200))
    return _randomise(TokenTransformer(pos), x, seed), x, y


# ------------------------------------------------------------------------------------------- surgery
def _rows(t: torch.Tensor, p: torch.Tensor, block: int = 1, dim: int = 0, offset: int = 0) -> None:
    """In place: units ``offset + [c*block, (c+1)*block)`` along ``dim`` re-ordered by ``p``."""
    idx = torch.arange(t.shape[dim])
    units = (p[:, None] * block + torch.arange(block)).reshape(-1) + offset
    idx[offset : offset + units.numel()] = units
    t.copy_(t.index_select(dim, idx))


def _out(layer: nn.Module, p: torch.Tensor, bn: nn.BatchNorm2d | None = None) -> None:
    _rows(layer.weight.data, p)
    if getattr(layer, "bias", None) is not None:
        _rows(layer.bias.data, p)
    if bn is not None:
        for t in (bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var):
            _rows(t, p)


def _in(layer: nn.Module, p: torch.Tensor) -> None:
    _rows(layer.weight.data, p, dim=1)


def _perm(n: int, g: torch.Generator) -> torch.Tensor:
    while True:  # never the identity, so every group really moves
        p = torch.randperm(n, generator=g)
        if not torch.equal(p, torch.arange(n)):
            return p


@torch.no_grad()
def _permuted_resnet(net: ResNet, seed: int) -> nn.Module:
    import copy

    twin, g = copy.deepcopy(net), torch.Generator().manual_seed(seed)
    s1, s2 = _perm(6, g), _perm(12, g)  # the two residual streams
    _out(twin.stem[0], s1, twin.stem[1])
    basic, bottle = twin.layer1
    h = _perm(6, g)
    _in(basic.conv1, s1), _out(basic.conv1, h, basic.bn1), _in(basic.conv2, h), _out(basic.conv2, s1, basic.bn2)
    h1, h2 = _perm(5, g), _perm(5, g)
    _in(bottle.conv1, s1), _out(bottle.conv1, h1, bottle.bn1), _in(bottle.conv2, h1)
    _out(bottle.conv2, h2, bottle.bn2), _in(bottle.conv3, h2), _out(bottle.conv3, s1, bottle.bn3)
    down, last = twin.layer2
    h = _perm(12, g)
    _in(down.downsample[0], s1), _out(down.downsample[0], s2, down.downsample[1])
    _in(down.conv1, s1), _out(down.conv1, h, down.bn1), _in(down.conv2, h), _out(down.conv2, s2, down.bn2)
    h = _perm(12, g)
    _in(last.conv1, s2), _out(last.conv1, h, last.bn1), _in(last.conv2, h), _out(last.conv2, s2, last.bn2)
    _in(twin.fc, s2)
    return twin


@torch.no_grad()
def _permuted_transformer(net: TokenTransformer, seed: int) -> nn.Module:
    import copy

    twin, g = copy.deepcopy(net), torch.Generator().manual_seed(seed)
    d, heads = 16, 4
    stream = _perm(d, g)
    _rows(twin.embed.weight.data, stream, dim=1)
    if twin.pos is not None:  # the position tensor added in forward moves with the stream
        _rows(twin.pos.data, stream, dim=1)
    for layer in twin.encoder.layers:
        attn, hp, mlp = layer.self_attn, _perm(heads, g), _perm(24, g)
        for section in range(3):  # whole heads: head_dim rows of each of q, k, v
            _rows(attn.in_proj_weight.data, hp, block=d // heads, offset=section * d)
            _rows(attn.in_proj_bias.data, hp, block=d // heads, offset=section * d)
        _rows(attn.out_proj.weight.data, hp, block=d // heads, dim=1)
        _out(layer.linear1, mlp)
        _in(layer.linear2, mlp)
        _rows(attn.in_proj_weight.data, stream, dim=1)
        _out(attn.out_proj, stream)
        _in(layer.linear1, stream)
        _out(layer.linear2, stream)
        for norm in (layer.norm1, layer.norm2):
            _out(norm, stream)
    _out(twin.norm, stream)
    _in(twin.head, stream)
    return twin


CASES = {
    "resnet": lambda: (*_resnet(), _permuted_resnet),
    "transformer": lambda: (*_transformer(pos=False), _permuted_transformer),
    "transformer_pos": lambda: (*_transformer(pos=True), _permuted_transformer),
}


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_compare_recovers_a_hand_permuted_copy_exactly(case: str, method: str) -> None:
    net, x, y, surgery = CASES[case]()
    twin = surgery(net, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), rtol=1e-5, atol=1e-5)  # the surgery is a symmetry
    result = compare_pair(net, twin, (x, y), method=method, num_points=5)
    assert result.distance_before > 1.0  # really moved in parameter space
    assert result.distance_after < 1e-5
    assert result.after.barrier == pytest.approx(0.0, abs=1e-6)
    spec = permutation_spec(net, x)
    aligned = permute_model(twin, result.alignment.perms, spec)
    for key, value in net.state_dict().items():  # every tensor back in place, BatchNorm statistics included
        assert torch.equal(aligned.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), net(x), rtol=1e-5, atol=1e-5)


def test_resnet_spec_shares_one_permutation_per_residual_stream() -> None:
    net, x, _, _ = CASES["resnet"]()
    spec = permutation_spec(net, x)
    sizes = sorted(h.size for h in spec.layers)
    assert sizes == [5, 5, 6, 6, 12, 12, 12]  # 2 streams + 5 block-internal hidden layers
    by_key = {(a.key, a.dim): h.name for h in spec.layers for a in h.axes}
    stream1 = by_key[("stem.0.weight", 0)]
    for key in ("stem.1.running_var", "layer1.0.bn2.weight", "layer1.0.conv1.weight", "layer1.1.bn3.running_mean",
                "layer1.1.conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.conv1.weight"):
        dim = 1 if key.endswith("conv1.weight") or key == "layer2.0.downsample.0.weight" else 0
        assert by_key[(key, dim)] == stream1, key
    stream2 = by_key[("layer2.0.downsample.0.weight", 0)]
    for key, dim in (("layer2.0.downsample.1.running_var", 0), ("layer2.0.bn2.bias", 0), ("layer2.1.conv1.weight", 1),
                     ("layer2.1.bn2.running_mean", 0), ("fc.weight", 1)):
        assert by_key[(key, dim)] == stream2, key
    assert ("fc.weight", 0) not in by_key and ("stem.0.weight", 1) not in by_key  # outputs and inputs stay


def test_transformer_spec_moves_whole_heads_and_the_stream_with_its_position_tensor() -> None:
    net, x, _, _ = CASES["transformer_pos"]()
    spec = permutation_spec(net, x)
    assert [(h.name, h.size) for h in spec.layers] == [
        ("embed", 16),
        ("encoder.layers.0.self_attn.heads", 4), ("encoder.layers.0.linear1", 24),
        ("encoder.layers.1.self_attn.heads", 4), ("encoder.layers.1.linear1", 24),
    ]
    heads = spec.layer("encoder.layers.0.self_attn.heads")
    assert Axis("encoder.layers.0.self_attn.in_proj_weight", 0, 4, 16) in heads.axes  # the k section, 4 rows a head
    assert Axis("encoder.layers.0.self_attn.out_proj.weight", 1, 4, 0) in heads.axes
    stream = {(a.key, a.dim) for a in spec.layer("embed").axes}
    assert {("pos", 1), ("embed.weight", 1), ("encoder.layers.1.norm2.bias", 0), ("norm.weight", 0),
            ("head.weight", 1), ("encoder.layers.0.self_attn.in_proj_weight", 1)} <= stream
    assert not spec.unpermuted


def test_a_parameter_used_otherwise_in_forward_keeps_its_units_unpermuted() -> None:
    class Scaled(nn.Module):
        def __init__(self, other_use: bool) -> None:
            super().__init__()
            self.inp, self.out = nn.Linear(3, 5), nn.Linear(5, 2)
            self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 5))
            self.other_use = other_use

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.inp(x)) * self.scale  # units × a per-unit parameter: it moves with them
            if self.other_use:
                h = h + self.scale[:3].sum()  # ... unless it is also read in a way that is not unit-wise
            return self.out(h)

    torch.manual_seed(0)
    x = torch.randn(8, 3)
    free = permutation_spec(Scaled(False), x)
    assert Axis("scale", 0) in free.layer("inp").axes
    pinned = permutation_spec(Scaled(True), x)
    assert pinned.layers == () and any("sum" in s for s in pinned.unpermuted)


def test_a_wrong_spec_is_caught_by_the_numerical_check() -> None:
    net, x, _, _ = CASES["resnet"]()
    spec = permutation_spec(net, x)
    no_stats = PermutationSpec(
        tuple(dataclasses.replace(h, axes=tuple(a for a in h.axes if "running_var" not in a.key)) for h in spec.layers),
        spec.parameter_keys,
    )
    with pytest.raises(NotImplementedError, match="changes its outputs"):
        check_spec(net, no_stats, x)
    tnet, tx, _, _ = CASES["transformer"]()
    tspec = permutation_spec(tnet, tx)
    rows = PermutationSpec(  # heads permuted row by row instead of whole heads
        tuple(dataclasses.replace(h, size=16, axes=tuple(dataclasses.replace(a, block=1, offset=a.offset) for a in h.axes))
              if h.name.endswith("heads") else h for h in tspec.layers),
        tspec.parameter_keys,
    )
    with pytest.raises(NotImplementedError, match="changes its outputs"):
        check_spec(tnet, rows, tx)


def test_unknown_operations_keep_their_units_unpermuted() -> None:
    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.out = nn.Linear(3, 4), nn.Linear(3, 5), nn.Linear(9, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.cat([torch.tanh(self.a(x)), torch.tanh(self.b(x))], dim=1)  # not modelled: a, b stay
            return self.out(torch.relu(self.c(h)))

    torch.manual_seed(0)
    net, x = Concat(), torch.randn(8, 3)
    spec = permutation_spec(net, x)
    assert [(h.name, h.size) for h in spec.layers] == [("c", 6)]
    assert any("cat" in s for s in spec.unpermuted)
    twin = permute_model(net, random_permutations(spec, torch.Generator().manual_seed(1)), spec)
    torch.testing.assert_close(twin(x), net(x))


def test_refusals_say_what_to_pass() -> None:
    net, x, _, _ = CASES["resnet"]()
    with pytest.raises(ValueError, match=r"example_input=x.*PermutationSpec.*--permutation-spec"):
        weight_matching(net, net)

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 3), nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.b(self.a(x))
            return self.b(self.a(-x))

    with pytest.raises(NotImplementedError, match="cannot trace.*--permutation-spec"):
        permutation_spec(Untraceable(), torch.randn(4, 2))


def test_a_hand_written_spec_is_still_accepted() -> None:
    net, x, y, surgery = CASES["resnet"]()
    spec = permutation_spec(net, x)
    only_fc_input = PermutationSpec(tuple(h for h in spec.layers if any(a.key == "fc.weight" for a in h.axes)),
                                    spec.parameter_keys)
    twin = surgery(net, seed=3)
    result = compare_pair(net, twin, (x, y), spec=only_fc_input, num_points=3)
    assert list(result.alignment.perms) == [only_fc_input.layers[0].name]
    assert result.distance_after > 0.5  # the other groups were not aligned: the spec given was used


def test_alignment_lowers_the_barrier_between_independently_trained_resnets_on_digits() -> None:
    """The README's ResNet experiment, shrunk (width 8, 500 images, 4 epochs): the barrier drops after alignment
    (identity "alignment" would give a ratio of 1)."""
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "compare_resnets.py"
    module_spec = importlib.util.spec_from_file_location("compare_resnets_example", path)
    example = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(example)
    train, test = example.digits()
    train, test = (train[0][:500], train[1][:500]), (test[0][:250], test[1][:250])
    a, b = example.train(1, train, epochs=4, width=8), example.train(2, train, epochs=4, width=8)
    spec = permutation_spec(a, train[0][:64])
    assert len(spec.layers) == 6
    r = example.measure(a, b, train, test, spec, num_points=3)
    assert r["none"]["loss"] > 0.2  # two different solutions: a real barrier
    for method in ("weight", "activation"):
        assert r[method]["loss"] < 0.9 * r["none"]["loss"], (method, r)
    assert r["weight"]["distance"] < 0.95 * r["none"]["distance"]
