"""Recipes: YAML -> frozen, typed dataclasses.

Every problem in a recipe is reported at once, each with its YAML path (``optimizer.lr``) and a
"did you mean" where a close key exists. ``--set a.b=c`` overrides are applied to the raw
mapping before validation, so they are typed by the same schema. Per-optimizer and
per-objective keys (``optimizer.args``, ``unlearn.objective_args``) are checked against the
real signature of what they configure.

Files are read with a safe loader (plain data; ``!!python/...`` tags are errors) that also
refuses a key given twice. :func:`load_recipe` makes paths absolute, so a recipe means the same
from any folder and ``resolved_recipe.yaml`` records where everything was:

* keys holding paths (:data:`PATH_KEYS`): ``cache_dir``, ``output_dir``,
  ``unlearn.refusals_file``, ``attack.relearn.data`` are always paths; ``data.source``, ``model.source``, ``model.base``
  and ``model.reference`` are paths unless they are ``builtin`` / ``none`` or look like a hub id:
  a value is a path when it starts with ``.``, ``/`` or ``~``, or names something that exists
  relative to the folder it is resolved against (so ``org/name`` is a hub id unless that
  folder holds ``org/name``);
* a value written in the recipe file resolves against the recipe file's folder;
* a ``--set`` value, like every command-line flag (``-o``, ``--data``, ``--model``), and the
  default ``cache_dir`` (``.soul``), resolve against the current directory.

``--set optimizer.name=X`` (or ``unlearn.objective=X``) drops the file's ``optimizer.args``
(``unlearn.objective_args``) keys that X does not take, with a note; in the file itself a key
the optimizer does not take stays an error.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml

from soulcli import schema
from soulcli.errors import UserError, did_you_mean
from soulcli.eval.config import EvalConfig
from soulcli.models.families import FAMILIES
from soulcli.schema import NON_NEGATIVE, POSITIVE, Range, Seed
from soulcli.tasks import TASKS, DataConfig, TofuData, get_task

# set by the engine from the recipe's own keys, not through optimizer.args
OPTIMIZER_COMMON = ("params", "lr", "weight_decay")


# --------------------------------------------------------------------------- schema
# Each section is a frozen dataclass; bounds sit beside each field (``Annotated`` metadata,
# checked by soulcli.schema, the same mechanism every component's arguments go through).

Pos = Annotated[float, POSITIVE]
PosInt = Annotated[int, POSITIVE]
NonNeg = Annotated[float, NON_NEGATIVE]
NonNegInt = Annotated[int, NON_NEGATIVE]
AttackName = Literal["relearn", "quantize", "probe"]  # the attacks of `soul attack`


@dataclass(frozen=True)
class LoraConfig:
    r: PosInt = 8
    alpha: Pos = 16
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ModelConfig:
    """The target model (the one unlearning starts from) and the retain reference model.

    ``source: builtin`` means the small Llama that ``soul finetune`` trains on the built-in (or
    imported) benchmark and caches under ``cache_dir``; otherwise a local HF folder or hub id.
    The architecture keys apply to the built-in model only.
    """

    source: str = "builtin"
    base: str = "builtin"  # what `finetune` starts from: builtin (random init) | HF folder | hub id
    reference: str = "builtin"  # retain model for forget quality / privleak; "none" to skip
    vocab_size: Annotated[int, Range(ge=300)] = 2048
    hidden_size: PosInt = 192
    num_layers: PosInt = 4
    num_heads: PosInt = 4
    intermediate_size: PosInt = 512
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # run Python files shipped with a model folder / hub repo (config.json's auto_map);
    # off: such a model is refused (exit 2) instead of executed
    trust_remote_code: bool = False
    adapter: Literal["full", "lora"] = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    # what a LoRA run writes to model/: both (the merged model, a plain HF folder any tool loads,
    # and its adapter in model/adapter/), merged (no adapter), adapter (the adapter alone, with
    # its base recorded in adapter_config.json: megabytes, and no merged copy held in memory)
    save: Literal["both", "merged", "adapter"] = "both"
    # the architecture `soul unlearn --dry-run` sizes when model.source's config.json is not at
    # hand (a hub id not cached here): a known family (soulcli.models.families, e.g. llama-2-7b)
    architecture: str | None = None
    # full-parameter unlearning: train only the parameters whose names match one of these
    # regexes (re.search; empty: all), e.g. RMU's ["layers\\.(0|1|2)\\.mlp\\.down_proj\\.weight"]
    trainable: tuple[str, ...] = ()


@dataclass(frozen=True)
class FinetuneConfig:
    """Training of the target model (on ``full``) and the retain model (on ``retainXX``)."""

    epochs: PosInt = 30
    lr: Pos = 3e-3
    min_lr_ratio: Annotated[float, Range(ge=0, le=1)] = 0.1
    warmup_steps: NonNegInt = 20
    batch_size: PosInt = 32
    weight_decay: NonNeg = 0.01
    max_grad_norm: Pos = 1.0
    # stop after this many steps (None: all the epochs' steps), the lr schedule spanning them:
    # a quick check, or the relearning attack's budget
    max_steps: PosInt | None = None
    # micro-batches of batch_size per step: the step's update is that of one batch of
    # batch_size x grad_accum (the loss is its token mean), with the memory of one micro-batch
    grad_accum: PosInt = 1
    # steps between checkpoints (0: none); `soul finetune --resume` continues the latest one
    # (README, "Checkpoints and resume")
    save_every: NonNegInt = 0


@dataclass(frozen=True)
class OptimizerConfig:
    """The unlearning optimizer: a registry name, its learning rate and its own ``args``."""

    name: str = "adamw"
    lr: Pos = 1e-4
    weight_decay: NonNeg = 0.0
    # false: no decay on biases, norm weights and embeddings (the Sophia authors' rule)
    decay_all: bool = False
    hessian_interval: PosInt = 10
    curvature: str | None = None  # gnb | hutchinson | empirical_fisher; None = the optimizer's default
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InfluenceConfig:
    method: Literal["diag_fisher", "woodbury", "lissa"] = "diag_fisher"
    damping: NonNeg = 1e-3
    # None: n_forget_tokens / n_retain_tokens of the sets unlearned (the Newton step on summed
    # losses, soulcli.optim.influence); a number overrides it
    scale: Pos | None = None
    retain_batches: PosInt = 8


@dataclass(frozen=True)
class UnlearnConfig:
    """The unlearning run: an objective optimised for ``epochs`` passes over the forget set."""

    method: Literal["iterative", "influence"] = "iterative"
    objective: str = "graddiff"
    forget_weight: NonNeg = 1.0
    retain_weight: NonNeg = 1.0
    retain_loss: Literal["nll", "kl"] = "nll"
    objective_args: dict[str, Any] = field(default_factory=dict)
    refusals_file: str | None = None
    epochs: PosInt = 5
    max_steps: PosInt | None = None
    batch_size: PosInt = 8
    retain_batch_size: PosInt | None = None  # default: batch_size
    # micro-batches per step (forget batch_size and retain_batch_size items each): the update,
    # the logged loss and the curvature sample are those of the batch grad_accum times larger
    grad_accum: PosInt = 1
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: NonNegInt = 0
    max_grad_norm: Pos | None = 1.0
    # a non-finite loss or gradient: "stop" the run (exit 4, nothing saved), or "skip" the step
    # (no optimizer update; the count is in summary.json's skipped_steps)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    log_every: PosInt = 1
    # steps between checkpoints (0: none); `soul unlearn --resume` continues the latest one
    # (README, "Checkpoints and resume")
    save_every: NonNegInt = 0
    # steps between evaluations of the task's headline metrics during the run (the curve in
    # summary.json; compare-optimizers evaluates its cells by it). None: about five per run
    # where a run is tracked (keep: best, compare-optimizers), none otherwise
    eval_every: PosInt | None = None
    # which state `soul unlearn` saves: the "last" step's, or the "best" evaluated step's:
    # the best forget metric (the task's direction) among steps whose utility metric is
    # >= utility_floor x the target's; none: the highest utility, with a warning (README,
    # "Keeping the best state")
    keep: Literal["last", "best"] = "last"
    utility_floor: Annotated[float, Range(gt=0, le=1)] = 0.95
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)


@dataclass(frozen=True)
class TrainConfig:
    """How `finetune` and `unlearn` run their training steps (README, "Precision and memory").

    ``precision``: ``fp32``; ``bf16-mixed``: fp32 master copies of the trained parameters, the
    forward under bf16 autocast (frozen parameters stay in ``model.dtype``); ``bf16-true``: bf16
    weights updated in place, lossy (an update below a weight's bf16 resolution is lost; the
    run warns). None: fp32 for a float32 ``model.dtype``, bf16-mixed for bfloat16 / float16.
    ``model.dtype`` stays the dtype a model is loaded and saved in.
    """

    precision: Literal["fp32", "bf16-mixed", "bf16-true"] | None = None
    # recompute each decoder layer's activations in the backward instead of keeping them
    # (transformers' gradient checkpointing, non-reentrant; LoRA included)
    gradient_checkpointing: bool = False
    # under torchrun: ddp, a model replica per rank; fsdp, FSDP2 (fully_shard): parameters,
    # gradients and optimizer state sharded over the ranks, for models that do not fit one device
    strategy: Literal["ddp", "fsdp"] = "ddp"


@dataclass(frozen=True)
class OptimizerCells:
    """One optimizer's own settings in a comparison (``compare.per_optimizer.<name>``): its
    learning-rate grid (empty: ``compare.lr_grid``), ``unlearn`` keys (e.g. a step budget,
    ``max_grad_norm``, ``eval_every``) and ``optimizer.args`` that its cells use instead of the
    recipe's. A zeroth-order method, for one, needs far more steps and no gradient clipping."""

    lr_grid: tuple[Pos, ...] = ()
    unlearn: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompareConfig:
    optimizers: tuple[str, ...] = ("adamw", "signum", "sophiag")
    objectives: tuple[str, ...] = ("graddiff",)
    lr_grid: tuple[Pos, ...] = ()
    seeds: tuple[Seed, ...] = (0,)
    utility_ratio: Annotated[float, Range(gt=0, le=1)] = 0.9
    include_influence: bool = True
    # "all": every lr runs every seed; "selected": the lr grid runs on the first seed, the rule
    # picks the lr per optimizer x objective, and only that lr runs the other seeds
    seed_policy: Literal["all", "selected"] = "all"
    # attacks (`soul attack`'s, with the attack section's settings) run on the model of each
    # selected optimizer x objective at its selected step, per seed; empty: none
    attacks: tuple[AttackName, ...] = ()
    # per optimizer name: its own lr grid, unlearn keys and optimizer args (OptimizerCells)
    per_optimizer: dict[str, OptimizerCells] = field(default_factory=dict)


