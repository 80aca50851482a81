"""Loading any causal LM or sequence classifier (a local HF folder or a hub id), and adapters."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from soulcli.data.io import content_hash
from soulcli.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


ADAPTER_CONFIG = "adapter_config.json"  # a LoRA adapter folder (model.save: adapter)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_path(name: str, marker: str = "config.json") -> str:
    """A local folder with ``marker`` (config.json), or a hub id; anything else is a user error."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / marker).is_file() and not (path / ADAPTER_CONFIG).is_file():
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


HUB_TIMEOUT_S = 10.0


def hub_cache_only(name: str) -> bool:
    """Whether hub id ``name`` must load from the local Hugging Face cache only; a hub id that
    cannot load at all fails here, fast, with the reason in one line.

    transformers retries an unreachable hub five times with backoff (over a minute per file)
    before it gives up; soulcli asks once instead: one metadata request for its config.json (no
    retries, :data:`HUB_TIMEOUT_S`). Unreachable with a cached copy: load the copy (``True``).
    With ``HF_HUB_OFFLINE=1`` nothing is requested: a cached copy loads, none is an error.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return True
        raise UserError(f"'{name}' is a hub id with no copy in the local Hugging Face cache and "
                        f"HF_HUB_OFFLINE is set; download it where the network allows (`hf download "
                        f"{name}`) or pass a local model folder")
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=HUB_TIMEOUT_S)
    except GatedRepoError:  # a RepositoryNotFoundError too: first
        raise UserError(f"hub repo '{name}' is gated; accept its terms on huggingface.co and log in "
                        "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise UserError(f"hub repo '{name}' does not exist or is private (log in with `hf auth login` "
                        "or HF_TOKEN for a private one); check the name, or pass a local folder") from None
    except RemoteEntryNotFoundError:
        raise UserError(f"hub repo '{name}' has no config.json; it is not a transformers model") from None
    except Exception as exc:  # no network, DNS, proxy, timeout: whatever the HTTP client raises
        if cached:
            return True
        detail = " ".join(str(exc).split())[:160]
        raise UserError(f"cannot reach the Hugging Face hub for '{name}' ({exc.__class__.__name__}: "
                        f"{detail}) and no copy is cached; check the network, or pass a local "
                        "model folder") from None
    return False


#: The files a model folder's numbers depend on: config, tokenizer and weights (top level).
MODEL_FILES = re.compile(r"(generation_)?config\.json|adapter_config\.json|tokenizer.*|special_tokens_map\.json"
                         r"|added_tokens\.json|vocab\..*|merges\.txt|chat_template\.jinja"
                         r"|.*\.(safetensors|bin|pt|pth)|.*\.(safetensors|bin)\.index\.json")


def model_fingerprint(folder: str | Path) -> str:
    """The content key of a model folder: sha256 over its :data:`MODEL_FILES` (names
    included, :func:`~soulcli.data.io.content_hash`). What soulcli writes beside a model
    (eval.json, cached reference values, training records) is left out, so evaluating a model
    keeps its fingerprint. It reads every weight byte (about a second per GB)."""
    folder = Path(folder)
    return content_hash(folder, [p.name for p in folder.iterdir() if p.is_file() and MODEL_FILES.fullmatch(p.name)])


TRUST_HINT = "set model.trust_remote_code: true in the recipe (only for a model whose code you trust)"


def check_model_folder(where: str, trust_remote_code: bool = False) -> None:
    """Refuse a local model folder that would run its own Python code (an ``auto_map`` in
    config.json or tokenizer_config.json, or a ``model_type`` transformers does not know)
    unless ``trust_remote_code``; a config.json that is not a JSON object is refused too.
    A hub id is checked by transformers itself (it is always called with the flag given)."""
    folder = Path(where)
    if not folder.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:  # UnicodeDecodeError and JSONDecodeError included
            raise UserError(f"{file} is not valid JSON ({exc.__class__.__name__}); re-save the "
                            "model with save_pretrained") from None
        if not isinstance(config, dict):
            raise UserError(f"{file} must hold a JSON object, got {type(config).__name__}; "
                            "re-save the model with save_pretrained")
        if "auto_map" in config and not trust_remote_code:
            raise UserError(f"model folder '{folder}' ships its own code ({name} has auto_map), "
                            f"which soulcli does not run by default; {TRUST_HINT}")
        if name == "config.json" and not trust_remote_code:
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

            model_type = config.get("model_type")
            if not isinstance(model_type, str):
                raise UserError(f"{file} has no model_type; re-save the model with save_pretrained")
            if model_type not in CONFIG_MAPPING_NAMES:
                raise UserError(f"model folder '{folder}': transformers does not know model_type "
                                f"{model_type!r} (custom code or a newer transformers); {TRUST_HINT}, "
                                "or upgrade transformers")


def _from_pretrained(what: str, name: str, load: Callable[[], Any]) -> Any:
    """``load()`` (a transformers ``from_pretrained``), its failures on a bad folder or an
    unreachable hub as one UserError line."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    try:
        return load()
    except (OSError, ValueError, TypeError, RuntimeError, AssertionError, SafetensorError,
            StrictDataclassError) as exc:  # AssertionError: torch's checks of the config's sizes
        detail = " ".join(str(exc).split())[:200]
        if "trust_remote_code" in detail:
            raise UserError(f"{what} '{name}' needs its own code to load; {TRUST_HINT}") from None
        raise UserError(f"could not load a {what} from '{name}' ({exc.__class__.__name__}: {detail}); "
                        "check the folder (written by save_pretrained?), or the network for a hub id") from None


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of a model folder or hub id; custom tokenizer code only when trusted."""
    from transformers import AutoTokenizer

    where = resolve_model_path(name, "tokenizer_config.json")
    check_model_folder(where, trust_remote_code)
    cache_only = _cache_only(where)
    return _from_pretrained("tokenizer", name, lambda: AutoTokenizer.from_pretrained(
        where, trust_remote_code=trust_remote_code, local_files_only=cache_only))


def _cache_only(where: str) -> bool:
    """:func:`hub_cache_only` for a hub id; a local folder is read as it is."""
    return False if Path(where).is_dir() else hub_cache_only(where)


def _load_checked(auto, what: str, name: str, dtype: str, trust_remote_code: bool):
    """``(model, tokenizer)`` of a folder or hub id through the transformers ``auto`` class,
    refusing code that is not trusted and weights that do not fit the config."""
    where = resolve_model_path(name)
    check_model_folder(where, trust_remote_code)
    cache_only = _cache_only(where)
    tokenizer = load_tokenizer(where, trust_remote_code)
    model, info = _from_pretrained(what, name, lambda: auto.from_pretrained(
        where, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, output_loading_info=True,
        local_files_only=cache_only))
    unfit = sorted(info.get("missing_keys") or []) + sorted(info.get("unexpected_keys") or [])
    if unfit:  # transformers would go on with freshly initialised (or dropped) weights
        raise UserError(f"the weights of {what} '{name}' do not fit its config.json "
                        f"({len(info.get('missing_keys') or [])} missing, "
                        f"{len(info.get('unexpected_keys') or [])} unexpected, e.g. {unfit[0]}); "
                        "re-save the model with save_pretrained")
    return model, tokenizer


def load_model(name: str, dtype: str = "float32", device: str | torch.device = "cpu",
               trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` from a folder or hub id as they are: no token is added and no
    embedding resized (padding uses an existing id, :func:`soulcli.data.encode.pad_id`), so a
    saved model keeps the source's exact vocabulary and shapes. A model that needs its own code
    is refused unless ``trust_remote_code`` (model.trust_remote_code). A LoRA adapter folder
    (``adapter_config.json``, no ``config.json``) loads onto the base its config records,
    merged: the model the run trained, the tokenizer saved beside the adapter."""
    from transformers import AutoModelForCausalLM

    folder = Path(name).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file() and (folder / ADAPTER_CONFIG).is_file():
        return _load_adapter(folder, dtype, device, trust_remote_code)
    model, tokenizer = _load_checked(AutoModelForCausalLM, "model", name, dtype, trust_remote_code)
    return model.to(device), tokenizer


