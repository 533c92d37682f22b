"""``addrop train`` end to end on families outside AttentionInterface (the module-hook route): DeBERTa-v2 (v3's
architecture) and MPNet sequence classifiers, a DeBERTa-v2 token classifier, and LoRA on DeBERTa-v2."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2Model, MPNetConfig, MPNetModel
from typer.testing import CliRunner

from addrop_cli.cli import app

DEMO = Path(__file__).resolve().parents[2] / "addrop_cli" / "demo_data" / "sst2"
SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=128)
runner = CliRunner()


@pytest.fixture(scope="module")
def eager_models(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """Saved random DeBERTa-v2 (relative attention, c2p and p2c, as v3) and MPNet bases with the tiny tokenizer."""
    folders = {}
    for name, model in [("deberta-v2", DebertaV2Model(DebertaV2Config(**SIZES, relative_attention=True,
                                                                      pos_att_type=["p2c", "c2p"],
                                                                      max_relative_positions=32, position_buckets=16,
                                                                      norm_rel_ebd="layer_norm", share_att_key=True))),
                        ("mpnet", MPNetModel(MPNetConfig(**SIZES)))]:
        torch.manual_seed(0)
        folders[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(folders[name])
        tiny_tokenizer.save_pretrained(folders[name])
    return folders


def train(out: Path, model: Path, *extra: str) -> list[dict]:
    """Two epochs (plain, then AD-DROP) on 32 demo sentences; returns history.jsonl's rows."""
    args = ["train", "--task", "sst2", "--model", str(model), "--train-file", str(DEMO / "train.tsv"),
            "--validation-file", str(DEMO / "dev.tsv"), "--max-train-samples", "32", "--max-eval-samples", "24",
            "--epochs", "2", "--batch-size", "8", "--layers", "all", "--p", "0.5", "--output-dir", str(out), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["deberta-v2", "mpnet"])
def test_sequence_classifier_drops_through_the_cli(family, eager_models, tmp_path):
    dropped = train(tmp_path / "q", eager_models[family], "--q", "0.5")
    kept = train(tmp_path / "q0", eager_models[family], "--q", "0")  # the same run with nothing dropped
    assert [row["phase"] for row in dropped] == ["ft", "addrop"]
    assert dropped[0]["train_loss"] == kept[0]["train_loss"]  # the plain epoch is the same
    assert dropped[1]["train_loss"] != kept[1]["train_loss"]  # the AD-DROP epoch dropped something


def test_lora_on_deberta_v2_trains_its_projections(eager_models, tmp_path):
    history = train(tmp_path / "lora", eager_models["deberta-v2"], "--q", "0.5", "--lora-r", "4")
    assert [row["phase"] for row in history] == ["ft", "addrop"]
    adapter = json.loads((tmp_path / "lora" / "best" / "adapter" / "adapter_config.json").read_text())
    assert {"query_proj", "value_proj"} <= set(adapter["target_modules"])


def conll_file(path: Path, sentences: int, seed: int) -> Path:
    """Synthetic CoNLL-2003 sentences from the tiny tokenizer's words, tagged by a fixed rule."""
    rng = random.Random(seed)
    words = ["the", "cat", "dog", "man", "woman", "sat", "on", "mat", "film", "movie"]
    tags = {"cat": "B-PER", "dog": "B-ORG", "man": "B-PER", "woman": "B-LOC", "mat": "B-MISC"}
    blocks = ["-DOCSTART- -X- -X- O"]
    for _ in range(sentences):
        blocks.append("\n".join(f"{w} NN B-NP {tags.get(w, 'O')}" for w in rng.choices(words, k=rng.randint(3, 9))))
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def test_deberta_v2_token_classifier_trains_through_the_cli(eager_models, tmp_path):
    args = ["train", "--task", "conll2003", "--model", str(eager_models["deberta-v2"]),
            "--train-file", str(conll_file(tmp_path / "train.txt", 32, 0)),
            "--validation-file", str(conll_file(tmp_path / "valid.txt", 16, 1)),
            "--epochs", "2", "--batch-size", "8", "--layers", "all", "--output-dir", str(tmp_path / "ner")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (tmp_path / "ner" / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in history] == ["ft", "addrop"]
    assert "f1" in history[1]["eval"]


def test_attribute_report_of_a_trained_deberta_v2_run(eager_models, tmp_path):
    train(tmp_path / "run", eager_models["deberta-v2"], "--q", "0.5")
    out = tmp_path / "report"
    result = runner.invoke(app, ["attribute", "--checkpoint", str(tmp_path / "run"), "--output-dir", str(out),
                                 "--text", "the cat sat on the mat", "--p", "0.5", "--q", "0.5"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    (example,) = summary["examples"]
    assert summary["layers"] == [0, 1] and example["tokens"][0] == "[CLS]"
    assert (out / "index.html").is_file() and (out / example["images"]["tokens"]).is_file()


def test_sweep_over_p_through_the_hook_route(eager_models, tmp_path):
    args = ["sweep", "--task", "sst2", "--model", str(eager_models["mpnet"]), "--train-file", str(DEMO / "train.tsv"),
            "--validation-file", str(DEMO / "dev.tsv"), "--max-train-samples", "16", "--max-eval-samples", "16",
            "--epochs", "2", "--batch-size", "8", "--p", "0.3,0.6", "--q", "0.5", "--output-dir", str(tmp_path / "s")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "s" / "results.jsonl").read_text().splitlines()]
    assert sorted(row["settings"]["addrop.p"] for row in rows) == [0.3, 0.6]
    assert all(row["status"] == "ok" for row in rows)
