"""What every workflow needs: runtime set-up, the benchmark, the built-in models, splits."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from soulcli.data.template import PromptTemplate
from soulcli.engine.progress import Reporter
from soulcli.errors import UserError
from soulcli.recipe import Recipe


def short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def setup_runtime(recipe: Recipe, seed: int | None = None) -> torch.device:
    """Seed every generator, cap CPU threads if asked, pick the device."""
    seed = recipe.seed if seed is None else seed
    random.seed(seed)
    torch.manual_seed(seed)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(recipe.device)
    except RuntimeError:
        raise UserError(f"device: '{recipe.device}' is not a torch device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no GPU is visible; set device: cpu or auto")
    return device


def template_of(recipe: Recipe) -> PromptTemplate:
    return recipe.data.template


def forget_pct(recipe: Recipe) -> int:
    return int(recipe.data.forget_split.removeprefix("forget"))


# --------------------------------------------------------------------------- benchmark


def benchmark_dir(recipe: Recipe, reporter: Reporter) -> Path:
    """The benchmark folder the recipe names, built (built-in) or imported on first use."""
    from soulcli.data import synthetic, tofu

    cache = Path(recipe.cache_dir) / "benchmarks"
    src = recipe.data.source
    if src == "builtin":
        d = recipe.data
        out = cache / f"builtin-a{d.num_authors}-q{d.questions_per_author}-s{d.seed}"
        if not (out / "benchmark.json").is_file():
            reporter.info(f"Building the built-in benchmark ({d.num_authors} authors x "
                          f"{d.questions_per_author} questions, seed {d.seed}) in {out}")
            splits = synthetic.generate_benchmark(
                num_authors=d.num_authors, questions_per_author=d.questions_per_author, seed=d.seed)
            synthetic.write_benchmark(splits, out)
        return out
    path = Path(src).expanduser()
    if path.is_dir() and (path / "benchmark.json").is_file():
        return path  # already a soulcli benchmark folder
    out = cache / f"imported-{short_hash(str(path.resolve()) if path.exists() else src)}"
    if not (out / "benchmark.json").is_file():
        reporter.info(f"Importing TOFU data from {src} into {out}")
        tofu.import_tofu(src, out)
    return out


def load_split(data_dir: Path, name: str) -> list[dict]:
    from soulcli.data.tofu import load_split as _load

    return _load(data_dir, name)


def maybe_split(data_dir: Path, name: str) -> list[dict] | None:
    """A split if its file exists (``holdout`` is absent from real TOFU folders)."""
    if not any((data_dir / f"{name}{ext}").is_file() for ext in (".json", ".jsonl")):
        return None
    return load_split(data_dir, name)


def eval_splits(data_dir: Path, recipe: Recipe) -> dict[str, list[dict]]:
    """The evaluation sets under the names the evaluation suite expects."""
    from soulcli.data.tofu import forget_split_names

    _, forget_perturbed, _ = forget_split_names(forget_pct(recipe))
    named = {
        "forget": forget_perturbed,
        "retain": "retain_perturbed",
        "real_authors": "real_authors_perturbed",
        "world_facts": "world_facts_perturbed",
        "holdout": "holdout",
    }
    out = {}
    for key, name in named.items():
        rows = maybe_split(data_dir, name)
        if rows is not None:
            out[key] = rows
    if "forget" not in out:
        raise UserError(f"{data_dir} has no {forget_perturbed}.json; evaluation needs it "
                        "(run `soul prepare-data` or point data.source at a full TOFU folder)")
    return out


# --------------------------------------------------------------------------- built-in models


@dataclass(frozen=True)
class ModelPaths:
    tokenizer: Path
    target: Path
    retain: Path


def builtin_model_paths(recipe: Recipe, data_dir: Path) -> ModelPaths:
    """Cache folders of the built-in models, keyed by data, architecture and training."""
    m = recipe.model
    key = short_hash({
        "data": str(data_dir.resolve()),
        "arch": [m.base, m.vocab_size, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size],
        "finetune": asdict(recipe.finetune),
        "max_length": recipe.data.max_length,
        "template": asdict(recipe.data.template),
        "seed": recipe.data.seed,
    })
    root = Path(recipe.cache_dir) / "models" / f"{data_dir.name}-{key}"
    return ModelPaths(root / "tokenizer", root / "target", root / f"retain-{recipe.data.forget_split}")


def target_model_path(recipe: Recipe, reporter: Reporter) -> tuple[Path, Path]:
    """(data dir, target model folder), building the built-in ones if missing."""
    data_dir = benchmark_dir(recipe, reporter)
    if recipe.model.source != "builtin":
        from soulcli.models.loading import resolve_model_path

        return data_dir, Path(resolve_model_path(recipe.model.source))
    paths = builtin_model_paths(recipe, data_dir)
    if not (paths.target / "config.json").is_file():
        from soulcli.workflows.finetune import run_finetune

        reporter.info("The built-in target model is not built yet: training it now (cached for later runs)")
        run_finetune(recipe, reporter, which=("target",))
    return data_dir, paths.target


def reference_model_path(recipe: Recipe, reporter: Reporter, data_dir: Path) -> Path | None:
    """The retain reference model folder (built-in: trained on retainXX if missing)."""
    ref = recipe.model.reference
    if ref == "none":
        return None
    if ref == "builtin":
        paths = builtin_model_paths(recipe, data_dir)
        if not (paths.retain / "config.json").is_file():
            from soulcli.workflows.finetune import run_finetune

            reporter.info("The built-in retain reference model is not built yet: training it now (cached)")
            run_finetune(recipe, reporter, which=("retain",))
        return paths.retain
    from soulcli.models.loading import resolve_model_path

    return Path(resolve_model_path(ref))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")
