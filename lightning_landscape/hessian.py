"""The Hessian of a loss as a matrix-free linear operator on the flat parameter vector.

The gradient graph (``create_graph=True``) is built once per measurement and every Hessian-vector
product differentiates it again with ``retain_graph=True``: one backward pass per HVP instead of a
fresh double backward. Only ``torch.autograd.grad`` is used, so ``.grad`` fields (and accumulated
gradients) are never touched.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from lightning_landscape.parameters import ParameterSpace
from lightning_landscape.sharded import after_write

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _live(grads: tuple[torch.Tensor | None, ...]) -> list[int]:
    """Indices of the gradient entries that themselves depend on the parameters (the rest have zero rows)."""
    return [i for i, g in enumerate(grads) if g is not None and g.requires_grad]


def _dense_from_matvec(matvec: Callable[[torch.Tensor], torch.Tensor], space: ParameterSpace) -> torch.Tensor:
    """The dense Hessian, column by column (one product each), symmetrised."""
    eye = torch.eye(space.dim, dtype=space.dtype, device=space.device)
    cols = torch.stack([matvec(eye[i]) for i in range(space.dim)], dim=1)
    return (cols + cols.T) / 2


#: Unit vectors differentiated together when the dense Hessian is built (bounds the batched pass's memory).
DENSE_BLOCK = 64


def _differentiate(
    grads: list[torch.Tensor], live: list[int], space: ParameterSpace, vector: torch.Tensor, retain_graph: bool
) -> torch.Tensor:
    """``∂(gradᵀ v)/∂θ`` as one flat vector: the second backward of a Hessian-vector product."""
    parts = space.unflatten(vector)
    hv = torch.autograd.grad(
        grads,
        [space.params[i] for i in live],
        grad_outputs=[parts[i].to(space.params[i].dtype) for i in live],
        retain_graph=retain_graph,
        allow_unused=True,
    )
    full: list[torch.Tensor | None] = [None] * len(space.params)
    for i, h in zip(live, hv):
        full[i] = None if h is None else h.detach()
    return space.flatten(full)


class _OnParameterSpace:
    """``dim``, ``dtype`` and ``device`` of the flat vectors an operator on ``self.space`` acts on."""

    space: ParameterSpace

    @property
    def dim(self) -> int:
        return self.space.dim

    @property
    def dtype(self) -> torch.dtype:
        return self.space.dtype

    @property
    def device(self) -> torch.device:
        return self.space.device


class HessianOperator(_OnParameterSpace):
    """``v -> H v`` for ``H = ∇² loss`` with respect to ``space.params``.

    ``reduce`` is applied to every gradient and HVP (under DDP: an all-reduce mean, so every rank sees
    the Hessian of the global probe batch). Parameters the loss does not depend on have zero rows.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> op = HessianOperator((w ** 3).sum(), ParameterSpace([w]))
    >>> op.matvec(torch.tensor([1.0, 0.0]))  # H = diag(6 w)
    tensor([6., 0.])
    """

    def __init__(self, loss: torch.Tensor, space: ParameterSpace, reduce: Reduce | None = None) -> None:
        if loss.ndim != 0:
            raise ValueError(f"the loss must be a scalar tensor, got shape {tuple(loss.shape)}")
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on any trainable parameter (no grad_fn)")
        self.space = space
        self.reduce = reduce or _identity
        self.loss = loss.detach()
        grads = torch.autograd.grad(loss, space.params, create_graph=True, allow_unused=True)
        self._live = _live(grads)
        self._grads = [grads[i] for i in self._live]
        self.gradient = self.reduce(space.flatten([None if g is None else g.detach() for g in grads]))
        self.num_matvecs = 0
        self._dense: torch.Tensor | None = None

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """One Hessian-vector product (counted in ``num_matvecs``)."""
        self.num_matvecs += 1
        if not self._grads:
            return self.reduce(torch.zeros_like(vector))
        return self.reduce(_differentiate(self._grads, self._live, self.space, vector, retain_graph=True))

    __call__ = matvec

    def dense(self) -> torch.Tensor:
        """The whole Hessian as a symmetric ``(dim, dim)`` matrix, built once and shared by every probe.

        Costs ``dim`` products (counted in ``num_matvecs``), differentiated ``DENSE_BLOCK`` unit vectors at
        a time in one batched backward (``is_grads_batched``), which on a small model costs a few single
        products' time; an operation without a batching rule falls back to one product per column.
        """
        if self._dense is None:
            self._dense = self._batched_dense() if self._grads else torch.zeros(
                (self.dim, self.dim), dtype=self.space.dtype, device=self.space.device)
            self.num_matvecs += self.dim
        return self._dense

    def _batched_dense(self) -> torch.Tensor:
        space, params = self.space, [self.space.params[i] for i in self._live]
        offsets = [sum(space.numels[:i]) for i in range(len(space.numels))]
        try:
            rows = []
            for start in range(0, space.dim, DENSE_BLOCK):
                stop = min(start + DENSE_BLOCK, space.dim)
                eye = torch.eye(space.dim, dtype=space.dtype, device=space.device)[start:stop]
                outs = [eye[:, offsets[i]:offsets[i] + space.numels[i]].reshape(stop - start, *space.shapes[i])
                        .to(space.params[i].dtype) for i in self._live]
                hv = torch.autograd.grad(self._grads, params, grad_outputs=outs, retain_graph=True,
                                         allow_unused=True, is_grads_batched=True)
                block = torch.zeros((stop - start, space.dim), dtype=space.dtype, device=space.device)
                for i, h in zip(self._live, hv):
                    if h is not None:
                        block[:, offsets[i]:offsets[i] + space.numels[i]] = h.detach().reshape(stop - start, -1)
                rows.append(block)
            full = self.reduce(torch.cat(rows))  # DDP: one all-reduce of the matrix (each rank's is symmetric)
            return (full + full.T) / 2
        except RuntimeError:  # no batching rule for some operation: one product per column
            count = self.num_matvecs
            out = _dense_from_matvec(self.matvec, space)
            self.num_matvecs = count
            return out

    def release(self) -> None:
        """Drop the gradient graph (frees its memory)."""
        self._grads = []
        self._live = []
        self._dense = None


LossChunk = tuple[float, Callable[[], torch.Tensor]]


class ChunkedHessianOperator(_OnParameterSpace):
    """``v -> H v`` for ``loss = Σ wᵢ lossᵢ`` without keeping a gradient graph between products.

    The memory-light counterpart of :class:`HessianOperator`: every product re-runs each chunk's forward
    and ``create_graph`` backward and differentiates it once more, so at most one chunk's graph is
    alive. Activation memory falls by the number of chunks; one product costs about a forward, a
    backward and a double backward per chunk (≈ 1.7× a product with the graph kept) and no graph is built
    up front. Each chunk's forward runs under its own fixed RNG seed, so stochastic layers (dropout) draw
    the same masks in every product and the operator stays one symmetric matrix.

    ``chunks`` are ``(weight, closure)`` pairs; for row slices of a batch under a per-sample-mean loss
    the weights are the slices' fractions of the rows, and ``H`` equals the full batch's Hessian (up to
    BatchNorm, whose batch statistics become per-chunk statistics).

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> op = ChunkedHessianOperator([(0.5, lambda: (w ** 3).sum()), (0.5, lambda: (w ** 2).sum())], ParameterSpace([w]))
    >>> op.matvec(torch.tensor([1.0, 0.0]))  # H = diag(3 w + 1)
    tensor([4., 0.])
    """

    def __init__(
        self, chunks: list[LossChunk], space: ParameterSpace, reduce: Reduce | None = None, seed: int = 0
    ) -> None:
        if not chunks:
            raise ValueError("at least one loss chunk is needed")
        self.space = space
        self.reduce = reduce or _identity
        self._chunks = list(chunks)
        self._seed = seed
        self._devices = [space.device] if space.device.type == "cuda" else []
        loss = torch.zeros((), dtype=space.dtype, device=space.device)
        gradient = torch.zeros(space.dim, dtype=space.dtype, device=space.device)
        for index, (weight, _) in enumerate(self._chunks):
            chunk_loss = self._forward(index)
            grads = torch.autograd.grad(chunk_loss, space.params, allow_unused=True)
            gradient.add_(space.flatten([None if g is None else g.detach() for g in grads]), alpha=weight)
            loss = loss + weight * chunk_loss.detach().to(space.dtype)
        self.loss = loss
        self.gradient = self.reduce(gradient)
        self.num_matvecs = 0
        self._dense: torch.Tensor | None = None

    def _forward(self, index: int) -> torch.Tensor:
        """Chunk ``index``'s loss under its own fixed seed (same dropout masks in every product)."""
        with torch.random.fork_rng(devices=self._devices):
            torch.manual_seed(self._seed * 1_000_003 + index)
            loss = self._chunks[index][1]()
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError(f"loss chunk {index} must return a scalar tensor, got {loss!r}")
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on any trainable parameter (no grad_fn)")
        return loss

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """One Hessian-vector product (counted in ``num_matvecs``), one chunk graph at a time."""
        self.num_matvecs += 1
        out = torch.zeros(self.space.dim, dtype=self.space.dtype, device=self.space.device)
        for index, (weight, _) in enumerate(self._chunks):
            grads = torch.autograd.grad(self._forward(index), self.space.params, create_graph=True, allow_unused=True)
            live = _live(grads)
            if live:  # the graph is freed with `grads` before the next chunk's forward
                out.add_(_differentiate([grads[i] for i in live], live, self.space, vector, retain_graph=False), alpha=weight)
            del grads
        return self.reduce(out)

    __call__ = matvec

    def dense(self) -> torch.Tensor:
        """The whole Hessian as a symmetric ``(dim, dim)`` matrix (``dim`` products, one per column), built once."""
        if self._dense is None:
            count = self.num_matvecs
            self._dense = _dense_from_matvec(self.matvec, self.space)
            self.num_matvecs = count + self.space.dim
        return self._dense

    def release(self) -> None:
        """Nothing is kept between products but the dense matrix, if one was built."""
        self._dense = None


