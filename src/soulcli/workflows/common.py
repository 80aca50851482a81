"""What every workflow needs: runtime set-up, the benchmark, its splits, the cache keys.

Caches are keyed by content, never by where a folder lies: the built-in benchmark by its
generator's parameters, an imported TOFU folder by a fingerprint of its files, the built-in
models by the benchmark's content plus the settings that shape them. A moved cache, benchmark
or run folder is therefore reused, and changed data is rebuilt. Training a missing model is
not done here but in :mod:`soulcli.workflows.artifacts`, above finetune.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from soulcli.data import synthetic, tofu
from soulcli.data.io import MANIFEST_NAME, files_fingerprint
from soulcli.data.template import PromptTemplate
from soulcli.engine.progress import Reporter
from soulcli.errors import UserError
from soulcli.recipe import Recipe


def short_hash(obj) -> str:
    """A 10-hex-digit key of any JSON-able object (dict keys sorted)."""
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


def data_fingerprint(folder: Path) -> str:
    """The content key of a data folder (a benchmark, or TOFU files to import): a sha256 over
    its split files, names included, whatever the folder is called or wherever it lies."""
    return files_fingerprint(folder, tofu.SPLIT_SUFFIXES)


def write_benchmark(recipe: Recipe, out: Path, reporter: Reporter, *, overwrite: bool = False) -> None:
    """Build the built-in benchmark, or import the TOFU files ``data.source`` names, into ``out``."""
    d = recipe.data
    if d.source == "builtin":
        reporter.info(f"Building the built-in benchmark ({d.num_authors} authors x "
                      f"{d.questions_per_author} questions, seed {d.seed}) in {out}")
        splits = synthetic.generate_benchmark(
            num_authors=d.num_authors, questions_per_author=d.questions_per_author, seed=d.seed)
        synthetic.write_benchmark(splits, out, overwrite=overwrite)
    else:
        reporter.info(f"Importing TOFU data from {d.source} into {out}")
        tofu.import_tofu(d.source, out, overwrite=overwrite)


def benchmark_dir(recipe: Recipe, reporter: Reporter) -> Path:
    """The benchmark folder the recipe names, built (built-in) or imported on first use.

    A soulcli benchmark folder is used where it is. TOFU files are imported into the cache
    under a fingerprint of their content, so a moved copy is not imported again and edited
    files are (a hub id, whose files are not at hand, keys by its name).
    """
    cache = Path(recipe.cache_dir) / "benchmarks"
    d = recipe.data
    if d.source == "builtin":
        out = cache / f"builtin-v{synthetic.GENERATOR_VERSION}-a{d.num_authors}-q{d.questions_per_author}-s{d.seed}"
    else:
        path = Path(d.source).expanduser()
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            return path  # already a soulcli benchmark folder
        out = cache / f"imported-{short_hash(data_fingerprint(path) if path.is_dir() else d.source)}"
    if not (out / MANIFEST_NAME).is_file():
        write_benchmark(recipe, out, reporter, overwrite=True)
    return out


def load_split(data_dir: Path, name: str) -> list[dict]:
    return tofu.load_split(data_dir, name)


def maybe_split(data_dir: Path, name: str) -> list[dict] | None:
    """A split if its file exists (``holdout`` is absent from real TOFU folders)."""
    return load_split(data_dir, name) if name in tofu.available_splits(data_dir) else None


def eval_splits(data_dir: Path, recipe: Recipe) -> dict[str, list[dict]]:
    """The evaluation sets under the names the evaluation suite expects."""
    _, forget_perturbed, _ = tofu.forget_split_names(forget_pct(recipe))
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


# --------------------------------------------------------------------------- cache keys


@dataclass(frozen=True)
class ModelPaths:
    tokenizer: Path
    target: Path
    retain: Path


def shaping(section) -> dict:
    """A recipe section's fields but ``save_every``: checkpoints change no number, so they
    are left out of every cache key."""
    return {k: v for k, v in asdict(section).items() if k != "save_every"}


def checkpoint_key(recipe: Recipe, part: str) -> str:
    """The key a run's checkpoints carry: the resolved recipe (``save_every`` aside) and which
    part of the command they belong to, so ``--resume`` refuses another recipe's or seed's."""
    raw = {**asdict(recipe), "unlearn": shaping(recipe.unlearn), "finetune": shaping(recipe.finetune)}
    return short_hash([raw, part])


def builtin_models_key(recipe: Recipe, data_dir: Path) -> str:
    """The content key of the built-in models: the benchmark's content, the architecture, the
    finetuning settings, the prompt template and the initialisation seed."""
    m = recipe.model
    return short_hash({
        "data": data_fingerprint(data_dir),
        "arch": [m.base, m.vocab_size, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size],
        "dtype": m.dtype,
        "finetune": shaping(recipe.finetune),
        "max_length": recipe.data.max_length,
        "template": asdict(recipe.data.template),
        "seed": recipe.data.seed,
    })


def builtin_model_paths(recipe: Recipe, data_dir: Path) -> ModelPaths:
    """Cache folders of the built-in models, under :func:`builtin_models_key`."""
    root = Path(recipe.cache_dir) / "models" / builtin_models_key(recipe, data_dir)
    return ModelPaths(root / "tokenizer", root / "target", root / f"retain-{recipe.data.forget_split}")


def reference_stats_key(recipe: Recipe, data_dir: Path) -> str:
    """The content key of the retain model's cached reference values (stored beside it)."""
    return short_hash([data_fingerprint(data_dir), recipe.data.forget_split, asdict(recipe.data.template),
                       recipe.data.max_length, recipe.eval.max_new_tokens])


def objective_cache_key(recipe: Recipe, data_dir: Path, seed: int) -> str:
    """The content key of an objective's reference cache (the starting model's values per item):
    the data, the starting model (the built-in one by its content key, others by name), the
    unlearning settings and the seed."""
    model = builtin_models_key(recipe, data_dir) if recipe.model.source == "builtin" else recipe.model.source
    return short_hash([data_fingerprint(data_dir), model, shaping(recipe.unlearn), seed])
