"""LoRA adapters through peft: wrapping a task model, and saving a best checkpoint that loads without peft."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from addrop_cli.core.settings import CLASSIFICATION, GENERATION, REGRESSION, SEQ2SEQ, TOKEN
from addrop_cli.errors import UserError, first_line
from addrop_cli.recipe import LoraConfig

# The adapter (peft's adapter_config.json and weights) sits in this folder of best/, the merged model beside it.
ADAPTER_DIR = "adapter"
PEFT_TASK_TYPES = {CLASSIFICATION: "SEQ_CLS", REGRESSION: "SEQ_CLS", TOKEN: "TOKEN_CLS", SEQ2SEQ: "SEQ_2_SEQ_LM",
                   GENERATION: "CAUSAL_LM"}


def apply_lora(model: torch.nn.Module, settings: LoraConfig, task_type: str) -> torch.nn.Module:
    """``model`` wrapped in LoRA adapters; only the adapters and the task head stay trainable.

    peft's task type adds the classification head to ``modules_to_save``, so it is trained in full. Errors that
    peft raises for the model or the settings (an unknown model type without ``target_modules``, a module name
    the model does not have, a layer index out of range) become one-line UserErrors.
    """
    try:
        import peft
    except ImportError:
        raise UserError("LoRA needs the package peft: pip install peft (or pip install 'addrop[lora]')") from None
    config = peft.LoraConfig(
        task_type=PEFT_TASK_TYPES[task_type], r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, layers_to_transform=settings.layers_to_transform,
    )
    model_type = getattr(model.config, "model_type", type(model).__name__)
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            return peft.get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as error:
        first = first_line(error)
        hint = "" if settings.target_modules else (
            "; name its linear layers with --set lora.target_modules=[...] (e.g. [q_lin,v_lin] for distilbert)")
        raise UserError(f"cannot add LoRA adapters to model type '{model_type}' with lora.target_modules="
                        f"{settings.target_modules}: {first}{hint}") from None


def save_lora_model(model: torch.nn.Module, directory: Path) -> None:
    """The adapter in ``directory/adapter`` and the merged model in ``directory`` (plain transformers)."""
    model.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
    merged = copy.deepcopy(model).merge_and_unload()  # the training model keeps its adapters
    merged.save_pretrained(directory, safe_serialization=True)
