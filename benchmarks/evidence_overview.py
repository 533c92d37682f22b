"""The parts of docs/results.md that put the two evidence studies side by side.

all-MiniLM-L6-v2's numbers are read back from its own report, ``docs/results-minilm.md``: ``evidence.py``
generated it from that study's sweeps, whose run folders were not kept. The selection-protocol section sets the
best held-out score of a grid against plain fine-tuning's, next to the expected maximum of k noisy runs
(:func:`expected_maximum`) at the study's own seed spread.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SelectionEntry:
    """One arm of one study's selection sweep against plain fine-tuning on the same held-out split (percent)."""

    model: str
    study: str
    arm: str  # "AD-DROP" or "R-Drop"
    k: int  # settings of that arm in the grid
    ft_heldout: float
    best_heldout: float
    best_setting: str
    ft_seed_std: float  # plain fine-tuning's standard deviation over the five test seeds
    test_delta: str  # the chosen setting's five-seed test difference, as reported ("+0.1 [-0.4, +0.7]")
    # One run's own noise once the seed's shared part (data sample, initialization) cancels: the standard deviation
    # of the five paired test differences / √2; None where the per-seed scores were not kept.
    paired_spread: float | None = None

    @property
    def selection_gain(self) -> float:
        return self.best_heldout - self.ft_heldout

    @property
    def noise_gain(self) -> float:
        """What the best of k beats one plain run by, on average, when every setting equals plain fine-tuning."""
        return self.ft_seed_std * expected_maximum(self.k)

    @property
    def paired_noise_gain(self) -> float | None:
        """The same for runs that share the selection seed, whose common part cancels (τ·e_k)."""
        return None if self.paired_spread is None else self.paired_spread * expected_maximum(self.k)


@functools.cache
def expected_maximum(k: int) -> float:
    """E[max of k independent standard normals] = ∫ x k φ(x) Φ(x)^(k-1) dx (0 for k = 1, 1/√π for k = 2)."""
    from scipy import integrate, stats

    value, _ = integrate.quad(lambda x: x * k * stats.norm.pdf(x) * stats.norm.cdf(x) ** (k - 1), -12, 12)
    return value


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table_after(markdown: str, heading: str | None) -> list[list[str]]:
    """The body rows (as cells) of the first table after the line ``heading`` (the file's first table for None)."""
    lines = markdown.splitlines()
    start = 0 if heading is None else lines.index(heading)
    rows, inside = [], False
    for line in lines[start:]:
        if line.startswith("|"):
            inside = True
            rows.append(_cells(line))
        elif inside:
            break
    return rows[2:]  # past the header and the |---| line


def first_table(markdown: str) -> list[str]:
    """The lines of the file's first table, header included."""
    lines = markdown.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    end = next((index for index, line in enumerate(lines[start:], start) if not line.startswith("|")), len(lines))
    return lines[start:end]


@dataclass
class MiniLMStudy:
    """A study of docs/results-minilm.md: its results-table row, selection scores and overfit-table row."""

    title: str
    row: list[str]
    selection: list[tuple[str, float]]  # (setting, held-out score), best first
    overfit: list[str] | None

    @property
    def ft_seed_std(self) -> float:
        return float(self.row[2].split("±")[1])


def read_minilm(path: Path) -> dict[str, MiniLMStudy]:
    """Every study of the MiniLM report, by title, in its order."""
    markdown = path.read_text(encoding="utf-8")
    overfit = {row[0]: row for row in table_after(markdown, "## Does plain fine-tuning overfit?")}
    selection: dict[str, list[tuple[str, float]]] = {}
    for match in re.finditer(r"^- (.+?): (.+)\.$", markdown.split("## Selection sweeps", 1)[1].split("\n## ")[0],
                             re.MULTILINE):
        scores = [item.rsplit(" ", 1) for item in match.group(2).split("; ")]
        selection[match.group(1)] = [(setting, float(score)) for setting, score in scores]
    return {row[0]: MiniLMStudy(row[0], row, selection.get(row[0], []), overfit.get(row[0]))
            for row in table_after(markdown, None)}


