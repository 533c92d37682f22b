"""The module-hook route (eager families: DeBERTa-v2/v3, DeBERTa, MPNet, RoFormer) against stock transformers:
the same logits when nothing is dropped, GA equal to autograd on the stock attention maps, a masked forward equal
to the stock model without the dropped key, padding ids without effect, and checkpointed gradients equal."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import EAGER_FAMILIES, random_batch, tiny_eager_classifier
from transformers import DebertaConfig, DebertaForSequenceClassification

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.routes.base import ForwardState
from addrop_cli.core.routes.hooks import HookRoute
from addrop_cli.core.settings import ADDropConfig
from addrop_cli.errors import UserError


def visible_keys(batch) -> torch.Tensor:
    """(B, 1, Q, K): real query rows see the real keys (the tiny batches are right-padded)."""
    mask = batch["attention_mask"].bool()
    return (mask[:, None, :, None] & mask[:, None, None, :])


@pytest.mark.parametrize("family", EAGER_FAMILIES)
def test_the_hook_route_is_chosen_and_finds_one_site_per_layer(family):
    model = tiny_eager_classifier(family)
    addrop = ADDrop(model, ADDropConfig(layers="all"))
    assert isinstance(addrop.route, HookRoute)
    assert [(site.kind, site.layer, site.num_heads) for site in addrop.sites] == [("encoder", i, 4) for i in range(3)]
    assert addrop.selected == (0, 1, 2)


@pytest.mark.parametrize("family", EAGER_FAMILIES)
def test_nothing_dropped_gives_the_stock_logits_exactly(family):
    model, batch = tiny_eager_classifier(family), random_batch()
    with torch.no_grad():
        stock = model(**batch).logits
    addrop = ADDrop(model, ADDropConfig(layers="all"))
    with torch.no_grad():
        routed = addrop.route.forward(model, batch, ForwardState(call_of=addrop.call_of)).logits
        drops_none = {call: torch.zeros(4, 4, 11, 11, dtype=torch.bool) for call in addrop.selected}
        empty = addrop.route.forward(model, batch, ForwardState(drops=drops_none, call_of=addrop.call_of)).logits
        after = model(**batch).logits  # no state: the hooks do nothing
    assert torch.equal(routed, stock) and torch.equal(after, stock)
    torch.testing.assert_close(empty, stock, atol=1e-6, rtol=0)  # renormalising by a sum of 1.0


@pytest.mark.parametrize("family", EAGER_FAMILIES)
def test_ga_scores_equal_autograd_on_the_stock_attention_maps(family):
    model, batch = tiny_eager_classifier(family), random_batch()
    output = model(**batch, output_attentions=True)
    attentions = output.attentions
    pseudo = output.logits.argmax(-1)
    target = output.logits.gather(-1, pseudo[:, None]).sum()
    expected = torch.autograd.grad(target, attentions)
    addrop = ADDrop(model, ADDropConfig(layers="all", attribution="ga"))
    found = addrop.attribute(batch)
    visible = visible_keys(batch).expand(-1, 4, -1, -1)
    for call, reference in enumerate(expected):
        torch.testing.assert_close(found.scores[call][visible], reference[visible], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(found.attention[call], attentions[call].detach(), atol=0, rtol=0)
        assert torch.equal(found.visible[call][visible_keys(batch).expand_as(found.visible[call])],
                           torch.ones(int(visible_keys(batch).sum()), dtype=torch.bool))


@pytest.mark.parametrize("family", EAGER_FAMILIES)
def test_masked_keys_are_never_candidates(family):
    """Gradients reach masked keys in these models; candidates must still stay among visible keys."""
    model, batch = tiny_eager_classifier(family), random_batch()
    addrop = ADDrop(model, ADDropConfig(p=0.9, layers="all"))
    for call, region in addrop.candidates(batch).items():
        outside = region & ~visible_keys(batch)
        assert not outside.any(), f"call {call}: {int(outside.sum())} candidates outside the visible keys"
        assert region.any()


@pytest.mark.parametrize("family", EAGER_FAMILIES)
def test_a_dropped_key_equals_the_stock_model_without_it(family):
    model, batch = tiny_eager_classifier(family), random_batch(batch_size=2)
    dropped = 3  # a real key of both examples
    without = {**batch, "attention_mask": batch["attention_mask"].clone()}
    without["attention_mask"][:, dropped] = 0
    with torch.no_grad():
        stock = model(**without).logits
    addrop = ADDrop(model, ADDropConfig(layers="all"))
    drops = torch.zeros(2, 4, 11, 11, dtype=torch.bool)
    drops[..., dropped] = True
    state = ForwardState(drops={call: drops for call in addrop.selected}, call_of=addrop.call_of)
    with torch.no_grad():
        masked = addrop.route.forward(model, batch, state).logits
    torch.testing.assert_close(masked, stock, atol=2e-6, rtol=0)
    assert not torch.allclose(masked, model(**batch).logits)  # the drop did something


@pytest.mark.parametrize("family", EAGER_FAMILIES)
def test_ids_under_padding_do_not_change_the_addrop_loss(family):
    model, batch = tiny_eager_classifier(family).train(), random_batch()
    other = {**batch, "input_ids": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7)}
    addrop = ADDrop(model, ADDropConfig(p=0.5, q=0.5, layers="all"))
    losses = []
    for inputs in (batch, other):
        torch.manual_seed(0)
        losses.append(addrop.loss(inputs))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("family", "attribution"), [("deberta-v2", "ga"), ("roformer", "ga"), ("deberta-v2", "rd"),
                                                     ("deberta", "iga")])
def test_checkpointed_gradients_equal_plain_ones_through_hooks(family, attribution):
    """Checkpointing calls each layer again in the backward: the hooks must meet the same state there (MPNet
    has no gradient checkpointing in transformers)."""
    model, batch = tiny_eager_classifier(family), random_batch()
    grads = []
    for checkpointing in (False, True):
        copied = copy.deepcopy(model).train()
        if checkpointing:
            copied.activation_checkpointing_enable()  # non-reentrant
        addrop = ADDrop(copied, ADDropConfig(p=0.5, q=0.5, layers="all", attribution=attribution, iga_steps=2))
        torch.manual_seed(0)
        addrop.loss(batch).backward()
        grads.append({name: p.grad for name, p in copied.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, gradient in grads[0].items():
        torch.testing.assert_close(grads[1][name], gradient, atol=1e-6, rtol=0, msg=name)


def test_a_plain_forward_after_an_addrop_step_is_stock():
    """The state an AD-DROP forward arms ends when the next forward of the whole model starts."""
    model, batch = tiny_eager_classifier("mpnet"), random_batch()
    with torch.no_grad():
        stock = model(**batch).logits
    addrop = ADDrop(model, ADDropConfig(p=0.9, q=0.9, layers="all"))
    addrop.loss(batch)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, stock)


def test_talking_head_deberta_is_refused_in_one_line():
    config = DebertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, talking_head=True)
    with pytest.raises(UserError, match=r"talking_head mixes the heads after the attention dropout") as caught:
        ADDrop(DebertaForSequenceClassification(config), ADDropConfig())
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("family", ["deberta-v2", "mpnet"])
def test_aa_scores_are_the_stock_attention_maps(family):
    model, batch = tiny_eager_classifier(family), random_batch()
    with torch.no_grad():
        stock = model(**batch, output_attentions=True).attentions
    found = ADDrop(model, ADDropConfig(layers="all", attribution="aa")).attribute(batch)
    for call, reference in enumerate(stock):
        torch.testing.assert_close(found.scores[call], reference, atol=0, rtol=0)


def test_gold_label_ga_is_the_gradient_of_the_gold_logit():
    model, batch = tiny_eager_classifier("deberta-v2"), random_batch()
    output = model(**batch, output_attentions=True)
    target = output.logits.gather(-1, batch["labels"][:, None]).sum()
    expected = torch.autograd.grad(target, output.attentions)
    found = ADDrop(model, ADDropConfig(layers="all", labels="gold")).scores(batch)
    visible = visible_keys(batch).expand(-1, 4, -1, -1)
    for call, reference in enumerate(expected):
        torch.testing.assert_close(found[call][visible], reference[visible], atol=1e-6, rtol=1e-5)


def test_a_layer_list_drops_only_in_those_layers():
    model, batch = tiny_eager_classifier("mpnet").train(), random_batch()
    addrop = ADDrop(model, ADDropConfig(layers=[1], p=0.9, q=1.0))
    masks = addrop.drop_masks(batch)
    assert list(masks) == [1] and masks[1].any()
    dropped, seen = addrop.take_drop_counts().tolist()
    assert dropped == float(masks[1].sum()) and 0 < dropped < seen


def test_bf16_attribution_ranks_in_float32_among_visible_keys():
    model, batch = tiny_eager_classifier("deberta-v2"), random_batch()
    addrop = ADDrop(model, ADDropConfig(layers="all", attribution_precision="bf16", p=0.5))
    found = addrop.attribute(batch)
    assert all(scores.dtype == torch.float32 and scores.isfinite().all() for scores in found.scores.values())
    for region in addrop.candidates(batch, found).values():
        assert region.any() and not (region & ~visible_keys(batch)).any()


def test_unmasked_weight_with_checkpointing_is_refused_on_the_hook_route():
    model = tiny_eager_classifier("deberta-v2").train()
    model.activation_checkpointing_enable()
    with pytest.raises(UserError, match=r"unmasked_weight > 0 with gradient checkpointing"):
        ADDrop(model, ADDropConfig(unmasked_weight=0.5))
