"""docs/results.md: every suite but MiniLM's in full (:func:`write_overview`), with all-MiniLM-L6-v2 beside them.

all-MiniLM-L6-v2's numbers are read back from its own report, ``docs/results-minilm.md``: ``evidence.py``
generated it from that study's sweeps, whose run folders were not kept. The selection-protocol section sets the
best held-out score of a grid against plain fine-tuning's, next to the expected maximum of k noisy runs
(:func:`expected_maximum`) at the study's own seed spread.
"""

from __future__ import annotations

import functools
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import evidence_record
import evidence_regime
from evidence_record import CommandLog
from evidence_report import (
    ARM_NAMES,
    MINILM_REPORT,
    OVERFIT_HEADER,
    OVERVIEW,
    budget_lines,
    curve_lines,
    difference_cells,
    draw,
    fall_and_growth,
    overfit_cells,
    results_table,
    selection_lines,
)
from evidence_results import collect, finished_selection, setting_text
from evidence_studies import SELECTION_SEED, TEST_SEEDS, Study, arm_of, commands, probe_dir, run_folder, studies

from addrop_cli.outputs import write_text


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


def selection_entries(found: dict[str, dict], all_studies: list[Study], out: Path,
                      model: str) -> list[SelectionEntry]:
    """Per study and regularized arm: the best of its selection settings against FT on the held-out split, with
    FT's seed spread and the chosen setting's five-seed test difference (studies whose test sweep finished)."""
    entries = []
    for study in all_studies:
        rows, result = finished_selection(study, out), found.get(study.name)
        plain = [row for row in rows if row["baseline"]]
        if not plain or not result or len(result["ft"]) < 2:
            continue
        for arm, stats in (("addrop", result), ("rdrop", result.get("rdrop_stats"))):
            arm_rows = [row for row in rows if arm_of(row) == arm]
            if not arm_rows or stats is None:
                continue
            top = max(row["eval"][row["metric"]] for row in arm_rows)
            tied = [row for row in arm_rows if row["eval"][row["metric"]] == top]
            chosen = result["chosen"] if arm == "addrop" else result.get("rdrop_chosen")
            best = next((row for row in tied if row["settings"] == chosen), tied[0])  # a tie: the one tested
            entries.append(SelectionEntry(
                model, study.title, ARM_NAMES[arm], len(arm_rows), 100 * plain[0]["eval"][plain[0]["metric"]],
                100 * best["eval"][best["metric"]], setting_text(best["settings"]), statistics.stdev(result["ft"]),
                difference_cells(stats)[0], statistics.stdev(
                    [score - plain for score, plain in zip(result[arm], result["ft"], strict=True)]) / math.sqrt(2)))
    return entries


def overfit_comparison_lines(suites: list[Suite], minilm: dict[str, MiniLMStudy]) -> list[str]:
    """Plain fine-tuning's held-out curves in every study of every suite, MiniLM's beside them, and in how many
    plain fine-tuning overfitted."""
    ratio = evidence_regime.OVERFIT_RATIO
    lines = ["## Did plain fine-tuning overfit?", "",
             "Plain runs' held-out curves, means over the five test seeds: the best epoch's score against the last "
             "epoch's, and the held-out loss from its lowest to the last epoch (MiniLM's rows from "
             f"[{MINILM_REPORT}]({MINILM_REPORT})). A study counts as overfitting when the held-out loss ends at "
             f"least {ratio}× its lowest: the model keeps growing confident on its training set after held-out data "
             "stopped gaining, which is what a regularizer is meant to prevent.", "",
             "| model | study | " + OVERFIT_HEADER + " overfitted? |", "|---" * 9 + "|"]
    rows = [(suite.label, study.title, overfit_cells(suite.found[study.name]))
            for suite in suites for study in suite.studies if study.name in suite.found]
    rows += [("MiniLM", study.title, study.overfit[1:]) for study in minilm.values() if study.overfit]
    growth = {(label, title): fall_and_growth(cells)[1] for label, title, cells in rows}
    lines += [f"| {label} | {title} | " + " | ".join(cells) + f" | {evidence_regime.verdict(growth[label, title])} |"
              for label, title, cells in rows]
    overfitted = [f"{label} {title} ({value:.2f}×)" for (label, title), value in growth.items() if value >= ratio]
    lines += ["", f"Plain fine-tuning overfitted in {len(overfitted)} of {len(rows)} studies"
              + (": " + "; ".join(overfitted) if overfitted else "") + ".", ""]
    return lines


