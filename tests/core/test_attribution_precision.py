"""``addrop.attribution_precision``: the attribution pass in bf16 ranks like fp32, the masked pass is unchanged."""

from __future__ import annotations

import pytest
import torch
from helpers import one_line_error
from tiny_models import random_batch, tiny_classifier

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.settings import ADDropConfig


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum().clamp(min=1)).item()


def test_bad_precision_names_the_key():
    one_line_error(lambda: ADDropConfig(attribution_precision="fp8"), "addrop.attribution_precision='fp8'",
                   "same", "bf16")


def test_fp16_attribution_is_refused_on_the_cpu():
    model = tiny_classifier()
    one_line_error(lambda: ADDrop(model, ADDropConfig(attribution_precision="fp16")),
                   "attribution_precision='fp16' cannot run on this cpu device", "bf16 or same")


@pytest.mark.parametrize("layers", ["all", "first"])
def test_bf16_gradient_candidates_overlap_fp32_ones(layers):
    # Not AA on this model: its random weights give near-uniform attention, whose bf16 rounding ties most keys
    # (benchmarks/step_cost.py --agreement measures both on MiniLM).
    model = tiny_classifier(seed=3).eval()  # dropout off: both passes see the same function
    batch = random_batch(batch_size=8, length=16, seed=5)
    settings = {"attribution": "ga", "layers": layers, "p": 0.3}
    exact = ADDrop(model, ADDropConfig(**settings)).candidates(batch)
    fast = ADDrop(model, ADDropConfig(**settings, attribution_precision="bf16"))
    scores = fast.attribute(batch).scores
    assert all(score.dtype == torch.float32 for score in scores.values())  # ranked in fp32
    overlap = [jaccard(exact[call], region) for call, region in fast.candidates(batch).items()]
    assert min(overlap) >= 0.9, overlap


def test_the_masked_pass_keeps_the_run_precision():
    model = tiny_classifier(seed=1)
    addrop = ADDrop(model, ADDropConfig(attribution_precision="bf16", layers="all"))
    seen = []
    model.classifier.register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), args[0].dtype)))
    loss = addrop.loss(random_batch(batch_size=4, length=12, seed=2))
    assert seen == [(True, torch.bfloat16), (False, torch.float32)]  # attribution pass, then the masked pass
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("attribution", ["aa", "iga"])
def test_every_method_ranks_in_float32(attribution):
    model = tiny_classifier(seed=2).eval()
    addrop = ADDrop(model, ADDropConfig(attribution=attribution, layers="all", iga_steps=2,
                                        attribution_precision="bf16"))
    found = addrop.attribute(random_batch(batch_size=2, length=8, seed=1))
    assert {score.dtype for score in found.scores.values()} == {torch.float32}
    assert {probs.dtype for probs in found.attention.values()} == {torch.float32}
