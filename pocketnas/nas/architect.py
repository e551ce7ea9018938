"""The architecture step of DARTS (Liu et al., ICLR 2019, section 2.3).

First order: alpha <- alpha - lr * grad_alpha L_val(w, alpha).

Second order (eq. 7-8): with the one-step unrolled weights w' = w - xi * grad_w L_train(w, alpha) (the weight
optimizer's momentum and weight decay included, as pt.darts does),

    grad_alpha L_val(w', alpha) - xi * grad^2_{alpha,w} L_train(w, alpha) . grad_w' L_val(w', alpha)

where the Hessian-vector product is the finite difference
    (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps),  w+- = w +- eps * grad_w' L_val,
    eps = 0.01 / |grad_w' L_val|.
An optional penalty on the alphas (the budget term of :mod:`pocketnas.nas.budget`, beta-DARTS's regulariser of
:mod:`pocketnas.nas.beta_decay`, or both) adds its gradient to the alphas' gradient.

Only the alphas' gradients are asked of the two finite-difference passes, so the weights are frozen while they
run: autograd then keeps no tensor that only a weight gradient would need (less time and memory, the same values).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional

import torch
import torch.nn as nn

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """``requires_grad`` off for ``params`` inside the block, so autograd keeps no tensor that only their gradients
    would need (less memory and time, the same values for the gradients asked for); back on after."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Architect:
    def __init__(self, net: nn.Module, loss_fn: LossFn, w_momentum: float, w_weight_decay: float,
                 alpha_optimizer: torch.optim.Optimizer, order: str = "first",
                 budget_fn: Optional[Callable[[], torch.Tensor]] = None,
                 grad_hook: Optional[Callable[[List[nn.Parameter]], None]] = None, only_needed_grads: bool = True):
        if order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', not {order!r}")
        self.net, self.loss_fn = net, loss_fn
        self.w_momentum, self.w_weight_decay = w_momentum, w_weight_decay
        self.optimizer = alpha_optimizer
        self.order = order
        self.budget_fn = budget_fn
        self.grad_hook = grad_hook  # e.g. averaging across processes
        # first order: differentiate for the alphas only (no weight gradients are computed just to be dropped)
        self.only_needed_grads = only_needed_grads
        self.v_net: Optional[nn.Module] = None
        self._v_weights: List[nn.Parameter] = []
        self._buffer_pairs: List = []

    def step(self, train_x, train_y, val_x, val_y, xi: float, w_optimizer: torch.optim.Optimizer) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        if self.order == "first":
            if self.only_needed_grads:
                alphas = self.net.alphas()
                with frozen(self.net.weights()):
                    loss = self.loss_fn(self.net, val_x, val_y)
                    grads = torch.autograd.grad(loss, alphas)
                for a, g in zip(alphas, grads):
                    a.grad = g
            else:
                loss = self.loss_fn(self.net, val_x, val_y)
                loss.backward()
        else:
            loss = self._unrolled_backward(train_x, train_y, val_x, val_y, xi, w_optimizer)
        if self.budget_fn is not None:
            self.budget_fn().backward()
        alphas = self.net.alphas()
        if self.grad_hook is not None:
            self.grad_hook(alphas)
        self.optimizer.step()
        # the weights' gradients from this step must not leak into the weight step
        for p in self.net.weights():
            p.grad = None
        return float(loss.detach())

    # ------------------------------------------------------------------ second order
    def _virtual_step(self, train_x, train_y, xi: float, w_optimizer: torch.optim.Optimizer) -> None:
        """w' = w - xi * (momentum * buffer + grad + wd * w) into the virtual network."""
        if self.v_net is None:
            self.v_net = copy.deepcopy(self.net)
            # the pairs (network, virtual network) of parameter lists and of buffers, found once
            self._v_weights = list(self.v_net.weights())
            self._buffer_pairs = list(zip(self.net.buffers(), self.v_net.buffers()))
        weights = list(self.net.weights())
        with frozen(self.net.alphas() if self.only_needed_grads else []):
            grads = torch.autograd.grad(self.loss_fn(self.net, train_x, train_y), weights)
        with torch.no_grad():
            # w - xi * (m + g + wd * w) for every weight at once (foreach: one call per operation, not per tensor),
            # in the same order of operations as the formula, so the same values bit for bit
            bufs = [w_optimizer.state.get(w, {}).get("momentum_buffer") for w in weights]
            step = list(torch._foreach_add(grads, 0.0))  # 0.0 + g where there is no momentum yet
            have = [i for i, b in enumerate(bufs) if b is not None]
            if have:
                m_plus_g = torch._foreach_mul([bufs[i] for i in have], self.w_momentum)
                torch._foreach_add_(m_plus_g, [grads[i] for i in have])
                for i, v in zip(have, m_plus_g):
                    step[i] = v
            torch._foreach_add_(step, torch._foreach_mul(weights, self.w_weight_decay))
            torch._foreach_mul_(step, xi)
            torch._foreach_copy_(self._v_weights, torch._foreach_sub(weights, step))
            for a, va in zip(self.net.alphas(), self.v_net.alphas()):
                va.copy_(a)
            for b, vb in self._buffer_pairs:
                vb.copy_(b)

    def _unrolled_backward(self, train_x, train_y, val_x, val_y, xi: float, w_optimizer) -> torch.Tensor:
        self._virtual_step(train_x, train_y, xi, w_optimizer)
        assert self.v_net is not None
        loss = self.loss_fn(self.v_net, val_x, val_y)
        v_alphas = self.v_net.alphas()
        v_weights = self._v_weights
        v_grads = torch.autograd.grad(loss, v_alphas + v_weights)
        d_alpha, d_w = v_grads[:len(v_alphas)], v_grads[len(v_alphas):]
        hessian = self._hessian_vector(d_w, train_x, train_y)
        with torch.no_grad():
            for a, da, h in zip(self.net.alphas(), d_alpha, hessian):
                a.grad = da - xi * h
        return loss

    def _hessian_vector(self, dw, train_x, train_y) -> List[torch.Tensor]:
        norm = torch.cat([g.reshape(-1) for g in dw]).norm()
        eps = 0.01 / max(float(norm), 1e-12)
        weights = list(self.net.weights())
        alphas = self.net.alphas()
        # only the alphas' gradients are asked for: with the weights frozen, autograd keeps no tensor for them
        dw = list(dw)
        with frozen(weights if self.only_needed_grads else []):
            with torch.no_grad():
                torch._foreach_add_(weights, dw, alpha=eps)
            d_pos = torch.autograd.grad(self.loss_fn(self.net, train_x, train_y), alphas)
            with torch.no_grad():
                torch._foreach_sub_(weights, dw, alpha=2 * eps)
            d_neg = torch.autograd.grad(self.loss_fn(self.net, train_x, train_y), alphas)
            with torch.no_grad():
                torch._foreach_add_(weights, dw, alpha=eps)
        return [(p - n) / (2 * eps) for p, n in zip(d_pos, d_neg)]
