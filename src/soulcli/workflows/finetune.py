"""finetune: train the target model (forget + retain) and the retain / retrain reference (retain
only), on the sets the task names (:meth:`soulcli.tasks.Task.train_set`).

Both start from the same base (the built-in random-init Llama, or any HF folder / hub id). On
QA records only answer tokens are in the loss; on raw text every token, in chunks.

This module trains; it imports no other workflow but :mod:`common`. Resolving a model (and
training it here when it is missing) is :mod:`soulcli.workflows.artifacts`' job, and the
`soul finetune` command, which ends by evaluating the target, is
:func:`soulcli.workflows.evaluate.run_finetune_command`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from soulcli.data.encode import answer_mask, pad_batch, pad_id
from soulcli.data.io import atomic_dir, build_once, check_writable_dir, write_json, write_jsonl
from soulcli.engine import checkpoint
from soulcli.engine.checkpoint import Checkpoints
from soulcli.engine.distributed import (DistContext, full_state_dict, global_totals, init_distributed, sharded,
                                        wrap_model)
from soulcli.engine.loop import LoopResult, MicroBatches, Training, make_scheduler, train
from soulcli.engine.progress import Reporter
from soulcli.engine.rundir import versions
from soulcli.engine.sampling import epoch_batches, split
from soulcli.errors import UserError
from soulcli.models.loading import DTYPES
from soulcli.models.precision import store
from soulcli.objectives import ObjectiveOutput
from soulcli.recipe import FinetuneConfig, Recipe, dump_recipe
from soulcli.tasks import TrainSet, encode_train_set
from soulcli.workflows import common


def adamw(params, lr: float, weight_decay: float, device: torch.device):
    """torch AdamW, fused where the device supports it (about 5x faster than foreach on CPU);
    for parameters that are not fp32 (train.precision bf16-true) or are FSDP shards, soulcli's
    AdamW, the same rule with its state in fp32 (torch keeps the state in the parameters'
    dtype) on the local shards."""
    params = list(params)
    if any(p.dtype != torch.float32 or hasattr(p, "to_local") for p in params):
        from soulcli.optim import build_optimizer

        return build_optimizer("adamw", params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def train_lm(model, tokenizer, train_set: TrainSet, recipe: Recipe, reporter: Reporter,
             description: str, device: torch.device, seed: int,
             checkpoints: Checkpoints | None = None, *, settings: FinetuneConfig | None = None,
             on_step_end=None, dist: DistContext | None = None) -> LoopResult:
    """Supervised finetuning on a task's training set (QA: answer tokens only in the loss;
    ``checkpoints``: where to write them, and the one to resume; engine.checkpoint).

    ``settings`` replace ``recipe.finetune`` (the relearning attack trains with its own, without
    accumulation); their ``max_steps`` cuts the batch plan (the schedule spans what is left);
    ``on_step_end(steps_done)`` runs after each step. The model trains in ``train.precision``
    and is left in ``model.dtype``.
    With ``finetune.grad_accum`` N a step is N micro-batches of ``batch_size`` (the plan's
    batches N times larger, split), each loss weighted by its share of the step's answer
    tokens: the update of the larger batch's token mean. Under torchrun (``dist``) each rank
    trains on its slice of every global batch, its losses weighted by their share of the global
    step's answer tokens (engine.distributed), with ``train.strategy``; under FSDP the model is
    left sharded (gather it with :func:`~soulcli.engine.distributed.full_state_dict`)."""
    ft, dist = settings or recipe.finetune, dist or DistContext()
    accum = recipe.finetune.grad_accum if settings is None else 1
    enc = encode_train_set(tokenizer, common.template_of(recipe), train_set, recipe.data.max_length)
    plan = epoch_batches(len(enc), ft.batch_size * accum, ft.epochs, seed, dist.rank, dist.world_size)[:ft.max_steps]
    autocast = common.prepare_training(recipe, model, reporter)
    wrapped = wrap_model(model, dist, device, recipe.train.strategy)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, ft.lr, ft.weight_decay, device)
    sched = make_scheduler(opt, "cosine", len(plan), ft.warmup_steps, ft.min_lr_ratio)
    n_tok = sum(sum(1 for t in e.labels if t != -100) for e in enc)
    reporter.info(f"{description}: {len(enc)} sequences, {n_tok} trained tokens per epoch, "
                  f"{ft.epochs} epochs = {len(plan)} steps of {ft.batch_size}"
                  f"{' (finetune.max_steps)' if ft.max_steps is not None and len(plan) == ft.max_steps else ''}")
    common.count_cut(reporter, description, {"training": enc}, recipe.data.max_length)

    def batch(idx: list[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in pad_batch([enc[i] for i in idx], pad_id(tokenizer)).items()}

    def step(idx: list[int]):
        if accum == 1 and not dist.enabled:
            return batch(idx)
        micro = [batch(piece) for piece in split(idx, accum)]
        total = int(global_totals(torch.tensor(sum(int(answer_mask(m["labels"]).sum()) for m in micro)),
                                  dist.world_size))
        return MicroBatches({**m, "share": dist.world_size * answer_mask(m["labels"]).sum() / max(1, total)}
                            for m in micro)

    training = Training(wrapped, opt, forward=nll_forward, scheduler=sched, max_grad_norm=ft.max_grad_norm,
                        log_every=10, checkpoints=checkpoints, autocast=autocast, distributed=dist.enabled)
    result = train(training, (step(idx) for idx in plan), len(plan), reporter, description,
                   on_step_end=on_step_end)
    if not sharded(model):
        store(model, DTYPES[recipe.model.dtype])
    return result


def nll_forward(model, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
    """The language-model loss (mean answer-token NLL, Hugging Face's own) as a step's forward;
    a micro-batch's (``batch["share"]``, its share of the step's answer tokens) is scaled by it."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    loss = out.loss * batch["share"] if "share" in batch else out.loss
    return ObjectiveOutput(loss, {}, [(batch, out.logits)])


