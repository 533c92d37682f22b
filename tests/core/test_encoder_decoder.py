"""AD-DROP on encoder-decoder models (Marian, T5, BART) and token classifiers: attention kinds, masks, targets."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import VOCAB, tiny_seq2seq
from transformers import (
    BertConfig,
    BertForTokenClassification,
    ElectraConfig,
    ElectraForTokenClassification,
)

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.routes.base import ForwardState
from addrop_cli.core.routes.connect import install
from addrop_cli.core.settings import CROSS, DECODER, ENCODER, ADDropConfig

SEQ2SEQ = ["marian", "t5", "bart"]


def seq2seq_batch(seed: int = 0) -> dict:
    """Sources of 9 tokens and targets of 6, both right-padded on the second example."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = torch.randint(5, VOCAB, (2, 6), generator=generator)
    labels[1, 4:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture(params=SEQ2SEQ)
def seq2seq(request):
    model = tiny_seq2seq(request.param)
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("sdpa")
    return model, stock


def test_probe_classifies_encoder_decoder_and_cross_attention(seq2seq):
    model, _ = seq2seq
    sites = install(model)
    assert [(s.kind, s.layer) for s in sites] == [(ENCODER, 0), (ENCODER, 1), (DECODER, 0), (CROSS, 0),
                                                   (DECODER, 1), (CROSS, 1)]


def test_nothing_dropped_equals_stock_attention(seq2seq):
    model, stock = seq2seq
    sites = install(model)
    batch = seq2seq_batch()
    shapes = {ENCODER: (2, 4, 9, 9), DECODER: (2, 4, 6, 6), CROSS: (2, 4, 6, 9)}
    drops = {c: torch.zeros(shapes[s.kind], dtype=torch.bool) for c, s in enumerate(sites)}
    expected = stock(**batch).logits
    torch.testing.assert_close(model(**batch, addrop_state=ForwardState(drops=drops)).logits, expected,
                               atol=1e-5, rtol=0)
    recorded = model(**batch, addrop_state=ForwardState(record=frozenset(range(len(sites))))).logits
    torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=0)


def test_masks_reach_every_kind_when_asked_and_keep_causality(seq2seq):
    model, _ = seq2seq
    addrop = ADDrop(model, ADDropConfig(attention=[ENCODER, DECODER, CROSS], layers="all", p=0.5, q=1.0))
    batch = seq2seq_batch()
    masks = addrop.drop_masks(batch)
    kinds = {addrop.sites[c].kind: m.shape for c, m in masks.items()}
    assert kinds == {ENCODER: (2, 4, 9, 9), DECODER: (2, 4, 6, 6), CROSS: (2, 4, 6, 9)}
    for call, mask in masks.items():
        assert mask.any()
        if addrop.sites[call].kind != DECODER:
            assert not mask[1][..., 6:].any()  # source padding of example 1 is never dropped
    # Causality survives the masks: changing the last target token leaves earlier logits unchanged.
    state = ForwardState(drops=masks)
    logits = model(**batch, addrop_state=state).logits
    changed = {**batch, "labels": batch["labels"].clone()}
    changed["labels"][:, -1] = 7
    later = model(**changed, addrop_state=ForwardState(drops=masks)).logits
    torch.testing.assert_close(logits[:, :-1], later[:, :-1])
    assert torch.isfinite(logits).all()


def test_default_acts_on_encoder_layers_only(seq2seq):
    model, _ = seq2seq
    addrop = ADDrop(model, ADDropConfig(layers="all"))
    assert {addrop.sites[c].kind for c in addrop.selected} == {ENCODER}
    loss = addrop.loss(seq2seq_batch())
    loss.backward()
    assert torch.isfinite(loss)


def test_seq2seq_attribution_is_the_negative_loss_gradient(seq2seq):
    model, _ = seq2seq
    batch = seq2seq_batch()
    addrop = ADDrop(model, ADDropConfig(layers="all", labels="gold", attention=[ENCODER, CROSS]))
    assert addrop.task_type == "seq2seq"
    scores = addrop.scores(batch)
    state = ForwardState(record=frozenset(scores))
    loss = model(**batch, addrop_state=state).loss  # mean cross-entropy over real target positions
    grads = torch.autograd.grad(loss, [state.recorded[c] for c in sorted(scores)])
    for call, grad in zip(sorted(scores), grads, strict=True):
        torch.testing.assert_close(scores[call], -grad)