@dataclass(frozen=True)
class RelearnConfig:
    """The relearning attack (Hu et al. 2024, "Unlearning or obfuscating?"; Unlearn-Smooth, ICML
    2025): finetune a copy of the unlearned model with AdamW at a constant lr on a seeded
    ``fraction`` of the forget set (or of the records in ``data``), evaluating after each of
    ``steps``."""

    steps: tuple[NonNegInt, ...] = (0, 10, 25, 50)
    fraction: Annotated[float, Range(gt=0, le=1)] = 0.1
    lr: Pos | None = None  # default finetune.lr: the rate the target learned the data at
    # a JSON / JSONL file of question-answer or text records to relearn on instead (e.g.
    # loosely related public text); null: the task's forget set
    data: str | None = None
    batch_size: PosInt = 4
    weight_decay: NonNeg = 0.0
    max_grad_norm: Pos = 1.0


@dataclass(frozen=True)
class QuantizeConfig:
    """The quantization attack (Zhang et al., ICLR 2025): round-to-nearest weights
    (:mod:`soulcli.attacks.quantize`) at each bit width."""

    bits: tuple[Annotated[int, Range(ge=2, le=8)], ...] = (8, 4)
    group_size: PosInt | None = 128  # input weights per scale; null: one scale per output channel


@dataclass(frozen=True)
class ProbeConfig:
    """The probing attack: the forget prompts reworded or behind a few-shot prefix (Task.probe)."""

    kinds: tuple[Literal["paraphrase", "fewshot"], ...] = ("paraphrase", "fewshot")
    shots: PosInt = 3  # retain question-answer pairs before each forget question (fewshot)


