"""``addrop eval --task hans|paws``: a tiny MNLI-style (or MRPC-style) checkpoint scored end to end, its classes
mapped by name; a head that always answers one class makes every cell of the table predictable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification
from typer.testing import CliRunner

from addrop_cli.cli import app
from addrop_cli.recipe import Recipe, build

DATA = Path(__file__).resolve().parent / "data"
runner = CliRunner()


def checkpoint(folder: Path, tokenizer, task: str, labels: list[str], always: str) -> Path:
    """A saved tiny classifier with ``labels`` in its config whose head always answers ``always``."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([100.0 if name == always else 0.0 for name in labels]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(build(Recipe, {"task": task}).to_dict()))
    return folder


def score(path: Path, task: str, data: str) -> dict:
    result = runner.invoke(app, ["eval", "--checkpoint", str(path), "--task", task, "--validation-file",
                                 str(DATA / data)])
    assert result.exit_code == 0, result.output
    return json.loads((path / f"eval_{task}.json").read_text())


@pytest.mark.parametrize("labels", [["entailment", "neutral", "contradiction"],
                                    ["contradiction", "neutral", "entailment"]])
def test_mnli_checkpoint_on_hans_gives_the_per_heuristic_table(tmp_path, tiny_tokenizer, labels):
    answers_neutral = score(checkpoint(tmp_path / "neutral", tiny_tokenizer, "mnli", labels, "neutral"),
                            "hans", "hans_sample.txt")
    assert answers_neutral["label_mapping"]["neutral"] == "non-entailment"
    assert answers_neutral["accuracy"] == pytest.approx(5 / 10)  # five of ten gold labels are non-entailment
    assert answers_neutral["predictions"] == {"entailment": 0, "non-entailment": 10}
    assert answers_neutral["by_heuristic"] == {
        heuristic: {"entailment": 0.0, "non-entailment": 1.0}
        for heuristic in ("constituent", "lexical_overlap", "subsequence")}
    answers_entailment = score(checkpoint(tmp_path / "entail", tiny_tokenizer, "mnli", labels, "entailment"),
                               "hans", "hans_sample.txt")
    assert answers_entailment["by_heuristic"]["subsequence"] == {"entailment": 1.0, "non-entailment": 0.0}


def test_mrpc_checkpoint_on_paws(tmp_path, tiny_tokenizer):
    path = checkpoint(tmp_path / "mrpc", tiny_tokenizer, "mrpc", ["not_equivalent", "equivalent"], "equivalent")
    scored = score(path, "paws", "paws_sample.tsv")
    assert scored["accuracy"] == pytest.approx(3 / 6) and scored["by_heuristic"] == {}
    assert scored["predictions"] == {"not_paraphrase": 0, "paraphrase": 6}


def test_dataset_config_is_only_for_the_hub_sets(tmp_path, tiny_tokenizer):
    path = checkpoint(tmp_path / "mnli", tiny_tokenizer, "mnli", ["entailment", "neutral", "contradiction"],
                      "neutral")
    result = runner.invoke(app, ["eval", "--checkpoint", str(path), "--task", "hans", "--validation-file",
                                 str(DATA / "hans_sample.txt"), "--dataset-config", "en"])
    assert result.exit_code == 2 and "--dataset-config en: only for --task hans|paws|paws-x" in result.stderr


def test_a_checkpoint_whose_labels_do_not_map_is_refused(tmp_path, tiny_tokenizer):
    path = checkpoint(tmp_path / "sst2", tiny_tokenizer, "sst2", ["negative", "positive"], "positive")
    result = runner.invoke(app, ["eval", "--checkpoint", str(path), "--task", "hans", "--validation-file",
                                 str(DATA / "hans_sample.txt")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "labels (negative, positive) cannot be mapped onto hans's (entailment / non-entailment)" in result.stderr
    assert not (path / "eval_hans.json").exists()
