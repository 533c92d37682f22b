"""HiddenCut (core/methods/hiddencut.py): one contiguous span per example at the stated layers, never padding or special
tokens, nothing outside its own forward; on both attention routes; refused where it does not apply."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_classifier, tiny_decoder, tiny_eager_classifier, tiny_seq2seq

from addrop_cli.core.methods.hiddencut import HiddenCut, js_divergence, span_mask, span_starts
from addrop_cli.core.settings import HiddenCutConfig
from addrop_cli.errors import UserError

CLS, SEP, PAD = 2, 3, 0
SPECIAL = [PAD, CLS, SEP]


def pair_batch(seed: int = 0) -> dict:
    """[CLS] a [SEP] b [SEP] pairs of different lengths, right-padded; ids 5..99 for words."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for first, second in [(9, 8), (4, 6), (6, 2), (12, 7)]:
        words = torch.randint(5, 100, (first + second,), generator=generator).tolist()
        rows.append([CLS, *words[:first], SEP, *words[first:], SEP])
    width = max(map(len, rows))
    ids = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
    return {"input_ids": ids, "attention_mask": (ids != PAD).long(), "labels": torch.tensor([0, 1, 1, 0])}


def layer_outputs(model) -> tuple[list[torch.Tensor], list]:
    """Record every encoder layer's output hidden states, as the next layer receives them."""
    seen, handles = [], []
    for layer in model.base_model.encoder.layer:
        handles.append(layer.register_forward_hook(
            lambda module, args, output: seen.append(output if isinstance(output, torch.Tensor) else output[0])))
    return seen, handles


