"""Derive a :class:`PermutationSpec` from the traced forward pass of any model (ResNets, Transformers).

The forward pass is traced with ``torch.fx`` (``torch.nn`` modules stay leaves) and run once on an example
input, so every value has a known shape. Each value that carries permutable units is tagged with a
*space* (a group of interchangeable units) and the axis holding them; spaces are merged (union–find)
wherever the function forces them to share one permutation:

* ``Linear`` / ``Conv`` / ``Embedding`` open a new space (their output rows) and attach their input axis
  (weight columns) to the space of their input;
* BatchNorm (weight, bias, running mean and variance), LayerNorm over the units, PReLU, activations,
  dropout and pooling keep the space and attach their per-unit tensors;
* ``a + b`` (and ``*``, ``-``, ``/``) merges the spaces of ``a`` and ``b`` — this is what makes one
  permutation shared by a residual stream and every block that adds into it, projection shortcuts
  included;
* ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` contribute their
  attention heads as units (whole heads move: q/k/v rows and ``out_proj`` columns, ``head_dim`` at a
  time), the MLP hidden units (``linear1`` rows, ``linear2`` columns), and attach the residual-stream
  axes (projections' input columns, output rows, both LayerNorms) to the stream's space;
* a parameter read directly in ``forward`` and combined unit-wise with a tagged value (``x + self.pos[:n]``,
  ``h * self.scale``) moves with those units, as long as every use of it is of that kind;
* anything else that touches a tagged value (an unknown module or function, any other use of such a
  parameter, the network's inputs and outputs) *fixes* its space: it is left unpermuted. Fixing is
  always safe, so an operation the tracer does not know costs alignment freedom, never correctness.

:func:`lightning_landscape.compare.spec.permutation_spec` checks the result numerically.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from lightning_landscape.compare.spec import CHANNELWISE, Axis, HiddenLayer


@dataclass(frozen=True)
class _Tag:
    """A value whose axis ``axis`` (of ``ndim``) holds the units of ``space``, ``block`` entries each."""

    space: int
    axis: int
    ndim: int
    block: int = 1


@dataclass(frozen=True)
class _Param:
    """A parameter/buffer read directly in ``forward`` (``self.pos``), possibly sliced: value axis ``i`` is the
    tensor's axis ``dims[i]`` (``None``: a new axis); ``partial`` are tensor axes cut by a slice."""

    key: str
    dims: tuple[int | None, ...]
    partial: frozenset[int] = frozenset()


