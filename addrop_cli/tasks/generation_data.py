"""Generative fine-tuning data for decoder-only models: reading prompt → completion rows and chats (``messages``),
rendering a classification task's rows through a template, and tokenizing them so that the loss falls on
completion tokens only.

As the other readers, files are read strictly: a row without a completion, an empty completion, a prompt that
leaves no room for its completion within ``data.max_length``, or ``messages`` for a tokenizer without a chat
template stop with a one-line :class:`UserError` naming the file and row.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from addrop_cli.core.settings import IGNORE_INDEX
from addrop_cli.errors import UserError
from addrop_cli.tasks.files import load_hub_split, read_json_items
from addrop_cli.tasks.glue_data import Example

ROLES = ("system", "user", "assistant")
PUNCTUATION_TO_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))
ASSISTANT = "assistant"
ROW_FORMAT = '{"prompt": "...", "completion": "..."} or {"messages": [{"role": "user", "content": "..."}, ...]}'


@dataclass
class Completion:
    """One example: a ``prompt`` (plain text, or the chat ``messages`` before the answer) and its ``completion``
    (None when it is to be generated). ``turns`` holds every message of a chat, answer last when labelled, and
    is None for a plain prompt; ``label`` is the class id of a row rendered from a classification task."""

    prompt: str | None
    completion: str | None
    turns: list[dict[str, str]] | None = None
    label: int | None = None
    where: str = ""  # "train.jsonl line 3", for messages


# ---------------------------------------------------------------------------------------------- reading


def read_completions(path: str | Path, *, require_completion: bool = True) -> list[Completion]:
    """Rows of a .json/.jsonl file: ``prompt`` and ``completion`` strings, or ``messages`` (role/content turns;
    the loss falls on every assistant turn, and the last turn is the answer). Without ``require_completion``
    (files to predict), rows may leave the answer out."""
    path = Path(path)
    if path.suffix.lower() not in (".json", ".jsonl"):
        raise UserError(f"{path}: generation data is JSON Lines (.jsonl) or JSON (.json) rows: {ROW_FORMAT}")
    unit, items = read_json_items(path, "rows")
    return _all_or_none([_row(f"{path} {unit} {number}", item, require_completion) for number, item in items], path)


def load_hub_completions(dataset: str, config: str | None, split: str, *, require_completion: bool = True
                         ) -> list[Completion]:
    """One split of a hub dataset with ``prompt``/``completion`` or ``messages`` columns."""
    loaded, source = load_hub_split(dataset, config, split, "rows")
    return _all_or_none([_row(f"{source} row {index}", row, require_completion) for index, row in enumerate(loaded)],
                        source)


def _all_or_none(rows: list[Completion], source) -> list[Completion]:
    if len({row.completion is None for row in rows}) > 1:
        raise UserError(f"{source}: some rows have a completion and some do not; give it in all rows or none")
    return rows


def _row(where: str, row: Any, require_completion: bool) -> Completion:
    if not isinstance(row, dict) or not ("messages" in row or "prompt" in row):
        raise UserError(f"{where}: expected an object {ROW_FORMAT}")
    if "messages" in row:
        return _chat(where, row["messages"], require_completion)
    prompt = _text(where, row, "prompt")
    if "completion" not in row or row["completion"] is None:
        if require_completion:
            raise UserError(f"{where}: no 'completion': a row holds {ROW_FORMAT}")
        return Completion(prompt, None, where=where)
    return Completion(prompt, _text(where, row, "completion", nonempty=True), where=where)


def _text(where: str, row: dict, key: str, nonempty: bool = False) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise UserError(f"{where}: '{key}' is empty; every row needs text to train on")
    return value


def _chat(where: str, messages: Any, require_completion: bool) -> Completion:
    """A chat row: role/content turns; labelled when the last turn is the assistant's."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{\"role\": ..., \"content\": ...}}")
    for index, turn in enumerate(messages):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise UserError(f"{where}: messages[{index}] must be {{\"role\": one of {', '.join(ROLES)}, "
                            "\"content\": a string}")
        if turn["role"] == ASSISTANT and not turn["content"].strip():
            raise UserError(f"{where}: messages[{index}] is an empty assistant turn; every answer needs text")
    turns = [{"role": turn["role"], "content": turn["content"]} for turn in messages]
    if turns[-1]["role"] != ASSISTANT:
        if require_completion:
            raise UserError(f"{where}: the last message is the {turns[-1]['role']}'s; a training row ends with the "
                            "assistant's answer")
        return Completion(None, None, turns, where=where)
    return Completion(None, turns[-1]["content"], turns, where=where)


def render_examples(examples: Sequence[Example], template: str, answers: Sequence[str]) -> list[Completion]:
    """Rows of a classification task as prompt → answer word: ``template`` with ``{text}`` (and ``{text_pair}``)
    filled in, the label's answer (``answers[label]``) as the completion."""
    rows = []
    for number, example in enumerate(examples, start=1):
        prompt = render_prompt(template, example.text_a, example.text_b)
        completion = None if example.label is None else answers[int(example.label)]
        rows.append(Completion(prompt, completion, label=example.label, where=f"example {number}"))
    return rows


def render_prompt(template: str, text: str, text_pair: str | None = None) -> str:
    return template.format(text=text.strip(), text_pair=(text_pair or "").strip())


# ---------------------------------------------------------------------------------------------- tokenizing


