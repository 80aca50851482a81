"""Known model architectures, and the config ``soul unlearn --dry-run`` sizes a recipe's model by.

A dry run needs the model's ``config.json`` only, never its weights. It takes, in this order:
the built-in model's config (``model.source: builtin``, from the recipe's architecture keys);
a local folder's ``config.json`` (a config-only folder is enough); a hub id's ``config.json``
from the local Hugging Face cache; else the family that ``model.architecture`` names, from
:data:`FAMILIES`. A real run always loads ``model.source`` itself.

:data:`FAMILIES` is a built-in table of the published ``config.json`` values that set the
parameter count and activation sizes of a few common families (the hub repos named beside
each); it is not read from the hub, and holds nothing else of those configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soulcli.errors import UserError

_LLAMA2 = dict(model_type="llama", vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
               tie_word_embeddings=False)

#: family -> the ``config.json`` keys that size it (a built-in table: published values, not fetched)
FAMILIES: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-2-7b-hf, -chat-hf (TOFU's and SOUL's target: locuslab/tofu_ft_llama2-7b)
    "llama-2-7b": dict(_LLAMA2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32),
    # meta-llama/Llama-2-13b-hf
    "llama-2-13b": dict(_LLAMA2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40),
    # meta-llama/Meta-Llama-3-8B, -Instruct
    "llama-3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                       tie_word_embeddings=False),
    # mistralai/Mistral-7B-v0.1, -Instruct-v0.1
    "mistral-7b": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=4096,
                       tie_word_embeddings=False),
    # microsoft/Phi-3-mini-4k-instruct
    "phi-3-mini": dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
}


def family_config(name: str):
    """The transformers config of a known family (:data:`FAMILIES`)."""
    from transformers import AutoConfig

    values = dict(FAMILIES[name])
    return AutoConfig.for_model(values.pop("model_type"), **values)


def dry_run_config(source: str, architecture: str | None, trust_remote_code: bool = False) -> tuple[Any, str]:
    """``(config, where it came from)`` for a model folder or hub id, without its weights:
    the folder's config.json, a hub id's cached config.json, else ``architecture``'s family."""
    from transformers import AutoConfig

    from soulcli.models.loading import _looks_like_hub_id, check_model_folder, resolve_model_path

    where = resolve_model_path(source)
    if Path(where).is_dir():
        check_model_folder(where, trust_remote_code)
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code), f"{where}/config.json"
    if _looks_like_hub_id(where):
        try:
            config = AutoConfig.from_pretrained(where, local_files_only=True, trust_remote_code=trust_remote_code)
            return config, f"{where} (config.json from the local Hugging Face cache)"
        except (OSError, ValueError):
            pass
    if architecture is not None:
        return family_config(architecture), f"model.architecture {architecture} (soulcli's table of known families)"
    raise UserError(f"--dry-run needs the config.json of model.source '{source}', which is not in the local "
                    "Hugging Face cache; set model.architecture to a known family "
                    f"({', '.join(FAMILIES)}), or set model.source to a folder holding its config.json")
