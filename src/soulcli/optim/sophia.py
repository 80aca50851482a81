"""Sophia: clipped diagonal-Newton steps (Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable
Stochastic Second-order Optimizer for Language Model Pre-training", ICLR 2024, arXiv:2305.14342).

Algorithm 3 of the paper, as the authors' released ``SophiaG`` class runs it, per coordinate:

    p <- p * (1 - lr * wd)                                   decoupled weight decay
    m <- b1 * m + (1 - b1) * g                               momentum (no bias correction)
    h <- b2 * h + (1 - b2) * g_hat * g_hat                   every k steps, ``update_hessian()``
    p <- p - lr * sign(m) * min(|m| / (rho * bs * h + eps), 1)

``g_hat`` is the gradient of the *mean* cross-entropy against labels sampled from the model's
own logits, over a batch of ``bs`` predicted tokens; ``bs * g_hat**2`` is then the
Gauss-Newton-Bartlett estimate of the Gauss-Newton diagonal (E[bs * g_hat**2] = diag of the
Fisher of the mean loss), which is why ``bs`` multiplies ``h`` in the denominator.

How rho, bs and the curvature's scale interact
----------------------------------------------
Write ``F = bs * h`` (the curvature of the mean loss, per coordinate). A coordinate is *not*
clipped (a "win") when ``|m| < rho * F``, i.e. when its Newton step ``|m| / F`` is below
``rho``; it then moves by ``(lr / rho) * m / F``, a Newton step scaled by ``lr / rho``.
Otherwise it moves by ``lr * sign(m)``, exactly Signum's step. So:

* the win rate is the fraction of coordinates whose Newton step is below rho: raising rho
  raises it, and a win rate of 0 means SophiaG *is* Signum with learning rate lr;
* ``bs`` must be the token count the curvature batch averaged over: passing sequences instead
  of tokens (or a summed loss instead of a mean, which scales h by bs**2) shifts the
  denominator by that factor, which is the same as using the wrong rho;
* in unlearning the gradient is typically large next to the sampled-label curvature
  (gradient ascent pushes a memorised answer whose predictions are confident, so the Fisher
  is small), so the authors' pre-training rho=0.04 clips almost everything: on a
  4M-parameter Llama, GNB every 5 steps with bs=146 answer tokens gave a mean win rate of
  0.0005 at rho=0.04, 0.13 at rho=10 and 0.33 at rho=100. The authors tune rho so the
  win rate sits in 0.1-0.5; :func:`win_rate_warning` says when it stays near 0.

SophiaH is the same update with Hutchinson's ``u * (H u)`` as the curvature sample (its
scale is already the Hessian of the mean loss, so ``bs = 1``) and ``max(h, 0)`` in the
denominator, since Hutchinson samples can be negative. SophiaG takes only squared-gradient
samples (GNB, empirical Fisher), whose EMA is never negative.

Implementation notes
--------------------
State is two fp32 buffers per parameter, like AdamW, arranged so that a step is three
elementwise passes (on CPU, separate passes, not arithmetic, are what a step costs):

* ``hessian`` holds ``h + eps / (rho * bs)`` (the group's ``hessian_floor``, ~1e-16 at the
  defaults): the reference's ``eps`` folded in, so ``rho * bs * stored == rho * bs * h + eps``;
* ``scaled_exp_avg`` holds ``q = m / (s * d)`` with ``d`` the stored Hessian (``max(h, 0)``
  plus the floor for SophiaH) and ``s = b1**k`` a per-group scalar (``momentum_scale``).
  Between curvature updates ``d`` is fixed, so ``m <- b1 m + (1 - b1) g`` becomes
  ``q <- q + (1 - b1) / s * g / d`` (one ``addcdiv``), and the clipped ratio is
  ``clamp(q, -rho*bs/s, rho*bs/s)`` scaled by ``s / (rho * bs)``.

So a step is ``addcdiv`` (momentum and preconditioning), ``clamp`` into a cache-sized scratch
chunk, and the parameter update. ``update_hessian`` (every k steps) and any change of rho or
bs convert ``q`` back to ``m`` and forward again (a few passes), and ``s`` is folded back into
``q`` before it falls below 1e-6. :meth:`SophiaG.exp_avg` and :meth:`SophiaG.hessian` return
``m`` and ``h`` themselves. Results match the reference to float rounding.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from soulcli.errors import UserError
from soulcli.optim import cpu_kernels
from soulcli.optim.base import (
    Bank,
    Chunk,
    SecondOrderOptimizer,
    check_betas,
    check_nonnegative,
    check_positive,
    decay_and_add,
    total,
)

WIN_RATE_TARGET = (0.1, 0.5)


class SophiaG(SecondOrderOptimizer):
    """SophiaG (Liu et al. 2024, Algorithm 3), usable like the authors' class.

    Defaults are the authors': ``lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1``,
    ``eps=1e-15``, ``bs=5120`` (the default of the authors' ``step``; replaced by the token
    count each ``update_hessian(bs=...)`` or ``step(bs=...)`` records).
    ``bias_correction=True`` divides m by ``1 - b1**t`` (the reference does not).
    Diagnostics: ``win_rate`` (fraction of coordinates not clipped) and ``update_norm`` (norm
    of the clipped step, without weight decay) every step where the one-pass CPU kernel runs
    (:mod:`soulcli.optim.cpu_kernels`, where they cost nothing), else every
    ``DIAGNOSTICS_EVERY`` (20) steps; ``diagnostics_every=k`` fixes the cadence (0: never).
    ``hessian_norm`` after every ``update_hessian``.

    Usage, as in the authors' training loop::

        loss_sampled.backward(); opt.update_hessian(); opt.zero_grad(set_to_none=True)
        ...
        loss.backward(); opt.step(bs=tokens); opt.zero_grad(set_to_none=True)
    """

    state_names = ("scaled_exp_avg", "hessian")
    default_curvature = "gnb"
    relu_hessian = False
    RESCALE_BELOW = 1e-6

    def __init__(self, params: Iterable[Any], lr: float = 1e-4,
                 betas: Sequence[float] = (0.965, 0.99), rho: float = 0.04,
                 weight_decay: float = 1e-1, *, bs: int = 5120, eps: float = 1e-15,
                 bias_correction: bool = False,
                 diagnostics_every: int | None = None) -> None:
        name = type(self).__name__
        check_positive(name, rho=rho, bs=bs, eps=eps)
        check_nonnegative(name, lr=lr, weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=check_betas(name, betas), rho=rho,
                        weight_decay=weight_decay, bs=int(bs), eps=eps,
                        bias_correction=bool(bias_correction),
                        hessian_floor=eps / (rho * int(bs)), momentum_scale=1.0)
        self._as_momentum: set[int] = set()
        super().__init__(params, defaults, diagnostics_every)

    # -- the stored denominator and the momentum's two forms --------------------------------
    def _state_fill(self, group: dict, role: str) -> dict[str, float]:
        return {"hessian": group["hessian_floor"]}

    def _denominator(self, group: dict, stored: Tensor) -> Tensor:
        """``d``: the stored Hessian, or for SophiaH its positive part (plus the floor)."""
        return stored.clamp(min=group["hessian_floor"]) if self.relu_hessian else stored

    def _to_momentum(self, index: int, group: dict) -> None:
        """``scaled_exp_avg`` <- m (before the denominator changes)."""
        if index in self._as_momentum:
            return
        for bank in self._group_banks(index):
            q = bank.buffers["scaled_exp_avg"]
            q.mul_(self._denominator(group, bank.buffers["hessian"])).mul_(group["momentum_scale"])
        group["momentum_scale"] = 1.0
        self._as_momentum.add(index)

    def _from_momentum(self, index: int, group: dict) -> None:
        """``scaled_exp_avg`` <- m / d (after the denominator changed)."""
        for bank in self._group_banks(index):
            bank.buffers["scaled_exp_avg"].div_(self._denominator(group, bank.buffers["hessian"]))
        self._as_momentum.discard(index)

    def _prepare_group(self, index: int, group: dict) -> None:
        # the folded eps must stay eps / (rho * bs) when either changes
        want = group["eps"] / (group["rho"] * group["bs"])
        have = group["hessian_floor"]
        if want == have:
            return
        converting = index not in self._as_momentum
        if converting:
            self._to_momentum(index, group)
        for bank in self._group_banks(index):
            bank.buffers["hessian"].add_(want - have)
        group["hessian_floor"] = want
        if converting:
            self._from_momentum(index, group)

    @torch.no_grad()
    def update_hessian(self, bs: int | None = None, *, grads: Sequence[Tensor | None] | None = None,
                       diagonal: Sequence[Tensor | None] | None = None) -> None:
        if diagonal is not None and not self.relu_hessian:
            raise UserError("sophiag takes squared-gradient curvature (gnb or empirical_fisher); "
                            "for hutchinson samples, which can be negative, use sophiah")
        for index, group in enumerate(self.param_groups):
            self._to_momentum(index, group)
        try:
            super().update_hessian(bs, grads=grads, diagonal=diagonal)
        finally:
            for index, group in enumerate(self.param_groups):
                self._from_momentum(index, group)

    def _absorb(self, group: dict, bank: Bank, present: list[int], estimates: list[Tensor],
                squared: bool) -> None:
        beta2 = group["betas"][1]
        views = self._ema_views(bank, present, "hessian", beta2)
        if squared:
            torch._foreach_addcmul_(views, estimates, estimates, value=1 - beta2)
        else:
            torch._foreach_add_(views, estimates, alpha=1 - beta2)
        # b2 * (h + f) + (1 - b2) * x + (1 - b2) * f == (new h) + f: the floor stays folded in
        torch._foreach_add_(views, (1 - beta2) * group["hessian_floor"])

    def _group_of(self, p: Tensor) -> tuple[int, dict]:
        return next((i, g) for i, g in enumerate(self.param_groups)
                    if any(q is p for q in g["params"]))

    def hessian(self, p: Tensor) -> Tensor:
        """The Hessian EMA ``h`` of parameter ``p`` (a copy, without the folded eps)."""
        _, group = self._group_of(p)
        stored = self.state[p].get("hessian")
        if stored is None:
            return torch.zeros_like(p, dtype=torch.float32)
        return stored - group["hessian_floor"]

    def exp_avg(self, p: Tensor) -> Tensor:
        """The momentum ``m`` of parameter ``p`` (a copy)."""
        index, group = self._group_of(p)
        state = self.state[p]
        if "scaled_exp_avg" not in state:
            return torch.zeros_like(p, dtype=torch.float32)
        if index in self._as_momentum:
            return state["scaled_exp_avg"].clone()
        scale = group["momentum_scale"]
        return state["scaled_exp_avg"] * self._denominator(group, state["hessian"]) * scale

    # -- the step -----------------------------------------------------------------------
    def _prepare_step(self, index: int, group: dict) -> None:
        beta1 = group["betas"][0]
        if beta1 == 0.0:
            return  # m = g: the step overwrites q and the scale stays 1
        if group["momentum_scale"] * beta1 < self.RESCALE_BELOW:
            for bank in self._group_banks(index):
                bank.buffers["scaled_exp_avg"].mul_(group["momentum_scale"])
            group["momentum_scale"] = 1.0
        group["momentum_scale"] *= beta1

    def _step_bank(self, group: dict, bank: Bank, chunks: list[Chunk],
                   grads: list[Tensor | None], sums: dict[str, list[Tensor]] | None) -> None:
        beta1 = group["betas"][0]
        lr, wd, scale = group["lr"], group["weight_decay"], group["momentum_scale"]
        # |m| / (rho*bs*h + eps) < 1  <=>  |q| < rho * bs / s
        bound = group["rho"] * group["bs"] / scale
        if group["bias_correction"]:
            bound *= 1 - beta1 ** group["step"]
        weight = 1.0 if beta1 == 0.0 else (1 - beta1) / scale
        absent = [i for i, g in enumerate(grads) if g is None]
        if absent and beta1 > 0.0:
            # their m must not change while s moves on by b1
            torch._foreach_div_([bank.views["scaled_exp_avg"][i] for i in absent], beta1)
        floor = group["hessian_floor"]
        if cpu_kernels.applicable(bank.local_params, grads):
            self._kernel_step(bank, grads, sums, keep=0.0 if beta1 == 0.0 else 1.0,
                              weight=weight, bound=bound, lr=lr, wd=wd, floor=floor)
            return
        squares: list[Tensor] = []
        clipped: list[Tensor] = []
        for chunk in chunks:
            q, scratch = chunk.segs["scaled_exp_avg"], chunk.scratch
            if beta1 == 0.0:
                torch._foreach_zero_(q)
            if self.relu_hessian:
                torch.clamp(chunk.flat["hessian"], min=floor, out=scratch)
                denominators = chunk.scratch_segs
            else:
                denominators = chunk.segs["hessian"]
            torch._foreach_addcdiv_(q, chunk.grads(grads), denominators, value=weight)
            torch.clamp(chunk.flat["scaled_exp_avg"], -bound, bound, out=scratch)
            decay_and_add(bank, chunk.params, chunk.scratch_segs, -lr / bound, lr * wd)
            if sums is not None:
                squares.append(torch.dot(scratch, scratch))
                # q - clamp(q) is nonzero exactly on the clipped coordinates; counted as the
                # squared norm of its sign (a dot product is the cheapest reduction on CPU)
                torch.sub(chunk.flat["scaled_exp_avg"], scratch, out=scratch)
                torch.sign(scratch, out=scratch)
                clipped.append(torch.dot(scratch, scratch))
        if sums is not None:
            sums.setdefault("update_sq", []).append(torch.stack(squares).sum() * (lr / bound) ** 2)
            sums.setdefault("clipped", []).append(torch.stack(clipped).sum())
            sums.setdefault("coords", []).append(
                torch.tensor(float(sum(c.scratch.numel() for c in chunks))))

    def _kernel_step(self, bank: Bank, grads: list[Tensor | None],
                     sums: dict[str, list[Tensor]] | None, *, keep: float, weight: float,
                     bound: float, lr: float, wd: float, floor: float) -> None:
        """The same step in one pass over the bank (:mod:`soulcli.optim.cpu_kernels`)."""
        present = [i for i, g in enumerate(grads) if g is not None]
        params, q, h, blocks = _kernel_views(bank, present)
        flat_grads = tuple(params[i] if g is None else g.view(-1).numpy()
                           for i, g in enumerate(grads))
        sq, clipped = cpu_kernels.sophia_step(
            params, flat_grads, q, h, blocks, keep=keep, weight=weight, bound=bound,
            alpha=-lr / bound, decay=1.0 - lr * wd, floor=floor)
        if sums is not None:  # plain floats: no tensor to build on this path
            sums.setdefault("update_sq", []).append(sq * (lr / bound) ** 2)
            sums.setdefault("clipped", []).append(float(clipped))
            sums.setdefault("coords", []).append(float(sum(bank.numels[i] for i in present)))

    def _free_diagnostics(self) -> bool:
        return cpu_kernels.enabled() and all(
            p.device.type == "cpu" and p.dtype == torch.float32
            for g in self.param_groups for p in g["params"][:1])

    def _finish_diagnostics(self, sums: dict[str, list[Tensor]]) -> dict[str, float]:
        out = super()._finish_diagnostics(sums)
        if sums.get("coords"):
            out["win_rate"] = 1.0 - total(sums["clipped"]) / total(sums["coords"])
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._as_momentum = set()


def _kernel_views(bank: Bank, present: list[int]) -> tuple[tuple, Any, Any, Any]:
    """Numpy views (params, q, h) and the block table of a bank, cached; rebuilt when a
    parameter's storage moved or the set of parameters with gradients changed."""
    key = ([p.data_ptr() for p in bank.local_params], present)
    cached = getattr(bank, "_kernel_cache", None)
    if cached is None or cached[0] != key:
        views = (tuple(cpu_kernels.flat_numpy(p) for p in bank.local_params),
                 cpu_kernels.flat_numpy(bank.buffers["scaled_exp_avg"]),
                 cpu_kernels.flat_numpy(bank.buffers["hessian"]),
                 cpu_kernels.block_table(bank.numels, bank.offsets, present))
        cached = (key, views)
        bank._kernel_cache = cached  # type: ignore[attr-defined]
    return cached[1]


