"""Find the hidden units of an arbitrary module: ``Linear/Conv → [BatchNorm] → σ → Linear/Conv``, attention heads.

A *neuron layer* is an input layer (rows of its weight, plus bias, are the neurons' input weights
``wᵢ``), an element-wise activation σ, and an output layer (columns — input channels for convolutions —
of its weight are the output weights ``aᵢ``). What can be said about neurons depends on σ's symmetry:

* ``"odd"`` (tanh, erf, sin, symmetric hardtanh): ``a σ(-w·x) = (-a) σ(w·x)``, so neurons merge
  *modulo sign*;
* ``"homogeneous"`` (ReLU, LeakyReLU, PReLU): ``σ(c z) = c σ(z)`` for ``c > 0``, so neurons merge
  *modulo positive scaling*;
* ``"none"`` (softplus, GELU, SiLU, ELU, sigmoid, ...): only equal input weights merge.

A BatchNorm between the input layer and σ (``Conv → BatchNorm → ReLU → Conv``, as in every ResNet block)
is folded into the input weights in eval form (:mod:`lightning_landscape.neurons.layers`), so ε, merging
and width compare what each neuron computes. Dropout, pooling and scalar multiples between layers are
transparent. Not neuron layers, and said so:

* a **residual stream** — a layer whose output is added to a skip connection (``conv2 → bn2 → + x``,
  ``linear2 → + x``), or whose hidden values are also read by one (a ResNet stem): its channels are
  shared by every block that adds into it, so no unit belongs to one layer. These are listed in
  ``Discovery.residual`` and noted once (log, INFO); the hidden units *inside* the blocks are analysed;
* a LayerNorm / GroupNorm / InstanceNorm between a layer and σ (it normalises across channels or per
  sample: no neuron has a fixed input weight), a BatchNorm without running statistics, or a
  normalisation after σ: skipped with the reason (explicit layers across one raise ``ValueError``).

Attention heads: every ``nn.MultiheadAttention`` called in the traced forward (``nn.TransformerEncoderLayer``
included) becomes a :class:`~lightning_landscape.neurons.layers.HeadLayer`, the heads being its units
(duplicate heads merge, dead heads drop out: the effective number of heads). Hand-written attention is not
recognised as heads.

Discovery, in order of preference:

1. explicit ``layers=[("fc1", "fc2", "tanh"), ...]`` (activation optional; when it cannot be
   determined it is taken as ``"none"`` — the strictest — and a warning says so). A BatchNorm the trace
   (or the ``nn.Sequential``) shows between them is folded; another normalisation there, or a first
   layer that writes into a residual stream, raises;
2. a **trace** of one forward pass (``forward`` callable, e.g. the loss closure): every torch function
   call is recorded with a ``TorchFunctionMode``, so activations called functionally (``F.relu``) and
   modules outside any ``nn.Sequential`` are found by following the actual data flow. ``torch.fx``
   symbolic tracing is not used: it fails on ``nn.TransformerEncoderLayer``. While the mode is active
   PyTorch's fused Transformer fast path is off, so attention appears as one ``multi_head_attention_forward``
   call (its internals are not followed: heads come from the module, by the rule above). A hidden tensor
   that also feeds anything else (a reshape, a second branch) breaks the pattern: the layer is skipped,
   with the reason;
3. without a ``forward``: the order of children inside each ``nn.Sequential`` (exact there; no heads).

When nothing is found a :class:`NeuronDiscoveryWarning` says why — the library never guesses silently.

Example:
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    >>> [(l.name, l.activation, l.symmetry, l.width) for l in discover_layers(net).layers]
    [('0', 'tanh', 'odd', 5)]
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_landscape.neurons.layers import HeadLayer, NeuronLayer
from lightning_landscape.sharded import has_sharded_parameters

logger = logging.getLogger(__name__)

Symmetry = Literal["odd", "homogeneous", "none"]
SYMMETRIES: tuple[str, ...] = ("odd", "homogeneous", "none")


class NeuronDiscoveryWarning(UserWarning):
    """Hidden layers could not be (fully) identified; the message says which and why."""


class Erf(nn.Module):
    """The activation ``σ(z) = erf(scale · z)`` (default ``scale = 1/√2``: ``σ(z) = 2Φ(z) − 1``). Odd.

    >>> [round(v, 6) for v in Erf()(torch.tensor([0.0, 1.0])).tolist()]  # erf(1/√2) = P(|N(0,1)| < 1)
    [0.0, 0.682689]
    """

    def __init__(self, scale: float = 1.0 / math.sqrt(2.0)) -> None:
        super().__init__()
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale == 0:
            raise ValueError(f"Erf.scale must be a finite non-zero number, got {scale!r}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x * self.scale)


# torch function name -> symmetry (the name the TorchFunctionMode sees; module activations call these)
ACTIVATION_SYMMETRY: dict[str, str] = {
    "tanh": "odd", "tanh_": "odd", "erf": "odd", "erf_": "odd", "sin": "odd", "sin_": "odd",
    "softsign": "odd", "tanhshrink": "odd", "softshrink": "odd", "hardshrink": "odd", "atan": "odd",
    "relu": "homogeneous", "relu_": "homogeneous", "leaky_relu": "homogeneous", "leaky_relu_": "homogeneous",
    "prelu": "homogeneous", "rrelu": "homogeneous", "rrelu_": "homogeneous",
    "gelu": "none", "silu": "none", "softplus": "none", "elu": "none", "elu_": "none", "selu": "none",
    "celu": "none", "mish": "none", "sigmoid": "none", "sigmoid_": "none", "relu6": "none",
    "hardswish": "none", "hardsigmoid": "none", "logsigmoid": "none", "hardtanh": "odd", "hardtanh_": "odd",
}

# activation module classes -> (name, symmetry), for the nn.Sequential scan
_ACTIVATION_MODULES: list[tuple[type[nn.Module], str, str]] = [
    (nn.Tanh, "tanh", "odd"), (Erf, "erf", "odd"), (nn.Softsign, "softsign", "odd"),
    (nn.Tanhshrink, "tanhshrink", "odd"), (nn.Softshrink, "softshrink", "odd"), (nn.Hardshrink, "hardshrink", "odd"),
    (nn.ReLU, "relu", "homogeneous"), (nn.LeakyReLU, "leaky_relu", "homogeneous"), (nn.PReLU, "prelu", "homogeneous"),
    (nn.ReLU6, "relu6", "none"),  # ReLU6 subclasses Hardtanh: must come before it
    (nn.Hardtanh, "hardtanh", "odd"),
    (nn.GELU, "gelu", "none"), (nn.SiLU, "silu", "none"), (nn.Softplus, "softplus", "none"), (nn.ELU, "elu", "none"),
    (nn.SELU, "selu", "none"), (nn.CELU, "celu", "none"), (nn.Mish, "mish", "none"), (nn.Sigmoid, "sigmoid", "none"),
    (nn.Hardswish, "hardswish", "none"), (nn.Hardsigmoid, "hardsigmoid", "none"), (nn.LogSigmoid, "logsigmoid", "none"),
]

# ops that keep each neuron's (channel's) identity and are the same for every neuron
_PASSTHROUGH_FUNCS = {
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous", "clone",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "lp_pool1d", "lp_pool2d",
}
_SCALAR_FUNCS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__",
                 "true_divide"}
_PASSTHROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_LAYER_FUNCS = {"linear": nn.Linear, "conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# calls that only read metadata: they do not "use" a hidden tensor
_METADATA_FUNCS = {"size", "dim", "numel", "is_contiguous", "__get__", "__len__", "is_floating_point", "stride",
                   "data_ptr", "element_size", "__format__", "__repr__", "item", "tolist", "detach", "requires_grad_"}


@dataclass
class Discovery:
    """What :func:`discover_layers` found: ``layers``, ``skipped`` (name, reason), ``residual`` (layers whose
    outputs are a residual stream: not neuron layers) and the ``method`` used."""

    layers: list[NeuronLayer] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    method: str = ""
    residual: list[str] = field(default_factory=list)
    # layers whose path to the activation crosses a normalisation that cannot be folded: name -> reason
    unfoldable: dict[str, str] = field(default_factory=dict)


def activation_symmetry(activation: str | nn.Module) -> str:
    """The symmetry of an activation given by name (``"tanh"``) or module (``nn.ReLU()``).

    >>> activation_symmetry("erf"), activation_symmetry(torch.nn.LeakyReLU()), activation_symmetry("gelu")
    ('odd', 'homogeneous', 'none')
    """
    if isinstance(activation, nn.Module):
        found = _module_activation(activation)
        if found is None:
            raise ValueError(f"unknown activation module {type(activation).__name__}")
        return found[1]
    key = str(activation).lower()
    if key not in ACTIVATION_SYMMETRY:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_SYMMETRY)}, got {activation!r}")
    return ACTIVATION_SYMMETRY[key]


def _module_activation(m: nn.Module) -> tuple[str, str] | None:
    for cls, name, sym in _ACTIVATION_MODULES:
        if isinstance(m, cls):
            if cls is nn.Hardtanh and not math.isclose(m.min_val, -m.max_val):
                return name, "none"
            return name, sym
    return None


def _compatible(first: nn.Module, second: nn.Module) -> str | None:
    """Why ``first → σ → second`` is not a neuron layer, or None if it is."""
    if isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
        if first.out_features != second.in_features:
            return f"shape mismatch {first.out_features} vs {second.in_features}"
        return None
    for conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(first, conv) and isinstance(second, conv):
            if first.groups != 1 or second.groups != 1:
                return "grouped convolution"
            if first.out_channels != second.in_channels:
                return f"channel mismatch {first.out_channels} vs {second.in_channels}"
            return None
    return f"{type(first).__name__} → {type(second).__name__} is not Linear → Linear or Conv → Conv"


def _norm_refusal(layer: str, norm: nn.Module | None, norm_name: str, after_activation: bool = False) -> str | None:  # noqa: E501
    """Why the normalisation ``norm`` between ``layer`` and its activation cannot be folded (None: it can)."""
    if norm is None:  # a functional call on tensors that belong to no normalisation module
        return f"output of {layer} goes through a functional {norm_name!r} call before its activation (no module to fold: not analysed)"
    kind = type(norm).__name__
    if after_activation:
        return (f"{kind} {norm_name!r} after the activation of {layer} rescales the hidden values (only a "
                "BatchNorm between the layer and its activation is folded)")
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm too: the same eval-form map
        if norm.running_mean is None or norm.running_var is None:
            return (f"{kind} {norm_name!r} after {layer} keeps no running statistics (track_running_stats="
                    "False): its eval-form affine map is undefined, so it cannot be folded")
        return None
    return (f"output of {layer} goes through {kind} {norm_name!r} before its activation: it normalises across "
            "channels or per sample, so a neuron has no fixed input weight (not folded)")


# ---------------------------------------------------------------- nn.Sequential scan
_NORM_MODULES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.LocalResponseNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _scan_sequential(module: nn.Module) -> Discovery:
    found = Discovery(method="sequential")
    names = {id(m): n for n, m in module.named_modules()}
    for container in module.modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.children())
        for i, first in enumerate(children):
            if not isinstance(first, _LAYER_TYPES):
                continue
            name = names[id(first)]
            act: tuple[str, str] | None = None
            norm: nn.Module | None = None
            for nxt in children[i + 1:]:
                if isinstance(nxt, _PASSTHROUGH_MODULES):
                    continue
                if isinstance(nxt, _NORM_MODULES):
                    why = _norm_refusal(name, nxt, names[id(nxt)], after_activation=act is not None)
                    if why is None and norm is None:
                        norm = nxt
                        continue
                    why = why or f"output of {name} goes through two normalisations"
                    found.skipped.append((name, why))
                    found.unfoldable[name] = why
                    break
                if act is None and _module_activation(nxt) is not None:
                    act = _module_activation(nxt)
                    continue
                if act is not None and isinstance(nxt, _LAYER_TYPES):
                    why = _compatible(first, nxt)
                    if why is None:
                        found.layers.append(NeuronLayer(name, name, names[id(nxt)], first, nxt, *act, norm=norm,
                                                        norm_name=names[id(norm)] if norm is not None else None))
                    else:
                        found.skipped.append((name, why))
                elif act is not None or not isinstance(nxt, _LAYER_TYPES):
                    found.skipped.append((name, f"followed by {type(nxt).__name__} (not an activation "
                                                "between two layers)"))
                break
    return found


# ---------------------------------------------------------------- forward trace
_NORM_FUNCS = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm"}
_ADD_FUNCS = {"add", "add_", "__add__", "__radd__", "__iadd__"}
_MHA_FUNC = "multi_head_attention_forward"


@dataclass
class _Op:
    name: str
    inputs: list[tuple[int, int]]
    outputs: list[tuple[int, int]]
    layer: str | None = None  # qualified module name for linear/conv calls with a module's weight
    scalar: bool = False  # elementwise multiply/divide by a python number
    symmetric_hardtanh: bool = True
    norm: str | None = None  # qualified name of the normalisation module of a *_norm call
    residual: bool = False  # a tensor + tensor of the same shape (a skip connection)
    attention: str | None = None  # qualified name of the nn.MultiheadAttention of an attention call


@dataclass
class _Path:
    """Where a layer's output goes: the next layer (with activation and a folded norm), nothing (not a
    hidden layer), a residual stream, or the reason the pattern breaks."""

    next: str | None = None
    act: tuple[str, str] | None = None
    norm: str | None = None
    reason: str = ""
    residual: bool = False
    unfoldable: bool = False  # the reason is a normalisation that cannot be folded


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            if isinstance(o, torch.Tensor):
                yield o


class _Recorder(TorchFunctionMode):
    """Record every torch call's tensor inputs/outputs as (id, version) keys (refs kept: ids stay unique).

    While it is active, ``has_torch_function`` is true, which also keeps PyTorch's fused Transformer fast
    path off: ``nn.MultiheadAttention`` shows up as one ``multi_head_attention_forward`` call."""

    def __init__(self, weight_owner: dict[int, str], norm_owner: dict[int, str], mha_owner: dict[int, str]) -> None:
        super().__init__()
        self.weight_owner, self.norm_owner, self.mha_owner = weight_owner, norm_owner, mha_owner
        self.ops: list[_Op] = []
        self.keep: list[Any] = []

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        flat_in = [t for a in list(args) + list(kwargs.values()) for t in _tensors(a)]
        in_keys = [(id(t), t._version) for t in flat_in]
        out = func(*args, **kwargs)
        if name in _METADATA_FUNCS:
            return out
        outs = list(_tensors(out))
        if not outs:
            return out
        op = _Op(name, in_keys, [(id(t), t._version) for t in outs])
        if set(op.outputs) <= set(in_keys):
            return out  # returned its input unchanged (e.g. dropout in eval mode): transparent
        if name in _LAYER_FUNCS and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            op.layer = self.weight_owner.get(id(args[1]))
        if name in _SCALAR_FUNCS and len(flat_in) == 1 and len(args) >= 2:
            other = args[1] if isinstance(args[0], torch.Tensor) else args[0]
            op.scalar = isinstance(other, (int, float)) and not isinstance(other, bool) and other != 0
        if name in _ADD_FUNCS and len(flat_in) == 2 and "alpha" not in kwargs:
            op.residual = flat_in[0].shape == flat_in[1].shape
        if name in _NORM_FUNCS:
            op.norm = next((self.norm_owner[id(t)] for t in flat_in if id(t) in self.norm_owner), f"F.{name}")
        if name == _MHA_FUNC:
            op.attention = next((self.mha_owner[id(t)] for t in flat_in if id(t) in self.mha_owner), None)
        if name.startswith("hardtanh"):
            lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
            hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
            op.symmetric_hardtanh = math.isclose(float(lo), -float(hi))
        self.keep.append((flat_in, outs))
        self.ops.append(op)
        return out


def _trace(module: nn.Module, forward: Callable[[], Any]) -> Discovery:
    found = Discovery(method="trace")
    owner: dict[int, str] = {}
    norm_owner: dict[int, str] = {}
    mha_owner: dict[int, str] = {}
    modules = dict(module.named_modules())
    sharded = has_sharded_parameters(module)
    for name, m in modules.items():
        if isinstance(m, _LAYER_TYPES):
            owner[id(m.weight)] = name
        elif isinstance(m, _NORM_MODULES):
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                norm_owner[id(t)] = name
        elif isinstance(m, nn.MultiheadAttention):
            mha_owner[id(m.out_proj.weight)] = name
    def note_params(m: nn.Module, _inputs: Any) -> None:
        # FSDP2 swaps in gathered (unsharded) parameters just before a module runs: the tensors the
        # forward pass sees are those, not the ones listed above. Its pre-forward hooks run before ours.
        name = names[id(m)]
        if isinstance(m, _LAYER_TYPES):
            owner[id(m.weight)] = name
        elif isinstance(m, _NORM_MODULES):
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                norm_owner[id(t)] = name
        else:
            mha_owner[id(m.out_proj.weight)] = name

    names = {id(m): n for n, m in modules.items()}
    handles = [m.register_forward_pre_hook(note_params) for m in modules.values()
               if isinstance(m, (*_LAYER_TYPES, *_NORM_MODULES, nn.MultiheadAttention))] if sharded else []
    recorder = _Recorder(owner, norm_owner, mha_owner)
    try:
        with torch.no_grad(), recorder:
            forward()
    finally:
        for h in handles:
            h.remove()
    ops = recorder.ops
    consumers: dict[tuple[int, int], list[int]] = {}
    for k, op in enumerate(ops):
        for key in set(op.inputs):
            consumers.setdefault(key, []).append(k)
    seen: dict[str, _Path] = {}
    attention: list[str] = []
    for k, op in enumerate(ops):
        if op.attention is not None and op.attention not in attention:
            attention.append(op.attention)
        if op.layer is None:
            continue
        result = _follow(ops, consumers, k, modules)
        previous = seen.get(op.layer)
        if previous is not None and previous != result:
            seen[op.layer] = _Path(reason="used in more than one way in the forward pass")
        else:
            seen[op.layer] = result
    for name, path in seen.items():
        if path.residual:
            found.residual.append(name)
            continue
        if path.next is None:
            if path.reason:
                found.skipped.append((name, path.reason))
                if path.unfoldable:
                    found.unfoldable[name] = path.reason
            continue
        why = _compatible(modules[name], modules[path.next])
        if why is not None:
            found.skipped.append((name, why))
            continue
        norm = modules[path.norm] if path.norm is not None else None
        found.layers.append(NeuronLayer(name, name, path.next, modules[name], modules[path.next], *path.act,
                                        norm=norm, norm_name=path.norm))
    for name in attention:
        found.layers.append(HeadLayer.of(name, modules[name]))  # type: ignore[arg-type]
    return found


def _follow(ops: list[_Op], consumers: dict[tuple[int, int], list[int]], start: int,
            modules: dict[str, nn.Module]) -> _Path:
    """From layer op ``start``: the next layer (activation, folded BatchNorm), nothing (no activation
    follows: not a hidden layer), a residual stream, or the reason the pattern breaks."""
    key = ops[start].outputs[0]
    act: tuple[str, str] | None = None
    norm: str | None = None
    between: str | None = None  # an op between the layer and its BatchNorm (the fold would be wrong)
    layer = ops[start].layer
    while True:
        users = consumers.get(key, [])
        if not users:
            return _Path() if act is None else _Path(reason="activation output is not used by a layer")
        if len(users) > 1:
            if any(ops[u].residual for u in users):
                return _Path(residual=True)  # also read by a skip connection: the residual stream
            if act is None and all(ops[u].layer is not None for u in users):
                return _Path()  # e.g. one input feeding several heads: no activation, not a hidden layer
            return _Path(reason=f"hidden values of {layer} also feed "
                                f"{', '.join(sorted({ops[u].name for u in users}))}")
        op = ops[users[0]]
        if op.layer is not None:
            if act is None:
                return _Path()
            if op.inputs[0] != key:
                return _Path(reason=f"hidden values enter {op.layer} as a weight, not an input")
            return _Path(op.layer, act, norm)
        if op.name in ACTIVATION_SYMMETRY and act is None:
            sym = ACTIVATION_SYMMETRY[op.name]
            if op.name.startswith("hardtanh") and not op.symmetric_hardtanh:
                sym = "none"
            act = (op.name.rstrip("_"), sym)
        elif op.norm is not None:
            why = _norm_refusal(layer, modules.get(op.norm), op.norm, after_activation=act is not None)
            if why is None and norm is not None:
                why = f"output of {layer} goes through two normalisations ({norm!r}, {op.norm!r})"
            if why is None and between is not None:
                why = f"output of {layer} goes through {between!r} before BatchNorm {op.norm!r} (not folded)"
            if why is not None:
                return _Path(reason=why, unfoldable=True)
            norm = op.norm
        elif op.residual:
            return _Path(residual=True)  # added to a skip connection (before or after σ): the residual stream
        elif op.name in _PASSTHROUGH_FUNCS or op.scalar:
            if act is None and norm is None:
                between = between or op.name
        else:
            if act is None and norm is None:
                # not a hidden layer unless an activation follows shortly (e.g. Linear → reshape → ReLU)
                return _Path(reason=_activation_ahead(ops, consumers, op, layer))
            if act is None:
                return _Path(reason=f"output of {layer} goes through {op.name!r} after BatchNorm {norm!r}, "
                                    "before its activation (not supported)")
            return _Path(reason=f"output of {layer} goes through {op.name!r} (not an element-wise activation "
                                "between layers)")
        key = op.outputs[0]


def _activation_ahead(ops: list[_Op], consumers: dict[tuple[int, int], list[int]], op: _Op, layer: str,
                      depth: int = 4) -> str:
    first = op.name
    for _ in range(depth):
        if op.name in ACTIVATION_SYMMETRY:
            return f"output of {layer} goes through {first!r} before its activation (not supported)"
        users = consumers.get(op.outputs[0], [])
        if len(users) != 1 or ops[users[0]].layer is not None:
            return ""
        op = ops[users[0]]
    return f"output of {layer} goes through {first!r} before its activation (not supported)" \
        if op.name in ACTIVATION_SYMMETRY else ""


# ---------------------------------------------------------------- public entry point
_residual_noted: set[str] = set()


def discover_layers(
    module: nn.Module,
    forward: Callable[[], Any] | None = None,
    layers: Sequence[Sequence[str]] | None = None,
    warn: bool = True,
) -> Discovery:
    """Find the hidden neuron layers of ``module``.

    Args:
        module: the model (any ``nn.Module``).
        forward: a callable that runs one forward pass through ``module`` (e.g. the probe's loss
            closure); enables the data-flow trace. Without it only ``nn.Sequential`` containers are scanned.
        layers: explicit ``(input_module, output_module[, activation])`` name tuples; overrides discovery.
        warn: emit a :class:`NeuronDiscoveryWarning` when nothing (or not everything) was found.

    Example (activation called functionally, outside any Sequential):
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc1, self.fc2 = torch.nn.Linear(2, 6), torch.nn.Linear(6, 1)
        ...     def forward(self, x):
        ...         return self.fc2(torch.nn.functional.silu(self.fc1(x)))
        >>> net, x = Net(), torch.randn(4, 2)
        >>> d = discover_layers(net, forward=lambda: net(x))
        >>> d.method, [layer.describe() for layer in d.layers]
        ('trace', ['fc1 → silu (none) → fc2, width 6'])
    """
    if layers is not None:
        found = _explicit(module, layers, forward)
    elif forward is not None:
        found = _trace(module, forward)
    else:
        found = _scan_sequential(module)
    if found.residual and type(module).__name__ not in _residual_noted:
        _residual_noted.add(type(module).__name__)  # said once per model class and process
        logger.info("%s: the outputs of %s write into a residual stream; a residual stream is shared by every block "
                    "that adds into it, so it is not a neuron layer and is not analysed (the hidden units inside "
                    "the blocks are)", type(module).__name__, ", ".join(found.residual))
    if warn:
        reasons = "; ".join(f"{n}: {r}" for n, r in found.skipped)
        if not found.layers:
            warnings.warn(
                f"no hidden neuron layers (Linear → activation → Linear, Conv → activation → Conv) found in "
                f"{type(module).__name__} by {found.method}" + (f" ({reasons})" if reasons else "")
                + "; name them explicitly, e.g. layers=[('fc1', 'fc2', 'tanh')]",
                NeuronDiscoveryWarning, stacklevel=2,
            )
        elif found.skipped:
            warnings.warn(f"some layers of {type(module).__name__} were not analysed ({reasons})",
                          NeuronDiscoveryWarning, stacklevel=2)
    return found


def _in_sequential(module: nn.Module, target: nn.Module) -> bool:
    return any(isinstance(c, nn.Sequential) and any(m is target for m in c.children()) for c in module.modules())


def _explicit(module: nn.Module, layers: Sequence[Sequence[str]], forward: Callable[[], Any] | None) -> Discovery:
    named = dict(module.named_modules())
    found = Discovery(method="explicit")
    auto = _trace(module, forward) if forward is not None else _scan_sequential(module)
    for spec in layers:
        if len(spec) not in (2, 3):
            raise ValueError(f"layers entries must be (input, output[, activation]) module names, got {spec!r}")
        first, second = spec[0], spec[1]
        for n in (first, second):
            if n not in named:
                raise ValueError(f"layers: no submodule named {n!r} (known: {sorted(k for k in named if k)[:20]})")
            if not isinstance(named[n], _LAYER_TYPES):
                raise ValueError(f"layers: {n!r} is a {type(named[n]).__name__}, expected Linear or Conv1d/2d/3d")
        why = _compatible(named[first], named[second])
        if why is not None:
            raise ValueError(f"layers: {first!r} → {second!r}: {why}")
        if first in auto.unfoldable:  # a normalisation sits between: never taken silently
            raise ValueError(f"layers: {first!r} → {second!r}: {auto.unfoldable[first]}; pick layers without a "
                             "normalisation between, or leave layers unset")
        if first in auto.residual:
            raise ValueError(f"layers: {first!r} → {second!r}: the output of {first!r} is a residual stream (added to "
                             "a skip connection, which every block adding into it shares), not a neuron layer")
        same = [l for l in auto.layers if l.input_name == first]
        norm, norm_name = (same[0].norm, same[0].norm_name) if same else (None, None)
        if not same and forward is None and not _in_sequential(module, named[first]):
            width = int(named[first].weight.shape[0])
            suspects = [n for n, m in named.items() if isinstance(m, _NORM_MODULES)
                        and width in (getattr(m, "num_features", None), getattr(m, "num_channels", None))]
            if suspects:
                warnings.warn(f"layers: cannot check whether a normalisation ({', '.join(suspects[:3])}) sits between "
                              f"{first!r} and its activation without a forward pass; if one does, the input weights "
                              "are not what the activation sees (pass forward=...)", NeuronDiscoveryWarning,
                              stacklevel=3)
        if len(spec) == 3:
            act, sym = str(spec[2]).lower(), activation_symmetry(str(spec[2]))
        else:
            match = [l for l in same if l.output_name == second]
            if match:
                act, sym = match[0].activation, match[0].symmetry
            else:
                act, sym = "unknown", "none"
                warnings.warn(f"layers: activation between {first!r} and {second!r} could not be determined; "
                              "treating it as having no symmetry (pass it as a third element, e.g. 'tanh')",
                              NeuronDiscoveryWarning, stacklevel=3)
        found.layers.append(NeuronLayer(first, first, second, named[first], named[second], act, sym, norm=norm,
                                        norm_name=norm_name))
    return found
