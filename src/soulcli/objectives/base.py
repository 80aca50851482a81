"""What every unlearning objective shares: the batch it sees, its hyperparameters, its retain term.

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

Subclasses implement ``forget_term`` and, when they need the starting model, extend
``reference_tables``; the shared ``setup`` fills the reference cache from them.
"""

from __future__ import annotations

import abc
import math
import pathlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from soulcli.errors import UserError, did_you_mean
from soulcli.objectives.logprobs import (
    forward_logits,
    kl_to_reference,
    mean_answer_nll,
    reference_distributions,
    sequence_logprob,
)
from soulcli.objectives.reference import Batch, ReferenceCache, eval_mode, select_rows

RETAIN_LOSSES = ("nll", "kl")

# A loss term to minimise and diagnostics as floats.
Terms = tuple[torch.Tensor, dict[str, float]]
# (model, batch) -> one reference value per row, computed under no_grad in eval mode.
ReferenceFn = Callable[[torch.nn.Module, Batch], list[Any]]


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

    def to(self, device: torch.device | str) -> "UnlearnBatch":
        def move(data: Batch | None) -> Batch | None:
            return None if data is None else {k: v.to(device) for k, v in data.items()}

        return UnlearnBatch(
            move(self.forget),
            move(self.retain),
            move(self.forget_refusal),
            move(self.forget_alternate),
        )


@dataclass(frozen=True)
class HParam:
    """One hyperparameter of an objective: default, type, lower bound and help text."""

    default: float | int | str | None
    help: str
    kind: type = float
    low: float | None = None
    low_open: bool = False  # True: the value must be strictly above ``low``

    def parse(self, what: str, value: object) -> float | int | str | None:
        """``value`` checked and converted to ``kind``; a bad one is a ``UserError`` naming ``what``."""
        if value is None and self.default is None:
            return None
        ok_type = (
            isinstance(value, (int, float)) if self.kind is float else isinstance(value, self.kind)
        )
        if isinstance(value, bool) or not ok_type:
            raise UserError(f"{what} must be {self.kind.__name__}, got {value!r}")
        if self.kind is float and not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise UserError(f"{what} must be finite, got {value!r}")
        if self.low is not None:
            below = value <= self.low if self.low_open else value < self.low  # type: ignore[operator]
            if below:
                bound = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
                raise UserError(f"{what} must be {bound}, got {value!r}")
        return self.kind(value)


def positive(default: float, help: str) -> HParam:
    """A float hyperparameter that must be > 0 (an inverse temperature, a coefficient)."""
    return HParam(default, help, low=0.0, low_open=True)


KL_TOP_K = HParam(
    64,
    "tokens of the starting model's distribution kept per retain answer position for the KL "
    "retain term (0 keeps all: exact, 4*V bytes a position)",
    kind=int,
    low=0,
)


def _weight(key: str, value: object) -> float:
    return float(HParam(1.0, "", low=0.0).parse(key, value))  # type: ignore[arg-type]


def _concat(rows: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat(parts) for parts in zip(*rows))


class Objective(abc.ABC):
    """An unlearning loss. Construct with the weights and the loss's own hyperparameters.

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
    hparams: ClassVar[dict[str, HParam]] = {}
    retain_kind: ClassVar[str | None] = None
    kl_top_k: int  # set from the hyperparameters where a KL retain term can occur

    def __init__(
        self,
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
        retain_loss: str = "nll",
        **own_hparams: Any,
    ) -> None:
        self.forget_weight = _weight("forget_weight", forget_weight)
        self.retain_weight = _weight("retain_weight", retain_weight)
        if retain_loss not in RETAIN_LOSSES:
            raise UserError(
                f"unknown retain_loss '{retain_loss}'{did_you_mean(retain_loss, RETAIN_LOSSES)}; "
                f"choose one of: {', '.join(RETAIN_LOSSES)}"
            )
        specs = self.hyperparameters()
        for key in own_hparams:
            if key not in specs:
                takes = ", ".join(sorted(specs)) or "no hyperparameters of its own"
                raise UserError(
                    f"objective '{self.name}' has no hyperparameter '{key}'"
                    f"{did_you_mean(key, specs)}; it takes: {takes}"
                )
        for key, spec in specs.items():
            value = own_hparams.get(key, spec.default)
            setattr(self, key, spec.parse(f"objective '{self.name}': {key}", value))
        self.retain_loss = self.retain_kind or retain_loss
        self.uses_retain = type(self).uses_retain and self.retain_weight > 0
        self.cache = ReferenceCache(self.cache_meta())
        self.reference_computed = 0  # items whose reference values the last setup() computed
        self.needs_setup = bool(self.reference_tables())

    @classmethod
    def hyperparameters(cls) -> dict[str, HParam]:
        """The objective's own hyperparameters, with ``kl_top_k`` where a KL retain term can occur."""
        has_kl = cls.uses_retain and cls.retain_kind in (None, "kl")
        return {**cls.hparams, **({"kl_top_k": KL_TOP_K} if has_kl else {})}

    # -- what subclasses provide ---------------------------------------------------------------

    @abc.abstractmethod
    def forget_term(self, model: torch.nn.Module, batch: UnlearnBatch) -> Terms:
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
            "kl_top_k": getattr(self, "kl_top_k", None),
        }

    def retain_term(self, model: torch.nn.Module, data: Batch) -> torch.Tensor:
        """NLL or KL-to-start on the retain batch (see the module docstring)."""
        logits = forward_logits(model, data)
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

    def __call__(self, model: torch.nn.Module, batch: UnlearnBatch) -> Terms:
        """The loss to minimise and its terms: ``forget_loss``, ``retain_loss`` (when used), extras."""
        for field, used in (("forget_refusal", self.uses_refusal), ("forget_alternate", self.uses_alternate)):
            if used and getattr(batch, field) is None:
                raise ValueError(f"objective '{self.name}' needs batch.{field}")
        forget, extras = self.forget_term(model, batch)
        total = self.forget_weight * forget
        logs = {"forget_loss": float(forget.detach()), **extras}
        if self.uses_retain:
            if batch.retain is None:
                raise ValueError(f"objective '{self.name}' needs batch.retain (retain_weight > 0)")
            retain = self.retain_term(model, batch.retain)
            total = total + self.retain_weight * retain
            logs["retain_loss"] = float(retain.detach())
        return total, logs

    def _retain_distributions(self, model: torch.nn.Module, data: Batch) -> list[Any]:
        logits = forward_logits(model, data)
        return reference_distributions(logits, data["labels"], self.kl_top_k)

    def _reference_distributions(self, table: str, data: Batch) -> tuple[torch.Tensor, ...]:
        """Cached ``reference_distributions`` of ``table`` for the rows of ``data``, concatenated."""
        return _concat(self.cache.rows(table, data))

    def _reference_rows(self, table: str, data: Batch, device: torch.device) -> torch.Tensor:
        """Cached per-sequence scalars of ``table`` for the rows of ``data``, ``[B]``."""
        return torch.stack(self.cache.rows(table, data)).to(device)


def forget_nll(model: torch.nn.Module, data: Batch) -> torch.Tensor:
    """Mean answer-token cross-entropy of a batch under ``model``."""
    return mean_answer_nll(forward_logits(model, data), data["labels"])


def reference_logprobs(model: torch.nn.Module, data: Batch) -> list[torch.Tensor]:
    """A ``ReferenceFn``: each row's summed answer log-likelihood ``S_ref`` (fp32 scalars)."""
    return list(sequence_logprob(forward_logits(model, data), data["labels"]).cpu().unbind())