def zero_rows(hidden: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: positions whose whole hidden vector is exactly zero."""
    return (hidden == 0).all(-1)


def expected_length(ids: torch.Tensor, ratio: float) -> int:
    return max(1, int((ids != PAD).sum().item() * ratio))


@pytest.mark.parametrize("layers", [[1], "all"])
def test_one_contiguous_span_of_the_stated_length_per_example_at_the_stated_layers(layers):
    model = tiny_classifier("bert").train()
    config = HiddenCutConfig(ratio=0.25, layers=layers)
    cut = HiddenCut(model, config, special_ids=SPECIAL)
    seen, _ = layer_outputs(model)
    batch = pair_batch()
    torch.manual_seed(0)
    cut.loss(batch)
    cut_layers = [0, 1, 2] if layers == "all" else layers
    copies = batch["input_ids"].shape[0]
    for index, hidden in enumerate(seen):
        zeros = zero_rows(hidden)
        assert not zeros[:copies].any(), "the clean copy is never cut"
        if index not in cut_layers:
            assert not zeros.any(), f"layer {index} is not selected"
            continue
        for ids, row in zip(batch["input_ids"], zeros[copies:], strict=True):
            where = row.nonzero().flatten().tolist()
            assert where == list(range(where[0], where[0] + len(where))), "one contiguous span"
            special = set((ids == CLS).nonzero().flatten().tolist()) | set((ids == SEP).nonzero().flatten().tolist())
            assert not set(where) & special and all(ids[i] != PAD for i in where)
            # The stated length, unless the span ran into the next special token (where it stops).
            stop = min(i for i in special | {len(ids)} if i > where[0])
            assert len(where) == min(expected_length(ids, config.ratio), stop - where[0])


def test_never_padding_or_special_tokens_over_many_draws():
    model = tiny_classifier("bert").train()
    cut = HiddenCut(model, HiddenCutConfig(ratio=0.6, select_ratio=1.0, layers=[0]), special_ids=SPECIAL)
    seen, _ = layer_outputs(model)
    batch = pair_batch(seed=3)
    copies = batch["input_ids"].shape[0]
    cuttable = (batch["input_ids"] >= 5)
    starts = torch.zeros_like(cuttable)
    for draw in range(40):
        seen.clear()
        torch.manual_seed(draw)
        cut.loss(batch)
        zeros = zero_rows(seen[0][copies:])
        assert zeros.any(-1).all(), "every example has a cut"
        assert not (zeros & ~cuttable).any()
        starts |= zeros & ~torch.roll(zeros, 1, dims=1)
    assert (starts.sum(-1) > 1).all(), "spans start at different tokens across draws"


def test_start_is_drawn_among_the_most_attended_cuttable_tokens():
    importance = torch.tensor([[9.0, 1.0, 8.0, 7.0, 0.5, 6.0, 9.5]])
    real = torch.ones(1, 7, dtype=torch.bool)
    eligible = torch.tensor([[False, True, True, True, True, True, False]])
    drawn = set()
    for seed in range(200):
        torch.manual_seed(seed)
        drawn.add(span_starts(importance, real, eligible, select_ratio=0.3).item())  # ⌊0.3 · 7⌋ = 2 tokens
    assert drawn == {2, 3}, "the two most attended cuttable tokens, never the special ones at 0 and 6"


def test_span_stops_at_the_first_token_that_may_not_be_cut():
    eligible = torch.tensor([[False, True, True, False, True, True, True, False]])
    mask = span_mask(torch.tensor([1]), torch.tensor([4]), eligible)
    assert mask.tolist() == [[False, True, True, False, False, False, False, False]]
    mask = span_mask(torch.tensor([4]), torch.tensor([2]), eligible)
    assert mask.tolist() == [[False, False, False, False, True, True, False, False]]


def test_nothing_is_cut_at_evaluation_or_outside_hiddencut_forwards():
    model = tiny_classifier("bert")
    reference = tiny_classifier("bert")
    batch = pair_batch()
    HiddenCut(model.train(), HiddenCutConfig(ratio=0.5), special_ids=SPECIAL)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits)
    model.train()
    reference.train()
    torch.manual_seed(1)
    ours = model(**batch).logits  # a plain training forward (a fine-tuning epoch): dropout only
    torch.manual_seed(1)
    torch.testing.assert_close(ours, reference(**batch).logits)


def test_loss_is_half_the_two_task_losses_plus_weighted_js():
    model = tiny_classifier("bert").train()
    batch = pair_batch()
    weight = 500.0  # the clean and cut predictions of a random tiny model are close: make the JS term count
    cut = HiddenCut(model, HiddenCutConfig(js_weight=weight), special_ids=SPECIAL)
    logits = []
    handle = model.register_forward_hook(lambda module, args, output: logits.append(output.logits))
    torch.manual_seed(4)
    loss = cut.loss(batch)
    handle.remove()
    clean, cutted = logits[0].double().chunk(2)
    labels = batch["labels"]
    task = sum(torch.nn.functional.cross_entropy(part, labels) for part in (clean, cutted)) / 2
    p, q = clean.softmax(-1), cutted.softmax(-1)
    m = (p + q) / 2
    js = ((p * (p / m).log()).sum(-1) / 2 + (q * (q / m).log()).sum(-1) / 2).mean()
    assert weight * js.item() > 1e-3 * task.item()
    assert loss.item() == pytest.approx((task + weight * js).item(), rel=1e-4)


def test_js_divergence_is_the_textbook_one():
    """½ KL(P ‖ M) + ½ KL(Q ‖ M) with M the mixture, on distributions far apart (not the fork's KL(M ‖ ·))."""
    a = torch.tensor([[4.0, 0.0, -2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 3.0, 0.0], [1.0, -1.0, 0.5]], dtype=torch.float64)
    p, q = a.softmax(-1), b.softmax(-1)
    m = (p + q) / 2
    textbook = ((p * (p / m).log()).sum(-1) / 2 + (q * (q / m).log()).sum(-1) / 2).mean()
    fork = ((m * (m / p).log()).sum(-1) / 2 + (m * (m / q).log()).sum(-1) / 2).mean()
    assert js_divergence(a, b).item() == pytest.approx(textbook.item(), rel=1e-5)
    assert textbook.item() != pytest.approx(fork.item(), rel=0.01)


def test_counts_the_cut_share():
    model = tiny_classifier("bert").train()
    cut = HiddenCut(model, HiddenCutConfig(ratio=0.25, layers=[0, 2]), special_ids=SPECIAL)
    batch = pair_batch()
    cut.loss(batch)
    removed, seen = cut.take_drop_counts().tolist()
    assert seen == 2 * batch["attention_mask"].sum().item()
    assert 0 < removed <= sum(expected_length(ids, 0.25) for ids in batch["input_ids"]) * 2
    assert cut.take_drop_counts() is None


@pytest.mark.parametrize("family", ["mpnet", "deberta-v2"])
def test_module_hook_route_models_are_cut_too(family):
    model = tiny_eager_classifier(family).train()
    cut = HiddenCut(model, HiddenCutConfig(ratio=0.25, layers=[1]), special_ids=SPECIAL)
    seen, _ = layer_outputs(model)
    batch = pair_batch()
    cut.loss(batch).backward()
    copies = batch["input_ids"].shape[0]
    zeros = zero_rows(seen[1])
    assert not zeros[:copies].any() and zeros[copies:].any(-1).all()
    assert not zero_rows(seen[0]).any()


def test_decoder_only_and_encoder_decoder_models_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"encoder self-attention models only.*causal"):
        HiddenCut(tiny_decoder("qwen2").train(), HiddenCutConfig())
    with pytest.raises(UserError, match="encoder-decoder"):
        HiddenCut(tiny_seq2seq("bart").train(), HiddenCutConfig())


def test_layers_out_of_range_name_the_key():
    with pytest.raises(UserError, match=r"hiddencut.layers=\[7\] is out of range"):
        HiddenCut(tiny_classifier("bert").train(), HiddenCutConfig(layers=[7]))
