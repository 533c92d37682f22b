"""Task registry: names, aliases, GLUE column layouts, label maps and the paper's metrics."""

from __future__ import annotations

import pytest

from addrop_cli.errors import UserError
from addrop_cli.tasks.metrics import METRIC_NAMES
from addrop_cli.tasks.registry import TASK_NAMES, TASKS, get_task


def test_registry_holds_the_eight_glue_tasks_ner_translation_and_generation() -> None:
    assert set(TASKS) == {"sst2", "mnli", "qnli", "qqp", "cola", "stsb", "mrpc", "rte"}
    assert set(TASK_NAMES) == {*TASKS, "conll2003", "wmt16-en-ro", "wmt16-tr-en", "generation"}
    assert {get_task(name).kind for name in TASK_NAMES} == {"classification", "regression", "token", "seq2seq",
                                                                "generation"}


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("mrpc", "mrpc"),
        ("MRPC", "mrpc"),
        ("sst-2", "sst2"),
        ("SST-2", "sst2"),
        ("sts-b", "stsb"),
        (" CoLA ", "cola"),
    ],
)
def test_get_task_accepts_case_and_dash_variants(given: str, name: str) -> None:
    assert get_task(given).name == name


def test_unknown_task_lists_valid_names_and_suggests_the_closest() -> None:
    with pytest.raises(UserError) as caught:
        get_task("mrcp")
    message = str(caught.value)
    assert message.startswith("unknown task 'mrcp'; valid tasks: sst2, mnli")
    assert "did you mean 'mrpc'?" in message
    assert "\n" not in message


def test_unknown_task_far_from_any_name_gets_no_suggestion() -> None:
    with pytest.raises(UserError, match="unknown task 'squad'") as caught:
        get_task("squad")
    assert "did you mean" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "metrics", "default"),
    [
        ("sst2", ("accuracy",), "accuracy"),
        ("mnli", ("accuracy",), "accuracy"),
        ("qnli", ("accuracy",), "accuracy"),
        ("rte", ("accuracy",), "accuracy"),
        ("mrpc", ("accuracy", "f1"), "accuracy"),
        ("qqp", ("accuracy", "f1"), "accuracy"),
        ("cola", ("mcc",), "mcc"),
        ("stsb", ("pearson", "spearman"), "pearson"),
    ],
)
def test_metrics_follow_the_paper(name: str, metrics: tuple[str, ...], default: str) -> None:
    task = get_task(name)
    assert task.metrics == metrics
    assert task.default_metric == default


@pytest.mark.parametrize("name", list(TASKS))
def test_every_spec_is_consistent(name: str) -> None:
    task = TASKS[name]
    assert set(task.metrics) <= set(METRIC_NAMES)
    assert task.default_metric in task.metrics
    assert len(task.text_columns) in (1, 2)
    assert task.hub_dataset == ("nyu-mll/glue", name)
    assert {"train", "validation"} <= set(task.hub_splits)
    if task.kind == "regression":
        assert task.label_names is None and task.num_labels == 1 and task.is_regression
    else:
        assert task.label_names is not None and task.num_labels == len(task.label_names)
        for class_id, class_name in enumerate(task.label_names):
            assert task.label_aliases[class_name] == class_id
            assert task.label_aliases[str(class_id)] == class_id
        assert set(task.label_aliases.values()) == set(range(task.num_labels))


def test_hub_label_order_and_aliases() -> None:
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("rte").label_aliases == {"entailment": 0, "not_entailment": 1, "0": 0, "1": 1}
    assert get_task("qnli").label_names == ("entailment", "not_entailment")
    assert get_task("mrpc").label_aliases == {"0": 0, "1": 1, "not_equivalent": 0, "equivalent": 1}
    assert get_task("mnli").hub_splits["validation"] == "validation_matched"


def test_columns_cover_glue_tsv_and_hub_layouts() -> None:
    mrpc = get_task("mrpc")
    assert mrpc.text_columns == (("#1 String", "sentence1"), ("#2 String", "sentence2"))
    assert mrpc.label_columns == ("Quality", "label")
    assert get_task("mnli").label_columns == ("gold_label", "label")
    assert get_task("mnli").text_columns == (("sentence1", "premise"), ("sentence2", "hypothesis"))
    assert get_task("qqp").label_columns == ("is_duplicate", "label")
    assert get_task("qnli").text_columns == (("question",), ("sentence",))
    assert get_task("stsb").label_columns == ("score", "label")
    assert get_task("cola").headerless_columns == ("source", "label", "mark", "sentence")
    assert get_task("sst2").headerless_columns is None
