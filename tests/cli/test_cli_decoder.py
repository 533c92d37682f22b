"""``addrop train`` end to end on local tiny decoder-only classifiers (Qwen2) with AD-DROP, cross-tuned: full
fine-tuning, LoRA, bf16, gradient checkpointing, pad tokens, and the one-line refusals."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import one_line_error, run_without_addrop
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    DistilBertConfig,
    DistilBertModel,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    Qwen2Model,
)
from typer.testing import CliRunner

from addrop_cli.cli import app
from addrop_cli.tasks.models import ensure_pad_token

DEMO = Path(__file__).resolve().parents[2] / "addrop_cli" / "demo_data" / "sst2"
runner = CliRunner()


def save_qwen2(directory: Path, tokenizer, pad_token_id: int | None) -> Path:
    """A saved 2-layer random Qwen2 (GQA, sliding window on layer 2) with the given tokenizer."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         use_sliding_window=True, sliding_window=6, max_window_layers=1, pad_token_id=pad_token_id)
    Qwen2Model(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory, tiny_tokenizer) -> Path:
    """Its config names the tokenizer's pad token."""
    return save_qwen2(tmp_path_factory.mktemp("tiny_qwen2"), tiny_tokenizer, tiny_tokenizer.pad_token_id)


def train_args(out: Path, model: Path, *extra: str, epochs: str = "2") -> list[str]:
    return ["train", "--task", "sst2", "--model", str(model), "--train-file", str(DEMO / "train.tsv"),
            "--validation-file", str(DEMO / "dev.tsv"), "--max-train-samples", "32", "--max-eval-samples", "24",
            "--epochs", epochs, "--batch-size", "8", "--layers", "all", "--p", "0.5", "--q", "0.5",
            "--output-dir", str(out), *extra]


def train(out: Path, model: Path, *extra: str, epochs: str = "2"):
    return runner.invoke(app, train_args(out, model, *extra, epochs=epochs))


def test_train_a_decoder_classifier_with_addrop(tmp_path, tiny_qwen2):
    out = tmp_path / "run"
    result = train(out, tiny_qwen2)
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in history] == ["ft", "addrop"]
    assert all(row["train_loss"] == row["train_loss"] for row in history)  # not NaN
    assert sum(history[-1]["eval_predictions"].values()) == 24
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"]


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[5, 17, 23, 9, 40, 3], [0, 0, 31, 12, 8, 3]])
    return model(input_ids=ids, attention_mask=(ids != 0).long()).logits


def test_lora_best_holds_the_adapter_and_a_merged_model(tmp_path, tiny_qwen2):
    out = tmp_path / "run"
    result = train(out, tiny_qwen2, "--lora-r", "4", "--set", "lora.target_modules=[q_proj,v_proj,down_proj]")
    assert result.exit_code == 0, result.output
    assert "LoRA r 4 alpha 16 dropout 0.05 on down_proj, q_proj, v_proj" in result.output
    best = out / "best"
    assert (best / "adapter" / "adapter_config.json").is_file()
    assert not any("lora" in name for name in load_file(best / "model.safetensors"))  # merged: plain weights
    import peft  # the adapter on the original base gives what the merged model gives

    base = AutoModelForSequenceClassification.from_pretrained(tiny_qwen2, num_labels=2).eval()
    with_adapter = peft.PeftModel.from_pretrained(base, best / "adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(best).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(merged), logits_of(with_adapter), atol=1e-5, rtol=0)
    loaded = run_without_addrop(  # plain transformers, neither addrop nor peft importable
        "sys.modules['peft'] = None\nfrom transformers import AutoModelForSequenceClassification\n"
        f"model = AutoModelForSequenceClassification.from_pretrained({str(best)!r})\n"
        "print(type(model).__name__, model.config.id2label)")
    assert loaded.returncode == 0, loaded.stderr
    assert "Qwen2ForSequenceClassification {0: 'negative', 1: 'positive'}" in loaded.stdout


# addrop train, with every torch.utils.checkpoint.checkpoint call counted (patched before transformers imports it).
COUNTING_CHECKPOINTS = """
import atexit, sys
import torch.utils.checkpoint as checkpointing
calls, original = [], checkpointing.checkpoint
def counted(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)
checkpointing.checkpoint = counted
atexit.register(lambda: print(f"checkpointed layer calls: {len(calls)}", file=sys.stderr))
from addrop_cli.cli import main
sys.argv[0] = "addrop"
main()
"""


def test_bf16_weights_and_autocast_with_lora_and_checkpointing(tmp_path, tiny_qwen2):
    out = tmp_path / "run"
    # A process of its own: Accelerate fixes the mixed precision once per process.
    result = subprocess.run([sys.executable, "-c", COUNTING_CHECKPOINTS, *train_args(
        out, tiny_qwen2, "--lora-r", "4", "--mixed-precision", "bf16", "--set", "train.model_dtype=bfloat16",
        "--set", "train.gradient_checkpointing=true")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "precision bf16, weights torch.bfloat16" in result.stderr
    # Checkpointing was on: each of the 2 layers ran checkpointed in every training forward, 4 steps an epoch: one
    # forward per ft step, two per AD-DROP step (the attribution pass and the masked pass); evaluation runs none.
    assert "checkpointed layer calls: 24" in result.stderr
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in history] == ["ft", "addrop"]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert json.loads((out / "best" / "config.json").read_text())["dtype"] == "bfloat16"


def test_a_tokenizer_without_pad_token_pads_with_eos(tmp_path, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = "[SEP]"
    tokenizer.pad_token = None
    model = save_qwen2(tmp_path / "model", tokenizer, pad_token_id=None)
    out = tmp_path / "run"
    result = train(out, model, epochs="1")
    assert result.exit_code == 0, result.output
    assert "note: the tokenizer has no pad token: padding with its eos token '[SEP]'" in result.output
    assert json.loads((out / "best" / "config.json").read_text())["pad_token_id"] == tokenizer.eos_token_id


def test_a_tokenizer_with_neither_pad_nor_eos_is_refused(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    model = Qwen2ForSequenceClassification(Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=37,
                                                       num_hidden_layers=1, num_attention_heads=4))
    one_line_error(lambda: ensure_pad_token(model, tokenizer), "tokenizer of qwen2 model has neither a pad nor an eos")


def one_line_refusal(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--lora-r", "0"], ["lora.r=0 is invalid", "positive integer"]),
    (["--lora-r", "-3"], ["lora.r=-3 is invalid"]),
    (["--lora-r", "4", "--set", "lora.target_modules=[no_such_proj]"], ["model type 'qwen2'", "no_such_proj"]),
])
def test_bad_lora_settings_are_one_line(tmp_path, tiny_qwen2, extra, fragments):
    one_line_refusal(train(tmp_path / "run", tiny_qwen2, *extra), *fragments)


def test_lora_on_a_model_peft_cannot_wrap_by_default(tmp_path, tiny_tokenizer):
    model = tmp_path / "distilbert"
    DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37)).save_pretrained(
        model)
    tiny_tokenizer.save_pretrained(model)
    one_line_refusal(train(tmp_path / "run", model, "--lora-r", "4"), "model type 'distilbert'",
                     "--set lora.target_modules=[...]")


def test_an_unsupported_attention_variant_is_one_line(tmp_path, tiny_qwen2, monkeypatch):
    monkeypatch.setattr(Qwen2ForSequenceClassification, "_supports_sdpa", False)  # as if sdpa could not run it
    one_line_refusal(train(tmp_path / "run", tiny_qwen2), "model type 'qwen2'",
                     "attention variant AD-DROP does not reproduce", "--no-addrop")
