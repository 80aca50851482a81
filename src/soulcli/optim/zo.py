"""Zeroth-order SGD with in-place perturbations: MeZO (Malladi, Gao, Nichani, Damian, Lee, Chen,
Arora, "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023, Algorithm 1).

One step draws a direction ``z ~ N(0, I_d)`` from a seed, and with two forwards and no backward
takes the two-point SPSA estimate of the directional derivative (their eq. 1)::

    theta <- theta + eps * z;   l+ = L(theta)
    theta <- theta - 2 eps * z; l- = L(theta)
    theta <- theta + eps * z                                  (restored)
    g  = (l+ - l-) / (2 eps)                                  projected gradient
    p <- p * (1 - lr * wd) - lr * g * z                       (shared: soulcli.optim.base)

``z`` is never stored: each pass regenerates it from the same seed, parameter by parameter, so
the memory is that of inference plus one parameter-sized buffer (MeZO's point). ``g * z`` is
an unbiased estimate of the gradient as ``eps -> 0`` (``E[z z^T] = I``), and its norm
``|g| * |z|`` (``|z|`` ~ ``sqrt(d)``) is what gradient clipping sees: MeZO itself does not
clip, so with this optimizer set ``unlearn.max_grad_norm: null`` unless clipping is meant.

The seed of step ``t`` is :func:`step_seed` ``(seed, t)`` with ``t`` the group's step count, which
the optimizer's ``state_dict`` carries, so a resumed run draws the same directions. The recipe's
run seed is passed as ``seed`` unless ``optimizer.args`` sets it.

The perturbation is done in place in the parameter's dtype, so restoring it is exact only up to
rounding (as in the authors' code); every trainable parameter is perturbed, whether or not the
loss uses it: no gradient tells a zeroth-order method which ones it does.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

from soulcli.optim.base import (DIAGNOSTICS_EVERY, DiagnosticsEvery, LearningRate, RuleOptimizer,
                                WeightDecay, apply_update, local_tensor)
from soulcli.schema import POSITIVE, Seed


def step_seed(seed: int, step: int) -> int:
    """The generator seed of step ``step``: 32 bits, because torch's CPU generator keeps only the
    low 32 bits of its seed (``seed * 2**32 + step`` would give every seed the same directions);
    the odd multiplier (2**32 / golden ratio) spreads neighbouring seeds far apart."""
    return (seed * 0x9E3779B1 + step) % 2**32


class ZO(RuleOptimizer):
    """MeZO (ZO-SGD); defaults ``lr=1e-6, eps=1e-3, weight_decay=0`` (the paper's OPT settings),
    ``seed=0``.

    Call :meth:`estimate` with a closure returning the loss (no backward), optionally
    :meth:`clip_estimate`, then :meth:`step`; or ``step(closure)`` for all three but clipping.
    Diagnostics: ``projected_grad`` (``g``) and ``update_norm`` (``lr * |g| * |z|``).
    """

    zeroth_order = True

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-6,
                 weight_decay: WeightDecay = 0.0, *,
                 eps: Annotated[float, POSITIVE, "perturbation scale of the two-point estimate"] = 1e-3,
                 seed: Annotated[Seed, "seed of the random directions (default: the run's)"] = 0,
                 diagnostics_every: DiagnosticsEvery = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, eps=eps, seed=seed),
                         diagnostics_every)
        self._estimate: list[float] | None = None  # [projected gradient, |z|] of the next step

    def _directions(self) -> Iterator[tuple[dict, Tensor, Tensor]]:
        """(group, local parameter, z) for every trainable parameter, z drawn afresh from the
        seed of the step about to be taken (the same z on every call within a step)."""
        first = self.param_groups[0]
        seed = step_seed(first["seed"], first["step"] + 1)
        generators: dict[torch.device, torch.Generator] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                local = local_tensor(p)
                gen = generators.get(local.device)
                if gen is None:
                    gen = generators[local.device] = torch.Generator(local.device).manual_seed(seed)
                yield group, local, torch.randn(local.shape, generator=gen, device=local.device,
                                                dtype=torch.float32)

    def _perturb(self, scale: float) -> float:
        """``theta <- theta + scale * z``; returns ``|z|**2``."""
        z_sq = []
        for _, local, z in self._directions():
            local.add_(z, alpha=scale)
            z_sq.append(z.square().sum())
        return float(sum(z_sq)) if z_sq else 0.0

    @torch.no_grad()
    def estimate(self, closure: Callable[[], Tensor]) -> tuple[Tensor, float]:
        """The two forwards of Algorithm 1 (``closure`` returns the loss at the current
        parameters); leaves the parameters restored and returns ``((l+ + l-) / 2, |g| * |z|)``,
        the loss at ``theta`` up to ``O(eps**2)`` and the norm of the gradient estimate."""
        eps = self.param_groups[0]["eps"]
        self._perturb(eps)
        plus = closure().detach()
        self._perturb(-2 * eps)
        minus = closure().detach()
        z_norm = math.sqrt(self._perturb(eps))
        g = (float(plus) - float(minus)) / (2 * eps)
        self._estimate = [g, z_norm]
        return (plus + minus) / 2, abs(g) * z_norm

    def clip_estimate(self, max_norm: float) -> None:
        """Scale the pending estimate ``g * z`` to norm at most ``max_norm`` (as
        ``torch.nn.utils.clip_grad_norm_`` scales a gradient)."""
        assert self._estimate is not None, "clip_estimate before estimate"
        g, z_norm = self._estimate
        coef = max_norm / (abs(g) * z_norm + 1e-6)
        if coef < 1:
            self._estimate[0] = g * coef

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = self.estimate(closure)[0] if closure is not None else None
        if self._estimate is None:
            raise RuntimeError("zo steps along a two-point estimate: call estimate(closure) or "
                               "step(closure) with a closure returning the loss")
        g = self._estimate[0]
        self._estimate = None
        sums: dict[str, list[Tensor | float]] | None = {} if self._diagnostics_due() else None
        for group, local, z in self._directions():
            direction = z.mul_(g)
            apply_update(local, direction, group["lr"], group["weight_decay"])
            if sums is not None:
                self.measure(direction, group["lr"], sums)
        for group in self.param_groups:
            group["step"] += 1
        if sums is not None:
            self._pending.update(self.finish_diagnostics(sums), projected_grad=g)
        self._steps_done += 1
        return loss
