"""Tiny randomly initialised transformers built from config: no downloads."""

from __future__ import annotations

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    MarianConfig,
    MarianMTModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 100
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64)


def tiny_classifier(family: str = "bert", num_labels: int = 2, seed: int = 0) -> torch.nn.Module:
    """A 3-layer, 4-head sequence classifier of the given family, eval mode, fixed seed."""
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(**COMMON, num_labels=num_labels))
    elif family == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(**COMMON, pad_token_id=1, num_labels=num_labels))
    elif family == "electra":
        model = ElectraForSequenceClassification(ElectraConfig(**COMMON, embedding_size=32, num_labels=num_labels))
    elif family == "distilbert":
        config = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=3, n_heads=4, hidden_dim=37,
                                  max_position_embeddings=64, num_labels=num_labels)
        model = DistilBertForSequenceClassification(config)
    else:
        raise ValueError(family)
    return model.eval()


def random_batch(batch_size: int = 4, length: int = 11, seed: int = 0, num_labels: int = 2) -> dict:
    """Token ids with right padding of varied lengths, and labels (floats when num_labels is 1)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch_size):
        attention_mask[row, length - 2 * row :] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    if num_labels == 1:
        labels = torch.rand(batch_size, generator=generator) * 5
    else:
        labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tiny_seq2seq(family: str) -> torch.nn.Module:
    """A 2-layer encoder-decoder (marian, t5 or bart), eval mode, fixed seed."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, pad_token_id=0, eos_token_id=3, decoder_start_token_id=2)
    if family == "marian":
        config = MarianConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
                              max_position_embeddings=64, **common)
        model = MarianMTModel(config)
    elif family == "t5":
        config = T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=4, **common)
        model = T5ForConditionalGeneration(config)
    else:
        config = BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
                            max_position_embeddings=64, bos_token_id=2, **common)
        model = BartForConditionalGeneration(config)
    return model.eval()


DECODER_FAMILIES = ["qwen2", "llama", "mistral", "gemma2", "gemma3", "gpt_oss", "qwen3", "smollm3"]
# Sliding windows shorter than the test sequences, so the window is part of every mask.
WINDOW = 4


def tiny_decoder(family: str = "qwen2", num_labels: int = 2, seed: int = 0) -> torch.nn.Module:
    """A 2-layer decoder-only sequence classifier (hidden 64, 4 heads over 2 KV heads), pad id 0, eval mode.

    qwen2 slides its second layer, mistral both, gemma2 and gpt-oss alternate sliding and full layers, gemma3
    slides both; gemma2 soft-caps its attention logits and gpt-oss adds attention sinks (random, non-zero).
    """
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  num_labels=num_labels)
    extra = {
        "qwen2": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
        "mistral": dict(sliding_window=WINDOW),
        "gemma2": dict(sliding_window=WINDOW, head_dim=16, attn_logit_softcapping=2.0),
        "gemma3": dict(sliding_window=WINDOW, head_dim=16),
        "gpt_oss": dict(sliding_window=WINDOW, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "qwen3": dict(head_dim=16),
    }.get(family, {})
    names = {"qwen2": "Qwen2", "llama": "Llama", "mistral": "Mistral", "gemma2": "Gemma2", "gemma3": "Gemma3Text",
             "gpt_oss": "GptOss", "qwen3": "Qwen3", "smollm3": "SmolLM3"}
    config = getattr(transformers, f"{names[family]}Config")(**common, **extra)
    model = getattr(transformers, f"{names[family]}ForSequenceClassification")(config)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "sinks"):
                module.sinks.normal_(0.0, 1.0)
    return model.eval()


def decoder_batch(padding_side: str, batch_size: int = 3, length: int = 12, seed: int = 0) -> dict:
    """Token ids 3..99 with pad id 0 on the given side (row i padded by 3 i), and labels."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch_size):
        if padding_side == "left":
            attention_mask[row, : 3 * row] = 0
        else:
            attention_mask[row, length - 3 * row :] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = torch.randint(0, 2, (batch_size,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


EAGER_FAMILIES = ["deberta-v2", "deberta", "mpnet", "roformer"]


def tiny_eager_classifier(family: str = "deberta-v2", num_labels: int = 2, seed: int = 0,
                          token: bool = False) -> torch.nn.Module:
    """A 3-layer, 4-head classifier of a family whose attention does not go through AttentionInterface (the
    module-hook route), eval mode, fixed seed; DeBERTa with relative attention (c2p and p2c) as v3 has it."""
    import transformers

    torch.manual_seed(seed)
    names = {"deberta-v2": "DebertaV2", "deberta": "Deberta", "mpnet": "MPNet", "roformer": "RoFormer"}
    extra = {"deberta-v2": dict(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=32,
                                position_buckets=16, norm_rel_ebd="layer_norm", share_att_key=True),
             "deberta": dict(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=32),
             "roformer": dict(embedding_size=32)}.get(family, {})
    config = getattr(transformers, f"{names[family]}Config")(**COMMON, **extra, num_labels=num_labels)
    head = "ForTokenClassification" if token else "ForSequenceClassification"
    return getattr(transformers, f"{names[family]}{head}")(config).eval()


# ------------------------------------------------------------------------------- decoder-only language models

CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant : {% endif %}")
CAUSAL_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CAUSAL_WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "reverse", "copy", ":", "system", "user",
                "assistant", "good", "bad", "movie", "film", "sentiment", "positive", "negative", "?", "."]


def causal_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A whitespace word-level tokenizer over CAUSAL_WORDS (ids 4...), pad 0, bos <s> 1, eos </s> 2, no special
    tokens added around a text, and a one-line chat template (``<s> role : content </s>`` per turn)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(CAUSAL_SPECIAL + CAUSAL_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_causal_lm(seed: int = 0, family: str = "llama") -> torch.nn.Module:
    """A 2-layer Llama language model (hidden 64, 4 heads over 2 KV heads, tied embeddings), pad id 0, eval mode;
    or GPT-2 (absolute position embeddings) of the same width."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2)
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def completion_batch(padding_side: str, batch_size: int = 3, length: int = 12, seed: int = 0) -> dict:
    """Token ids 3..99, pad id 0 on the given side (row i padded by 2 i), labels: the ids of each row's last
    3 + i real tokens (its completion), IGNORE_INDEX on its prompt and padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row in range(batch_size):
        real = length - 2 * row
        if padding_side == "left":
            attention_mask[row, : length - real] = 0
            labels[row, length - 3 - row:] = input_ids[row, length - 3 - row:]
        else:
            attention_mask[row, real:] = 0
            labels[row, real - 3 - row: real] = input_ids[row, real - 3 - row: real]
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
