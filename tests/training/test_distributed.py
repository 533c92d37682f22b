"""Multi-process training through Accelerate's own launcher (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from addrop_cli.training.run_dir import checkpoint_dirs


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



def free_port() -> int:
    """A port free now: each launch gets its own (one fixed port per pytest process once hung a later launch)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

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
                   "--master_port", str(free_port()), "-m", "addrop_cli", *args]
        env["ACCELERATE_USE_CPU"] = "true"
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def final_weights(out):
    return load_file(checkpoint_dirs(out)[-1] / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dropout_free_checkpoint, shared_data):
    """(processes, q) -> (run directory, stderr): one process with batch 8, two with 4 each (the same global batch);
    q "1 unmasked" is q 1 with addrop.unmasked_weight 0.5.

    q = 0 drops nothing. q = 1 drops exactly the candidate region (p = 0.3 of each row's keys, chosen from the
    attribution, no random draw): a real AD-DROP step whose drops are the same however the batch is split.
    With 0 < q < 1 they cannot be: each process draws its Bernoulli masks from its own copy of the seeded RNG over
    its own half of the batch, so process 1's examples get the draws a single process gives examples 0-3.
    """
    folder = tmp_path_factory.mktemp("distributed")
    out = {}
    for processes, q in [(1, "0"), (2, "0"), (1, "1"), (2, "1"), (1, "1 unmasked"), (2, "1 unmasked")]:
        directory = folder / f"{processes}-q{q.replace(' ', '-')}"
        mixed = ["--set", "addrop.unmasked_weight=0.5"] if q.endswith("unmasked") else []
        result = launch(processes, train_args(directory, dropout_free_checkpoint, shared_data,
                                              "--batch-size", str(8 // processes), "--q", q.split()[0], "--p", "0.3",
                                              *mixed))
        out[processes, q] = directory, result.stderr
    return out


# Measured between 1 and 2 processes (all-reduce vs one sum of the same gradients): losses agree to 2e-7
# relative, final weights to 1.2e-7. The tolerances are 10x and 100x that; the q = 0 and q = 1 runs' final weights
# differ by 1.6e-3, 160x the weight tolerance.
LOSS_REL, WEIGHT_ABS = 2e-6, 1e-5


def assert_same_run(one, two):
    """Per epoch the same phase, losses and scores, and the same final weights, up to summation order."""
    for a, b in zip(history(one), history(two), strict=True):
        assert b["phase"] == a["phase"]
        assert sum(b["eval_predictions"].values()) == 50  # gather_for_metrics dropped the padding duplicates
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=LOSS_REL)
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=LOSS_REL)
        assert b["eval"] == pytest.approx(a["eval"], abs=1e-6)
    expected, actual = final_weights(one), final_weights(two)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=WEIGHT_ABS, rtol=0, msg=name)


def test_two_processes_match_one_with_the_same_global_batch(runs):
    # q = 0: the AD-DROP epoch runs the attribution pass under DDP but drops nothing.
    assert [h["phase"] for h in history(runs[2, "0"][0])] == ["ft", "addrop"]
    assert_same_run(runs[1, "0"][0], runs[2, "0"][0])


def test_two_processes_print_the_summary_once(runs):
    for processes in (1, 2):
        assert runs[processes, "0"][1].count("best epoch ") == 1
        assert runs[processes, "0"][1].count("outputs in ") == 1


def test_two_processes_with_real_drops_match_one_with_the_same_global_batch(runs):
    # First: the drops are real. The ft epochs agree; the AD-DROP epoch moves the weights far beyond the tolerance.
    plain, dropped = history(runs[1, "0"][0]), history(runs[1, "1"][0])
    assert dropped[0]["train_loss"] == plain[0]["train_loss"]
    assert dropped[1]["train_loss"] != pytest.approx(plain[1]["train_loss"], rel=LOSS_REL)
    moved = final_weights(runs[1, "1"][0]), final_weights(runs[1, "0"][0])
    assert max((moved[0][name] - moved[1][name]).abs().max().item() for name in moved[0]) > 20 * WEIGHT_ABS
    assert_same_run(runs[1, "1"][0], runs[2, "1"][0])


def test_two_processes_with_the_unmasked_loss_mixed_in_match_one(runs):
    """unmasked_weight > 0 runs the DDP-wrapped model twice (masked, then plain) before one backward."""
    masked_only, mixed = history(runs[1, "1"][0]), history(runs[1, "1 unmasked"][0])
    assert mixed[1]["train_loss"] != pytest.approx(masked_only[1]["train_loss"], rel=LOSS_REL)  # the mix is used
    assert_same_run(runs[1, "1 unmasked"][0], runs[2, "1 unmasked"][0])


def test_two_processes_evaluate_and_predict_as_one_does_and_report_once(runs, shared_data, tmp_path):
    """51 pairs to score (an odd count: gather_for_metrics drops the padding duplicates); 408 to predict."""
    best, dev = runs[1, "0"][0] / "best", str(shared_data / "MRPC/dev.tsv")
    outputs = {}
    for processes in (1, 2):
        metrics, predictions = tmp_path / f"eval-{processes}.json", tmp_path / f"predictions-{processes}.jsonl"
        scored = launch(processes, ["eval", "--checkpoint", str(best), "--validation-file", dev,
                                    "--max-eval-samples", "51", "--output", str(metrics)])
        predicted = launch(processes, ["predict", "--checkpoint", str(best), "--input-file", dev,
                                       "--output", str(predictions)])
        assert scored.stdout.count("examples") == 1  # the metrics table, printed once
        assert scored.stderr.count("wrote ") == predicted.stderr.count("wrote ") == 1
        outputs[processes] = (json.loads(metrics.read_text()),
                              [json.loads(line) for line in predictions.read_text().splitlines()])
    (one_eval, one_rows), (two_eval, two_rows) = outputs[1], outputs[2]
    assert two_eval["eval_examples"] == 51
    assert two_eval["eval"] == one_eval["eval"]
    assert two_eval["eval_predictions"] == one_eval["eval_predictions"]
    assert two_eval["eval_loss"] == pytest.approx(one_eval["eval_loss"], rel=LOSS_REL)
    assert len(two_rows) == 408
    assert [row["label"] for row in two_rows] == [row["label"] for row in one_rows]
    for one, two in zip(one_rows, two_rows, strict=True):
        assert two["probabilities"] == pytest.approx(one["probabilities"], abs=1e-6)
