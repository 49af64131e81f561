"""Capture, in one forward pass, the hidden values each discovered layer feeds its output module.

For a :class:`~lightning_landscape.neurons.layers.NeuronLayer` a forward hook on the output module reads
its input (the activations). Attention heads have no module boundary there: ``nn.MultiheadAttention``
applies ``out_proj`` inside ``F.multi_head_attention_forward``. A ``TorchFunctionMode`` intercepts that
call, runs it with an identity output projection (so it returns the concatenated head outputs ``z``,
with PyTorch's own masking and dropout), and applies ``out_proj`` to ``z`` itself — the same numbers the
model would have produced, from one attention computation. The active mode also keeps PyTorch's fused
Transformer fast path (which bypasses module hooks) off during the pass.

Example:
    >>> fc1, fc2 = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)
    >>> layer = NeuronLayer("fc1", "fc1", "fc2", fc1, fc2, "tanh", "odd")
    >>> x = torch.randn(8, 2)
    >>> h_ms, out_ms = capture_hidden([layer], lambda: fc2(torch.tanh(fc1(x))))["fc1"]
    >>> torch.allclose(h_ms, torch.tanh(fc1(x)).detach().double().pow(2).mean(0))
    True
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from lightning_landscape.neurons.layers import HeadLayer, NeuronLayer
from lightning_landscape.sharded import gathered

_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _output_ms(out: torch.Tensor, bias: torch.Tensor | None, channel_dim: int | None) -> torch.Tensor:
    out = out.detach().double()
    if bias is not None:
        shape = [-1] if channel_dim is None else [1, -1] + [1] * (out.ndim - 2)
        out = out - gathered(bias).double().reshape(shape)
    return out.pow(2).mean()


class _HeadCapture(TorchFunctionMode):
    """Serve head layers (by ``out_proj.weight`` identity); pass every other call through unchanged."""

    def __init__(self, heads: dict[int, HeadLayer], record: Callable[[NeuronLayer, torch.Tensor, torch.Tensor], None]):
        super().__init__()
        self.heads, self.record = heads, record

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.multi_head_attention_forward or not self.heads:
            return func(*args, **kwargs)
        bound = _MHA_SIGNATURE.bind(*args, **kwargs)
        weight = bound.arguments.get("out_proj_weight")
        layer = self.heads.get(id(weight))
        if layer is None:
            return func(*args, **kwargs)
        bias = bound.arguments.get("out_proj_bias")
        e = weight.shape[1]
        bound.arguments["out_proj_weight"] = torch.eye(e, dtype=weight.dtype, device=weight.device)
        bound.arguments["out_proj_bias"] = None
        z, attn = func(*bound.args, **bound.kwargs)
        out = F.linear(z, weight, bias)
        self.record(layer, layer.unit_mean_square(z), _output_ms(out, bias, None))
        return out, attn


def capture_hidden(layers: Sequence[NeuronLayer], forward: Callable[[], Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run ``forward`` once (no graph); per layer name: per-unit mean square of the hidden values entering
    the output module, and the mean square of that module's output minus its bias (first call only)."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(layer: NeuronLayer, h_ms: torch.Tensor, out_ms: torch.Tensor) -> None:
        stats.setdefault(layer.name, (h_ms, out_ms))  # first call only (a closure may run the model twice)

    def make_hook(layer: NeuronLayer) -> Callable:
        def hook(mod: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if layer.name in stats:
                return
            channel_dim = None if isinstance(mod, torch.nn.Linear) or output.ndim < 2 else 1
            record(layer, layer.unit_mean_square(inputs[0]), _output_ms(output, getattr(mod, "bias", None), channel_dim))
        return hook

    heads = {id(layer.mha.out_proj.weight): layer for layer in layers if isinstance(layer, HeadLayer)}
    handles = [layer.output_module.register_forward_hook(make_hook(layer))
               for layer in layers if not isinstance(layer, HeadLayer)]

    def note_head(layer: HeadLayer) -> Callable:
        def pre_hook(mod: torch.nn.Module, inputs: tuple) -> None:  # FSDP2 swaps in gathered weights first
            heads[id(mod.out_proj.weight)] = layer
        return pre_hook

    handles += [layer.mha.register_forward_pre_hook(note_head(layer)) for layer in layers if isinstance(layer, HeadLayer)]
    try:
        with torch.no_grad(), _HeadCapture(heads, record):
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return stats
