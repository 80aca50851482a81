"""The evaluation's knobs: one schema, used by ``evaluate_model`` and as the recipe's ``eval``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from soulcli import schema
from soulcli.schema import POSITIVE, Range


@dataclass(frozen=True)
class EvalConfig:
    """Knobs of an evaluation (recipe section ``eval``).

    ``batch_size``: sequences per forward pass (scoring) and prompts per generation batch.
    ``generate_batch_size``: prompts per generation batch if not ``batch_size`` (``None``). A
    finished answer leaves its batch at once, so a larger one costs only its KV cache
    (prompt + ``max_new_tokens`` positions a row) and saves the per-token step overhead, which
    dominates a small model's generation: the built-in recipes set 128.
    ``max_new_tokens``: cap on each greedy answer to a question (TOFU's ROUGE; a task's other
    generations declare their own budgets). ``mink_k``: fraction of lowest-scoring tokens
    that Min-K% and Min-K%++ average. ``metrics``: names or glob patterns to compute (``None``:
    all). ``max_length``: longest scored sequence in tokens, longer answers are cut (``None``:
    the recipe's ``data.max_length``; 512 for a direct ``evaluate_model`` call).
    ``toxic_threshold``: the toxicity classifier's score above which an answer counts as toxic
    (the detox task's toxic rate; SOUL's 0.5). ``max_items``: evaluate only the first N records
    of each split (``None``: all), for a quick check; the result says it is ``limited``.
    """

    batch_size: Annotated[int, POSITIVE] = 32
    generate_batch_size: Annotated[int, POSITIVE] | None = None
    max_new_tokens: Annotated[int, POSITIVE] = 200  # TOFU generates up to 200 new tokens
    mink_k: Annotated[float, Range(gt=0, le=1)] = 0.4
    metrics: tuple[str, ...] | None = None
    max_length: Annotated[int, Range(ge=2)] | None = None
    toxic_threshold: Annotated[float, Range(ge=0, le=1)] = 0.5
    max_items: Annotated[int, POSITIVE] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            object.__setattr__(self, "metrics", (self.metrics,))
        elif self.metrics is not None:
            object.__setattr__(self, "metrics", tuple(self.metrics))
        schema.check_instance(self, "eval")  # metric names are checked against the task's suite
