"""The shared optimizer: a per-parameter update rule, then decoupled weight decay and the lr step.

Each soulcli optimizer is one :class:`RuleOptimizer` subclass that writes only its *rule*,
``update(g, state, group) -> direction``: plain elementwise tensor maths on one parameter's
fp32 gradient and fp32 state. The base composes the rest as optax composes ``adamw``
(``optax/_src/alias.py``: ``chain(scale_by_adam, add_decayed_weights, scale_by_learning_rate)``)::

    d = update(g, state, group)                  the rule (scale_by_<rule>)
    p <- p * (1 - lr * wd) - lr * d              add_decayed_weights + scale_by_learning_rate

so decoupled weight decay (Loshchilov & Hutter, ICLR 2019) and the step are written once; a
group with ``weight_decay=0`` (see :func:`decay_groups`) skips the decay.

Conventions:

* State is fp32 whatever the parameter dtype; low-precision gradients are upcast, and a bf16
  parameter is updated in fp32 and rounded once.
* Only elementwise maths on the local tensors, so gradients that DDP already averaged and FSDP
  shards (DTensor locals) work unchanged; the diagnostics' sums over FSDP shards are summed
  over the ranks (:func:`shard_sums`).
* Parameters whose ``.grad`` is None are skipped: not updated, no weight decay, state untouched.
* ``diagnostics()`` returns (and clears) the figures computed since the last call:
  ``update_norm`` (``lr * |d|``, the step without weight decay) every ``diagnostics_every``
  steps (0: never; None: every step where they come free, as in Sophia's one-pass CPU kernel,
  else every :data:`DIAGNOSTICS_EVERY` steps).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Iterable, Sequence

import torch
from torch import Tensor, nn

from soulcli.errors import UserError
from soulcli.schema import FRACTION, NON_NEGATIVE, POSITIVE

# win rate / update norm on one step in twenty: the counting passes cost about half a step
DIAGNOSTICS_EVERY = 20

# the annotations every constructor shares (bounds checked by soulcli.schema)
LearningRate = Annotated[float, NON_NEGATIVE, "learning rate"]
WeightDecay = Annotated[float, NON_NEGATIVE, "decoupled weight decay (p <- p * (1 - lr * wd))"]
Beta = Annotated[float, FRACTION, "EMA coefficient"]
Betas = tuple[Beta, Beta]
Momentum = Annotated[float, FRACTION, "momentum coefficient"]
Eps = Annotated[float, POSITIVE, "added to the denominator"]
DiagnosticsEvery = Annotated[int, NON_NEGATIVE, "steps between diagnostics (0: never)"] | None

NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
EMBEDDING_MODULES = (nn.Embedding, nn.EmbeddingBag)


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def local_grad(p: Tensor) -> Tensor:
    """``p``'s local gradient in fp32 (``p.grad`` must be set)."""
    g = local_tensor(p.grad)  # type: ignore[arg-type]
    if g.layout != torch.strided:
        raise UserError("soulcli optimizers do not support sparse gradients; "
                        "build the embedding with sparse=False")
    return g if g.dtype == torch.float32 else g.float()


