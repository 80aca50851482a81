"""`soul unlearn --dry-run`: a recipe checked and sized without weights (no network, no data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# Llama-2-7B's published config.json: hidden 4096, MLP 11008, 32 layers, 32 heads (no GQA), vocab 32000
H, I, L, V = 4096, 11008, 32, 32000
LLAMA2_7B = 6_738_415_616  # the count Meta and the hub report
LAYER = 4 * H * H + 3 * H * I + 2 * H  # q, k, v, o + gate, up, down + two RMSNorm weights
assert 2 * V * H + L * LAYER + H == LLAMA2_7B  # embeddings + lm_head, layers, final norm
LORA_R8_QV = L * 2 * 8 * (H + H)  # r 8 on q_proj and v_proj: A (r x in) and B (out x r)

# activations of 2 sequences (1 forget + 1 retain) of 512 tokens under gradient checkpointing,
# bf16 compute: each layer's input kept, one layer's 7h + 2h_kv + 4i live, logits bf16 + fp32
TOKENS = 2 * 512
ACTIVATIONS = TOKENS * ((L * H + 7 * H + 2 * H + 4 * I) * 2 + V * (2 + 4))


def dry(soul, recipe: str, *args: str) -> dict:
    return soul.json("unlearn", "--dry-run", *args, recipe=RECIPES / recipe)


def test_full_parameter_fsdp_recipe_on_4_gpus(soul):
    out = dry(soul, "llama2_tofu_sophia.yaml", "--gpus", "4")
    assert out["valid"] and out["parameters"] == out["trainable_parameters"] == LLAMA2_7B
    assert (out["strategy"], out["precision"], out["gpus"]) == ("fsdp", "bf16-mixed", 4)
    assert out["optimizer"] == {"name": "sophiag", "curvature": "empirical_fisher"}
    # 400 forget items, 1 per GPU x 4 GPUs per step, 5 epochs: SOUL's 500 steps
    assert out["forget_items"] == 400 and out["steps"] == 500 and out["batch"]["global"] == 4
    shard = lambda nbytes: math.ceil(nbytes / 4)  # noqa: E731
    P = LLAMA2_7B
    assert out["memory_bytes_per_device"] == {
        "weights": shard(4 * P),          # fp32 masters of every parameter
        "autocast_copies": shard(2 * P),  # their bf16 casts kept for the backward
        "gradients": shard(4 * P),
        "ddp_buckets": 0,
        "optimizer_state": shard(4 * P),  # SophiaG: exp_avg
        "curvature": shard(4 * P),        # SophiaG: hessian
        "fsdp_gathered_layers": 2 * LAYER * 4,
        "activations": ACTIVATIONS,
        "total": shard(4 * P) * 4 + shard(2 * P) + 2 * LAYER * 4 + ACTIVATIONS,
    }
    assert out["torchrun"].startswith("torchrun --nproc_per_node 4 -m soulcli.cli unlearn --recipe ")
    assert out["torchrun"].split("--recipe ")[1].split()[0].endswith("llama2_tofu_sophia.yaml")


def test_lora_recipe_on_one_gpu(soul):
    out = dry(soul, "llama2_tofu_sophia_lora.yaml")
    T, F = LORA_R8_QV, LLAMA2_7B
    assert out["trainable_parameters"] == T == 4_194_304
    assert out["parameters"] == F + T
    assert out["steps"] == 500 and out["batch"] == {"per_device": 1, "grad_accum": 4, "global": 4,
                                                    "max_length": 512, "sequences_per_micro_batch": 2}
    memory = out["memory_bytes_per_device"]
    assert memory == {"weights": 4 * T + 2 * F, "autocast_copies": 2 * T, "gradients": 4 * T,
                      "ddp_buckets": 0, "optimizer_state": 4 * T, "curvature": 4 * T,
                      "activations": ACTIVATIONS, "total": 18 * T + 2 * F + ACTIVATIONS}
    assert out["torchrun"].startswith("torchrun --nproc_per_node 1 ")


def test_ddp_on_more_gpus_replicates_and_adds_buckets(soul):
    out = dry(soul, "llama2_tofu_sophia_lora.yaml", "--gpus", "2", "--set", "unlearn.grad_accum=2")
    T = LORA_R8_QV
    assert out["memory_bytes_per_device"]["ddp_buckets"] == 4 * T
    assert out["memory_bytes_per_device"]["weights"] == 4 * T + 2 * LLAMA2_7B  # not sharded
    assert out["steps"] == 500  # 1 x 2 x 2 GPUs: the same 4 items per step
    assert "--set unlearn.grad_accum=2" in out["torchrun"]


def test_every_recipe_problem_at_once(soul):
    res = soul("unlearn", "--dry-run", "--set", "optimizer.name=sophia", "--set", "model.architecture=llama-2-7",
               "--set", "unlearn.epochs=0", recipe=RECIPES / "llama2_tofu_sophia.yaml")
    assert res.exit_code == 2
    for part in ("3 problems", "optimizer.name: unknown optimizer 'sophia'", "unlearn.epochs",
                 "model.architecture: unknown architecture 'llama-2-7' (did you mean 'llama-2-7b'?)"):
        assert part in res.output


def test_a_hub_id_without_config_or_architecture_says_how_to_give_it(soul):
    res = soul("unlearn", "--dry-run", "--set", "model.source=nobody/not-a-cached-model",
               "--set", "model.architecture=null", recipe=RECIPES / "llama2_tofu_sophia.yaml")
    assert res.exit_code == 2
    assert "not in the local Hugging Face cache; set model.architecture" in res.output
    assert "llama-2-7b" in res.output


@pytest.fixture
def config_folder(tmp_path):
    """A config-only model folder: a small Llama with grouped-query attention."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                tie_word_embeddings=False).save_pretrained(tmp_path)
    return tmp_path


def test_a_config_only_folder_with_lora_and_adamw(soul, config_folder):
    out = soul.json("unlearn", "--dry-run", "--set", f"model.source={config_folder}", "--set", "model.adapter=lora",
                    "--set", "optimizer.name=adamw", "--set", "data.max_length=64",
                    "--set", "unlearn.batch_size=3", "--set", "unlearn.retain_batch_size=5")
    h, kv, i, layers, vocab = 64, 32, 160, 3, 1000
    total = 2 * vocab * h + layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h
    r = 8  # q, k, v, o (the schema's default targets): A is r x in, B is out x r
    lora = layers * r * ((h + h) + (h + kv) + (h + kv) + (h + h))
    assert out["model"]["config"] == f"{config_folder}/config.json"
    assert out["parameters"] == total + lora and out["trainable_parameters"] == lora
    memory = out["memory_bytes_per_device"]
    assert memory["optimizer_state"] == 2 * 4 * lora and memory["curvature"] == 0  # AdamW: m and v
    assert memory["weights"] == 4 * (total + lora)  # fp32: the micro recipe's float32 model
    # no checkpointing, fp32: every layer's 7h + 2h_kv + 4i, logits fp32 + fp32 log-softmax
    assert memory["activations"] == 8 * 64 * (layers * (7 * h + 2 * kv + 4 * i) * 4 + vocab * 8)


def test_a_sequence_longer_than_the_model_takes_is_refused(soul, config_folder):
    res = soul("unlearn", "--dry-run", "--set", f"model.source={config_folder}", "--set", "data.max_length=512")
    assert res.exit_code == 2
    assert "data.max_length: 512 tokens is more than the model's max_position_embeddings (256)" in res.output
