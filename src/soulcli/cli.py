"""The `soul` command line: parse, load the recipe, call a workflow, render errors.

User mistakes (soulcli.errors.UserError) and write errors (read-only, full disk, ...) print one
line on stderr and exit with code 2; a failed evaluation gate exits with code 3; a diverged run
(soulcli.errors.DivergedError) with code 4; Ctrl-C with code 130 (saying how to resume when a
checkpoint was saved); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import inspect
import os
import shlex
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from soulcli.errors import (DIVERGED_EXIT, GATE_FAILED_EXIT, INTERRUPTED_EXIT, USER_ERROR_EXIT, DivergedError,
                            Interrupted, UserError)

app = typer.Typer(
    name="soul",
    help="LLM unlearning with second-order optimizers (SOUL). Run `soul COMMAND --help` for examples.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe YAML file (see recipes/).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a recipe key, typed by the schema: --set optimizer.lr=1e-4 (repeatable).")
OutputOpt = typer.Option(None, "--output", "-o", help="Output folder.")
RunDirArg = typer.Argument(None, help="A run folder written by `soul unlearn`.")
SeedOpt = typer.Option(None, "--seed", help="Random seed (overrides the recipe's seed).")
JsonOpt = typer.Option(False, "--json", help="Print the machine-readable result on stdout, and nothing else.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress or tables, only errors (and --json output).")
ResumeOpt = typer.Option(False, "--resume", help="Continue from the latest checkpoint of an earlier, killed or interrupted run of this command (written every unlearn.save_every / finetune.save_every steps); same recipe and --set options.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an earlier soulcli output at --output (a folder with .soulcli.json); other non-empty folders are never replaced.")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _run(json_out: bool, quiet: bool, body: Callable[[Any], Any]) -> None:
    """Run a command body with a reporter; render user and write errors as one line (exit 2),
    a diverged run as one line (exit 4); ``--json`` output is strict JSON (NaN as null)."""
    from soulcli.data.io import is_write_error, to_json
    from soulcli.engine.progress import Reporter

    console = Console(stderr=json_out, highlight=False)
    if not console.is_terminal:  # CI logs: wide enough that tables keep their columns
        console = Console(stderr=json_out, highlight=False, width=160)
    reporter = Reporter(console, quiet=quiet)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        _quiet_libraries()
        result = body(reporter)
    except UserError as exc:  # one line, whatever a message quotes (a file's text, a name)
        err.print("[bold red]error:[/] " + escape(" ".join(str(exc).split())), markup=True)
        raise typer.Exit(USER_ERROR_EXIT) from None
    except DivergedError as exc:
        err.print(f"[bold red]diverged:[/] {exc}", markup=True)
        raise typer.Exit(DIVERGED_EXIT) from None
    except OSError as exc:
        if not is_write_error(exc):
            raise
        err.print(f"[bold red]error:[/] {exc.filename}: {exc.strerror}; free space, fix the permissions "
                  "or choose another output folder")
        raise typer.Exit(USER_ERROR_EXIT) from None
    except Interrupted as exc:
        again = shlex.join(["soul", *sys.argv[1:], *([] if "--resume" in sys.argv else ["--resume"])])
        err.print(f"{exc}; resume with `{again}`", markup=False)
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except KeyboardInterrupt:
        err.print("interrupted: no output folder was finalised")
        raise typer.Exit(INTERRUPTED_EXIT) from None
    if json_out and result is not None:
        sys.stdout.write(to_json(result) + "\n")
        sys.stdout.flush()
    gate_failures = result.get("gate_failures") if isinstance(result, dict) else None
    if gate_failures:
        for line in gate_failures:
            err.print(f"[bold red]gate failed:[/] {line}")
        raise typer.Exit(GATE_FAILED_EXIT)


@dataclass
class Common:
    """The options every command takes: the recipe, its overrides and how to report."""

    recipe: Optional[Path]
    sets: Optional[list[str]]
    seed: Optional[int]
    json_out: bool
    quiet: bool

    def load(self, reporter, extra: list[str] | None = None):
        """The recipe (defaults when no file), with --set, the extra overrides and --seed;
        its notes (e.g. optimizer args dropped by --set optimizer.name) go to ``reporter``."""
        from soulcli.recipe import load_recipe

        overrides = list(self.sets or []) + list(extra or [])
        if self.seed is not None:
            overrides.append(f"seed={self.seed}")
        notes: list[str] = []
        recipe = load_recipe(self.recipe, overrides, notes)
        for note in notes:
            reporter.info(f"note: {note}")
        return recipe

    def run(self, body: Callable[[Any], Any]) -> None:
        _run(self.json_out, self.quiet, body)


_COMMON_OPTIONS = {"recipe": (Optional[Path], RecipeOpt), "sets": (Optional[list[str]], SetOpt),
                   "seed": (Optional[int], SeedOpt), "json_out": (bool, JsonOpt),
                   "quiet": (bool, QuietOpt)}


def command(name: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a command whose function takes ``common: Common`` besides its own options;
    the shared options are declared here once and appear in every command's --help."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(fn)
        own = [p.replace(annotation=hints[p.name])
               for p in inspect.signature(fn).parameters.values() if p.name != "common"]
        shared = [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=tp)
                  for key, (tp, opt) in _COMMON_OPTIONS.items()]

        @functools.wraps(fn)
        def call(**kwargs: Any) -> None:
            common = Common(**{key: kwargs.pop(key) for key in _COMMON_OPTIONS})
            fn(common=common, **kwargs)

        call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            sorted(own, key=lambda p: p.kind) + shared)
        call.__annotations__ = {p.name: p.annotation for p in own + shared}
        return app.command(name)(call)

    return register


@command("prepare-data")
def prepare_data(
    common: Common,
    source: Optional[str] = typer.Option(None, "--source", help="builtin, a folder of TOFU JSON/JSONL files, or a hub id (locuslab/TOFU)."),
    output: Optional[Path] = OutputOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Build the built-in synthetic TOFU-style benchmark, or import real TOFU files.

    Without --output the benchmark goes to the recipe's cache (.soul/benchmarks/), where
    `finetune` and `unlearn` find it.

    [bold]Examples[/]

      soul prepare-data --set data.num_authors=200

      soul prepare-data --source ../shared/data/tofu --output data/tofu
    """
    from soulcli.workflows.prepare import run_prepare

    extra = [f"data.source={source}"] if source else []
    common.run(lambda rep: run_prepare(common.load(rep, extra), rep, output, overwrite))


