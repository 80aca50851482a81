"""Recipes: YAML -> frozen, typed dataclasses.

Every problem in a recipe is reported at once, each with its YAML path (``optimizer.lr``) and a
"did you mean" where a close key exists. ``--set a.b=c`` overrides are applied to the raw
mapping before validation, so they are typed by the same schema. Per-optimizer and
per-objective keys (``optimizer.args``, ``unlearn.objective_args``) are checked against the
real signature of what they configure.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from soulcli.errors import UserError, did_you_mean


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class TemplateConfig:
    """How a question is put to the model (see soulcli.data.template.PromptTemplate)."""

    question_start: str = "Question: "
    question_end: str = "\n"
    answer_start: str = "Answer: "
    stop_strings: tuple[str, ...] = ("\nQuestion:",)


@dataclass(frozen=True)
class DataConfig:
    """Where the benchmark comes from and how it is tokenised."""

    source: str = "builtin"  # builtin | a local folder of TOFU files | a hub dataset id
    seed: int = 0  # the built-in benchmark's generator seed
    forget_split: Literal["forget01", "forget05", "forget10"] = "forget10"
    num_authors: int = 100  # built-in benchmark size
    questions_per_author: int = 10
    max_length: int = 128
    template: TemplateConfig = field(default_factory=TemplateConfig)


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
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
    vocab_size: int = 2048
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    adapter: Literal["full", "lora"] = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class FinetuneConfig:
    """Training of the target model (on ``full``) and the retain model (on ``retainXX``)."""

    epochs: int = 30
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    batch_size: int = 32
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class OptimizerConfig:
    """The unlearning optimizer: a registry name, its learning rate and its own ``args``."""

    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    hessian_interval: int = 10
    curvature: str | None = None  # gnb | hutchinson | empirical_fisher; None = the optimizer's default
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InfluenceConfig:
    method: Literal["diag_fisher", "woodbury", "lissa"] = "diag_fisher"
    damping: float = 1e-3
    scale: float = 1.0
    retain_batches: int = 8


@dataclass(frozen=True)
class UnlearnConfig:
    """The unlearning run: an objective optimised for ``epochs`` passes over the forget set."""

    method: Literal["iterative", "influence"] = "iterative"
    objective: str = "graddiff"
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    retain_loss: Literal["nll", "kl"] = "nll"
    objective_args: dict[str, Any] = field(default_factory=dict)
    refusals_file: str | None = None
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 8
    retain_batch_size: int | None = None  # default: batch_size
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    log_every: int = 1
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 32
    max_new_tokens: int = 48
    metrics: tuple[str, ...] | None = None
    eval_every: int | None = None  # compare-optimizers: evaluate every N steps


@dataclass(frozen=True)
class CompareConfig:
    optimizers: tuple[str, ...] = ("adamw", "signum", "sophiag")
    objectives: tuple[str, ...] = ("graddiff",)
    lr_grid: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0,)
    utility_ratio: float = 0.9
    include_influence: bool = True
    # "all": every lr runs every seed; "selected": the lr grid runs on the first seed, the rule
    # picks the lr per optimizer x objective, and only that lr runs the other seeds
    seed_policy: Literal["all", "selected"] = "all"


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    seed: int = 0
    cache_dir: str = ".soul"
    output_dir: str | None = None  # default runs/<name>
    device: str = "auto"
    threads: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_MISSING = object()


def _coerce(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """Check ``value`` against ``tp``; return the converted value or _MISSING after an error."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _coerce(value, arg, path, trial)
            if not trial:
                return out
        errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return _MISSING
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        errors.append(
            f"{path}: {value!r} is not {_type_name(tp)}{did_you_mean(str(value), map(str, choices))}"
        )
        return _MISSING
    if origin in (tuple, list):
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, str) and item_tp in (str, float, int):
            value = [v.strip() for v in value.split(",") if v.strip()]  # --set a=x,y
        if not isinstance(value, (list, tuple)):
            errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return _MISSING
        items = [_coerce(v, item_tp, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return _MISSING
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return _MISSING


def _build(cls: type, raw: Any, path: str, errors: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        errors.append(f"{path or 'recipe'}: expected a mapping, got {raw!r}")
        return _MISSING
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in hints:
            errors.append(f"{sub}: unknown key{did_you_mean(str(key), names)}")
            continue
        out = _coerce(value, hints[key], sub, errors)
        if out is not _MISSING:
            kwargs[key] = out
    try:
        return cls(**kwargs)
    except TypeError:
        return _MISSING


def _check_values(recipe: Recipe, errors: list[str]) -> None:
    """Value rules the types cannot express, plus per-optimizer / per-objective keys."""
    positive = {
        "seed": recipe.seed >= 0,
        "data.num_authors": recipe.data.num_authors >= 10,
        "data.questions_per_author": recipe.data.questions_per_author >= 1,
        "data.max_length": recipe.data.max_length >= 8,
        "model.hidden_size": recipe.model.hidden_size > 0,
        "model.num_layers": recipe.model.num_layers > 0,
        "model.vocab_size": recipe.model.vocab_size >= 300,
        "finetune.epochs": recipe.finetune.epochs > 0,
        "finetune.lr": recipe.finetune.lr > 0,
        "finetune.batch_size": recipe.finetune.batch_size > 0,
        "optimizer.lr": recipe.optimizer.lr > 0,
        "optimizer.hessian_interval": recipe.optimizer.hessian_interval > 0,
        "unlearn.epochs": recipe.unlearn.epochs > 0,
        "unlearn.batch_size": recipe.unlearn.batch_size > 0,
        "eval.batch_size": recipe.eval.batch_size > 0,
        "eval.max_new_tokens": recipe.eval.max_new_tokens > 0,
    }
    limits = {
        "data.num_authors": ">= 10",
        "model.vocab_size": ">= 300",
        "data.max_length": ">= 8",
        "seed": ">= 0",
    }
    for key, ok in positive.items():
        if not ok:
            errors.append(f"{key}: must be {limits.get(key, '> 0')}")
    if recipe.model.hidden_size % max(recipe.model.num_heads, 1):
        errors.append("model.hidden_size: must be a multiple of model.num_heads")
    if not 0 < recipe.compare.utility_ratio <= 1:
        errors.append("compare.utility_ratio: must be in (0, 1]")
    if recipe.unlearn.max_steps is not None and recipe.unlearn.max_steps <= 0:
        errors.append("unlearn.max_steps: must be > 0 or null")

    from soulcli.objectives import OBJECTIVES, objective_hparams
    from soulcli.optim import CURVATURE_ESTIMATORS, OPTIMIZERS, optimizer_hparams
    from soulcli.optim.registry import check_hparam

    def check_args(kind: str, path: str, name: str, args: Mapping[str, Any], known: Mapping[str, Any]) -> None:
        for key, value in args.items():
            if key not in known:
                errors.append(
                    f"{path}.{key}: not a parameter of {kind} '{name}'{did_you_mean(key, known)}"
                    f" (it takes: {', '.join(sorted(known)) or 'none'})"
                )
                continue
            default = known[key]
            if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, (int, float)) and not isinstance(value, (int, float))
            ):
                errors.append(f"{path}.{key}: expected a value like {default!r}, got {value!r}")

    opt = recipe.optimizer
    if opt.name not in OPTIMIZERS:
        errors.append(
            f"optimizer.name: unknown optimizer '{opt.name}'{did_you_mean(opt.name, OPTIMIZERS)};"
            f" choose one of: {', '.join(sorted(OPTIMIZERS))}"
        )
    else:
        known = optimizer_hparams(opt.name)
        check_args("optimizer", "optimizer.args", opt.name,
                   {k: v for k, v in opt.args.items() if k not in known}, known)
        for key, value in opt.args.items():
            problem = check_hparam(opt.name, key, value) if key in known else None
            if problem:
                errors.append(f"optimizer.args.{key}: {problem}")
        if opt.name == "sophiag" and opt.curvature == "hutchinson":
            errors.append("optimizer.curvature: sophiag takes squared-gradient curvature (gnb or "
                          "empirical_fisher); Hutchinson samples can be negative: use "
                          "optimizer.name=sophiah")
    if opt.curvature is not None and opt.curvature not in CURVATURE_ESTIMATORS:
        errors.append(
            f"optimizer.curvature: unknown estimator '{opt.curvature}'"
            f"{did_you_mean(opt.curvature, CURVATURE_ESTIMATORS)}; choose one of: "
            f"{', '.join(sorted(CURVATURE_ESTIMATORS))}"
        )
    obj = recipe.unlearn
    if obj.objective not in OBJECTIVES:
        errors.append(
            f"unlearn.objective: unknown objective '{obj.objective}'"
            f"{did_you_mean(obj.objective, OBJECTIVES)}; choose one of: {', '.join(sorted(OBJECTIVES))}"
        )
    else:
        check_args("objective", "unlearn.objective_args", obj.objective, obj.objective_args,
                   objective_hparams(obj.objective))
    for i, name in enumerate(recipe.compare.optimizers):
        if name not in OPTIMIZERS:
            errors.append(f"compare.optimizers[{i}]: unknown optimizer '{name}'{did_you_mean(name, OPTIMIZERS)}")
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
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Put each ``--set`` value into a copy of the raw mapping (creating sections as needed)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        hint = ""
        if Path("recipes").is_dir():
            hint = "; shipped recipes: " + ", ".join(sorted(str(p) for p in Path("recipes").glob("*.yaml")))
        raise UserError(f"recipe file '{path}' does not exist; pass an existing YAML file to --recipe{hint}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"recipe '{path}' is not valid YAML{where}: {problem}; fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe '{path}' must be a YAML mapping of sections (data:, model:, ...), got {type(raw).__name__}")
    return raw


def build_recipe(raw: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw mapping into a :class:`Recipe`, reporting every problem at once."""
    errors: list[str] = []
    recipe = _build(Recipe, raw, "", errors)
    if recipe is not _MISSING and not errors:
        _check_values(recipe, errors)
    if errors:
        raise RecipeError(source, errors)
    return recipe


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read ``path`` (or the defaults when None), apply ``--set`` overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    if path is not None and "name" not in raw:
        raw["name"] = Path(path).stem
    raw = apply_overrides(raw, overrides or [])
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
