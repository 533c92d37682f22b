"""The AD-DROP step: joint attribution gradients, label modes, variants, layer selection, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import random_batch, tiny_classifier
from transformers import XLMConfig, XLMForSequenceClassification

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.routes.base import ForwardState
from addrop_cli.core.settings import ADDropConfig, epoch_phase
from addrop_cli.errors import UserError


def per_layer_gradient(model, batch, call, labels):
    """Reference: one forward and one gradient call for a single layer, logit of ``labels``."""
    state = ForwardState(record=frozenset([call]))
    logits = model(**batch, addrop_state=state).logits
    target = logits.gather(-1, labels[:, None]).sum()
    return torch.autograd.grad(target, [state.recorded[call]])[0]


def test_joint_gradient_equals_per_layer_gradients():
    model = tiny_classifier("bert")
    addrop = ADDrop(model, ADDropConfig(layers="all"))
    batch = random_batch()
    scores = addrop.scores(batch)
    pseudo = model(**batch).logits.argmax(-1)
    assert sorted(scores) == [0, 1, 2]
    for call, score in scores.items():
        torch.testing.assert_close(score, per_layer_gradient(model, batch, call, pseudo))
        assert score.abs().sum() > 0


def test_attribution_writes_no_parameter_grad_and_loss_trains_all():
    model = tiny_classifier("bert")
    addrop = ADDrop(model, ADDropConfig(layers="all", p=0.5, q=0.5))
    batch = random_batch()
    addrop.drop_masks(batch)
    assert all(p.grad is None for p in model.parameters())
    addrop.loss(batch).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unmasked_weight_mixes_the_plain_loss_in():
    model = tiny_classifier("bert").eval()  # no hidden dropout: the plain forward is deterministic
    batch = random_batch()
    plain = model(**batch).loss

    def mixed(weight):
        torch.manual_seed(0)
        return ADDrop(model, ADDropConfig(layers="all", p=0.5, q=1.0, unmasked_weight=weight)).loss(batch)

    masked = mixed(0.0)
    assert not torch.allclose(masked, plain)
    torch.testing.assert_close(mixed(1.0), plain)
    torch.testing.assert_close(mixed(0.25), 0.75 * masked + 0.25 * plain)


def test_gold_and_pseudo_labels_differ_only_where_prediction_is_wrong():
    model = tiny_classifier("bert")
    batch = random_batch()
    pseudo = model(**batch).logits.argmax(-1)
    batch["labels"] = pseudo.clone()
    batch["labels"][1] = 1 - pseudo[1]  # one wrong "gold" label
    gold_scores = ADDrop(model, ADDropConfig(labels="gold")).scores(batch)[0]
    pseudo_scores = ADDrop(model, ADDropConfig(labels="pseudo")).scores(batch)[0]
    for row in (0, 2, 3):
        torch.testing.assert_close(gold_scores[row], pseudo_scores[row])
    assert not torch.allclose(gold_scores[1], pseudo_scores[1])


def test_regression_attribution_is_the_negative_loss_gradient():
    model = tiny_classifier("bert", num_labels=1)
    batch = random_batch(num_labels=1)
    addrop = ADDrop(model, ADDropConfig(layers="all"))
    assert addrop.task_type == "regression"
    scores = addrop.scores(batch)
    state = ForwardState(record=frozenset(scores))
    loss = model(**batch, addrop_state=state).loss  # transformers' MSE for num_labels == 1
    grads = torch.autograd.grad(loss, [state.recorded[c] for c in sorted(scores)])
    for call, grad in zip(sorted(scores), grads, strict=True):
        torch.testing.assert_close(scores[call], -grad)


@pytest.mark.parametrize("attribution", ["ga", "iga", "aa", "rd"])
def test_each_variant_builds_masks_and_trains(attribution):
    model = tiny_classifier("bert")
    addrop = ADDrop(model, ADDropConfig(attribution=attribution, layers=[0, 2], p=0.5, q=0.5, iga_steps=3))
    batch = random_batch()
    masks = addrop.drop_masks(batch)
    assert sorted(masks) == [0, 2]
    for mask in masks.values():
        assert mask.shape == (4, 4, 11, 11) and mask.dtype == torch.bool
        assert not mask[1][..., 9:].any()  # padding of example 1 is never dropped
        assert mask.any()
    loss = addrop.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()


def test_aa_scores_are_the_attention_probabilities():
    """Against stock eager BERT's own attention probabilities (output_attentions), every layer, on a padded batch:
    the padded keys' zeros included. Both are float32 softmaxes of the same logits: assert_close's defaults."""
    model = tiny_classifier("bert")
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    batch = random_batch()
    expected = reference(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True).attentions
    scores = ADDrop(model, ADDropConfig(attribution="aa", layers="all")).scores(batch)
    assert sorted(scores) == [0, 1, 2]
    for layer, score in scores.items():
        torch.testing.assert_close(score, expected[layer])
    padded_keys = ~batch["attention_mask"].bool()[:, None, None, :].expand_as(scores[0])
    assert padded_keys.any() and not scores[0][padded_keys].any()
    assert not torch.allclose(scores[0], scores[1])  # each layer its own: a layer mix-up would show


def test_iga_scales_attention_by_summed_gradients():
    model = tiny_classifier("bert")
    batch = random_batch()
    iga = ADDrop(model, ADDropConfig(attribution="iga", iga_steps=1)).scores(batch)[0]
    # With m = 1 the single step is the unscaled attention: B = A * dF/dA.
    attention = ADDrop(model, ADDropConfig(attribution="aa")).scores(batch)[0]
    gradient = ADDrop(model, ADDropConfig(attribution="ga")).scores(batch)[0]
    torch.testing.assert_close(iga, attention * gradient)


def test_iga_matches_the_reference_formula():
    """Eq. 3 as the reference code computes it, written out here on a stock eager BERT: at step k the second
    layer's context A·V is scaled by alpha = k/m (a forward hook), the pseudo label is taken again from that
    step's logits, and the gradient is taken w.r.t. the unscaled A; B = A / m ⊙ Σ_k gradient."""
    model = tiny_classifier("bert")
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    batch = random_batch()
    plain = {k: v for k, v in batch.items() if k != "labels"}
    steps = 4
    iga = ADDrop(model, ADDropConfig(attribution="iga", iga_steps=steps, layers=[1])).scores(batch)[1]
    attention = reference(**plain, output_attentions=True).attentions[1].detach()
    self_attention = reference.bert.encoder.layer[1].attention.self
    total = torch.zeros_like(attention)
    for k in range(1, steps + 1):
        handle = self_attention.register_forward_hook(
            lambda module, args, output, alpha=k / steps: (output[0] * alpha, *output[1:]))
        out = reference(**plain, output_attentions=True)
        handle.remove()
        target = out.logits.gather(-1, out.logits.argmax(-1)[:, None]).sum()
        total += torch.autograd.grad(target, [out.attentions[1]])[0]
    expected = attention * total / steps
    assert expected.abs().sum() > 0
    torch.testing.assert_close(iga, expected, atol=1e-7, rtol=1e-4)


