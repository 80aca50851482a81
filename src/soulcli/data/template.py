"""Prompt templates: how a question is put to the model and where its answer starts."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, Sequence

from soulcli.errors import UserError

#: TOFU's Llama-2 chat form (``config/model_config.yaml``: ``[INST] `` / `` [/INST]`` / ``""``).
LLAMA2 = {"question_start": "[INST] ", "question_end": " [/INST]", "answer_start": ""}
#: Among a template's ``strings``: they are a rendered chat template's, which the encoder
#: encodes without the tokenizer's own special tokens (as ``apply_chat_template`` does).
CHAT_MARK = "\x00chat\x00"
# placeholders a chat template renders (a second question: the next turn of a few-shot prompt)
_Q, _A, _Q2 = "\x00soul-question\x00", "\x00soul-answer\x00", "\x00soul-question-2\x00"


@dataclass(frozen=True)
class PromptTemplate:
    """The text around a question. ``prompt(q)`` is what the model is conditioned on,
    ``completion(a)`` what it learns: the answer, then ``answer_end`` (a chat turn's closing
    tokens), then the tokenizer's EOS (appended once by the encoder).

    Three kinds:

    * the plain form (``preset: plain``): ``question_start + q + question_end + answer_start``;
      the built-in default suits the built-in model;
    * ``preset: llama2``: TOFU's Llama-2 form ``[INST] q [/INST]`` (the answer follows directly);
      a ``system_prompt`` goes in Llama-2's ``<<SYS>>`` block;
    * ``chat_template: true``: the tokenizer's own ``apply_chat_template`` (a user turn, the
      generation prompt, the assistant turn), with ``system_prompt`` as a system turn;
      :meth:`resolved` turns it into the plain strings it renders around the question and answer.

    Special tokens written in these strings (``<|start_header_id|>``, ``</s>``) are encoded as
    special tokens. ``stop_strings`` end a greedy generation early (besides EOS).
    """

    question_start: str = "Question: "
    question_end: str = "\n"
    answer_start: str = "Answer: "
    answer_end: str = ""
    stop_strings: tuple[str, ...] = field(default_factory=lambda: ("\nQuestion:",))
    preset: Literal["plain", "llama2"] = "plain"
    chat_template: bool = False
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.preset == "llama2" or self.chat_template:
            plain = PromptTemplate()
            set_ = [f.name for f in fields(self) if f.name in ("question_start", "question_end", "answer_start",
                                                               "answer_end") and getattr(self, f.name) != getattr(plain, f.name)]
            kind = "data.template.chat_template" if self.chat_template else "data.template.preset: llama2"
            if set_:
                raise UserError(f"{kind} writes the prompt itself; drop data.template.{set_[0]}")
            if self.preset == "llama2" and self.chat_template:
                raise UserError("data.template: preset llama2 and chat_template are two templates; choose one")

    def _strings(self) -> tuple[str, str, str]:
        if self.chat_template:
            raise UserError("data.template.chat_template needs the model's tokenizer here; this "
                            "command does not support chat templates yet")
        if self.preset == "llama2":
            start = LLAMA2["question_start"]
            if self.system_prompt:
                start += f"<<SYS>>\n{self.system_prompt}\n<</SYS>>\n\n"
            return start, LLAMA2["question_end"], LLAMA2["answer_start"]
        start = f"{self.system_prompt}\n\n{self.question_start}" if self.system_prompt else self.question_start
        return start, self.question_end, self.answer_start

    def prompt(self, question: str) -> str:
        start, end, answer = self._strings()
        return f"{start}{question}{end}{answer}"

    def completion(self, answer: str) -> str:
        return answer + self.answer_end

    @property
    def turn_break(self) -> str:
        """What a multi-turn prompt writes between one turn's completion and the next question:
        the plain form's newline and question start (no second system prompt); Llama-2's
        `` </s><s>[INST] `` (``[INST] q1 [/INST] a1 </s><s>[INST] q2 [/INST]``; its ``</s><s>``
        are encoded as text here, not as special tokens)."""
        self._strings()  # a chat template needs the tokenizer (resolved)
        return f" </s><s>{LLAMA2['question_start']}" if self.preset == "llama2" else "\n" + self.question_start

    def with_shots(self, shots: Sequence[tuple[str, str]], question: str) -> str:
        """``question`` behind worked (question, answer) examples, so that :meth:`prompt` of the
        result shows each shot as a full turn (question, answer, turn break) before the
        question's own prompt (SOUL's few-shot probe)."""
        _, end, answer = self._strings()
        return "".join(f"{q}{end}{answer}{self.completion(a)}{self.turn_break}" for q, a in shots) + question

    @property
    def strings(self) -> tuple[str, ...]:
        """The template's own text (where its special tokens are special), for the encoder."""
        return (*self._strings(), self.answer_end)


    def resolved(self, tokenizer) -> PromptTemplate:
        """The template in plain strings: a chat template rendered by ``tokenizer`` around
        placeholders (a BOS it writes stays in the text, and the encoder then adds none, as
        ``apply_chat_template`` does); others as they are."""
        if not self.chat_template:
            return self
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("data.template.chat_template: the tokenizer has no chat_template; "
                            "use preset: llama2 or the plain template")
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        user = [*system, {"role": "user", "content": _Q}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": _A}], tokenize=False)
        rest = full[len(prompt):]
        if not full.startswith(prompt) or prompt.count(_Q) != 1 or rest.count(_A) != 1:
            raise UserError("data.template.chat_template: the tokenizer's chat template does not put the "
                            "answer after its generation prompt; use the plain template")
        start, end = prompt.split(_Q)
        answer_start, answer_end = rest.split(_A)
        return RenderedChat(question_start=start, question_end=end, answer_start=answer_start,
                            answer_end=answer_end, stop_strings=(),
                            next_turn=_next_turn(tokenizer, user, answer_end))


def _next_turn(tokenizer, user: list[dict], answer_end: str) -> str | None:
    """The text a chat template writes between an answer's end and a second user question
    (None when it renders no such turn)."""
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": _A},
                                              {"role": "user", "content": _Q2}],
                                             tokenize=False, add_generation_prompt=True)
    except TemplateError:  # a template may refuse a second turn (its raise_exception)
        return None
    between = text.split(_A, 1)[-1].split(_Q2, 1)[0]
    if text.count(_A) != 1 or text.count(_Q2) != 1 or not between.startswith(answer_end):
        return None
    return between[len(answer_end):]


@dataclass(frozen=True)
class RenderedChat(PromptTemplate):
    """A chat template rendered into strings (:meth:`PromptTemplate.resolved`): encoded without
    the tokenizer's own special tokens, as ``apply_chat_template`` encodes. ``next_turn``: what
    it writes between an answer and the next question (``None``: it renders no second turn)."""

    next_turn: str | None = None

    @property
    def turn_break(self) -> str:
        if self.next_turn is None:
            raise UserError("data.template.chat_template: the tokenizer's chat template renders no second "
                            "user turn, so no few-shot prompt; drop fewshot from attack.probe.kinds")
        return self.next_turn

    @property
    def strings(self) -> tuple[str, ...]:
        return (*super().strings, CHAT_MARK)
