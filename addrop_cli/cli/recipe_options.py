"""The options that build a run's recipe, shared by ``train`` and ``sweep``: declared once, mapped to keys once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from addrop_cli.cli.common import option
from addrop_cli.core.methods.registry import SHARED_SECTION, method_names, methods


def method_keys() -> list[list[str]]:
    """Each method's own recipe keys, AD-DROP's left out (they have options of their own): the help's examples of
    ``--set``."""
    return [spec.own_keys() for spec in methods().values() if spec.recipe_section != SHARED_SECTION]


RecipeName = Annotated[str | None, option("--recipe", metavar="NAME|PATH",
                                          help="Bundled recipe name (e.g. mrpc, demo) or a YAML path.")]
Task = Annotated[str | None, option(metavar="NAME",
                                    help="Task: a GLUE task (sst2, mrpc, cola, stsb, ...), conll2003 (NER), "
                                         "wmt16-en-ro / wmt16-tr-en (translation) or generation (prompt -> "
                                         "completion); alone it selects the task's bundled recipe.")]
Model = Annotated[str | None, option(metavar="NAME|PATH", recipe_default=True,
                                     help="Model alias (minilm, mpnet-base, smollm2-135m), local directory or hub id.")]
TrainFile = Annotated[str | None, option(metavar="FILE", recipe_default=True,
                                         help="Training data: TSV, CSV, JSON or JSONL.")]
ValidationFile = Annotated[str | None, option(metavar="FILE", recipe_default=True,
                                              help="Validation data used for selection.")]
TestFile = Annotated[str | None, option(metavar="FILE", recipe_default=True,
                                        help="Test data, scored once with the best checkpoint.")]
Epochs = Annotated[int | None, option(metavar="N", recipe_default=True, help="Number of epochs.")]
LearningRate = Annotated[float | None, option("--lr", metavar="F", recipe_default=True, help="Peak learning rate.")]
BatchSize = Annotated[int | None, option(metavar="N", recipe_default=True, help="Training batch size per device.")]
MaxLength = Annotated[int | None, option(metavar="N", recipe_default=True, help="Maximum tokens per example.")]
Layers = Annotated[str | None, option(metavar="first|all|0,3,5", recipe_default=True,
                                      help="Layers to act on: first, all, or indices like 0,3,5.")]
Attribution = Annotated[str | None, option(metavar="ga|iga|aa|rd", recipe_default=True,
                                           help="ga, iga, aa or rd (paper Table 2).")]
AttributionPrecision = Annotated[str | None, option(metavar="same|bf16|fp16", recipe_default=True,
                                                    help="Run the attribution pass in bf16/fp16 (it only ranks "
                                                         "positions); the masked pass keeps the run's precision.")]
Labels = Annotated[str | None, option(metavar="pseudo|gold", recipe_default=True,
                                      help="Attribute to pseudo (default) or gold labels.")]
CrossTuning = Annotated[bool | None, option("--cross-tuning/--no-cross-tuning", recipe_default=True,
                                         help="Alternate plain and regularized epochs.")]
NoADDrop = Annotated[bool, option("--no-addrop", help="Plain fine-tuning baseline, same loop.")]
Method = Annotated[str | None, option(metavar="|".join(method_names()), recipe_default=True,
                                      help="The regularizer of the regularized epochs: "
                                           f"{', '.join(spec.display_name for spec in methods().values())} (a "
                                           "method's settings are its recipe section: --set "
                                           f"{', '.join(f'{keys[0]}=...' for keys in method_keys() if keys)}).")]
MaxTrainSamples = Annotated[int | None, option(metavar="N", recipe_default=True,
                                               help="Use only the first N training examples.")]
MaxEvalSamples = Annotated[int | None, option(metavar="N", recipe_default=True,
                                              help="Use only the first N evaluation examples.")]
MixedPrecision = Annotated[str | None, option(metavar="no|fp16|bf16", recipe_default=True,
                                              help="no, fp16 or bf16 (handed to Accelerate).")]
LoraRank = Annotated[int | None, option("--lora-r", metavar="N",
                                        help="Train LoRA adapters of rank N (peft) instead of every weight; the "
                                             "recipe's lora section sets the rest.")]
ReportTo = Annotated[str | None, option(metavar="none|all|tensorboard,mlflow,...", recipe_default=True,
                                        help="Experiment trackers (Accelerate's): tensorboard, mlflow, wandb, "
                                             "trackio, comet_ml, aim, clearml, dvclive, swanlab.")]
PushToHub = Annotated[str | None, option(metavar="REPO_ID", recipe_default=True,
                                         help="Upload best/ (model card included) to this Hub repository at the "
                                              "end; checked before training.")]
HubPrivate = Annotated[bool | None, option("--hub-private", recipe_default=True,
                                           help="Create the --push-to-hub repository as private.")]
SaveSteps = Annotated[int | None, option(metavar="N", recipe_default=True,
                                         help="Also checkpoint every N optimizer updates (always at epoch ends).")]
SaveTotalLimit = Annotated[int | None, option(metavar="K", recipe_default=True,
                                              help="Keep the newest K checkpoints (default 2).")]
TrustRemoteCode = Annotated[bool, option("--trust-remote-code",
                                      help="Allow model code from the checkpoint (off by default).")]
Overrides = Annotated[list[str] | None, option("--set", metavar="KEY=VALUE",
                                               help="Override any recipe key: KEY=VALUE, dotted.")]

# Option name -> recipe key.
RECIPE_KEYS = {
    "model": "model", "train_file": "data.train_file", "validation_file": "data.validation_file",
    "test_file": "data.test_file", "max_length": "data.max_length", "max_train_samples": "data.max_train_samples",
    "max_eval_samples": "data.max_eval_samples", "output_dir": "train.output_dir", "seed": "train.seed",
    "epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size",
    "mixed_precision": "train.mixed_precision", "save_steps": "train.save_steps",
    "save_total_limit": "train.save_total_limit", "p": "addrop.p", "q": "addrop.q", "layers": "addrop.layers",
    "attribution": "addrop.attribution", "attribution_precision": "addrop.attribution_precision",
    "labels": "addrop.labels", "cross_tuning": "addrop.cross_tuning", "method": "addrop.method", "lora_r": "lora.r",
    "report_to": "train.report_to", "push_to_hub": "train.push_to_hub", "hub_private": "train.hub_private",
}


def recipe_flags(options: dict[str, Any], no_addrop: bool = False) -> dict[str, Any]:
    """The options as dotted recipe keys (``{"train.lr": 1e-5}``); None for options that were not given."""
    flags = {key: options[name] for name, key in RECIPE_KEYS.items() if name in options}
    flags["addrop.enabled"] = False if no_addrop else None
    return flags

# The options of commands that start from a saved checkpoint (eval, predict, attribute).
Checkpoint = Annotated[Path, option(metavar="DIR", help="A checkpoint directory (RUN/best; a run directory means "
                                    "its best/).")]
CheckpointTask = Annotated[str | None, option("--task", metavar="NAME",
                                              help="Task (default: the checkpoint's recipe).")]
CheckpointRecipe = Annotated[str | None, option("--recipe", metavar="NAME|PATH",
                                                help="Recipe name or YAML path (default: the checkpoint's).")]
