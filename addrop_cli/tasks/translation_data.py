"""Reading translation data (JSON/JSON Lines rows, Moses-style aligned text files, hub datasets),
tokenizing it for encoder-decoder models, and batching it.

As in `addrop_cli.tasks.glue_data`, files are read strictly: a missing language, misaligned files or a blank line
stop with a one-line `UserError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from addrop_cli.core.settings import IGNORE_INDEX
from addrop_cli.errors import UserError
from addrop_cli.tasks.files import load_hub_split, read_json_items, read_text

ROW_SUFFIXES = (".json", ".jsonl")
TRANSLATION_COLUMN = "translation"

# Pairs per tokenizer call: bounds the memory held by intermediate encodings on large corpora.
_ENCODE_CHUNK = 4096


@dataclass
class TranslationPair:
    """One sentence and its translation."""

    source: str
    target: str | None  # None for a source sentence to translate (addrop predict)


# ---------------------------------------------------------------------------------------------- files


def read_translation(
    path_or_prefix: str | Path, source_lang: str, target_lang: str, *, require_target: bool = True
) -> list[TranslationPair]:
    """Read sentence pairs from a JSON/JSON Lines file or from two aligned Moses-style text files.

    A .json/.jsonl file holds rows {"translation": {"en": ..., "ro": ...}} (JSON: a list of them, or
    {"data": [...]}). Anything else is a prefix: "wmt16_en_ro/newsdev2016" reads newsdev2016.<source_lang>
    and newsdev2016.<target_lang>, one sentence per line, aligned line by line; their line counts must match
    and no line may be blank (a blank line usually means the files drifted out of alignment).

    Without ``require_target``, sources alone are read too (the source-language file, given with or without
    its suffix, or rows without the target language), as pairs whose target is None.
    """
    _check_languages(source_lang, target_lang)
    path = Path(path_or_prefix)
    if path.suffix.lower() in ROW_SUFFIXES and path.is_file():
        return _read_rows(path, source_lang, target_lang, require_target)
    if path.suffix[1:] == source_lang and not require_target and path.is_file():
        path = path.with_suffix("")
    source_file, target_file = _language_file(path, source_lang), _language_file(path, target_lang)
    if source_file.is_file() and target_file.is_file():
        return _read_aligned(source_file, target_file)
    if source_file.is_file() and not require_target:
        return [TranslationPair(source, None) for source in _source_lines(source_file)]
    missing = ", ".join(str(file) for file in (path, source_file, target_file) if not file.is_file())
    hint = ""
    if path.suffix[1:] in (source_lang, target_lang):
        hint = f" (give the prefix {path.with_suffix('')}, without the language suffix)"
    raise UserError(
        f"{path}: no translation data: looked for a .json/.jsonl file or the aligned files {source_file.name} "
        f"and {target_file.name}; not found: {missing}{hint}"
    )


def _check_languages(source_lang: str, target_lang: str) -> None:
    """Reject empty or equal language codes: they could only pair a file with itself."""
    if not source_lang or not target_lang or source_lang == target_lang:
        raise UserError(
            f"source and target languages must be two different codes (e.g. en and ro), "
            f"got {source_lang!r} and {target_lang!r}"
        )


def _language_file(prefix: Path, lang: str) -> Path:
    """The Moses-style file of one language: <prefix>.<lang> (appended, so "newsdev2016" keeps its name)."""
    return prefix.with_name(f"{prefix.name}.{lang}")


def _lines(path: Path) -> list[str]:
    """A text file's lines, without line ends; a final newline does not make an extra empty line."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _read_aligned(source_file: Path, target_file: Path) -> list[TranslationPair]:
    """Pair line n of the source file with line n of the target file."""
    sources, targets = _lines(source_file), _lines(target_file)
    if len(sources) != len(targets):
        raise UserError(
            f"{source_file} has {len(sources)} lines but {target_file} has {len(targets)}; "
            "aligned files need one line per sentence pair"
        )
    if not sources:
        raise UserError(f"{source_file} and {target_file} have no sentence pairs")
    for number, pair in enumerate(zip(sources, targets, strict=True), start=1):
        for file, line in zip((source_file, target_file), pair, strict=True):
            if not line.strip():
                raise UserError(f"{file} line {number}: blank line; remove the pair from both files or fill it in")
    return [TranslationPair(source, target) for source, target in zip(sources, targets, strict=True)]


