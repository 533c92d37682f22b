"""Reading, encoding and batching: the real GLUE files, small files of every format, and malformed input."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import datasets
import pytest
import torch
from helpers import write
from torch.utils.data import DataLoader

from addrop_cli.errors import UserError
from addrop_cli.tasks.glue_data import Example, encode_examples, load_hub_examples, make_collator, read_examples
from addrop_cli.tasks.registry import get_task
from addrop_cli.tasks.splits import select_samples
from addrop_cli.training.batching import EncodedDataset, LengthGroupedBatchSampler, longest_first

# ------------------------------------------------------------------------------------ real GLUE files


def test_mrpc_train(shared_data: Path) -> None:
    # The header starts with a BOM; without stripping it the 'Quality' column would not be found.
    examples = read_examples(shared_data / "MRPC" / "train.tsv", get_task("mrpc"))
    assert len(examples) == 3668
    assert sum(example.label == 1 for example in examples) == 2474
    assert {example.label for example in examples} == {0, 1}
    first = examples[0]
    assert first.text_a.startswith('Amrozi accused his brother, whom he called "the witness"')
    assert first.text_b is not None and first.text_b.startswith('Referring to him as only "the witness"')


def test_mrpc_dev(shared_data: Path) -> None:
    examples = read_examples(shared_data / "MRPC" / "dev.tsv", get_task("mrpc"))
    assert len(examples) == 408
    assert sum(example.label == 1 for example in examples) == 279


def test_cola_is_headerless(shared_data: Path) -> None:
    cola = get_task("cola")
    train = read_examples(shared_data / "CoLA" / "train.tsv", cola)
    dev = read_examples(shared_data / "CoLA" / "dev.tsv", cola)
    assert len(train) == 8551
    assert len(dev) == 1043
    assert sum(example.label == 1 for example in dev) == 721
    assert train[0].text_b is None
    # The first line is data, not a header; the dev file ends without a newline.
    assert dev[0].text_a == "The sailors rode the breeze clear of the rocks."
    assert dev[-1].text_a == "John talked to Bill about himself."


def test_sst2_dev_and_unlabelled_test(shared_data: Path) -> None:
    sst2 = get_task("SST-2")
    dev = read_examples(shared_data / "SST-2" / "dev.tsv", sst2)
    assert len(dev) == 872
    assert sum(example.label == 1 for example in dev) == 444
    test = read_examples(shared_data / "SST-2" / "test.tsv", sst2, require_labels=False)
    assert len(test) == 1821
    assert all(example.label is None for example in test)
    with pytest.raises(
        UserError, match=r"SST-2/test.tsv: no label column \(expected 'label'\); it has columns"
    ):
        read_examples(shared_data / "SST-2" / "test.tsv", sst2)


def test_rte_sample_string_labels(shared_data: Path) -> None:
    examples = read_examples(shared_data / "RTE-sample" / "dev-sample.tsv", get_task("rte"))
    assert len(examples) == 16
    assert {example.label for example in examples} == {0, 1}
    assert examples[0].label == 1  # not_entailment
    assert examples[0].text_b == "Christopher Reeve had an accident."


def test_stsb_sample_float_scores(shared_data: Path) -> None:
    examples = read_examples(shared_data / "STS-B-sample" / "dev-sample.tsv", get_task("sts-b"))
    assert len(examples) == 16
    assert all(isinstance(example.label, float) and 0.0 <= example.label <= 5.0 for example in examples)
    assert [examples[0].label, examples[1].label] == [5.0, 4.75]
    assert examples[0].text_a == "A man with a hard hat is dancing."
    assert examples[0].text_b == "A man wearing a hard hat is dancing."


def test_real_mrpc_dev_through_a_dataloader(shared_data: Path, tiny_tokenizer) -> None:
    examples = read_examples(shared_data / "MRPC" / "dev.tsv", get_task("mrpc"))
    dataset = EncodedDataset(encode_examples(examples, tiny_tokenizer, max_length=64))
    sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size=16, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=make_collator(tiny_tokenizer))
    seen = 0
    for batch in loader:
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] <= 64
        assert batch["labels"].dtype == torch.int64
        seen += len(batch["labels"])
    assert seen == 408


def test_evaluation_runs_longest_first_and_scores_as_in_file_order(tiny_tokenizer) -> None:
    from accelerate import Accelerator
    from tiny_models import tiny_classifier

    from addrop_cli.tasks.pipelines import SequencePipeline

    words = ["the", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away"]
    generator = random.Random(0)
    examples = [Example(" ".join(generator.choices(words, k=generator.randint(1, 30))), None, i % 2)
                for i in range(50)]
    dataset = EncodedDataset(encode_examples(examples, tiny_tokenizer, max_length=32))
    order = longest_first(dataset)
    assert sorted(order) == list(range(50))
    assert [dataset.lengths[i] for i in order] == sorted(dataset.lengths, reverse=True)

    pipeline, accelerator = SequencePipeline(get_task("sst2")), Accelerator(cpu=True)
    collate = make_collator(tiny_tokenizer)
    results, padded = [], []
    for sampler in (None, order):
        loader = DataLoader(dataset, batch_size=8, sampler=sampler, collate_fn=collate)
        padded.append(sum(batch["input_ids"].numel() for batch in loader))
        results.append(pipeline.evaluate(tiny_classifier(), loader, accelerator, tiny_tokenizer))
    assert padded[1] < 0.9 * padded[0]
    assert results[1].metrics == results[0].metrics
    assert results[1].prediction_counts == results[0].prediction_counts
    assert results[1].loss == pytest.approx(results[0].loss, abs=1e-5)


# ------------------------------------------------------------------------------------ small files


def test_tsv_quoting_off_crlf_bom_blank_lines_and_no_final_newline(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pairs.tsv",
        '\ufeffsentence1\tsentence2\tlabel\r\n"The grass family\tit said "no\tentailment\r\n\r\nok\tfine\t1',
    )
    examples = read_examples(path, get_task("rte"))
    assert examples == [Example('"The grass family', 'it said "no', 0), Example("ok", "fine", 1)]


def test_tsv_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.tsv", "sentence\tlabel\ngood film\t1\n\nbad\tfilm\t0\n")
    with pytest.raises(UserError) as caught:
        read_examples(path, get_task("sst2"))
    assert str(caught.value) == f"{path} line 4: expected 2 tab-separated fields, got 3"


def test_csv_uses_normal_quoting(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", 'sentence,label\n"good, very good",positive\n"a ""quoted"" word",negative\n')
    examples = read_examples(path, get_task("sst2"))
    assert examples == [Example("good, very good", None, 1), Example('a "quoted" word', None, 0)]


def test_csv_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "sentence,label\ngood,1\nbad,0,extra\n")
    with pytest.raises(UserError, match=r"data.csv line 3: expected 2 comma-separated fields, got 3"):
        read_examples(path, get_task("sst2"))


def test_json_list_and_data_object_with_int_and_name_labels(tmp_path: Path) -> None:
    records = [
        {"premise": "a cat", "hypothesis": "an animal", "label": 0},
        {"premise": "a dog", "hypothesis": "a cat", "label": "contradiction"},
    ]
    expected = [Example("a cat", "an animal", 0), Example("a dog", "a cat", 2)]
    mnli = get_task("mnli")
    assert read_examples(write(tmp_path / "list.json", json.dumps(records)), mnli) == expected
    assert read_examples(write(tmp_path / "wrapped.json", json.dumps({"data": records})), mnli) == expected


def test_jsonl_with_blank_lines_and_float_targets(tmp_path: Path) -> None:
    lines = [
        json.dumps({"sentence1": "a", "sentence2": "b", "label": 3.2}),
        "",
        '{"sentence1": "c", "sentence2": "d", "label": "1"}',
    ]
    examples = read_examples(write(tmp_path / "data.jsonl", "\n".join(lines) + "\n"), get_task("stsb"))
    assert examples == [Example("a", "b", 3.2), Example("c", "d", 1.0)]
    assert isinstance(examples[1].label, float)


def test_explicit_columns_override_the_task_candidates(tmp_path: Path) -> None:
    path = write(tmp_path / "custom.tsv", "id\treview\tstars\n1\tgood film\t1\n2\tbad film\t0\n")
    examples = read_examples(path, get_task("sst2"), text_columns=["review"], label_column="stars")
    assert examples == [Example("good film", None, 1), Example("bad film", None, 0)]
    with pytest.raises(UserError, match=r"task sst2 takes 1 text column\(s\), got 2: id, review"):
        read_examples(path, get_task("sst2"), text_columns=["id", "review"], label_column="stars")


def test_headerless_detection_only_when_no_expected_name_appears(tmp_path: Path) -> None:
    cola = get_task("cola")
    with_header = write(tmp_path / "cola_header.tsv", "sentence\tlabel\nThe cat sat.\t1\n")
    headerless = write(tmp_path / "cola_raw.tsv", "src\t0\t*\tCat the sat.\nsrc\t1\t\tThe cat sat.\n")
    assert read_examples(with_header, cola) == [Example("The cat sat.", None, 1)]
    assert read_examples(headerless, cola) == [
        Example("Cat the sat.", None, 0),
        Example("The cat sat.", None, 1),
    ]


def test_missing_column_names_file_columns_and_expected(tmp_path: Path) -> None:
    path = write(tmp_path / "pairs.tsv", "Quality\tfirst\tsecond\n1\ta\tb\n")
    with pytest.raises(UserError) as caught:
        read_examples(path, get_task("mrpc"))
    assert str(caught.value) == (
        f"{path}: no column for text field 1 of task mrpc (expected one of '#1 String', 'sentence1'); "
        "it has columns: 'Quality', 'first', 'second'"
    )


def test_unknown_label_names_file_line_and_valid_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rte.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n"
    )
    with pytest.raises(UserError) as caught:
        read_examples(path, get_task("rte"))
    assert str(caught.value) == (
        f"{path} line 3: column 'label': unknown label 'maybe'; "
        "valid labels: entailment, not_entailment, 0, 1"
    )


@pytest.mark.parametrize("bad", [5, -1, True, 0.5])
def test_out_of_range_or_non_integer_json_labels_are_rejected(tmp_path: Path, bad: object) -> None:
    path = write(tmp_path / "data.json", json.dumps([{"sentence": "good", "label": bad}]))
    with pytest.raises(UserError, match=r"data.json item 1: column 'label': unknown label"):
        read_examples(path, get_task("sst2"))


def test_non_numeric_regression_target(tmp_path: Path) -> None:
    path = write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\thigh\n")
    with pytest.raises(UserError, match=r"sts.tsv line 3: column 'score': label 'high' is not a number"):
        read_examples(path, get_task("stsb"))
    path = write(tmp_path / "nan.tsv", "sentence1\tsentence2\tscore\na\tb\tnan\n")
    with pytest.raises(
        UserError, match=r"nan.tsv line 2: column 'score': label 'nan' is not a finite number"
    ):
        read_examples(path, get_task("stsb"))


def test_missing_label_value_is_an_error_only_when_labels_are_required(tmp_path: Path) -> None:
    path = write(tmp_path / "gaps.tsv", "sentence\tlabel\ngood\t1\nbad\t\n")
    with pytest.raises(UserError, match=r"gaps.tsv line 3: no label in column 'label'"):
        read_examples(path, get_task("sst2"))
    assert read_examples(path, get_task("sst2"), require_labels=False)[1].label is None


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.tsv", "", "has no examples"),
        ("blank.csv", "\n\n", "has no examples"),
        ("header.tsv", "sentence\tlabel\n", "has no examples"),
        ("empty.json", "[]", "has no examples"),
        ("broken.json", '[{"sentence": "a",\n "label": }]', "line 2: invalid JSON"),
        ("scalar.json", "3", "expected a JSON list of objects"),
        ("items.json", '["good"]', "item 1: expected a JSON object, got str"),
        ("broken.jsonl", '{"sentence": "a", "label": 1}\n{"sentence"\n', "line 2: invalid JSON"),
        ("missing.jsonl", '{"sentence": "a", "label": 1}\n{"label": 0}\n', "line 2: missing 'sentence'"),
        ("number.jsonl", '{"sentence": 7, "label": 1}\n', "line 1: 'sentence' must be a string, got int"),
        ("data.txt", "sentence\tlabel\n", "unsupported file type '.txt'; valid: .tsv, .csv, .json, .jsonl"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, content: str, problem: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(UserError) as caught:
        read_examples(path, get_task("sst2"))
    message = str(caught.value)
    assert str(path) in message and problem in message and "\n" not in message


def test_missing_directory_and_non_utf8_files(tmp_path: Path) -> None:
    sst2 = get_task("sst2")
    with pytest.raises(UserError, match=r"nope.tsv does not exist"):
        read_examples(tmp_path / "nope.tsv", sst2)
    (tmp_path / "folder.tsv").mkdir()
    with pytest.raises(UserError, match=r"folder.tsv is a directory"):
        read_examples(tmp_path / "folder.tsv", sst2)
    (tmp_path / "latin.tsv").write_bytes("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.tsv is not UTF-8 text"):
        read_examples(tmp_path / "latin.tsv", sst2)


# ------------------------------------------------------------------------------------ hub datasets


def test_hub_loader_reads_a_local_dataset_folder(tmp_path: Path) -> None:
    folder = tmp_path / "reviews"
    folder.mkdir()
    write(folder / "train.csv", "sentence,label\ngood film,positive\nbad film,negative\n")
    write(folder / "validation.csv", "sentence,label\nfine,positive\n")
    sst2 = get_task("sst2")
    cache = tmp_path / "cache"
    assert load_hub_examples(str(folder), None, "train", sst2, cache_dir=cache) == [
        Example("good film", None, 1),
        Example("bad film", None, 0),
    ]
    assert load_hub_examples(str(folder), None, "validation", sst2, cache_dir=cache) == [
        Example("fine", None, 1)
    ]
    with pytest.raises(UserError, match=r"cannot load dataset '.*reviews' split 'test': Unknown split"):
        load_hub_examples(str(folder), None, "test", sst2, cache_dir=cache)

    # Splits whose label columns have different types: the wrapped cause must reach the message.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write(mixed / "train.csv", "sentence,label\ngood film,1\n")
    write(mixed / "validation.csv", "sentence,label\nfine,positive\n")
    with pytest.raises(
        UserError, match=r"split 'train': An error occurred .*: Failed to parse string: 'positive'"
    ):
        load_hub_examples(str(mixed), None, "train", sst2, cache_dir=cache)


def test_hub_class_labels_map_by_name_and_minus_one_is_unlabelled(tmp_path: Path) -> None:
    # Class order reversed relative to the task: ids must be mapped through the names.
    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["not_entailment", "entailment"]),
        }
    )
    folder = tmp_path / "rte"
    folder.mkdir()
    rows = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1, 0]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "train.parquet"))
    unlabelled = {"sentence1": ["e"], "sentence2": ["f"], "label": [-1]}
    datasets.Dataset.from_dict(unlabelled, features=features).to_parquet(str(folder / "test.parquet"))
    rte, cache = get_task("rte"), tmp_path / "cache"
    assert load_hub_examples(str(folder), None, "train", rte, cache_dir=cache) == [
        Example("a", "c", 0),
        Example("b", "d", 1),
    ]
    assert load_hub_examples(str(folder), None, "test", rte, require_labels=False, cache_dir=cache) == [
        Example("e", "f", None)
    ]
    with pytest.raises(UserError, match=r"dataset '.*rte' split 'test' row 0: no label in column 'label'"):
        load_hub_examples(str(folder), None, "test", rte, cache_dir=cache)


def test_hub_loader_wraps_errors_for_a_missing_dataset(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-dataset")
    with pytest.raises(
        UserError, match=r"cannot load dataset '.*no-such-dataset' \(config 'x'\) split 'train': "
    ):
        load_hub_examples(missing, "x", "train", get_task("sst2"), cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------- selection and encoding


def test_select_samples_keeps_the_first_n() -> None:
    items = list(range(10))
    assert select_samples(items, None) == items
    assert select_samples(items, 3) == [0, 1, 2]
    assert select_samples(items, 50) == items
    with pytest.raises(UserError, match="max_samples must be a positive integer or unset, got 0"):
        select_samples(items, 0)


def test_encode_pairs_truncates_and_adds_int_labels(tiny_tokenizer) -> None:
    examples = [Example("the cat sat", "on the mat", 1), Example("a very very very long film", "bad", 0)]
    features = encode_examples(examples, tiny_tokenizer, max_length=8)
    assert [feature["labels"] for feature in features] == [1, 0]
    # 9 tokens untruncated: [CLS] the cat sat [SEP] on the mat [SEP]; the longest-first strategy trims one.
    assert len(encode_examples(examples[:1], tiny_tokenizer, max_length=64)[0]["input_ids"]) == 9
    assert [len(feature["input_ids"]) for feature in features] == [8, 8]
    assert 1 in features[0]["token_type_ids"]  # the second segment is marked
    assert set(features[0]) == {"input_ids", "token_type_ids", "attention_mask", "labels"}


def test_encode_single_sentences_without_truncation_keeps_every_token(tiny_tokenizer) -> None:
    features = encode_examples([Example("the cat sat", None, 0.5)], tiny_tokenizer, max_length=64)
    assert tiny_tokenizer.convert_ids_to_tokens(features[0]["input_ids"]) == [
        "[CLS]",
        "the",
        "cat",
        "sat",
        "[SEP]",
    ]
    assert set(features[0]["token_type_ids"]) == {0}
    assert features[0]["labels"] == 0.5


def test_encode_unlabelled_and_mixed_examples(tiny_tokenizer) -> None:
    assert "labels" not in encode_examples([Example("good", None, None)], tiny_tokenizer, 16)[0]
    with pytest.raises(UserError, match="1 of 2 examples have no label"):
        encode_examples([Example("good", None, 1), Example("bad", None, None)], tiny_tokenizer, 16)
    with pytest.raises(UserError, match="max_length must be a positive integer, got 0"):
        encode_examples([Example("good", None, 1)], tiny_tokenizer, 0)
    assert encode_examples([], tiny_tokenizer, 16) == []


def test_collator_pads_to_the_batch_max(tiny_tokenizer) -> None:
    examples = [
        Example("the cat", None, 1),
        Example("the cat sat on the mat", None, 0),
        Example("good", None, 1),
    ]
    dataset = EncodedDataset(encode_examples(examples, tiny_tokenizer, max_length=32))
    assert dataset.lengths == [4, 8, 3]
    batch = make_collator(tiny_tokenizer)([dataset[0], dataset[1], dataset[2]])
    assert batch["input_ids"].shape == (3, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 8, 3]
    assert batch["input_ids"][2, 3:].tolist() == [tiny_tokenizer.pad_token_id] * 5
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [1, 0, 1]
    # A batch of short examples is padded only to its own longest example.
    assert make_collator(tiny_tokenizer)([dataset[0], dataset[2]])["input_ids"].shape == (2, 4)


def test_collator_gives_float32_regression_labels(tiny_tokenizer) -> None:
    features = encode_examples(
        [Example("a", "b", 4.75), Example("c", "d", 1.0)], tiny_tokenizer, max_length=16
    )
    labels = make_collator(tiny_tokenizer)(features)["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [4.75, 1.0]


# ------------------------------------------------------------------------------------------ batching


def spread(batch: list[int], lengths: list[int]) -> int:
    """Longest minus shortest length in a batch: the padding the shortest example pays."""
    values = [lengths[i] for i in batch]
    return max(values) - min(values)


@pytest.fixture
def lengths() -> list[int]:
    generator = random.Random(0)
    return [generator.randint(5, 128) for _ in range(2003)]


def test_sampler_yields_every_index_once_per_epoch(lengths: list[int]) -> None:
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 126  # ceil(2003 / 16)
        assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
        assert sum(len(batch) < 16 for batch in batches) == 1


def test_sampler_groups_similar_lengths(lengths: list[int]) -> None:
    grouped = list(LengthGroupedBatchSampler(lengths, batch_size=16, seed=1))
    order = list(range(len(lengths)))
    random.Random(1).shuffle(order)
    shuffled = [order[i : i + 16] for i in range(0, len(order), 16)]
    grouped_spread = statistics.mean(spread(batch, lengths) for batch in grouped)
    random_spread = statistics.mean(spread(batch, lengths) for batch in shuffled)
    assert grouped_spread < random_spread / 10


def test_sampler_puts_the_longest_example_first(lengths: list[int]) -> None:
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        first_batch = next(iter(sampler))
        assert max(lengths[i] for i in first_batch) == max(lengths)


def test_sampler_is_deterministic_per_seed_and_epoch(lengths: list[int]) -> None:
    first, second = (
        LengthGroupedBatchSampler(lengths, 16, seed=7),
        LengthGroupedBatchSampler(lengths, 16, seed=7),
    )
    assert list(first) == list(second)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    first.set_epoch(0)
    assert list(first) == epoch0
    assert list(LengthGroupedBatchSampler(lengths, 16, seed=8)) != epoch0


def test_sampler_drop_last_and_small_inputs() -> None:
    sampler = LengthGroupedBatchSampler([3, 1, 2, 5, 4], batch_size=2, seed=0, drop_last=True)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 2 and all(len(batch) == 2 for batch in batches)
    assert list(LengthGroupedBatchSampler([], batch_size=4, seed=0)) == []
    whole = list(LengthGroupedBatchSampler([3, 1, 2], batch_size=8, seed=0))
    assert whole == [[0, 2, 1]]
    with pytest.raises(UserError, match="batch_size must be a positive integer, got 0"):
        LengthGroupedBatchSampler([1, 2], batch_size=0, seed=0)
