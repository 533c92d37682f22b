"""The model card written into ``best/README.md`` with every best checkpoint, and publishing ``best/`` to the
Hugging Face Hub, both through ``huggingface_hub``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token, is_offline_mode

from addrop_cli.core.settings import CLASSIFICATION, GENERATION, REGRESSION, SEQ2SEQ, TOKEN
from addrop_cli.errors import UserError, first_line
from addrop_cli.recipe import Recipe
from addrop_cli.training.run_dir import RECIPE_FILE, package_versions

CARD_FILE = "README.md"
PIPELINE_TAGS = {CLASSIFICATION: "text-classification", REGRESSION: "text-classification",
                 TOKEN: "token-classification", SEQ2SEQ: "translation", GENERATION: "text-generation"}


def _eval_results(task_name: str, hub: tuple[str, str | None] | None, pipeline_tag: str, scores: dict[str, float],
                  split: str) -> list[EvalResult]:
    return [EvalResult(task_type=pipeline_tag, dataset_type=hub[0] if hub else task_name, dataset_name=task_name,
                       dataset_config=hub[1] if hub else None, dataset_split=split, metric_type=metric,
                       metric_value=round(value, 6)) for metric, value in scores.items()]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def build_card(recipe: Recipe, task: Any, task_type: str, history: list[dict[str, Any]], best_epoch: int,
               best_eval: dict[str, float], test: dict[str, float] | None, name: str) -> ModelCard:
    """The card: Hub metadata (library, base model, pipeline, dataset, tags, model-index with the best eval and
    test scores), then the AD-DROP and training settings, the per-epoch table, versions and how to reproduce."""
    pipeline_tag = PIPELINE_TAGS[task_type]
    hub = getattr(task, "hub_dataset", None)
    local_model = Path(recipe.model).exists()
    results = _eval_results(recipe.task, hub, pipeline_tag, best_eval, "validation")
    results += _eval_results(recipe.task, hub, pipeline_tag, test or {}, "test")
    data = ModelCardData(library_name="transformers", base_model=None if local_model else recipe.model,
                         pipeline_tag=pipeline_tag, datasets=[hub[0]] if hub else None, tags=["addrop", "ad-drop"],
                         model_name=name, eval_results=results)
    addrop, train = recipe.addrop, recipe.train
    metrics = list(best_eval)
    epochs = [[row["epoch"], row["phase"], f"{row['train_loss']:.4f}",
               *((f"{row['eval_loss']:.4f}", *(f"{row['eval'][m]:.4f}" for m in metrics)) if "eval" in row
                 else ["–"] * (1 + len(metrics)))]  # an epoch train.eval_every skipped
              for row in history]
    body = "\n\n".join([
        f"# {name}",
        f"`{recipe.model}` fine-tuned on {recipe.task} with AD-DROP (Attribution-Driven Dropout, NeurIPS 2022) by "
        f"[addrop](https://pypi.org/project/addrop/). Best epoch {best_epoch}: "
        + ", ".join(f"{m} {v:.4f}" for m, v in best_eval.items())
        + (("; test " + ", ".join(f"{m} {v:.4f}" for m, v in test.items())) if test else "") + ".",
        "## AD-DROP",
        _table(["enabled", "p", "q", "layers", "attribution", "labels", "cross-tuning", "attribution precision"],
               [[addrop.enabled, addrop.p, addrop.q, addrop.layers, addrop.attribution, addrop.labels,
                 addrop.cross_tuning, addrop.attribution_precision]]),
        "## Training",
        _table(["epochs", "lr", "batch size", "max length", "seed", "mixed precision", "weights", "LoRA r"],
               [[train.epochs, train.lr, train.batch_size, recipe.data.max_length, train.seed,
                 train.mixed_precision, train.model_dtype, recipe.lora.r or "–"]]),
        "## Epochs",
        _table(["epoch", "phase", "train loss", "eval loss", *(f"eval {m}" for m in metrics)], epochs),
        "## Reproduce",
        f"`{RECIPE_FILE}` beside this card is the resolved recipe:\n\n```bash\npip install addrop\n"
        f"addrop train --recipe {RECIPE_FILE} --output-dir runs/reproduced\n```",
        "## Framework versions",
        "\n".join(f"- {package} {version}" for package, version in package_versions().items()),
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def check_hub_access(repo_id: str) -> None:
    """Before training: refuse a push that could not happen (offline, no token, a token the Hub rejects)."""
    if is_offline_mode():
        raise UserError(f"--push-to-hub {repo_id}: the Hub is offline here (HF_HUB_OFFLINE is set); unset it, or "
                        "train without --push-to-hub and upload best/ later")
    token = get_token()
    if token is None:
        raise UserError(f"--push-to-hub {repo_id}: no Hugging Face token; run 'hf auth login' or set HF_TOKEN")
    try:
        HfApi().whoami(token=token)
    except Exception as error:  # network or authentication: either way the push would fail after training
        raise UserError(f"--push-to-hub {repo_id}: the Hub did not accept the token ({first_line(error)})") from None


def push_to_hub(folder: Path, repo_id: str, private: bool) -> str:
    """Upload ``best/`` (card included) to ``repo_id``, creating the repository if needed; returns its URL."""
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload model trained with addrop")
    return str(url)