def _source_lines(source_file: Path) -> list[str]:
    sources = _lines(source_file)
    for number, line in enumerate(sources, start=1):
        if not line.strip():
            raise UserError(f"{source_file} line {number}: blank line; give one sentence per line")
    if not sources:
        raise UserError(f"{source_file} has no sentences")
    return sources


def _read_rows(path: Path, source_lang: str, target_lang: str, require_target: bool = True) -> list[TranslationPair]:
    """Read {"translation": {...}} rows of a .json (numbered by item) or .jsonl (by line) file."""
    unit, items = read_json_items(path, "sentence pairs")
    pairs = [_row_pair(f"{path} {unit} {number}", item, source_lang, target_lang, require_target)
             for number, item in items]
    if len({pair.target is None for pair in pairs}) > 1:
        raise UserError(f"{path}: some rows have {target_lang!r} and some do not; give it in all rows or none")
    return pairs


def _row_pair(where: str, row: Any, source_lang: str, target_lang: str, require_target: bool = True
              ) -> TranslationPair:
    """Take the two languages out of one row's "translation" object."""
    expected = f'{{"{TRANSLATION_COLUMN}": {{"{source_lang}": ..., "{target_lang}": ...}}}}'
    if not isinstance(row, dict) or not isinstance(row.get(TRANSLATION_COLUMN), dict):
        raise UserError(f"{where}: expected an object {expected}")
    translation = row[TRANSLATION_COLUMN]
    texts = []
    for lang in (source_lang, target_lang):
        if lang == target_lang and lang not in translation and not require_target:
            texts.append(None)
            continue
        if lang not in translation:
            have = ", ".join(map(repr, translation)) or "none"
            raise UserError(f"{where}: no {lang!r} in {TRANSLATION_COLUMN!r} (it has {have}); expected {expected}")
        text = translation[lang]
        if not isinstance(text, str):
            raise UserError(f"{where}: {TRANSLATION_COLUMN}.{lang} must be a string, got {type(text).__name__}")
        texts.append(text)
    return TranslationPair(texts[0], texts[1])


# ----------------------------------------------------------------------------------------- hub datasets


def load_hub_translation(
    dataset: str,
    config: str | None,
    split: str,
    source_lang: str,
    target_lang: str,
    *,
    cache_dir: str | Path | None = None,
) -> list[TranslationPair]:
    """Read one split of a dataset with a `translation` column (as the hub's wmt16) via `datasets.load_dataset`.

    Row numbers in messages are 0-based dataset indices.
    """
    _check_languages(source_lang, target_lang)
    loaded, source = load_hub_split(dataset, config, split, "sentence pairs", cache_dir)
    if TRANSLATION_COLUMN not in loaded.column_names:
        columns = ", ".join(map(repr, loaded.column_names))
        raise UserError(f"{source}: no {TRANSLATION_COLUMN!r} column; it has columns: {columns}")
    return [
        _row_pair(f"{source} row {index}", {TRANSLATION_COLUMN: translation}, source_lang, target_lang)
        for index, translation in enumerate(loaded[TRANSLATION_COLUMN])
    ]


# ---------------------------------------------------------------------------------------- encoding


def encode_translation(
    pairs: Sequence[TranslationPair],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
) -> list[dict[str, Any]]:
    """Tokenize pairs into unpadded features: input_ids and attention_mask of `source_prefix + source`, and
    labels, the target's ids (tokenized as a target: `text_target`, for tokenizers with target-side rules).

    Sources and targets are truncated to their own limits, so they are tokenized in two calls (one call
    with `text_target` would apply one `max_length` to both).
    """
    for name, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
        if value < 1:
            raise UserError(f"{name} must be a positive integer, got {value}")
    features: list[dict[str, Any]] = []
    for start in range(0, len(pairs), _ENCODE_CHUNK):
        chunk = pairs[start : start + _ENCODE_CHUNK]
        inputs = tokenizer(
            [source_prefix + pair.source for pair in chunk], truncation=True, max_length=max_source_length
        )
        keys = list(inputs.keys())
        if chunk[0].target is None:  # sources to translate: features without labels
            features.extend({key: inputs[key][offset] for key in keys} for offset in range(len(chunk)))
            continue
        labels = tokenizer(
            text_target=[pair.target for pair in chunk], truncation=True, max_length=max_target_length
        )["input_ids"]
        features.extend(
            {**{key: inputs[key][offset] for key in keys}, "labels": labels[offset]} for offset in range(len(chunk))
        )
    return features


def seq2seq_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """A collate function padding inputs, and labels with -100 (ignored by the loss), as torch tensors.

    The model builds its decoder inputs from the labels (shifted right) itself.
    """
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
