"""Out-of-distribution evaluation sets (paper Table 6): HANS for MNLI models, PAWS / PAWS-X for QQP (or MRPC)
models. A checkpoint's classes are mapped onto the set's by label NAME, from the checkpoint's config.

Local files in the original formats: HANS ``heuristics_evaluation_set.txt`` (tab-separated with a header;
``gold_label``, ``sentence1``, ``sentence2``, ``heuristic``, ``subcase``, ``template`` among its columns) and
PAWS / PAWS-X TSV (``id``, ``sentence1``, ``sentence2``, ``label`` with 1 = paraphrase). Or the Hub's ``hans``,
``paws`` (config ``labeled_final``) and ``paws-x`` (a language config).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from addrop_cli.errors import UserError
from addrop_cli.tasks.files import load_hub_split, read_text

HANS_HEURISTICS = ("lexical_overlap", "subsequence", "constituent")


@dataclass(frozen=True)
class OodSet:
    """An evaluation set's classes, which checkpoint label names map to which of them, and its Hub source."""

    name: str
    labels: tuple[str, ...]
    name_map: dict[str, str]  # normalised checkpoint label name -> one of ``labels``
    hub: tuple[str, str | None, str]  # dataset, config, split
    premise: str = "sentence1"
    hypothesis: str = "sentence2"


OOD_SETS = {
    "hans": OodSet("hans", ("entailment", "non-entailment"),
                   {"entailment": "entailment", "neutral": "non-entailment", "contradiction": "non-entailment",
                    "not_entailment": "non-entailment", "non_entailment": "non-entailment"},
                   ("hans", None, "validation"), "premise", "hypothesis"),
    "paws": OodSet("paws", ("not_paraphrase", "paraphrase"),
                   {"duplicate": "paraphrase", "not_duplicate": "not_paraphrase", "equivalent": "paraphrase",
                    "not_equivalent": "not_paraphrase", "paraphrase": "paraphrase",
                    "not_paraphrase": "not_paraphrase"},
                   ("paws", "labeled_final", "test")),
}
OOD_SETS["paws-x"] = OodSet("paws-x", OOD_SETS["paws"].labels, OOD_SETS["paws"].name_map, ("paws-x", "en", "test"))


@dataclass(frozen=True)
class OodExample:
    """A sentence pair, its gold class (an index into the set's labels) and, for HANS, its heuristic."""

    text_a: str
    text_b: str
    label: int
    group: dict[str, str] = field(default_factory=dict)


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def map_labels(checkpoint_labels: list[str], target: OodSet) -> dict[str, str]:
    """Checkpoint label name -> the set's label, by name; UserError when a name has no counterpart or a class
    of the set would never be predicted (e.g. sentiment labels onto HANS)."""
    mapping = {name: target.name_map.get(_normalise(name)) for name in checkpoint_labels}
    unmapped = [name for name, mapped in mapping.items() if mapped is None]
    uncovered = [label for label in target.labels if label not in mapping.values()]
    if unmapped or uncovered:
        raise UserError(f"the checkpoint's labels ({', '.join(checkpoint_labels)}) cannot be mapped onto "
                        f"{target.name}'s ({' / '.join(target.labels)}): each must be one of "
                        f"{', '.join(sorted(target.name_map))}, covering every {target.name} class")
    return mapping


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(read_text(path)), delimiter="\t", quoting=csv.QUOTE_NONE)
    missing = [column for column in required if column not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected a tab-separated file with "
                        f"{', '.join(required)} in its header")
    rows = list(reader)
    if not rows:
        raise UserError(f"{path} has no sentence pairs")
    return rows


def _gold(value: str, target: OodSet, where: str) -> int:
    """A gold label as written in the set's files: its name, or its index (PAWS' 0/1)."""
    text = value.strip()
    if text in target.labels:
        return target.labels.index(text)
    if text.isdigit() and int(text) < len(target.labels):
        return int(text)
    raise UserError(f"{where}: label {value!r} is not one of {', '.join(target.labels)} (or 0-{len(target.labels)-1})")


def read_ood_file(path: Path, target: OodSet) -> list[OodExample]:
    """The pairs of a local HANS or PAWS file."""
    if target.name == "hans":
        rows = _rows(path, ("gold_label", "sentence1", "sentence2", "heuristic", "subcase"))
        return [OodExample(row["sentence1"], row["sentence2"], _gold(row["gold_label"], target, f"{path} row {i}"),
                           {"heuristic": row["heuristic"], "subcase": row["subcase"]})
                for i, row in enumerate(rows, start=2)]
    rows = _rows(path, ("sentence1", "sentence2", "label"))
    return [OodExample(row["sentence1"], row["sentence2"], _gold(row["label"], target, f"{path} row {i}"))
            for i, row in enumerate(rows, start=2)]


def read_ood_hub(target: OodSet, config: str | None = None) -> list[OodExample]:
    """The set from the Hub (``config``: PAWS-X's language, or another config; the set's default otherwise)."""
    dataset, default_config, split = target.hub
    loaded, _ = load_hub_split(dataset, config or default_config, split, "sentence pairs")
    return [OodExample(row[target.premise], row[target.hypothesis], int(row["label"]),
                       {key: row[key] for key in ("heuristic", "subcase") if key in row}) for row in loaded]
