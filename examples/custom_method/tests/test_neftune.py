"""NEFTune against the stock model: untouched outside its step, the noise it claims, the loss of the noisy
forward, and reachable through addrop's method table once installed."""

from __future__ import annotations

import math

import torch
from addrop_neftune import METHOD, NEFTuneConfig
from addrop_neftune.regularizer import NEFTune
from transformers import BertConfig, BertForSequenceClassification

from addrop_cli.core.methods.registry import make_regularizer, methods
from addrop_cli.core.settings import ADDropConfig

WIDTH, LENGTH = 32, 12


def tiny_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config).eval()  # eval: no dropout, so forwards compare exactly


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, LENGTH), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1])}


def test_outside_its_step_the_model_is_stock():
    model, inputs = tiny_classifier(), batch()
    with torch.no_grad():
        before = model(**inputs).logits
        regularizer = NEFTune(model, NEFTuneConfig(alpha=50.0))
        regularizer.loss(inputs)
        after = model(**inputs).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_the_noise_is_uniform_within_alpha_over_the_root_of_length_times_width():
    model, inputs, alpha = tiny_classifier(), batch(), 5.0
    regularizer = NEFTune(model, NEFTuneConfig(alpha=alpha))
    embeddings = model.get_input_embeddings()
    seen = []  # hooks run in the order they were registered: this one sees NEFTune's output
    embeddings.register_forward_hook(lambda module, args, output: seen.append(output.detach()))
    with torch.no_grad():
        clean = embeddings(inputs["input_ids"])
        regularizer.loss(inputs)
    noise = seen[-1] - clean
    bound = alpha / math.sqrt(LENGTH * WIDTH)
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.abs().max() > 0.9 * bound  # 1,152 uniform draws reach close to the bound
    assert abs(noise.mean()) < 0.1 * bound


def test_the_loss_is_the_models_loss_on_noisy_embeddings_and_trains():
    model, inputs, alpha = tiny_classifier(), batch(), 5.0
    regularizer = NEFTune(model, NEFTuneConfig(alpha=alpha))
    torch.manual_seed(7)
    loss = regularizer.loss(inputs)
    torch.manual_seed(7)  # the same draws, added by hand
    clean = model.bert.embeddings.word_embeddings(inputs["input_ids"])
    bound = alpha / math.sqrt(LENGTH * WIDTH)
    noisy = clean + torch.empty_like(clean).uniform_(-bound, bound)
    expected = model(inputs_embeds=noisy, attention_mask=inputs["attention_mask"], labels=inputs["labels"]).loss
    torch.testing.assert_close(loss, expected)
    assert loss != model(**inputs).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(grad.isfinite().all() for grad in grads)


def test_addrop_finds_it_in_its_method_table():
    assert methods()["neftune"] is METHOD
    regularizer = make_regularizer(tiny_classifier(), ADDropConfig(method="neftune"))
    assert isinstance(regularizer, NEFTune) and regularizer.settings == NEFTuneConfig()


def test_the_trainer_drop_in_runs_it_in_the_regularized_epoch_with_its_settings(tmp_path, monkeypatch):
    from datasets import Dataset
    from transformers import TrainingArguments

    from addrop_cli.integrations import ADDropTrainer

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (16, LENGTH), generator=generator)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * LENGTH] * 16,
                              "labels": torch.randint(0, 2, (16,), generator=generator).tolist()})
    seen = []
    original = NEFTune.loss

    def spy(self, batch):
        seen.append((trainer.state.epoch, self.settings.alpha))
        return original(self, batch)

    monkeypatch.setattr(NEFTune, "loss", spy)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no")
    trainer = ADDropTrainer(model=tiny_classifier().train(), args=args, train_dataset=data,
                            addrop=ADDropConfig(method="neftune"), neftune=NEFTuneConfig(alpha=7.0))
    trainer.train()
    assert [alpha for _, alpha in seen] == [7.0, 7.0]
    assert all(1.0 <= epoch < 2.0 for epoch, _ in seen)
