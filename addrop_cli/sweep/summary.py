"""A sweep's tables, best recipe and heatmaps: mean ± std over seeds per setting (the layout of the paper's
Table 3) and the p × q sensitivity maps of Fig. 6 (the mean metric, and the difference from plain
fine-tuning scaled into [-1, 1], above-baseline red, below blue).

A summary reports what the sweep found, not only a winner: settings whose means print the same are a tie (no
row is singled out), and trials whose best epoch predicted one class are marked, since their scores say
nothing about the settings.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from addrop_cli import plots
from addrop_cli.core.methods.registry import DEFAULT_METHOD, methods
from addrop_cli.core.settings import FT_PHASE
from addrop_cli.errors import UserError
from addrop_cli.outputs import write_text
from addrop_cli.recipe import dump_yaml, merge, method_sections, nest
from addrop_cli.sweep.grid import METHOD_KEY, P_KEY, Q_KEY, format_value, regularizer_key
from addrop_cli.sweep.plan import Trial, current_results, load_manifest, plan_from_manifest, read_results
from addrop_cli.tasks.registry import METRIC_RANGES
from addrop_cli.training.one_class import ONE_CLASS_SHARE, best_epoch_majority, is_one_class

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUMMARY_CSV, SUMMARY_MD, BEST_RECIPE = "summary.csv", "summary.md", "best-recipe.yaml"
HEATMAP, HEATMAP_VS_BASELINE = "heatmap.png", "heatmap-vs-baseline.png"
BEST_RUN_DIR = "best-run"
DECIMALS = 4  # scores are shown with 4 decimals; means that show the same are a tie


def display_name(method: str) -> str:
    """A row's method as tables show it: the method table's display name, ``FT`` for plain fine-tuning (a method
    whose plugin is no longer installed keeps its name)."""
    if method == FT_PHASE:
        return "FT"
    spec = methods().get(method)
    return spec.display_name if spec is not None else method


@dataclass
class SettingStats:
    """One row of the table: a setting (grid values, seed apart) and its scores over the finished seeds."""

    baseline: bool
    settings: dict[str, Any]
    method: str = DEFAULT_METHOD  # the regularizer ("ft" for the baseline)
    seeds: list[int] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # "eval.accuracy" -> one value per seed
    diverged: int = 0
    one_class: list[str] = field(default_factory=list)  # per seed whose best epoch predicted one class: the class

    def mean(self, name: str) -> float:
        values = self.scores.get(name, [])
        return statistics.fmean(values) if values else math.nan

    def std(self, name: str) -> float:
        """Sample standard deviation over seeds (nan with one seed)."""
        values = self.scores.get(name, [])
        return statistics.stdev(values) if len(values) > 1 else math.nan

    def shown_mean(self, name: str) -> str:
        """The mean as every table and message shows it (4 decimals)."""
        mean = self.mean(name)
        return "–" if math.isnan(mean) else f"{mean:.{DECIMALS}f}"

    def cell(self, name: str) -> str:
        std = self.std(name)
        shown = self.shown_mean(name)
        return shown if math.isnan(std) or shown == "–" else f"{shown} ± {std:.{DECIMALS}f}"

    def describe(self) -> str:
        """``p=0.1, q=0.3``; the baseline is ``FT`` (``FT lr=1e-05`` when other keys are swept); a baseline method,
        or any method of a sweep over methods, is named first (``R-Drop alpha=0.5``, ``AD-DROP p=0.1``)."""
        described = ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}"
                              for key, value in self.settings.items() if key != METHOD_KEY)
        if self.baseline:
            return f"FT {described}".strip()
        if self.method != DEFAULT_METHOD or METHOD_KEY in self.settings:
            return f"{display_name(self.method)} {described}".strip()
        return described or "the base recipe"


@dataclass
class SweepSummary:
    directory: Path
    metric: str  # the selection metric, e.g. "eval.accuracy"
    axes: dict[str, list[Any]]
    rows: list[SettingStats]
    best: SettingStats | None
    finished: int
    total: int
    files: list[Path] = field(default_factory=list)
    tied: list[SettingStats] = field(default_factory=list)  # every setting whose mean shows as the best's

    @property
    def is_tie(self) -> bool:
        return len(self.tied) > 1

    @property
    def every_setting_tied(self) -> bool:
        """No setting beat the others: every setting with a score (the baseline too) shows the same mean."""
        return self.is_tie and len(self.tied) == sum(1 for row in self.rows if row.seeds)

    def is_tied(self, row: SettingStats) -> bool:
        return self.is_tie and any(row is tied for tied in self.tied)

    def one_class_trials(self) -> tuple[int, int]:
        """(trials whose best epoch predicted one class, finished trials)."""
        return sum(len(row.one_class) for row in self.rows), sum(len(row.seeds) for row in self.rows)

    def baseline_for(self, settings: dict[str, Any]) -> SettingStats | None:
        """The baseline row with the same settings outside the regularizer's."""
        plain = {key: value for key, value in settings.items() if not regularizer_key(key)}
        return next((row for row in self.rows if row.baseline and row.settings == plain), None)


