"""Which tensor axes move together when the hidden units of a network are permuted.

A *hidden layer* (a group of interchangeable units: neurons of a Linear layer, channels of a Conv2d)
owns a list of tensor axes: the producer's output axis (weight rows, bias), every channel-wise layer
that follows it (BatchNorm weight, bias and running statistics, PReLU, LayerNorm affine), and the
consumer's input axis (the next Linear/Conv2d's weight columns). Permuting all of them with the same
permutation leaves the network function unchanged.

Two ways to get one: :func:`permutation_spec` reads it off a model (below, or by tracing the forward pass
of any other model, see :mod:`.trace`), or write a :class:`PermutationSpec` by hand.

Read directly: an ``nn.Sequential`` (nested ones are flattened) of ``Linear`` / ``Conv2d``
(``groups=1``) producers, ``BatchNorm1d/2d``, ``LayerNorm`` (1-D), ``PReLU``, elementwise activations,
dropout, pooling, and ``Flatten`` between the last convolution and the first Linear (its input axis is
then ``C * block`` long, channel-major, and each channel moves as a block of ``block`` columns). The
model may be any ``nn.Module`` whose trainable parameters all live in one such ``Sequential`` (e.g. a
LightningModule with ``self.net = nn.Sequential(...)``); the last producer's outputs are the network
outputs and are never permuted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

#: Parameter-free modules that act on each unit/channel independently (or pool spatially per channel).
CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)


@dataclass(frozen=True)
class Axis:
    """Axis ``dim`` of the state-dict entry ``key``; with ``block > 1`` unit ``c`` owns indices
    ``offset + c*block ... offset + c*block + block - 1`` (a Linear after ``Flatten``; an attention head's
    ``head_dim`` rows). ``offset`` places the units inside a packed tensor (the k section of
    ``in_proj_weight`` starts at ``embed_dim``); indices outside ``offset ... offset + size*block`` stay put."""

    key: str
    dim: int
    block: int = 1
    offset: int = 0


@dataclass(frozen=True)
class HiddenLayer:
    """One group of interchangeable units.

    ``name`` is the producer's module path; ``probe`` is the path of the module whose output holds the
    post-activation values of these units, on axis ``probe_dim`` (default: 1, the channel/feature axis),
    used by activation matching. Units without such a module (attention heads, the hidden units of an
    ``nn.TransformerEncoderLayer``) have ``probe=None`` and are matched by their weights.
    """

    name: str
    size: int
    axes: tuple[Axis, ...]
    probe: str | None
    probe_dim: int | None = None


@dataclass(frozen=True)
class PermutationSpec:
    """The hidden layers of a model, in forward order, and the parameter names.

    >>> net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    >>> spec = permutation_spec(net)
    >>> [(h.name, h.size) for h in spec.layers]
    [('0', 5)]
    >>> [(a.key, a.dim) for a in spec.layers[0].axes]
    [('0.weight', 0), ('0.bias', 0), ('2.weight', 1)]
    """

    layers: tuple[HiddenLayer, ...]
    parameter_keys: tuple[str, ...]
    unpermuted: tuple[str, ...] = ()  # operations that kept units unpermuted (traced specs)

    def layer(self, name: str) -> HiddenLayer:
        for hidden in self.layers:
            if hidden.name == name:
                return hidden
        raise KeyError(f"no hidden layer {name!r}; known: {[h.name for h in self.layers]}")

    def axes_by_key(self) -> dict[str, list[tuple[str, Axis]]]:
        """``key -> [(layer name, axis), ...]``: which hidden layers permute which axes of a tensor."""
        out: dict[str, list[tuple[str, Axis]]] = {}
        for hidden in self.layers:
            for axis in hidden.axes:
                out.setdefault(axis.key, []).append((hidden.name, axis))
        return out


def _leaves(module: nn.Sequential, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, path + ".")
        else:
            yield path, child


def find_sequential(model: nn.Module) -> tuple[str, nn.Sequential]:
    """The outermost ``nn.Sequential`` inside ``model`` that holds all of its trainable parameters.

    Returns its module path (``""`` for the model itself) and the module.
    """
    wanted = {id(p) for p in model.parameters() if p.requires_grad}
    for path, sub in model.named_modules():
        if isinstance(sub, nn.Sequential) and wanted <= {id(p) for p in sub.parameters()}:
            return path, sub
    raise ValueError(
        f"{type(model).__name__}: no nn.Sequential holds all trainable parameters, so its permutation spec must "
        "be derived by tracing the forward pass on an example input: permutation_spec(model, example_input=x) "
        "(compare_pair, permutation_barrier, align with data and the CLI do this from their data), or pass a "
        "hand-written PermutationSpec (spec=...; CLI: --permutation-spec module:obj)"
    )


def permutation_spec(model: nn.Module, example_input: Any = None, check: bool = True) -> PermutationSpec:
    """Which tensor axes of ``model`` move together when its hidden units are permuted.

    A model whose parameters all live in one ``nn.Sequential`` is read layer by layer. Any other model
    (ResNets, Transformers, ...) is traced on ``example_input`` (see :mod:`.trace`): residual streams share
    one permutation with every block that adds into them, BatchNorm moves with its channels, attention
    heads move as blocks. With ``example_input`` and ``check=True`` the spec is verified numerically: a
    randomly permuted copy must reproduce the outputs, else ``NotImplementedError``.

    >>> import torch
    >>> class Block(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.inp, self.hidden, self.back, self.out = nn.Linear(3, 4), nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         h = self.inp(x)
    ...         return self.out(h + self.back(torch.relu(self.hidden(h))))  # a residual block
    >>> spec = permutation_spec(Block(), example_input=torch.randn(5, 3))
    >>> [(h.name, h.size) for h in spec.layers]  # the stream (inp, back) and the block's hidden units
    [('inp', 4), ('hidden', 8)]
    """
    try:
        spec = _sequential_spec(model)
    except (ValueError, NotImplementedError):
        if example_input is None:
            raise
        from lightning_landscape.compare.trace import traced_spec

        layers, unknown = traced_spec(model, example_input)
        spec = PermutationSpec(tuple(layers), tuple(n for n, p in model.named_parameters() if p.requires_grad),
                               tuple(unknown))
    if example_input is not None and check:
        check_spec(model, spec, example_input)
    return spec


def check_spec(model: nn.Module, spec: PermutationSpec, example_input: Any, seed: int = 0) -> None:
    """Raise ``NotImplementedError`` unless a randomly permuted copy of ``model`` (eval mode) gives its outputs.

    Outputs are compared to ``1e-4`` relative to their largest magnitude (float rounding of re-ordered sums).
    """
    from lightning_landscape.compare.permute import permute_model, random_permutations

    if not spec.layers:
        return
    twin = permute_model(model, random_permutations(spec, torch.Generator().manual_seed(seed)), spec).eval()
    modes = [(m, m.training) for m in model.modules()]
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        model.eval()
        with torch.no_grad():
            expected, got = model(*args), twin(*args)
    finally:
        for m, mode in modes:
            m.training = mode
    flat_e, flat_g = _tensors(expected), _tensors(got)
    worst = max((float((e - g).abs().max()) / max(1.0, float(e.abs().max())) for e, g in zip(flat_e, flat_g)
                 if e.numel()), default=0.0)
    if len(flat_e) != len(flat_g) or worst > 1e-4:
        raise NotImplementedError(
            f"{type(model).__name__}: permuting its hidden units as the spec says changes its outputs (relative "
            f"difference {worst:.2g}); some operation mixes units in a way the tracer does not model. Pass a "
            "hand-written PermutationSpec (spec=...; CLI: --permutation-spec module:obj)"
        )


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value.detach().to(torch.float64)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _sequential_spec(model: nn.Module) -> PermutationSpec:
    """Walk the model's ``Sequential`` and group the tensor axes of every hidden layer.

    Raises ``NotImplementedError`` naming the first layer it cannot handle (unknown layers could mix
    units, so guessing would silently break the "function unchanged" guarantee).
    """
    path, seq = find_sequential(model)
    prefix = f"{path}." if path else ""
    layers: list[HiddenLayer] = []
    # state of the currently open hidden layer (output of the last producer)
    current: dict | None = None
    flattened = False

    def close(consumer_axis: Axis | None) -> None:
        nonlocal current
        if current is not None and consumer_axis is not None:
            current["axes"].append(consumer_axis)
            layers.append(
                HiddenLayer(current["name"], current["size"], tuple(current["axes"]), current["probe"])
            )
        current = None

    # an unknown parameter-free module is fine after the last weight layer (e.g. a LogSoftmax on the
    # outputs) but not before another layer: remember it and refuse only if more layers follow
    unknown: str | None = None
    for name, mod in _leaves(seq, prefix):
        if unknown is not None:
            raise NotImplementedError(unknown)
        has_bias = getattr(mod, "bias", None) is not None
        if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups != 1:
                raise NotImplementedError(f"layer {name}: grouped/depthwise convolutions are not supported")
            in_units = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
            consumer = None
            if current is not None:
                block = 1
                if flattened:
                    if not isinstance(mod, nn.Linear) or in_units % current["size"]:
                        raise NotImplementedError(
                            f"layer {name}: expected a Linear with in_features a multiple of "
                            f"{current['size']} channels after Flatten"
                        )
                    block = in_units // current["size"]
                elif in_units != current["size"]:
                    raise NotImplementedError(
                        f"layer {name}: {in_units} inputs but the previous layer has {current['size']} units"
                    )
                consumer = Axis(f"{name}.weight", 1, block)
            close(consumer)
            flattened = False
            size = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
            axes = [Axis(f"{name}.weight", 0)] + ([Axis(f"{name}.bias", 0)] if has_bias else [])
            current = {"name": name, "size": size, "axes": axes, "probe": name}
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if current is None or mod.num_features != current["size"] or flattened:
                raise NotImplementedError(f"layer {name}: BatchNorm must follow a Linear/Conv layer of its width")
            keys = [k for k in ("weight", "bias") if getattr(mod, k, None) is not None]
            if mod.track_running_stats:
                keys += ["running_mean", "running_var"]
            current["axes"] += [Axis(f"{name}.{k}", 0) for k in keys]
            current["probe"] = name
        elif isinstance(mod, nn.LayerNorm):
            if current is None or tuple(mod.normalized_shape) != (current["size"],) or flattened:
                raise NotImplementedError(f"layer {name}: only LayerNorm over the features of a Linear layer is supported")
            keys = [k for k in ("weight", "bias") if getattr(mod, k, None) is not None]
            current["axes"] += [Axis(f"{name}.{k}", 0) for k in keys]
            current["probe"] = name
        elif isinstance(mod, nn.PReLU):
            if mod.num_parameters > 1:
                if current is None or mod.num_parameters != current["size"] or flattened:
                    raise NotImplementedError(f"layer {name}: PReLU width does not match the previous layer")
                current["axes"].append(Axis(f"{name}.weight", 0))
            if current is not None and not flattened:
                current["probe"] = name
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise NotImplementedError(f"layer {name}: only Flatten(start_dim=1, end_dim=-1) is supported")
            flattened = True
        elif isinstance(mod, CHANNELWISE):
            if current is not None and not flattened:
                current["probe"] = name
        else:
            unknown = (
                f"layer {name}: {type(mod).__name__} is not supported for hidden-unit permutation "
                f"(supported: Linear, Conv1d/2d, BatchNorm1d/2d, LayerNorm, PReLU, Flatten, "
                f"{', '.join(sorted({c.__name__ for c in CHANNELWISE}))}; other parameter-free "
                "modules only after the last weight layer)"
            )
            if any(True for _ in mod.parameters()):
                raise NotImplementedError(unknown)
    close(None)  # the last producer's outputs are the network outputs
    keys = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    return PermutationSpec(tuple(layers), keys)
