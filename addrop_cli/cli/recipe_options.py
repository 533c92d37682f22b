"""The options that build a run's recipe, shared by ``train`` and ``sweep``: declared once, mapped to keys once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

Opt = typer.Option

RecipeName = Annotated[str | None, Opt("--recipe", help="Bundled recipe name (e.g. mrpc, demo) or a YAML path.")]
Task = Annotated[str | None, Opt(help="GLUE task; alone it selects the task's bundled recipe.")]
Model = Annotated[str | None, Opt(help="Model alias (minilm), local directory or hub id.")]
TrainFile = Annotated[str | None, Opt(help="Training data: TSV, CSV, JSON or JSONL.")]
ValidationFile = Annotated[str | None, Opt(help="Validation data used for selection.")]
TestFile = Annotated[str | None, Opt(help="Test data, scored once with the best checkpoint.")]
Epochs = Annotated[int | None, Opt(help="Number of epochs.")]
LearningRate = Annotated[float | None, Opt("--lr", help="Peak learning rate.")]
BatchSize = Annotated[int | None, Opt(help="Training batch size per device.")]
MaxLength = Annotated[int | None, Opt(help="Maximum tokens per example.")]
Layers = Annotated[str | None, Opt(help="Layers to act on: first, all, or indices like 0,3,5.")]
Attribution = Annotated[str | None, Opt(help="ga, iga, aa or rd (paper Table 2).")]
Labels = Annotated[str | None, Opt(help="Attribute to pseudo (default) or gold labels.")]
CrossTuning = Annotated[bool | None, Opt("--cross-tuning/--no-cross-tuning",
                                         help="Alternate plain and AD-DROP epochs.")]
NoADDrop = Annotated[bool, Opt("--no-addrop", help="Plain fine-tuning baseline, same loop.")]
MaxTrainSamples = Annotated[int | None, Opt(help="Use only the first N training examples.")]
MaxEvalSamples = Annotated[int | None, Opt(help="Use only the first N evaluation examples.")]
MixedPrecision = Annotated[str | None, Opt(help="no, fp16 or bf16 (handed to Accelerate).")]
SaveSteps = Annotated[int | None, Opt(help="Also checkpoint every N optimizer updates (always at epoch ends).")]
SaveTotalLimit = Annotated[int | None, Opt(help="Keep the newest K checkpoints (default 2).")]
TrustRemoteCode = Annotated[bool, Opt("--trust-remote-code",
                                      help="Allow model code from the checkpoint (off by default).")]
Overrides = Annotated[list[str] | None, Opt("--set", help="Override any recipe key: KEY=VALUE, dotted.")]

# Option name -> recipe key.
RECIPE_KEYS = {
    "model": "model", "train_file": "data.train_file", "validation_file": "data.validation_file",
    "test_file": "data.test_file", "max_length": "data.max_length", "max_train_samples": "data.max_train_samples",
    "max_eval_samples": "data.max_eval_samples", "output_dir": "train.output_dir", "seed": "train.seed",
    "epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size",
    "mixed_precision": "train.mixed_precision", "save_steps": "train.save_steps",
    "save_total_limit": "train.save_total_limit", "p": "addrop.p", "q": "addrop.q", "layers": "addrop.layers",
    "attribution": "addrop.attribution", "labels": "addrop.labels", "cross_tuning": "addrop.cross_tuning",
}


def recipe_flags(options: dict[str, Any], no_addrop: bool = False) -> dict[str, Any]:
    """The options as dotted recipe keys (``{"train.lr": 1e-5}``); None for options that were not given."""
    flags = {key: options[name] for name, key in RECIPE_KEYS.items() if name in options}
    flags["addrop.enabled"] = False if no_addrop else None
    return flags
