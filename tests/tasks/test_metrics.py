"""Metrics against values computed by hand."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest

from addrop_cli.errors import UserError
from addrop_cli.tasks.metrics import bleu_metrics, compute_metrics, seqeval_metrics, validate_metric
from addrop_cli.tasks.registry import get_task


def test_accuracy() -> None:
    assert compute_metrics(["accuracy"], [1, 0, 1, 1], [1, 1, 1, 0]) == {"accuracy": 0.5}


def test_binary_f1_is_f1_of_class_one() -> None:
    # tp=2, fp=1, fn=1 -> precision = recall = 2/3 -> F1 = 2/3.
    result = compute_metrics(["f1"], np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]))
    assert result["f1"] == pytest.approx(2 / 3)


def test_multiclass_f1_is_macro() -> None:
    # Per class (tp, fp, fn): 0 -> (1, 0, 1) F1 2/3; 1 -> (1, 1, 0) F1 2/3; 2 -> (1, 0, 0) F1 1.
    result = compute_metrics(["f1"], [0, 1, 1, 2], [0, 0, 1, 2])
    assert result["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_num_labels_forces_macro_f1_when_a_batch_shows_only_two_classes() -> None:
    predictions, references = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    binary = compute_metrics(["f1"], predictions, references)["f1"]
    macro = compute_metrics(["f1"], predictions, references, num_labels=3)["f1"]
    # Class 0: tp=1, fp=1, fn=1 -> 1/2; class 1: 2/3; macro over the classes present = 7/12.
    assert binary == pytest.approx(2 / 3)
    assert macro == pytest.approx(7 / 12)


def test_mcc() -> None:
    # tp=2, fn=1, tn=1, fp=1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6.
    result = compute_metrics(["mcc"], [1, 1, 0, 0, 1], [1, 1, 1, 0, 0])
    assert result["mcc"] == pytest.approx(1 / 6)


def test_pearson_and_spearman() -> None:
    # Pearson of (1, 2, 3) and (1, 2, 4): covariance sum 3 over sqrt(2) * sqrt(42)/3 = 9 / sqrt(84).
    result = compute_metrics(["pearson", "spearman"], np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert result["pearson"] == pytest.approx(9 / math.sqrt(84))
    assert result["spearman"] == pytest.approx(1.0)
    # Ranks (1, 2, 3) vs (1, 3, 2): 1 - 6 * 2 / (3 * 8) = 0.5.
    assert compute_metrics(["spearman"], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])["spearman"] == pytest.approx(0.5)


def test_values_are_plain_floats_and_column_arrays_are_flattened() -> None:
    result = compute_metrics(
        ["accuracy", "f1", "mcc"], np.array([[1], [0], [1]]), np.array([1, 0, 0], dtype=np.int64)
    )
    assert all(type(value) is float for value in result.values())
    regression = compute_metrics(["pearson"], np.array([[0.5], [1.5], [2.0]]), np.array([0.0, 2.0, 2.5]))
    assert type(regression["pearson"]) is float


def test_constant_predictions_give_zero_correlation_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute_metrics(["pearson", "spearman", "mcc"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert result == {"pearson": 0.0, "spearman": 0.0, "mcc": 0.0}


def test_unknown_metric_is_a_user_error() -> None:
    with pytest.raises(
        UserError, match=r"unknown metric 'acuracy'; valid: accuracy, f1, mcc, pearson, spearman"
    ):
        compute_metrics(["acuracy"], [1], [1])


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        compute_metrics(["accuracy"], [1, 0], [1, 0, 1])


def test_validate_metric_accepts_the_task_metrics() -> None:
    assert validate_metric("F1", get_task("mrpc")) == "f1"
    assert validate_metric("mcc", get_task("cola")) == "mcc"


def test_validate_metric_lists_valid_names_for_the_task() -> None:
    with pytest.raises(UserError) as caught:
        validate_metric("acc", get_task("mrpc"))
    assert str(caught.value).startswith("unknown metric 'acc' for task mrpc; valid: accuracy, f1")
    with pytest.raises(
        UserError, match=r"for task stsb; valid: pearson, spearman \(did you mean 'pearson'\?\)"
    ):
        validate_metric("pearsn", get_task("stsb"))
    # A metric that exists, but not for this task.
    with pytest.raises(UserError, match="unknown metric 'accuracy' for task cola; valid: mcc"):
        validate_metric("accuracy", get_task("cola"))


# ------------------------------------------------------------------------------- NER and translation


def test_seqeval_one_of_two_entities_right() -> None:
    references = [["B-PER", "I-PER", "O", "B-LOC"]]
    # PER is found exactly; LOC is predicted as ORG: 1 of 2 predicted entities right, 1 of 2 true ones found.
    result = seqeval_metrics([["B-PER", "I-PER", "O", "B-ORG"]], references)
    assert result == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.75}
    assert all(type(value) is float for value in result.values())


def test_seqeval_is_entity_level_across_sentences() -> None:
    references = [["B-PER", "I-PER", "O"], ["B-LOC", "O"], ["O", "B-MISC"]]
    # A PER with the wrong span is a miss, although 2 of its 3 tokens are right; LOC is right; MISC is missed.
    predictions = [["B-PER", "O", "O"], ["B-LOC", "O"], ["O", "O"]]
    result = seqeval_metrics(predictions, references)
    assert result["precision"] == pytest.approx(1 / 2)  # 1 of 2 predicted entities
    assert result["recall"] == pytest.approx(1 / 3)  # 1 of 3 true entities
    assert result["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # 0.4
    assert result["accuracy"] == pytest.approx(5 / 7)


def test_seqeval_without_predicted_entities_is_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = seqeval_metrics([["O", "O"]], [["B-PER", "O"]])
    assert result == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.5}


def test_seqeval_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="1 predicted sentences for 2 references"):
        seqeval_metrics([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="sentence 0: 1 predicted tags for 2 references"):
        seqeval_metrics([["O"]], [["O", "O"]])


def test_bleu_of_identical_corpora_is_100_and_gen_len_is_the_mean() -> None:
    corpus = ["the cat sat on the mat .", "a very good film , with a great man ."]
    assert bleu_metrics(corpus, corpus) == {"bleu": pytest.approx(100.0)}
    result = bleu_metrics(corpus, corpus, generated_lengths=[9, 12])
    assert result == {"bleu": pytest.approx(100.0), "gen_len": 10.5}
    assert all(type(value) is float for value in result.values())


def test_bleu_matches_the_corpus_bleu_formula() -> None:
    """Against BLEU written out (Papineni et al.): clipped n-gram precisions for n = 1..4 over the corpus, their
    geometric mean, and the brevity penalty exp(1 - r / c). Every order has a match here, so sacrebleu's smoothing
    plays no part, and the words are already split as its 13a tokenizer splits them."""
    hypotheses = ["the cat sat on a mat .", "it was a good film"]
    references = ["the cat sat on the mat .", "it was a very good film"]
    matches, totals = [0] * 4, [0] * 4
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = hypothesis.split(), reference.split()
        for n in range(1, 5):
            grams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
            allowed = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(count, allowed[gram]) for gram, count in grams.items())
            totals[n - 1] += sum(grams.values())
    assert (matches, totals) == ([11, 7, 3, 1], [12, 10, 8, 6])  # counted by hand as well
    length, reference_length = 12, 13
    expected = 100 * math.exp(1 - reference_length / length) * math.exp(
        sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4)
    assert bleu_metrics(hypotheses, references)["bleu"] == pytest.approx(expected, rel=1e-9)


def test_bleu_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="1 hypotheses for 2 references"):
        bleu_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="1 generated lengths for 2 hypotheses"):
        bleu_metrics(["a", "b"], ["a", "b"], generated_lengths=[3])
