"""``addrop train``: resolve a recipe from flags and run the training loop."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from addrop_cli.cli import recipe_options as options
from addrop_cli.cli.common import option, quiet_libraries, reports_user_errors, say
from addrop_cli.errors import DIVERGED_EXIT_CODE
from addrop_cli.recipe import resolve_recipe
from addrop_cli.training.run_dir import model_dir


@reports_user_errors
def train(
    recipe: options.RecipeName = None,
    task: options.Task = None,
    model: options.Model = None,
    train_file: options.TrainFile = None,
    validation_file: options.ValidationFile = None,
    test_file: options.TestFile = None,
    output_dir: Annotated[str | None, option(recipe_default=True, metavar="DIR",
                                             help="Where recipe.yaml, history.jsonl, metrics.json, best/ go.")] = None,
    seed: Annotated[int | None, option(recipe_default=True, metavar="N", help="Random seed.")] = None,
    epochs: options.Epochs = None,
    lr: options.LearningRate = None,
    batch_size: options.BatchSize = None,
    max_length: options.MaxLength = None,
    p: Annotated[float | None, option("--p", recipe_default=True, metavar="P",
                                      help="AD-DROP candidate share p in (0, 1).")] = None,
    q: Annotated[float | None, option("--q", recipe_default=True, metavar="Q",
                                      help="AD-DROP drop rate q in [0, 1].")] = None,
    layers: options.Layers = None,
    attribution: options.Attribution = None,
    attribution_precision: options.AttributionPrecision = None,
    labels: options.Labels = None,
    cross_tuning: options.CrossTuning = None,
    method: options.Method = None,
    no_addrop: options.NoADDrop = False,
    max_train_samples: options.MaxTrainSamples = None,
    max_eval_samples: options.MaxEvalSamples = None,
    mixed_precision: options.MixedPrecision = None,
    lora_r: options.LoraRank = None,
    report_to: options.ReportTo = None,
    push_to_hub: options.PushToHub = None,
    hub_private: options.HubPrivate = None,
    save_steps: options.SaveSteps = None,
    save_total_limit: options.SaveTotalLimit = None,
    resume: Annotated[bool, option("--resume", help="Continue from the newest checkpoint in --output-dir.")] = False,
    overwrite: Annotated[bool, option("--overwrite", help="Replace a different run in --output-dir.")] = False,
    skip_space_check: Annotated[bool, option("--skip-space-check", help="Train even when --output-dir's free space "
                                             "looks too small for the run's checkpoints.")] = False,
    trust_remote_code: options.TrustRemoteCode = False,
    set_: options.Overrides = None,
) -> None:
    """Fine-tune a model with cross-tuned AD-DROP (another regularizer with --method; plain with --no-addrop). No
    options: the demo."""
    quiet_libraries()
    flags = options.recipe_flags(locals(), no_addrop)
    if model is not None:
        flags["model"] = model_dir(model)  # a run directory means its best checkpoint
    resolved = resolve_recipe(recipe, task, flags, set_)
    from addrop_cli.training.loop import TrainingDiverged, TrainingInterrupted
    from addrop_cli.training.loop import train as run_training  # torch is imported only once the input is valid

    console = Console(stderr=True)
    try:
        result = run_training(resolved, overwrite=overwrite, resume=resume, trust_remote_code=trust_remote_code,
                              console=console, check_space=not skip_space_check)
    except TrainingInterrupted as stop:
        say(f"{stop}; run the same command again (or add --resume) to continue")
        raise typer.Exit(stop.exit_code) from None
    except TrainingDiverged as error:
        say(f"error: {error}")
        raise typer.Exit(DIVERGED_EXIT_CODE) from None
    if not result.main_process:
        return
    shown = ", ".join(f"{name} {value:.4f}" for name, value in result.best_eval.items())
    console.print(f"best epoch {result.best_epoch}: {shown}")
    if result.test is not None:
        console.print("test: " + ", ".join(f"{name} {value:.4f}" for name, value in result.test.items()))
    console.print(f"outputs in {result.output_dir}")
    if result.hub_url:
        console.print(f"best checkpoint uploaded to {result.hub_url}")