def collect(directory: Path) -> tuple[SweepSummary, dict[str, Any]]:
    """Group this grid's finished results by setting (diverged trials are counted, not averaged), pick the best
    AD-DROP setting and find the settings tied with it (see :func:`tied_with`)."""
    manifest = load_manifest(directory)
    trials = plan_from_manifest(directory, manifest)
    results = current_results(trials, read_results(directory))
    rows: dict[tuple, SettingStats] = {}
    for trial in trials:
        stats = rows.setdefault((trial.baseline, _freeze(trial.settings)),
                                SettingStats(trial.baseline, trial.settings, trial.method))
        if trial.id in results:
            _add_result(stats, trial, results[trial.id])
    table = [stats for stats in rows.values() if stats.seeds or stats.diverged]
    metric = next((f"eval.{row['metric']}" for row in results.values() if row["status"] == "ok"), None)
    if metric is None:
        raise UserError(f"{directory}: no finished trials yet; nothing to summarize")
    candidates = [s for s in table if not s.baseline and s.seeds] or [s for s in table if s.seeds]
    # Among means that show the same, the highest before rounding, then the first in the grid's order.
    best = max(candidates, key=lambda s: s.mean(metric))
    summary = SweepSummary(directory, metric, manifest["axes"], table, best, len(results), len(trials),
                           tied=tied_with(best, table, metric))
    return summary, manifest


def _add_result(stats: SettingStats, trial: Trial, row: dict[str, Any]) -> None:
    """Count one trial's result row into its setting's scores."""
    if row["status"] != "ok":
        stats.diverged += 1
        return
    stats.seeds.append(trial.seed)
    for split in ("eval", "test"):
        for name, value in (row.get(split) or {}).items():
            stats.scores.setdefault(f"{split}.{name}", []).append(value)
    if "majority_share" in row:
        majority = row["majority_label"], row["majority_share"]
    else:  # a row written before results.jsonl recorded it: the trial's history still has the counts
        majority = best_epoch_majority(Path(trial.recipe.train.output_dir), trial.recipe.task, row["best_epoch"])
    if majority is not None and is_one_class(majority[1]):
        stats.one_class.append(majority[0])


def tied_with(best: SettingStats, rows: list[SettingStats], metric: str) -> list[SettingStats]:
    """Every setting whose mean ``metric`` shows the same as ``best``'s, ``best`` included, in table order.

    A tie is equality after rounding to the 4 decimals every table and message shows: what reads as equal is
    reported as equal, and a difference the reader can see is not a tie (seed noise is left to the ± column).
    The fine-tuning baseline counts as a setting, so AD-DROP settings that only match plain fine-tuning are
    reported as tied with it, and a sweep where every row, the baseline included, shows the same mean is one
    where no setting beat the others.
    """
    shown = best.shown_mean(metric)
    return [row for row in rows if row.seeds and row.shown_mean(metric) == shown]


def _freeze(settings: dict[str, Any]) -> tuple:
    return tuple((key, format_value(value)) for key, value in settings.items())


def summarize(directory: Path) -> SweepSummary:
    """Write summary.csv, summary.md, best-recipe.yaml and, for p × q grids, heatmap PNGs; return the summary."""
    summary, manifest = collect(directory)
    names = sorted({name for row in summary.rows for name in row.scores},
                   key=lambda name: (name != summary.metric, not name.startswith("eval."), name))
    _write_csv(summary, names)
    _write_markdown(summary, names)
    _write_best_recipe(summary, manifest)
    if P_KEY in summary.axes and Q_KEY in summary.axes:
        summary.files += sensitivity_heatmaps(summary, directory / HEATMAP, directory / HEATMAP_VS_BASELINE)
    return summary


# ------------------------------------------------------------------------------------------ heatmaps


