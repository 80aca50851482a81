"""What a task is: its data (built in, or read from the real layout), its splits by role, the
kind of its records, its metric suite and its headline metrics.

Every layer above (finetune, unlearn, evaluate, compare) asks the task, never a benchmark's
file or field names:

* data: :meth:`Task.write_builtin` / :meth:`Task.import_source` make a dataset folder,
  :meth:`Task.fingerprint` keys it by content;
* training: :meth:`Task.train_set` (what the target and the retain / retrain model learn),
  :meth:`Task.unlearn_sets` (forget and retain sets), each a :class:`TrainSet` of one record kind
  encoded by :func:`encode_train_set`;
* evaluation: :meth:`Task.eval_splits` (records by split name) and :meth:`Task.suite` (the
  metric objects, :mod:`soulcli.eval.metric`), with :attr:`Task.headline` naming what
  compare-optimizers selects on, tabulates and plots (and ``soul attack`` re-measures);
* probing attacks: :meth:`Task.probe` (the evaluation splits with the forget prompts put
  another way).

A task's own recipe keys are the fields of its ``Data`` dataclass (the recipe's ``data``
section), validated by :mod:`soulcli.schema` like every other section.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from soulcli.data.encode import EncodedItem, encode_qa_batch, encode_text_chunks
from soulcli.data.template import PromptTemplate
from soulcli.errors import UserError
from soulcli.eval.config import EvalConfig
from soulcli.eval.metric import Metric, Unavailable
from soulcli.schema import Range, Seed

QA, TEXT = "qa", "text"  # record kinds: question-answer rows, raw-text rows ({"text": ...})
PROBES = ("paraphrase", "fewshot")  # the probing attacks' prompt variants (Task.probe)


@dataclass(frozen=True)
class DataConfig:
    """The keys every task's ``data`` section has."""

    source: str = "builtin"  # builtin | a local folder in the task's layout | a hub dataset id
    seed: Seed = 0  # the built-in dataset's generator seed
    max_length: Annotated[int, Range(ge=8)] = 512  # longest training / scored sequence, tokens (TOFU's)
    template: PromptTemplate = field(default_factory=PromptTemplate)


@dataclass(frozen=True)
class TrainSet:
    """Records of one kind: ``qa`` rows (``question``, ``answer``: the answer is learned) or
    ``text`` rows (``text``: every token is learned, in chunks of ``data.max_length``)."""

    name: str
    kind: Literal["qa", "text"]
    rows: list[dict]


def encode_train_set(tokenizer, template: PromptTemplate, ts: TrainSet, max_length: int) -> list[EncodedItem]:
    """The training sequences of a set: QA under the prompt template, raw text in chunks."""
    if ts.kind == QA:
        return encode_qa_batch(tokenizer, template, [r["question"] for r in ts.rows],
                               [r["answer"] for r in ts.rows], max_length)
    return encode_text_chunks(tokenizer, [r["text"] for r in ts.rows], max_length)


@dataclass(frozen=True)
class Headline:
    """The metrics a task is judged by.

    compare-optimizers selects, per optimizer x objective, the setting with the best ``forget``
    value (``forget_higher`` says which way is better; with ``forget_goal``, the nearest to it) among those keeping ``utility`` within
    :meth:`utility_bound` (``utility_higher``: at least ``compare.utility_ratio`` x the target's;
    a lower-is-better utility such as perplexity: at most the target's / ``compare.utility_ratio``);
    it tabulates ``columns`` (name, short label), and ``attacked`` after each attack of
    ``compare.attacks``, and plots ``forget`` against ``utility``. ``unlearn.keep: best``
    keeps a run's step by the same rule (``unlearn.utility_floor``; :mod:`soulcli.workflows.tracking`).
    """

    forget: str
    forget_higher: bool
    utility: str
    columns: tuple[tuple[str, str], ...]
    forget_log_scale: bool = False
    plot_file: str = "forget_vs_utility.png"
    utility_higher: bool = True
    forget_goal: float | None = None  # set: the forget value is better the closer it is to this
    attacked: tuple[str, ...] = ()  # empty: ``forget`` alone

    def forget_score(self, value: float) -> float:
        """The forget value as a score, higher is better: ``-|value - forget_goal|`` when the
        task has a goal (WMDP: chance accuracy 0.25, since an accuracy below chance still tells
        the answers apart, as WMDP's paper reads it), else ``value`` or ``-value`` by
        ``forget_higher``."""
        if self.forget_goal is not None:
            return -abs(value - self.forget_goal)
        return value if self.forget_higher else -value

    @property
    def forget_better(self) -> str:
        """Which forget value the rules prefer, in words: "highest", "lowest", "closest to 0.25"."""
        if self.forget_goal is not None:
            return f"closest to {self.forget_goal:g}"
        return "highest" if self.forget_higher else "lowest"

    @property
    def utility_sign(self) -> float:
        """+1 when a higher utility is better, -1 when lower is (sign x utility: higher is better)."""
        return 1.0 if self.utility_higher else -1.0

    def utility_bound(self, target: float, ratio: float) -> float:
        """The utility a setting must keep: ``ratio x target`` (higher is better) or ``target /
        ratio`` (lower is better: ratio 0.9 allows a perplexity 1.11 x the target's)."""
        return ratio * target if self.utility_higher else target / ratio

    def utility_rule(self, target: float, ratio: float) -> str:
        """The selection's utility condition in words."""
        if self.utility_higher:
            return f"{self.utility} >= {ratio:g} x target's {target:.3f}"
        return f"{self.utility} <= target's {target:.3f} / {ratio:g}"

    @property
    def tracked(self) -> tuple[str, ...]:
        names = [self.forget, self.utility, *(n for n, _ in self.columns)]
        return tuple(dict.fromkeys(names))


