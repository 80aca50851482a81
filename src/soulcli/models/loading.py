"""Loading any causal LM (a local HF folder or a hub id), tokenizer fixes, and adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from soulcli.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_path(name: str, marker: str = "config.json") -> str:
    """A local folder with ``marker`` (config.json), or a hub id; anything else is a user error."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            raise UserError(
                f"model folder '{path}' has no {marker}; point to a folder written by "
                "save_pretrained (e.g. a run's model/ folder)"
            )
        return str(path)
    if path.exists():
        raise UserError(f"model path '{path}' is a file; pass the folder that holds config.json")
    if _looks_like_hub_id(name):
        return name
    raise UserError(
        f"model folder '{name}' does not exist; pass an existing HF model folder or a hub id "
        "like 'org/name' (run `soul finetune` to build the built-in one)"
    )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    where = resolve_model_path(name, "tokenizer_config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except OSError as exc:
        raise UserError(f"could not load a tokenizer from '{name}' ({exc.__class__.__name__}); "
                        "check the path, or the network for a hub id") from None
    return tokenizer


def ensure_pad_token(tokenizer, model=None) -> None:
    """Give the tokenizer a dedicated pad token when it lacks one or reuses EOS.

    Reusing EOS as padding (common for Llama checkpoints) would mask the real end-of-answer
    token out of the loss; a fresh ``<pad>`` id is added and the embeddings resized.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if model is not None:
        model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_model(name: str, dtype: str = "float32", device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer)`` from a folder or hub id, with a safe pad token."""
    from transformers import AutoModelForCausalLM

    where = resolve_model_path(name)
    tokenizer = load_tokenizer(where)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[dtype])
    except OSError as exc:
        raise UserError(f"could not load a model from '{name}' ({exc.__class__.__name__}); "
                        "check the path, or the network for a hub id") from None
    ensure_pad_token(tokenizer, model)
    return model.to(device), tokenizer


def apply_adapter(model, adapter: str, lora: Any | None = None):
    """Full-parameter training returns the model as is; ``lora`` wraps it with peft LoRA."""
    if adapter == "full":
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        raise UserError(
            f"model.lora.target_modules: {', '.join(missing)} not found in the model; "
            f"it has e.g. {', '.join(sorted(n for n in names if n.endswith('proj'))[:8])}"
        )
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def export_model(model, tokenizer, out_dir: Path) -> None:
    """Save as a plain HF model; a LoRA model is merged (its adapter is saved in ``adapter/``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(out_dir / "adapter")
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out_dir, safe_serialization=True)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