def mean_grid(summary: SweepSummary) -> tuple[np.ndarray, dict]:
    """(len(p), len(q)) mean of the selection metric, other grid keys fixed at the best AD-DROP setting's values.

    Returns the grid (nan where no trial finished) and those fixed settings.
    """
    fixed = {key: value for key, value in best_addrop(summary).settings.items() if key not in (P_KEY, Q_KEY)}
    ps, qs = summary.axes[P_KEY], summary.axes[Q_KEY]
    grid = np.full((len(ps), len(qs)), np.nan)
    for row in summary.rows:
        if P_KEY not in row.settings or any(row.settings.get(key) != value for key, value in fixed.items()):
            continue
        grid[ps.index(row.settings[P_KEY]), qs.index(row.settings[Q_KEY])] = row.mean(summary.metric)
    return grid, fixed


def best_addrop(summary: SweepSummary) -> SettingStats:
    """The best of the rows with p and q (AD-DROP's, when the sweep compares methods)."""
    rows = [row for row in summary.rows if P_KEY in row.settings and row.seeds] or \
        [row for row in summary.rows if P_KEY in row.settings]
    return summary.best if summary.best in rows else max(rows, key=lambda row: row.mean(summary.metric))


def scaled_difference(grid: np.ndarray, baseline: float) -> tuple[np.ndarray, float]:
    """Fig. 6: (grid - baseline) / max |grid - baseline|, in [-1, 1]; also returns that maximum."""
    difference = grid - baseline
    scale = float(np.nanmax(np.abs(difference))) if np.isfinite(difference).any() else 0.0
    return (difference / scale if scale > 0 else np.where(np.isnan(difference), np.nan, 0.0)), scale


def colour_limits(metric: str, values: np.ndarray) -> tuple[float, float]:
    """The mean heatmap's colour scale for ``metric`` (``accuracy``, ``mcc`` ...): the values' own range, so that
    small differences between settings stay visible. When every cell holds the same value, the metric's whole
    range (accuracy and F1 [0, 1], MCC and correlations [-1, 1], BLEU [0, 100]; a colour says nothing then), or
    that value ± 5 % (at least ± 0.01) for a metric without bounds; never an invented [v - 1, v + 1]."""
    finite = values[np.isfinite(values)]
    bounds = METRIC_RANGES.get(metric)
    if finite.size == 0:
        return bounds or (0.0, 1.0)
    low, high = float(finite.min()), float(finite.max())
    if high > low:
        return low, high
    if bounds is not None:
        return bounds
    pad = max(abs(low) * 0.05, 0.01)
    return low - pad, high + pad


def sensitivity_figures(summary: SweepSummary) -> list[Figure]:
    """heatmap.png's figure and, when the sweep has a baseline for that slice, heatmap-vs-baseline.png's."""
    grid, fixed = mean_grid(summary)
    where = ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}" for key, value in fixed.items())
    suffix = f" ({where})" if where else ""
    metric = summary.metric.split(".", 1)[-1]
    ps, qs = [format_value(p) for p in summary.axes[P_KEY]], [format_value(q) for q in summary.axes[Q_KEY]]
    figures = [plots.sensitivity_heatmap(grid, ps, qs, cmap="viridis", limits=colour_limits(metric, grid),
                                         title=f"AD-DROP {metric}, mean over seeds{suffix}", colorbar=metric,
                                         fmt="{:.3f}")]
    baseline = summary.baseline_for(best_addrop(summary).settings)
    if baseline is not None and not math.isnan(baseline.mean(summary.metric)):
        reference = baseline.mean(summary.metric)
        scaled, scale = scaled_difference(grid, reference)
        # Cells say the difference itself (in points for a metric in [0, 1]); the colour shows it scaled (Fig. 6).
        in_points = METRIC_RANGES.get(metric) == (0.0, 1.0)
        points, unit, digits = (100.0, ", in points", 1) if in_points else (1.0, "", 3)
        figures.append(plots.sensitivity_heatmap(
            scaled, ps, qs, cmap="RdBu_r", limits=(-1.0, 1.0), labels=(grid - reference) * points,
            title=f"AD-DROP − fine-tuning ({metric} {reference:.4f}){unit}; colour scaled by max |Δ| = "
                  f"{scale * points:.{digits}f}{suffix}",
            colorbar="(AD-DROP − FT) / max |AD-DROP − FT|", fmt=f"{{:+.{digits}f}}"))
    return figures