@command()
def finetune(
    common: Common,
    which: str = typer.Option("target,retain", "--which", help="Models to train: target (forget + retain), retain (the retain / retrain model: retain only), or both."),
    force: bool = typer.Option(False, "--force", help="Retrain cached built-in models."),
    output: Optional[Path] = OutputOpt,
    overwrite: bool = OverwriteOpt,
    resume: bool = ResumeOpt,
) -> None:
    """Train the target model (on `full`) and the retain reference model (on `retainXX`).

    Answer tokens only are in the loss. The built-in models are cached under .soul/models/
    and reused (--force retrains) unless --output is given (then OUTPUT/target and
    OUTPUT/retain). Ends with the target's
    evaluation (forget-set ROUGE-L should be near 1 before unlearning).

    [bold]Example[/]

      soul finetune --recipe recipes/tofu_sophia.yaml --set finetune.epochs=40
    """
    from soulcli.workflows.evaluate import run_finetune_command

    models = tuple(w.strip() for w in which.split(",") if w.strip())
    bad = [w for w in models if w not in ("target", "retain")]
    if bad or not models:
        Console(stderr=True).print(f"[bold red]error:[/] --which {which}: use target, retain or target,retain")
        raise typer.Exit(USER_ERROR_EXIT)
    common.run(lambda rep: run_finetune_command(common.load(rep), rep, models, output, force, overwrite, resume))


