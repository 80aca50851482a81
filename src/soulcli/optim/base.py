"""Flat fp32 optimizer state and the chunked step shared by every soulcli optimizer.

Why: on CPU a step is bound by passes over memory and by per-op dispatch, not by arithmetic.
Sophia written tensor by tensor (the authors' loop) is 4-10x slower than torch's fused AdamW.
Here each optimizer keeps its state for a (param group, device) in one fp32 buffer per state
name, and ``self.state[p][name]`` is a view into it, so torch's ``state_dict`` machinery still
sees per-parameter tensors. A step walks the parameters in *chunks* of at most
``chunk_numel`` elements (1 MiB of fp32 on CPU, where two chunks stay in L2): the ops of a
chunk run back to back on cache-resident slices, whole-chunk ops (clamp, sign) run once on a
contiguous slice of the flat buffers into a chunk-sized scratch buffer, and foreach ops cover
the chunk's pieces of the (unflattened) parameters and gradients.

Conventions every subclass follows:

* State is fp32 whatever the parameter dtype; low-precision gradients are upcast per step and
  updates are added to the parameter in its own dtype.
* Only elementwise maths on the local tensors, so gradients that DDP already averaged and FSDP
  shards (DTensor locals) work unchanged.
* Parameters whose ``.grad`` is None are skipped: not updated, no weight decay.
* ``diagnostics()`` returns (and clears) the figures computed since the last call; they are
  computed inside ``step`` every ``diagnostics_every`` steps (0: never; None: every step where
  they come free, as in Sophia's one-pass CPU kernel, else every DIAGNOSTICS_EVERY steps), from
  the step's own scratch chunks, so the other steps pay nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from soulcli.errors import UserError

CPU_CHUNK_NUMEL = 1 << 18
ACCELERATOR_CHUNK_NUMEL = 1 << 24
# win rate / update norm on one step in twenty: the counting passes cost about half a step
DIAGNOSTICS_EVERY = 20


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def fused_supported(device: torch.device) -> bool:
    """Whether torch has fused optimizer kernels for this device."""
    return device.type in ("cpu", "cuda")


def check_positive(owner: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise UserError(f"{owner}: {key} must be > 0, got {value}")


def check_nonnegative(owner: str, **values: float) -> None:
    for key, value in values.items():
        if not value >= 0:
            raise UserError(f"{owner}: {key} must be >= 0, got {value}")


def check_betas(owner: str, betas: Sequence[float], count: int = 2) -> tuple[float, ...]:
    betas = tuple(float(b) for b in betas)
    if len(betas) != count or not all(0.0 <= b < 1.0 for b in betas):
        raise UserError(f"{owner}: betas must be {count} numbers in [0, 1), got {list(betas)}")
    return betas


@dataclass(frozen=True)
class Segment:
    """Parameter ``index`` of a bank, whole (``part`` None) or the flat elements ``part``."""

    index: int
    part: slice | None


class Chunk:
    """A run of segments that is contiguous in the bank's flat buffers.

    ``params``, ``segs[name]`` and ``scratch_segs`` are the segments' pieces of the parameters,
    of each state buffer and of the scratch buffer (shaped like the parameter when whole, flat
    when a piece); ``flat[name]`` and ``scratch`` are the whole run, flat.
    """

    __slots__ = ("segments", "params", "flat", "segs", "scratch", "scratch_segs")

    def __init__(self, bank: "Bank", segments: list[Segment]) -> None:
        self.segments = [(s.index, s.part) for s in segments]
        spans = [bank.span(s) for s in segments]
        lo, hi = spans[0][0], spans[-1][1]
        self.params = [bank.piece(bank.local_params, s) for s in segments]
        self.flat = {name: buf[lo:hi] for name, buf in bank.buffers.items()}
        self.segs = {name: [bank.piece(bank.views[name], s) for s in segments]
                     for name in bank.buffers}
        self.scratch = bank.scratch[: hi - lo]
        self.scratch_segs = [self.scratch[a - lo:b - lo] if s.part else
                             self.scratch[a - lo:b - lo].view(bank.shapes[s.index])
                             for s, (a, b) in zip(segments, spans)]

    def grads(self, grads: Sequence[Tensor | None]) -> list[Tensor]:
        return [grads[i] if part is None else grads[i].reshape(-1)[part]  # type: ignore[union-attr]
                for i, part in self.segments]


class Bank:
    """fp32 flat state buffers for the parameters of one (group, device, role)."""

    def __init__(self, params: list[Tensor], names: Sequence[str], states: list[dict],
                 chunk_numel: int, fill: dict[str, float] | None = None, role: str = "") -> None:
        self.params = params
        self.role = role
        self.local_params = [local_tensor(p) for p in params]
        self.distributed = any(t is not p for t, p in zip(self.local_params, params))
        self.shapes = [t.shape for t in self.local_params]
        self.numels = [t.numel() for t in self.local_params]
        # a contiguous parameter larger than a chunk is cut into flat pieces
        self.contiguous = [t.is_contiguous() for t in self.local_params]
        device = self.local_params[0].device
        self.all_fp32 = all(t.dtype == torch.float32 for t in self.local_params)
        # torch's fused SGD kernel can apply decay and update in one pass on these
        self.fusable = hasattr(torch, "_fused_sgd_") and fused_supported(device) and self.all_fp32
        self.offsets = [0]
        for n in self.numels:
            self.offsets.append(self.offsets[-1] + n)
        total = self.offsets[-1]
        self.buffers: dict[str, Tensor] = {}
        self.views: dict[str, list[Tensor]] = {}
        for name in names:
            buf = torch.full((total,), (fill or {}).get(name, 0.0), dtype=torch.float32,
                             device=device)
            views = [buf[self.offsets[i]:self.offsets[i + 1]].view(self.shapes[i])
                     for i in range(len(params))]
            for view, state in zip(views, states):
                old = state.get(name)
                if isinstance(old, Tensor):
                    view.copy_(local_tensor(old).reshape(view.shape))
                state[name] = view
            self.buffers[name] = buf
            self.views[name] = views
        self.chunk_numel = chunk_numel
        self.scratch = torch.empty(min(total, chunk_numel) if total else 0,
                                   dtype=torch.float32, device=device)
        self._plan_key: tuple[int, ...] | None = None
        self._plan: list[Chunk] = []

    def span(self, s: Segment) -> tuple[int, int]:
        """The segment's range in the flat buffers."""
        base = self.offsets[s.index]
        if s.part is None:
            return base, self.offsets[s.index + 1]
        return base + s.part.start, base + s.part.stop

    def piece(self, tensors: Sequence[Tensor], s: Segment) -> Tensor:
        t = tensors[s.index]
        return t if s.part is None else t.view(-1)[s.part]

    def plan(self, present: tuple[int, ...]) -> list[Chunk]:
        """Chunks covering the present parameters, cached for the common all-present case."""
        if present != self._plan_key:
            self._plan, self._plan_key = self._build_plan(present), present
        return self._plan

    def _build_plan(self, present: tuple[int, ...]) -> list[Chunk]:
        limit = self.chunk_numel
        pieces: list[Segment] = []
        for i in present:
            n = self.numels[i]
            if not self.contiguous[i] or n <= limit:
                pieces.append(Segment(i, None))
                continue
            step = math.ceil(n / math.ceil(n / limit))
            pieces.extend(Segment(i, slice(a, min(n, a + step))) for a in range(0, n, step))
        chunks: list[Chunk] = []
        run: list[Segment] = []
        for seg in pieces:
            if run:
                lo, end = self.span(run[0])[0], self.span(run[-1])[1]
                start, stop = self.span(seg)
                if start != end or stop - lo > limit:
                    chunks.append(Chunk(self, run))
                    run = []
            run.append(seg)
        if run:
            chunks.append(Chunk(self, run))
        return chunks


