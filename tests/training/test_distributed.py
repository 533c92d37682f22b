"""Multi-process training through Accelerate's own launcher (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import BertConfig, BertModel


@pytest.fixture(scope="module")
def dropout_free_checkpoint(tmp_path_factory, tiny_tokenizer):
    """Without dropout, a 2-process run differs from a 1-process run only by float summation order."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    directory = tmp_path_factory.mktemp("tiny_bert_no_dropout")
    BertModel(config).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def train_args(out, model, data, *extra):
    return ["train", "--task", "mrpc", "--model", str(model), "--train-file", str(data / "MRPC/train.tsv"),
            "--validation-file", str(data / "MRPC/dev.tsv"), "--max-train-samples", "96", "--max-eval-samples", "50",
            "--epochs", "2", "--layers", "all", "--lr", "1e-3", "--output-dir", str(out), *extra]


def launch(processes: int, args: list[str]) -> subprocess.CompletedProcess:
    """1 process directly; several through torchrun with Accelerate told to use the CPU (gloo backend).

    (``accelerate launch --cpu --num_processes N`` starts N processes only through MPI.)
    """
    env = dict(os.environ)
    if processes == 1:
        command = [sys.executable, "-m", "addrop_cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(29500 + os.getpid() % 1000), "-m", "addrop_cli", *args]
        env["ACCELERATE_USE_CPU"] = "true"
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, dropout_free_checkpoint, shared_data):
    # q = 0: the AD-DROP epoch runs the attribution pass under DDP but drops nothing, so runs must agree.
    single, double = tmp_path / "one", tmp_path / "two"
    launch(1, train_args(single, dropout_free_checkpoint, shared_data, "--batch-size", "8", "--q", "0"))
    launch(2, train_args(double, dropout_free_checkpoint, shared_data, "--batch-size", "4", "--q", "0"))
    one, two = history(single), history(double)
    assert [h["phase"] for h in two] == ["ft", "addrop"]
    for a, b in zip(one, two, strict=True):
        assert sum(b["eval_predictions"].values()) == 50  # gather_for_metrics dropped the padding duplicates
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
        assert b["eval"] == pytest.approx(a["eval"], abs=1e-6)


def test_two_processes_with_real_drops_complete(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "run"
    launch(2, train_args(out, tiny_checkpoint, shared_data, "--batch-size", "4", "--q", "0.3"))
    assert [h["phase"] for h in history(out)] == ["ft", "addrop"]
    assert (out / "best" / "model.safetensors").is_file()
