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
    def noise_spread(self) -> float:
        """One run's noise for the comparison: τ where the per-seed scores were kept, else σ (an upper bound)."""
        return self.ft_seed_std if self.paired_spread is None else self.paired_spread

    def noise_gain(self, spread: float | None) -> float | None:
        """What the best of k beats one plain run by, on average, when every setting equals plain fine-tuning and
        one run's noise is ``spread`` (s·e_k)."""
        return None if spread is None else spread * expected_maximum(self.k)

    @property
    def null_probability(self) -> float:
        """The chance that noise alone gives the best of k a gain over one plain run at least this large:
        P(max_i u_i − v ≥ g) = 1 − ∫ φ(z) Φ(z + g/s)^k dz for u_i, v independent N(0, s²)."""
        return 1 - _integral(lambda z: _cdf(z + self.selection_gain / self.noise_spread) ** self.k)


def _cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _integral(function) -> float:
    """∫ φ(z) f(z) dz over the real line."""
    from scipy import integrate

    value, _ = integrate.quad(lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi) * function(z), -12, 12)
    return value


@functools.cache
def expected_maximum(k: int) -> float:
    """E[max of k independent standard normals] = ∫ x k φ(x) Φ(x)^(k-1) dx (0 for k = 1, 1/√π for k = 2)."""
    return _integral(lambda x: x * k * _cdf(x) ** (k - 1))


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


def read_minilm(markdown: str) -> dict[str, MiniLMStudy]:
    """Every study of the MiniLM report (its markdown text), by title, in its order."""
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
    if not entries:
        return []
    lines = ["## What the selection protocol alone can show", "",
             "The paper's tables, like most, report the best of a grid of settings against one plain run, both "
             "scored on the data the choice was made on. Each study here makes that comparison on its held-out "
             "split (seed 1), and then tests the chosen setting against plain fine-tuning on five new seeds, "
             "scored on the dev file:", "",
             "| model | study | arm | k settings | FT held-out | best of k held-out (setting) | gain on the selection "
             "split | σ·e_k | τ·e_k | P(noise alone ≥ gain) | five-seed test Δ [95 % CI] |", "|---" * 11 + "|"]
    for entry in entries:
        paired = entry.noise_gain(entry.paired_spread)
        lines.append(f"| {entry.model} | {entry.study} | {entry.arm} | {entry.k} | {entry.ft_heldout:.1f} | "
                     f"{entry.best_heldout:.1f} ({entry.best_setting}) | {entry.selection_gain:+.1f} | "
                     f"{entry.noise_gain(entry.ft_seed_std):+.1f} | {'–' if paired is None else f'{paired:+.1f}'} | "
                     f"{entry.null_probability:.2f}{'' if entry.paired_spread is not None else ' (σ)'} | "
                     f"{entry.test_delta} |")
    return [*lines, "", *_protocol_explanation(entries), "", _protocol_summary(entries), ""]


def _protocol_explanation(entries: list[SelectionEntry]) -> list[str]:
    return ["e_k is the expected maximum of k independent standard normal draws ("
            + ", ".join(f"e_{k} = {expected_maximum(k):.2f}" for k in sorted({entry.k for entry in entries}))
            + "). If every setting were exactly as good as plain fine-tuning and one run's score varied by s, the "
            "best of k settings would still beat one plain run by s·e_k on average, and would beat it at all with "
            "probability k / (k + 1) (ties aside: held-out accuracy moves in steps of 0.2 to 0.3 points). "
            "Two estimates of s: σ, plain fine-tuning's spread over the five test seeds, includes what "
            "a seed shares between methods (the few-shot sample, the classifier's initialization), which cancels "
            "in a selection sweep where every setting runs on seed 1, so σ·e_k is an upper bound; τ, the spread "
            "of the five paired test differences divided by √2, leaves that shared part out (MiniLM's report kept "
            "means and deviations, not the per-seed scores τ needs). Settings of one method share more with each "
            "other than with plain fine-tuning, which makes even τ·e_k generous, and with five seeds σ and τ are "
            "themselves uncertain by a factor of about 0.6 to 2.9. P is the chance that noise alone gives a gain "
            "at least as large as the one observed, 1 − ∫ φ(z) Φ(z + gain/s)^k dz, with s = τ where known and σ "
            "where marked."]


def _protocol_summary(entries: list[SelectionEntry]) -> str:
    """Wins on the selection split against chance, the winning gains that noise explains poorly, and what the
    winning settings did on the test seeds."""
    won = [entry for entry in entries if entry.selection_gain > 0]
    chance = sum(entry.k / (entry.k + 1) for entry in entries)
    than = "fewer than" if len(won) < chance - 1 else "more than" if len(won) > chance + 1 else "about as many as"
    rare = [entry for entry in won if entry.null_probability < 0.05]
    tested = [entry for entry in won if entry.test_delta not in ("", "–")]
    text = (f"On the selection split the best setting beat plain fine-tuning in {len(won)} of {len(entries)} rows, "
            f"{than} the {chance:.1f} that chance alone would give if no setting differed from plain fine-tuning; "
            f"{len(rare)} of the winning gains would arise from noise alone less than 5 % of the time"
            + (f" ({', '.join(f'{e.model} {e.study} {e.arm}' for e in rare)})" if rare else "") + ".")
    if tested:
        deltas = [float(entry.test_delta.split()[0]) for entry in tested]
        text += (f" On the five test seeds, the winning settings' differences from plain fine-tuning are "
                 f"{', '.join(f'{delta:+.1f}' for delta in deltas)} (mean {_mean(deltas):+.1f}), against selection "
                 f"gains averaging {_mean([entry.selection_gain for entry in tested]):+.1f}.")
    return text


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
