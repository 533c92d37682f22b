"""AD-DROP, R-Drop and HiddenCut on a decoder-only language model trained on completions: the attribution target
is minus the cross-entropy of the pseudo-label next tokens over completion positions, checked against stock eager
attention; the masked forward against the stock model with a 4-D additive mask; causality and padding."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import completion_batch, tiny_causal_lm
from torch.nn import functional as F

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.methods.hiddencut import HiddenCut
from addrop_cli.core.methods.rdrop import RDrop, consistency, symmetric_kl
from addrop_cli.core.model_setup import infer_task_type
from addrop_cli.core.routes.base import ForwardState
from addrop_cli.core.routes.connect import install
from addrop_cli.core.settings import GENERATION, IGNORE_INDEX, ADDropConfig, HiddenCutConfig, RDropConfig
from addrop_cli.errors import UserError

SIDES = ["left", "right"]


def inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


def stock_gradients(model, batch: dict, gold: bool = False) -> tuple[torch.Tensor, ...]:
    """The reference, written out on stock eager attention: F = -CE of the next tokens (the argmax, or the gold
    ones) over the positions whose next token is labelled, differentiated w.r.t. output_attentions."""
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    out = reference(**inputs(batch), output_attentions=True)
    logits, following = out.logits[:, :-1], batch["labels"][:, 1:]
    targets = following if gold else logits.argmax(-1).masked_fill(following == IGNORE_INDEX, IGNORE_INDEX)
    target = -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return torch.autograd.grad(target, out.attentions)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_causal_language_model_is_a_generation_task(family):
    """LlamaForCausalLM and GPT2LMHeadModel alike: transformers' causal-LM heads, whatever their class name."""
    assert infer_task_type(tiny_causal_lm(family=family)) == GENERATION


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("labels", ["pseudo", "gold"])
def test_attribution_equals_autograd_of_the_completion_target_on_stock_attention(family, side, labels):
    model = tiny_causal_lm(family=family)
    batch = completion_batch(side)
    scores = ADDrop(model, ADDropConfig(layers="all", labels=labels)).scores(batch)
    expected = stock_gradients(model, batch, gold=labels == "gold")
    assert sorted(scores) == [0, 1]
    for layer, score in scores.items():
        assert expected[layer].abs().sum() > 0
        torch.testing.assert_close(score, expected[layer], atol=1e-7, rtol=1e-4)


def test_only_the_completion_positions_enter_the_target():
    """Position 0's label is never a target (nothing predicts the first token): giving it a real id changes
    nothing. Labelling one more prompt token as completion changes the attribution."""
    model = tiny_causal_lm()
    batch = completion_batch("right")
    addrop = ADDrop(model, ADDropConfig(layers="all", labels="gold"))
    base = addrop.scores(batch)[0]
    first = batch["labels"].clone()
    first[:, 0] = batch["input_ids"][:, 0]
    torch.testing.assert_close(addrop.scores({**batch, "labels": first})[0], base, atol=0, rtol=0)
    widened = batch["labels"].clone()
    widened[0, 3] = batch["input_ids"][0, 3]
    assert not torch.allclose(addrop.scores({**batch, "labels": widened})[0], base)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_and_right_padding_give_the_same_loss_and_attribution(family):
    """The collator numbers positions from each row's first real token, so padding side changes nothing, with
    rotary positions and with GPT-2's absolute ones alike."""
    from tiny_models import causal_tokenizer

    from addrop_cli.tasks.generation_data import Completion, completion_collator, encode_completions

    model = tiny_causal_lm(family=family)
    rows = [Completion("reverse : red cat :", "cat red"), Completion("reverse : red cat dog sun :", "sun dog cat red")]
    results = []
    for side in SIDES:
        tokenizer = causal_tokenizer()
        tokenizer.padding_side = side
        batch = completion_collator(tokenizer)(encode_completions(rows, tokenizer, max_length=32, chat=False))
        real = batch["attention_mask"].bool()
        scores = ADDrop(model, ADDropConfig(layers=[0])).scores(batch)[0]
        rows_kept = scores[0][:, real[0]][:, :, real[0]]  # the short row's real queries and keys
        results.append((model(**batch).loss, rows_kept))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def drops_keeping_the_diagonal(batch: dict, heads: int = 4, seed: int = 0) -> torch.Tensor:
    """(B, H, T, T) random drops, the same in every head, never a row's own position (so no row loses every key)."""
    generator = torch.Generator().manual_seed(seed)
    _, length = batch["input_ids"].shape
    one = torch.rand(batch["input_ids"].shape[0], 1, length, length, generator=generator) < 0.5
    one &= ~torch.eye(length, dtype=torch.bool)
    return one.expand(-1, heads, -1, -1)