def minilm_selection_entries(studies: dict[str, MiniLMStudy]) -> list[SelectionEntry]:
    """AD-DROP's selection entries for the MiniLM studies that ran their own selection sweep."""
    entries = []
    for study in studies.values():
        if not study.selection:
            continue
        ft = next(score for setting, score in study.selection if setting == "FT")
        setting, best = next((setting, score) for setting, score in study.selection if setting != "FT")
        entries.append(SelectionEntry("MiniLM", study.title, "AD-DROP", len(study.selection) - 1, ft, best, setting,
                                      study.ft_seed_std, study.row[4]))
    return entries


def selection_protocol_lines(entries: list[SelectionEntry]) -> list[str]:
    """The section "What the selection protocol alone can show"."""
    ks = sorted({entry.k for entry in entries})
    lines = ["## What the selection protocol alone can show", "",
             "The paper's tables, like most, report the best of a grid of settings against one plain run, both "
             "scored on the data the choice was made on. Each study here makes that comparison on its held-out "
             "split (seed 1), and then tests the chosen setting against plain fine-tuning on five new seeds, "
             "scored on the dev file:", "",
             "| model | study | arm | k settings | FT held-out | best of k held-out (setting) | gain on the selection "
             "split | FT seed spread σ (test) | expected gain of the best of k from noise alone, σ·e_k | the same "
             "for runs sharing a seed, τ·e_k | five-seed test Δ [95 % CI] |", "|---" * 11 + "|"]
    for entry in entries:
        paired = "–" if entry.paired_noise_gain is None else f"{entry.paired_noise_gain:+.1f}"
        lines.append(f"| {entry.model} | {entry.study} | {entry.arm} | {entry.k} | {entry.ft_heldout:.1f} | "
                     f"{entry.best_heldout:.1f} ({entry.best_setting}) | {entry.selection_gain:+.1f} | "
                     f"{entry.ft_seed_std:.1f} | {entry.noise_gain:+.1f} | {paired} | {entry.test_delta} |")
    if not entries:
        return []
    won = [entry for entry in entries if entry.selection_gain > 0]
    beyond = [entry for entry in won if entry.selection_gain > entry.noise_gain]
    deltas = [float(entry.test_delta.split()[0]) for entry in won if entry.test_delta not in ("", "–")]
    lines += ["", "e_k, the expected maximum of k independent standard normal draws: "
              + ", ".join(f"e_{k} = {expected_maximum(k):.2f}" for k in ks) + ". If every setting were exactly as "
              "good as plain fine-tuning and one run's score varied with the seed by σ, the best of k settings "
              "would still beat a single plain run by σ·e_k on average, and would beat it at all with probability "
              "k / (k + 1). σ is measured on the dev file over five seeds (the held-out split is smaller, so its "
              "noise is if anything larger), and it includes what the seed shares between methods (the few-shot "
              "sample, the classifier's initialization), which cancels between runs on the same seed as in a "
              "selection sweep. τ, the spread of the five paired test differences over √2, is one run's own noise "
              "without that shared part, so τ·e_k is the smaller, same-seed estimate (MiniLM's report kept means "
              "and deviations, not the per-seed scores it needs).", "",
              f"On the selection split the best setting beat plain fine-tuning in {len(won)} of {len(entries)} "
              f"rows; {len(beyond)} of those gains exceed what noise alone gives on average (σ·e_k)."
              + (f" On the five test seeds the {len(won)} winning settings' differences average {_mean(deltas):+.1f}"
                 f" (each: {', '.join(entry.test_delta.split()[0] for entry in won)})." if deltas else "")
              + f" Over all rows the selection gain averages {_mean([e.selection_gain for e in entries]):+.1f} "
              f"against {_mean([e.noise_gain for e in entries]):+.1f} from noise alone.", ""]
    return lines


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
