"""A sweep's tables, best recipe and heatmaps: mean ± std over seeds per setting (the layout of the paper's
Table 3) and the p × q sensitivity maps of Fig. 6 (the mean metric, and the difference from plain
fine-tuning scaled into [-1, 1], above-baseline red, below blue)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from addrop_cli import plots
from addrop_cli.errors import UserError
from addrop_cli.outputs import write_text
from addrop_cli.recipe import dump_yaml, merge, nest
from addrop_cli.sweep.grid import P_KEY, Q_KEY, format_value
from addrop_cli.sweep.plan import Trial, current_results, load_manifest, plan_from_manifest, read_results

SUMMARY_CSV, SUMMARY_MD, BEST_RECIPE = "summary.csv", "summary.md", "best-recipe.yaml"
HEATMAP, HEATMAP_VS_BASELINE = "heatmap.png", "heatmap-vs-baseline.png"
BEST_RUN_DIR = "best-run"


@dataclass
class SettingStats:
    """One row of the table: a setting (grid values, seed apart) and its scores over the finished seeds."""

    baseline: bool
    settings: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # "eval.accuracy" -> one value per seed
    diverged: int = 0

    def mean(self, name: str) -> float:
        values = self.scores.get(name, [])
        return statistics.fmean(values) if values else math.nan

    def std(self, name: str) -> float:
        """Sample standard deviation over seeds (nan with one seed)."""
        values = self.scores.get(name, [])
        return statistics.stdev(values) if len(values) > 1 else math.nan

    def cell(self, name: str) -> str:
        mean, std = self.mean(name), self.std(name)
        if math.isnan(mean):
            return "–"
        return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


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

    def baseline_for(self, settings: dict[str, Any]) -> SettingStats | None:
        """The baseline row with the same non-AD-DROP settings."""
        plain = {key: value for key, value in settings.items() if not key.startswith("addrop.")}
        return next((row for row in self.rows if row.baseline and row.settings == plain), None)


def collect(directory: Path) -> tuple[SweepSummary, dict[str, Any]]:
    """Group this grid's finished results by setting (diverged trials are counted, not averaged)."""
    manifest = load_manifest(directory)
    trials = plan_from_manifest(directory, manifest)
    results = current_results(trials, read_results(directory))
    rows: dict[tuple, SettingStats] = {}
    metric = None
    for trial in trials:
        key = (trial.baseline, _freeze(trial.settings))
        stats = rows.setdefault(key, SettingStats(trial.baseline, trial.settings))
        row = results.get(trial.id)
        if row is None:
            continue
        if row["status"] != "ok":
            stats.diverged += 1
            continue
        metric = metric or f"eval.{row['metric']}"
        stats.seeds.append(trial.seed)
        for split in ("eval", "test"):
            for name, value in (row.get(split) or {}).items():
                stats.scores.setdefault(f"{split}.{name}", []).append(value)
    table = [stats for stats in rows.values() if stats.seeds or stats.diverged]
    if metric is None:
        raise UserError(f"{directory}: no finished trials yet; nothing to summarize")
    candidates = [s for s in table if not s.baseline and s.seeds] or [s for s in table if s.seeds]
    best = max(candidates, key=lambda s: s.mean(metric))
    summary = SweepSummary(directory, metric, manifest["axes"], table, best, len(results), len(trials))
    return summary, manifest


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
    """(len(p), len(q)) mean of the selection metric, other grid keys fixed at the best setting's values.

    Returns the grid (nan where no trial finished) and those fixed settings.
    """
    fixed = {key: value for key, value in summary.best.settings.items() if key not in (P_KEY, Q_KEY)}
    ps, qs = summary.axes[P_KEY], summary.axes[Q_KEY]
    grid = np.full((len(ps), len(qs)), np.nan)
    for row in summary.rows:
        if row.baseline or any(row.settings.get(key) != value for key, value in fixed.items()):
            continue
        grid[ps.index(row.settings[P_KEY]), qs.index(row.settings[Q_KEY])] = row.mean(summary.metric)
    return grid, fixed


def scaled_difference(grid: np.ndarray, baseline: float) -> tuple[np.ndarray, float]:
    """Fig. 6: (grid - baseline) / max |grid - baseline|, in [-1, 1]; also returns that maximum."""
    difference = grid - baseline
    scale = float(np.nanmax(np.abs(difference))) if np.isfinite(difference).any() else 0.0
    return (difference / scale if scale > 0 else np.where(np.isnan(difference), np.nan, 0.0)), scale