@pytest.mark.parametrize("side", SIDES)
def test_the_masked_forward_equals_the_stock_model_with_a_4d_additive_mask(side):
    model = tiny_causal_lm()
    stock = copy.deepcopy(model)
    install(model)
    batch = completion_batch(side)
    drops = drops_keeping_the_diagonal(batch)
    masked = model(**inputs(batch), addrop_state=ForwardState(drops={0: drops, 1: drops})).logits
    length = batch["input_ids"].shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & batch["attention_mask"].bool()[:, None, None, :] & ~drops[:, :1]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    expected = stock(input_ids=batch["input_ids"], attention_mask=additive).logits
    real = batch["attention_mask"].bool()
    assert not torch.allclose(masked[real], stock(**inputs(batch)).logits[real])  # something was dropped
    torch.testing.assert_close(masked[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", SIDES)
def test_later_tokens_never_change_the_masked_forward_at_earlier_positions(side):
    model = tiny_causal_lm()
    for draw in range(6):
        batch = completion_batch(side, seed=draw)
        torch.manual_seed(draw)
        drops = ADDrop(model, ADDropConfig(p=0.5, q=(1.0, 0.5)[draw % 2], layers="all")).drop_masks(batch)
        real = batch["attention_mask"].bool()
        t = 3 + draw
        later = real.clone()
        later[:, : t + 1] = False
        changed = batch["input_ids"].masked_scatter(later, (batch["input_ids"][later] + 7) % 97 + 3)
        state = ForwardState(drops=drops)
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], addrop_state=state)
        state = ForwardState(drops=drops)
        after = model(input_ids=changed, attention_mask=batch["attention_mask"], addrop_state=state)
        earlier = real & ~later
        torch.testing.assert_close(after.logits[earlier], before.logits[earlier], atol=1e-6, rtol=0)


def test_candidates_fall_on_keys_each_row_sees_and_padding_rows_get_none():
    model = tiny_causal_lm()
    batch = completion_batch("left")
    addrop = ADDrop(model, ADDropConfig(p=0.5, layers="all"))
    regions = addrop.candidates(batch)
    length = batch["input_ids"].shape[1]
    real = batch["attention_mask"].bool()
    visible = torch.ones(length, length, dtype=torch.bool).tril() & real[:, None, None, :] & real[:, None, :, None]
    for region in regions.values():
        assert region.any() and not (region & ~visible).any()


def test_the_addrop_loss_is_the_causal_lm_loss_of_the_masked_forward_and_trains():
    model = tiny_causal_lm().train()
    batch = completion_batch("right")
    addrop = ADDrop(model, ADDropConfig(p=0.3, q=0.0, layers="all"))  # q = 0: nothing dropped
    torch.testing.assert_close(addrop.loss(batch), model(**batch).loss)
    loss = ADDrop(model, ADDropConfig(p=0.5, q=0.5, layers="all")).loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_rdrop_compares_the_next_token_distributions_of_completion_positions_only():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 5, 7, generator=generator), torch.randn(2, 5, 7, generator=generator)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 3, 4]])
    # Positions whose next token is labelled: (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3).
    keep = torch.tensor([[False, True, True, False], [True, True, True, True]])
    expected = symmetric_kl(first[:, :-1][keep], second[:, :-1][keep])
    torch.testing.assert_close(consistency(first, second, GENERATION, labels), expected)
    model = tiny_causal_lm().train()
    loss = RDrop(model, RDropConfig(alpha=1.0)).loss(completion_batch("right"))
    assert torch.isfinite(loss)


def test_hiddencut_is_refused_in_one_line_for_a_language_model():
    with pytest.raises(UserError, match=r"cuts encoder self-attention models only.*use --method addrop or rdrop"):
        HiddenCut(tiny_causal_lm(), HiddenCutConfig())


def test_the_attribution_forward_projects_only_the_positions_that_predict_a_completion_token():
    """The vocabulary projection of the other positions cannot reach F: it is not computed (logits_to_keep)."""
    model = tiny_causal_lm()
    batch = completion_batch("right")
    predicting = (batch["labels"][:, 1:] != IGNORE_INDEX).any(0)
    logits = ADDrop(model, ADDropConfig(layers="all")).attribute(batch).logits
    assert logits.shape == (3, int(predicting.sum()), model.config.vocab_size)
    assert predicting.sum() < batch["input_ids"].shape[1] - 1
    full = model(**inputs(batch)).logits[:, :-1][:, predicting]
    torch.testing.assert_close(logits, full)
