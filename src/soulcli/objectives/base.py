"""What every unlearning objective shares: the batch it sees, its hyperparameters, its retain
term, and what a call returns.

An objective minimises ``gamma * forget_term + alpha * retain_term`` where gamma is
``unlearn.forget_weight`` and alpha ``unlearn.retain_weight``. The retain term is, per
``unlearn.retain_loss``:

* ``nll``: the mean cross-entropy over retain answer tokens;
* ``kl``: ``KL(p_ref || p_theta)`` of the next-token distributions at the retain answer
  positions, averaged over those positions (padding and prompts excluded), with ``p_ref`` the
  starting model (TOFU's "KL minimization" term, Maini et al. 2024, arXiv:2401.06121).
  ``p_ref`` is cached by ``setup``: per retain item and answer position, its top ``kl_top_k``
  log-probabilities, their token ids and the log of the remaining mass, i.e.
  ``kl_top_k * 8 + 4`` bytes a position (``kl_top_k = 0``: the whole fp32 distribution,
  ``4 * V`` bytes a position, exact). See ``logprobs.kl_to_reference`` for what the top-k
  form computes.

Writing an objective (one module, registered in ``objectives/__init__.py``)::

    class NPO(Objective):
        name = "npo"
        beta: Annotated[float, POSITIVE, "inverse temperature beta"] = 0.1   # a hyperparameter

        def reference_tables(self):          # only if it needs the starting model
            return {**super().reference_tables(), "forget_logp": ("forget", reference_logprobs)}

        def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
            s = sequence_logprob(fwd.logits(batch.forget), batch.forget["labels"])
            ...
            return loss, {"npo_weight": ...}  # a scalar to minimise, floats to log

* Hyperparameters are annotated class attributes (``soulcli.schema``: bounds and help in
  ``Annotated``, the default as the value); the constructor checks and sets them.
* Run the model through ``fwd.logits(data)`` (``[B, T, V]`` logits, recorded for the
  curvature estimator) or, for hidden states, ``fwd.model``. Never call a global helper for a
  differentiable forward: what ``fwd`` did not record the estimator forwards again.
* Calling the objective returns an :class:`ObjectiveOutput`: the loss, its logged terms
  (``forget_loss``, ``retain_loss``, the extras) and, for each batch it trains on (forget, then
  retain when used), the logits it computed for it or None.

Subclasses that need the starting model extend ``reference_tables``; the shared ``setup``
fills the reference cache from them.
"""

from __future__ import annotations

import abc
import dataclasses
import pathlib
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Literal

import torch

from soulcli import schema
from soulcli.data.encode import answer_mask, eval_mode, forward_logits
from soulcli.errors import UserError
from soulcli.objectives.logprobs import (
    kl_to_reference,
    mean_answer_nll,
    reference_distributions,
    sequence_logprob,
)
from soulcli.objectives.reference import Batch, ReferenceCache, select_rows
from soulcli.schema import NON_NEGATIVE

# A loss term to minimise and diagnostics as floats.
Terms = tuple[torch.Tensor, dict[str, float]]
# (model, batch) -> one reference value per row, computed under no_grad in eval mode.
ReferenceFn = Callable[[torch.nn.Module, Batch], list[Any]]
# The arguments every objective takes; the rest of its annotated attributes are its own.
SHARED_ARGS = ("forget_weight", "retain_weight", "retain_loss")


def _concat(rows: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat(parts) for parts in zip(*rows))


