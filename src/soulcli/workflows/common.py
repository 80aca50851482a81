"""What every workflow needs: runtime set-up, the benchmark, its splits, the cache keys.

Caches are keyed by content, never by where a folder lies: a built-in dataset by its
generator's parameters, an imported folder by a fingerprint of its files (the task's), the
built-in models by the dataset's content plus the settings that shape them. A moved cache, benchmark
or run folder is therefore reused, and changed data is rebuilt. Training a missing model is
not done here but in :mod:`soulcli.workflows.artifacts`, above finetune.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from soulcli.data.encode import EncodedItem
from soulcli.data.io import MANIFEST_NAME, build_once, read_manifest
from soulcli.data.template import PromptTemplate
from soulcli.engine.progress import Reporter
from soulcli.errors import UserError
from soulcli.recipe import Recipe
from soulcli.tasks import Task, get_task


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


def count_cut(reporter: Reporter, what: str, sets: dict[str, list[EncodedItem]], max_length: int) -> dict[str, int]:
    """How many sequences of each named set ``data.max_length`` cut (their ends are not
    trained on), said in the log whenever any is; the counts go into the run's records."""
    cut = {name: sum(item.truncated for item in items) for name, items in sets.items()}
    if any(cut.values()):
        parts = ", ".join(f"{n} of {len(sets[name])} {name}" for name, n in cut.items() if n)
        reporter.info(f"{what}: {parts} sequences cut at data.max_length={max_length} tokens "
                      "(their ends are not trained on); raise data.max_length")
    return cut


def task_of(recipe: Recipe, tokenizer=None) -> Task:
    """The recipe's task, configured with its ``data`` section. Given the model's ``tokenizer``,
    its prompt template is resolved by it (:meth:`PromptTemplate.resolved`: a
    ``chat_template: true`` rendered into the strings it writes), which everything that puts
    questions to the model (evaluation, the probes) needs; without one, a chat template is
    left as the recipe says (enough for the data, the splits, the metric names and the keys)."""
    if tokenizer is None:
        return get_task(recipe.data, recipe.task)
    return get_task(dataclasses.replace(recipe.data, template=recipe.data.template.resolved(tokenizer)), recipe.task)


# --------------------------------------------------------------------------- datasets


def data_fingerprint(folder: Path, recipe: Recipe) -> str:
    """The content key of a dataset folder (built, or files to import): a sha256 over the
    task's files, names included, whatever the folder is called or wherever it lies."""
    return task_of(recipe).fingerprint(folder)


def write_benchmark(recipe: Recipe, out: Path, reporter: Reporter, *, overwrite: bool = False) -> None:
    """Build the task's built-in dataset, or import the files ``data.source`` names, into ``out``."""
    task = task_of(recipe)
    if recipe.data.source == "builtin":
        task.write_builtin(out, reporter.info, overwrite)
    else:
        task.import_source(recipe.data.source, out, reporter.info, overwrite)


def benchmark_dir(recipe: Recipe, reporter: Reporter) -> Path:
    """The dataset folder the recipe names, built (built-in) or imported on first use.

    A soulcli dataset folder is used where it is. Files in the task's layout are imported
    into the cache under a fingerprint of their content, so a moved copy is not imported again
    and edited files are, into a new entry (a hub id, whose files are not at hand, keys by its
    name). Concurrent builders of one entry wait for each other (:func:`build_once`).
    """
    task = task_of(recipe)
    cache = Path(recipe.cache_dir) / "benchmarks"
    source = recipe.data.source
    if source == "builtin":
        out = cache / task.builtin_name()
    else:
        path = Path(source).expanduser()
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            return path  # already a soulcli dataset folder
        out = cache / f"{task.name}-imported-{short_hash(task.fingerprint(path) if path.is_dir() else source)}"
        if path.is_dir() and not (out / MANIFEST_NAME).is_file():
            _note_changed_import(cache, task.name, path, reporter)

    build_once(out, lambda: (out / MANIFEST_NAME).is_file(),
               lambda: write_benchmark(recipe, out, reporter, overwrite=True), "benchmark", reporter.info)
    return out


def _note_changed_import(cache: Path, task: str, source: Path, reporter: Reporter) -> None:
    """Say so when ``source`` was imported before with other content (its old entry is kept)."""
    for entry in sorted(cache.glob(f"{task}-imported-*")):
        if (read_manifest(entry) or {}).get("source", {}).get("path") == str(source.resolve()):
            reporter.info(f"{source} changed since it was imported into {entry}: importing it anew")
            return


# --------------------------------------------------------------------------- cache keys


