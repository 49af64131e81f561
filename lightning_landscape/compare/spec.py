"""Which tensor axes move together when the hidden units of a network are permuted.

A *hidden layer* (a group of interchangeable units: neurons of a Linear layer, channels of a Conv2d)
owns a list of tensor axes: the producer's output axis (weight rows, bias), every channel-wise layer
that follows it (BatchNorm weight, bias and running statistics, PReLU, LayerNorm affine), and the
consumer's input axis (the next Linear/Conv2d's weight columns). Permuting all of them with the same
permutation leaves the network function unchanged.

Supported architectures: an ``nn.Sequential`` (nested ones are flattened) of ``Linear`` / ``Conv2d``
(``groups=1``) producers, ``BatchNorm1d/2d``, ``LayerNorm`` (1-D), ``PReLU``, elementwise activations,
dropout, pooling, and ``Flatten`` between the last convolution and the first Linear (its input axis is
then ``C * block`` long, channel-major, and each channel moves as a block of ``block`` columns). The
model may be any ``nn.Module`` whose trainable parameters all live in one such ``Sequential`` (e.g. a
LightningModule with ``self.net = nn.Sequential(...)``); the last producer's outputs are the network
outputs and are never permuted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

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
    ``c*block ... c*block + block - 1`` (a Linear after ``Flatten``)."""

    key: str
    dim: int
    block: int = 1


@dataclass(frozen=True)
class HiddenLayer:
    """One group of interchangeable units.

    ``name`` is the producer's module path; ``probe`` is the path of the module whose output holds the
    post-activation values of these units (used by activation matching).
    """

    name: str
    size: int
    axes: tuple[Axis, ...]
    probe: str


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
        f"{type(model).__name__}: no nn.Sequential holds all trainable parameters; hidden-unit alignment "
        "supports Sequential MLPs/CNNs (Linear/Conv2d, BatchNorm, activations, Flatten) — pass a model whose "
        "layers live in one nn.Sequential"
    )


def permutation_spec(model: nn.Module) -> PermutationSpec:
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
