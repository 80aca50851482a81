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
    """A copied cache is reused (nothing trains). A run made in it, once the cache moved, is
    refused by evaluate (its recorded folders are gone) until --data, --reference and --target
    name them at the new place, which reuses everything there too."""
    cache = Path(shutil.copytree(soul.cache, tmp_path / "cache"))
    before = model_files(cache)
    assert len(before) == 2  # target and retain
    run = tmp_path / "run"
    assert_no_training(soul("unlearn", "-o", str(run), "--set", f"cache_dir={cache}", cache=False))
    recorded = json.loads((run / "provenance.json").read_text())
    moved = Path(shutil.move(cache, tmp_path / "elsewhere" / "cache"))
    res = soul("evaluate", str(run), recipe=None, cache=False)
    assert res.exit_code == 2 and f"the run's data folder {recorded['data']['path']} is gone" in res.stderr

    at = {role: moved / Path(recorded[role]["path"]).relative_to(cache.resolve()) for role in recorded}
    res = soul("evaluate", str(run), "--data", str(at["data"]), "--reference", str(at["reference"]),
               "--target", str(at["target"]), "--output", str(tmp_path / "eval.json"), recipe=None, cache=False)
    assert_no_training(res)
    assert "Evaluating the retain reference model" not in res.output  # its values are cached too
    assert model_files(moved) == before
    ours, theirs = (json.loads(p.read_text())["metrics"] for p in (tmp_path / "eval.json", run / "eval.json"))
    assert {k: m["value"] for k, m in ours.items()} == {k: m["value"] for k, m in theirs.items()}
    assert ours["forget_quality"]["value"] is not None


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
        return Path(json.loads(res.stdout)["path"]), res.stderr

    first, log = prepare(src)
    assert "Importing TOFU data" in log and first.parent == cache / "benchmarks"

    rows = [json.loads(line) for line in (src / "forget10.json").read_text().splitlines()]
    rows[0]["answer"] = "A changed answer."
    (src / "forget10.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    second, log = prepare(src)
    assert second != first and second.parent == first.parent
    assert f"{src} changed since it was imported into {first}: importing it anew" in " ".join(log.split())
    assert tofu.load_split(second, "forget10")[0]["answer"] == "A changed answer."
    assert tofu.load_split(first, "forget10")[0]["answer"] != "A changed answer."  # the old entry is left

    moved = Path(shutil.move(src, tmp_path / "tofu_moved"))
    again, log = prepare(moved)  # same files elsewhere: the cached copy
    assert again == second and "Importing" not in log


def test_content_keys_follow_data_and_settings(pipeline, tmp_path):
    data = Path(pipeline["prepared"]["path"])
    copy = Path(shutil.copytree(data, tmp_path / "copy"))
    recipe = load_recipe(MICRO, [f"cache_dir={tmp_path}"])
    keys = (common.builtin_models_key, common.reference_stats_key,
            lambda r, d: common.objective_cache_key(r, d, seed=0))
    elsewhere = load_recipe(MICRO, [f"cache_dir={tmp_path}", f"data.source={copy}"])
    for key in keys:  # the same content under another data.source: the same keys
        assert key(recipe, copy) == key(recipe, data) == key(elsewhere, copy)
    longer = load_recipe(MICRO, [f"cache_dir={tmp_path}", "finetune.epochs=5"])
    assert common.builtin_models_key(longer, copy) != common.builtin_models_key(recipe, copy)
    assert common.objective_cache_key(recipe, copy, seed=1) != common.objective_cache_key(recipe, copy, seed=0)
    rows = (copy / "forget10.json").read_text().splitlines()
    (copy / "forget10.json").write_text("\n".join(rows[1:]) + "\n")
    for key in keys:
        assert key(recipe, copy) != key(recipe, data)


def test_models_key_follows_what_the_task_trains_on_not_only_the_data(pipeline, monkeypatch):
    """A soulcli whose task builds other training sets (or tokenizer texts) from the same data
    must not reuse models trained on the old ones."""
    from soulcli.tasks.tofu import TofuTask

    data = Path(pipeline["prepared"]["path"])
    recipe = load_recipe(MICRO)
    before = common.builtin_models_key(recipe, data)
    real = TofuTask.train_set

    def fewer(self, folder, which, pretrained):
        ts = real(self, folder, which, pretrained)
        return type(ts)(ts.name, ts.kind, ts.rows[1:])

    monkeypatch.setattr(TofuTask, "train_set", fewer)
    after = common.builtin_models_key(recipe, data)
    monkeypatch.setattr(TofuTask, "train_set", real)
    monkeypatch.setattr(TofuTask, "texts", lambda self, folder: ["other"])
    assert len({before, after, common.builtin_models_key(recipe, data)}) == 3


def test_concurrent_prepare_data_on_one_cache_waits_and_reuses(tmp_path):
    """Two real `soul prepare-data` processes into one fresh cache: both wait while the entry's
    build lock is held (here by the test), then one builds and the other reuses its entry."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from soulcli.data.io import build_once, read_manifest

    cache = tmp_path / "cache"
    entry = cache / "benchmarks" / common.task_of(load_recipe(MICRO)).builtin_name()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    both_waiting = threading.Event()

    def hold() -> None:  # the test's own "build": wait until both processes wait for it
        assert both_waiting.wait(120)

    holder = threading.Thread(target=build_once, args=(entry, lambda: False, hold, "benchmark", print))
    holder.start()
    while not (entry.parent / f".{entry.name}.build.lock").exists():
        time.sleep(0.01)
    procs = [subprocess.Popen([sys.executable, "-m", "soulcli.cli", "prepare-data", "--recipe", str(MICRO),
                               "--set", f"cache_dir={cache}", "--json"], stdout=subprocess.PIPE,
                              stderr=log.open("w"), text=True, env=env) for log in logs]
    try:
        deadline = time.time() + 120
        while not all("which is building" in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [l.read_text() for l in logs]
            time.sleep(0.1)
        both_waiting.set()
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        both_waiting.set()
        holder.join()
        for p in procs:
            p.kill() if p.poll() is None else None
    assert [p.returncode for p in procs] == [0, 0], [l.read_text() for l in logs]
    text = [log.read_text() for log in logs]
    assert sum("Building the built-in benchmark" in t for t in text) == 1, text
    assert sum(f"reused cached benchmark {entry} built by another process" in t for t in text) == 1, text
    assert {json.loads(o)["path"] for o in outs} == {str(entry)}
    manifest = read_manifest(entry)
    assert manifest["counts"]["full"] == 80
    assert manifest["content_hash"] == common.data_fingerprint(entry, load_recipe(MICRO))
    assert len(tofu.load_split(entry, "forget10")) == 8