class SophiaH(SophiaG):
    """SophiaH (Liu et al. 2024, Algorithm 3 with Hutchinson's estimator, Algorithm 1).

    Same update as :class:`SophiaG` with ``max(h, 0)`` in the denominator; the engine feeds it
    ``u * (H u)`` samples (``update_hessian(diagonal=...)``, ``bs = 1``). Same defaults.
    """

    default_curvature = "hutchinson"
    relu_hessian = True


def win_rate_warning(win_rates: Sequence[float], *, threshold: float = 0.02, window: int = 5,
                     rho: float | None = None) -> str | None:
    """A warning when the last ``window`` Sophia win rates average below ``threshold``.

    Returns None while there are fewer readings than ``window`` or the win rate is healthy.
    """
    recent = [float(w) for w in list(win_rates)[-window:]]
    if len(recent) < window or window <= 0:
        return None
    mean = sum(recent) / len(recent)
    if mean >= threshold:
        return None
    now = f" (now {rho:g})" if rho is not None else ""
    low, high = WIN_RATE_TARGET
    return (f"Sophia's win rate averaged {mean:.4f} over the last {window} readings: almost "
            f"every coordinate is clipped, so each step is a Signum step (lr * sign of the "
            f"momentum); raise optimizer.args.rho{now} until the win rate sits in "
            f"{low}-{high}, the range the Sophia authors tune it to")
