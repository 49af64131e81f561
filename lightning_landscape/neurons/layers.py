"""Neuron layers and attention-head layers: each unit's input and output weights, with BatchNorm folded in.

A :class:`NeuronLayer` is ``input_module → [BatchNorm] → σ → output_module``. A BatchNorm between the
layer and σ is, in eval form, the per-channel affine map ``z ↦ aᵢ zᵢ + bᵢ`` with

    ``aᵢ = γᵢ / sqrt(running_varᵢ + eps)``,   ``bᵢ = βᵢ − aᵢ · running_meanᵢ``,

so neuron i's pre-activation is ``(aᵢ wᵢ)·x + (aᵢ cᵢ + bᵢ)`` (``wᵢ, cᵢ`` the layer's weight row and bias):
:meth:`NeuronLayer.input_weights` returns these *folded* rows — the input weights the activation sees —
so ε, merging and effective width compare what each neuron computes, not the raw convolution filters.

A :class:`HeadLayer` treats the heads of an ``nn.MultiheadAttention`` as units: head h's input weights
are its rows of the query, key and value projections (with their biases), its output weights its
``head_dim`` columns of ``out_proj``. Two heads with equal input weights compute the same head output
``z_h``, so together they act as one head with output weights ``O_i + O_j`` (merged, symmetry
``"none"``); a head whose contribution ``‖O_h‖_F · rms‖z_h‖`` is negligible is dead. Heads equal only up
to the per-head gauge (``W_Q → M W_Q, W_K → M^{-T} W_K``, ``W_V → N W_V, O → O N^{-1}``) are not merged:
the effective number of heads is an upper bound.

Example (the BatchNorm folded into the input weights equals the BatchNorm applied in eval mode):
    >>> fc, bn = torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4).eval()
    >>> with torch.no_grad():
    ...     _ = bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    >>> layer = NeuronLayer("fc", "fc", "out", fc, torch.nn.Linear(4, 1), "relu", "homogeneous", norm=bn, norm_name="bn")
    >>> x = torch.randn(5, 3)
    >>> w = layer.input_weights()  # [4, 3 + 1]
    >>> torch.allclose(x @ w[:, :3].T + w[:, 3], bn(fc(x)), atol=1e-6)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_landscape.sharded import gathered

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-form per-channel map ``z ↦ a z + b`` of a BatchNorm (float64, detached).

    >>> bn = torch.nn.BatchNorm1d(2, affine=False, eps=0.25)
    >>> with torch.no_grad():
    ...     _ = bn.running_mean.fill_(3.0), bn.running_var.fill_(4.0)
    >>> a, b = batchnorm_affine(bn)  # a = 1/sqrt(4 + 0.25), b = -3a
    >>> [round(v, 6) for v in a.tolist()], [round(v, 6) for v in b.tolist()]
    ([0.485071, 0.485071], [-1.455214, -1.455214])
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"expected a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} keeps no running statistics (track_running_stats=False): its "
                         "eval-form affine map is undefined")
    mean, var = gathered(bn.running_mean).double(), gathered(bn.running_var).double()
    a = 1.0 / torch.sqrt(var + bn.eps)
    b = -a * mean
    if bn.weight is not None:
        a = a * gathered(bn.weight).double()
        b = b * gathered(bn.weight).double()
    if bn.bias is not None:
        b = b + gathered(bn.bias).double()
    return a, b


@dataclass(eq=False)
class NeuronLayer:
    """One hidden layer of neurons: ``input_module`` → [``norm``] → σ → ``output_module``.

    ``name`` (the input module's qualified name) is the tag key: ``neurons/<name>/effective_width``.
    ``norm`` is a BatchNorm between the input module and σ, folded into :meth:`input_weights`.
    ``kind`` is ``"neurons"`` (or ``"heads"`` for :class:`HeadLayer`).

    >>> fc1, fc2 = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    >>> layer = NeuronLayer("fc1", "fc1", "fc2", fc1, fc2, "relu", "homogeneous")
    >>> tuple(layer.input_weights().shape), tuple(layer.output_weights().shape)
    ((4, 4), (4, 2))
    """

    name: str
    input_name: str
    output_name: str
    input_module: nn.Module
    output_module: nn.Module
    activation: str
    symmetry: str
    norm: nn.Module | None = None
    norm_name: str | None = None

    kind = "neurons"

    @property
    def width(self) -> int:
        """Number of neurons (output features / channels of the input module)."""
        return int(self.input_module.weight.shape[0])

    def input_weights(self) -> torch.Tensor:
        """``[width, fan_in (+1 with bias)]``: row i is neuron i's input weights (bias last), detached; with a
        BatchNorm folded in (eval form) and then always with the bias column."""
        w = gathered(self.input_module.weight)
        rows = w.reshape(w.shape[0], -1)
        bias = getattr(self.input_module, "bias", None)
        if self.norm is not None:
            a, b = batchnorm_affine(self.norm)
            a, b = a.to(rows.device), b.to(rows.device)
            c = gathered(bias).double() if bias is not None else torch.zeros_like(a)
            folded = torch.cat([rows.double() * a[:, None], (a * c + b)[:, None]], dim=1)
            return folded.to(rows.dtype)
        if bias is not None:
            rows = torch.cat([rows, gathered(bias).reshape(-1, 1).to(rows.dtype)], dim=1)
        return rows

    def output_weights(self) -> torch.Tensor:
        """``[width, fan_out]``: row i is neuron i's output weights (a column / input channel of the next layer)."""
        w = gathered(self.output_module.weight)
        return w.transpose(0, 1).reshape(w.shape[1], -1)

    def unit_mean_square(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-unit mean square ``E[h_i²]`` of the hidden values entering the output module (float64)."""
        h = hidden.detach().double()
        if not isinstance(self.output_module, nn.Linear):
            h = h.movedim(1 if h.ndim > 1 else 0, -1)  # conv: channels last
        return h.reshape(-1, h.shape[-1]).pow(2).mean(0)

    def describe(self) -> str:
        via = f" → {self.norm_name} (folded)" if self.norm is not None else ""
        return f"{self.input_name}{via} → {self.activation} ({self.symmetry}) → {self.output_name}, width {self.width}"


@dataclass(eq=False)
class HeadLayer(NeuronLayer):
    """The heads of an ``nn.MultiheadAttention`` (``input_module``) as units (see the module docstring).

    >>> mha = torch.nn.MultiheadAttention(8, 2)
    >>> heads = HeadLayer.of("attn", mha)
    >>> heads.width, tuple(heads.input_weights().shape), tuple(heads.output_weights().shape)
    (2, (2, 108), (2, 32))
    """

    kind = "heads"

    @classmethod
    def of(cls, name: str, mha: nn.MultiheadAttention) -> "HeadLayer":
        return cls(name, name, f"{name}.out_proj", mha, mha.out_proj, "attention", "none")

    @property
    def mha(self) -> nn.MultiheadAttention:
        return self.input_module  # type: ignore[return-value]

    @property
    def width(self) -> int:
        return int(self.mha.num_heads)

    def _per_head(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """``[E, ...]`` rows (or an ``[E]`` bias) split by head → ``[H, -1]``."""
        if t is None:
            return None
        return gathered(t).reshape(self.width, -1)

    def input_weights(self) -> torch.Tensor:
        """``[heads, ·]``: head h's query, key and value projection rows and biases (and ``bias_k``/``bias_v``)."""
        m, e = self.mha, self.mha.embed_dim
        if m.in_proj_weight is not None:
            wq, wk, wv = gathered(m.in_proj_weight).split(e, dim=0)
        else:
            wq, wk, wv = gathered(m.q_proj_weight), gathered(m.k_proj_weight), gathered(m.v_proj_weight)
        parts: list[Any] = [self._per_head(wq), self._per_head(wk), self._per_head(wv)]
        if m.in_proj_bias is not None:
            parts += [self._per_head(b) for b in gathered(m.in_proj_bias).split(e)]
        for extra in (m.bias_k, m.bias_v):
            if extra is not None:
                parts.append(self._per_head(extra.reshape(-1)))
        return torch.cat([p.to(wq.dtype) for p in parts], dim=1)

    def output_weights(self) -> torch.Tensor:
        """``[heads, embed_dim · head_dim]``: head h's columns of ``out_proj.weight``."""
        w = gathered(self.mha.out_proj.weight)  # [E_out, E]
        return w.transpose(0, 1).reshape(self.width, -1)

    def unit_mean_square(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-head ``E‖z_h‖²`` from the concatenated head outputs ``[..., E]`` (the input of ``out_proj``)."""
        h = hidden.detach().double()
        return h.reshape(-1, self.width, h.shape[-1] // self.width).pow(2).sum(-1).mean(0)
