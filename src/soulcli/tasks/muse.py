"""Copyright removal in MUSE's format (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way
Evaluation"; SOUL's copyright task, Jia et al., EMNLP 2024): the model was trained on
verbatim text (books); it must stop reproducing the forget passages and the knowledge in them
while keeping the retain corpus.

Data: a folder in MUSE's layout (:mod:`soulcli.data.muse`: raw texts, VerbMem prompts,
KnowMem QA, PrivLeak sets), a hub id, or the built-in corpus of invented books
(:mod:`soulcli.data.books`). Training is plain causal-LM loss on raw text, cut into chunks of
``data.max_length`` tokens. The target learns forget + retain1 + retain2, the retrain
(reference) model retain1 + retain2; unlearning forgets ``raw/forget`` keeping ``raw/retain1``.

Metrics, as MUSE's code defines them (sources in :mod:`soulcli.data.muse`), values in [0, 1]
where MUSE's tables multiply by 100:

* ``forget_verbmem_rougeL``: ROUGE-L F1 (no stemming) of the greedy continuation of each
  VerbMem ``prompt`` (128 new tokens) against ``gt`` cut to its first 128 tokens;
* ``forget_knowmem_rougeL`` / ``retain_knowmem_rougeL``: ROUGE-L F1 of the answer generated
  under MUSE's few-shot prompt (32 new tokens, cut at the next question); retain KnowMem is
  MUSE's UtilityPreserve;
* ``mia_mink_auc`` and ``privleak``: Min-40% membership AUC of the PrivLeak forget texts
  against the holdout texts, and PrivLeak relative to the retrain model's AUC (MUSE's sign:
  negative = still looks trained on, 0 = like the retrain model);
* ``forget_leak_bleu`` / ``forget_leak_rougeL``: SOUL's leakage, BLEU (``sacrebleu``, sentence
  BLEU / 100) and ROUGE-L F1 of the greedy continuation of each forget passage's opening
  against the passage's actual continuation.

Deliberate differences: the built-in model has no pretraining, so (as TOFU's built-in general
set stands in for pretraining) it also learns the KnowMem questions of the sets it trains on,
each under its split's few-shot prompt; a pretrained base (``model.base``) trains on the raw text alone, as MUSE. SOUL
cuts the leakage prompts by tokens; soulcli cuts by words (``data.leak_prompt_words``,
``data.leak_continuation_words``) so the items are the same for every tokenizer. Min-K% takes
``max(1, int(0.4 n))`` tokens (MUSE: ``int(0.4 n)``, which is empty below 3 tokens). The KnowMem
prompt is generated from without its final space (:func:`_generation_prompt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from soulcli.data import books, muse
from soulcli.eval.config import EvalConfig
from soulcli.eval.kinds import GeneratedBleu, GeneratedRouge, MembershipAUC, PrivLeak
from soulcli.eval.metric import Metric, PromptPairing, TextPairing, Unavailable
from soulcli.schema import AT_LEAST_ONE, POSITIVE
from soulcli.tasks.base import TEXT, DataConfig, Headline, Task, TrainSet


@dataclass(frozen=True)
class MuseTaskData(DataConfig):
    """MUSE's keys: the built-in corpus size and the evaluation's lengths (MUSE's defaults)."""

    num_books: books.NumBooks = 24  # built-in corpus: invented books, a quarter each forget/retain2/holdout
    passages_per_book: books.PassagesPerBook = 12
    verbmem_max_new_tokens: Annotated[int, POSITIVE] = 128
    knowmem_max_new_tokens: Annotated[int, POSITIVE] = 32
    leak_prompt_words: Annotated[int, AT_LEAST_ONE] = 16
    leak_continuation_words: Annotated[int, AT_LEAST_ONE] = 48
    leak_max_new_tokens: Annotated[int, POSITIVE] = 96


def _qa_text(row: dict, icl: list[dict]) -> str:
    """A KnowMem pair as the few-shot prompt of its split asks it, answered: the built-in model
    has no pretraining, so it learns the facts in the form KnowMem will ask them (a model that
    saw the pairs only alone copies the shots' answers: KnowMem 0.0 on forget and retain)."""
    return muse.knowmem_prompt(icl, row["question"]) + row["answer"]


def _generation_prompt(prompt: str) -> str:
    """MUSE's KnowMem prompt ends ``"Answer: "``; byte-level BPE and SentencePiece tokenisers
    carry a word's leading space in the word's token, so a prompt ending in a bare space token is
    one no model was trained on. The trailing space is left for the model to generate (ROUGE-L
    ignores it)."""
    return prompt.rstrip(" ")


class MuseTask(Task):
    name = "muse"
    description = "copyright removal in MUSE's format: forget verbatim passages and their facts, keep the rest"
    Data = MuseTaskData
    builtin_version = books.GENERATOR_VERSION
    headline = Headline(
        forget="forget_verbmem_rougeL", forget_higher=False, utility="retain_knowmem_rougeL",
        columns=(("forget_verbmem_rougeL", "forget VerbMem"), ("forget_knowmem_rougeL", "forget KnowMem"),
                 ("retain_knowmem_rougeL", "retain KnowMem"), ("privleak", "PrivLeak"),
                 ("forget_leak_bleu", "leak BLEU")),
        plot_file="verbmem_vs_knowmem.png", attacked=("forget_verbmem_rougeL", "forget_knowmem_rougeL"))

    data: MuseTaskData

    # ---- data
    def builtin_name(self) -> str:
        d = self.data
        return f"muse-builtin-v{books.GENERATOR_VERSION}-b{d.num_books}-p{d.passages_per_book}-s{d.seed}"

    def write_builtin(self, out: Path, log, overwrite: bool) -> None:
        d = self.data
        log(f"Building the built-in books corpus ({d.num_books} books x {d.passages_per_book} passages, "
            f"seed {d.seed}) in {out}")
        corpus = books.generate_corpus(num_books=d.num_books, passages_per_book=d.passages_per_book, seed=d.seed)
        muse.write_muse(corpus, out, overwrite=overwrite)

    def import_source(self, source: str, out: Path, log, overwrite: bool) -> None:
        log(f"Importing MUSE data from {source} into {out}")
        muse.import_muse(source, out, overwrite=overwrite)

    def fingerprint(self, folder: Path) -> str:
        return muse.muse_fingerprint(folder)

    def texts(self, folder: Path) -> list[str]:
        d = muse.load_muse(folder)
        out = [t for texts in d.raw.values() for t in texts]
        out += [v for row in d.verbmem for v in row.values()]
        out += [v for rows in d.knowmem.values() for row in rows for v in row.values()]
        return out + ["Question: ", "\nAnswer: "]

    # ---- training
    def train_set(self, folder, which, pretrained):
        d = muse.load_muse(folder)
        splits = (["forget"] if which == "target" else []) + [s for s in ("retain1", "retain2") if s in d.raw]
        rows = [{"text": t} for s in splits for t in d.raw[s]]
        name = " + ".join(f"raw/{s}" for s in splits)
        if not pretrained:  # the QA form of the facts, standing in for what pretraining teaches
            qa = (["forget"] if which == "target" else []) + ["retain"]
            rows += [{"text": _qa_text(r, d.knowmem[f"{s}_qa_icl"])} for s in qa for r in d.knowmem[f"{s}_qa"]]
            rows += [{"text": _qa_text(r, [])} for s in ("forget", "retain") for r in d.knowmem[f"{s}_qa_icl"]]
            name += " + " + " + ".join(f"knowmem/{s}_qa (few-shot)" for s in qa) + " + knowmem/*_icl"
        return TrainSet(name, TEXT, rows)

    def retain_model_name(self) -> str:
        return "retrain"

    def unlearn_sets(self, folder):
        d = muse.load_muse(folder)
        return (TrainSet("raw/forget", TEXT, [{"text": t} for t in d.raw["forget"]]),
                TrainSet("raw/retain1", TEXT, [{"text": t} for t in d.raw["retain1"]]))

    # ---- evaluation
    def eval_splits(self, folder):
        d = muse.load_muse(folder)
        knowmem = {
            split: [{**r, "prompt": _generation_prompt(muse.knowmem_prompt(d.knowmem[f"{split}_qa_icl"], r["question"]))}
                    for r in d.knowmem[f"{split}_qa"]]
            for split in ("forget", "retain")}
        leak = []
        p, c = self.data.leak_prompt_words, self.data.leak_continuation_words
        for text in d.raw["forget"]:
            words = text.split()
            if len(words) > p:
                leak.append({"prompt": " ".join(words[:p]), "gt": " ".join(words[p:p + c])})
        return {
            "verbmem_forget": d.verbmem,
            "knowmem_forget": knowmem["forget"],
            "knowmem_retain": knowmem["retain"],
            "privleak_forget": [{"text": t} for t in d.privleak["forget"]],
            "privleak_holdout": [{"text": t} for t in d.privleak["holdout"]],
            "leak_forget": leak,
        }

    def probe(self, kind, splits, shots):
        if kind == "paraphrase":
            raise Unavailable("MUSE has no paraphrased forget prompts")
        raise Unavailable("MUSE's forget KnowMem (forget_knowmem_rougeL) already asks the forget "
                          "questions behind its own few-shot prefix")

    def suite(self, cfg: EvalConfig) -> dict[str, Metric]:
        d = self.data
        knowmem = PromptPairing("prompt", "answer")
        leak = PromptPairing("prompt", "gt")
        metrics: list[Metric] = [
            GeneratedRouge("forget_verbmem_rougeL", "verbmem_forget", PromptPairing("prompt", "gt"),
                           d.verbmem_max_new_tokens, variant="f1", stem=False,
                           reference_tokens=d.verbmem_max_new_tokens, higher_is_better=False,
                           description="VerbMem: ROUGE-L F1 of the continuation of forget prompts"),
            GeneratedRouge("forget_knowmem_rougeL", "knowmem_forget", knowmem, d.knowmem_max_new_tokens,
                           variant="f1", stops=muse.KNOWMEM_STOP, answer=muse.knowmem_answer, stem=False,
                           higher_is_better=False,
                           description="KnowMem: ROUGE-L F1 of few-shot answers to forget questions"),
            GeneratedRouge("retain_knowmem_rougeL", "knowmem_retain", knowmem, d.knowmem_max_new_tokens,
                           variant="f1", stops=muse.KNOWMEM_STOP, answer=muse.knowmem_answer, stem=False,
                           higher_is_better=True,
                           description="KnowMem on retain questions (MUSE's utility)"),
            MembershipAUC("mia_mink_auc", "mink", "privleak_forget", "privleak_holdout", TextPairing(),
                          cfg.mink_k, "Min-K% membership AUC, forget (members) vs holdout texts"),
            PrivLeak("privleak", (("mink", "mia_mink_auc"),), ("privleak_forget", "privleak_holdout"),
                     "MUSE PrivLeak (%) of the Min-K% AUC relative to the retrain model's"),
            GeneratedBleu("forget_leak_bleu", "leak_forget", leak, d.leak_max_new_tokens,
                          description="SOUL leakage: BLEU of continuations of forget passages"),
            GeneratedRouge("forget_leak_rougeL", "leak_forget", leak, d.leak_max_new_tokens, variant="f1", stem=False,
                           higher_is_better=False,
                           description="SOUL leakage: ROUGE-L F1 of continuations of forget passages"),
        ]
        return {m.name: m for m in metrics}