class FiniteDifferenceHessianOperator(_OnParameterSpace):
    """``v -> H v`` by a central difference of gradients, for parameters autograd cannot differentiate twice.

    FSDP2's sharded parameters are never used in the graph itself (the forward pass runs on gathered
    copies), so the double backward of :class:`HessianOperator` has nothing to differentiate. Here

        ``H v ≈ |v| · (g(θ + h v̂) − g(θ − h v̂)) / 2h``,  ``v̂ = v / |v|``,

    with each gradient a fresh forward and backward through the sharding's own hooks (``space.gradient``)
    and the parameters written in place and restored bit-exactly from a copy. The step ``h = u^{1/3} ·
    min(1, |θ|)`` (``u`` the unit roundoff of the parameters' dtype) balances the truncation error
    (``∝ h²``) against cancellation (``∝ u/h``). The first product is also taken with ``2h``;
    ``error_estimate`` = ``|Hv(h) − Hv(2h)| / |Hv(h)|`` is the reported error (both error terms differ by
    a factor 2–4 between the two steps, so the difference is about the error at ``h`` or more). A
    product costs two forward and backward passes. Piecewise-linear activations (ReLU) make the gradient
    jump wherever a unit changes sign within the step: the difference then measures the loss's curvature
    at the scale ``h`` (kinks included), not the almost-everywhere Hessian autograd gives; the estimate
    then flags it, though below the actual error (0.66 reported for errors of 3.6–50 on a ReLU MLP).

    ``loss_closure`` returns this process's loss with its graph; every norm goes through
    :mod:`~lightning_landscape.linalg.reduction`, so under sharding it runs inside ``sharded_reduction``.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    >>> op = FiniteDifferenceHessianOperator(lambda: (w ** 3).sum(), ParameterSpace([w]))
    >>> op.matvec(torch.tensor([1.0, 0.0], dtype=torch.float64)).round(decimals=6)  # H = diag(6 w)
    tensor([6., 0.], dtype=torch.float64)
    """

    def __init__(self, loss_closure: Callable[[], torch.Tensor], space: ParameterSpace,
                 reduce: Reduce | None = None) -> None:
        from lightning_landscape.linalg.reduction import norm

        self.space = space
        self._closure = loss_closure
        self._norm = norm
        with torch.enable_grad():
            loss = loss_closure()
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise ValueError(f"the loss must be a scalar tensor, got {loss!r}")
            if not loss.requires_grad:
                raise ValueError("the loss does not depend on any trainable parameter (no grad_fn)")
            self.loss = (reduce or _identity)(loss.detach())
            self.gradient = space.gradient(loss)
        del loss
        roundoff = torch.finfo(space.params[0].dtype).eps / 2
        theta_norm = float(norm(space.flatten_params()))
        # Not scaled up with |θ|: along the top eigenvector (where Lanczos converges) truncation dominates,
        # and a step u^{1/3}·|θ| was 10³× less accurate there on a 10 M-parameter MLP (benchmarks/fd_hvp.py).
        self.step = roundoff ** (1 / 3) * (min(1.0, theta_norm) if theta_norm > 0 else 1.0)
        self.num_matvecs = 0
        self.num_gradients = 1
        self.error_estimate: float | None = None
        self.versions = self._versions()

    def _versions(self) -> tuple[int, ...]:
        return tuple(t._version for t in self.space.local_tensors())

    def _gradient_at(self, saved: list[torch.Tensor], direction: list[torch.Tensor], scale: float) -> torch.Tensor:
        """The gradient at ``θ + scale · direction`` (θ = ``saved``)."""
        with torch.no_grad():
            for t, base, d in zip(self.space.local_tensors(), saved, direction):
                torch.add(base, d.to(t.dtype), alpha=scale, out=t)
        after_write()  # FSDP2: no stale gathered copy may serve the next forward
        with torch.enable_grad():
            return self.space.gradient(self._closure())

    def _difference(self, vector: torch.Tensor, size: float, step: float) -> torch.Tensor:
        locals_ = self.space.local_tensors()
        saved = [t.detach().clone() for t in locals_]
        parts = self.space.unflatten(vector)
        try:
            plus = self._gradient_at(saved, parts, step / size)
            minus = self._gradient_at(saved, parts, -step / size)
        finally:
            with torch.no_grad():
                for t, base in zip(locals_, saved):
                    t.copy_(base)
            after_write()
        self.num_gradients += 2
        return plus.sub_(minus).mul_(size / (2 * step))

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """One Hessian-vector product (counted in ``num_matvecs``): two gradients, three on the first call."""
        self.num_matvecs += 1
        size = float(self._norm(vector))
        if size == 0.0 or not math.isfinite(size):
            return torch.zeros_like(vector) if size == 0.0 else torch.full_like(vector, float("nan"))
        out = self._difference(vector, size, self.step)
        if self.error_estimate is None:
            coarse = self._difference(vector, size, 2 * self.step)
            scale = float(self._norm(out))
            self.error_estimate = float(self._norm(coarse.sub_(out))) / scale if scale > 0 else 0.0
        self.versions = self._versions()
        return out

    __call__ = matvec

    def release(self) -> None:
        """Nothing is kept between products."""
