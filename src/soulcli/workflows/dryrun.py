"""``soul unlearn --dry-run``: check a recipe and size its run without loading any weights.

Readable top to bottom: the model's config (:func:`soulcli.models.families.dry_run_config`),
the model built on the meta device with the recipe's adapter (shapes only: exact parameter
counts, LoRA's trainable ones included), the steps the batch plan makes on N devices, the
memory per device (:mod:`soulcli.engine.footprint`) and the ``torchrun`` command line.
"""

from __future__ import annotations

import shlex
from typing import Any

import torch

from soulcli.engine import footprint
from soulcli.engine.progress import Reporter
from soulcli.engine.sampling import plan_unlearning
from soulcli.recipe import Recipe
from soulcli.workflows import common



def _size(nbytes: int) -> str:
    """``nbytes`` in binary units: ``12.57 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.2f} {unit}"
    return f"{nbytes} B"


def model_config(recipe: Recipe) -> tuple[Any, str]:
    """``(config, where it came from)`` of the recipe's target model, weights never read."""
    m = recipe.model
    if m.source == "builtin":
        from soulcli.models.builtin import builtin_config

        config = builtin_config(m.vocab_size, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size)
        return config, "the built-in model's keys (model.vocab_size is the most its trained tokenizer has)"
    from soulcli.models.families import dry_run_config

    return dry_run_config(m.source, m.architecture, m.trust_remote_code)


def meta_model(recipe: Recipe, config: Any) -> torch.nn.Module:
    """The model of ``config`` on the meta device (no memory), with the recipe's adapter."""
    from transformers import AutoModelForCausalLM

    from soulcli.models.loading import apply_adapter

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
        return apply_adapter(model, recipe.model.adapter, recipe.model.lora, recipe.model.trainable)


def sequences_per_micro_batch(recipe: Recipe) -> int:
    """Sequences forwarded before one backward, at most: the forget batch (again with refusal
    or alternate answers where the objective uses them) and the retain batch."""
    from soulcli.objectives import OBJECTIVES

    u, objective = recipe.unlearn, OBJECTIVES[recipe.unlearn.objective]
    forget = u.batch_size * (1 + objective.uses_refusal + objective.uses_alternate)
    retain = (u.retain_batch_size or u.batch_size) if objective.uses_retain and u.retain_weight > 0 else 0
    return forget + retain


def planned_steps(recipe: Recipe, devices: int) -> int | None:
    """Optimizer steps of the run on ``devices`` ranks (None when the forget set's size is only
    known from its data)."""
    u = recipe.unlearn
    n_forget = common.task_of(recipe).forget_size()
    if n_forget is None:
        return u.max_steps
    return len(plan_unlearning(n_forget, 0, u.batch_size * u.grad_accum, 1, u.epochs, recipe.seed,
                               False, 0, devices, u.max_steps))


def torchrun_command(args: list[str], devices: int) -> str:
    """The command line that runs ``soul unlearn ARGS`` on ``devices`` GPUs of one machine."""
    return shlex.join(["torchrun", "--nproc_per_node", str(devices), "-m", "soulcli.cli", "unlearn", *args])


def run_dry_run(recipe: Recipe, reporter: Reporter, devices: int, args: list[str] = ()) -> dict[str, Any]:
    """The whole ``soul unlearn --dry-run``: validate and size the run on ``devices`` GPUs;
    returns the --json result. ``args``: the command's own options, for the torchrun line."""
    from soulcli.models.precision import resolve
    from soulcli.optim import OPTIMIZERS

    config, config_from = model_config(recipe)
    problems = []
    positions = getattr(config, "max_position_embeddings", None)
    if recipe.model.source != "builtin" and positions is not None and recipe.data.max_length > positions:
        problems.append(f"data.max_length: {recipe.data.max_length} tokens is more than the model's "
                        f"max_position_embeddings ({positions}); lower data.max_length")
    if problems:
        from soulcli.recipe import RecipeError

        raise RecipeError(f"recipe '{recipe.name}'", problems)
    model = meta_model(recipe, config)
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)

    u, t = recipe.unlearn, recipe.train
    precision = resolve(t.precision, recipe.model.dtype)
    sequences = sequences_per_micro_batch(recipe)
    optimizer = OPTIMIZERS[recipe.optimizer.name]
    memory = footprint.estimate(model, config, optimizer, precision=precision, dtype=recipe.model.dtype,
                                gradient_checkpointing=t.gradient_checkpointing, strategy=t.strategy,
                                devices=devices, sequences=sequences, max_length=recipe.data.max_length)
    steps = planned_steps(recipe, devices)
    result = {
        "valid": True,
        "recipe": recipe.name,
        "model": {"source": recipe.model.source, "config": config_from,
                  "model_type": getattr(config, "model_type", None), "adapter": recipe.model.adapter},
        "parameters": total,
        "trainable_parameters": trainable,
        "optimizer": {"name": recipe.optimizer.name,
                      "curvature": recipe.optimizer.curvature or optimizer.default_curvature},
        "precision": precision,
        "gradient_checkpointing": t.gradient_checkpointing,
        "strategy": t.strategy,
        "gpus": devices,
        "batch": {"per_device": u.batch_size, "grad_accum": u.grad_accum,
                  "global": u.batch_size * u.grad_accum * devices, "max_length": recipe.data.max_length,
                  "sequences_per_micro_batch": sequences},
        "forget_items": common.task_of(recipe).forget_size(),
        "steps": steps,
        "memory_bytes_per_device": memory,
        "torchrun": torchrun_command(list(args), devices),
    }
    _report(result, reporter)
    return result


def _report(result: dict[str, Any], reporter: Reporter) -> None:
    if reporter.quiet:
        return
    from rich.table import Table

    table = Table(title=f"dry run of {result['recipe']}: {result['gpus']} GPU(s), {result['strategy']}, "
                        f"{result['precision']}")
    table.add_column("")
    table.add_column("value", justify="right")
    b = result["batch"]
    rows = [("model", f"{result['model']['source']} ({result['model']['model_type']})"),
            ("config from", result["model"]["config"]),
            ("parameters", f"{result['parameters']:,}"),
            ("trainable parameters", f"{result['trainable_parameters']:,} ({result['model']['adapter']})"),
            ("batch per device x accumulation x GPUs", f"{b['per_device']} x {b['grad_accum']} x {result['gpus']}"
                                                       f" = {b['global']}, {b['max_length']} tokens"),
            ("steps", "unknown until the data is read" if result["steps"] is None else f"{result['steps']:,}")]
    rows += [(f"memory per device: {name.replace('_', ' ')}", _size(value))
             for name, value in result["memory_bytes_per_device"].items() if value]
    for name, value in rows:
        table.add_row(name, value)
    reporter.console.print(table)
    reporter.info(f"run it with: {result['torchrun']}")