def _base_model(recipe: Recipe, data_dir: Path, reporter: Reporter, device: torch.device):
    """The starting point: the built-in random-init Llama (tokenizer trained and cached
    on first use) or a pretrained HF model."""
    from soulcli.models import builtin
    from soulcli.models.loading import DTYPES, load_model, load_tokenizer

    m = recipe.model
    if m.base != "builtin":
        return load_model(m.base, m.dtype, device, m.trust_remote_code)
    tok_dir = common.builtin_model_paths(recipe, data_dir).tokenizer

    def train_tokenizer() -> None:
        reporter.info(f"Training a BPE tokenizer (vocab {m.vocab_size}) on the benchmark text")
        texts = common.task_of(recipe).texts(data_dir)
        t = common.template_of(recipe)
        texts += [t.question_start, t.question_end, t.answer_start]
        tokenizer = builtin.train_tokenizer(texts, m.vocab_size)
        with atomic_dir(tok_dir, overwrite=True) as tmp:
            tokenizer.save_pretrained(tmp)

    build_once(tok_dir, lambda: (tok_dir / "tokenizer_config.json").is_file(), train_tokenizer, "tokenizer",
               reporter.info)
    tokenizer = load_tokenizer(str(tok_dir))
    model = builtin.build_model(tokenizer, m.hidden_size, m.num_layers, m.num_heads,
                                m.intermediate_size, max_position_embeddings=max(256, recipe.data.max_length),
                                seed=recipe.data.seed)
    return model.to(device=device, dtype=DTYPES[m.dtype]), tokenizer


def _train_rank(recipe: Recipe, name: str, data_dir: Path, reporter: Reporter, device: torch.device,
                dist: DistContext, checkpoints: Checkpoints | None = None):
    """Train the ``name`` model on this rank (rank 0 first builds what is missing: the
    tokenizer); the trained model (under FSDP rank 0's a plain copy holding the gathered
    weights), its tokenizer, train set and loop result."""
    train_set = common.task_of(recipe).train_set(data_dir, name, pretrained=recipe.model.base != "builtin")
    if not dist.is_main:
        dist.barrier()
    model, tokenizer = _base_model(recipe, data_dir, reporter, device)
    if dist.is_main:
        dist.barrier()
    n_params = sum(p.numel() for p in model.parameters())
    reporter.info(f"Finetuning the {name} model ({n_params / 1e6:.2f}M parameters) on {train_set.name}")
    result = train_lm(model, tokenizer, train_set, recipe, reporter, f"finetune {name}", device,
                      seed=recipe.seed, checkpoints=checkpoints, dist=dist)
    if sharded(model):
        state = full_state_dict(model)
        if dist.is_main:
            model = _base_model(recipe, data_dir, reporter, device)[0]
            model.load_state_dict(state)
            store(model, DTYPES[recipe.model.dtype])
    return model.eval(), tokenizer, train_set, result


