"""Generation data: rows read strictly, the loss on completion tokens only (checked by hand on a chat), padding on
either side ignored, answers compared as words."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import one_line_error, write
from tiny_models import causal_tokenizer

from addrop_cli.core.settings import IGNORE_INDEX
from addrop_cli.tasks.generation_data import (
    Completion,
    closed_answer,
    completion_collator,
    encode_completions,
    read_completions,
    render_examples,
)
from addrop_cli.tasks.glue_data import Example

X = IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer():
    return causal_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(text.split())


def test_a_chat_is_labelled_on_its_assistant_turns_alone_by_hand(tokenizer):
    chat = [{"role": "system", "content": "copy"}, {"role": "user", "content": "red cat"},
            {"role": "assistant", "content": "red cat"}, {"role": "user", "content": "blue dog"},
            {"role": "assistant", "content": "blue dog"}]
    [feature] = encode_completions([Completion(None, "blue dog", chat)], tokenizer, max_length=64, chat=False)
    text = ("<s> system : copy </s> <s> user : red cat </s> <s> assistant : red cat </s> "
            "<s> user : blue dog </s> <s> assistant : blue dog </s>")
    assert feature["input_ids"] == ids(tokenizer, text)
    # Position by position: the answer words and their end-of-turn token are labelled, nothing else.
    expected = [X] * 5 + [X] * 6 + [X] * 3 + ids(tokenizer, "red cat </s>") + [X] * 6 + [X] * 3 + \
        ids(tokenizer, "blue dog </s>")
    assert feature["labels"] == expected
    assert feature["attention_mask"] == [1] * len(expected)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_is_ignored_on_either_side(tokenizer, side):
    tokenizer = causal_tokenizer()
    tokenizer.padding_side = side
    rows = [Completion("reverse : red cat :", "cat red"), Completion("reverse : red cat dog sun :", "sun dog cat red")]
    features = encode_completions(rows, tokenizer, max_length=32, chat=False)
    batch = completion_collator(tokenizer)(features)
    short = len(features[0]["input_ids"])
    pad = slice(0, 12 - short) if side == "left" else slice(short, 12)
    assert batch["input_ids"].shape == (2, 12)
    assert (batch["labels"][0, pad] == X).all() and (batch["attention_mask"][0, pad] == 0).all()
    real_labels = batch["labels"][0][batch["attention_mask"][0].bool()]
    assert real_labels.tolist() == [X] * 5 + ids(tokenizer, "cat red </s>")
    assert batch["labels"][1].tolist() == [X] * 7 + ids(tokenizer, "sun dog cat red </s>")
    assert batch["position_ids"][0][batch["attention_mask"][0].bool()].tolist() == list(range(short))
    assert batch["position_ids"][1].tolist() == list(range(12))


def test_a_plain_prompt_and_completion_end_with_eos_and_a_chat_prompt_with_the_generation_prompt(tokenizer):
    [plain] = encode_completions([Completion("copy : red", "red")], tokenizer, max_length=16, chat=False)
    assert plain["input_ids"] == ids(tokenizer, "copy : red red </s>")
    assert plain["labels"] == [X, X, X, *ids(tokenizer, "red </s>")]
    [prompt] = encode_completions([Completion("copy : red", None)], tokenizer, max_length=16, chat=True)
    assert prompt["input_ids"] == ids(tokenizer, "<s> user : copy : red </s> <s> assistant :")
    assert "labels" not in prompt


def test_a_long_completion_loses_its_end_and_a_prompt_without_room_is_one_line(tokenizer):
    [cut] = encode_completions([Completion("copy :", "red cat dog sun")], tokenizer, max_length=4, chat=False)
    assert cut["input_ids"] == ids(tokenizer, "copy : red cat") and cut["labels"] == [X, X, *ids(tokenizer, "red cat")]
    row = Completion("copy : red cat dog", "red", where="train.jsonl line 7")
    one_line_error(lambda: encode_completions([row], tokenizer, max_length=5, chat=False),
                   "train.jsonl line 7: the prompt is 5 tokens and data.max_length is 5", "raise --max-length")


def test_a_chat_whose_last_answer_does_not_fit_is_one_line(tokenizer):
    chat = [{"role": "user", "content": "red"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "blue dog cat"}, {"role": "assistant", "content": "blue"}]
    row = Completion(None, "blue", chat, where="chat.jsonl line 2")
    # The first answer starts at 8, the last at 20: a limit between them would score the first as the answer.
    one_line_error(lambda: encode_completions([row], tokenizer, max_length=16, chat=False),
                   "chat.jsonl line 2: the prompt is 20 tokens and data.max_length is 16")
    [fits] = encode_completions([row], tokenizer, max_length=22, chat=False)
    assert fits["labels"][-2:] == ids(tokenizer, "blue </s>")


def test_messages_without_a_chat_template_are_one_line(tokenizer):
    plain = causal_tokenizer(chat_template=None)
    chat = Completion(None, "red", [{"role": "user", "content": "copy : red"}, {"role": "assistant", "content": "red"}])
    one_line_error(lambda: encode_completions([chat], plain, max_length=16, chat=False), "has no chat template",
                   "generation.chat=false")
    one_line_error(lambda: encode_completions([Completion("a", "b")], plain, max_length=16, chat=True),
                   "has no chat template")


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "copy : red"}, "line 2: no 'completion'"),
    ({"prompt": "copy : red", "completion": "  "}, "line 2: 'completion' is empty"),
    ({"prompt": 3, "completion": "red"}, "line 2: 'prompt' must be a string, got int"),
    ({"text": "red"}, "line 2: expected an object"),
    ({"messages": [{"role": "user", "content": "copy : red"}]}, "line 2: the last message is the user's"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},
     "line 2: messages[1] is an empty assistant turn"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "line 2: messages[0] must be"),
])
def test_bad_rows_are_one_line_naming_file_and_line(tmp_path, row, message):
    path = write(tmp_path / "train.jsonl", json.dumps({"prompt": "copy : red", "completion": "red"}) + "\n"
                 + json.dumps(row) + "\n")
    one_line_error(lambda: read_completions(path), f"{path} {message}")


def test_rows_to_predict_may_leave_the_answer_out_but_not_in_some_rows_only(tmp_path):
    path = write(tmp_path / "test.jsonl",
                 '{"prompt": "copy : red"}\n{"messages": [{"role": "user", "content": "a"}]}\n')
    rows = read_completions(path, require_completion=False)
    assert [(row.prompt, row.completion) for row in rows] == [("copy : red", None), (None, None)]
    mixed = write(tmp_path / "mixed.jsonl", '{"prompt": "a"}\n{"prompt": "b", "completion": "c"}\n')
    one_line_error(lambda: read_completions(mixed, require_completion=False), "some rows have a completion")
    one_line_error(lambda: read_completions(tmp_path / "rows.tsv"), "generation data is JSON Lines")


def test_a_classification_row_renders_as_prompt_and_answer_word():
    rows = render_examples([Example(" good film ", None, 1), Example("bad", None, 0)],
                           "sentiment ? {text} :", ["negative", "positive"])
    assert [(row.prompt, row.completion, row.label) for row in rows] == [
        ("sentiment ? good film :", "positive", 1), ("sentiment ? bad :", "negative", 0)]


@pytest.mark.parametrize(("generated", "answer"), [
    ("positive", 1), (" Negative.", 0), ("The sentiment is positive, clearly", 1),
    ("negative, not positive", 0), ("positively", -1), ("", -1), ("neutral", -1),
])
def test_the_closed_answer_is_the_first_answer_word_said(generated, answer):
    assert closed_answer(generated, ["negative", "positive"]) == answer


def test_chat_labels_survive_a_round_trip_through_the_collator_as_tensors(tokenizer):
    chat = [{"role": "user", "content": "red"}, {"role": "assistant", "content": "red"}]
    features = encode_completions([Completion(None, "red", chat)], tokenizer, max_length=64, chat=False)
    batch = completion_collator(tokenizer)(features)
    assert batch["labels"].dtype == torch.long
    assert batch["labels"][0].tolist() == [X] * 8 + ids(tokenizer, "red </s>")