@dataclass
class UnlearnBatch:
    """One step's data. Each dict holds ``input_ids``, ``attention_mask``, ``labels`` and
    ``index`` (``[B]`` long: the items' positions in their split).

    ``forget_refusal`` asks the same forget questions, in the same order and with the same
    ``index``, answered by a refusal (built only for objectives with ``uses_refusal``);
    ``forget_alternate`` likewise, answered by a plausible wrong answer (``uses_alternate``).
    """

    forget: Batch
    retain: Batch | None = None
    forget_refusal: Batch | None = None
    forget_alternate: Batch | None = None
    # a micro-batch's (forget, retain) share of its step's counts (Objective.counts; gradient
    # accumulation): its terms are scaled by them, so the micro-batches' sum is the step's
    # loss; None: the batch is the whole step
    share: tuple[float, float] | None = None

    def to(self, device: torch.device | str) -> "UnlearnBatch":
        def move(data: Batch | None) -> Batch | None:
            return None if data is None else {k: v.to(device) for k, v in data.items()}

        return UnlearnBatch(move(self.forget), move(self.retain), move(self.forget_refusal),
                            move(self.forget_alternate), self.share)


class Forward:
    """One objective call's view of the model: ``logits(data)`` forwards a batch and records
    ``(data, logits)``, so the curvature estimator can take its sample from the same graph."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.records: list[tuple[Batch, torch.Tensor]] = []

    def logits(self, data: Batch) -> torch.Tensor:
        """``[B, T, V]`` logits of ``data`` (recorded)."""
        out = forward_logits(self.model, data)
        self.records.append((data, out))
        return out

    def logits_of(self, data: Batch) -> torch.Tensor | None:
        """The logits recorded for this very batch object, or None if it was not forwarded."""
        return next((logits for seen, logits in self.records if seen is data), None)


@dataclass
class ObjectiveOutput:
    """What one objective call computed.

    ``logits`` lists the batches the loss trains on (forget, then retain when used), each with
    the ``[B, T, V]`` logits the objective computed for it (with grad, at the current
    parameters) or None where it computed none (RMU reads hidden states; PO forwards the
    refusals, not the forget answers).
    """

    loss: torch.Tensor
    terms: dict[str, float]
    logits: list[tuple[Batch, torch.Tensor | None]]


@schema.declares_args
class Objective(abc.ABC):
    """An unlearning loss. Construct with the weights and the loss's own hyperparameters
    (keyword arguments, checked against the annotated attributes by ``soulcli.schema``).

    ``uses_retain`` and ``needs_setup`` are class defaults refined per instance (no retain term
    when ``retain_weight == 0``; setup only when a reference is needed): read them from the
    instance. ``retain_kind`` fixes the retain term of objectives that define their own (then
    ``retain_loss`` is ignored).
    """

    name: ClassVar[str]
    uses_retain: bool = True
    uses_refusal: ClassVar[bool] = False
    uses_alternate: ClassVar[bool] = False
    needs_setup: bool = False
    retain_kind: ClassVar[str | None] = None
    # whether micro-batches of a step add up to the step (False: the objective changes its own
    # state at every call, as PDU's dual step does; unlearn.grad_accum must be 1)
    accumulates: ClassVar[bool] = True
    # the forget term is a mean over sequences, not answer tokens (NPO, SimNPO, DPO)
    sequence_mean: ClassVar[bool] = False

    forget_weight: Annotated[float, NON_NEGATIVE, "gamma: the forget term's weight"] = 1.0
    retain_weight: Annotated[float, NON_NEGATIVE, "alpha: the retain term's weight"] = 1.0
    retain_loss: Annotated[Literal["nll", "kl"], "the retain term: nll or kl"] = "nll"
    kl_top_k: Annotated[
        int,
        NON_NEGATIVE,
        "tokens of the starting model's distribution kept per retain answer position for the KL "
        "retain term (0 keeps all: exact, 4*V bytes a position)",
    ] = 64

    def __init__(self, **args: Any) -> None:
        params = schema.params_of(type(self), skip=self._not_taken())
        errors: list[str] = []
        values = schema.check(params, args, "", errors, fill=True)
        if errors:
            raise UserError(f"objective '{self.name}': " + "; ".join(errors))
        for key, value in values.items():
            setattr(self, key, value)
        self.retain_loss = self.retain_kind or self.retain_loss
        self.uses_retain = type(self).uses_retain and self.retain_weight > 0
        self.cache = ReferenceCache(self.cache_meta())
        self.reference_computed = 0  # items whose reference values the last setup() computed
        self.needs_setup = bool(self.reference_tables())

    @classmethod
    def _not_taken(cls) -> tuple[str, ...]:
        """``kl_top_k`` where no KL retain term can occur."""
        has_kl = cls.uses_retain and cls.retain_kind in (None, "kl")
        return () if has_kl else ("kl_top_k",)

    @classmethod
    def hyperparameters(cls) -> dict[str, schema.Param]:
        """The objective's own hyperparameters (the shared weights and retain loss excluded),
        with ``kl_top_k`` where a KL retain term can occur."""
        return schema.params_of(cls, skip=SHARED_ARGS + cls._not_taken())

    # -- what subclasses provide ---------------------------------------------------------------

    @abc.abstractmethod
    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        """The forget term (a scalar to minimise) and extra diagnostics as floats."""

    def reference_tables(self) -> dict[str, tuple[str, ReferenceFn]]:
        """Cached reference quantities: ``{table: (UnlearnBatch field, function)}``."""
        if self.uses_retain and self.retain_loss == "kl":
            return {"retain_kl": ("retain", self._retain_distributions)}
        return {}

    def cache_meta(self) -> dict[str, Any]:
        """Settings the cached values depend on; a cache file with other settings is ignored."""
        return {
            "objective": self.name,
            "retain_loss": self.retain_loss,
            "kl_top_k": self.kl_top_k if "kl_top_k" in self.hyperparameters() else None,
        }

    def counts(self, batch: UnlearnBatch) -> tuple[int, int]:
        """How many things the forget and the retain term average over in ``batch`` (the
        denominators of their means): answer tokens, the default's NLL and KL being token
        means; a forget term that is a mean over sequences (``sequence_mean``) counts rows.
        Gradient accumulation weights each micro-batch by its share of the step's counts."""
        forget = row_count(batch.forget) if self.sequence_mean else answer_count(batch.forget)
        return forget, answer_count(batch.retain)

    def retain_term(self, fwd: Forward, data: Batch) -> torch.Tensor:
        """NLL or KL-to-start on the retain batch (see the module docstring)."""
        logits = fwd.logits(data)
        if self.retain_loss == "kl":
            reference = self._reference_distributions("retain_kl", data)
            return kl_to_reference(logits, data["labels"], reference).mean()
        return mean_answer_nll(logits, data["labels"])

    # -- the engine's interface ------------------------------------------------------------------

    def setup(
        self,
        model: torch.nn.Module,
        batches: list[UnlearnBatch],
        cache_dir: pathlib.Path | str | None = None,
        cache_key: str = "",
    ) -> None:
        """Compute the starting model's reference quantities for every item of ``batches``.

        Call once, before the first step, with every batch the run will use. With ``cache_dir``
        the values are read from and written to ``cache_dir / f"{name}-{cache_key}.pt"``; only
        items missing there (or whose tokens changed) are computed. Batches are right-padded (the
        ``pad_batch`` default), so an item's values do not depend on the batch it sits in.
        """
        tables = self.reference_tables()
        if not tables:
            return
        meta = self.cache_meta()
        path = (
            None if cache_dir is None else pathlib.Path(cache_dir) / f"{self.name}-{cache_key}.pt"
        )
        cache = ReferenceCache(meta) if path is None else ReferenceCache.load(path, meta)
        computed = 0
        with torch.no_grad(), eval_mode(model):
            for batch in batches:
                for table, (field, compute) in tables.items():
                    data = getattr(batch, field)
                    if data is None:
                        raise ValueError(
                            f"objective '{self.name}' needs '{field}' in every batch given to setup()"
                        )
                    rows = cache.missing_rows(table, data)
                    if rows:
                        cache.put(table, data, rows, compute(model, select_rows(data, rows)))
                        computed += len(rows)
        if path is not None and (computed or not path.is_file()):
            cache.save(path)
        self.cache = cache
        self.reference_computed = computed

    def __call__(self, model: torch.nn.Module, batch: UnlearnBatch) -> ObjectiveOutput:
        """The loss to minimise, its terms (``forget_loss``, ``retain_loss`` when used, extras)
        and the logits computed for the batches it trains on."""
        for field, used in (("forget_refusal", self.uses_refusal),
                            ("forget_alternate", self.uses_alternate)):
            if used and getattr(batch, field) is None:
                raise ValueError(f"objective '{self.name}' needs batch.{field}")
        fwd = Forward(model)
        forget, extras = self.forget_term(fwd, batch)
        logs = {"forget_loss": float(forget.detach()), **extras}
        if batch.share is not None:
            forget = forget * batch.share[0]
            logs = {k: v * batch.share[0] if isinstance(v, float) else v for k, v in logs.items()}
        total = self.forget_weight * forget
        trained = [batch.forget]
        if self.uses_retain:
            if batch.retain is None:
                raise ValueError(f"objective '{self.name}' needs batch.retain (retain_weight > 0)")
            retain = self.retain_term(fwd, batch.retain)
            logs["retain_loss"] = float(retain.detach())
            if batch.share is not None:
                retain = retain * batch.share[1]
                logs["retain_loss"] *= batch.share[1]
            total = total + self.retain_weight * retain
            trained.append(batch.retain)
        return ObjectiveOutput(total, logs, [(data, fwd.logits_of(data)) for data in trained])

    def _retain_distributions(self, model: torch.nn.Module, data: Batch) -> list[Any]:
        logits = forward_logits(model, data)
        return reference_distributions(logits, data["labels"], self.kl_top_k)

    def _reference_distributions(self, table: str, data: Batch) -> tuple[torch.Tensor, ...]:
        """Cached ``reference_distributions`` of ``table`` for the rows of ``data``, concatenated."""
        return _concat(self.cache.rows(table, data))

    def _reference_rows(self, table: str, data: Batch, device: torch.device) -> torch.Tensor:
        """Cached per-sequence scalars of ``table`` for the rows of ``data``, ``[B]``."""
        return torch.stack(self.cache.rows(table, data)).to(device)


