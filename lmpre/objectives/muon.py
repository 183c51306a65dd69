"""Muon: SGD with Nesterov momentum whose update for a 2-D weight is the momentum orthogonalised (its singular
values pushed to ~1 by a Newton–Schulz iteration), as published by Keller Jordan (2024). Each step then changes a
matrix by about the same amount in every direction, which trains hidden layers in fewer steps than AdamW.
Parameter groups with `use_muon=False` (embeddings, the output head, gains, biases) get AdamW instead."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

# The quintic's coefficients (Keller Jordan): steep at zero, so small singular values grow fast; the iteration then
# oscillates in about [0.7, 1.2] rather than converging to exactly 1, which trains as well and needs fewer steps.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: Tensor, steps: int = 5) -> Tensor:
    """An approximately orthogonal matrix with the singular vectors of `matrix` (U Vᵀ of its SVD, roughly)."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.float()
    wide = x.size(-2) <= x.size(-1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1: inside the basin
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.mT).to(matrix.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer, so one learning-rate schedule and one checkpointed state: Muon for the groups with
    `use_muon=True`, AdamW (`betas`, `eps`, decoupled `weight_decay`) for the others."""

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "weight_decay": weight_decay,
            "betas": betas,
            "eps": eps,
            "use_muon": True,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError(
                    "Muon updates 2-D weight matrices only: put other parameters in a use_muon=False group"
                )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def _muon(self, group: dict[str, Any]) -> None:
        lr, beta = group["lr"], group["momentum"]
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if not self.state[p]:
                self.state[p]["momentum"] = torch.zeros_like(p)
        buffers = [self.state[p]["momentum"] for p in params]
        grads = [p.grad for p in params]
        torch._foreach_lerp_(buffers, grads, 1 - beta)
        directions = [g.lerp(b, beta) for g, b in zip(grads, buffers, strict=True)] if group["nesterov"] else buffers
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        # Matrices of one shape are orthogonalised together: a few batched products instead of many small ones.
        by_shape: dict[torch.Size, list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(p.shape, []).append(i)
        for shape, indices in by_shape.items():
            updates = newton_schulz(torch.stack([directions[i] for i in indices]), group["ns_steps"])
            # An orthogonal (out × in) update has RMS sqrt(1/in); this keeps tall matrices' updates as large.
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            torch._foreach_add_([params[i] for i in indices], list(updates.unbind(0)), alpha=-lr * scale)

    def _adamw(self, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if not self.state[p]:
                self.state[p].update(
                    step=torch.zeros((), dtype=torch.float32),
                    exp_avg=torch.zeros_like(p),
                    exp_avg_sq=torch.zeros_like(p),
                )
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_add_([s["step"] for s in states], 1)
        step = float(states[0]["step"])  # the same for every parameter of the group
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, (1 - beta2**step) ** 0.5)
        torch._foreach_add_(denominators, eps)
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-lr / (1 - beta1**step))