class Task:
    """One unlearning task. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    Data: ClassVar[type[DataConfig]]
    headline: ClassVar[Headline]
    builtin_version: ClassVar[int]  # the built-in generator's version, part of every cache key

    def __init__(self, data: DataConfig) -> None:
        self.data = data

    # ---- data
    def builtin_name(self) -> str:
        """The cache folder name of the built-in dataset these settings generate."""
        raise NotImplementedError

    def write_builtin(self, out: Path, log, overwrite: bool) -> None:
        raise NotImplementedError

    def import_source(self, source: str, out: Path, log, overwrite: bool) -> None:
        raise NotImplementedError

    def fingerprint(self, folder: Path) -> str:
        raise NotImplementedError

    def texts(self, folder: Path) -> list[str]:
        """Every string of the dataset (the built-in tokenizer is trained on them)."""
        raise NotImplementedError

    # ---- training
    def train_set(self, folder: Path, which: Literal["target", "retain"], pretrained: bool) -> TrainSet:
        """What ``finetune`` trains the target on (forget + retain) or the retain / retrain model
        on (retain only). ``pretrained``: the base already knows the world (no general set)."""
        raise NotImplementedError

    def retain_model_name(self) -> str:
        """The cache folder name of the retain / retrain model for these settings."""
        raise NotImplementedError

    def unlearn_sets(self, folder: Path) -> tuple[TrainSet, TrainSet]:
        """(forget, retain) for unlearning."""
        raise NotImplementedError

    def forget_size(self) -> int | None:
        """The forget set's record count where it is known without building or fetching the
        data (``soul unlearn --dry-run`` plans the steps from it); None where only the data
        tells (e.g. raw text, whose chunks depend on the tokenizer)."""
        return None

    def alternates(self, folder: Path, forget: TrainSet, seed: int) -> list[str]:
        """One plausible wrong answer per forget record (AltPO); tasks without them refuse."""
        raise UserError(f"task '{self.name}' has no alternate answers for its forget set; choose "
                        "an objective that does not need them")

    # ---- evaluation
    def eval_splits(self, folder: Path) -> dict[str, list[dict]]:
        raise NotImplementedError

    def suite(self, cfg: EvalConfig) -> dict[str, Metric]:
        raise NotImplementedError

    def probe(self, kind: str, splits: dict[str, list[dict]], shots: int) -> dict[str, list[dict]]:
        """``splits`` (from :meth:`eval_splits`) with the forget prompts put another way, for a
        probing attack: ``paraphrase`` rewords them, ``fewshot`` puts ``shots`` retain
        question-answer pairs before them. Raises :class:`~soulcli.eval.metric.Unavailable`
        with the reason where the task has no such prompts."""
        raise Unavailable(f"task '{self.name}' defines no probes")

    def settings(self) -> dict[str, Any]:
        """The task's settings as a JSON-able mapping (part of the cache keys), ``source`` left
        out: a key takes the data's content fingerprint, never where the data lies."""
        return {"task": self.name, **{k: v for k, v in asdict(self.data).items() if k != "source"}}
