"""HANS / PAWS: label mapping by name (any order), readers of the original formats, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import one_line_error, write

from addrop_cli.tasks.ood_data import OOD_SETS, map_labels, read_ood_file

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("names", [["entailment", "neutral", "contradiction"],
                                   ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"]])
def test_mnli_labels_map_onto_hans_in_either_order(names):
    mapping = map_labels(names, OOD_SETS["hans"])
    assert {name.lower(): target for name, target in mapping.items()} == {
        "entailment": "entailment", "neutral": "non-entailment", "contradiction": "non-entailment"}


@pytest.mark.parametrize("names", [["not_duplicate", "duplicate"], ["equivalent", "not_equivalent"]])
def test_qqp_and_mrpc_labels_map_onto_paws(names):
    mapping = map_labels(names, OOD_SETS["paws"])
    assert sorted(mapping.values()) == ["not_paraphrase", "paraphrase"]
    assert mapping[next(n for n in names if not n.startswith("not"))] == "paraphrase"


@pytest.mark.parametrize(("names", "target"), [(["negative", "positive"], "hans"), (["LABEL_0", "LABEL_1"], "paws"),
                                               (["entailment", "entailment_strong"], "hans"),
                                               (["neutral", "contradiction"], "hans")])
def test_unmappable_checkpoints_are_refused_on_one_line(names, target):
    one_line_error(lambda: map_labels(names, OOD_SETS[target]), f"cannot be mapped onto {target}'s",
                   ", ".join(names))


def test_hans_file_keeps_heuristics_and_gold_labels():
    examples = read_ood_file(DATA / "hans_sample.txt", OOD_SETS["hans"])
    assert len(examples) == 10
    assert {e.group["heuristic"] for e in examples} == {"lexical_overlap", "subsequence", "constituent"}
    assert examples[1].label == 1 and examples[1].text_b == "the film saw the cast"


def test_paws_file_reads_numeric_labels():
    examples = read_ood_file(DATA / "paws_sample.tsv", OOD_SETS["paws"])
    assert [e.label for e in examples] == [1, 0, 1, 0, 1, 0] and examples[0].group == {}


def test_bad_files_name_the_file_and_what_is_missing(tmp_path):
    path = write(tmp_path / "hans.txt", "gold_label\tsentence1\tsentence2\nentailment\ta\tb\n")
    one_line_error(lambda: read_ood_file(path, OOD_SETS["hans"]), str(path), "missing column(s) heuristic, subcase")
    path = write(tmp_path / "paws.tsv", "id\tsentence1\tsentence2\tlabel\n1\ta\tb\tmaybe\n")
    one_line_error(lambda: read_ood_file(path, OOD_SETS["paws"]), f"{path} row 2", "label 'maybe'")
