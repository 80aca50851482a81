"""Tiny random-initialised models of real architectures, for checks that must hold on every
family (scoring's body + output-layer split, generation's positions and caches)."""

from __future__ import annotations

import torch


def tiny_model(kind: str, tokenizer, window: int | None = None):
    """A random 2-layer, 32-wide model of a real architecture (``kind``: :data:`TINY_KINDS`)
    for the tokenizer's vocabulary; Gemma 2 with its logits soft-capped at 2 (so the cap
    changes every logit), Granite with ``logits_scaling`` (a head the output layer alone does
    not reproduce). ``window``: the sliding attention window of Mistral and Gemma 2 (default:
    their configs', 4096)."""
    import transformers as tf

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    width = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                 initializer_range=0.3, **ids)
    llama_like = dict(intermediate_size=64, num_key_value_heads=2, **width)
    windowed = dict(sliding_window=window) if window else {}
    config = {
        "llama": lambda: tf.LlamaConfig(**llama_like),
        "mistral": lambda: tf.MistralConfig(**windowed, **llama_like),
        "qwen2": lambda: tf.Qwen2Config(**llama_like),
        "gemma2": lambda: tf.Gemma2Config(head_dim=8, final_logit_softcapping=2.0, **windowed, **llama_like),
        "granite": lambda: tf.GraniteConfig(logits_scaling=8.0, **llama_like),
        "phi": lambda: tf.PhiConfig(intermediate_size=64, partial_rotary_factor=0.5, **width),
        "gpt_neox": lambda: tf.GPTNeoXConfig(intermediate_size=64, rotary_pct=0.25, **width),
        "opt": lambda: tf.OPTConfig(ffn_dim=64, word_embed_proj_dim=32, **width),
        "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, initializer_range=0.3, **ids),
    }[kind]()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return tf.AutoModelForCausalLM.from_config(config).eval()


TINY_KINDS = ("llama", "mistral", "qwen2", "gemma2", "granite", "phi", "gpt_neox", "opt", "gpt2")