@command()
def unlearn(
    common: Common,
    output: Optional[Path] = OutputOpt,
    overwrite: bool = OverwriteOpt,
    resume: bool = ResumeOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the recipe and size the run without loading weights: parameters, trainable parameters, memory per device, steps and the torchrun command (needs only the model's config.json, or model.architecture)."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="With --dry-run: the number of GPUs to size the run for (train.strategy fsdp shards across them)."),
) -> None:
    """Unlearn the forget set from the target model with the recipe's objective and optimizer.

    Builds (and caches) the built-in benchmark and models first when the recipe names them and
    they are missing. Writes runs/<recipe name>/ (or --output): model/, resolved_recipe.yaml,
    metrics.jsonl, eval.json, summary.json, versions.json; the folder appears only when complete.
    An existing non-empty folder is refused (exit 2) unless --overwrite is given and soulcli
    wrote it; a run whose loss or gradient becomes NaN/inf stops with exit code 4, saving nothing
    (but its last checkpoint). With unlearn.save_every=N a checkpoint is written every N steps
    beside the output (runs/.NAME.ckpt/); after a kill, or Ctrl-C (which saves one, exit 130),
    --resume continues it.

    [bold]Examples[/]

      soul unlearn --recipe recipes/tofu_sophia.yaml

      soul unlearn --recipe recipes/tofu_sophia.yaml --set optimizer.name=adamw

      soul unlearn --recipe recipes/llama2_tofu_sophia.yaml --dry-run --gpus 8
    """
    if dry_run:
        from soulcli.workflows.dryrun import run_dry_run

        args = [*(["--recipe", str(common.recipe)] if common.recipe else []),
                *[a for s in common.sets or [] for a in ("--set", s)],
                *(["--seed", str(common.seed)] if common.seed is not None else []),
                *(["--output", str(output)] if output else [])]
        common.run(lambda rep: run_dry_run(common.load(rep), rep, gpus, args))
        return
    from soulcli.workflows.unlearn import run_unlearn

    common.run(lambda rep: run_unlearn(common.load(rep), rep, output, overwrite, resume))


@command()
def evaluate(
    common: Common,
    run_dir: Optional[Path] = RunDirArg,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Evaluate this model folder / hub id instead of a run."),
    data: Optional[str] = typer.Option(None, "--data", help="Benchmark folder (default: the recipe's data.source)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Retain reference: a model folder or an earlier eval.json (default: the built-in retain model)."),
    target: Optional[str] = typer.Option(None, "--target", help="Where RUN's target model lies now, if it moved (checked to be the same files)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated metric names (default: all)."),
    fail_under: Optional[list[str]] = typer.Option(None, "--fail-under", help="Gate: exit 3 if METRIC < VALUE, e.g. model_utility=0.5 (repeatable)."),
    fail_over: Optional[list[str]] = typer.Option(None, "--fail-over", help="Gate: exit 3 if METRIC > VALUE, e.g. forget_rougeL_recall=0.3 (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to write eval.json (default: RUN_DIR/eval.json)."),
) -> None:
    """Compute the task's metrics (TOFU: forget quality, model utility, ROUGE-L, truth ratio, MIA, ...).

    Writes eval.json (per-item values and generations) and prints a summary table. With
    --fail-under / --fail-over it is a CI gate: exit code 3 names each failed gate.

    [bold]Examples[/]

      soul evaluate runs/tofu_sophia

      soul evaluate runs/tofu_sophia --json --fail-under model_utility=0.5 --fail-over forget_rougeL_recall=0.3

      soul evaluate --model path/to/hf_model --data path/to/tofu --reference path/to/retain_model
    """
    from soulcli.workflows.evaluate import run_evaluate

    def body(rep):
        from soulcli.eval.report import check_gates, null_reasons, parse_gate

        under = [parse_gate(g) for g in fail_under or []]
        over = [parse_gate(g) for g in fail_over or []]
        rcp = common.load(rep) if common.recipe is not None else None
        chosen = tuple(m.strip() for m in metrics.split(",") if m.strip()) if metrics else None
        out = run_evaluate(rcp, rep, run_dir, model, data, reference, chosen, output,
                           overrides=list(common.sets or []) if common.recipe is None else None,
                           gates=[name for name, _ in under + over], target=target)
        failures = check_gates(out["result"], under, over, out["suite"])
        return {**out["aggregates"], "null_reasons": null_reasons(out["result"]["metrics"], out["aggregates"]),
                "eval_json": out["path"], "gate_failures": failures}

    common.run(body)


@command()
def attack(
    common: Common,
    run_dir: Optional[Path] = RunDirArg,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Attack this model folder / hub id instead of a run (with --recipe for its task and target)."),
    attacks: Optional[str] = typer.Option(None, "--attacks", help="Comma-separated: relearn, quantize, probe (default: attack.attacks, all three)."),
    relearn_steps: Optional[str] = typer.Option(None, "--relearn-steps", help="Relearning step counts to evaluate at, e.g. 0,10,25,50 (attack.relearn.steps)."),
    relearn_fraction: Optional[float] = typer.Option(None, "--relearn-fraction", help="Share of the forget set relearned on, seeded (attack.relearn.fraction)."),
    relearn_lr: Optional[float] = typer.Option(None, "--relearn-lr", help="Relearning learning rate (attack.relearn.lr; default finetune.lr)."),
    relearn_data: Optional[Path] = typer.Option(None, "--relearn-data", help="A JSON/JSONL file of question-answer or text records to relearn on instead of the forget set (attack.relearn.data)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="Bit widths, e.g. 8,4 (attack.quantize.bits)."),
    probe: Optional[str] = typer.Option(None, "--probe", help="Probes: paraphrase, fewshot (attack.probe.kinds)."),
    fail_under: Optional[list[str]] = typer.Option(None, "--fail-under", help="Gate: exit 3 if NAME < VALUE, e.g. quantize4.forget_quality=0.01 (repeatable)."),
    fail_over: Optional[list[str]] = typer.Option(None, "--fail-over", help="Gate: exit 3 if NAME > VALUE, e.g. relearn25.recovered.forget_rougeL_recall=0.5 (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for attack.json and attack.png (default: RUN_DIR, or the --model folder)."),
) -> None:
    """Attack an unlearned model: relearn on part of the forget set, quantize its weights, probe it.

    Measures the task's headline metrics on the target, the unlearned model and each attacked
    copy (the unlearned model itself is never modified), with the share of the
    target-vs-unlearned gap each attack brings back. Writes attack.json and attack.png.
    Gates name an attack point and a metric: relearn25.forget_rougeL_recall,
    relearn25.recovered.forget_rougeL_recall, quantize4.forget_quality, paraphrase.forget_rougeL_recall.

    [bold]Examples[/]

      soul attack runs/tofu_sophia --relearn-steps 0,10,25,50 --relearn-fraction 0.1 --quantize 8,4 --probe paraphrase,fewshot

      soul attack runs/tofu_sophia --attacks quantize --quantize 4 --fail-over quantize4.recovered.forget_rougeL_recall=0.5
    """
    from soulcli.workflows.attack import run_attack

    flags = {"attack.attacks": attacks, "attack.relearn.steps": relearn_steps,
             "attack.quantize.bits": quantize, "attack.probe.kinds": probe}
    extra = [f"{key}=[{value}]" for key, value in flags.items() if value is not None]
    extra += [f"{key}={value}" for key, value in (("attack.relearn.fraction", relearn_fraction),
                                                  ("attack.relearn.lr", relearn_lr),
                                                  ("attack.relearn.data", relearn_data)) if value is not None]

    def body(rep):
        from soulcli.eval.report import check_gates, parse_gate

        under = [parse_gate(g) for g in fail_under or []]
        over = [parse_gate(g) for g in fail_over or []]
        rcp = common.load(rep, extra) if common.recipe is not None else None
        out = run_attack(rcp, rep, run_dir, model, output,
                         overrides=list(common.sets or []) + extra if common.recipe is None else None,
                         gates=[name for name, _ in under + over])
        failures = check_gates({"metrics": out["view"]}, under, over)
        return {**out["report"], "gate_failures": failures}

    common.run(body)


@command("compare-optimizers")
def compare_optimizers(
    common: Common,
    optimizers: Optional[str] = typer.Option(None, "--optimizers", help="Comma-separated optimizer names (default: compare.optimizers)."),
    objectives: Optional[str] = typer.Option(None, "--objectives", help="Comma-separated objective names (default: compare.objectives)."),
    lr_grid: Optional[str] = typer.Option(None, "--lr-grid", help="Comma-separated learning rates (default: compare.lr_grid, else optimizer.lr)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (default: compare.seeds)."),
    seed_policy: Optional[str] = typer.Option(
        None, "--seed-policy",
        help="all: every lr runs every seed; selected: the lr grid runs on the first seed and only "
             "the selected lr runs the others (default: compare.seed_policy)."),
    attacks: Optional[str] = typer.Option(None, "--attacks", help="Comma-separated attacks (relearn, quantize, probe; as `soul attack` runs them, with the recipe's attack section) on each selected setting's model, per seed (default: compare.attacks, none)."),
    output: Optional[Path] = OutputOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Start an earlier comparison at --output over (its cells are deleted); without it, finished cells are reused."),
) -> None:
    """Run the SOUL experiment: optimizer x objective x learning rate from one target model.

    Same data order and seed in every cell; picks, per optimizer x objective, the setting with
    the best forget quality among those keeping model utility >= compare.utility_ratio x the
    target's. Writes results.json, results.csv and plots; finished cells are not recomputed. A
    cell whose training diverges (NaN/inf) is recorded as diverged and never selected. With
    --attacks, each selected setting's model is re-created and attacked (attacks/), the attack
    values join the table and results.csv, and robustness.png plots them.

    [bold]Examples[/]

      soul compare-optimizers --recipe recipes/tofu_sophia.yaml --optimizers adamw,sophiag --objectives graddiff --lr-grid 3e-5,1e-4 --output runs/compare

      soul compare-optimizers --recipe recipes/tofu_sophia.yaml --optimizers adamw,sophiag --attacks relearn,quantize --output runs/compare
    """
    from soulcli.workflows.compare import run_compare

    extra = []
    for key, value in (("optimizers", optimizers), ("objectives", objectives), ("lr_grid", lr_grid), ("seeds", seeds),
                       ("attacks", attacks)):
        if value:
            extra.append(f"compare.{key}=[{value}]")
    if seed_policy:
        extra.append(f"compare.seed_policy={seed_policy}")
    common.run(lambda rep: run_compare(common.load(rep, extra), rep, output, overwrite))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
