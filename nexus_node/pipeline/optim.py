"""AdamW through torch's fused kernel, without :class:`torch.optim.Optimizer`.

``Optimizer.step`` imports ``torch._dynamo`` the first time any optimizer steps (its
``_disable_dynamo`` guard; with torch 2.13 that is some 800 modules, sympy among them):
measured on this project's 2-core CPU machine, 1.3 s and 72 MB resident in every runner
process, for a compiler a runner never uses. This class calls the same fused kernel
``torch.optim.AdamW(fused=True)`` calls, with the same state (first and second moments, a
float32 step count per parameter), so the arithmetic is the library's own;
tests/pipeline/test_optim.py checks it step for step against ``torch.optim.AdamW``.
"""

from __future__ import annotations

from typing import Iterable

import torch


class FusedAdamW:
    """AdamW (decoupled weight decay), ``amsgrad`` and ``maximize`` off, as the library's
    fused implementation computes it; all parameters on one device."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, float(eps)
        self._exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (as the library skips the rest)."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        grads = [p.grad for p in self.params if p.grad is not None]   # in the order of live
        steps = [self._steps[i] for i in live]
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_(
            [self.params[i] for i in live], grads,
            [self._exp_avgs[i] for i in live], [self._exp_avg_sqs[i] for i in live], [], steps,
            amsgrad=False, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
            weight_decay=self.weight_decay, eps=self.eps, maximize=False, grad_scale=None, found_inf=None)
