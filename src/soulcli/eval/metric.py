"""Metrics as objects: what each needs from the data, from the model and from the reference.

A :class:`Metric` declares, in one place,

* ``reads``: the splits and fields it needs (``{"forget": {"answer": TEXT}}``); a split or field
  that is missing makes it unavailable, with the reason, before any model work;
* :meth:`Metric.plan`: the requests it makes of the model, through :class:`Requests`: teacher-
  forced scores of (prefix, continuation) pairs and greedy generations from prompts. The
  planner (:mod:`soulcli.eval.evaluate`) pools every metric's requests, so each distinct pair is
  scored once and each distinct prompt generated once, whatever the task;
* ``needs``: the metrics it is computed from; ``reference_needs``: the entries of the reference
  (the retrain / retain model's evaluation) it reads;
* :meth:`Metric.compute`: the number, from the stored per-token results.

Records of any kind reach a metric as (prefix, continuation) pairs built by a :class:`Pairing`:
a question-answer record under a prompt template, a prompt-continuation record, a raw text (an
empty prefix). QA, continuation and multiple choice thus share the one batched pass.

The metric kinds are registered in :data:`METRIC_KINDS` by :func:`metric_kind`; a task's suite
(``soulcli.tasks``) instantiates them under the names written to eval.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from soulcli.data.template import PromptTemplate
from soulcli.eval.generation import Generation
from soulcli.eval.scoring import Pair, TokenScores

TEXT, TEXTS = "text", "texts"  # a field holds one string / a non-empty list of strings
Rows = Sequence[Mapping[str, Any]]


class Unavailable(Exception):
    """Raised by a metric that cannot be computed; the message is the reason reported."""


# --------------------------------------------------------------------------- requests


class Requests:
    """Every distinct pair to score and prompt to generate, each registered once."""

    def __init__(self) -> None:
        self.pairs: list[Pair] = []
        self.stats: list[bool] = []
        self.generations: list[Generation] = []
        self._pairs: dict[Pair, int] = {}
        self._generations: dict[Generation, int] = {}

    def score(self, pair: Pair, stats: bool = False) -> int:
        """The index of ``pair``'s scores; ``stats`` asks for Min-K%++'s distribution statistics."""
        i = self._pairs.get(pair)
        if i is None:
            i = self._pairs[pair] = len(self.pairs)
            self.pairs.append(pair)
            self.stats.append(False)
        self.stats[i] = self.stats[i] or stats
        return i

    def generate(self, generation: Generation) -> int:
        i = self._generations.get(generation)
        if i is None:
            i = self._generations[generation] = len(self.generations)
            self.generations.append(generation)
        return i


@dataclass
class Results:
    """What the one pass produced: per-token scores per pair, text per generation (and the
    tokenizer, for metrics that count tokens of a reference; the model's device, for metrics
    that run a judge model such as a toxicity classifier)."""

    scores: list[TokenScores]
    generations: list[str]
    tokenizer: Any = None
    device: Any = None


# --------------------------------------------------------------------------- pairings


class Pairing:
    """How a record becomes a (prefix, continuation) pair; ``fields`` are the ones it reads."""

    fields: dict[str, str]

    def __call__(self, row: Mapping[str, Any], continuation: str | None = None) -> Pair:
        raise NotImplementedError

    def target(self, row: Mapping[str, Any]) -> str:
        """The reference text a generation is compared with."""
        return self(row).continuation


@dataclass(frozen=True)
class QAPairing(Pairing):
    """A question under a prompt template, then the answer (with the template's turn end)."""

    template: PromptTemplate
    question: str = "question"
    answer: str = "answer"

    @property
    def fields(self) -> dict[str, str]:  # type: ignore[override]
        return {self.question: TEXT, self.answer: TEXT}

    def __call__(self, row, continuation=None):
        answer = row[self.answer] if continuation is None else continuation
        return Pair(self.template.prompt(row[self.question]), self.template.completion(answer),
                    specials=self.template.strings)

    def target(self, row):
        return row[self.answer]


@dataclass(frozen=True)
class PromptPairing(Pairing):
    """A prompt-continuation record (MUSE's VerbMem ``prompt`` / ``gt``), the prompt verbatim."""

    prompt_field: str = "prompt"
    continuation_field: str = "gt"

    @property
    def fields(self) -> dict[str, str]:  # type: ignore[override]
        return {self.prompt_field: TEXT, self.continuation_field: TEXT}

    def __call__(self, row, continuation=None):
        return Pair(row[self.prompt_field], row[self.continuation_field] if continuation is None else continuation)


@dataclass(frozen=True)
class TextPairing(Pairing):
    """A raw text scored from its first token, no EOS appended (MUSE's PrivLeak sequences)."""

    text: str = "text"

    @property
    def fields(self) -> dict[str, str]:  # type: ignore[override]
        return {self.text: TEXT}

    def __call__(self, row, continuation=None):
        return Pair("", row[self.text] if continuation is None else continuation, eos=False)


# --------------------------------------------------------------------------- metrics


class Metric:
    """One entry of eval.json. Subclasses set the class attributes and implement plan/compute."""

    kind: ClassVar[str] = ""
    name: str  # set by each instance (a dataclass field of the subclass)
    description: str = ""
    higher_is_better: bool | None = None  # None: neither (a diagnostic)
    format: str = ".4f"  # how the summary table prints the value
    reads: Mapping[str, Mapping[str, str]] = {}
    needs: tuple[str, ...] = ()
    reference_needs: tuple[str, ...] = ()

    def plan(self, data: Mapping[str, Rows], req: Requests) -> Any:
        """Register the scores / generations this metric needs; return what compute reads."""
        return None

    def compute(self, plan: Any, res: Results, done: Mapping[str, dict],
                reference: Mapping[str, Any] | None, data: Mapping[str, Rows]) -> dict:
        raise NotImplementedError

    def formatted(self, value: float) -> str:
        if self.format.endswith("%"):
            return f"{value:{self.format[:-1]}}%"
        return f"{value:{self.format}}"


METRIC_KINDS: dict[str, type[Metric]] = {}


def metric_kind(cls: type[Metric]) -> type[Metric]:
    """Register a metric class under its ``kind``."""
    if not cls.kind or cls.kind in METRIC_KINDS:
        raise ValueError(f"metric kind {cls.kind!r} is empty or registered twice")
    METRIC_KINDS[cls.kind] = cls
    return cls


# --------------------------------------------------------------------------- shared helpers


def mean(values: Sequence[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def texts_of(value: Any) -> list[str]:
    """A TEXTS field's strings (one string counts as a list of one)."""
    return [value] if isinstance(value, str) else list(value)


def fingerprint(rows: Rows) -> str:
    """Short hash of a split's records (every field), to tell whether two evaluations used the
    same items."""
    text = json.dumps(list(rows), ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def reference_entry(reference: Mapping[str, Any], name: str, part: str = "value") -> Any:
    """``reference['metrics'][name][part]``, or :class:`Unavailable` naming what to evaluate."""
    entry = (reference.get("metrics") or {}).get(name) or {}
    if entry.get(part) is None:
        raise Unavailable(f"the reference has no {name}{' per item' if part == 'per_item' else ''}; "
                          f"evaluate the retain model with {name}")
    return entry[part]


def check_same_items(reference: Mapping[str, Any], data: Mapping[str, Rows], splits: Sequence[str]) -> None:
    """Refuse a reference computed on other items than this evaluation's."""
    stored = reference.get("fingerprints") or {}
    for split in splits:
        if split in stored and stored[split] != fingerprint(data[split]):
            raise Unavailable(f"the reference was computed on a different '{split}' split; "
                              "evaluate the retain model on the same data")