@dataclass(frozen=True)
class AttackConfig:
    """`soul attack`: which attacks run, and each one's settings."""

    attacks: tuple[AttackName, ...] = ("relearn", "quantize", "probe")
    relearn: RelearnConfig = field(default_factory=RelearnConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class Recipe:
    """A whole recipe. ``task`` chooses the task (``soulcli.tasks``); ``data`` is that task's own
    section (the keys every task has plus the task's, e.g. TOFU's ``forget_split``)."""

    name: str = "recipe"
    task: str = "tofu"
    seed: Seed = 0
    cache_dir: str = ".soul"
    output_dir: str | None = None  # default runs/<name>
    device: str = "auto"
    threads: Annotated[int, Range(gt=0, le=4096)] | None = None  # torch takes a C int
    data: DataConfig = field(default_factory=TofuData)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)


# --------------------------------------------------------------------------- validation


def _check_values(recipe: Recipe, errors: list[str]) -> None:
    """Rules across fields, registry names and the per-component arguments (checked against
    what each optimizer / objective declares, by the same schema)."""
    if recipe.model.hidden_size % recipe.model.num_heads:
        errors.append("model.hidden_size: must be a multiple of model.num_heads")
    for i, pattern in enumerate(recipe.model.trainable):
        try:
            re.compile(pattern)
        except re.error as exc:
            errors.append(f"model.trainable[{i}]: {pattern!r} is not a regular expression ({exc})")
    if recipe.model.save == "adapter" and recipe.model.adapter != "lora":
        errors.append("model.save: adapter saves a LoRA adapter; set model.adapter: lora, or "
                      "model.save: merged for a full-parameter run's weights")
    if recipe.model.architecture is not None and recipe.model.architecture not in FAMILIES:
        errors.append(f"model.architecture: unknown architecture '{recipe.model.architecture}'"
                      f"{did_you_mean(recipe.model.architecture, FAMILIES)}; choose one of: "
                      f"{', '.join(FAMILIES)}")
    if recipe.model.trainable and recipe.model.adapter == "lora":
        errors.append("model.trainable: selects parameters for model.adapter: full; with LoRA choose "
                      "the adapted modules with model.lora.target_modules")

    from soulcli.objectives import OBJECTIVES
    from soulcli.optim import CURVATURE_ESTIMATORS, OPTIMIZERS

    opt = recipe.optimizer
    if opt.name not in OPTIMIZERS:
        errors.append(
            f"optimizer.name: unknown optimizer '{opt.name}'{did_you_mean(opt.name, OPTIMIZERS)};"
            f" choose one of: {', '.join(sorted(OPTIMIZERS))}"
        )
    else:
        schema.check(schema.params_of(OPTIMIZERS[opt.name], skip=OPTIMIZER_COMMON), opt.args,
                     "optimizer.args", errors, owner=f"optimizer '{opt.name}'")
        if opt.name == "sophiag" and opt.curvature == "hutchinson":
            errors.append("optimizer.curvature: sophiag takes squared-gradient curvature (gnb or "
                          "empirical_fisher); Hutchinson samples can be negative: use "
                          "optimizer.name=sophiah")
        if opt.curvature is not None and OPTIMIZERS[opt.name].default_curvature is None:
            errors.append(f"optimizer.curvature: {opt.name} takes no curvature estimate; drop "
                          "optimizer.curvature or choose a second-order optimizer")
    if opt.curvature is not None and opt.curvature not in CURVATURE_ESTIMATORS:
        errors.append(
            f"optimizer.curvature: unknown estimator '{opt.curvature}'"
            f"{did_you_mean(opt.curvature, CURVATURE_ESTIMATORS)}; choose one of: "
            f"{', '.join(sorted(CURVATURE_ESTIMATORS))}"
        )
    if recipe.unlearn.grad_accum > 1 and opt.name in OPTIMIZERS:
        kind = opt.curvature or OPTIMIZERS[opt.name].default_curvature
        if OPTIMIZERS[opt.name].zeroth_order:
            errors.append(f"unlearn.grad_accum: {opt.name} estimates its gradient from two losses "
                          "of one batch; set unlearn.grad_accum: 1 (raise unlearn.batch_size)")
        elif kind is not None and not hasattr(CURVATURE_ESTIMATORS.get(kind), "estimate_accumulated"):
            errors.append(f"unlearn.grad_accum: the {kind} curvature estimate does not accumulate "
                          "micro-batches; set unlearn.grad_accum: 1 or optimizer.curvature: gnb")
    obj = recipe.unlearn
    if obj.objective not in OBJECTIVES:
        errors.append(
            f"unlearn.objective: unknown objective '{obj.objective}'"
            f"{did_you_mean(obj.objective, OBJECTIVES)}; choose one of: {', '.join(sorted(OBJECTIVES))}"
        )
    else:
        schema.check(OBJECTIVES[obj.objective].hyperparameters(), obj.objective_args,
                     "unlearn.objective_args", errors, owner=f"objective '{obj.objective}'")
        if obj.grad_accum > 1 and not OBJECTIVES[obj.objective].accumulates:
            errors.append(f"unlearn.grad_accum: objective '{obj.objective}' updates its own state "
                          "at every call, so micro-batches are not one batch; set unlearn.grad_accum: 1")
    if recipe.eval.metrics is not None:
        from soulcli.eval import resolve_metrics

        try:
            resolve_metrics(get_task(recipe.data, recipe.task).suite(recipe.eval), recipe.eval.metrics)
        except UserError as exc:
            errors.append(f"eval.metrics: {exc} (task '{recipe.task}')")
    for i, name in enumerate(recipe.compare.optimizers):
        if name not in OPTIMIZERS:
            errors.append(f"compare.optimizers[{i}]: unknown optimizer '{name}'{did_you_mean(name, OPTIMIZERS)}")
    for name, own in recipe.compare.per_optimizer.items():
        at = f"compare.per_optimizer.{name}"
        if name not in recipe.compare.optimizers:
            errors.append(f"{at}: '{name}' is not in compare.optimizers "
                          f"({', '.join(recipe.compare.optimizers)}){did_you_mean(name, recipe.compare.optimizers)}")
            continue
        schema.check(schema.params_of(UnlearnConfig), own.unlearn, f"{at}.unlearn", errors, owner="unlearn")
        for key in ("method", "objective", "objective_args"):
            if key in own.unlearn:
                errors.append(f"{at}.unlearn.{key}: set by the comparison's cell, not per optimizer")
        if name in OPTIMIZERS:
            schema.check(schema.params_of(OPTIMIZERS[name], skip=OPTIMIZER_COMMON), own.args,
                         f"{at}.args", errors, owner=f"optimizer '{name}'")
    for i, name in enumerate(recipe.compare.objectives):
        if name not in OBJECTIVES:
            errors.append(f"compare.objectives[{i}]: unknown objective '{name}'{did_you_mean(name, OBJECTIVES)}")


