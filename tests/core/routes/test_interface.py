"""The three attention modes on real tiny models: off, record and apply, against stock attention."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import random_batch, tiny_classifier

from addrop_cli.core.routes.base import ForwardState, visible_keys
from addrop_cli.core.routes.connect import install
from addrop_cli.core.settings import ENCODER

FAMILIES = ["bert", "roberta", "electra", "distilbert"]


def stock(model, implementation):
    twin = copy.deepcopy(model)
    twin.set_attn_implementation(implementation)
    return twin


def inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.fixture(params=FAMILIES)
def family_model(request):
    model = tiny_classifier(request.param)
    reference = {"sdpa": stock(model, "sdpa"), "eager": stock(model, "eager")}
    sites = install(model)
    return model, reference, sites


def test_probe_finds_every_encoder_layer(family_model):
    _, _, sites = family_model
    assert [(s.kind, s.layer, s.num_heads) for s in sites] == [(ENCODER, i, 4) for i in range(3)]


def test_off_mode_equals_stock_sdpa(family_model):
    model, reference, _ = family_model
    batch = inputs(random_batch())
    expected = reference["sdpa"](**batch).logits
    torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(**batch, addrop_state=ForwardState()).logits, expected, atol=1e-5, rtol=0)


def test_record_mode_equals_stock_eager(family_model):
    model, reference, sites = family_model
    batch = inputs(random_batch())
    state = ForwardState(record=frozenset(range(len(sites))))
    logits = model(**batch, addrop_state=state).logits
    torch.testing.assert_close(logits, reference["eager"](**batch).logits, atol=1e-5, rtol=0)
    assert sorted(state.recorded) == list(range(len(sites)))
    probs = state.recorded[0]
    assert probs.shape == (4, 4, 11, 11)
    real_rows = probs[0]  # first example has no padding: rows sum to one
    torch.testing.assert_close(real_rows.sum(-1), torch.ones(4, 11))
    assert torch.all(probs[1][..., 9:] == 0)  # padded keys get no attention


def test_apply_mode_with_nothing_dropped_equals_stock(family_model):
    model, reference, sites = family_model
    batch = inputs(random_batch())
    drops = {c: torch.zeros(4, 4, 11, 11, dtype=torch.bool) for c in range(len(sites))}
    logits = model(**batch, addrop_state=ForwardState(drops=drops)).logits
    torch.testing.assert_close(logits, reference["sdpa"](**batch).logits, atol=1e-5, rtol=0)


def test_dropping_changes_logits(family_model):
    model, reference, sites = family_model
    batch = inputs(random_batch())
    generator = torch.Generator().manual_seed(0)
    drops = {c: torch.rand(4, 4, 11, 11, generator=generator) < 0.5 for c in range(len(sites))}
    logits = model(**batch, addrop_state=ForwardState(drops=drops)).logits
    assert not torch.allclose(logits, reference["sdpa"](**batch).logits, atol=1e-4)


def test_fully_dropped_rows_stay_finite():
    model = tiny_classifier("bert")
    install(model)
    batch = inputs(random_batch())
    drops = {0: torch.ones(4, 4, 11, 11, dtype=torch.bool)}
    assert torch.isfinite(model(**batch, addrop_state=ForwardState(drops=drops)).logits).all()


def test_visible_keys_build_the_causal_triangle_when_no_mask_is_given():
    query = torch.zeros(2, 1, 3, 2)
    visible = visible_keys(None, query, query, causal=True)
    assert visible.shape == (2, 1, 3, 3)
    assert visible[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert visible_keys(None, query, query, causal=False).all()


def test_visible_keys_read_bool_and_additive_masks():
    query = torch.zeros(1, 1, 2, 2)
    bool_mask = torch.tensor([[[[True, False], [True, True]]]])
    additive = torch.where(bool_mask, 0.0, torch.finfo(torch.float32).min)
    assert torch.equal(visible_keys(bool_mask, query, query, causal=False), bool_mask)
    assert torch.equal(visible_keys(additive, query, query, causal=False), bool_mask)


def test_a_row_never_loses_every_visible_key():
    """Dropping every position keeps the base mask: identical to dropping nothing."""
    model = tiny_classifier("bert")
    install(model)
    batch = inputs(random_batch())
    everything = model(**batch, addrop_state=ForwardState(drops={0: torch.ones(4, 4, 11, 11, dtype=torch.bool)}))
    nothing = model(**batch, addrop_state=ForwardState(drops={0: torch.zeros(4, 4, 11, 11, dtype=torch.bool)}))
    torch.testing.assert_close(everything.logits, nothing.logits, atol=1e-6, rtol=0)


def test_bert_padding_integrity():
    """Changing the ids under (right) padding never changes the masked forward's logits (20 draws, hard drops).
    BERT pools position 0, so left padding would pool a padding token even in the stock model."""
    from addrop_cli.core.methods.addrop import ADDrop
    from addrop_cli.core.settings import ADDropConfig

    model = tiny_classifier("bert")
    for draw in range(20):
        batch = random_batch(seed=draw)
        torch.manual_seed(draw)
        config = ADDropConfig(layers="all", p=(0.3, 0.5, 0.9)[draw % 3], q=(1.0, 0.7)[draw % 2])
        drops = ADDrop(model, config).drop_masks(batch)
        plain = inputs(batch)
        logits = model(**plain, addrop_state=ForwardState(drops=drops)).logits
        plain["input_ids"] = plain["input_ids"].masked_fill(plain["attention_mask"] == 0, 55)
        other = model(**plain, addrop_state=ForwardState(drops=drops)).logits
        torch.testing.assert_close(other, logits, atol=1e-6, rtol=0)
