"""Token classification data: the real CoNLL-2003 files, small files of every format, sub-word label
alignment, batching and malformed input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from helpers import one_line_error, write

from addrop_cli.tasks.ner_data import (
    TaggedSentence,
    encode_tagged,
    load_hub_tagged,
    read_conll,
    read_tagged,
    read_tagged_rows,
    token_collator,
)
from addrop_cli.tasks.registry import CONLL_TAGS

CONLL_LABELS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]


# ----------------------------------------------------------------------------------- real CoNLL-2003


@pytest.fixture(scope="module")
def conll_train(shared_data: Path) -> list[TaggedSentence]:
    return read_conll(shared_data / "conll2003" / "train.txt")


def test_conll_train_sentences_tokens_and_entities(conll_train: list[TaggedSentence]) -> None:
    assert len(conll_train) == 14041
    assert sum(len(sentence.tokens) for sentence in conll_train) == 203621
    entities = Counter(tag[2:] for sentence in conll_train for tag in sentence.tags or [] if tag.startswith("B-"))
    assert entities == {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}
    first = conll_train[0]
    assert first.tokens == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert first.tags == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    assert first.where is not None and first.where.endswith("train.txt line 3")
    # The file ends without a newline: its last sentence must not be lost.
    assert conll_train[-1].tokens == ["Swansea", "1", "Lincoln", "2"]
    assert conll_train[-1].tags == ["B-ORG", "O", "B-ORG", "O"]


def test_conll_tags_are_the_registered_tag_set(conll_train: list[TaggedSentence]) -> None:
    assert {tag for sentence in conll_train for tag in sentence.tags} == set(CONLL_TAGS)


@pytest.mark.parametrize(("split", "sentences", "tokens"), [("valid", 3250, 51362), ("test", 3453, 46435)])
def test_conll_valid_and_test(shared_data: Path, split: str, sentences: int, tokens: int) -> None:
    read = read_tagged(shared_data / "conll2003" / f"{split}.txt")
    assert len(read) == sentences
    assert sum(len(sentence.tokens) for sentence in read) == tokens
    assert {tag for sentence in read for tag in sentence.tags} == set(CONLL_TAGS)


def test_real_conll_through_a_dataloader(conll_train: list[TaggedSentence], tiny_tokenizer) -> None:
    sentences = conll_train[:64]
    label2id = {label: index for index, label in enumerate(CONLL_LABELS)}
    features = encode_tagged(sentences, tiny_tokenizer, label2id, max_length=32)
    batch = token_collator(tiny_tokenizer)(features[:16])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["labels"].dtype == torch.int64
    # Without truncation, every word keeps exactly one labelled (first) sub-word.
    full = encode_tagged(sentences, tiny_tokenizer, label2id, max_length=512)
    for feature, sentence in zip(full, sentences, strict=True):
        kept = [label for label in feature["labels"] if label != -100]
        assert kept == [label2id[tag] for tag in sentence.tags or []]


# ------------------------------------------------------------------------------------ small CoNLL files


def test_conll_docstart_blank_runs_crlf_and_no_final_newline(tmp_path: Path) -> None:
    path = write(
        tmp_path / "small.conll",
        "-DOCSTART- -X- -X- O\r\n\r\nJohn NNP B-NP B-PER\r\nsat VBD B-VP O\r\n\r\n\r\n"
        "-DOCSTART- -X- -X- O\nParis NNP B-NP B-LOC",
    )
    assert read_conll(path) == [
        TaggedSentence(["John", "sat"], ["B-PER", "O"]),
        TaggedSentence(["Paris"], ["B-LOC"]),
    ]
    assert [sentence.where for sentence in read_conll(path)] == [f"{path} line 3", f"{path} line 8"]
    # Any column can be the tag: here the POS tags.
    assert read_conll(path, tag_column=1)[0].tags == ["NNP", "VBD"]


def test_conll_docstart_ends_a_sentence_and_one_column_files_are_unlabelled(tmp_path: Path) -> None:
    path = write(tmp_path / "words.txt", "a\nb\n-DOCSTART-\nc\n")
    assert read_tagged(path) == [TaggedSentence(["a", "b"], None), TaggedSentence(["c"], None)]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("A x B-PER\nb y O\n\nc O\n", "line 4: expected 3 whitespace-separated columns (as on line 1), got 2"),
        ("-DOCSTART- -X- O\n\nA x O\nb y z O\n", "line 4: expected 3 whitespace-separated columns (as on line 3)"),
        ("-DOCSTART- -X- -X- O\n\n\n", "has no sentences"),
        ("", "has no sentences"),
    ],
)
def test_malformed_conll_names_file_and_line(tmp_path: Path, content: str, problem: str) -> None:
    path = write(tmp_path / "bad.txt", content)
    one_line_error(lambda: read_conll(path), str(path), problem)


def test_conll_tag_column_must_name_a_tag_column(tmp_path: Path) -> None:
    path = write(tmp_path / "tags.txt", "A x B-PER\n")
    for column in (0, 3, -3):
        one_line_error(
            lambda column=column: read_conll(path, tag_column=column), "line 1", "valid: 1 to 2, or -1 to -2"
        )


def test_missing_directory_and_unsupported_files(tmp_path: Path) -> None:
    one_line_error(lambda: read_tagged(tmp_path / "nope.txt"), "nope.txt does not exist")
    (tmp_path / "folder.conll").mkdir()
    one_line_error(lambda: read_tagged(tmp_path / "folder.conll"), "folder.conll is a directory")
    path = write(tmp_path / "data.tsv", "a\tO\n")
    one_line_error(lambda: read_tagged(path), "unsupported file type '.tsv'", "valid: .txt, .conll, .json, .jsonl")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 O\n".encode("latin-1"))
    one_line_error(lambda: read_tagged(latin), "latin.txt is not UTF-8 text")


# ------------------------------------------------------------------------------------ JSON rows


def test_jsonl_rows_with_string_and_integer_tags(tmp_path: Path) -> None:
    rows = [{"tokens": ["John", "sat"], "ner_tags": ["B-PER", "O"]}, {"tokens": ["Paris"], "ner_tags": [2]}]
    path = write(tmp_path / "rows.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    sentences = read_tagged(path)
    # Without names, an integer tag stays its decimal string.
    assert sentences == [TaggedSentence(["John", "sat"], ["B-PER", "O"]), TaggedSentence(["Paris"], ["2"])]
    assert sentences[1].where == f"{path} line 2"
    named = read_tagged_rows(path, tag_names=["O", "B-PER", "B-LOC"])
    assert named[1] == TaggedSentence(["Paris"], ["B-LOC"])


def test_json_list_data_object_and_unlabelled_rows(tmp_path: Path) -> None:
    rows = [{"tokens": ["a", "b"], "ner_tags": ["O", "O"]}]
    assert read_tagged(write(tmp_path / "list.json", json.dumps(rows))) == [TaggedSentence(["a", "b"], ["O", "O"])]
    wrapped = write(tmp_path / "data.json", json.dumps({"data": rows}))
    assert read_tagged(wrapped)[0].where == f"{wrapped} item 1"
    plain = write(tmp_path / "plain.jsonl", '{"tokens": ["a"]}\n{"tokens": ["b", "c"]}\n')
    assert read_tagged(plain) == [TaggedSentence(["a"], None), TaggedSentence(["b", "c"], None)]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"tokens": ["a"], "ner_tags": ["O"]}\n{"tokens": ["b"]}\n', "line 2: missing 'ner_tags'"),
        ('{"tokens": ["a", "b"], "ner_tags": ["O"]}\n', "line 1: 2 tokens but 1 ner_tags"),
        ('{"words": ["a"], "ner_tags": ["O"]}\n', "line 1: missing 'tokens'; it has keys: 'words', 'ner_tags'"),
        ('{"tokens": "a b", "ner_tags": ["O"]}\n', "line 1: 'tokens' must be a list of strings"),
        ('{"tokens": ["a"], "ner_tags": [true]}\n', "line 1: tag True must be a string or an integer"),
        ('{"tokens": ["a"], "ner_tags": "O"}\n', "line 1: 'ner_tags' must be a list"),
        ('["a"]\n', "line 1: expected a JSON object"),
        ('{"tokens": ["a"]\n', "line 1: invalid JSON"),
        ("\n", "has no sentences"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, content: str, problem: str) -> None:
    path = write(tmp_path / "bad.jsonl", content)
    one_line_error(lambda: read_tagged(path), str(path), problem)


def test_integer_tag_out_of_range_lists_the_names(tmp_path: Path) -> None:
    path = write(tmp_path / "ids.jsonl", '{"tokens": ["a"], "ner_tags": [5]}\n')
    one_line_error(
        lambda: read_tagged_rows(path, tag_names=["O", "B-PER"]), "line 1: tag id 5 is out of range", "O, B-PER"
    )


# ------------------------------------------------------------------------------------ hub datasets


def test_hub_loader_maps_class_label_ids_through_their_names(tmp_path: Path) -> None:
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    folder = tmp_path / "ner"
    folder.mkdir()
    rows = {"id": ["0", "1"], "tokens": [["John", "Smith"], ["in", "Paris"]], "ner_tags": [[1, 2], [0, 3]]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "train.parquet"))
    cache = tmp_path / "cache"
    assert load_hub_tagged(str(folder), None, "train", cache_dir=cache) == [
        TaggedSentence(["John", "Smith"], ["B-PER", "I-PER"]),
        TaggedSentence(["in", "Paris"], ["O", "B-LOC"]),
    ]
    one_line_error(
        lambda: load_hub_tagged(str(folder), None, "test", cache_dir=cache),
        "cannot load dataset", "ner' split 'test'", "Unknown split",
    )


def test_hub_loader_needs_a_tokens_column_and_wraps_missing_datasets(tmp_path: Path) -> None:
    folder = tmp_path / "words"
    folder.mkdir()
    write(folder / "train.jsonl", '{"words": ["a"]}\n')
    cache = tmp_path / "cache"
    one_line_error(
        lambda: load_hub_tagged(str(folder), None, "train", cache_dir=cache),
        "split 'train': no 'tokens' column; it has columns: 'words'",
    )
    missing = str(tmp_path / "no-such-dataset")
    one_line_error(
        lambda: load_hub_tagged(missing, "x", "train", cache_dir=cache),
        "cannot load dataset", "no-such-dataset' (config 'x') split 'train': ",
    )


# ------------------------------------------------------------------------------------ encoding


LABEL2ID = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3}
# "john" and "paris" are not in the tiny vocabulary: they split into letters (j ##o ##h ##n, p ##a ##r ##i ##s).
WORDS = TaggedSentence(["John", "sat", "in", "Paris"], ["B-PER", "O", "O", "B-LOC"])


def test_tiny_tokenizer_splits_the_example_words(tiny_tokenizer) -> None:
    encoded = tiny_tokenizer(WORDS.tokens, is_split_into_words=True)
    assert encoded.tokens() == [
        "[CLS]", "j", "##o", "##h", "##n", "sat", "in", "p", "##a", "##r", "##i", "##s", "[SEP]"
    ]  # fmt: skip


def test_first_sub_word_gets_the_label_and_the_rest_minus_100(tiny_tokenizer) -> None:
    [feature] = encode_tagged([WORDS], tiny_tokenizer, LABEL2ID, max_length=64)
    assert feature["labels"] == [-100, 1, -100, -100, -100, 0, 0, 3, -100, -100, -100, -100, -100]
    assert len(feature["labels"]) == len(feature["input_ids"]) == len(feature["attention_mask"])


def test_label_all_tokens_repeats_the_word_label(tiny_tokenizer) -> None:
    [feature] = encode_tagged([WORDS], tiny_tokenizer, LABEL2ID, max_length=64, label_all_tokens=True)
    assert feature["labels"] == [-100, 1, 1, 1, 1, 0, 0, 3, 3, 3, 3, 3, -100]


def test_truncation_drops_words_and_keeps_special_tokens_unlabelled(tiny_tokenizer) -> None:
    [feature] = encode_tagged([WORDS], tiny_tokenizer, LABEL2ID, max_length=7)
    assert tiny_tokenizer.convert_ids_to_tokens(feature["input_ids"]) == [
        "[CLS]", "j", "##o", "##h", "##n", "sat", "[SEP]"
    ]  # fmt: skip
    assert feature["labels"] == [-100, 1, -100, -100, -100, 0, -100]


def test_unlabelled_sentences_give_no_labels(tiny_tokenizer) -> None:
    features = encode_tagged([TaggedSentence(["the", "cat"], None)], tiny_tokenizer, LABEL2ID, max_length=8)
    assert "labels" not in features[0]
    mixed = [WORDS, TaggedSentence(["the"], None)]
    one_line_error(
        lambda: encode_tagged(mixed, tiny_tokenizer, LABEL2ID, max_length=8), "1 of 2 sentences have no tags"
    )
    assert encode_tagged([], tiny_tokenizer, LABEL2ID, max_length=8) == []


def test_unknown_tag_names_file_line_word_and_valid_labels(tmp_path: Path, tiny_tokenizer) -> None:
    path = write(tmp_path / "dev.txt", "the O\ncat O\n\nJohn B-PER\nsat B-PERSON\n")
    one_line_error(
        lambda: encode_tagged(read_conll(path), tiny_tokenizer, LABEL2ID, max_length=16),
        f"{path} line 4, word 2 'sat': unknown tag 'B-PERSON'; valid: O, B-PER, I-PER, B-LOC",
    )
    # Sentences built in code have no location: they are numbered instead.
    one_line_error(
        lambda: encode_tagged([TaggedSentence(["a"], ["X"])], tiny_tokenizer, LABEL2ID, max_length=8),
        "sentence 1, word 1 'a': unknown tag 'X'",
    )


def test_encoding_needs_a_fast_tokenizer_and_a_positive_length(tiny_tokenizer) -> None:
    slow = SimpleNamespace(is_fast=False)
    one_line_error(lambda: encode_tagged([WORDS], slow, LABEL2ID, max_length=8), "needs a fast tokenizer")
    one_line_error(lambda: encode_tagged([WORDS], tiny_tokenizer, LABEL2ID, max_length=0), "max_length must be")


def test_collator_pads_labels_with_minus_100(tiny_tokenizer) -> None:
    short = TaggedSentence(["the", "cat"], ["O", "O"])
    features = encode_tagged([WORDS, short], tiny_tokenizer, LABEL2ID, max_length=64)
    batch = token_collator(tiny_tokenizer)(features)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 13)
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"][1].tolist() == [-100, 0, 0, -100] + [-100] * 9
    assert batch["attention_mask"][1].tolist() == [1] * 4 + [0] * 9
    assert batch["input_ids"][1, 4:].tolist() == [tiny_tokenizer.pad_token_id] * 9