class RecipeError(UserError):
    """All the problems of one recipe; ``str()`` is one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        head = f"{source} has {len(problems)} problem{'s' if len(problems) > 1 else ''}"
        super().__init__(head + ": " + "; ".join(problems))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], yaml-typed c)."""
    if "=" not in text:
        raise UserError(f"--set '{text}': expected dotted.key=value, e.g. --set optimizer.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set '{text}': the key is empty; write e.g. --set optimizer.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key.split("."), value


# --------------------------------------------------------------------------- paths

#: Recipe keys naming a file or folder; all but the always-paths may also be a keyword or a hub id.
PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("data", "source"), ("data", "classifier"), ("model", "source"), ("model", "base"), ("model", "reference"),
    ("unlearn", "refusals_file"), ("cache_dir",), ("output_dir",), ("attack", "relearn", "data"))
_ALWAYS_PATHS = {("unlearn", "refusals_file"), ("cache_dir",), ("output_dir",), ("attack", "relearn", "data")}
_KEYWORDS = ("builtin", "none")


def _resolved(at: tuple[str, ...], value: Any, base: Path) -> Any:
    """``value`` (the raw value of key ``at``, a section's mapping included) with its paths
    made absolute against ``base``; what is not a path (a keyword, a hub id) is kept."""
    if isinstance(value, dict):
        return {k: _resolved((*at, str(k)), v, base) for k, v in value.items()}
    if at not in PATH_KEYS or not isinstance(value, str) or not value or value in _KEYWORDS:
        return value
    local = Path(value).expanduser()
    if at in _ALWAYS_PATHS or value.startswith((".", "/", "~")) or (base / local).exists():
        return os.path.abspath(base / local)
    return value  # e.g. the hub id org/name