def encode_completions(rows: Sequence[Completion], tokenizer: PreTrainedTokenizerBase, *, max_length: int,
                       chat: bool) -> list[dict[str, Any]]:
    """Unpadded features: ``input_ids`` and ``attention_mask`` of the prompt and completion, and ``labels``, the
    completion's ids with every prompt position set to ``IGNORE_INDEX`` (labelled rows only; a row to generate
    for is its prompt alone, ready for the answer).

    A chat (``messages``, or any row with ``chat``) goes through the tokenizer's chat template, the loss on the
    assistant turns' tokens (their end-of-turn token included); a plain row is the prompt's ids (with the
    tokenizer's special tokens) followed by the completion's and the eos token, so generation learns to stop.
    A sequence longer than ``max_length`` loses its end; a prompt that leaves no completion token is refused.
    """
    if chat or any(row.turns is not None for row in rows):
        _require_chat_template(tokenizer)
    elif tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token to end completions with; set one (tokenizer.eos_token) and "
                        "save the checkpoint, or use generation.chat=true with a chat template")
    return [_truncated(_encode_one(row, tokenizer, chat), max_length, row.where) for row in rows]


def _encode_one(row: Completion, tokenizer, chat: bool) -> tuple[list[int], list[int] | None]:
    """(ids, labels) of one row; labels None for a prompt to generate from."""
    turns = row.turns
    if turns is None and chat:
        turns = [{"role": "user", "content": row.prompt}]
        if row.completion is not None:
            turns.append({"role": ASSISTANT, "content": row.completion})
    if turns is not None:
        if row.completion is None:
            return _chat_ids(tokenizer, turns, add_generation_prompt=True), None
        return _chat_labels(tokenizer, turns, row.where)
    prompt = list(tokenizer(row.prompt)["input_ids"])
    if row.completion is None:
        return prompt, None
    answer = [*tokenizer(row.completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


def _chat_ids(tokenizer, turns: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=add_generation_prompt,
                                            return_dict=True)
    return list(encoded["input_ids"])


def _chat_labels(tokenizer, turns: list[dict[str, str]], where: str) -> tuple[list[int], list[int]]:
    """The chat's ids, labelled on each assistant turn: the tokens that rendering the turn appends to the chat
    before it (with its generation prompt). A template that does not render a chat as the extension of its
    earlier turns cannot be labelled this way, and is refused."""
    ids = _chat_ids(tokenizer, turns, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(ids)
    for index, turn in enumerate(turns):
        if turn["role"] != ASSISTANT:
            continue
        before = _chat_ids(tokenizer, turns[:index], add_generation_prompt=True) if index else []
        through = _chat_ids(tokenizer, turns[: index + 1], add_generation_prompt=False)
        if ids[: len(through)] != through or through[: len(before)] != before:
            raise UserError(f"{where}: the tokenizer's chat template does not render turn {index} as an extension "
                            "of the turns before it, so its answer tokens cannot be told apart; give prompt and "
                            "completion rows with generation.chat=false")
        labels[len(before): len(through)] = through[len(before):]
    return ids, labels


def _truncated(encoded: tuple[list[int], list[int] | None], max_length: int, where: str) -> dict[str, Any]:
    ids, labels = encoded
    # A labelled row needs room for at least one token of its answer (a chat's last assistant turn, the one that
    # evaluation generates); a prompt to generate from only has to fit.
    room = max_length if labels is None else max_length - 1
    prompt_length = len(ids) if labels is None else last_answer_start(labels)
    if prompt_length > room:
        raise UserError(f"{where}: the prompt is {prompt_length} tokens and data.max_length is {max_length}, which "
                        "leaves no room for the answer; raise --max-length or shorten the prompt")
    feature = {"input_ids": ids[:max_length], "attention_mask": [1] * min(len(ids), max_length)}
    if labels is not None:
        feature["labels"] = labels[:max_length]
    return feature


def last_answer_start(labels: Sequence[int]) -> int:
    """The first position of the last labelled run of ``labels``: where the answer (the completion, or a chat's last
    assistant turn) begins."""
    start = len(labels)
    while start > 0 and labels[start - 1] == IGNORE_INDEX:
        start -= 1
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


def _require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise UserError(f"the tokenizer of {name} has no chat template, which 'messages' rows and "
                        "generation.chat=true need; give prompt and completion rows with generation.chat=false, or "
                        "a chat model")


def completion_collator(tokenizer: PreTrainedTokenizerBase):
    """Pads inputs, and labels with ``IGNORE_INDEX``, on the tokenizer's padding side, and numbers each row's
    positions from its first real token (``position_ids``, as generation does), so that either side gives the
    same forward: the loss and attribution read positions through the labels and the attention mask, and a model
    with absolute positions sees none shifted by left padding."""
    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pad(features)
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return batch

    return collate


# ---------------------------------------------------------------------------------------------- answers


def normalized(text: str) -> str:
    """Lowercase, whitespace collapsed, surrounding punctuation stripped: how answers are compared."""
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def _words(text: str) -> str:
    return " ".join(text.lower().translate(PUNCTUATION_TO_SPACE).split())


def closed_answer(generated: str, answers: Sequence[str]) -> int:
    """The index of the answer a generated text gives: of the answers it contains as words (case and
    punctuation aside), the one it says first (a longer answer wins at the same place); -1 when it gives none.
    "The sentiment is positive." gives "positive"."""
    words = f" {_words(generated)} "
    found = []
    for index, answer in enumerate(answers):
        at = words.find(f" {_words(answer)} ")
        if at >= 0:
            found.append((at, -len(answer), index))
    return min(found)[2] if found else -1
