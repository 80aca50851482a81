"""Prompt templates: how a question is put to the model and where its answer starts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptTemplate:
    """The text around a question. ``prompt(q)`` is what the model is conditioned on.

    The answer follows the prompt directly and is closed by the tokenizer's EOS token.
    ``stop_strings`` end a greedy generation early (besides EOS).
    The built-in default suits the built-in model; TOFU's Llama-2 chat template is
    ``question_start="[INST] ", question_end=" [/INST]", answer_start=""``.
    """

    question_start: str = "Question: "
    question_end: str = "\n"
    answer_start: str = "Answer: "
    stop_strings: tuple[str, ...] = field(default_factory=lambda: ("\nQuestion:",))

    def prompt(self, question: str) -> str:
        return f"{self.question_start}{question}{self.question_end}{self.answer_start}"