def zeros_state(p: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """fp32 zeros shaped like ``p``, one per state name."""
    return {name: torch.zeros_like(p, dtype=torch.float32) for name in names}


def apply_update(p: Tensor, direction: Tensor, lr: float, weight_decay: float) -> None:
    """``p <- p * (1 - lr * wd) - lr * direction``, in fp32, rounded once for a bf16 ``p``."""
    work = p if p.dtype == torch.float32 else p.float()
    if weight_decay:
        work.mul_(1 - lr * weight_decay)
    work.add_(direction, alpha=-lr)
    if work is not p:
        p.copy_(work)


class RuleOptimizer(torch.optim.Optimizer):
    """Base class: the per-parameter loop, fp32 state, weight decay, the lr step, diagnostics.

    A subclass names its fp32 state tensors in ``state_names`` (zeros at first; override
    :meth:`init_state` for others) and implements :meth:`update`. ``default_curvature`` names
    the curvature estimator the engine runs for it (None for first-order methods);
    ``zeroth_order`` marks a method that reads losses, not gradients (:mod:`soulcli.optim.zo`:
    the engine gives it the loss closure in place of a backward).
    """

    state_names: ClassVar[tuple[str, ...]] = ()
    default_curvature: ClassVar[str | None] = None
    zeroth_order: ClassVar[bool] = False

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any],
                 diagnostics_every: int | None = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(defaults, step=0))
        self.diagnostics_every = diagnostics_every
        self._pending: dict[str, float] = {}
        self._steps_done = 0

    # -- what a subclass writes -------------------------------------------------------------
    @classmethod
    def state_names_for(cls, p: Tensor) -> tuple[str, ...]:
        """The fp32 state tensors, each shaped like ``p``, that this optimizer keeps for
        parameter ``p``: what :meth:`init_state` creates and ``soul unlearn --dry-run`` counts
        (``p`` may be a meta tensor)."""
        return cls.state_names

    def init_state(self, p: Tensor, group: dict) -> dict[str, Tensor]:
        """The fresh fp32 state of (local) parameter ``p``."""
        return zeros_state(p, self.state_names_for(p))

    def update(self, g: Tensor, state: dict[str, Tensor], group: dict) -> Tensor:
        """The direction ``d`` of the step ``p <- p - lr * d`` (``g`` and ``state`` fp32; the
        group holds the hyperparameters and ``step``, the step count starting at 1)."""
        raise NotImplementedError

    # -- the shared step ---------------------------------------------------------------------
    def state_of(self, p: Tensor, group: dict) -> dict[str, Any]:
        """``self.state[p]``, initialised on first use."""
        state = self.state[p]
        if not state:
            state.update(self.init_state(local_tensor(p), group))
        return state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sums: dict[str, list[Tensor | float]] | None = {} if self._diagnostics_due() else None
        for group in self.param_groups:
            group["step"] += 1
            self.step_group(group, sums)
        if sums is not None:
            keys = list(sums)
            summed = shard_sums(param_list(self), [total(sums[k]) for k in keys])
            self._pending.update(self.finish_diagnostics({k: [v] for k, v in zip(keys, summed)}))
        self._steps_done += 1
        return loss

    def step_group(self, group: dict, sums: dict[str, list[Tensor | float]] | None) -> None:
        """Step the parameters of ``group`` that have gradients, adding diagnostic sums."""
        lr, wd = group["lr"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            direction = self.update(local_grad(p), self.state_of(p, group), group)
            apply_update(local_tensor(p), direction, lr, wd)
            if sums is not None:
                self.measure(direction, lr, sums)

    def measure(self, direction: Tensor, lr: float, sums: dict[str, list[Tensor | float]]) -> None:
        """Add one parameter's share of the diagnostics to ``sums``."""
        sums.setdefault("update_sq", []).append(direction.square().sum() * lr**2)

    def finish_diagnostics(self, sums: dict[str, list[Tensor | float]]) -> dict[str, float]:
        """Turn the per-parameter sums into figures."""
        return {"update_norm": math.sqrt(total(sums["update_sq"]))} if sums else {}

    def _diagnostics_due(self) -> bool:
        every = self.diagnostics_every
        if every is None:
            if self.free_diagnostics():
                return True
            every = DIAGNOSTICS_EVERY
        return every > 0 and self._steps_done % every == 0

    def free_diagnostics(self) -> bool:
        """Whether this step computes its diagnostics at no extra cost (a one-pass kernel)."""
        return False

    # -- the public surface ------------------------------------------------------------------
    def diagnostics(self) -> dict[str, float]:
        """Figures computed since the last call (empty when none were due)."""
        out, self._pending = self._pending, {}
        return out

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state tensors (each storage counted once)."""
        return state_bytes(self)

    def state_dict(self) -> dict[str, Any]:
        # the diagnostics cadence and figures not yet read travel too, so a resumed run logs
        # the same rows (torch's load_state_dict ignores the extra key)
        return {**super().state_dict(),
                "diagnostics": {"steps_done": self._steps_done, "pending": dict(self._pending)}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        diagnostics = state_dict.get("diagnostics", {"steps_done": 0, "pending": {}})
        self._steps_done, self._pending = diagnostics["steps_done"], dict(diagnostics["pending"])
        # torch casts floating state to the parameter dtype; keep the saved fp32 values instead
        saved = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        for key, p in zip(saved_ids, param_list(self)):
            for name, value in saved.get(key, {}).items():
                if isinstance(value, Tensor) and value.is_floating_point():
                    self.state[p][name] = value.to(device=local_tensor(p).device,
                                                   dtype=torch.float32)


class SecondOrderOptimizer(RuleOptimizer):
    """A rule optimizer fed by a curvature estimator through :meth:`update_hessian`.

    Two input forms, matching the estimators in :mod:`soulcli.optim.curvature`:

    * squared gradients (Gauss-Newton-Bartlett, empirical Fisher): ``update_hessian(bs)`` reads
      ``p.grad`` exactly like the Sophia authors' code, or ``update_hessian(bs, grads=[...])``
      takes gradients aligned with :func:`param_list` (None entries are skipped);
    * a diagonal estimate (Hutchinson ``u * (H u)``): ``update_hessian(diagonal=[...])``.

    ``bs`` is the number of predicted tokens the curvature batch had; it is recorded in every
    param group and used by later steps (``step(bs=...)`` overrides and records it too). A
    subclass implements :meth:`absorb`; ``curvature_state`` names the state ``hessian_norm``
    is the norm of.
    """

    curvature_state: ClassVar[str] = "hessian"

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any],
                 diagnostics_every: int | None = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(defaults, hessian_step=0), diagnostics_every)

    def absorb(self, estimate: Tensor, state: dict[str, Tensor], group: dict,
               squared: bool) -> None:
        """Fold one parameter's fp32 curvature sample (a gradient to square, or a diagonal)
        into its state."""
        raise NotImplementedError

    def curvature_sq(self, state: dict[str, Tensor]) -> Tensor:
        """One parameter's share of ``hessian_norm ** 2``."""
        return state[self.curvature_state].square().sum()

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
        """Fold one curvature sample into the curvature state (see the class docstring)."""
        if grads is not None and diagonal is not None:
            raise ValueError("pass either grads= or diagonal=, not both")
        squared = diagonal is None
        supplied = grads if squared else diagonal
        params = param_list(self)
        if supplied is None:
            source = {id(p): p.grad for p in params if p.grad is not None}
        else:
            if len(supplied) != len(params):
                raise ValueError(f"expected {len(params)} curvature tensors (one per parameter "
                                 f"in param_groups order), got {len(supplied)}")
            source = {id(p): t for p, t in zip(params, supplied) if t is not None}
        if bs is None and not squared:
            bs = 1
        if bs is not None:
            self._record_bs(bs)
        norms: list[Tensor] = []
        for group in self.param_groups:
            group["hessian_step"] += 1
            for p in group["params"]:
                if id(p) in source:
                    local = local_tensor(p)
                    estimate = local_tensor(source[id(p)]).to(torch.float32).reshape(local.shape)
                    self.absorb(estimate, self.state_of(p, group), group, squared)
                if self.state[p]:
                    norms.append(self.curvature_sq(self.state[p]))
        squares = shard_sums(params, [float(torch.stack(norms).sum()) if norms else 0.0])[0]
        if norms:
            self._pending["hessian_norm"] = math.sqrt(squares)


def total(values: Sequence[Tensor | float]) -> float:
    """The sum of per-parameter partial sums: tensors (one sync per device) and plain floats."""
    by_device: dict[torch.device, list[Tensor]] = {}
    rest = 0.0
    for v in values:
        if isinstance(v, Tensor):
            by_device.setdefault(v.device, []).append(v.float())
        else:
            rest += float(v)
    return rest + sum(float(torch.stack(ts).sum()) for ts in by_device.values())


def shard_sums(params: Sequence[Tensor], values: list[float]) -> list[float]:
    """Sums over this rank's parameters summed over the ranks when the parameters are FSDP2
    shards (DTensors; a collective: every rank calls it), so diagnostics are the whole model's;
    ``values`` unchanged otherwise."""
    sharded = next((p for p in params if hasattr(p, "device_mesh")), None)
    if sharded is None or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=local_tensor(sharded).device)
    torch.distributed.all_reduce(t, group=sharded.device_mesh.get_group())
    return t.tolist()


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


