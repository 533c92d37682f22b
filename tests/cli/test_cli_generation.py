"""Generative fine-tuning through the CLI on a tiny random Llama language model: it learns a mapping to exact match,
predicts, evaluates and attributes; LoRA, bf16 and checkpointing; a classification task as answer words; bad data
and wrong models refused in one line with nothing written."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write
from safetensors.torch import load_file
from tiny_models import CAUSAL_WORDS
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from addrop_cli.cli import app

runner = CliRunner()
WORDS = CAUSAL_WORDS[:8]


def reversal_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Prompt "reverse : w1 w2 w3 :", completion "w3 w2 w1", words drawn from eight."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(3)]
        rows.append({"prompt": "reverse : " + " ".join(words) + " :", "completion": " ".join(reversed(words))})
    return rows


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def reversal(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("reversal")
    return jsonl(folder / "train.jsonl", reversal_rows(400, 0)), jsonl(folder / "dev.jsonl", reversal_rows(48, 1))


def train_args(model: Path, data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--task", "generation", "--model", str(model), "--train-file", str(data[0]),
            "--validation-file", str(data[1]), "--max-length", "32", "--batch-size", "16", "--output-dir", str(out),
            "--layers", "all", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_causal_lm_dir, reversal) -> Path:
    """Eight cross-tuned epochs (four of them AD-DROP on every layer), through the installed CLI in a subprocess."""
    out = tmp_path_factory.mktemp("generation") / "run"
    command = [sys.executable, "-m", "addrop_cli", *train_args(tiny_causal_lm_dir, reversal, out, "--epochs", "8",
                                                               "--lr", "3e-3")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_a_tiny_model_learns_to_reverse_words_to_exact_match(trained):
    history = [json.loads(line) for line in (trained / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in history] == ["ft", "addrop"] * 4
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["metric"] == "exact_match"
    assert metrics["eval"]["exact_match"] >= 0.9
    assert history[0]["eval"]["exact_match"] < 0.5  # learnt, not given
    assert history[-1]["eval"]["perplexity"] < history[0]["eval"]["perplexity"]


def greedy(model, tokenizer, prompt: str, new_tokens: int = 16) -> str:
    """The stock, unbatched greedy answer to one prompt."""
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def best(trained):
    return (AutoModelForCausalLM.from_pretrained(trained / "best"), AutoTokenizer.from_pretrained(trained / "best"))


def test_batched_left_padded_answers_are_stock_one_prompt_answers(trained, best, tmp_path):
    """``addrop eval`` on prompts of 2 to 5 words (so its batches are padded) scores exactly the answers that
    stock, unbatched generation of the merged ``best/`` gives."""
    rng = random.Random(2)
    rows = []
    for index in range(24):
        words = [rng.choice(WORDS) for _ in range(2 + index % 4)]
        rows.append({"prompt": "reverse : " + " ".join(words) + " :", "completion": " ".join(reversed(words))})
    mixed = jsonl(tmp_path / "mixed.jsonl", rows)
    result = runner.invoke(app, ["eval", "--checkpoint", str(trained / "best"), "--validation-file", str(mixed),
                                 "--output", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    right = sum(greedy(*best, row["prompt"]) == row["completion"] for row in rows)
    assert 0 < right < len(rows)  # a mix of right and wrong answers: the comparison can tell them apart
    assert json.loads((tmp_path / "e.json").read_text())["eval"]["exact_match"] == right / len(rows)


def test_predict_generates_completions_and_eval_scores_the_checkpoint(trained, best, tmp_path):
    prompts = ["reverse : sun moon tree :", "reverse : blue green red :", "reverse : cat :"]
    path = jsonl(tmp_path / "prompts.jsonl", [{"prompt": prompt} for prompt in prompts])
    result = runner.invoke(app, ["predict", "--checkpoint", str(trained / "best"), "--input-file", str(path),
                                 "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": prompt, "completion": greedy(*best, prompt)} for prompt in prompts]
    result = runner.invoke(app, ["eval", "--checkpoint", str(trained / "best"), "--output", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "e.json").read_text())
    assert scored["eval_examples"] == 48
    assert scored["eval"] == json.loads((trained / "metrics.json").read_text())["eval"]


def test_attribute_draws_where_the_first_answer_tokens_attribution_falls(trained, best, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["attribute", "--checkpoint", str(trained / "best"), "--text",
                                 "reverse : red cat dog :", "--output-dir", str(out), "--layers", "all"])
    assert result.exit_code == 0, result.output
    [example] = json.loads((out / "summary.json").read_text())["examples"]
    answer = greedy(*best, "reverse : red cat dog :")
    assert example["prediction"]["text"] == answer and example["prediction"]["first_token"] == answer.split()[0]
    assert example["tokens"] == ["reverse", ":", "red", "cat", "dog", ":", answer.split()[0]]
    # F is read at the last prompt position (5), which predicts the answer's first token: in the last layer only
    # its own query row reaches it; in the first every row before it does, through the last layer's attention. The
    # answer token's row (6) reaches nothing.
    assert example["layers"]["0"]["rows_without_attribution"] == [6]
    assert example["layers"]["1"]["rows_without_attribution"] == [0, 1, 2, 3, 4, 6]
    assert (out / "images" / "ex0_layer0.png").is_file()
    # A row has attribution only on the keys it sees: none above the diagonal, so no later key gathers any.
    tensors = load_file(out / "attributions.safetensors")
    for layer in (0, 1):
        attribution = tensors[f"ex0.layer{layer}.attribution"]
        assert attribution.tril().abs().sum() > 0 and not attribution.triu(1).any()


def test_lora_bf16_and_checkpointing_save_a_merged_causal_lm(tiny_causal_lm_dir, reversal, tmp_path):
    """In a process of its own: Accelerate's precision is fixed per process."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "addrop_cli", *train_args(
        tiny_causal_lm_dir, reversal, out, "--epochs", "2", "--lora-r", "4", "--mixed-precision", "bf16",
        "--max-train-samples", "64", "--set", "train.gradient_checkpointing=true",
        "--set", "lora.target_modules=[q_proj,v_proj]")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "lr 0.0002" in result.stderr and "precision bf16" in result.stderr  # LoRA's default learning rate
    assert (out / "best" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "best")
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    ids = torch.tensor([[12, 14, 4, 7, 8, 14]])
    assert merged.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0).shape == (1, 8)