def _train_one(recipe: Recipe, name: str, out_dir: Path, data_dir: Path, reporter: Reporter,
               device: torch.device, checkpoints: Checkpoints | None, replace_ok: bool,
               dist: DistContext | None = None) -> dict:
    """Train the ``name`` model (target or retain) into ``out_dir``, atomically; its record."""
    from soulcli.models.loading import export_model

    with atomic_dir(out_dir, overwrite=replace_ok, log=reporter.info) as tmp:  # locked while training
        model, tokenizer, train_set, result = _train_rank(recipe, name, data_dir, reporter, device,
                                                          dist or DistContext(), checkpoints)
        n_params = sum(p.numel() for p in model.parameters())
        record = {
            "model": name, "task": recipe.task, "split": train_set.name, "items": len(train_set.rows),
            "parameters": n_params,
            "steps": result.steps, "seconds": round(result.seconds, 2),
            "tokens_per_second": round(result.tokens / max(result.seconds, 1e-9), 1),
            "final_loss": result.last.get("loss"), "data": str(data_dir),
            "data_fingerprint": common.data_fingerprint(data_dir, recipe),
        }
        export_model(model, tokenizer, tmp)
        (tmp / "resolved_recipe.yaml").write_text(dump_recipe(recipe))
        write_json(tmp / "training.json", {**record, "versions": versions()})
        write_jsonl(tmp / "metrics.jsonl", result.rows)
    if checkpoints is not None:
        checkpoint.clear(checkpoints)
    reporter.info(f"Saved the {name} model to {out_dir} ({result.seconds:.0f}s, "
                  f"{record['tokens_per_second']:.0f} tokens/s, final loss {record['final_loss']:.4f})")
    return {**record, "path": str(out_dir)}


def run_finetune(recipe: Recipe, reporter: Reporter, which: Sequence[str] = ("target", "retain"),
                 output: Path | None = None, force: bool = True, overwrite: bool = False,
                 resume: bool = False, distributed: bool = False) -> dict[str, dict] | None:
    """Train the requested models; each is saved (atomically) with its training record.

    With ``distributed`` (`soul finetune` under torchrun) every rank trains and rank 0 alone
    builds, writes and returns the records (None elsewhere).

    With ``force=False`` a model already in its folder is reused, not retrained. Under
    ``output``, OUTPUT/target and OUTPUT/retain are checked before any training: an existing
    non-empty one is replaced only with ``overwrite`` and only if soulcli wrote it (a cached
    built-in model, being soulcli's own, is always replaceable). With ``finetune.save_every``
    each model's training writes checkpoints beside its folder; ``resume`` continues those of
    the models that have one (at least one must). Training a cached model takes a lock
    (:func:`build_once`): a second process waits, then reuses what the first trained.
    """
    device = common.setup_runtime(recipe)
    dist, device = init_distributed(device) if distributed else (DistContext(), device)
    if not dist.is_main:
        reporter = Reporter(reporter.console, quiet=True)
        dist.barrier()  # rank 0 builds the benchmark first
    data_dir = common.benchmark_dir(recipe, reporter)
    if dist.is_main:
        dist.barrier()
    paths = common.builtin_model_paths(recipe, data_dir)
    plans = {
        "target": output / "target" if output else paths.target,
        "retain": output / "retain" if output else paths.retain,
    }
    replace_ok = overwrite or output is None
    todo = [name for name in which if force or not (plans[name] / "training.json").is_file()]
    for name in todo:  # before any training
        check_writable_dir(plans[name], overwrite=replace_ok)
    resumable = {name for name in todo if checkpoint.latest(checkpoint.checkpoint_dir(plans[name]))}
    if resume and not resumable:
        raise UserError(f"--resume: no checkpoint of the {' or '.join(which)} model to continue; "
                        "run without --resume (set finetune.save_every to write checkpoints)")
    checkpoints = {name: checkpoint.prepare(plans[name], recipe.finetune.save_every,
                                            common.checkpoint_key(recipe, f"finetune {name}"),
                                            resume and name in resumable, dist.enabled) for name in todo}
    dist.barrier()  # every rank has its plan before rank 0 writes
    if not dist.is_main:  # train in step with rank 0, which writes
        for name in todo:
            _train_rank(recipe, name, data_dir, reporter, device, dist)
        return None
    results: dict[str, dict] = {}
    for name in which:
        out_dir = plans[name]

        def done(name: str = name, out_dir: Path = out_dir) -> bool:
            return name not in todo or (not force and (out_dir / "training.json").is_file())

        def build(name: str = name, out_dir: Path = out_dir) -> None:
            results[name] = _train_one(recipe, name, out_dir, data_dir, reporter, device, checkpoints[name],
                                       replace_ok, dist)

        if output is None:  # a cache entry: concurrent builders wait for each other
            build_once(out_dir, done, build, f"{name} model", reporter.info)
        elif not done():
            build()
        if name not in results:
            record = json.loads((out_dir / "training.json").read_text())
            reporter.info(f"The {name} model is already trained in {out_dir} (reused; --force retrains)")
            results[name] = {**record, "path": str(out_dir), "reused": True}
    return results