def test_layer_selection_first_all_and_list():
    model = tiny_classifier("bert")
    assert ADDrop(model, ADDropConfig(layers="first")).selected == (0,)
    assert ADDrop(model, ADDropConfig(layers="all")).selected == (0, 1, 2)
    assert ADDrop(model, ADDropConfig(layers=[2, 0])).selected == (0, 2)
    with pytest.raises(UserError, match=r"out of range.*3 encoder attention layers, valid indices are 0 to 2"):
        ADDrop(model, ADDropConfig(layers=[3]))


def test_high_and_low_strategies_split_the_same_attribution():
    """At p = 1/2 with even lengths (12, 10, 8, 6 real tokens) the high and low candidate regions of the same
    GA scores are exact complements over the real query rows and keys (see masking.candidate_region)."""
    model = tiny_classifier("bert")
    batch = random_batch(length=12)
    high = ADDrop(model, ADDropConfig(strategy="high", p=0.5))
    low = ADDrop(model, ADDropConfig(strategy="low", p=0.5))
    attribution = high.attribute(batch)
    high_region, low_region = high.candidates(batch)[0], low.candidates(batch, attribution)[0]
    assert torch.equal(high_region, high.candidates(batch, attribution)[0])
    real = batch["attention_mask"].bool()
    real_positions = (real[:, None, :, None] & real[:, None, None, :]).expand_as(high_region)
    assert torch.equal(high_region ^ low_region, real_positions)
    assert not (high_region & low_region).any()


def test_attribute_returns_attention_scores_and_logits():
    model = tiny_classifier("bert")
    batch = random_batch()
    addrop = ADDrop(model, ADDropConfig(layers="all"))
    result = addrop.attribute(batch)
    assert sorted(result.attention) == sorted(result.scores) == [0, 1, 2]
    torch.testing.assert_close(result.logits, model(**batch).logits)
    for call, probs in result.attention.items():
        assert probs.shape == result.scores[call].shape == (4, 4, 11, 11) and not probs.requires_grad
        real_rows = probs.sum(-1)[batch["attention_mask"].bool()[:, None, :].expand(-1, 4, -1)]
        torch.testing.assert_close(real_rows, torch.ones_like(real_rows))


def test_a_model_neither_route_reaches_is_refused_in_one_line():
    """XLM calls attention dropout as a function, not a module, and does not use AttentionInterface."""
    config = XLMConfig(vocab_size=100, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64)
    with pytest.raises(UserError, match=r"'xlm'.*neither routes its attention through transformers' "
                       r"AttentionInterface nor applies a dropout module") as caught:
        ADDrop(XLMForSequenceClassification(config), ADDropConfig())
    assert "\n" not in str(caught.value)


def test_dropped_positions_are_high_attribution_ones():
    model = tiny_classifier("bert")
    batch = random_batch()
    addrop = ADDrop(model, ADDropConfig(p=0.3, q=1.0))
    scores = addrop.scores(batch)[0]
    dropped = addrop.drop_masks(batch)[0]
    cls_row_scores, cls_row_dropped = scores[0, :, 0], dropped[0, :, 0]  # [CLS] query row carries the gradient
    for head in range(4):
        kept = cls_row_scores[head][~cls_row_dropped[head]]
        assert cls_row_scores[head][cls_row_dropped[head]].min() >= kept.max()


def test_cross_tuning_schedule():
    phases = [epoch_phase(epoch, ADDropConfig()) for epoch in range(1, 7)]
    assert phases == ["ft", "addrop", "ft", "addrop", "ft", "addrop"]
    assert {epoch_phase(e, ADDropConfig(cross_tuning=False)) for e in range(1, 5)} == {"addrop"}
    assert {epoch_phase(e, ADDropConfig(enabled=False)) for e in range(1, 5)} == {"ft"}
