"""The evidence study's record: the small files of its sweeps, committed so that the study survives a fresh checkout.

A study's run folder (``runs/evidence-SUITE``) holds checkpoints and best models (gigabytes at base size) and is
not committed. Its record, ``benchmarks/evidence-runs/SUITE/``, holds what a resumed sweep and the report need:
each sweep's ``sweep.json`` and ``results.jsonl``, each finished trial's ``history.jsonl`` and ``metrics.json``,
the study's ``commands.json``, and each finished regime probe's (a plain ``addrop train`` run, see
evidence_regime.py) ``recipe.yaml``, ``history.jsonl`` and ``metrics.json``. :func:`restore` copies a record into
an empty or older run folder (a sweep then skips the finished trials), :func:`save` copies a run folder's finished
work into the record. The manifests and digests name the data files by absolute path, so a record resumes from a
checkout with the data at the same place (``/work/shared/data`` here); the report reads the rows wherever they are.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from addrop_cli.outputs import write_bytes, write_jsonl, write_text
from addrop_cli.sweep.plan import RESULTS_FILE, SWEEP_FILE, TRIALS_DIR, read_results
from addrop_cli.training.run_dir import HISTORY_FILE, METRICS_FILE, RECIPE_FILE

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "evidence-runs"
COMMANDS_FILE = "commands.json"
TRIAL_FILES = (HISTORY_FILE, METRICS_FILE)
PROBE_FILES = (RECIPE_FILE, HISTORY_FILE, METRICS_FILE)
PROBES = "*/regime/*"  # STUDY/regime/SCHEDULE: evidence_regime.py's runs


def sweep_dirs(root: Path) -> list[Path]:
    """Every sweep directory (one holding ``sweep.json``) under ``root``, relative to it."""
    return sorted(path.parent.relative_to(root) for path in root.rglob(SWEEP_FILE)) if root.is_dir() else []


def _copy(source: Path, target: Path, replace: bool) -> None:
    if source.is_file() and (replace or not target.exists()):
        write_bytes(target, source.read_bytes())


def _merge_sweep(source: Path, target: Path, source_wins: bool) -> int:
    """Bring ``source``'s finished trials into ``target``: each row ``target`` lacks (or, with ``source_wins``, holds
    differently, as after a trial was rerun) replaces ``target``'s row and that trial's files, so a half-written
    trial in ``target`` never keeps its files under a finished row. Returns the rows brought in."""
    _copy(source / SWEEP_FILE, target / SWEEP_FILE, replace=source_wins)
    rows = {row["trial"]: row for row in read_results(target)}
    brought = [row for row in read_results(source)
               if row["trial"] not in rows or (source_wins and rows[row["trial"]] != row)]
    for row in brought:
        for name in TRIAL_FILES:  # a file the source lacks goes from the target too: it belongs to another run
            origin, copy = source / TRIALS_DIR / row["trial"] / name, target / TRIALS_DIR / row["trial"] / name
            if origin.is_file():
                write_bytes(copy, origin.read_bytes())
            else:
                copy.unlink(missing_ok=True)
        rows[row["trial"]] = row
    if brought:
        write_jsonl(target / RESULTS_FILE, list(rows.values()))
    return len(brought)


def finished_probe(directory: Path) -> bool:
    """Whether ``directory`` holds a regime probe that ran to its end (its metrics.json says so)."""
    metrics = directory / METRICS_FILE
    return metrics.is_file() and json.loads(metrics.read_text(encoding="utf-8")).get("finished", False)


def _same_files(source: Path, target: Path) -> bool:
    return all((target / name).is_file() and (target / name).read_bytes() == (source / name).read_bytes()
               for name in PROBE_FILES)


def _merge_probes(source: Path, target: Path, source_wins: bool) -> int:
    """Bring ``source``'s finished regime probes into ``target``: those ``target`` has not finished, and with
    ``source_wins`` those it holds differently (a probe run again); returns the probes brought in."""
    brought = 0
    for probe in sorted(source.glob(PROBES)) if source.is_dir() else []:
        copy = target / probe.relative_to(source)
        if not finished_probe(probe) or (finished_probe(copy) and (not source_wins or _same_files(probe, copy))):
            continue
        for name in PROBE_FILES:
            write_bytes(copy / name, (probe / name).read_bytes())
        brought += 1
    return brought


def save(out: Path, record: Path) -> int:
    """Copy the finished work of the run folder ``out`` into ``record``; return the trials and regime probes
    newly recorded. Safe while a sweep runs there: it reads only finished trials and the atomically written
    result rows."""
    added = sum(_merge_sweep(out / sweep, record / sweep, source_wins=True) for sweep in sweep_dirs(out))
    added += _merge_probes(out, record, source_wins=True)
    _copy(out / COMMANDS_FILE, record / COMMANDS_FILE, replace=True)
    return added


def restore(record: Path, out: Path) -> int:
    """Bring the record's finished trials and regime probes into the run folder ``out``; a trial that has a row
    there keeps its own row and files, a probe that finished there keeps its own (the run folder is as new as its
    record or newer); return what was restored."""
    added = sum(_merge_sweep(record / sweep, out / sweep, source_wins=False) for sweep in sweep_dirs(record))
    added += _merge_probes(record, out, source_wins=False)
    _copy(record / COMMANDS_FILE, out / COMMANDS_FILE, replace=False)
    return added


PATH_OPTIONS = {"--train-file", "--test-file", "--output-dir"}


class CommandLog:
    """Every ``addrop sweep`` call with its wall seconds, saved after each call (interrupted ones too)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict] = json.loads(path.read_text()) if path.is_file() else []

    def add(self, command: str, seconds: float) -> None:
        self.entries.append({"command": command, "seconds": round(seconds, 1)})
        write_text(self.path, json.dumps(self.entries, indent=1))

    def hours(self) -> float:
        return sum(entry["seconds"] for entry in self.entries) / 3600

    def seconds_of(self, commands) -> float:
        """Wall seconds of the logged calls of any of ``commands`` (paths compared by their last two parts)."""
        wanted = {_command_key(command) for command in commands}
        return sum(entry["seconds"] for entry in self.entries if _command_key(shlex.split(entry["command"])) in wanted)


def _command_key(words: list[str]) -> tuple[str, ...]:
    """A command with each path cut to its last two parts (``MRPC/train.tsv``, ``mrpc/test``) and without
    ``--resume`` or ``--set train.save_every=N`` (neither changes what runs), so calls logged from another checkout
    or data folder, resumed, or checkpointing less often, still match."""
    saving = {i for i, word in enumerate(words) if word.startswith("train.save_every=")}
    kept = [word for i, word in enumerate(words) if i not in saving and i + 1 not in saving and word != "--resume"]
    return tuple("/".join(Path(word).parts[-2:]) if previous in PATH_OPTIONS else word
                 for previous, word in zip(["", *kept], kept, strict=False))
