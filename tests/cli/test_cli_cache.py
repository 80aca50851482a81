"""Caches keyed by content: a moved cache, benchmark or run folder is reused (no retraining),
and changed data is rebuilt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from soulcli.data import tofu
from soulcli.recipe import load_recipe
from soulcli.workflows import common

from conftest import MICRO

TRAINING = ("training it now", "Finetuning the", "Training a BPE tokenizer")


def model_files(cache: Path) -> dict[str, float]:
    """Every weight file of the cached built-in models, with its modification time."""
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in (cache / "models").rglob("model.safetensors")}


def assert_no_training(res) -> None:
    assert res.exit_code == 0, res.output
    for phrase in TRAINING:
        assert phrase not in res.output, res.output


def test_moved_cache_is_reused(soul, pipeline, tmp_path):
    shutil.copytree(soul.cache, tmp_path / "copy")
    moved = Path(shutil.move(tmp_path / "copy", tmp_path / "elsewhere" / "cache"))
    before = model_files(moved)
    assert len(before) == 2  # target and retain
    res = soul("evaluate", str(pipeline["run"]), "--output", str(tmp_path / "eval.json"),
               "--set", f"cache_dir={moved}", recipe=None, cache=False)
    assert_no_training(res)
    assert "Evaluating the retain reference model" not in res.output  # its values are cached too
    assert model_files(moved) == before
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["forget_quality"]["value"] is not None


def test_moved_benchmark_folder_is_reused(soul, pipeline, tmp_path):
    """A benchmark folder of the same content as the cached built-in one reuses its models,
    before and after it moves; a run evaluated with --data at the new place as well."""
    before = model_files(soul.cache)
    assert soul("prepare-data", "--output", str(tmp_path / "bench")).exit_code == 0
    bench = Path(shutil.move(tmp_path / "bench", tmp_path / "moved"))
    res = soul("unlearn", "--set", f"data.source={bench}", "--output", str(tmp_path / "run"))
    assert_no_training(res)
    again = Path(shutil.move(bench, tmp_path / "again"))
    res = soul("evaluate", str(tmp_path / "run"), "--data", str(again), recipe=None)
    assert_no_training(res)
    assert model_files(soul.cache) == before


def test_imported_tofu_is_keyed_by_its_content(soul, pipeline, tmp_path):
    src = tmp_path / "tofu"
    src.mkdir()
    for f in Path(pipeline["prepared"]["path"]).glob("*.json"):
        if f.name != "benchmark.json":
            shutil.copyfile(f, src / f.name)
    cache = tmp_path / "cache"

    def prepare(folder: Path):
        res = soul("prepare-data", "--source", str(folder), "--json", "--set", f"cache_dir={cache}",
                   cache=False)
        assert res.exit_code == 0, res.output
        return Path(json.loads(res.stdout)["path"]), "Importing TOFU data" in res.stderr

    first, imported = prepare(src)
    assert imported and first.parent == cache / "benchmarks"
    moved = Path(shutil.move(src, tmp_path / "tofu_moved"))
    assert prepare(moved) == (first, False)  # same files elsewhere: the cached copy

    rows = [json.loads(line) for line in (moved / "forget10.json").read_text().splitlines()]
    rows[0]["answer"] = "A changed answer."
    (moved / "forget10.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    second, imported = prepare(moved)
    assert imported and second != first
    assert tofu.load_split(second, "forget10")[0]["answer"] == "A changed answer."
    assert tofu.load_split(first, "forget10")[0]["answer"] != "A changed answer."


def test_content_keys_follow_data_and_settings(pipeline, tmp_path):
    data = Path(pipeline["prepared"]["path"])
    copy = Path(shutil.copytree(data, tmp_path / "copy"))
    recipe = load_recipe(MICRO, [f"cache_dir={tmp_path}"])
    keys = (common.builtin_models_key, common.reference_stats_key,
            lambda r, d: common.objective_cache_key(r, d, seed=0))
    for key in keys:
        assert key(recipe, copy) == key(recipe, data)
    longer = load_recipe(MICRO, [f"cache_dir={tmp_path}", "finetune.epochs=5"])
    assert common.builtin_models_key(longer, copy) != common.builtin_models_key(recipe, copy)
    assert common.objective_cache_key(recipe, copy, seed=1) != common.objective_cache_key(recipe, copy, seed=0)
    rows = (copy / "forget10.json").read_text().splitlines()
    (copy / "forget10.json").write_text("\n".join(rows[1:]) + "\n")
    for key in keys:
        assert key(recipe, copy) != key(recipe, data)
