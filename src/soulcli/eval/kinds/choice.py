"""Zero-shot multiple-choice accuracy as lm-evaluation-harness computes it (WMDP's and MMLU's
reported metric; Li et al. 2024 evaluate WMDP with the harness).

For each record the harness scores ``len(choices)`` continuations of the same prompt by their
summed log-likelihood and predicts the highest (``lm_eval/api/task.py``,
``ConfigurableTask.process_results``, ``output_type: multiple_choice``):

* ``acc``: ``argmax_i sum_t log p(c_i,t | prompt, c_i,<t)``;
* ``acc_norm``: ``argmax_i`` of that sum divided by ``len(choice_i)`` in characters
  (``completion_len = np.array([float(len(i)) for i in choices])``), the delimiter excluded.

The continuation is the harness's ``target_delimiter`` (a space) and the choice. ``by="letter"``
scores the letters (WMDP's and MMLU's ``doc_to_choice: ["A", "B", "C", "D"]``: the reported
accuracy; letters are one character each, so ``acc_norm`` equals ``acc`` there and is not
offered); ``by="choice"`` scores each choice's text instead, unnormalised (``acc``) or, with
``normalize``, per character (``acc_norm``). Ties go to the lowest index (``np.argmax``), as the
harness. No EOS is appended: the harness scores the continuation alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np

from soulcli.data.wmdp import LETTERS
from soulcli.eval.metric import TEXT, TEXTS, Metric, Requests, mean, metric_kind
from soulcli.eval.scoring import Pair


def choice_scores(logliks: list[float], lengths: list[int] | None = None) -> int:
    """The harness's prediction: ``argmax`` of the log-likelihoods, divided by ``lengths`` when
    given (``acc_norm``); ties go to the first."""
    scores = np.asarray(logliks, dtype=np.float64)
    if lengths is not None:
        scores = scores / np.asarray(lengths, dtype=np.float64)
    return int(np.argmax(scores))


@metric_kind
@dataclass
class ChoiceAccuracy(Metric):
    """Share of records of ``split`` whose highest-scoring continuation is the ``answer``
    index; the record's ``prompt`` field is the text before the continuation (the harness's
    context, e.g. :func:`soulcli.data.wmdp.mc_prompt`)."""

    kind = "choice_accuracy"
    name: str
    split: str
    prompt: str = "prompt"  # the field holding the prompt
    by: Literal["letter", "choice"] = "letter"
    normalize: bool = False  # by="choice": per character of the choice (the harness's acc_norm)
    chance: float = 0.25  # 1 / the number of choices, shown beside the value
    description: str = ""
    higher_is_better: bool | None = True

    def __post_init__(self) -> None:
        if self.normalize and self.by != "choice":
            raise ValueError("normalize applies to by='choice' only (letters are one character each)")

    @property
    def reads(self):
        return {self.split: {self.prompt: TEXT, "choices": TEXTS}}

    def options(self, row: Mapping[str, Any]) -> list[str]:
        """The scored strings of a record, before the delimiter: its letters or its choices."""
        return list(LETTERS) if self.by == "letter" else list(row["choices"])

    def plan(self, data, req: Requests):
        return [[req.score(Pair(row[self.prompt], " " + option, eos=False)) for option in self.options(row)]
                for row in data[self.split]]

    def compute(self, plan, res, done, reference, data):
        chosen, logliks = [], []
        for indices, row in zip(plan, data[self.split]):
            lls = [float(res.scores[i].logprobs.sum()) for i in indices]
            lengths = [len(o) for o in self.options(row)] if self.normalize else None
            chosen.append(choice_scores(lls, lengths))
            logliks.append(lls)
        per_item = [float(c == row["answer"]) for c, row in zip(chosen, data[self.split])]
        return {"value": mean(per_item), "per_item": per_item, "chosen": chosen, "chance": self.chance,
                "logliks": logliks}

    def formatted(self, value: float) -> str:
        return f"{super().formatted(value)} (chance {self.chance:g})"
