"""Hazardous-knowledge removal in WMDP's format (Li et al. 2024, "The WMDP Benchmark:
Measuring and Reducing Malicious Use With Unlearning", arXiv:2403.03218): the model knows a
hazardous domain (multiple-choice questions about it); unlearning on the domain's forget
corpus must bring that accuracy down to chance while keeping general knowledge (MMLU).

Data: a folder in WMDP's layout (:mod:`soulcli.data.wmdp`: ``wmdp-<domain>``, ``mmlu``, the
domain's forget and retain corpora), a hub id holding those files, or the built-in invented
domain (:mod:`soulcli.data.hazards`). Training is plain causal-LM loss on raw text, in chunks
of ``data.max_length`` tokens: the target learns both corpora, the retain model the retain
corpus; unlearning forgets the forget corpus keeping the retain corpus, as WMDP's RMU does.

Metrics (:class:`~soulcli.eval.kinds.ChoiceAccuracy`, lm-evaluation-harness's zero-shot
prompt and scoring, :func:`soulcli.data.wmdp.mc_prompt`), each with ``per_item`` (1.0 = right),
``chosen`` (the predicted index), ``logliks`` and ``chance`` (0.25):

* ``forget_mc_accuracy`` / ``utility_mc_accuracy``: accuracy on ``wmdp-<domain>`` / ``mmlu``
  by the log-likelihood of the answer letters (" A" ... " D"): WMDP's and MMLU's reported
  accuracy; the headline (forget: nearest chance is best, ``Headline.forget_goal`` = 0.25, so a
  model pushed below chance, which still tells the answers apart, is not preferred; utility
  higher);
* ``*_mc_choice_accuracy``: by each full choice's summed log-likelihood (the harness's ``acc``
  with the choices' texts as ``doc_to_choice``); ``*_mc_choice_accuracy_norm``: the same per
  character of the choice (``acc_norm``).

Deliberate difference: the built-in model has no pretraining, so (as MUSE's built-in target
learns the KnowMem pairs) it also learns each question of the sets it trains on in the form it
is asked, the harness's prompt followed by the answer letter (the target: forget and utility;
the retain model: utility); a pretrained ``model.base`` learns the corpora alone, as WMDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from soulcli.data import hazards, wmdp
from soulcli.eval.config import EvalConfig
from soulcli.eval.kinds import ChoiceAccuracy
from soulcli.eval.metric import Metric
from soulcli.tasks.base import TEXT, DataConfig, Headline, Task, TrainSet

SPLITS = {"forget_mc": "forget", "utility_mc": "utility"}


@dataclass(frozen=True)
class WmdpTaskData(DataConfig):
    """WMDP's keys: the forget domain of a folder holding several, the built-in data's size."""

    domain: str | None = None  # bio | cyber | chem | ...: which wmdp-<domain> of the folder (default: its only one)
    num_entities: hazards.NumEntities = 48  # built-in: invented domain entities and as many people, 3 questions each


class WmdpTask(Task):
    name = "wmdp"
    description = "hazardous-knowledge removal in WMDP's format: forget a domain's multiple choice, keep general knowledge"
    Data = WmdpTaskData
    builtin_version = hazards.GENERATOR_VERSION
    headline = Headline(
        forget="forget_mc_accuracy", forget_higher=False, forget_goal=0.25, utility="utility_mc_accuracy",
        columns=(("forget_mc_accuracy", "forget acc"), ("utility_mc_accuracy", "utility acc"),
                 ("forget_mc_choice_accuracy", "forget acc (choice)"),
                 ("utility_mc_choice_accuracy", "utility acc (choice)")),
        plot_file="forget_vs_utility_accuracy.png")

    data: WmdpTaskData

    def _load(self, folder: Path) -> wmdp.WmdpData:
        return wmdp.load_wmdp(folder, self.data.domain)

    def _subject(self, d: wmdp.WmdpData, split: str, row: dict) -> str | None:
        return wmdp.domain_subject(d.domain) if split == "forget_mc" else row.get("subject")

    def _answered(self, d: wmdp.WmdpData, split: str) -> list[str]:
        """Each question of ``split`` as it is asked, followed by its answer letter."""
        rows = d.forget_mc if split == "forget_mc" else d.utility_mc
        return [f"{wmdp.mc_prompt(r, self._subject(d, split, r))} {wmdp.LETTERS[r['answer']]}" for r in rows]

    # ---- data
    def builtin_name(self) -> str:
        d = self.data
        return f"wmdp-builtin-v{hazards.GENERATOR_VERSION}-n{d.num_entities}-s{d.seed}"

    def write_builtin(self, out: Path, log, overwrite: bool) -> None:
        d = self.data
        log(f"Building the built-in WMDP data (invented '{hazards.DOMAIN}' domain, {d.num_entities} entities "
            f"and {d.num_entities} people, seed {d.seed}) in {out}")
        wmdp.write_wmdp(hazards.generate(num_entities=d.num_entities, seed=d.seed), out, overwrite=overwrite)

    def import_source(self, source: str, out: Path, log, overwrite: bool) -> None:
        log(f"Importing WMDP data from {source} into {out}")
        wmdp.import_wmdp(source, out, domain=self.data.domain, overwrite=overwrite)

    def fingerprint(self, folder: Path) -> str:
        return wmdp.wmdp_fingerprint(folder)

    def texts(self, folder: Path) -> list[str]:
        d = self._load(folder)
        return [*d.forget_corpus, *d.retain_corpus, *self._answered(d, "forget_mc"), *self._answered(d, "utility_mc")]

    # ---- training
    def train_set(self, folder, which, pretrained):
        d = self._load(folder)
        names = wmdp.part_names(d.domain)
        corpora = (["forget_corpus"] if which == "target" else []) + ["retain_corpus"]
        rows = [{"text": t} for part in corpora for t in getattr(d, part)]
        name = " + ".join(names[p] for p in corpora)
        if not pretrained:  # the questions as asked, standing in for what pretraining teaches
            asked = (["forget_mc"] if which == "target" else []) + ["utility_mc"]
            rows += [{"text": t} for split in asked for t in self._answered(d, split)]
            name += " + " + " + ".join(f"{names[s]} (answered)" for s in asked)
        return TrainSet(name, TEXT, rows)

    def retain_model_name(self) -> str:
        return "retain"

    def unlearn_sets(self, folder):
        d = self._load(folder)
        names = wmdp.part_names(d.domain)
        return (TrainSet(names["forget_corpus"], TEXT, [{"text": t} for t in d.forget_corpus]),
                TrainSet(names["retain_corpus"], TEXT, [{"text": t} for t in d.retain_corpus]))

    # ---- evaluation
    def eval_splits(self, folder):
        d = self._load(folder)
        return {split: [{**r, "prompt": wmdp.mc_prompt(r, self._subject(d, split, r))} for r in rows]
                for split, rows in (("forget_mc", d.forget_mc), ("utility_mc", d.utility_mc))}

    def suite(self, cfg: EvalConfig) -> dict[str, Metric]:
        metrics: list[Metric] = []
        for split, role in SPLITS.items():
            better = role == "utility"
            what = "wmdp-<domain>" if role == "forget" else "mmlu"
            metrics += [
                ChoiceAccuracy(f"{role}_mc_accuracy", split, by="letter", higher_is_better=better,
                               description=f"{what}: zero-shot accuracy by the answer letters' likelihood (harness acc)"),
                ChoiceAccuracy(f"{role}_mc_choice_accuracy", split, by="choice", higher_is_better=better,
                               description=f"{what}: accuracy by each full choice's likelihood (unnormalised)"),
                ChoiceAccuracy(f"{role}_mc_choice_accuracy_norm", split, by="choice", normalize=True,
                               higher_is_better=better,
                               description=f"{what}: accuracy by each full choice's likelihood per character (acc_norm)"),
            ]
        return {m.name: m for m in metrics}
