"""The built-in model: a small Llama-architecture causal LM and a BPE tokenizer trained on
the benchmark text, both saved in plain Hugging Face format (loadable with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and no soulcli code)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2, bos: bool = True):
    """Train a byte-level BPE tokenizer (``tokenizers`` library) on ``texts``.

    Special tokens: ``<unk>`` 0, ``<s>`` (BOS) 1, ``</s>`` (EOS) 2, ``<pad>`` 3. Like Llama's, the
    tokenizer itself puts BOS before each sequence (its post-processor; ``bos=False``: none, for
    the toxicity classifier), so every encoder that asks for the tokenizer's special tokens gets it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )


def builtin_config(vocab_size: int, hidden_size: int = 192, num_layers: int = 4, num_heads: int = 4,
                   intermediate_size: int = 512, max_position_embeddings: int = 256, **token_ids: int):
    """The built-in model's ``LlamaConfig`` (``token_ids``: ``bos_token_id`` ... of its tokenizer)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        **token_ids,
    )


def build_model(
    tokenizer,
    hidden_size: int = 192,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 256,
    seed: int = 0,
):
    """A randomly initialised ``LlamaForCausalLM`` sized for the tokenizer (a few M parameters)."""
    from transformers import LlamaForCausalLM

    config = builtin_config(len(tokenizer), hidden_size, num_layers, num_heads, intermediate_size,
                            max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_pretrained(model, tokenizer, out_dir: Path) -> None:
    """Save a model (safetensors) and its tokenizer side by side."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
