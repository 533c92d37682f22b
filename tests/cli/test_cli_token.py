"""``addrop train --task conll2003`` end to end: tiny BERT and ELECTRA, and the real MiniLM on a CoNLL slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_without_addrop
from transformers import ElectraConfig, ElectraModel
from typer.testing import CliRunner

from addrop_cli.cli import app

runner = CliRunner()


def conll_slice(source: Path, target: Path, sentences: int) -> Path:
    """The first ``sentences`` sentences of a CoNLL file (document markers kept)."""
    blocks = source.read_text(encoding="utf-8").split("\n\n")[: sentences + 1]
    target.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def conll(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("conll")
    return (conll_slice(shared_data / "conll2003/train.txt", folder / "train.txt", 48),
            conll_slice(shared_data / "conll2003/valid.txt", folder / "valid.txt", 24))


@pytest.fixture(scope="module")
def tiny_electra(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_electra")
    ElectraModel(ElectraConfig(vocab_size=100, embedding_size=32, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=37, max_position_embeddings=128)
                 ).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["bert", "electra"])
def test_tiny_token_classifier_trains_through_the_cli(tmp_path, conll, family, tiny_checkpoint, tiny_electra,
                                                      tiny_tokenizer):
    model = tiny_checkpoint if family == "bert" else tiny_electra
    train_file, valid_file = conll
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--task", "conll2003", "--model", str(model), "--train-file",
                                 str(train_file), "--validation-file", str(valid_file), "--test-file", str(valid_file),
                                 "--epochs", "2", "--batch-size", "8", "--max-length", "64", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    rows = history(out)
    assert [r["phase"] for r in rows] == ["ft", "addrop"]
    assert set(rows[0]["eval"]) == {"precision", "recall", "f1", "accuracy"}
    assert set(rows[0]["eval_predictions"]) >= {"O", "B-PER", "I-MISC"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "f1" and set(metrics["test"]) == {"precision", "recall", "f1", "accuracy"}
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["id2label"]["1"] == "B-PER"
    # predict: a tag per word, for tagged and for words-only (one-column) CoNLL files alike.
    words_only = tmp_path / "words.txt"
    words_only.write_text("\n".join(line.split()[0] if line.split() else "" for line in
                                    valid_file.read_text().splitlines()) + "\n")
    for source, output in ((valid_file, tmp_path / "tagged.jsonl"), (words_only, tmp_path / "words.jsonl")):
        predicted = runner.invoke(app, ["predict", "--checkpoint", str(out), "--input-file", str(source),
                                        "--output", str(output)])
        assert predicted.exit_code == 0, predicted.output
    tagged, words = ([json.loads(line) for line in path.read_text().splitlines()]
                     for path in (tmp_path / "tagged.jsonl", tmp_path / "words.jsonl"))
    assert tagged == words
    # One tag per word, in order; a word gets none only when its first piece falls past --max-length 64 (counted
    # here with the tokenizer: [CLS], then each word's pieces, and [SEP] in the last place).
    sentences = sentences_of(valid_file)
    assert [row["tokens"] for row in tagged] == sentences
    expected = [words_within(sentence, tiny_tokenizer, 64) for sentence in sentences]
    assert [len(row["tags"]) for row in tagged] == expected
    cut = [count < len(sentence) for count, sentence in zip(expected, sentences, strict=True)]
    assert any(cut) and not all(cut)  # both kinds of sentence are there
    assert all(set(row["tags"]) <= set(config["label2id"]) for row in tagged)


def sentences_of(path: Path) -> list[list[str]]:
    """The words of each sentence of a CoNLL file (-DOCSTART- lines mark documents, not sentences)."""
    sentences, words = [], []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        parts = line.split()
        if parts and parts[0] != "-DOCSTART-":
            words.append(parts[0])
        elif words:
            sentences.append(words)
            words = []
    return sentences


def words_within(words: list[str], tokenizer, max_length: int) -> int:
    """How many words start inside ``max_length`` tokens: position 0 is [CLS], the last one [SEP]."""
    position = 1
    for count, word in enumerate(words):
        if position >= max_length - 1:
            return count
        position += len(tokenizer.tokenize(word))
    return len(words)


def test_token_recipe_settings():
    from addrop_cli.recipe import resolve_recipe

    recipe = resolve_recipe(task="conll2003")
    assert recipe.model == "google/electra-base-discriminator"
    assert (recipe.train.lr, recipe.train.batch_size, recipe.train.epochs, recipe.train.seed) == (2e-5, 32, 9, 526)
    assert (recipe.addrop.p, recipe.addrop.q, recipe.addrop.layers) == (0.8, 0.1, "all")
    assert recipe.data.label_all_tokens is True


@pytest.mark.slow
def test_minilm_ner_learns_and_loads_without_addrop(tmp_path, shared_data):
    folder = tmp_path / "data"
    folder.mkdir()
    train_file = conll_slice(shared_data / "conll2003/train.txt", folder / "train.txt", 240)
    valid_file = conll_slice(shared_data / "conll2003/valid.txt", folder / "valid.txt", 60)
    out = tmp_path / "ner"
    result = runner.invoke(app, ["train", "--task", "conll2003", "--model", "minilm", "--train-file", str(train_file),
                                 "--validation-file", str(valid_file), "--epochs", "2", "--lr", "3e-4",
                                 "--batch-size", "16", "--max-length", "64", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["f1"] > 0.1  # a model that predicts only O scores 0 (measured here: about 0.17)

    evaluated = runner.invoke(app, ["eval", "--checkpoint", str(out / "best"), "--output", str(tmp_path / "e.json")])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "e.json").read_text())["eval"] == pytest.approx(metrics["eval"], abs=1e-6)
    script = ("from transformers import AutoModelForTokenClassification, AutoTokenizer\n"
              f"m = AutoModelForTokenClassification.from_pretrained({str(out / 'best')!r})\n"
              f"t = AutoTokenizer.from_pretrained({str(out / 'best')!r})\n"
              "print(m(**t('EU rejects German call', return_tensors='pt')).logits.shape[-1])\n")
    loaded = run_without_addrop(script)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "9", loaded.stderr