def apply_overrides(raw: dict[str, Any], overrides: list[str], base: Path | None = None) -> dict[str, Any]:
    """Put each ``--set`` value into a copy of the raw mapping (creating sections as needed);
    with ``base``, a path value (see :data:`PATH_KEYS`) is made absolute against it."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        if base is not None:
            value = _resolved(tuple(parts), value, base)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- reading


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only: a ``!!python/...`` tag is an error) that refuses
    a key given twice in one mapping, where PyYAML would silently keep the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                line = first.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if line != key_node.start_mark.line:
                raise _DuplicateKey(None, None, f"key '{key}' is given twice (also at line "
                                    f"{line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a recipe file (safe YAML, no duplicate keys), or one UserError."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if Path("recipes").is_dir():
            hint = "; shipped recipes: " + ", ".join(sorted(str(p) for p in Path("recipes").glob("*.yaml")))
        raise UserError(f"recipe file '{path}' does not exist; pass an existing YAML file to --recipe{hint}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 (safe)
    except UnicodeDecodeError:
        raise UserError(f"recipe '{path}' is not UTF-8 text; save it as a UTF-8 YAML file") from None
    except OSError as exc:
        raise UserError(f"could not read recipe '{path}' ({exc.strerror}); check its permissions") from None
    except RecursionError:
        raise UserError(f"recipe '{path}' is nested too deeply to be a recipe; write its sections "
                        "(data:, model:, ...) with plain values") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc or "invalid YAML").split())
        if isinstance(exc, _DuplicateKey):
            raise UserError(f"recipe '{path}'{where.replace(' at', '')}: {problem}") from None
        raise UserError(f"recipe '{path}' is not valid YAML{where}: {problem}; fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe '{path}' must be a YAML mapping of sections (data:, model:, ...), got {type(raw).__name__}")
    return raw


def build_recipe(raw: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw mapping into a :class:`Recipe`, reporting every problem at once."""
    errors: list[str] = []
    raw = dict(raw)
    data_raw = raw.pop("data", None)
    task = raw.get("task", "tofu")
    data_cls = TASKS[task].Data if isinstance(task, str) and task in TASKS else None
    if data_cls is None:
        errors.append(f"task: unknown task {task!r}{did_you_mean(str(task), TASKS)}; choose one of: "
                      f"{', '.join(sorted(TASKS))}")
        raw.pop("task", None)
    recipe = schema.build(Recipe, raw, "", errors)
    data = schema.build(data_cls, data_raw, "data", errors) if data_cls else schema.MISSING
    if recipe is schema.MISSING and isinstance(raw, Mapping):
        # the sections that are valid on their own (defaults for the others) still get the
        # checks below, so an unknown key elsewhere does not hide e.g. an unknown optimizer
        recipe = Recipe(**schema.check(schema.params_of(Recipe), raw, "", []))
    if recipe is not schema.MISSING and data is not schema.MISSING:
        recipe = dataclasses.replace(recipe, data=data)
    if recipe is not schema.MISSING:
        _check_values(recipe, errors)
    if errors:
        raise RecipeError(source, errors)
    return recipe


