"""``addrop train``: resolve a recipe from flags and run the training loop."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from addrop_cli.cli.common import nested, quiet_libraries, reports_user_errors
from addrop_cli.recipes import resolve_recipe

Opt = typer.Option


@reports_user_errors
def train(
    recipe: Annotated[str | None, Opt(help="Bundled recipe name (e.g. mrpc, demo) or a YAML path.")] = None,
    task: Annotated[str | None, Opt(help="GLUE task; alone it selects the task's bundled recipe.")] = None,
    model: Annotated[str | None, Opt(help="Model alias (minilm), local directory or hub id.")] = None,
    train_file: Annotated[str | None, Opt(help="Training data: TSV, CSV, JSON or JSONL.")] = None,
    validation_file: Annotated[str | None, Opt(help="Validation data used for selection.")] = None,
    test_file: Annotated[str | None, Opt(help="Test data, scored once with the best checkpoint.")] = None,
    output_dir: Annotated[str | None, Opt(help="Where recipe.yaml, history.jsonl, metrics.json, best/ go.")] = None,
    seed: Annotated[int | None, Opt(help="Random seed.")] = None,
    epochs: Annotated[int | None, Opt(help="Number of epochs.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, Opt(help="Training batch size per device.")] = None,
    max_length: Annotated[int | None, Opt(help="Maximum tokens per example.")] = None,
    p: Annotated[float | None, Opt("--p", help="AD-DROP candidate share p in (0, 1).")] = None,
    q: Annotated[float | None, Opt("--q", help="AD-DROP drop rate q in [0, 1].")] = None,
    layers: Annotated[str | None, Opt(help="Layers to act on: first, all, or indices like 0,3,5.")] = None,
    attribution: Annotated[str | None, Opt(help="ga, iga, aa or rd (paper Table 2).")] = None,
    labels: Annotated[str | None, Opt(help="Attribute to pseudo (default) or gold labels.")] = None,
    cross_tuning: Annotated[bool | None, Opt("--cross-tuning/--no-cross-tuning",
                                             help="Alternate plain and AD-DROP epochs.")] = None,
    no_addrop: Annotated[bool, Opt("--no-addrop", help="Plain fine-tuning baseline, same loop.")] = False,
    max_train_samples: Annotated[int | None, Opt(help="Use only the first N training examples.")] = None,
    max_eval_samples: Annotated[int | None, Opt(help="Use only the first N evaluation examples.")] = None,
    mixed_precision: Annotated[str | None, Opt(help="no, fp16 or bf16 (handed to Accelerate).")] = None,
    save_steps: Annotated[int | None, Opt(help="Also checkpoint every N optimizer updates (always at epoch ends).")]
    = None,
    save_total_limit: Annotated[int | None, Opt(help="Keep the newest K checkpoints (default 2).")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue from the newest checkpoint in --output-dir.")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace a different run in --output-dir.")] = False,
    trust_remote_code: Annotated[bool, Opt("--trust-remote-code",
                                           help="Allow model code from the checkpoint (off by default).")] = False,
    set_: Annotated[list[str] | None, Opt("--set", help="Override any recipe key: KEY=VALUE, dotted.")] = None,
) -> None:
    """Fine-tune a model with cross-tuned AD-DROP (or plain, with --no-addrop). No options: the demo."""
    quiet_libraries()
    flags = nested({
        "model": model, "data.train_file": train_file, "data.validation_file": validation_file,
        "data.test_file": test_file, "data.max_length": max_length, "data.max_train_samples": max_train_samples,
        "data.max_eval_samples": max_eval_samples, "train.output_dir": output_dir, "train.seed": seed,
        "train.epochs": epochs, "train.lr": lr, "train.batch_size": batch_size,
        "train.mixed_precision": mixed_precision, "train.save_steps": save_steps,
        "train.save_total_limit": save_total_limit, "addrop.p": p, "addrop.q": q, "addrop.layers": layers,
        "addrop.attribution": attribution, "addrop.labels": labels, "addrop.cross_tuning": cross_tuning,
        "addrop.enabled": False if no_addrop else None,
    })
    resolved = resolve_recipe(recipe, task, flags, set_)
    from addrop_cli.training import TrainingDiverged, TrainingInterrupted
    from addrop_cli.training import train as run_training  # heavy imports only once the input is valid

    console = Console(stderr=True)
    try:
        result = run_training(resolved, overwrite=overwrite, resume=resume, trust_remote_code=trust_remote_code,
                              console=console)
    except TrainingInterrupted as stop:
        print(f"{stop}; run the same command again (or add --resume) to continue", file=sys.stderr)
        raise typer.Exit(stop.exit_code) from None
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(1) from None
    shown = ", ".join(f"{name} {value:.4f}" for name, value in result.best_eval.items())
    console.print(f"best epoch {result.best_epoch}: {shown}")
    if result.test is not None:
        console.print("test: " + ", ".join(f"{name} {value:.4f}" for name, value in result.test.items()))
    console.print(f"outputs in {result.output_dir}")