def test_a_classification_task_trains_as_answer_words_scored_by_accuracy(tiny_causal_lm_dir, tmp_path):
    rows = "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in
                                         [("good movie", 1), ("bad film", 0), ("good film", 1), ("bad movie", 0)] * 4)
    train = write(tmp_path / "train.tsv", rows)
    result = runner.invoke(app, ["train", "--task", "sst2", "--model", str(tiny_causal_lm_dir), "--train-file",
                                 str(train), "--validation-file", str(train), "--max-length", "32", "--epochs", "2",
                                 "--lr", "3e-3", "--output-dir", str(tmp_path / "run"),
                                 "--set", 'generation.template="sentiment ? {text} :"',
                                 "--set", "generation.max_new_tokens=3"])
    assert result.exit_code == 0, result.output
    assert "train labels negative 8, positive 8" in result.output
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert set(history[-1]["eval"]) == {"accuracy", "perplexity"}
    assert sum(history[-1]["eval_predictions"].values()) == 16
    assert history[-1]["eval"]["perplexity"] < history[0]["eval"]["perplexity"] < 100  # the answer words are learnt


def test_a_sentence_pair_template_needs_both_sentences(tiny_causal_lm_dir, tmp_path):
    pairs = write(tmp_path / "rte.tsv", "sentence1\tsentence2\tlabel\ngood film\tgood movie\tentailment\n")
    result = runner.invoke(app, ["train", "--task", "rte", "--model", str(tiny_causal_lm_dir), "--train-file",
                                 str(pairs), "--validation-file", str(pairs), "--output-dir", str(tmp_path / "run"),
                                 "--set", 'generation.template="{text} ?"'])
    assert result.exit_code == 2
    assert "is invalid for rte: a sentence-pair task needs both {text} and {text_pair}" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("rows", "message"), [
    ([{"prompt": "reverse : red :"}], "line 1: no 'completion'"),
    ([{"prompt": "reverse : red :", "completion": " "}], "line 1: 'completion' is empty"),
    ([{"prompt": "reverse " * 40 + ":", "completion": "red"}], "line 1: the prompt is 41 tokens and "
                                                                 "data.max_length is 32"),
])
def test_bad_data_is_one_line_exit_2_and_nothing_written(tiny_causal_lm_dir, reversal, tmp_path, rows, message):
    bad = jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(tiny_causal_lm_dir, (bad, reversal[1]), out))
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: ") and message in line and str(bad) in line
    assert not out.exists()


def test_messages_for_a_model_without_a_chat_template_are_one_line(tmp_path):
    from tiny_models import causal_tokenizer, tiny_causal_lm

    model_dir = tmp_path / "no_template"
    tiny_causal_lm().save_pretrained(model_dir)
    causal_tokenizer(chat_template=None).save_pretrained(model_dir)
    chat = jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "copy : red"},
                                                         {"role": "assistant", "content": "red"}]}])
    result = runner.invoke(app, train_args(model_dir, (chat, chat), tmp_path / "run"))
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "has no chat template" in line
    assert not (tmp_path / "run").exists()


def test_an_encoder_is_refused_as_a_generation_model(tiny_checkpoint, reversal, tmp_path):
    result = runner.invoke(app, train_args(tiny_checkpoint, reversal, tmp_path / "run"))
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "(bert) is not a decoder-only language model: its attention sees later tokens" in line
    assert not (tmp_path / "run").exists()


def test_hiddencut_is_refused_and_rdrop_trains(tiny_causal_lm_dir, reversal, tmp_path):
    result = runner.invoke(app, train_args(tiny_causal_lm_dir, reversal, tmp_path / "hc", "--method", "hiddencut"))
    assert result.exit_code == 2
    assert "hiddencut cuts encoder self-attention models only" in result.output.strip().splitlines()[0]
    result = runner.invoke(app, train_args(tiny_causal_lm_dir, reversal, tmp_path / "rd", "--method", "rdrop",
                                           "--epochs", "2", "--max-train-samples", "32"))
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (tmp_path / "rd" / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in history] == ["ft", "rdrop"]