def _drop_foreign_args(raw: dict[str, Any], set_keys: set[tuple[str, ...]], notes: list[str]) -> None:
    """After ``--set optimizer.name=X`` (or ``unlearn.objective=X``), drop the recipe file's
    ``optimizer.args`` (``unlearn.objective_args``) keys that X does not take, with a note:
    switching optimizer on the command line must not fail on the old one's ``rho``. Keys that
    came from ``--set`` themselves stay (and are checked)."""
    from soulcli.objectives import OBJECTIVES, objective_hparams
    from soulcli.optim import OPTIMIZERS, optimizer_hparams

    for section, name_key, args_key, registry, declared in (
            ("optimizer", "name", "args", OPTIMIZERS, optimizer_hparams),
            ("unlearn", "objective", "objective_args", OBJECTIVES, objective_hparams)):
        node = raw.get(section)
        if (section, name_key) not in set_keys or not isinstance(node, dict):
            continue
        name, args = node.get(name_key), node.get(args_key)
        if not isinstance(name, str) or name not in registry or not isinstance(args, dict):
            continue
        if (section, args_key) in set_keys:
            continue
        known = declared(name)
        dropped = [k for k in args if k not in known and (section, args_key, str(k)) not in set_keys]
        if dropped:
            node[args_key] = {k: v for k, v in args.items() if k not in dropped}
            notes.append(f"{section}.{name_key}={name} (from --set) does not take "
                         f"{', '.join(f'{section}.{args_key}.{k}' for k in dropped)}: dropped")


def load_recipe(path: str | Path | None, overrides: list[str] | None = None,
                notes: list[str] | None = None) -> Recipe:
    """Read ``path`` (or the defaults when None), apply ``--set`` overrides, validate.

    Paths become absolute (see the module docstring for the rule); a note for the user (e.g.
    optimizer args dropped after ``--set optimizer.name=...``) is appended to ``notes``.
    """
    overrides = overrides or []
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _resolved((), read_yaml(path), Path(path).resolve().parent)
        raw.setdefault("name", Path(path).stem)
    raw = apply_overrides(raw, overrides, base=Path.cwd())
    if "cache_dir" not in raw:  # the default, like a flag, is relative to the current directory
        raw["cache_dir"] = os.path.abspath(Recipe.cache_dir)
    _drop_foreign_args(raw, {tuple(parse_override(o)[0]) for o in overrides},
                       notes if notes is not None else [])
    return build_recipe(raw, source=str(path) if path else "the default recipe")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(recipe))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def replace(recipe: Recipe, **sections: Any) -> Recipe:
    """``replace(r, optimizer={'name': 'adamw'})``: a new recipe with some fields changed."""
    raw = recipe_to_dict(recipe)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return build_recipe(raw, source=f"recipe '{recipe.name}'")
