"""IGA runs its attribution steps with dropout off, as the official code does (TaoYang225/AD-DROP,
mrpc/utils.py:63-103), so its scores do not depend on dropout draws; unlike the official code it puts each
module back in the mode the caller had."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_batch, tiny_classifier, tiny_eager_classifier

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.settings import ADDropConfig


@pytest.mark.parametrize("family", ["bert", "deberta-v2"])
def test_iga_scores_in_train_mode_are_the_eval_mode_scores_and_modes_are_restored(family):
    model = tiny_classifier(family) if family == "bert" else tiny_eager_classifier(family)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5  # large, so that any dropout draw would show in the scores
    batch = random_batch()
    addrop = ADDrop(model, ADDropConfig(attribution="iga", iga_steps=3, layers="all"))
    reference = addrop.scores(batch)  # eval mode: no dropout anywhere
    model.train()
    model.classifier.eval()  # a caller's own per-module mode must survive too
    modes = {name: module.training for name, module in model.named_modules()}
    first, second = addrop.scores(batch), addrop.scores(batch)
    assert {name: module.training for name, module in model.named_modules()} == modes
    for call, scores in reference.items():
        assert torch.equal(first[call], second[call])
        torch.testing.assert_close(first[call], scores, atol=0, rtol=0)