def with_shares(objective: Objective, micro: list[UnlearnBatch],
                totals: tuple[int, int] | None = None, ranks: int = 1) -> list[UnlearnBatch]:
    """A step's micro-batches, each with its share of the step's forget and retain counts
    (:meth:`Objective.counts`), so that the sum of their losses is the step's: a token mean over
    the whole step, not a mean of the micro-batches' means. Under torchrun ``totals`` are the
    global step's counts (every rank's) and the shares are multiplied by the ``ranks`` whose
    gradients DDP / FSDP average, so the averaged gradient is the global step's."""
    counts = [objective.counts(m) for m in micro]
    totals = totals or (sum(c[0] for c in counts), sum(c[1] for c in counts))
    return [dataclasses.replace(m, share=(ranks * c[0] / max(1, totals[0]), ranks * c[1] / max(1, totals[1])))
            for m, c in zip(micro, counts)]


def answer_count(data: Batch | None) -> int:
    """Answer tokens of a batch (0 for None): what a token-mean term averages over."""
    return 0 if data is None else int(answer_mask(data["labels"]).sum())


def row_count(data: Batch | None) -> int:
    """Rows of a batch (0 for None): what a sequence-mean term averages over."""
    return 0 if data is None else int(data["input_ids"].shape[0])


def forget_nll(fwd: Forward, data: Batch) -> torch.Tensor:
    """Mean answer-token cross-entropy of a batch."""
    return mean_answer_nll(fwd.logits(data), data["labels"])


def reference_logprobs(model: torch.nn.Module, data: Batch) -> list[torch.Tensor]:
    """A ``ReferenceFn``: each row's summed answer log-likelihood ``S_ref`` (fp32 scalars)."""
    return list(sequence_logprob(forward_logits(model, data), data["labels"]).cpu().unbind())