class FlatStateOptimizer(torch.optim.Optimizer):
    """Base class: lazily built flat fp32 state banks, chunked stepping, fp32 state_dict round trip.

    Subclasses set ``state_names`` (or override ``_state_names`` for per-role layouts) and
    implement ``_step_bank``. ``default_curvature`` names the curvature estimator the engine runs
    for this optimizer (None for first-order methods).
    """

    state_names: ClassVar[tuple[str, ...]] = ()
    default_curvature: ClassVar[str | None] = None

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any],
                 diagnostics_every: int | None = DIAGNOSTICS_EVERY) -> None:
        if diagnostics_every is not None and (
                isinstance(diagnostics_every, bool) or not isinstance(diagnostics_every, int)
                or diagnostics_every < 0):
            raise UserError(f"{type(self).__name__}: diagnostics_every must be a whole number "
                            f">= 0 (or null for automatic), got {diagnostics_every!r}")
        defaults = dict(defaults, step=0)
        super().__init__(params, defaults)
        # None: every step where diagnostics come free (see _free_diagnostics), else every
        # DIAGNOSTICS_EVERY steps
        self.diagnostics_every = diagnostics_every
        self._banks: dict[int, list[Bank]] = {}
        self._members: dict[int, set[int]] = {}
        self._pending: dict[str, float] = {}
        self._steps_done = 0

    # -- banks -------------------------------------------------------------------------
    def _role(self, p: Tensor) -> str:
        return ""

    def _state_names(self, role: str) -> tuple[str, ...]:
        return self.state_names

    def _state_fill(self, group: dict, role: str) -> dict[str, float]:
        """Initial value of each state buffer (zeros unless a subclass says otherwise)."""
        return {}

    def _chunk_numel(self, device: torch.device) -> int:
        return CPU_CHUNK_NUMEL if device.type == "cpu" else ACCELERATOR_CHUNK_NUMEL

    def _group_banks(self, index: int) -> list[Bank]:
        banks = self._banks.get(index)
        group = self.param_groups[index]
        if banks is not None:
            members = self._members[index]
            if all(p.grad is None or id(p) in members for p in group["params"]):
                return banks
        # (re)build: every parameter that can receive a gradient, existing state adopted
        keyed: dict[tuple[torch.device, str], list[Tensor]] = {}
        for p in group["params"]:
            if p.requires_grad or p.grad is not None:
                keyed.setdefault((local_tensor(p).device, self._role(p)), []).append(p)
        banks = []
        for (device, role), params in keyed.items():
            states = [self.state[p] for p in params]
            banks.append(Bank(params, self._state_names(role), states,
                              self._chunk_numel(device), self._state_fill(group, role), role))
        self._banks[index] = banks
        self._members[index] = {id(p) for b in banks for p in b.params}
        return banks

    def _with_grads(self, index: int) -> Iterator[tuple[Bank, list[Chunk], list[Tensor | None]]]:
        """Each bank of group ``index`` that has gradients: its chunk plan and fp32 gradients."""
        for bank in self._group_banks(index):
            grads = bank_grads(bank)
            present = tuple(i for i, g in enumerate(grads) if g is not None)
            if present:
                yield bank, bank.plan(present), grads

    def _ema_grads(self, bank: Bank, grads: list[Tensor | None], name: str, beta: float) -> None:
        """``state[name] <- beta * state[name] + (1 - beta) * g`` for the present parameters,
        one foreach call over whole tensors (a two-input in-place op gains nothing from chunks)."""
        present = [i for i, g in enumerate(grads) if g is not None]
        views = bank.views[name]
        torch._foreach_lerp_([views[i] for i in present], [grads[i] for i in present], 1 - beta)

    def _diagnostics_due(self) -> bool:
        every = self.diagnostics_every
        if every is None:
            if self._free_diagnostics():
                return True
            every = DIAGNOSTICS_EVERY
        return every > 0 and self._steps_done % every == 0

    def _free_diagnostics(self) -> bool:
        """Whether this step computes its diagnostics at no extra cost (a one-pass kernel)."""
        return False

    # -- the public surface ---------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        diag = self._diagnostics_due()
        sums: dict[str, list[Tensor]] = {}
        for index, group in enumerate(self.param_groups):
            group["step"] += 1
            self._prepare_group(index, group)
            self._prepare_step(index, group)
            for bank, chunks, grads in self._with_grads(index):
                self._step_bank(group, bank, chunks, grads, sums if diag else None)
        if diag:
            self._pending.update(self._finish_diagnostics(sums))
        self._steps_done += 1
        return loss

    def _prepare_group(self, index: int, group: dict) -> None:
        """Hook run once per group before its banks are stepped or fed curvature."""

    def _prepare_step(self, index: int, group: dict) -> None:
        """Hook run once per group before its banks are stepped."""

    def _step_bank(self, group: dict, bank: Bank, chunks: list[Chunk],
                   grads: list[Tensor | None], sums: dict[str, list[Tensor]] | None) -> None:
        raise NotImplementedError

    def _finish_diagnostics(self, sums: dict[str, list[Tensor]]) -> dict[str, float]:
        """Turn the per-chunk partial sums into figures; by default the update norm."""
        out: dict[str, float] = {}
        if "update_sq" in sums:
            out["update_norm"] = math.sqrt(total(sums["update_sq"]))
        return out

    def diagnostics(self) -> dict[str, float]:
        """Figures computed since the last call (empty when none were due)."""
        out, self._pending = self._pending, {}
        return out

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state tensors (each storage counted once)."""
        return state_bytes(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts floating state to the parameter dtype; keep our fp32 values instead
        saved = state_dict["state"]
        order = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        for key, p in zip(saved_ids, order):
            for name, value in saved.get(key, {}).items():
                if isinstance(value, Tensor) and value.is_floating_point() and name != "step":
                    self.state[p][name] = value.to(device=local_tensor(p).device,
                                                   dtype=torch.float32)
        self._banks, self._members = {}, {}


def total(values: Sequence[Tensor | float]) -> float:
    """The sum of per-chunk partial sums: tensors (one device sync) and/or plain floats."""
    by_device: dict[torch.device, list[Tensor]] = {}
    rest = 0.0
    for v in values:
        if isinstance(v, Tensor):
            by_device.setdefault(v.device, []).append(v.float())
        else:
            rest += float(v)
    return rest + sum(float(torch.stack(ts).sum()) for ts in by_device.values())


def decay_and_add(bank: Bank, params: list[Tensor], deltas: list[Tensor], alpha: float,
                  lr_wd: float) -> None:
    """``p <- p * (1 - lr_wd) + alpha * delta``: decoupled weight decay and the update.

    With decay, torch's fused SGD kernel does both in one pass (``p - lr * (d + wd * p)`` with
    ``lr = -alpha`` and ``wd = lr_wd / lr`` is the same step); otherwise two foreach passes.
    """
    if not lr_wd:
        torch._foreach_add_(params, deltas, alpha=alpha)
    elif bank.fusable and alpha < 0:
        torch._fused_sgd_(params, deltas, [], weight_decay=lr_wd / -alpha, momentum=0.0,
                          lr=-alpha, dampening=0.0, nesterov=False, maximize=False,
                          is_first_step=False)
    else:
        torch._foreach_mul_(params, 1 - lr_wd)
        torch._foreach_add_(params, deltas, alpha=alpha)


def bank_grads(bank: Bank) -> list[Tensor | None]:
    """fp32 local gradients of a bank's parameters (None where a parameter has none)."""
    out: list[Tensor | None] = []
    for p in bank.params:
        g = p.grad
        if g is None:
            out.append(None)
            continue
        if bank.distributed:
            g = local_tensor(g)
        if g.layout != torch.strided:
            raise UserError("soulcli optimizers do not support sparse gradients; "
                            "build the embedding with sparse=False")
        out.append(g if g.dtype == torch.float32 else g.float())
    return out


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the distinct storages behind an optimizer's state tensors."""
    seen: dict[int, int] = {}
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                storage = value.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def param_list(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The optimizer's parameters in ``param_groups`` order (the order estimators align to)."""
    return [p for g in optimizer.param_groups for p in g["params"]]


class SecondOrderOptimizer(FlatStateOptimizer):
    """A flat-state optimizer fed by a curvature estimator through ``update_hessian``.

    Two input forms, matching the estimators in :mod:`soulcli.optim.curvature`:

    * squared gradients (Gauss-Newton-Bartlett, empirical Fisher): ``update_hessian(bs)`` reads
      ``p.grad`` exactly like the Sophia authors' code, or ``update_hessian(bs, grads=[...])``
      takes gradients aligned with :func:`param_list` (None entries are skipped);
    * a diagonal estimate (Hutchinson ``u * (H u)``): ``update_hessian(diagonal=[...])``.

    ``bs`` is the number of predicted tokens the curvature batch had; it is recorded in every
    param group and used by later steps (``step(bs=...)`` overrides and records it too).
    """

    curvature_state: ClassVar[str] = "hessian"

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any],
                 diagnostics_every: int = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(defaults, hessian_step=0), diagnostics_every)

    @torch.no_grad()
    def step(self, closure: Any = None, bs: int | None = None) -> Any:  # type: ignore[override]
        if bs is not None:
            self._record_bs(bs)
        return super().step(closure)

    def _record_bs(self, bs: int) -> None:
        if not bs > 0:
            raise ValueError(f"bs must be a positive token count, got {bs}")
        for group in self.param_groups:
            group["bs"] = int(bs)

    @torch.no_grad()
    def update_hessian(self, bs: int | None = None, *, grads: Sequence[Tensor | None] | None = None,
                       diagonal: Sequence[Tensor | None] | None = None) -> None:
        """Fold one curvature sample into the Hessian EMA (see the class docstring)."""
        if grads is not None and diagonal is not None:
            raise ValueError("pass either grads= or diagonal=, not both")
        squared = diagonal is None
        supplied = grads if diagonal is None else diagonal
        if supplied is None:
            source = {id(p): p.grad for p in param_list(self) if p.grad is not None}
        else:
            params = param_list(self)
            if len(supplied) != len(params):
                raise ValueError(f"expected {len(params)} curvature tensors (one per parameter "
                                 f"in param_groups order), got {len(supplied)}")
            source = {id(p): t for p, t in zip(params, supplied) if t is not None}
        if bs is None and not squared:
            bs = 1
        if bs is not None:
            self._record_bs(bs)
        norms: list[Tensor] = []
        for index, group in enumerate(self.param_groups):
            group["hessian_step"] += 1
            self._prepare_group(index, group)
            for bank in self._group_banks(index):
                present = [i for i, p in enumerate(bank.params) if id(p) in source]
                if not present:
                    continue
                estimates = [local_tensor(source[id(bank.params[i])]).to(torch.float32)
                             .reshape(bank.shapes[i]) for i in present]
                self._absorb(group, bank, present, estimates, squared)
            norms.extend(self._curvature_sq(b) for b in self._banks.get(index, []))
        if norms:
            self._pending["hessian_norm"] = math.sqrt(float(torch.stack(norms).sum()))

    def _absorb(self, group: dict, bank: Bank, present: list[int], estimates: list[Tensor],
                squared: bool) -> None:
        raise NotImplementedError

    def _curvature_sq(self, bank: Bank) -> Tensor:
        """The bank's share of ``hessian_norm ** 2``."""
        return torch.linalg.vector_norm(bank.buffers[self.curvature_state]).square()

    def _ema_views(self, bank: Bank, present: list[int], name: str, beta: float) -> list[Tensor]:
        """The present parameters' views of state ``name``, already multiplied by ``beta``."""
        views = [self.state[bank.params[i]][name] for i in present]
        if len(present) == len(bank.params):
            bank.buffers[name].mul_(beta)
        else:
            torch._foreach_mul_(views, beta)
        return views


