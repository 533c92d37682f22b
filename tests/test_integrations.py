"""The HF Trainer drop-in: a one-line change gives cross-tuned AD-DROP."""

from __future__ import annotations

import torch
from datasets import Dataset
from tiny_models import tiny_classifier
from transformers import TrainingArguments

from addrop_cli.core.methods.addrop import ADDrop
from addrop_cli.core.methods.rdrop import RDrop
from addrop_cli.core.settings import ADDropConfig, RDropConfig
from addrop_cli.integrations import ADDropTrainer


def test_trainer_subclass_runs_addrop_on_even_epochs(tmp_path, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (24, 10), generator=generator)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 10] * 24,
                              "labels": torch.randint(0, 2, (24,), generator=generator).tolist()})
    model = tiny_classifier("bert").train()
    phases = []
    original = ADDrop.loss

    def spy(self, batch):
        phases.append(trainer.state.epoch)
        return original(self, batch)

    monkeypatch.setattr(ADDrop, "loss", spy)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no")
    trainer = ADDropTrainer(model=model, args=args, train_dataset=data, addrop=ADDropConfig(layers="all", p=0.5))
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert len(phases) == 3  # the 3 steps of epoch 2, and only those
    assert all(1.0 <= epoch < 2.0 for epoch in phases)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_trainer_runs_a_baseline_method_on_even_epochs(tmp_path, monkeypatch):
    """``addrop=ADDropConfig(method="rdrop")`` with ``rdrop=RDropConfig(...)``: R-Drop's loss, with those settings,
    in the regularized epoch only."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (16, 10), generator=generator)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 10] * 16,
                              "labels": torch.randint(0, 2, (16,), generator=generator).tolist()})
    seen = []
    original = RDrop.loss

    def spy(self, batch):
        seen.append((trainer.state.epoch, self.config.alpha))
        return original(self, batch)

    monkeypatch.setattr(RDrop, "loss", spy)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no")
    trainer = ADDropTrainer(model=tiny_classifier("bert").train(), args=args, train_dataset=data,
                            addrop=ADDropConfig(method="rdrop"), rdrop=RDropConfig(alpha=0.3))
    trainer.train()
    assert [alpha for _, alpha in seen] == [0.3, 0.3]
    assert all(1.0 <= epoch < 2.0 for epoch, _ in seen)


def test_a_method_section_named_like_a_trainer_argument_leaves_that_argument_to_trainer(tmp_path, monkeypatch):
    import dataclasses

    from transformers import TrainerCallback

    from addrop_cli import integrations
    from addrop_cli.recipe import method_sections

    @dataclasses.dataclass
    class Settings:
        rate: float = 0.1

    # As if a plugin's method kept its settings in a section named "callbacks".
    monkeypatch.setattr(integrations, "method_sections", lambda: {**method_sections(), "callbacks": Settings})
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True)
    callback = TrainerCallback()
    trainer = ADDropTrainer(model=tiny_classifier("bert"), args=args, callbacks=[callback],
                            rdrop=RDropConfig(alpha=0.3))
    assert callback in trainer.callback_handler.callbacks
    assert trainer.method_settings == {"rdrop": RDropConfig(alpha=0.3)}


def test_trainer_runs_addrop_on_a_causal_lm_batch_with_completion_labels(tmp_path, monkeypatch):
    """A language model trained on completions (labels IGNORE_INDEX on the prompt), as TRL's SFT data is: the
    attribution target is the completion's, inferred from the model's head."""
    from tiny_models import completion_batch, tiny_causal_lm

    batch = completion_batch("right", batch_size=8, seed=1)
    data = Dataset.from_dict({key: value.tolist() for key, value in batch.items()})
    losses = []
    original = ADDrop.loss

    def spy(self, inputs):
        assert self.task_type == "generation"
        losses.append(original(self, inputs))
        return losses[-1]

    monkeypatch.setattr(ADDrop, "loss", spy)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=4,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no")
    model = tiny_causal_lm().train()
    trainer = ADDropTrainer(model=model, args=args, train_dataset=data, addrop=ADDropConfig(layers="all", p=0.5))
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert len(losses) == 2 and all(torch.isfinite(loss) for loss in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