def sensitivity_heatmaps(summary: SweepSummary, mean_path: Path, versus_path: Path) -> list[Path]:
    """Draw heatmap.png and, when the sweep has a baseline for that slice, heatmap-vs-baseline.png."""
    grid, fixed = mean_grid(summary)
    where = ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}" for key, value in fixed.items())
    suffix = f" ({where})" if where else ""
    metric = summary.metric.split(".", 1)[-1]
    ps, qs = [format_value(p) for p in summary.axes[P_KEY]], [format_value(q) for q in summary.axes[Q_KEY]]
    figure = plots.sensitivity_heatmap(grid, ps, qs, cmap="viridis", limits=(np.nanmin(grid), np.nanmax(grid)),
                                       title=f"AD-DROP {metric}, mean over seeds{suffix}", colorbar=metric,
                                       fmt="{:.3f}")
    plots.save_figure(figure, mean_path, dpi=plots.HEATMAP_DPI, tight=False)
    written = [mean_path]
    baseline = summary.baseline_for(summary.best.settings)
    if baseline is not None and not math.isnan(baseline.mean(summary.metric)):
        reference = baseline.mean(summary.metric)
        scaled, scale = scaled_difference(grid, reference)
        figure = plots.sensitivity_heatmap(
            scaled, ps, qs, cmap="RdBu_r", limits=(-1.0, 1.0),
            title=f"{metric} vs. fine-tuning ({reference:.4f}), scaled by max |Δ| = {scale:.4f}{suffix}",
            colorbar="(AD-DROP − FT) / max |AD-DROP − FT|", fmt="{:+.2f}")
        plots.save_figure(figure, versus_path, dpi=plots.HEATMAP_DPI, tight=False)
        written.append(versus_path)
    return written


# ------------------------------------------------------------------------------------------ tables


def _write_csv(summary: SweepSummary, names: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = list(summary.axes)
    header = ["kind", *keys, "seeds", "diverged"]
    for name in names:
        header += [f"{name}_mean", f"{name}_std"]
    writer.writerow([*header, "best"])
    for row in summary.rows:
        values = ["ft" if row.baseline else "addrop"]
        values += [format_value(row.settings[key]) if key in row.settings else "" for key in keys]
        values += [len(row.seeds), row.diverged]
        for name in names:
            values += [_number(row.mean(name)), _number(row.std(name))]
        writer.writerow([*values, "yes" if row is summary.best else ""])
    path = summary.directory / SUMMARY_CSV
    write_text(path, buffer.getvalue())
    summary.files.append(path)


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _write_markdown(summary: SweepSummary, names: list[str]) -> None:
    keys = list(summary.axes)
    short = [key.rsplit(".", 1)[-1] for key in keys]
    lines = [f"# Sweep summary: {summary.directory}", "",
             f"{summary.finished} of {summary.total} trials finished. Scores are mean ± sample standard deviation "
             f"over seeds at each trial's best epoch (selected on {summary.metric}).", "",
             "| method | " + " | ".join([*short, "seeds", *names]) + " |",
             "|---" * (len(short) + 2 + len(names)) + "|"]
    for row in sorted(summary.rows, key=lambda r: not r.baseline):
        settings = [format_value(row.settings[key]) if key in row.settings else "" for key in keys]
        cells = [row.cell(name) for name in names]
        if row is summary.best:
            cells[0] = f"**{cells[0]}**"
        seeds = f"{len(row.seeds)}" + (f" (+{row.diverged} diverged)" if row.diverged else "")
        lines.append("| " + " | ".join(["FT" if row.baseline else "AD-DROP", *settings, seeds, *cells]) + " |")
    if summary.best is not None:
        best = summary.best
        described = ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}"
                              for key, value in best.settings.items()) or "the base recipe"
        lines += ["", f"Best setting: {described}: {summary.metric} {best.cell(summary.metric)}"]
        baseline = summary.baseline_for(best.settings)
        if baseline is not None and not best.baseline:
            lines.append(f"Fine-tuning baseline: {summary.metric} {baseline.cell(summary.metric)}")
    path = summary.directory / SUMMARY_MD
    write_text(path, "\n".join(lines) + "\n")
    summary.files.append(path)


def _write_best_recipe(summary: SweepSummary, manifest: dict[str, Any]) -> None:
    best = summary.best
    values = manifest["base"]
    for key, value in best.settings.items():
        values = merge(values, nest(key, value))
    if best.baseline:
        values = merge(values, {"addrop": {"enabled": False}})
    sections = ("task", "model", "data", "train", "addrop")
    values["train"] = {"output_dir": str(summary.directory / BEST_RUN_DIR), "seed": manifest["seeds"][0],
                       **values["train"]}
    values = {key: values[key] for key in sections if key in values}
    described = ", ".join(f"{key}={format_value(value)}" for key, value in best.settings.items()) or "base recipe"
    path = summary.directory / BEST_RECIPE
    header = (f"# Best setting of the sweep in {summary.directory}: {described}\n"
              f"# {summary.metric} {best.cell(summary.metric)} over {len(best.seeds)} seed(s)\n"
              f"# Run: addrop train --recipe {path}\n")
    write_text(path, dump_yaml(values, header=header))
    summary.files.append(path)


def trials_table(trials: list[Trial]) -> list[list[str]]:
    """Rows for ``--dry-run``: id, kind, seed and each setting."""
    return [[t.id, "ft" if t.baseline else "addrop", str(t.seed),
             ", ".join(f"{k}={format_value(v)}" for k, v in t.settings.items())] for t in trials]
