"""Gradient checkpointing recomputes each layer's attention during backward: AD-DROP's calls must survive it."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import decoder_batch, random_batch, tiny_classifier, tiny_decoder
from transformers import AlbertConfig, AlbertForSequenceClassification

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.settings import ADDropConfig
from addrop_cli.errors import UserError


def addrop_gradients(model, batch, checkpointing: bool, attribution: str = "ga") -> dict[str, torch.Tensor]:
    """Parameter gradients of one AD-DROP step (all layers, attention dropout on), seed fixed."""
    model = copy.deepcopy(model).train()
    if checkpointing:
        model.activation_checkpointing_enable()  # non-reentrant
    addrop = ADDrop(model, ADDropConfig(p=0.5, q=0.5, layers="all", attribution=attribution, iga_steps=2))
    torch.manual_seed(0)
    addrop.loss(batch).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("family", "attribution"), [("qwen2", "ga"), ("gemma2", "ga"), ("bert", "ga"),
                                                     ("qwen2", "rd"), ("qwen2", "iga")])
def test_checkpointed_gradients_equal_plain_ones(family, attribution):
    """RD draws its region inside the forward (the recompute must replay the draws); IGA runs m forwards."""
    if family == "bert":
        model, batch = tiny_classifier("bert"), random_batch()
    else:
        model, batch = tiny_decoder(family), decoder_batch("left")
        model.config.attention_dropout = 0.1
        for module in model.modules():
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = 0.1  # dropout RNG must replay in the recompute too
    plain = addrop_gradients(model, batch, checkpointing=False, attribution=attribution)
    checkpointed = addrop_gradients(model, batch, checkpointing=True, attribution=attribution)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize(("family", "attribution", "attention_dropout"),
                         [("llama", "ga", 0.0), ("qwen2", "ga", 0.1), ("llama", "aa", 0.0), ("bert", "aa", 0.1)])
def test_checkpointed_gradients_equal_plain_ones_block_by_block(small_blocks, family, attribution, attention_dropout):
    """Drops asked for block by block inside the forward, again in the recompute: the fused CPU path without
    attention dropout, the checkpointed sdpa blocks with it (nested in the layer's own checkpoint)."""
    model, batch = (tiny_classifier("bert"), random_batch()) if family == "bert" else \
        (tiny_decoder(family), decoder_batch("left"))
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = attention_dropout
    plain = addrop_gradients(model, batch, checkpointing=False, attribution=attribution)
    checkpointed = addrop_gradients(model, batch, checkpointing=True, attribution=attribution)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, atol=1e-6, rtol=0, msg=name)


def test_recomputed_blocks_are_counted_once(small_blocks):
    counts = []
    for checkpointing in (False, True):
        model = tiny_decoder("llama").train()
        if checkpointing:
            model.activation_checkpointing_enable()
        addrop = ADDrop(model, ADDropConfig(p=0.5, q=0.5, layers="all"))
        torch.manual_seed(0)
        addrop.loss(decoder_batch("left")).backward()
        counts.append(addrop.take_drop_counts())
    assert counts[0][0] > 0 and torch.equal(counts[0], counts[1])


def test_shared_attention_modules_with_checkpointing_are_refused():
    config = AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=37)

    class CheckpointedAlbert(AlbertForSequenceClassification):
        is_activation_checkpointing = True  # transformers' ALBERT has none; a model that shares modules might

    model = CheckpointedAlbert(config)
    with pytest.raises(UserError, match=r"shares them across layers; turn train\.gradient_checkpointing off"):
        ADDrop(model, ADDropConfig())
