"""R-Drop (core/methods/rdrop.py) against hand computations on tiny models with fixed dropout seeds."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import VOCAB, random_batch, tiny_classifier, tiny_decoder, tiny_seq2seq
from transformers import BertConfig, BertForTokenClassification

from addrop_cli.core.methods.rdrop import RDrop, symmetric_kl
from addrop_cli.core.methods.registry import make_regularizer
from addrop_cli.core.settings import ADDropConfig, RDropConfig


def stacked_logits(model, batch: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two passes as R-Drop runs them (one forward of the batch stacked on itself, dropout seeded)."""
    torch.manual_seed(seed)
    outputs = model(**{key: torch.cat([value, value]) for key, value in batch.items()})
    first, second = outputs.logits.chunk(2)
    return first, second, outputs


def hand_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) per row, summed over classes, written out: Σ_c p_c (log p_c − log q_c)."""
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    return (p * (p.log() - q.log())).sum(-1)


def hand_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row −log softmax(logits)[label]."""
    probabilities = torch.softmax(logits.double(), -1)
    return -probabilities.gather(-1, labels[..., None]).squeeze(-1).log()


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_loss_equals_hand_computation_both_passes_kl_both_ways(alpha):
    model = tiny_classifier("bert", num_labels=3).train()
    batch = random_batch(num_labels=3)
    first, second, _ = stacked_logits(model, batch, seed=7)
    assert not torch.allclose(first, second), "the two passes must draw different dropout"
    task = (hand_cross_entropy(first, batch["labels"]).mean() + hand_cross_entropy(second, batch["labels"]).mean()) / 2
    kl = ((hand_kl(first, second) + hand_kl(second, first)) / 2).mean()
    expected = task + alpha * kl

    torch.manual_seed(7)
    loss = RDrop(model, RDropConfig(alpha=alpha)).loss(batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.manual_seed(7)  # the term alone, same draws: α × the symmetric KL
    term = loss - RDrop(model, RDropConfig(alpha=0.0)).loss(batch)
    assert term.item() == pytest.approx(alpha * kl.item(), rel=1e-3) and kl.item() > 1e-6


def test_symmetric_kl_averages_both_directions():
    """On distributions far apart, KL(P ‖ Q) and KL(Q ‖ P) differ: the term is their mean, per example."""
    a = torch.tensor([[4.0, 0.0, -2.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [1.0, -1.0, 0.5]])
    forward, backward = hand_kl(a, b), hand_kl(b, a)
    assert not torch.allclose(forward, backward, rtol=0.05)
    assert symmetric_kl(a, b).item() == pytest.approx(((forward + backward) / 2).mean().item(), rel=1e-6)


def test_alpha_zero_with_dropout_off_equals_plain_fine_tuning_loss():
    model = tiny_classifier("bert").train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = random_batch()
    plain = model(**batch).loss
    assert RDrop(model, RDropConfig(alpha=0.0)).loss(batch).item() == pytest.approx(plain.item(), rel=1e-6)
    # With dropout off both passes agree, so even α > 0 adds nothing.
    assert RDrop(model, RDropConfig(alpha=5.0)).loss(batch).item() == pytest.approx(plain.item(), rel=1e-5)


def test_regression_uses_mse_between_the_two_outputs():
    model = tiny_classifier("bert", num_labels=1).train()
    batch = random_batch(num_labels=1)
    first, second, _ = stacked_logits(model, batch, seed=3)
    labels = batch["labels"].double()
    task = sum(((logits.squeeze(-1).double() - labels) ** 2).mean() for logits in (first, second)) / 2
    expected = task + 1.5 * ((first.double() - second.double()) ** 2).mean()
    torch.manual_seed(3)
    loss = RDrop(model, RDropConfig(alpha=1.5), task_type="regression").loss(batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_token_classification_kl_counts_only_labelled_tokens():
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=37, num_labels=5)).train()
    batch = random_batch()
    labels = torch.randint(0, 5, batch["input_ids"].shape, generator=torch.Generator().manual_seed(1))
    labels[:, 0] = -100  # [CLS]
    labels[:, 3] = -100  # a continuation sub-word
    labels[batch["attention_mask"] == 0] = -100  # padding
    batch["labels"] = labels
    first, second, _ = stacked_logits(model, batch, seed=5)
    valid = labels != -100
    kl = (hand_kl(first, second) + hand_kl(second, first)) / 2
    safe = labels.clamp(min=0)
    task = ((hand_cross_entropy(first, safe) * valid).sum() + (hand_cross_entropy(second, safe) * valid).sum()) \
        / (2 * valid.sum())
    expected = task + (kl * valid).sum() / valid.sum()
    torch.manual_seed(5)
    loss = RDrop(model, RDropConfig(alpha=1.0), task_type="token").loss(batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The term alone (α = 1 minus α = 0, same draws) is the mean over labelled tokens, not over every position.
    torch.manual_seed(5)
    term = loss - RDrop(model, RDropConfig(alpha=0.0), task_type="token").loss(batch)
    masked = ((kl * valid).sum() / valid.sum()).item()
    assert term.item() == pytest.approx(masked, rel=1e-3)
    assert not math.isclose(masked, kl.mean().item(), rel_tol=0.02)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_seq2seq_kl_is_per_target_token_without_padding(family):
    model = tiny_seq2seq(family).train()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(4, VOCAB, (3, 9), generator=generator)
    labels = torch.randint(4, VOCAB, (3, 6), generator=generator)
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    batch = {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": labels}
    first, second, outputs = stacked_logits(model, batch, seed=2)
    valid = labels != -100
    kl = (hand_kl(first, second) + hand_kl(second, first)) / 2
    expected = outputs.loss.double() + 0.5 * (kl * valid).sum() / valid.sum()
    torch.manual_seed(2)
    loss = RDrop(model, RDropConfig(alpha=0.5), task_type="seq2seq").loss(batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_decoder_classifier_takes_rdrop_and_its_gradients_reach_the_weights():
    model = tiny_decoder("qwen2").train()
    model.config.attention_dropout = 0.1
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.1
    batch = random_batch()
    regularizer = make_regularizer(model, ADDropConfig(method="rdrop"))
    assert isinstance(regularizer, RDrop)
    regularizer.loss(batch).backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0
    assert regularizer.take_drop_counts() is None
