"""TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs"): question-answer
records about fictitious authors; forget one of the ``forget01/05/10`` splits, keep the rest of
the authors (``retainXX``) and general knowledge (real authors, world facts).

Data: the built-in generator (:mod:`soulcli.data.synthetic`) or TOFU's files
(:mod:`soulcli.data.tofu`, a local folder or a hub id). Metrics as TOFU's evaluation code
defines them (probability, truth ratio, ROUGE-L recall, forget quality, model utility), plus
the membership attacks and MUSE's PrivLeak on forget vs holdout, and OpenUnlearning's
extraction strength and exact memorisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from soulcli.data import synthetic, tofu
from soulcli.data.io import files_fingerprint
from soulcli.eval.config import EvalConfig
from soulcli.eval.kinds import (
    AnswerProb,
    ExactMemorization,
    ExtractionStrength,
    GeneratedRouge,
    HarmonicMean,
    KSTest,
    MembershipAUC,
    NormalizedProb,
    PrivLeak,
    TruthRatio,
)
from soulcli.eval.kinds.mia import ATTACK_NAMES, ATTACKS
from soulcli.eval.metric import Metric, QAPairing, Unavailable
from soulcli.errors import UserError
from soulcli.tasks.base import QA, DataConfig, Headline, Task, TrainSet

QA_SPLITS = ("forget", "retain", "real_authors", "world_facts")
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
ANSWER, PARAPHRASED, PERTURBED = "answer", "paraphrased_answer", "perturbed_answer"
# forget01/05/10 in TOFU's release: 1, 5, 10% of its 200 authors, 20 question-answer pairs each
TOFU_FORGET_SIZES = {1: 40, 5: 200, 10: 400}


@dataclass(frozen=True)
class TofuData(DataConfig):
    """TOFU's keys: which forget split, and the built-in benchmark's size."""

    forget_split: Literal["forget01", "forget05", "forget10"] = "forget10"
    num_authors: synthetic.NumAuthors = 100  # built-in benchmark size
    questions_per_author: synthetic.QuestionsPerAuthor = 10


class TofuTask(Task):
    name = "tofu"
    description = "fictitious-author QA (TOFU): forget some authors, keep the others and general knowledge"
    Data = TofuData
    builtin_version = synthetic.GENERATOR_VERSION
    headline = Headline(
        forget="forget_quality", forget_higher=True, utility="model_utility",
        columns=(("forget_quality", "FQ"), ("model_utility", "MU"), ("forget_rougeL_recall", "forget R-L"),
                 ("retain_rougeL_recall", "retain R-L"), ("forget_truth_ratio", "forget TR")),
        forget_log_scale=True, plot_file="fq_vs_mu.png", attacked=("forget_quality", "forget_rougeL_recall"))

    data: TofuData

    def _names(self) -> tuple[str, str, str]:
        """(forget, forget_perturbed, retain) split file names."""
        return tofu.forget_split_names(int(self.data.forget_split.removeprefix("forget")))

    # ---- data
    def builtin_name(self) -> str:
        d = self.data
        return f"builtin-v{synthetic.GENERATOR_VERSION}-a{d.num_authors}-q{d.questions_per_author}-s{d.seed}"

    def write_builtin(self, out: Path, log, overwrite: bool) -> None:
        d = self.data
        log(f"Building the built-in benchmark ({d.num_authors} authors x {d.questions_per_author} "
            f"questions, seed {d.seed}) in {out}")
        splits = synthetic.generate_benchmark(num_authors=d.num_authors,
                                              questions_per_author=d.questions_per_author, seed=d.seed)
        synthetic.write_benchmark(splits, out, overwrite=overwrite)

    def import_source(self, source: str, out: Path, log, overwrite: bool) -> None:
        log(f"Importing TOFU data from {source} into {out}")
        tofu.import_tofu(source, out, overwrite=overwrite)

    def fingerprint(self, folder: Path) -> str:
        return files_fingerprint(folder, tofu.SPLIT_SUFFIXES)

    def texts(self, folder: Path) -> list[str]:
        texts: list[str] = []
        for f in sorted(folder.glob("*.json")):  # file-name order: the tokenizer depends on it
            if f.name == "benchmark.json" or f.name.startswith("."):
                continue
            for row in tofu.load_split(folder, f.stem):
                texts += [v for v in row.values() if isinstance(v, str)]
                texts += [a for v in row.values() if isinstance(v, list) for a in v if isinstance(a, str)]
        return texts

    def _maybe(self, folder: Path, name: str) -> list[dict] | None:
        return tofu.load_split(folder, name) if name in tofu.available_splits(folder) else None

    # ---- training
    def train_set(self, folder, which, pretrained):
        # A random-init model knows nothing: it learns the general facts (which stand in for
        # pretraining) beside the authors. A pretrained base is finetuned on the split alone, as in TOFU.
        split = "full" if which == "target" else self._names()[2]
        general = [] if pretrained else (self._maybe(folder, "general_knowledge") or [])
        name = split + (" + general_knowledge" if general else "")
        return TrainSet(name, QA, tofu.load_split(folder, split) + general)

    def retain_model_name(self) -> str:
        return f"retain-{self.data.forget_split}"

    def unlearn_sets(self, folder):
        forget, _, retain = self._names()
        return (TrainSet(forget, QA, tofu.load_split(folder, forget)),
                TrainSet(retain, QA, tofu.load_split(folder, retain)))

    def forget_size(self):
        pct = int(self.data.forget_split.removeprefix("forget"))
        source = Path(self.data.source).expanduser()
        if self.data.source == "builtin":
            return synthetic.forget_author_counts(self.data.num_authors)[pct] * self.data.questions_per_author
        if source.is_dir():
            return len(tofu.load_split(source, self._names()[0]))
        return TOFU_FORGET_SIZES[pct]  # a hub id: TOFU's release

    def alternates(self, folder, forget, seed):
        """AltPO's alternates: a ``perturbed_answer`` of the forget split's ``_perturbed`` row
        asking the same question, picked per item."""
        from soulcli.objectives.refusals import pick_refusal

        perturbed = self._names()[1]
        by_question = {row["question"]: row[PERTURBED] for row in tofu.load_split(folder, perturbed)}
        out = []
        for i, row in enumerate(forget.rows):
            answers = by_question.get(row["question"])
            if not answers:
                raise UserError(f"forget item {i} has no perturbed answers in {perturbed} (AltPO's "
                                "alternates); give a benchmark whose _perturbed split covers every "
                                "forget question")
            out.append(pick_refusal(answers, i, seed))
        return out

    # ---- evaluation
    def eval_splits(self, folder):
        forget_perturbed = self._names()[1]
        named = {"forget": forget_perturbed, "retain": "retain_perturbed",
                 "real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed",
                 "holdout": "holdout"}  # holdout is absent from real TOFU folders
        out = {key: rows for key, name in named.items() if (rows := self._maybe(folder, name)) is not None}
        if "forget" not in out:
            raise UserError(f"{folder} has no {forget_perturbed}.json; evaluation needs it (run "
                            "`soul prepare-data` or point data.source at a full TOFU folder)")
        return out

    def probe(self, kind, splits, shots):
        """``paraphrase``: each forget question replaced by its ``paraphrased_question`` (TOFU's
        field; the built-in generator writes one per item); ``fewshot``: each forget question
        behind the first ``shots`` retain pairs (SOUL's few-shot "adversarial" TOFU variant)."""
        forget = splits["forget"]
        if kind == "paraphrase":
            if any("paraphrased_question" not in r for r in forget):
                raise Unavailable("the forget split has no paraphrased_question field")
            rows = [{**r, "question": r["paraphrased_question"]} for r in forget]
        else:
            examples = splits.get("retain", [])[:shots]
            if len(examples) < shots:
                raise Unavailable(f"the retain split has fewer than {shots} pairs for the few-shot prefix")
            shots = [(s["question"], s["answer"]) for s in examples]
            rows = [{**r, "question": self.data.template.with_shots(shots, r["question"])} for r in forget]
        return {**splits, "forget": rows}

    def suite(self, cfg: EvalConfig) -> dict[str, Metric]:
        template = self.data.template
        qa = QAPairing(template)
        metrics: list[Metric] = []
        for split in QA_SPLITS:
            label = split.replace("_", " ")
            if split in ("forget", "retain"):  # TOFU compares with the paraphrase there
                prob: Metric = AnswerProb(f"{split}_prob", split, qa, f"{label}: mean exp(-answer NLL)")
                true = PARAPHRASED
            else:
                prob = NormalizedProb(f"{split}_prob", split, qa, PERTURBED,
                                      f"{label}: mean p(answer) / (p(answer) + sum p(perturbed))")
                true = ANSWER
            forget = split == "forget"
            metrics += [
                prob,
                TruthRatio(f"{split}_truth_ratio", split, qa, true, PERTURBED,
                           "forget" if forget else "other",
                           f"{label}: truth ratio, {'mean min(TR, 1/TR)' if forget else 'mean max(0, 1 - TR)'}"),
                GeneratedRouge(f"{split}_rougeL_recall", split, qa, cfg.max_new_tokens,
                               stops=tuple(template.stop_strings),
                               description=f"{label}: ROUGE-L recall of the greedy answer",
                               higher_is_better=not forget, variant="recall"),
            ]
        metrics.append(KSTest("forget_quality", "forget_truth_ratio", "forget",
                              "KS-test p-value, forget truth ratios vs the retain model's"))
        metrics.append(HarmonicMean(
            "model_utility", tuple(f"{s}_{m}" for s in UTILITY_SPLITS for m in ("prob", "rougeL_recall", "truth_ratio")),
            "harmonic mean of prob, ROUGE-L and truth ratio on retain, real authors, world facts"))
        for attack in ("loss", "zlib", "mink", "minkpp"):
            metrics.append(MembershipAUC(f"mia_{attack}_auc", attack, "forget", "holdout", qa, cfg.mink_k,
                                         f"{ATTACK_NAMES[attack]} membership AUC, forget (members) vs holdout"))
        metrics.append(PrivLeak("privleak", tuple((a, f"mia_{a}_auc") for a in ATTACKS), ("forget", "holdout"),
                                "MUSE PrivLeak (%) of the Min-K% AUC relative to the retain model's"))
        metrics.append(ExtractionStrength("extraction_strength", "forget", qa,
                                          "forget: 1 - k*/|y|, shortest prefix after which the rest is recovered"))
        metrics.append(ExactMemorization("exact_memorization", "forget", qa,
                                         "forget: teacher-forced argmax accuracy on answer tokens"))
        return {m.name: m for m in metrics}