def _load_adapter(folder: Path, dtype: str, device: str | torch.device, trust_remote_code: bool):
    from peft import PeftModel

    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise UserError(f"{folder / ADAPTER_CONFIG} does not record its base model ({exc.__class__.__name__}); "
                        "re-save the adapter with save_pretrained") from None
    if not isinstance(base, str) or not (Path(base).expanduser().is_dir() or _looks_like_hub_id(base)):
        raise UserError(f"adapter folder '{folder}': its base model '{base}' is not there any more; "
                        f"put it back, or set base_model_name_or_path in {ADAPTER_CONFIG}")
    model, base_tokenizer = load_model(base, dtype, "cpu", trust_remote_code)
    tokenizer = load_tokenizer(str(folder), trust_remote_code) if (folder / "tokenizer_config.json").is_file() \
        else base_tokenizer
    model = _from_pretrained("LoRA adapter", str(folder), lambda: PeftModel.from_pretrained(model, str(folder)))
    return model.merge_and_unload().to(device), tokenizer


def load_classifier(name: str, device: str | torch.device = "cpu", trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` of a sequence classifier (``AutoModelForSequenceClassification``,
    e.g. ``unitary/toxic-bert``) in eval mode, float32, with the same checks as :func:`load_model`."""
    from transformers import AutoModelForSequenceClassification

    model, tokenizer = _load_checked(AutoModelForSequenceClassification, "classifier", name, "float32",
                                     trust_remote_code)
    return model.to(device).eval(), tokenizer


def apply_adapter(model, adapter: str, lora: Any | None = None, trainable: Sequence[str] = ()):
    """Full-parameter training returns the model with the parameters matching ``trainable``
    (regexes searched in the parameter names; empty: all) left trainable, the rest frozen, as
    open-unlearning's ``trainable_params_regex`` and WMDP's RMU (which updates the
    ``mlp.down_proj`` weights of layers l-2..l) choose them; ``lora`` wraps it with peft LoRA."""
    if adapter == "full":
        if trainable:
            _freeze_except(model, trainable)
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


def _freeze_except(model, patterns: Sequence[str]) -> None:
    compiled = [re.compile(p) for p in patterns]  # the recipe checked they compile
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p.pattern for p in compiled if not any(p.search(n) for n in names)]
    if unmatched:
        raise UserError(f"model.trainable: {', '.join(map(repr, unmatched))} matches no parameter; "
                        f"the model has e.g. {', '.join(names[:3])}")
    for name, param in model.named_parameters():
        param.requires_grad_(any(p.search(name) for p in compiled))


def export_model(model, tokenizer, out_dir: Path, save: str = "both") -> None:
    """Save ``model`` and its tokenizer in Hugging Face format. A LoRA model (``model.save``) is
    saved merged (a plain HF model), as its adapter alone (``adapter_config.json`` recording
    the base's absolute path or hub id: :func:`load_model` loads it onto that base), or
    ``both``: merged, with the adapter in ``adapter/``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not hasattr(model, "merge_and_unload"):
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        for config in model.peft_config.values():
            base = Path(str(config.base_model_name_or_path)).expanduser()
            if base.is_dir():  # a path valid from any folder
                config.base_model_name_or_path = str(base.resolve())
        if save in ("both", "adapter"):
            model.save_pretrained(out_dir / "adapter" if save == "both" else out_dir)
        if save in ("both", "merged"):
            import copy

            copy.deepcopy(model).merge_and_unload().save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