class _Spaces:
    """Union–find over unit groups; a *fixed* group is never permuted."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.axes: list[list[Axis]] = []
        self.probes: list[list[tuple[int, str, int, bool]]] = []  # (node index, module, axis, activation?)
        self.attached: dict[tuple[str, int, int], tuple[int, int]] = {}

    def new(self, name: str, size: int) -> int:
        self.parent.append(len(self.parent))
        for lst, value in ((self.fixed, False), (self.size, size), (self.name, name), (self.axes, []), (self.probes, [])):
            lst.append(value)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def fix(self, s: int) -> None:
        self.fixed[self.find(s)] = True

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            self.fixed[ra] = self.fixed[rb] = True
            return ra
        ra, rb = min(ra, rb), max(ra, rb)  # the earlier space names the group
        self.parent[rb] = ra
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        self.axes[ra] += self.axes[rb]
        self.probes[ra] += self.probes[rb]
        return ra

    def attach(self, s: int, axis: Axis) -> None:
        key = (axis.key, axis.dim, axis.offset)
        if key in self.attached:  # a tensor used twice (shared module, tied weight): one permutation
            other, block = self.attached[key]
            if block != axis.block:
                self.fix(s)
                self.fix(other)
            else:
                self.union(s, other)
            return
        self.attached[key] = (s, axis.block)
        self.axes[self.find(s)].append(axis)


_ELEMENTWISE_FUNCTIONS = {
    torch.relu, torch.tanh, torch.sigmoid, torch.abs, torch.exp, torch.neg, F.relu, F.relu6, F.gelu, F.silu,
    F.elu, F.selu, F.celu, F.leaky_relu, F.mish, F.softplus, F.hardtanh, F.hardswish, F.hardsigmoid, F.tanh,
    F.sigmoid, F.dropout, F.logsigmoid, operator.neg,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "tanh", "sigmoid", "abs", "exp", "neg", "contiguous", "clone", "float", "double", "half",
    "to", "type_as", "detach",
}
_BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCTION_METHODS = {"mean", "sum", "amax", "amin"}
_POOL_FUNCTIONS = {
    F.avg_pool1d: 1, F.max_pool1d: 1, F.adaptive_avg_pool1d: 1, F.adaptive_max_pool1d: 1,
    F.avg_pool2d: 2, F.max_pool2d: 2, F.adaptive_avg_pool2d: 2, F.adaptive_max_pool2d: 2,
    F.avg_pool3d: 3, F.max_pool3d: 3, F.adaptive_avg_pool3d: 3,
}
_SAFE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda"}
_ACTIVATION_MODULES = tuple(m for m in CHANNELWISE if m.__module__.endswith("activation"))


def _pooled_dims(mod: nn.Module) -> int:
    name = type(mod).__name__
    for k in (1, 2, 3):
        if name.endswith(f"{k}d"):
            return k
    return 0


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class _Propagator(fx.Interpreter):
    """Runs the traced graph on real tensors and tags every value with its unit space."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.gm = gm
        self.spaces = _Spaces()
        self.tags: dict[fx.Node, Any] = {}
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self.index = 0
        self.unknown: list[str] = []  # operations that fixed a space (for messages)
        self.state_keys = set(gm.state_dict())
        # parameters read directly in forward: the (dim, spaces) they were attached along, and those that
        # must stay put because some use of them is not a unit-wise elementwise op
        self.param_axes: dict[str, tuple[int, list[int]]] = {}
        self.param_blocked: set[str] = set()
        self.param_ok: set[fx.Node] = set()  # _Param arguments the current node's handler accounted for

    # ---------------------------------------------------------------------------------------- helpers
    def tag(self, arg: Any) -> Any:
        return self.tags.get(arg) if isinstance(arg, fx.Node) else None

    def fix_tag(self, tag: Any) -> None:
        if isinstance(tag, _Tag):
            self.spaces.fix(tag.space)
        elif isinstance(tag, tuple):
            for t in tag:
                self.fix_tag(t)

    @staticmethod
    def describe(n: fx.Node) -> str:
        """``add = add(embed, getitem_1)``: the node, its operation and inputs, for messages."""
        t = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        inputs: list[str] = []
        fx.node.map_arg(n.args, lambda a: inputs.append(a.name) or a)
        return f"{n.name} = {t}({', '.join(inputs)})"

    def fix_args(self, node: fx.Node, why: str | None = None) -> None:
        found = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        tagged = [n for n in found if self.tags.get(n) is not None]
        for n in tagged:
            self.fix_tag(self.tags[n])
        if why and tagged:
            self.unknown.append(why)

    def producer(self, name: str, size: int, out: torch.Tensor, axis: int, axes: list[Axis]) -> _Tag:
        s = self.spaces.new(name, size)
        for a in axes:
            self.spaces.attach(s, a)
        return _Tag(s, axis, out.dim())

    def consume(self, tag: Any, axis: int, block_ok: bool, key: str, dim: int) -> None:
        """Attach weight axis ``dim`` of ``key`` to the units of ``tag`` if they sit on ``axis``."""
        if not isinstance(tag, _Tag):
            self.fix_tag(tag)
            return
        if tag.axis != axis or (tag.block != 1 and not block_ok):
            self.spaces.fix(tag.space)
            return
        self.spaces.attach(tag.space, Axis(key, dim, tag.block))

    def keep(self, tag: Any, out: Any, axis: int | None = None) -> Any:
        if not isinstance(tag, _Tag) or not isinstance(out, torch.Tensor):
            self.fix_tag(tag)
            return None
        return _Tag(tag.space, tag.axis if axis is None else axis, out.dim(), tag.block)

    # ---------------------------------------------------------------------------------------- driver
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        self.index += 1
        self.param_ok = set()
        if n.op == "get_attr":
            ok = isinstance(out, torch.Tensor) and n.target in self.state_keys
            tag = _Param(n.target, tuple(range(out.dim()))) if ok else None
        elif n.op == "placeholder":
            tag = None
        elif n.op == "output":
            self.fix_args(n)
            tag = None
        elif n.op == "call_module":
            tag = self.on_module(n, self.gm.get_submodule(n.target), args, kwargs, out)
            if isinstance(tag, _Tag) and tag.block == 1 and isinstance(out, torch.Tensor) and self.calls[n.target] == 1:
                activation = isinstance(self.gm.get_submodule(n.target), _ACTIVATION_MODULES)
                self.spaces.probes[self.spaces.find(tag.space)].append((self.index, n.target, tag.axis, activation))
        else:
            tag = self.on_function(n, args, kwargs, out)
        used: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: used.append(a) or a)
        for a in used:  # any use of a direct parameter not accounted for pins it
            if isinstance(self.tags.get(a), _Param) and a not in self.param_ok:
                self.block_param(self.tags[a].key, n)
        self.tags[n] = tag
        return out

    def block_param(self, key: str, n: fx.Node) -> None:
        if key not in self.param_blocked:
            self.param_blocked.add(key)
            for s in self.param_axes.get(key, (0, []))[1]:
                if not self.spaces.fixed[self.spaces.find(s)]:
                    self.unknown.append(self.describe(n))
                self.spaces.fix(s)

    def attach_param(self, p: _Param, dim: int, space: int, block: int) -> bool:
        """Permute tensor ``p.key`` along its axis ``dim`` with ``space``; False if that is not allowed."""
        if p.key in self.param_blocked or dim in p.partial:
            return False
        known = self.param_axes.get(p.key)
        if known is not None and known[0] != dim:
            return False
        self.param_axes.setdefault(p.key, (dim, []))[1].append(space)
        self.spaces.attach(space, Axis(p.key, dim, block))
        return True

    # ---------------------------------------------------------------------------------------- modules
    def on_module(self, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        name = n.target
        x_tag = self.tag(n.args[0]) if n.args else None
        x = args[0] if args else None
        if isinstance(mod, nn.Linear) and len(n.args) == 1 and not n.kwargs:
            self.consume(x_tag, x.dim() - 1, True, f"{name}.weight", 1)
            axes = [Axis(f"{name}.weight", 0)] + ([Axis(f"{name}.bias", 0)] if mod.bias is not None else [])
            return self.producer(name, mod.out_features, out, out.dim() - 1, axes)
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and len(n.args) == 1 and not n.kwargs:
            k = len(mod.kernel_size)
            if mod.groups != 1:
                self.fix_tag(x_tag)
                self.unknown.append(f"{name} (grouped convolution)")
                return None
            self.consume(x_tag, x.dim() - k - 1, False, f"{name}.weight", 1)
            axes = [Axis(f"{name}.weight", 0)] + ([Axis(f"{name}.bias", 0)] if mod.bias is not None else [])
            return self.producer(name, mod.out_channels, out, out.dim() - k - 1, axes)
        if isinstance(mod, nn.Embedding) and len(n.args) == 1 and not n.kwargs:
            self.fix_tag(x_tag)
            return self.producer(name, mod.embedding_dim, out, out.dim() - 1, [Axis(f"{name}.weight", 1)])
        if isinstance(mod, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            return self.attention_module(n, mod, out)
        if len(n.args) != 1 or n.kwargs:
            self.fix_args(n, f"{name} ({type(mod).__name__})")
            return None
        if not isinstance(x_tag, _Tag):
            self.fix_tag(x_tag)
            return None
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if x_tag.axis != 1 or x_tag.block != 1:
                self.spaces.fix(x_tag.space)
                return None
            keys = [k for k in ("weight", "bias") if getattr(mod, k, None) is not None]
            keys += ["running_mean", "running_var"] if mod.running_mean is not None else []
            for k in keys:
                self.spaces.attach(x_tag.space, Axis(f"{name}.{k}", 0))
            return self.keep(x_tag, out)
        if isinstance(mod, nn.LayerNorm):
            nd = len(mod.normalized_shape)
            if x_tag.axis < x.dim() - nd:  # normalises other axes, unit by unit
                return self.keep(x_tag, out)
            if nd != 1 or x_tag.block != 1:
                self.spaces.fix(x_tag.space)
                return None
            for k in ("weight", "bias"):
                if getattr(mod, k, None) is not None:
                    self.spaces.attach(x_tag.space, Axis(f"{name}.{k}", 0))
            return self.keep(x_tag, out)
        if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
            if x_tag.axis != (1 if x.dim() > 1 else 0) or x_tag.block != 1:
                self.spaces.fix(x_tag.space)
                return None
            self.spaces.attach(x_tag.space, Axis(f"{name}.weight", 0))
            return self.keep(x_tag, out)
        if isinstance(mod, nn.Flatten):
            return self.flatten(x_tag, x, out, mod.start_dim, mod.end_dim)
        if isinstance(mod, (nn.PReLU, *CHANNELWISE)):
            k = _pooled_dims(mod) if "Pool" in type(mod).__name__ else 0
            if x_tag.axis >= x.dim() - k or out.dim() != x.dim():
                self.spaces.fix(x_tag.space)
                return None
            return self.keep(x_tag, out)
        self.fix_args(n, f"{name} ({type(mod).__name__})")
        return None

    # ---------------------------------------------------------------------------------------- attention
    def heads(self, name: str, mha: nn.MultiheadAttention) -> None:
        """Open the head group of ``mha``: whole heads (``head_dim`` rows of q, k, v; columns of out_proj)."""
        h, e = mha.num_heads, mha.embed_dim
        if h < 2:
            return
        hd = e // h
        p = f"{name}." if name else ""
        if mha._qkv_same_embed_dim:
            axes = [Axis(f"{p}in_proj_weight", 0, hd, off) for off in (0, e, 2 * e)]
        else:
            axes = [Axis(f"{p}{w}_proj_weight", 0, hd) for w in "qkv"]
        if mha.in_proj_bias is not None:
            axes += [Axis(f"{p}in_proj_bias", 0, hd, off) for off in (0, e, 2 * e)]
        if mha.bias_k is not None:
            axes += [Axis(f"{p}bias_k", 2, hd), Axis(f"{p}bias_v", 2, hd)]
        axes.append(Axis(f"{p}out_proj.weight", 1, hd))
        s = self.spaces.new(f"{p}heads", h)
        for a in axes:
            self.spaces.attach(s, a)

    def stream_axes(self, name: str, mha: nn.MultiheadAttention) -> list[Axis]:
        """Axes of ``mha`` that live in its (self-attention) input and output space."""
        p = f"{name}." if name else ""
        if mha._qkv_same_embed_dim:
            axes = [Axis(f"{p}in_proj_weight", 1)]
        else:
            axes = [Axis(f"{p}{w}_proj_weight", 1) for w in "qkv"]
        axes.append(Axis(f"{p}out_proj.weight", 0))
        if mha.out_proj.bias is not None:
            axes.append(Axis(f"{p}out_proj.bias", 0))
        return axes

    def encoder_layer(self, name: str, layer: nn.TransformerEncoderLayer, tag: Any) -> Any:
        self.heads(f"{name}.self_attn", layer.self_attn)
        act = layer.activation
        if act in (F.relu, F.gelu) or isinstance(act, CHANNELWISE):
            axes = [Axis(f"{name}.linear1.weight", 0), Axis(f"{name}.linear2.weight", 1)]
            if layer.linear1.bias is not None:
                axes.append(Axis(f"{name}.linear1.bias", 0))
            s = self.spaces.new(f"{name}.linear1", layer.linear1.out_features)
            for a in axes:
                self.spaces.attach(s, a)
        else:
            self.unknown.append(f"{name}.activation ({act!r})")
        if not isinstance(tag, _Tag) or tag.axis != tag.ndim - 1 or tag.block != 1:
            self.fix_tag(tag)
            return None
        axes = self.stream_axes(f"{name}.self_attn", layer.self_attn)
        axes += [Axis(f"{name}.linear1.weight", 1), Axis(f"{name}.linear2.weight", 0)]
        if layer.linear2.bias is not None:
            axes.append(Axis(f"{name}.linear2.bias", 0))
        for norm in ("norm1", "norm2"):
            axes += [Axis(f"{name}.{norm}.{k}", 0) for k in ("weight", "bias") if getattr(getattr(layer, norm), k, None) is not None]
        for a in axes:
            self.spaces.attach(tag.space, a)
        return tag

    def attention_module(self, n: fx.Node, mod: nn.Module, out: Any) -> Any:
        bound = inspect.signature(mod.forward).bind(*n.args, **n.kwargs)
        values = dict(bound.arguments)
        name = n.target
        if isinstance(mod, nn.MultiheadAttention):
            q, k, v = (values.get(x) for x in ("query", "key", "value"))
            per_head_weights = values.get("need_weights", True) and not values.get("average_attn_weights", True)
            if not per_head_weights:  # per-head attention maps would move with the heads
                self.heads(name, mod)
            rest = [a for key, a in values.items() if key not in ("query", "key", "value")]
            for a in rest:
                self.fix_tag(self.tag(a))
            tag = self.tag(q)
            if not (q is k is v) or not isinstance(tag, _Tag) or tag.axis != tag.ndim - 1 or tag.block != 1:
                for a in (q, k, v):
                    self.fix_tag(self.tag(a))
                return (None, None)
            for a in self.stream_axes(name, mod)[:-2 if mod.out_proj.bias is not None else -1]:
                self.spaces.attach(tag.space, a)
            out_axes = self.stream_axes(name, mod)[-2 if mod.out_proj.bias is not None else -1:]
            return (self.producer(f"{name}.out_proj", mod.embed_dim, out[0], out[0].dim() - 1, out_axes), None)
        src = n.args[0] if n.args else values.get("src")
        for key, a in values.items():
            if a is not src:
                self.fix_tag(self.tag(a))
        tag = self.tag(src)
        tag = None if not isinstance(tag, _Tag) else _Tag(tag.space, tag.axis, out.dim(), tag.block)
        if isinstance(mod, nn.TransformerEncoderLayer):
            return self.encoder_layer(name, mod, tag)
        for i, layer in enumerate(mod.layers):
            tag = self.encoder_layer(f"{name}.layers.{i}", layer, tag)
        if mod.norm is not None and tag is not None:
            if not isinstance(mod.norm, nn.LayerNorm):
                self.fix_tag(tag)
                return None
            for k in ("weight", "bias"):
                if getattr(mod.norm, k, None) is not None:
                    self.spaces.attach(tag.space, Axis(f"{name}.norm.{k}", 0))
        return tag

    # ---------------------------------------------------------------------------------------- functions
    def flatten(self, tag: Any, x: torch.Tensor, out: torch.Tensor, start: int, end: int) -> Any:
        if not isinstance(tag, _Tag):
            return None
        start, end = _norm_dim(start, x.dim()), _norm_dim(end, x.dim())
        if tag.axis < start:
            return self.keep(tag, out)
        if tag.axis > end:
            return self.keep(tag, out, tag.axis - (end - start))
        if tag.axis == start:
            block = tag.block * math.prod(x.shape[start + 1 : end + 1])
            return _Tag(tag.space, start, out.dim(), block)
        self.spaces.fix(tag.space)
        return None

    def binary(self, n: fx.Node, args: tuple, out: Any) -> Any:
        nodes = [a for a in n.args if isinstance(a, fx.Node)]
        tensors = [(a, v) for a, v in zip(n.args, args) if isinstance(v, torch.Tensor)]
        tagged = [self.tags.get(a) for a in nodes if isinstance(self.tags.get(a), _Tag)]
        if not tagged:
            return None
        first = tagged[0]
        rel = first.axis - first.ndim  # position from the end (broadcasting aligns from the right)
        ok = isinstance(out, torch.Tensor) and len(n.args) == 2 and not n.kwargs
        params = []  # (node, tag, tensor axis) of parameters that vary along the units
        for a, v in tensors:
            t = self.tags.get(a) if isinstance(a, fx.Node) else None
            if isinstance(t, _Tag):
                ok = ok and t.axis - t.ndim == rel and t.block == first.block
            elif v.dim() >= -rel and v.shape[v.dim() + rel] != 1:
                dim = t.dims[v.dim() + rel] if isinstance(t, _Param) else None
                if dim is None:
                    ok = False  # an unpermuted tensor that varies along the units
                else:
                    params.append((a, t, dim))
        if not ok:
            for t in tagged:
                self.spaces.fix(t.space)
            self.unknown.append(self.describe(n))
            return None
        s = first.space
        for t in tagged[1:]:
            s = self.spaces.union(s, t.space)
        for node, p, dim in params:  # ``x + self.pos``: the parameter moves with the units
            if self.attach_param(p, dim, s, first.block):
                self.param_ok.add(node)
            else:
                self.spaces.fix(s)
                self.unknown.append(self.describe(n))
        return _Tag(s, out.dim() + rel, out.dim(), first.block)

    def on_function(self, n: fx.Node, args: tuple, kwargs: dict, out: Any) -> Any:
        t = n.target
        is_method = n.op == "call_method"
        x_tag = self.tag(n.args[0]) if n.args else None
        x = args[0] if args else None
        if t is operator.getitem:
            if isinstance(x_tag, _Param) and isinstance(out, torch.Tensor):
                sliced = self.param_getitem(x_tag, x, args[1])
                if sliced is not None:
                    self.param_ok.add(n.args[0])
                fx.node.map_arg(n.args[1], lambda a: self.fix_tag(self.tags.get(a)) or a)
                return sliced
            if isinstance(x_tag, tuple):
                return x_tag[n.args[1]] if isinstance(n.args[1], int) else None
            return self.getitem(n, x_tag, x, args[1], out)
        if t is getattr or (is_method and t in ("size", "dim")):
            if t is getattr and n.args[1] not in _SAFE_ATTRIBUTES:
                self.fix_args(n, self.describe(n))
            return None
        others = [a for a in list(n.args[1:]) + list(n.kwargs.values()) if isinstance(self.tag(a), (_Tag, tuple))] if n.args else []
        if (t in _BINARY_FUNCTIONS and not is_method) or (is_method and t in _BINARY_METHODS):
            return self.binary(n, args, out)
        if others:
            self.fix_args(n, self.describe(n))
            return None
        if not isinstance(x_tag, _Tag):  # e.g. torch.cat([a, b]): tagged values inside a list
            self.fix_args(n, self.describe(n))
            return None
        if (not is_method and t in _ELEMENTWISE_FUNCTIONS) or (is_method and t in _ELEMENTWISE_METHODS):
            if isinstance(out, torch.Tensor) and out.shape == x.shape:
                return self.keep(x_tag, out)
        elif (not is_method and t is torch.flatten) or (is_method and t == "flatten"):
            start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            return self.flatten(x_tag, x, out, start, end)
        elif (not is_method and t in _REDUCTIONS) or (is_method and t in _REDUCTION_METHODS):
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            if dims is not None:
                dims = {_norm_dim(d, x.dim()) for d in ((dims,) if isinstance(dims, int) else dims)}
                if x_tag.axis not in dims:
                    axis = x_tag.axis if keepdim else x_tag.axis - sum(d < x_tag.axis for d in dims)
                    return self.keep(x_tag, out, axis)
        elif not is_method and t in _POOL_FUNCTIONS:
            if x_tag.axis < x.dim() - _POOL_FUNCTIONS[t] and out.dim() == x.dim():
                return self.keep(x_tag, out)
        elif (is_method and t in ("view", "reshape")) or (not is_method and t is torch.reshape):
            return self.reshape(x_tag, x, out)
        elif (is_method and t in ("transpose", "permute")) or (not is_method and t in (torch.transpose, torch.permute)):
            order = list(range(x.dim()))
            rest = args[1:]
            if t in ("transpose", torch.transpose):
                i, j = (_norm_dim(d, x.dim()) for d in rest[:2])
                order[i], order[j] = order[j], order[i]
            else:
                order = [_norm_dim(d, x.dim()) for d in (rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest)]
            return self.keep(x_tag, out, order.index(x_tag.axis))
        self.spaces.fix(x_tag.space)
        self.unknown.append(self.describe(n))
        return None

    def reshape(self, tag: _Tag, x: torch.Tensor, out: torch.Tensor) -> Any:
        s, o, a = tuple(x.shape), tuple(out.shape), tag.axis
        if o[: a + 1] == s[: a + 1]:  # only the axes after the units are regrouped
            return self.keep(tag, out)
        if len(o) == a + 1 and o[:a] == s[:a]:  # a flatten of the units with everything after them
            return _Tag(tag.space, a, out.dim(), tag.block * math.prod(s[a + 1 :]))
        tail = len(s) - a
        if len(o) >= tail and o[-tail:] == s[a:]:  # only the axes before the units are regrouped
            return self.keep(tag, out, len(o) - tail)
        self.spaces.fix(tag.space)
        return None

    @staticmethod
    def param_getitem(p: _Param, x: torch.Tensor, index: Any) -> _Param | None:
        """``self.pos[: x.shape[1]]``: basic indexing keeps track of which tensor axes survive, and which are cut."""
        index = index if isinstance(index, tuple) else (index,)
        if not all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in index):
            return None
        consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for i in index:
            expanded += [slice(None)] * (x.dim() - consumed) if i is Ellipsis else [i]
        expanded += [slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None))
        dims, partial, d = [], set(p.partial), 0
        for i in expanded:
            if i is None:
                dims.append(None)
                continue
            src = p.dims[d]
            if isinstance(i, int) or range(x.shape[d])[i] != range(x.shape[d]):
                if src is not None:
                    partial.add(src)
            if isinstance(i, slice):
                dims.append(src)
            d += 1
        return _Param(p.key, tuple(dims), frozenset(partial))

    def getitem(self, n: fx.Node, tag: Any, x: Any, index: Any, out: Any) -> Any:
        """``x[index]`` with basic indexing (ints, slices, None, Ellipsis) that leaves the units' axis whole."""
        fx.node.map_arg(n.args[1], lambda a: self.fix_tag(self.tags.get(a)) or a)  # tensors used as indices
        if not isinstance(tag, _Tag):
            return None
        index = index if isinstance(index, tuple) else (index,)
        if not all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in index):
            self.spaces.fix(tag.space)  # advanced indexing may move or gather along the units
            return None
        consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for i in index:
            expanded += [slice(None)] * (x.dim() - consumed) if i is Ellipsis else [i]
        expanded += [slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None))
        dim, new_axis = 0, 0
        for i in expanded:
            if i is None:
                new_axis += 1
                continue
            if dim == tag.axis:
                if i != slice(None):
                    break
                return self.keep(tag, out, new_axis)
            new_axis += isinstance(i, slice)
            dim += 1
        self.spaces.fix(tag.space)
        return None


