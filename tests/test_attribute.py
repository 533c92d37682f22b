"""``addrop attribute``: tensors, figures, summary and gallery for sequence, token and seq2seq checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_models import tiny_seq2seq
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification
from typer.testing import CliRunner

from addrop_cli.attribute import row_ranks, token_attribution
from addrop_cli.cli import app
from addrop_cli.plots import region_outline
from addrop_cli.tasks.registry import CONLL_TAGS

runner = CliRunner()
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=128)
SST2_LABELS = ["negative", "positive"]
SENTENCES = ["the movie was very good", "a bad film", "the cat sat on the mat", "it is not great"]


def save(model, directory: Path, tokenizer) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_tokenizer) -> Path:
    torch.manual_seed(0)
    return save(BertForSequenceClassification(BertConfig(**TINY, num_labels=2)),
                tmp_path_factory.mktemp("tiny_sst2"), tiny_tokenizer)


def attribute(checkpoint: Path, out: Path, *args: str):
    result = runner.invoke(app, ["attribute", "--checkpoint", str(checkpoint), "--output-dir", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text()), load_file(out / "attributions.safetensors")


def assert_gallery_is_complete(out: Path, summary: dict) -> None:
    """Every PNG decodes, and index.html refers only to files that exist, by relative paths."""
    page = (out / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    files = [link for link in links if not link.startswith("#")]
    assert files and not any("://" in link or link.startswith("/") for link in files)
    for link in files:
        assert (out / link).is_file(), link
    for anchor in (link[1:] for link in links if link.startswith("#")):
        assert f'id="{anchor}"' in page
    images = [example["images"]["tokens"] for example in summary["examples"]]
    images += [path for example in summary["examples"] for path in example["images"]["layers"].values()]
    assert set(images) <= set(files)
    for image in images:
        with Image.open(out / image) as png:
            png.load()
            assert png.format == "PNG" and min(png.size) > 100


def test_sentence_of_ones_own_on_a_sequence_classifier(classifier, tmp_path):
    out = tmp_path / "report"
    summary, tensors = attribute(classifier, out, "--task", "sst2", "--text", SENTENCES[0], "--p", "0.5",
                                 "--q", "0.5")
    (example,) = summary["examples"]
    n = len(example["tokens"])
    assert example["tokens"][0] == "[CLS]" and example["text"] == SENTENCES[0]
    assert example["prediction"]["label"] in SST2_LABELS and example["prediction"]["probability"] >= 0.5
    assert summary["layers"] == [0, 1] and summary["heads"] == "mean" and summary["labels"] == "pseudo"
    assert sorted(tensors) == sorted(f"ex0.layer{layer}.{name}" for layer in (0, 1)
                                     for name in ("attention", "attribution", "candidates", "dropped"))
    for layer in (0, 1):
        attention, attribution = tensors[f"ex0.layer{layer}.attention"], tensors[f"ex0.layer{layer}.attribution"]
        candidates, dropped = tensors[f"ex0.layer{layer}.candidates"], tensors[f"ex0.layer{layer}.dropped"]
        assert attention.shape == attribution.shape == candidates.shape == dropped.shape == (4, n, n)
        assert candidates.dtype == dropped.dtype == torch.bool
        torch.testing.assert_close(attention.sum(-1), torch.ones(4, n))
        assert not (dropped & ~candidates).any() and dropped.any()
        top = example["layers"][str(layer)]["key_tokens"]
        assert len(top) == 5 and top[0]["attribution"] == max(attribution.sum(dim=(0, 1)).tolist())
    # Layer 0 scores have no ties, so each query row has exactly ceil(p n) candidates.
    assert (tensors["ex0.layer0.candidates"].sum(-1) == -(-n // 2)).all()
    assert_gallery_is_complete(out, summary)


def test_selected_heads_long_inputs_and_seeded_masks(classifier, tmp_path):
    long_text = " ".join(["the cat sat on the mat"] * 6)
    first, tensors = attribute(classifier, tmp_path / "a", "--task", "sst2", "--text", long_text, "--heads", "2,0",
                               "--layers", "1", "--max-tokens", "12", "--method", "aa")
    _, again = attribute(classifier, tmp_path / "b", "--task", "sst2", "--text", long_text, "--heads", "0,2",
                         "--layers", "1", "--max-tokens", "12", "--method", "aa")
    n = len(first["examples"][0]["tokens"])
    assert n > 12 and first["heads"] == [0, 2] and sorted(tensors) == sorted(again)
    assert tensors["ex0.layer1.attribution"].shape == (2, n, n)
    torch.testing.assert_close(tensors["ex0.layer1.attribution"], tensors["ex0.layer1.attention"])  # aa
    assert all(torch.equal(tensors[name], again[name]) for name in tensors)  # same seed, same drop mask
    assert_gallery_is_complete(tmp_path / "a", first)


def test_random_strategy_outlines_a_seeded_random_region_not_the_high_one(classifier, tmp_path):
    args = ("--task", "sst2", "--text", SENTENCES[2], "--layers", "0", "--p", "0.3")
    _, high = attribute(classifier, tmp_path / "high", *args)
    _, random_region = attribute(classifier, tmp_path / "random", *args, "--set", "addrop.strategy=random")
    _, again = attribute(classifier, tmp_path / "again", *args, "--set", "addrop.strategy=random")
    name = "ex0.layer0.candidates"
    torch.testing.assert_close(random_region["ex0.layer0.attribution"], high["ex0.layer0.attribution"])
    assert not torch.equal(random_region[name], high[name])
    assert torch.equal(random_region[name].sum(-1), high[name].sum(-1))  # same size per query row
    assert torch.equal(random_region[name], again[name])


def test_gold_and_pseudo_attributions_differ_only_where_the_prediction_is_wrong(classifier, tmp_path):
    unlabelled = tmp_path / "unlabelled.tsv"
    unlabelled.write_text("sentence\n" + "".join(f"{s}\n" for s in SENTENCES))
    pseudo, pseudo_tensors = attribute(classifier, tmp_path / "pseudo", "--task", "sst2", "--input-file",
                                       str(unlabelled), "--layers", "first", "--max-examples", "3")
    assert len(pseudo["examples"]) == 3 and pseudo["examples"][0]["gold"] is None
    predicted = [SST2_LABELS.index(example["prediction"]["label"]) for example in pseudo["examples"]]
    gold_labels = [1 - predicted[0], predicted[1], predicted[2], 0]  # the first prediction is wrong
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in zip(SENTENCES, gold_labels,
                                                                                      strict=True)))
    gold, gold_tensors = attribute(classifier, tmp_path / "gold", "--task", "sst2", "--input-file", str(labelled),
                                   "--labels", "gold", "--layers", "first", "--max-examples", "3")
    assert [example["gold"] for example in gold["examples"]] == [SST2_LABELS[y] for y in gold_labels[:3]]
    assert not torch.allclose(gold_tensors["ex0.layer0.attribution"], pseudo_tensors["ex0.layer0.attribution"])
    for i in (1, 2):
        torch.testing.assert_close(gold_tensors[f"ex{i}.layer0.attribution"],
                                   pseudo_tensors[f"ex{i}.layer0.attribution"])


def test_token_classification_checkpoint(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    config = BertConfig(**TINY, num_labels=len(CONLL_TAGS), id2label=dict(enumerate(CONLL_TAGS)),
                        label2id={tag: i for i, tag in enumerate(CONLL_TAGS)})
    checkpoint = save(BertForTokenClassification(config), tmp_path / "ner", tiny_tokenizer)
    out = tmp_path / "report"
    summary, tensors = attribute(checkpoint, out, "--task", "conll2003", "--text", "the man sat in london")
    example = summary["examples"][0]
    n = len(example["tokens"])
    assert summary["task_type"] == "token" and len(example["prediction"]["labels"]) == n
    assert set(example["prediction"]["labels"]) <= set(CONLL_TAGS)
    assert tensors["ex0.layer1.attribution"].shape == (4, n, n)
    assert_gallery_is_complete(out, summary)


def test_encoder_of_a_seq2seq_checkpoint(tmp_path, tiny_tokenizer):
    checkpoint = save(tiny_seq2seq("marian"), tmp_path / "marian", tiny_tokenizer)
    out = tmp_path / "report"
    summary, tensors = attribute(checkpoint, out, "--task", "wmt16-en-ro", "--text", "the cat sat on the mat",
                                 "--set", "data.max_target_length=8")
    example = summary["examples"][0]
    n = len(example["tokens"])
    assert summary["task_type"] == "seq2seq" and summary["layers"] == [0, 1]
    assert isinstance(example["prediction"]["text"], str) and 0 < example["prediction"]["probability"] <= 1
    assert tensors["ex0.layer0.attention"].shape == (4, n, n)  # encoder self-attention over the source
    assert tensors["ex0.layer0.attribution"].abs().sum() > 0
    assert_gallery_is_complete(out, summary)


def test_report_replaces_an_earlier_one_but_never_a_foreign_directory(classifier, tmp_path):
    out = tmp_path / "report"
    attribute(classifier, out, "--task", "sst2", "--text", "a bad film", "--layers", "first")
    (out / "stale.png").write_bytes(b"")
    attribute(classifier, out, "--task", "sst2", "--text", "a good film", "--layers", "first")
    assert not (out / "stale.png").exists()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    result = runner.invoke(app, ["attribute", "--checkpoint", str(classifier), "--task", "sst2", "--text", "a film",
                                 "--output-dir", str(foreign)])
    assert result.exit_code == 2 and "not an earlier addrop attribute report" in result.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["mine.txt"]


def test_row_ranks_count_only_the_keys_a_row_sees():
    scores = torch.tensor([[0.2, 9.0, 9.0], [0.5, 0.1, 9.0], [0.3, 0.1, 0.2]])
    causal = torch.ones(3, 3).tril().bool()
    assert torch.equal(row_ranks(scores, causal), torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.5]]))


def test_row_ranks_shade_candidates_darkest_and_ties_alike():
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1.0, 5.0, 1.0]])
    assert torch.equal(row_ranks(scores), torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0], [0.5, 1.0, 0.5]]))


def test_token_attribution_sums_heads_and_query_rows():
    attribution = torch.arange(2 * 3 * 3, dtype=torch.float).reshape(2, 3, 3)
    assert torch.equal(token_attribution(attribution), attribution.sum(0).sum(0))


def test_region_outline_traces_the_border_only():
    square = torch.zeros(4, 4, dtype=torch.bool)
    square[1:3, 1:3] = True
    segments = region_outline(square.numpy())
    assert len(segments) == 8  # a 2 x 2 block has 8 unit sides on its border, none inside
    corners = {point for segment in segments for point in segment}
    assert min(corners) == (0.5, 0.5) and max(corners) == (2.5, 2.5)


def test_the_report_reads_like_a_page_and_greys_rows_without_attribution(classifier, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["attribute", "--checkpoint", str(classifier), "--output-dir", str(out), "--task",
                                 "sst2", "--text", SENTENCES[0]], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    prediction = summary["examples"][0]["prediction"]
    # The terminal gets a table, not a Python dict.
    assert "{'label'" not in result.stderr and "prediction" in result.stderr
    assert f"{prediction['label']} (p {prediction['probability']:.2f})" in result.stderr
    page = (out / "index.html").read_text()
    assert "<table>" in page and "<th>method</th><td>ga</td>" in page and '{"' not in page
    assert f"prediction: <b>{prediction['label']} (p {prediction['probability']:.2f})</b>" in page
    assert "red dotted outline" in page and "red dots" not in page
    # The last layer of a sequence classifier: only the [CLS] row reaches the logit, every other row has none.
    tensors = load_file(out / "attributions.safetensors")
    n = len(summary["examples"][0]["tokens"])
    zero_rows = (tensors["ex0.layer1.attribution"] == 0).all(-1).all(0)
    assert zero_rows.tolist() == [False] + [True] * (n - 1)
    layers = summary["examples"][0]["layers"]
    assert layers["1"]["rows_without_attribution"] == list(range(1, n))
    assert layers["0"]["rows_without_attribution"] == []


@pytest.mark.parametrize(("task_type", "shown"), [("classification", ["t0", "t1", "t2"]),
                                                  ("generation", ["t7", "t8", "t9"])])
def test_figures_crop_to_the_first_tokens_or_for_generation_the_last(tmp_path, monkeypatch, task_type, shown):
    """A generation prompt's answer comes last, after the chat template's system prompt."""
    from addrop_cli import attribute, plots

    drawn = []
    original = plots.token_bars
    monkeypatch.setattr(plots, "token_bars", lambda tokens, *rest: drawn.append(tokens) or original(tokens, *rest))
    grid = torch.rand(1, 10, 10)
    layer = attribute.LayerAttribution(0, grid, grid.clone(), grid > 0.5, grid > 0.9, torch.ones(10, 10).bool())
    example = attribute.ExampleAttribution([f"t{i}" for i in range(10)], "text", {"text": "a", "first_token": "a",
                                                                                  "probability": 0.5}, None, [layer])
    settings = {"task_type": task_type, "method": "ga", "labels": "pseudo", "heads": "mean", "p": 0.3, "q": 0.3,
                "seed": 0}
    attribute.write_report(tmp_path / "report", [example], settings, max_tokens=3)
    assert drawn == [shown]