def sensitivity_heatmaps(summary: SweepSummary, mean_path: Path, versus_path: Path) -> list[Path]:
    """Draw heatmap.png and, when the sweep has a baseline for that slice, heatmap-vs-baseline.png."""
    written = []
    for figure, path in zip(sensitivity_figures(summary), (mean_path, versus_path), strict=False):
        plots.save_figure(figure, path, dpi=plots.HEATMAP_DPI, tight=False)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------ tables


def _write_csv(summary: SweepSummary, names: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = list(summary.axes)
    header = ["kind", *keys, "seeds", "diverged", "one_class"]
    for name in names:
        header += [f"{name}_mean", f"{name}_std"]
    writer.writerow([*header, "best"])
    for row in summary.rows:
        values = [row.method]
        values += [format_value(row.settings[key]) if key in row.settings else "" for key in keys]
        values += [len(row.seeds), row.diverged, len(row.one_class)]
        for name in names:
            values += [_number(row.mean(name)), _number(row.std(name))]
        writer.writerow([*values, _best_mark(summary, row)])
    path = summary.directory / SUMMARY_CSV
    write_text(path, buffer.getvalue())
    summary.files.append(path)


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _best_mark(summary: SweepSummary, row: SettingStats) -> str:
    """summary.csv's ``best`` column: ``yes`` for the one best setting, ``tied`` on every row of a tie."""
    if summary.is_tie:
        return "tied" if summary.is_tied(row) else ""
    return "yes" if row is summary.best else ""


# ------------------------------------------------------------------------------------------ findings


def _and(names: list[str]) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def verdict(summary: SweepSummary) -> str:
    """What the sweep found, in one line: the best setting, the settings tied for best, or that no setting beat
    the others; with the fine-tuning baseline's score when it is not in the tie."""
    metric, best = summary.metric.split(".", 1)[-1], summary.best
    shown = best.shown_mean(summary.metric)
    if summary.every_setting_tied:
        return f"no setting beat the others (all {len(summary.tied)} tied at {metric} {shown})"
    if summary.is_tie:
        text = f"tied: {'; '.join(row.describe() for row in summary.tied)} ({metric} {shown})"
    else:
        text = f"best: {best.describe()} ({metric} {best.cell(summary.metric)})"
    baseline = summary.baseline_for(best.settings)
    if baseline is not None and baseline.seeds and not best.baseline and not summary.is_tied(baseline):
        text += f"; fine-tuning baseline {baseline.cell(summary.metric)}"
    return text


def one_class_verdict(summary: SweepSummary, detail: str = "") -> str | None:
    """How many trials predicted one class for at least ONE_CLASS_SHARE of the evaluation set at their best
    epoch (``detail`` follows "evaluation set"), and what that means when it is every one of them; None when
    none did."""
    flagged, finished = summary.one_class_trials()
    if not flagged:
        return None
    threshold = f"≥ {ONE_CLASS_SHARE * 100:g} %"
    if flagged == finished:
        swept = _and([key.rsplit(".", 1)[-1] for key in summary.axes]) or "the settings"
        return (f"every trial predicted one class for {threshold} of the evaluation set{detail}: the scores say "
                f"nothing about {swept}; train longer or on more data")
    return f"{flagged} of {finished} trials predicted one class for {threshold} of the evaluation set{detail}"


def _write_markdown(summary: SweepSummary, names: list[str]) -> None:
    keys = [key for key in summary.axes if key != METHOD_KEY]  # the first column names the method
    short = [key.rsplit(".", 1)[-1] for key in keys]
    marked = any(row.one_class for row in summary.rows)  # the "one class" column only when a trial needs it
    columns = [*short, "seeds", *names, *(["one class"] if marked else [])]
    lines = [f"# Sweep summary: {summary.directory}", "",
             f"{summary.finished} of {summary.total} trials finished. Scores are mean ± sample standard deviation "
             f"over seeds at each trial's best epoch (selected on {summary.metric}).", "",
             "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in sorted(summary.rows, key=lambda r: not r.baseline):
        settings = [format_value(row.settings[key]) if key in row.settings else "" for key in keys]
        cells = [row.cell(name) for name in names]
        if _in_bold(summary, row):
            cells[0] = f"**{cells[0]}**"
        seeds = f"{len(row.seeds)}" + (f" (+{row.diverged} diverged)" if row.diverged else "")
        extra = [_one_class_cell(row)] if marked else []
        lines.append("| " + " | ".join([display_name(row.method), *settings, seeds, *cells, *extra])
                     + " |")
    lines += ["", *_findings(summary)]
    path = summary.directory / SUMMARY_MD
    write_text(path, "\n".join(lines) + "\n")
    summary.files.append(path)


def _in_bold(summary: SweepSummary, row: SettingStats) -> bool:
    """The best setting's score is in bold; in a tie every tied row's, unless every setting tied (then none)."""
    if summary.is_tie:
        return summary.is_tied(row) and not summary.every_setting_tied
    return row is summary.best


def _one_class_cell(row: SettingStats) -> str:
    """``2 of 3 seeds (positive)``: how many of the setting's seeds predicted one class, and which."""
    if not row.one_class:
        return ""
    seeds = f"{len(row.seeds)} seed" + ("s" if len(row.seeds) != 1 else "")
    return f"{len(row.one_class)} of {seeds} ({', '.join(sorted(set(row.one_class)))})"


def _findings(summary: SweepSummary) -> list[str]:
    """The lines under summary.md's table: the best setting or the tie, the baseline, the one-class trials."""
    best, metric = summary.best, summary.metric
    shown = best.shown_mean(metric)
    taken = f"`{BEST_RECIPE}` takes {best.describe()}."
    if summary.every_setting_tied:
        included = ", the fine-tuning baseline included," if any(row.baseline for row in summary.tied) else ""
        lines = [f"No setting beat the others: all {len(summary.tied)} settings{included} tied at {metric} {shown} "
                 f"(equal to the {DECIMALS} decimals shown), so no row is in bold. {taken}"]
    elif summary.is_tie:
        lines = [f"Tied for best (in bold; equal to the {DECIMALS} decimals shown): "
                 f"{'; '.join(row.describe() for row in summary.tied)}: {metric} {shown}. {taken}"]
    else:
        lines = [f"Best setting: {best.describe()}: {metric} {best.cell(metric)}"]
    baseline = summary.baseline_for(best.settings)
    if baseline is not None and not best.baseline and not summary.every_setting_tied:
        lines.append(f"Fine-tuning baseline: {metric} {baseline.cell(metric)}")
    one_class = one_class_verdict(summary, detail=' at the best epoch (column "one class")')
    if one_class is not None:
        lines.append(f"{one_class[0].upper()}{one_class[1:]}.")
    return lines


def _write_best_recipe(summary: SweepSummary, manifest: dict[str, Any]) -> None:
    best = summary.best
    values = manifest["base"]
    for key, value in best.settings.items():
        values = merge(values, nest(key, value))
    if best.baseline:
        values = merge(values, {"addrop": {"enabled": False}})
    values["train"] = {"output_dir": str(summary.directory / BEST_RUN_DIR), "seed": manifest["seeds"][0],
                       **values["train"]}
    spec = methods().get(best.method)  # None for plain fine-tuning
    used = spec.recipe_section if spec is not None else None
    values = {key: value for key, value in values.items() if key not in method_sections() or key == used}
    path = summary.directory / BEST_RECIPE
    header = "".join(f"# {line}\n" for line in [*_best_recipe_header(summary), f"Run: addrop train --recipe {path}"])
    write_text(path, dump_yaml(values, header=header))
    summary.files.append(path)


def _best_recipe_header(summary: SweepSummary) -> list[str]:
    """best-recipe.yaml's comment lines: the setting and its score, or that it is one of a tie."""
    best, metric = summary.best, summary.metric
    described = ", ".join(f"{key}={format_value(value)}" for key, value in best.settings.items()) or "base recipe"
    if summary.is_tie:
        lines = [f"No single best setting in the sweep in {summary.directory}: a tie of {len(summary.tied)} at "
                 f"{metric} {best.shown_mean(metric)} ({'; '.join(row.describe() for row in summary.tied)})",
                 f"This recipe takes one of them, {described}: the highest mean before rounding, then the first in "
                 "the grid's order"]
    else:
        lines = [f"Best setting of the sweep in {summary.directory}: {described}"]
    lines.append(f"{metric} {best.cell(metric)} over {len(best.seeds)} seed(s)")
    if best.one_class:
        lines.append(f"{len(best.one_class)} of those seeds predicted one class (≥ {ONE_CLASS_SHARE * 100:g} % of the "
                     "evaluation set) at their best epoch")
    return lines


def trials_table(trials: list[Trial]) -> list[list[str]]:
    """Rows for ``--dry-run``: id, kind, seed and each setting."""
    return [[t.id, t.method, str(t.seed),
             ", ".join(f"{k}={format_value(v)}" for k, v in t.settings.items())] for t in trials]