@dataclass
class Suite:
    """One suite as the overview reports it: its studies, their results, its run folder and command log."""

    name: str
    studies: list[Study]
    found: dict[str, dict]
    out: Path
    log: CommandLog

    @property
    def label(self) -> str:
        return SUITE_TEXT[self.name][0]


# Per suite: its label in shared tables, its section's heading and what its grid was.
SUITE_TEXT = {
    "mpnet-base": ("MPNet-base", "all-mpnet-base-v2 (12 layers, 768 hidden, 110 M parameters): short schedules",
                   "Grid on the held-out split: AD-DROP p, q ∈ {0.1, 0.3} in the first layer only (the paper's choice "
                   "for SST-2; all layers did not fit the budget), R-Drop α ∈ {1, 4} (1 as in R-Drop's README, 4 "
                   "what its BERT GLUE code's summed KL weighs at batch 16). Plain fine-tuning was still improving "
                   "when these schedules ended (see \"Did plain fine-tuning overfit?\"), so they cannot show what a "
                   "regularizer does against overfitting; the next section can."),
    "mpnet-base-overfit": ("MPNet-base, overfitting", "all-mpnet-base-v2 where plain fine-tuning overfits",
                           "Each study's schedule (epochs, learning rate) was chosen before any regularized run, by "
                           "plain fine-tuning on the selection seed evaluated after every epoch (Finding the regime, "
                           "below), so that the held-out loss is lowest in the first half of the epochs and ends at "
                           f"least {evidence_regime.OVERFIT_RATIO}× that, and the held-out score peaks before the "
                           "last epoch. Grid on the held-out split: AD-DROP p, q ∈ "
                           "{0.1, 0.3} × layers ∈ {first, all} (the paper picks the layers per task; on MRPC q 0.3 "
                           "only, the value every earlier MRPC selection chose, to fit the budget), R-Drop α ∈ "
                           "{1, 4}."),
    "smollm2": ("SmolLM2", "SmolLM2-135M-Instruct (decoder LLM, 30 layers, 135 M parameters), generative with LoRA",
                "SST-2 as generation: the model answers \"positive\" or \"negative\" in its chat format, LoRA r 8 on "
                "the attention projections, loss on the answer tokens; AD-DROP's target is minus the cross-entropy "
                "of the model's own (argmax) answer tokens, in the first layer. Grid on the held-out split: "
                "AD-DROP p ∈ {0.1, 0.3} at q 0.3, R-Drop α 1 (a smaller grid: the budget left)."),
}


def load_suite(suite: str, out: Path | None = None) -> Suite:
    """The results of a suite's studies in ``out``, or in its run folder brought up to its committed record."""
    if out is None:
        out = run_folder(suite)
        evidence_record.restore(evidence_record.RECORDS / suite, out)
    all_studies = studies(suite)
    found = {study.name: result for study in all_studies if (result := collect(study, out)) is not None}
    return Suite(suite, all_studies, found, out, CommandLog(out / evidence_record.COMMANDS_FILE))


def regime_lines(suite: Suite) -> list[str]:
    """The regime probes of a suite's studies: every schedule tried, and the chosen one's curve epoch by epoch."""
    tried = [(study, schedule, evidence_regime.read_curve(probe_dir(study, suite.out, schedule), schedule,
                                                          study.metric))
             for study in suite.studies for schedule in study.probes]
    finished = [(study, schedule, curve) for study, schedule, curve in tried if curve is not None]
    if not finished:
        return []
    lines = ["### Finding the regime", "",
             f"Plain fine-tuning on seed {SELECTION_SEED}, evaluated on the held-out split after every epoch, for each "
             "schedule tried (the last one per study is the one used). A schedule reaches the regime when the "
             "held-out loss is at its lowest within the first half of its epochs and ends at least "
             f"{evidence_regime.OVERFIT_RATIO}× that, and the held-out score peaks before the last epoch (loss can "
             "rise from overconfidence alone while the score still climbs); the overfitting column and table "
             "below ask only the second, of the test seeds' mean curves:", "",
             *evidence_regime.regime_table([(study.title, curve) for study, _, curve in finished]), ""]
    for study, schedule, curve in finished:
        if schedule == study.schedule:
            lines += [f"#### {study.title}: {evidence_regime.schedule_text(schedule)}", "",
                      *evidence_regime.curve_table(curve), ""]
    return lines


