"""Translation data: the real WMT16 en-ro files, JSON rows, aligned files, hub datasets, encoding, batching
and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import one_line_error, write

from addrop_cli.tasks.translation_data import (
    TranslationPair,
    encode_translation,
    load_hub_translation,
    read_translation,
    seq2seq_collator,
)

# ----------------------------------------------------------------------------------- real WMT16 en-ro


def test_wmt16_newsdev_en_ro(shared_data: Path) -> None:
    pairs = read_translation(shared_data / "wmt16_en_ro" / "newsdev2016", "en", "ro")
    assert len(pairs) == 1999
    assert pairs[0].source.startswith("Brazil's Former Presidential Chief-of-Staff")
    assert pairs[0].target.startswith("Fostul șef al cabinetului prezidențial brazilian")
    assert all(pair.source.strip() and pair.target.strip() for pair in pairs)


def test_wmt16_newstest_ro_en_takes_languages_from_the_arguments(shared_data: Path) -> None:
    pairs = read_translation(str(shared_data / "wmt16_en_ro" / "newstest2016"), "ro", "en")
    assert len(pairs) == 1999
    assert pairs[0] == TranslationPair(
        "Șeful ONU declară că nu există soluții militare în Siria",
        "UN Chief Says There Is No Military Solution in Syria",
    )


def test_a_language_file_instead_of_the_prefix_gets_a_hint(shared_data: Path) -> None:
    language_file = shared_data / "wmt16_en_ro" / "newsdev2016.en"
    one_line_error(
        lambda: read_translation(language_file, "en", "ro"),
        "newsdev2016.en.en",
        f"give the prefix {shared_data / 'wmt16_en_ro' / 'newsdev2016'}",
    )


# ------------------------------------------------------------------------------------ aligned files


def test_aligned_files_with_and_without_final_newline_and_crlf(tmp_path: Path) -> None:
    write(tmp_path / "small.en", "Hello.\r\nGood morning.\r\n")
    write(tmp_path / "small.ro", "Salut.\nBună dimineața.")
    assert read_translation(tmp_path / "small", "en", "ro") == [
        TranslationPair("Hello.", "Salut."),
        TranslationPair("Good morning.", "Bună dimineața."),
    ]
    assert read_translation(tmp_path / "small", "ro", "en")[1] == TranslationPair("Bună dimineața.", "Good morning.")


def test_mismatched_line_counts_name_both_files(tmp_path: Path) -> None:
    write(tmp_path / "bad.en", "a\nb\nc\n")
    write(tmp_path / "bad.ro", "a\nb\n")
    one_line_error(
        lambda: read_translation(tmp_path / "bad", "en", "ro"),
        f"{tmp_path / 'bad.en'} has 3 lines but {tmp_path / 'bad.ro'} has 2",
    )


def test_blank_line_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "gap.en", "a\nb\nc\n")
    write(tmp_path / "gap.ro", "a\n \nc\n")
    one_line_error(lambda: read_translation(tmp_path / "gap", "en", "ro"), f"{tmp_path / 'gap.ro'} line 2: blank line")
    write(tmp_path / "empty.en", "")
    write(tmp_path / "empty.ro", "")
    one_line_error(lambda: read_translation(tmp_path / "empty", "en", "ro"), "have no sentence pairs")


def test_neither_rows_nor_aligned_files_says_what_was_looked_for(tmp_path: Path) -> None:
    write(tmp_path / "half.en", "a\n")
    one_line_error(
        lambda: read_translation(tmp_path / "half", "en", "ro"),
        "looked for a .json/.jsonl file or the aligned files half.en and half.ro",
        f"not found: {tmp_path / 'half'}, {tmp_path / 'half.ro'}",
    )
    one_line_error(lambda: read_translation(tmp_path / "rows.jsonl", "en", "ro"), "rows.jsonl.en")
    one_line_error(lambda: read_translation(tmp_path / "half", "en", "en"), "two different codes")


# ------------------------------------------------------------------------------------ JSON rows


def test_jsonl_json_list_and_data_object(tmp_path: Path) -> None:
    rows = [
        {"translation": {"en": "Hello.", "ro": "Salut.", "de": "Hallo."}},
        {"translation": {"en": "Thanks.", "ro": "Mulțumesc."}},
    ]
    expected = [TranslationPair("Hello.", "Salut."), TranslationPair("Thanks.", "Mulțumesc.")]
    jsonl = write(tmp_path / "rows.jsonl", "\n".join(json.dumps(row, ensure_ascii=False) for row in rows))
    assert read_translation(jsonl, "en", "ro") == expected
    assert read_translation(write(tmp_path / "list.json", json.dumps(rows)), "en", "ro") == expected
    assert read_translation(write(tmp_path / "data.JSON", json.dumps({"data": rows})), "en", "ro") == expected


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            '{"translation": {"en": "a", "ro": "b"}}\n{"translation": {"en": "c"}}\n',
            """line 2: no 'ro' in 'translation' (it has 'en'); expected {"translation": {"en": ..., "ro": ...}}""",
        ),
        ('{"en": "a", "ro": "b"}\n', 'line 1: expected an object {"translation": {"en": ..., "ro": ...}}'),
        ('{"translation": {"en": "a", "ro": 3}}\n', "line 1: translation.ro must be a string, got int"),
        ('{"translation": {"en": "a", "ro": "b"}\n', "line 1: invalid JSON"),
        ("\n\n", "has no sentence pairs"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, content: str, problem: str) -> None:
    path = write(tmp_path / "bad.jsonl", content)
    one_line_error(lambda: read_translation(path, "en", "ro"), str(path), problem)


def test_json_rows_are_numbered_by_item(tmp_path: Path) -> None:
    path = write(tmp_path / "list.json", json.dumps([{"translation": {"en": "a", "ro": "b"}}, {"translation": {}}]))
    one_line_error(lambda: read_translation(path, "en", "ro"), f"{path} item 2: no 'en' in 'translation' (it has none)")


# ------------------------------------------------------------------------------------ hub datasets


def test_hub_loader_reads_a_translation_column(tmp_path: Path) -> None:
    folder = tmp_path / "wmt"
    folder.mkdir()
    write(folder / "train.jsonl", '{"translation": {"en": "Hello.", "ro": "Salut."}}\n')
    write(folder / "validation.jsonl", '{"translation": {"en": "Yes.", "ro": "Da."}}\n')
    cache = tmp_path / "cache"
    assert load_hub_translation(str(folder), None, "validation", "en", "ro", cache_dir=cache) == [
        TranslationPair("Yes.", "Da.")
    ]
    assert load_hub_translation(str(folder), None, "train", "ro", "en", cache_dir=cache) == [
        TranslationPair("Salut.", "Hello.")
    ]
    one_line_error(
        lambda: load_hub_translation(str(folder), None, "train", "en", "de", cache_dir=cache),
        "split 'train' row 0: no 'de' in 'translation'",
    )
    one_line_error(
        lambda: load_hub_translation(str(folder), None, "test", "en", "ro", cache_dir=cache),
        "cannot load dataset", "split 'test': Unknown split",
    )


def test_hub_loader_needs_a_translation_column_and_wraps_missing_datasets(tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    write(folder / "train.jsonl", '{"en": "Hello.", "ro": "Salut."}\n')
    cache = tmp_path / "cache"
    one_line_error(
        lambda: load_hub_translation(str(folder), None, "train", "en", "ro", cache_dir=cache),
        "no 'translation' column; it has columns: 'en', 'ro'",
    )
    one_line_error(
        lambda: load_hub_translation(str(tmp_path / "nothing"), "ro-en", "train", "en", "ro", cache_dir=cache),
        "cannot load dataset", "nothing' (config 'ro-en') split 'train': ",
    )


# ------------------------------------------------------------------------------------ encoding and batching


PAIRS = [TranslationPair("the cat sat on the mat", "the dog"), TranslationPair("good", "a very good film")]


def test_encoding_gives_inputs_and_target_labels(tiny_tokenizer) -> None:
    features = encode_translation(PAIRS, tiny_tokenizer, max_source_length=64, max_target_length=64)
    ids = tiny_tokenizer.convert_tokens_to_ids
    assert features[0]["input_ids"] == ids(["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"])
    assert features[0]["attention_mask"] == [1] * 8
    assert features[0]["labels"] == ids(["[CLS]", "the", "dog", "[SEP]"])
    # Labels are what the tokenizer gives for text_target, unpadded.
    targets = tiny_tokenizer(text_target=[pair.target for pair in PAIRS])["input_ids"]
    assert [feature["labels"] for feature in features] == targets


def test_sources_and_targets_truncate_to_their_own_limits_and_take_the_prefix(tiny_tokenizer) -> None:
    features = encode_translation(PAIRS, tiny_tokenizer, max_source_length=4, max_target_length=3, source_prefix="an ")
    ids = tiny_tokenizer.convert_tokens_to_ids
    assert features[0]["input_ids"] == ids(["[CLS]", "an", "the", "[SEP]"])
    assert features[1]["labels"] == ids(["[CLS]", "a", "[SEP]"])
    assert all(len(feature["input_ids"]) <= 4 and len(feature["labels"]) <= 3 for feature in features)
    one_line_error(
        lambda: encode_translation(PAIRS, tiny_tokenizer, max_source_length=8, max_target_length=0),
        "max_target_length must be a positive integer, got 0",
    )
    assert encode_translation([], tiny_tokenizer, max_source_length=8, max_target_length=8) == []


def test_real_newsdev_pairs_encode(shared_data: Path, tiny_tokenizer) -> None:
    pairs = read_translation(shared_data / "wmt16_en_ro" / "newsdev2016", "en", "ro")[:32]
    features = encode_translation(pairs, tiny_tokenizer, max_source_length=128, max_target_length=128)
    assert len(features) == 32
    assert all(2 < len(feature["labels"]) <= 128 for feature in features)


def test_collator_pads_labels_with_minus_100(tiny_tokenizer) -> None:
    features = encode_translation(PAIRS, tiny_tokenizer, max_source_length=64, max_target_length=64)
    batch = seq2seq_collator(tiny_tokenizer)(features)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"].tolist() == [features[0]["labels"] + [-100, -100], features[1]["labels"]]
    assert "decoder_input_ids" not in batch