def traced_spec(model: nn.Module, example_input: Any) -> tuple[list[HiddenLayer], list[str]]:
    """The hidden layers of ``model`` found by tracing it on ``example_input``, and the operations that
    forced units to stay unpermuted."""
    tracer = fx.Tracer()  # torch.nn modules (attention and encoder layers included) stay leaves
    try:
        graph = tracer.trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many types for untraceable forwards
        raise NotImplementedError(
            f"{type(model).__name__}: cannot trace its forward pass with torch.fx ({type(err).__name__}: {err}); "
            "pass a hand-written PermutationSpec (spec=..., CLI: --permutation-spec module:obj)"
        ) from err
    gm = fx.GraphModule(model, graph)
    prop = _Propagator(gm)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            prop.run(*(example_input if isinstance(example_input, tuple) else (example_input,)))
    finally:
        for m, mode in modes:
            m.training = mode
    sp = prop.spaces
    layers, used = [], set()
    for s in range(len(sp.parent)):
        if sp.find(s) != s or sp.fixed[s] or sp.size[s] < 2:
            continue
        axes, seen = [], set()
        for a in sp.axes[s]:
            if (a.key, a.dim, a.offset) not in seen:
                seen.add((a.key, a.dim, a.offset))
                axes.append(a)
        probes = sp.probes[s]
        best = max((p for p in probes if p[3]), default=None) or max(probes, default=None)
        name = sp.name[s]
        while name in used:
            name += "'"
        used.add(name)
        layers.append(HiddenLayer(name, sp.size[s], tuple(axes), best[1] if best else None, best[2] if best else None))
    return layers, list(dict.fromkeys(prop.unknown))
