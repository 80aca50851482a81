"""The models a recipe names, found or built: the built-in target and retain models are
trained by :mod:`finetune` the first time they are needed and cached under their content key
(:func:`common.builtin_models_key`); any other model is resolved as given (folder or hub id).

This module sits above finetune (it trains what is missing) and below every command that needs
a model (evaluate, unlearn, compare, `soul finetune`'s closing evaluation), which import it.
"""

from __future__ import annotations

from pathlib import Path

from soulcli.engine.progress import Reporter
from soulcli.models.loading import resolve_model_path
from soulcli.recipe import Recipe
from soulcli.workflows import common
from soulcli.workflows.finetune import run_finetune


def target_model_path(recipe: Recipe, reporter: Reporter) -> tuple[Path, Path]:
    """(data dir, target model folder), training the built-in target if it is missing."""
    data_dir = common.benchmark_dir(recipe, reporter)
    if recipe.model.source != "builtin":
        return data_dir, Path(resolve_model_path(recipe.model.source))
    paths = common.builtin_model_paths(recipe, data_dir)
    if not (paths.target / "config.json").is_file():
        reporter.info("The built-in target model is not built yet: training it now (cached for later runs)")
        run_finetune(recipe, reporter, which=("target",), force=False)
    return data_dir, paths.target


def reference_model_path(recipe: Recipe, reporter: Reporter, data_dir: Path) -> Path | None:
    """The retain reference model folder (built-in: trained on retainXX if missing)."""
    ref = recipe.model.reference
    if ref == "none":
        return None
    if ref != "builtin":
        return Path(resolve_model_path(ref))
    paths = common.builtin_model_paths(recipe, data_dir)
    if not (paths.retain / "config.json").is_file():
        reporter.info("The built-in retain reference model is not built yet: training it now (cached)")
        run_finetune(recipe, reporter, which=("retain",), force=False)
    return paths.retain
