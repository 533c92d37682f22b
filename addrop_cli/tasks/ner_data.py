"""Reading token-classification (NER) data: CoNLL column files, JSON/JSON Lines rows and hub datasets;
aligning word tags to sub-word tokens; and batching.

As in `addrop_cli.tasks.glue_data`, files are read strictly: a malformed line, a missing column or an unknown tag
stops with a one-line `UserError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from addrop_cli.core.settings import IGNORE_INDEX
from addrop_cli.errors import UserError
from addrop_cli.tasks.files import load_hub_split, read_json_items, read_text

CONLL_SUFFIXES = (".txt", ".conll")
ROW_SUFFIXES = (".json", ".jsonl")
SUPPORTED_SUFFIXES = CONLL_SUFFIXES + ROW_SUFFIXES

TOKENS_COLUMN = "tokens"
TAGS_COLUMN = "ner_tags"

# Sentences per tokenizer call: big enough for the fast tokenizer's parallelism, small enough to bound
# the memory held by intermediate encodings.
_ENCODE_CHUNK = 4096


@dataclass
class TaggedSentence:
    """One sentence as words, with one tag per word (None when unlabelled).

    `where` locates the sentence for messages ("conll2003/train.txt line 3"); it takes no part in equality.
    """

    tokens: list[str]
    tags: list[str] | None
    where: str | None = field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------------------------- files


def read_tagged(path: str | Path) -> list[TaggedSentence]:
    """Read a .txt/.conll column file (see `read_conll`) or a .json/.jsonl row file (see `read_tagged_rows`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return read_conll(path)
    if suffix in ROW_SUFFIXES:
        return read_tagged_rows(path)
    raise UserError(
        f"{path}: unsupported file type {path.suffix or '(no suffix)'!r} for tagged data; "
        f"valid: {', '.join(SUPPORTED_SUFFIXES)}"
    )


def read_conll(path: str | Path, *, tag_column: int = -1) -> list[TaggedSentence]:
    """Read a CoNLL column file: one word per line, whitespace-separated columns, word first.

    Blank lines end sentences and `-DOCSTART-` lines (document breaks) are skipped; the last line may
    lack its newline. Every data line must have as many columns as the first; the tag is column
    `tag_column` (default: the last, as CoNLL-2003's `token POS chunk NER`). A one-column file holds
    words only, and gives unlabelled sentences.
    """
    path = Path(path)
    _check_file(path)
    text = read_text(path)
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0  # line of the current sentence's first word
    width = 0  # columns per line, fixed by the first data line
    first_line = 0
    tag_index: int | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append(_conll_sentence(path, start, tokens, tags if tag_index is not None else None))
                tokens, tags = [], []
            continue
        if not width:
            width, first_line = len(fields), number
            tag_index = _tag_index(path, number, width, tag_column)
        elif len(fields) != width:
            raise UserError(
                f"{path} line {number}: expected {width} whitespace-separated columns "
                f"(as on line {first_line}), got {len(fields)}"
            )
        if not tokens:
            start = number
        tokens.append(fields[0])
        if tag_index is not None:
            tags.append(fields[tag_index])
    if tokens:
        sentences.append(_conll_sentence(path, start, tokens, tags if tag_index is not None else None))
    if not sentences:
        raise UserError(f"{path} has no sentences (expected CoNLL columns: one word per line, blank lines between)")
    return sentences


def _check_file(path: Path) -> None:
    """Fail early, naming the file, when it is missing or a directory."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_dir():
        raise UserError(f"{path} is a directory; expected a data file ({', '.join(SUPPORTED_SUFFIXES)})")


def _tag_index(path: Path, number: int, width: int, tag_column: int) -> int | None:
    """Resolve `tag_column` against the file's column count; None for a words-only (one-column) file."""
    if width == 1 and tag_column in (0, -1):
        return None
    index = tag_column + width if tag_column < 0 else tag_column
    if not 1 <= index < width:
        raise UserError(
            f"{path} line {number}: tag_column {tag_column} does not name a tag column of {width}; "
            f"valid: 1 to {width - 1}, or -1 to -{width - 1}"
        )
    return index


def _conll_sentence(path: Path, start: int, tokens: list[str], tags: list[str] | None) -> TaggedSentence:
    return TaggedSentence(tokens, tags, where=f"{path} line {start}")


def read_tagged_rows(path: str | Path, *, tag_names: Sequence[str] | None = None) -> list[TaggedSentence]:
    """Read sentences from JSON (a list of objects, or {"data": [...]}) or JSON Lines (one object a line).

    Each object has `tokens` (a list of strings) and `ner_tags` (one tag per token: strings, or integers).
    Integer tags are mapped through `tag_names` when it is given, else kept as their decimal strings.
    A file with no `ner_tags` at all gives unlabelled sentences; one where only some rows have it is an error.
    """
    path = Path(path)
    _check_file(path)
    unit, items = read_json_items(path, "sentences")
    labelled = any(isinstance(item, dict) and TAGS_COLUMN in item for _, item in items)
    return [_row_sentence(f"{path} {unit} {number}", item, labelled, tag_names) for number, item in items]


def _row_sentence(where: str, row: Any, labelled: bool, tag_names: Sequence[str] | None) -> TaggedSentence:
    """Check one row's `tokens` and `ner_tags` and build its sentence."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with {TOKENS_COLUMN!r}, got {type(row).__name__}")
    if TOKENS_COLUMN not in row:
        raise UserError(f"{where}: missing {TOKENS_COLUMN!r}; it has keys: {', '.join(map(repr, row))}")
    tokens = row[TOKENS_COLUMN]
    if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
        raise UserError(f"{where}: {TOKENS_COLUMN!r} must be a list of strings")
    if not labelled:
        return TaggedSentence(tokens, None, where)
    if TAGS_COLUMN not in row:
        raise UserError(f"{where}: missing {TAGS_COLUMN!r} (other rows have it; tag all rows or none)")
    raw = row[TAGS_COLUMN]
    if not isinstance(raw, list):
        raise UserError(f"{where}: {TAGS_COLUMN!r} must be a list of strings or integers")
    if len(raw) != len(tokens):
        raise UserError(f"{where}: {len(tokens)} tokens but {len(raw)} {TAGS_COLUMN}; expected one tag per token")
    return TaggedSentence(tokens, [_tag_name(where, tag, tag_names) for tag in raw], where)


def _tag_name(where: str, tag: Any, names: Sequence[str] | None) -> str:
    """A tag as a string: strings stay, integers go through `names` (ClassLabel order) when given."""
    if isinstance(tag, str):
        return tag
    if not isinstance(tag, int) or isinstance(tag, bool):  # bool is an int subclass, never a tag id
        raise UserError(f"{where}: tag {tag!r} must be a string or an integer")
    if names is None:
        return str(tag)
    if not 0 <= tag < len(names):
        raise UserError(f"{where}: tag id {tag} is out of range; valid: 0 to {len(names) - 1} ({', '.join(names)})")
    return names[tag]


# ----------------------------------------------------------------------------------------- hub datasets


def load_hub_tagged(
    dataset: str, config: str | None, split: str, *, cache_dir: str | Path | None = None
) -> list[TaggedSentence]:
    """Read one split of a dataset with `tokens` and `ner_tags` columns via `datasets.load_dataset`.

    Integer tags of a sequence-of-`ClassLabel` column (as the hub's conll2003) are mapped through the
    class names. A split with no `ner_tags` column gives unlabelled sentences. Row numbers are 0-based.
    """

    loaded, source = load_hub_split(dataset, config, split, "sentences", cache_dir)
    columns = list(loaded.column_names)
    if TOKENS_COLUMN not in columns:
        raise UserError(f"{source}: no {TOKENS_COLUMN!r} column; it has columns: {', '.join(map(repr, columns))}")
    labelled = TAGS_COLUMN in columns
    names = _class_names(loaded.features[TAGS_COLUMN]) if labelled else None
    tags_column = loaded[TAGS_COLUMN] if labelled else [None] * len(loaded)
    sentences = []
    for index, (tokens, tags) in enumerate(zip(loaded[TOKENS_COLUMN], tags_column, strict=True)):
        row = {TOKENS_COLUMN: tokens, **({TAGS_COLUMN: tags} if labelled else {})}
        sentences.append(_row_sentence(f"{source} row {index}", row, labelled, names))
    return sentences


def _class_names(feature: Any) -> list[str] | None:
    """The class names of a list-of-ClassLabel feature, or None for any other feature type."""
    import datasets

    inner = getattr(feature, "feature", None)  # datasets' List / Sequence keep the item type here
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


# ---------------------------------------------------------------------------------------- encoding


def encode_tagged(
    sentences: Sequence[TaggedSentence],
    tokenizer: PreTrainedTokenizerBase,
    label2id: dict[str, int],
    max_length: int,
    *,
    label_all_tokens: bool = False,
) -> list[dict[str, Any]]:
    """Tokenize pre-split words (truncated to `max_length`, unpadded) and align the word tags to sub-words.

    Special tokens get -100 (ignored by the loss). The first sub-word of each word gets the word's label
    id. The other sub-words get -100 by default; with `label_all_tokens` they get the same label id as the
    word (a B- tag is not turned into I-), so a 3-piece "B-PER" word is labelled B-PER three times. Words
    cut off by truncation are dropped. Unlabelled sentences give features without "labels".

    Needs a fast tokenizer: the alignment comes from its `word_ids()`.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            f"token classification needs a fast tokenizer (for word_ids); {type(tokenizer).__name__} is not one: "
            "use a model that ships tokenizer.json"
        )
    if max_length < 1:
        raise UserError(f"max_length must be a positive integer, got {max_length}")
    if not sentences:
        return []
    unlabelled = sum(sentence.tags is None for sentence in sentences)
    if 0 < unlabelled < len(sentences):
        raise UserError(f"{unlabelled} of {len(sentences)} sentences have no tags; tag all of them or none")
    # Check every tag before tokenizing, so a bad tag stops the run at once.
    word_labels = None
    if not unlabelled:
        word_labels = [_label_ids(sentence, index, label2id) for index, sentence in enumerate(sentences)]
    features: list[dict[str, Any]] = []
    for start in range(0, len(sentences), _ENCODE_CHUNK):
        chunk = sentences[start : start + _ENCODE_CHUNK]
        encoded = tokenizer(
            [sentence.tokens for sentence in chunk], is_split_into_words=True, truncation=True, max_length=max_length
        )
        keys = list(encoded.keys())
        for offset in range(len(chunk)):
            feature = {key: encoded[key][offset] for key in keys}
            if word_labels is not None:
                feature["labels"] = _align(encoded.word_ids(offset), word_labels[start + offset], label_all_tokens)
            features.append(feature)
    return features


def _label_ids(sentence: TaggedSentence, index: int, label2id: dict[str, int]) -> list[int]:
    """Map a sentence's tags to ids; an unknown tag names the sentence, the word and the valid labels."""
    assert sentence.tags is not None
    if len(sentence.tags) != len(sentence.tokens):
        where = sentence.where or f"sentence {index + 1}"
        raise UserError(f"{where}: {len(sentence.tokens)} words but {len(sentence.tags)} tags")
    ids = []
    for word, (token, tag) in enumerate(zip(sentence.tokens, sentence.tags, strict=True), start=1):
        if tag not in label2id:
            where = sentence.where or f"sentence {index + 1}"
            raise UserError(f"{where}, word {word} {token!r}: unknown tag {tag!r}; valid: {', '.join(label2id)}")
        ids.append(label2id[tag])
    return ids


def _align(word_ids: list[int | None], labels: list[int], label_all_tokens: bool) -> list[int]:
    """One label per token: -100 for special tokens, the word's id for its first piece, then per the flag."""
    aligned = []
    previous = None
    for word in word_ids:
        if word is None:
            aligned.append(IGNORE_INDEX)
        elif word != previous:
            aligned.append(labels[word])
        else:
            aligned.append(labels[word] if label_all_tokens else IGNORE_INDEX)
        previous = word
    return aligned


def token_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForTokenClassification:
    """A collate function padding inputs to the batch's longest and labels with -100, as torch tensors."""
    return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
