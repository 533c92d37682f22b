"""LoRA (peft) with AD-DROP: every adapter placement trains, and only the trainable parameters change."""

from __future__ import annotations

import pytest
import torch
from helpers import one_line_error
from tiny_models import decoder_batch, tiny_classifier, tiny_decoder

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.settings import ADDropConfig
from addrop_cli.recipe import LoraConfig
from addrop_cli.training.lora import apply_lora

PLACEMENTS = {
    "attention (peft's default q, v)": LoraConfig(r=4),
    "v_proj only": LoraConfig(r=4, target_modules=["v_proj"]),
    "MLP only": LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj"]),
    "second layer only": LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"], layers_to_transform=[1]),
}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("layers", ["first", "all"])
def test_every_placement_trains_with_addrop(placement, layers):
    model = apply_lora(tiny_decoder("qwen2").train(), PLACEMENTS[placement], "classification")
    addrop = ADDrop(model, ADDropConfig(p=0.5, q=0.5, layers=layers))
    batch = decoder_batch("left")
    scores = addrop.scores(batch)
    assert all(score.abs().sum() > 0 for score in scores.values())  # attribution reaches every selected layer
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(2):
        addrop.loss(batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter.detach(), before[name])
        if parameter.requires_grad:
            assert changed or "lora_A" in name, f"{name} is trainable but did not change"  # B starts at 0
        else:
            assert not changed, f"frozen {name} changed"
    assert any("lora_B" in name for name, p in model.named_parameters() if p.requires_grad)
    assert any("score" in name for name, p in model.named_parameters() if p.requires_grad)  # the head trains


def test_lora_errors_are_one_line():
    one_line_error(lambda: apply_lora(tiny_decoder("qwen2"), LoraConfig(r=4, target_modules=["no_such_proj"]),
                                      "classification"), "model type 'qwen2'", "no_such_proj")
    one_line_error(lambda: apply_lora(tiny_classifier("distilbert"), LoraConfig(r=4), "classification"),
                   "model type 'distilbert'", "lora.target_modules=[...]")