def decay_groups(model: nn.Module, *, decay_all: bool = False) -> list[dict[str, Any]]:
    """Param groups for ``model``'s trainable parameters: weight decay on matrices, not on
    biases, norm weights or embeddings.

    The rule is the one the Sophia authors' nanoGPT fork applies (``configure_optimizers`` in
    ``Liuhong99/Sophia/model.py``: biases, LayerNorm and Embedding weights get no decay, and
    the ``lm_head`` tied to the token embedding follows the embedding), extended so that it does
    not depend on knowing every norm class: a parameter gets no decay when it has fewer than 2
    dimensions (every bias and norm weight; nanoGPT's later ``p.dim() < 2`` rule), or belongs
    to an ``nn.Embedding`` / ``nn.EmbeddingBag`` or a torch normalisation module. A tied
    parameter is exempt if any module holding it is. (The SOUL authors' code is built on HF
    ``Trainer``, whose default grouping, ``get_decay_parameter_names``, exempts biases and
    LayerNorm weights but decays embeddings.) The second group sets
    ``weight_decay=0.0``; the first inherits the optimizer's ``weight_decay``, so
    ``build_optimizer(name, decay_groups(model), lr, weight_decay)`` is the whole call.
    ``decay_all=True`` gives one group that decays every trainable parameter. Empty groups
    are left out.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": trainable}]
    exempt = {id(p) for m in model.modules() for p in m.parameters(recurse=False)
              if p.ndim < 2 or isinstance(m, NORM_MODULES + EMBEDDING_MODULES)}
    groups = [{"params": [p for p in trainable if id(p) not in exempt]},
              {"params": [p for p in trainable if id(p) in exempt], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