@pytest.mark.parametrize("family", ["bert", "electra"])
def test_token_classification_attribution_is_the_negative_loss_gradient(family):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  num_labels=5)
    if family == "bert":
        model = BertForTokenClassification(BertConfig(**common)).eval()
    else:
        model = ElectraForTokenClassification(ElectraConfig(embedding_size=32, **common)).eval()
    batch = seq2seq_batch()
    batch["labels"] = torch.randint(0, 5, (2, 9))
    batch["labels"][1, 6:] = -100  # padding
    batch["labels"][0, 2] = -100  # a continuation sub-word
    addrop = ADDrop(model, ADDropConfig(layers="all", labels="gold"))
    assert addrop.task_type == "token"
    scores = addrop.scores(batch)
    state = ForwardState(record=frozenset(scores))
    loss = model(**batch, addrop_state=state).loss
    grads = torch.autograd.grad(loss, [state.recorded[c] for c in sorted(scores)])
    for call, grad in zip(sorted(scores), grads, strict=True):
        torch.testing.assert_close(scores[call], -grad)
    pseudo = ADDrop(model, ADDropConfig(layers="all")).drop_masks(batch)
    assert all(not mask[1][..., 6:].any() for mask in pseudo.values())


def test_token_pseudo_labels_cover_every_real_token():
    from addrop_cli.core.attribution import attribution_labels, attribution_target

    logits = torch.randn(1, 4, 3)
    gold = torch.tensor([[-100, 1, -100, 2]])  # special token and a continuation sub-word unlabelled
    pseudo = attribution_labels(logits, gold, "token", use_gold=False)
    assert torch.equal(pseudo, logits.argmax(-1))
    valid = torch.tensor([[1, 1, 1, 0]])  # the last position is padding
    expected = -torch.nn.functional.cross_entropy(logits[0, :3], pseudo[0, :3])
    torch.testing.assert_close(attribution_target(logits, pseudo, "token", valid), expected)


def integrity_draws(model, side: str):
    """20 (batch, drop masks) pairs over encoder, decoder and cross-attention, dropping hard (q up to 1)."""
    for draw in range(20):
        batch = seq2seq_batch(seed=draw)
        if side == "left":  # move the source padding of example 1 to the front
            batch["input_ids"][1] = batch["input_ids"][1].roll(3)
            batch["attention_mask"][1] = batch["attention_mask"][1].roll(3)
        config = ADDropConfig(attention=[ENCODER, DECODER, CROSS], layers="all", p=(0.3, 0.5, 0.9)[draw % 3],
                              q=(1.0, 0.7)[draw % 2])
        torch.manual_seed(draw)
        yield draw, batch, ADDrop(model, config).drop_masks(batch)


def masked_decoder(model, batch, drops, input_ids=None, decoder_input_ids=None):
    out = model(input_ids=batch["input_ids"] if input_ids is None else input_ids,
                attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids,
                addrop_state=ForwardState(drops=drops), output_hidden_states=True)
    return out.decoder_hidden_states[-1], out.logits


@pytest.mark.parametrize("family", ["marian", "bart"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_self_attention_causal_and_padding_integrity(family, side):
    """Changing target tokens after position t never changes the masked decoder's states at positions <= t;
    changing source ids under padding never changes the masked forward's logits."""
    model = tiny_seq2seq(family)
    for draw, batch, drops in integrity_draws(model, side):
        decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        t = draw % 5
        changed = decoder_ids.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 90 + 5
        states, logits = masked_decoder(model, batch, drops, decoder_input_ids=decoder_ids)
        later_states, _ = masked_decoder(model, batch, drops, decoder_input_ids=changed)
        torch.testing.assert_close(later_states[:, : t + 1], states[:, : t + 1], atol=1e-6, rtol=0)
        under_padding = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 55)
        _, other = masked_decoder(model, batch, drops, input_ids=under_padding, decoder_input_ids=decoder_ids)
        torch.testing.assert_close(other, logits, atol=1e-6, rtol=0)