@dataclass(frozen=True)
class ModelPaths:
    tokenizer: Path
    target: Path
    retain: Path


def shaping(section) -> dict:
    """A recipe section's fields but ``save_every`` (checkpoints change no number, so they are
    left out of every cache key), ``grad_accum`` at 1 and ``max_steps`` unset (no accumulation,
    every step: the keys of the built-in models of earlier soulcli versions, which had neither
    key in ``finetune``, stay)."""
    return {k: v for k, v in asdict(section).items()
            if k != "save_every" and not (k == "grad_accum" and v == 1) and not (k == "max_steps" and v is None)}


def precision_key(recipe: Recipe) -> dict:
    """``train.precision`` for the cache keys of what training makes, left out where it is
    fp32 on a float32 model (what soulcli did before the key existed)."""
    from soulcli.models.precision import resolve

    chosen = resolve(recipe.train.precision, recipe.model.dtype)
    return {} if chosen == "fp32" and recipe.model.dtype == "float32" else {"precision": chosen}


def checkpoint_key(recipe: Recipe, part: str) -> str:
    """The key a run's checkpoints carry: the resolved recipe (``save_every`` aside) and which
    part of the command they belong to, so ``--resume`` refuses another recipe's or seed's."""
    raw = {**asdict(recipe), "unlearn": shaping(recipe.unlearn), "finetune": shaping(recipe.finetune)}
    return short_hash([raw, part])


def builtin_models_key(recipe: Recipe, data_dir: Path) -> str:
    """The content key of the built-in models: the benchmark's content, what the tokenizer and
    each model learn from it (so a soulcli whose task builds other training sets from the same
    data never reuses a model trained on the old ones), the architecture, the finetuning
    settings, the prompt template and the initialisation seed."""
    m = recipe.model
    task = task_of(recipe)
    pretrained = m.base != "builtin"
    learned = {which: short_hash([(ts := task.train_set(data_dir, which, pretrained)).name, ts.kind, ts.rows])
               for which in ("target", "retain")}
    return short_hash({
        "learned": learned,
        "tokenizer_texts": short_hash(task.texts(data_dir)),
        "task": recipe.task,
        "data": data_fingerprint(data_dir, recipe),
        "arch": [m.base, m.vocab_size, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size],
        "dtype": m.dtype,
        "finetune": shaping(recipe.finetune),
        "max_length": recipe.data.max_length,
        "template": asdict(recipe.data.template),
        "seed": recipe.data.seed,
        **precision_key(recipe),
    })


def builtin_model_paths(recipe: Recipe, data_dir: Path) -> ModelPaths:
    """Cache folders of the built-in models, under :func:`builtin_models_key`."""
    root = Path(recipe.cache_dir) / "models" / builtin_models_key(recipe, data_dir)
    return ModelPaths(root / "tokenizer", root / "target", root / task_of(recipe).retain_model_name())


def reference_stats_key(recipe: Recipe, data_dir: Path) -> str:
    """The content key of the retain model's cached reference values (stored beside it);
    ``eval.max_items`` is part of it only when set (the keys before it existed stay)."""
    limit = [recipe.eval.max_items] if recipe.eval.max_items is not None else []
    return short_hash([data_fingerprint(data_dir, recipe), task_of(recipe).settings(),
                       recipe.eval.max_new_tokens, recipe.eval.mink_k, "reference-v2", *limit])


def objective_cache_key(recipe: Recipe, data_dir: Path, seed: int) -> str:
    """The content key of an objective's reference cache (the starting model's values per item):
    the data, the starting model (the built-in one by its content key, others by name), the
    unlearning settings and the seed."""
    model = builtin_models_key(recipe, data_dir) if recipe.model.source == "builtin" else recipe.model.source
    return short_hash([data_fingerprint(data_dir, recipe), model, shaping(recipe.unlearn), seed,
                       *([precision_key(recipe)] if precision_key(recipe) else [])])


def prepare_training(recipe: Recipe, model: torch.nn.Module, reporter: Reporter) -> torch.dtype | None:
    """``train.precision`` (its default from ``model.dtype``; bf16-true warns that it is lossy)
    and ``train.gradient_checkpointing`` applied to ``model`` before its optimizer is built;
    the forward's autocast dtype (:mod:`soulcli.models.precision`). After training,
    ``precision.store(model, ...)`` puts it back in ``model.dtype``."""
    from soulcli.models import precision

    chosen = precision.resolve(recipe.train.precision, recipe.model.dtype)
    if chosen == "bf16-true":
        reporter.info(f"[yellow]warning:[/] {precision.LOSSY}")
    return precision.prepare(model, chosen, recipe.train.gradient_checkpointing)
