"""What every regularizer asks of a model before its first step: the task its head serves, and no KV cache."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from addrop_cli.core.settings import CLASSIFICATION, GENERATION, REGRESSION, SEQ2SEQ, TOKEN

# The decoder-only language-model heads transformers knows, whatever their class names end with.
LANGUAGE_MODEL_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def infer_task_type(model: PreTrainedModel) -> str:
    """classification, regression, token, seq2seq or generation, from the model's head and config."""
    name = type(model).__name__
    if model.config.is_encoder_decoder:
        return SEQ2SEQ
    if name.endswith("ForTokenClassification"):
        return TOKEN
    if name.endswith("ForCausalLM") or name in LANGUAGE_MODEL_CLASSES:  # GPT2LMHeadModel is one too
        return GENERATION
    if model.config.problem_type == "regression" or getattr(model.config, "num_labels", 2) == 1:
        return REGRESSION
    return CLASSIFICATION


def build_no_kv_cache(model: torch.nn.Module) -> None:
    """Training forwards (plain, attribution, masked) never read a KV cache: switch a decoder-only model's
    ``use_cache`` off so that none is built. Encoder-decoders skip the cache when given labels and keep it
    for generation."""
    if getattr(model.config, "use_cache", None) and not model.config.is_encoder_decoder:
        model.config.use_cache = False