def suite_section(suite: Suite, data: Path) -> list[str]:
    """A suite's heading, grid, regime probes (where it has them), results table and per-seed figure."""
    _, heading, grid = SUITE_TEXT[suite.name]
    figure = f"results-{suite.name}.png"
    return [f"## {heading}", "", grid, "", *regime_lines(suite),
            *results_table(suite.found, suite.studies, overfitted=True), "",
            *([f"![per-seed scores]({figure})", ""] if suite.found else [])]


def write_overview(suites: list[Suite], data: Path, docs: Path) -> None:
    """docs/results.md: every base-size and LLM suite in full, MiniLM's table beside them, the selection-protocol
    arithmetic for all, and whether plain fine-tuning overfitted in each study."""
    minilm_report = (docs / MINILM_REPORT).read_text(encoding="utf-8")
    minilm = read_minilm(minilm_report)
    entries = [*minilm_selection_entries(minilm),
               *(entry for suite in suites for entry in selection_entries(suite.found, suite.studies, suite.out,
                                                                          suite.label))]
    lines = ["# Evidence: does AD-DROP help? Plain fine-tuning, AD-DROP and R-Drop on 2 CPU cores", "",
             "Generated by `python benchmarks/evidence.py --suite SUITE` for any suite but minilm, from the sweeps of "
             + ", ".join(f"`{suite.name}`" for suite in suites) + " (their small files are kept in "
             "`benchmarks/evidence-runs/SUITE/`) and, for all-MiniLM-L6-v2, from "
             f"[{MINILM_REPORT}]({MINILM_REPORT}), which `python benchmarks/evidence.py` generated from that "
             "study's sweeps; do not edit by hand.", "",
             "Protocol (every suite): a seeded 10 % of each training set is held out and used to select the epoch "
             "and each method's settings on seed "
             f"{SELECTION_SEED}; the GLUE dev file is the test set, scored once per run with the selected "
             f"checkpoint, on seeds {', '.join(map(str, TEST_SEEDS))}. Scores in percent; Δ is the method − FT "
             "with a paired t-test over seeds and a 95 % bootstrap interval of the mean difference. AD-DROP: GA "
             "attribution, pseudo labels. Both regularizers use cross-tuning (odd epochs plain, even epochs "
             "regularized), so they get the same regularized epochs. Batch 16, length-grouped batches.", ""]
    for suite in suites:
        lines += suite_section(suite, data)
    lines += ["## all-MiniLM-L6-v2 (6 layers, 384 hidden, 22 M parameters)", "",
              "Grid: AD-DROP p, q ∈ {0.1, 0.3} × layers ∈ {first, all}; no R-Drop arm. Details, curves and the "
              f"drift analysis: [{MINILM_REPORT}]({MINILM_REPORT}).", "",
              *first_table(minilm_report), "",
              *selection_protocol_lines(entries), *overfit_comparison_lines(suites, minilm)]
    for suite in suites:
        lines += [line for study in suite.studies for line in curve_lines(suite.found, study, f"{suite.label}, ")]
    for suite in suites:
        label = f": {suite.label}"
        lines += [*selection_lines(suite.studies, suite.out, label),
                  *budget_lines(suite.found, suite.studies, suite.log, suite.out, data, label),
                  f"## Studies{label}", "", *(f"- {study.title}: {study.notes}." for study in suite.studies), "",
                  f"## Commands{label}", "", "Run from the repository root (what `python benchmarks/evidence.py "
                  f"--suite {suite.name}` runs):", "", "```", *commands(suite.studies, suite.out), "```", ""]
    write_text(docs / OVERVIEW, "\n".join(lines))
    for suite in suites:
        draw(suite.found, suite.studies, docs / f"results-{suite.name}.png")
