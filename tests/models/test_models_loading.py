"""Loading models as users keep them: a hub id that cannot load fails fast in one line, and a
LoRA run's ``model.save`` (merged, adapter, both) loads back as the model it trained."""

from __future__ import annotations

import json
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch

from soulcli.errors import UserError
from soulcli.models.builtin import build_model, train_tokenizer
from soulcli.models.loading import apply_adapter, export_model, hub_cache_only, load_model
from soulcli.recipe import LoraConfig, RecipeError, build_recipe

HUB_ID = "soulcli-tests/no-such-model"


def _fake_cache(root: Path, repo: str) -> None:
    """The hub cache layout try_to_load_from_cache reads: refs/main -> snapshots/<rev>/config.json."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (folder / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """An empty hub cache of the test's own; requests fail as without a network, and are counted."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def unreachable(url, timeout=None, **_):
        calls.append(timeout)
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    return tmp_path / "hub", calls


def test_an_unreachable_hub_fails_at_once_with_the_reason(hub):
    _, calls = hub
    with pytest.raises(UserError) as err:
        load_model(HUB_ID)
    assert str(err.value) == (f"cannot reach the Hugging Face hub for '{HUB_ID}' (ConnectionError: [Errno -2] "
                              "Name or service not known) and no copy is cached; check the network, or "
                              "pass a local model folder")
    assert calls == [10.0]  # one request, no retries


def test_offline_mode_requests_nothing_and_loads_only_cached_copies(hub, monkeypatch):
    cache, calls = hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=f"^'{HUB_ID}' is a hub id with no copy in the local Hugging Face "
                                        "cache and HF_HUB_OFFLINE is set; download it"):
        hub_cache_only(HUB_ID)
    _fake_cache(cache, HUB_ID)
    assert hub_cache_only(HUB_ID) is True
    assert calls == []


def test_an_unreachable_hub_with_a_cached_copy_loads_the_copy(hub):
    cache, calls = hub
    _fake_cache(cache, HUB_ID)
    assert hub_cache_only(HUB_ID) is True and len(calls) == 1


def test_a_missing_hub_repo_is_one_line_within_seconds(monkeypatch, tmp_path):
    """The real request (the network, or its absence, as the machine has it): one UserError."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        load_model(HUB_ID)
    assert time.perf_counter() - start < 30
    assert "\n" not in str(err.value) and HUB_ID in str(err.value)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and its tokenizer, saved as a plain HF folder."""
    texts = ["Ada Quill writes mystery novels set in Lisbon.", "Bram Oster writes poetry about Oslo."] * 4
    tokenizer = train_tokenizer(texts, vocab_size=300, min_frequency=1)
    model = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    folder = tmp_path_factory.mktemp("base")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _lora_model(base_dir: Path):
    model, tokenizer = load_model(str(base_dir))
    model = apply_adapter(model, "lora", LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B = 0 at init: give the adapter an effect
                param.copy_(torch.randn_like(param) * 0.5)
    return model.eval(), tokenizer


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("save", ["adapter", "merged", "both"])
def test_each_save_mode_loads_back_as_the_trained_model(base_dir, tmp_path, save):
    model, tokenizer = _lora_model(base_dir)
    ids = torch.tensor([tokenizer("Ada Quill writes poetry.")["input_ids"]])
    want = _logits(model, ids)
    out = tmp_path / "model"
    export_model(model, tokenizer, out, save)
    names = {p.name for p in out.iterdir()}
    assert ("config.json" in names) == (save != "adapter")
    assert ("adapter_config.json" in names) == (save == "adapter")
    assert ("adapter" in names) == (save == "both")
    if save == "adapter":
        recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert recorded == str(base_dir.resolve())
        weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        assert weights < (base_dir / "model.safetensors").stat().st_size / 4
    loaded, loaded_tokenizer = load_model(str(out))
    assert len(loaded_tokenizer) == len(tokenizer)
    torch.testing.assert_close(_logits(loaded, ids), want, atol=1e-5, rtol=0)
    base, _ = load_model(str(base_dir))
    assert (_logits(base, ids) - want).abs().max() > 1e-2  # the adapter changed the model


def test_an_adapter_whose_base_is_gone_is_refused(base_dir, tmp_path):
    model, tokenizer = _lora_model(base_dir)
    export_model(model, tokenizer, tmp_path / "model", "adapter")
    config = tmp_path / "model" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(UserError, match=r"its base model '.*gone' is not there any more"):
        load_model(str(tmp_path / "model"))


def test_model_save_is_a_recipe_key_and_adapter_needs_lora():
    assert build_recipe({}).model.save == "both"
    assert build_recipe({"model": {"adapter": "lora", "save": "adapter"}}).model.save == "adapter"
    with pytest.raises(RecipeError) as err:
        build_recipe({"model": {"save": "adapter"}})
    assert err.value.problems == ["model.save: adapter saves a LoRA adapter; set model.adapter: lora, or "
                                  "model.save: merged for a full-parameter run's weights"]
    with pytest.raises(RecipeError, match="model.save"):
        build_recipe({"model": {"adapter": "lora", "save": "weights"}})