def on_fp32(params: list[Tensor], fn: Any) -> None:
    """Run ``fn(params)``, through fp32 copies written back afterwards for low-precision ones.

    torch's fused kernels want one dtype for parameters and state; the state is fp32, so a
    bf16 parameter is updated as an fp32 copy and rounded back once.
    """
    work = [p if p.dtype == torch.float32 else p.float() for p in params]
    fn(work)
    for p, w in zip(params, work):
        if w is not p:
            p.copy_(w)


class TorchKernelOptimizer(FlatStateOptimizer):
    """A flat-state optimizer whose arithmetic is one of torch's functional kernels.

    Subclasses implement ``_kernel(group, bank, present, params, grads)`` on whole tensors. An
    all-fp32 bank is stepped in one kernel call; otherwise (and on diagnostic steps, to measure
    the update by difference) one tensor at a time, so temporaries stay one tensor large.
    """

    def _step_bank(self, group: dict, bank: Bank, chunks: list[Chunk],
                   grads: list[Tensor | None], sums: dict[str, list[Tensor]] | None) -> None:
        present = [i for i, g in enumerate(grads) if g is not None]
        if sums is None and bank.all_fp32:
            self._kernel(group, bank, present, [bank.local_params[i] for i in present],
                         [grads[i] for i in present])  # type: ignore[misc]
            return
        for i in present:
            p = bank.local_params[i]
            before = p.detach().float() if sums is not None else None
            if before is not None and before is p:
                before = before.clone()
            on_fp32([p], lambda work: self._kernel(group, bank, [i], work, [grads[i]]))
            if before is not None:
                sums.setdefault("update_sq", []).append((p.float() - before).square().sum())

    def _kernel(self, group: dict, bank: Bank, present: list[int], params: list[Tensor],
                grads: list[Tensor]) -> None:
        raise NotImplementedError

    def _views(self, bank: Bank, present: list[int], name: str) -> list[Tensor]:
        return [self.state[bank.params[i]][name] for i in present]
