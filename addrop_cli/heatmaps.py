"""The p × q sensitivity heatmaps of a sweep: the mean metric, and the paper's Fig. 6 view (difference from
plain fine-tuning scaled into [-1, 1], above-baseline red, below blue)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from addrop_cli.plots import save_figure
from addrop_cli.sweep import P_KEY, Q_KEY, format_value

if TYPE_CHECKING:
    from addrop_cli.sweep_summary import SweepSummary

FIGURE_INCHES, DPI = (7.0, 6.0), 100  # every heatmap is 700 x 600 pixels: room for a 9 x 9 grid with values


def heatmap_pixels() -> tuple[int, int]:
    """(width, height) of every heatmap PNG."""
    return int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI)


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
    _draw(grid, summary, mean_path, cmap="viridis", limits=(np.nanmin(grid), np.nanmax(grid)),
          title=f"AD-DROP {metric}, mean over seeds{suffix}", colorbar=metric, fmt="{:.3f}")
    written = [mean_path]
    baseline = summary.baseline_for(summary.best.settings)
    if baseline is not None and not math.isnan(baseline.mean(summary.metric)):
        reference = baseline.mean(summary.metric)
        scaled, scale = scaled_difference(grid, reference)
        _draw(scaled, summary, versus_path, cmap="RdBu_r", limits=(-1.0, 1.0),
              title=f"{metric} vs. fine-tuning ({reference:.4f}), scaled by max |Δ| = {scale:.4f}{suffix}",
              colorbar="(AD-DROP − FT) / max |AD-DROP − FT|", fmt="{:+.2f}")
        written.append(versus_path)
    return written


def _draw(values: np.ndarray, summary: SweepSummary, path: Path, *, cmap: str, limits: tuple[float, float],
          title: str, colorbar: str, fmt: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps, qs = summary.axes[P_KEY], summary.axes[Q_KEY]
    low, high = limits
    if not (math.isfinite(low) and math.isfinite(high)) or low == high:
        low, high = (low - 1, high + 1) if math.isfinite(low) else (0, 1)
    figure, axes = plt.subplots(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=high, aspect="auto")
    axes.set_xticks(range(len(qs)), [format_value(q) for q in qs])
    axes.set_yticks(range(len(ps)), [format_value(p) for p in ps])
    axes.set_xlabel("q (drop rate)")
    axes.set_ylabel("p (candidate share)")
    axes.set_title(title, fontsize=9, wrap=True)
    size = 9 if max(len(ps), len(qs)) <= 5 else 7
    middle = (low + high) / 2
    for i in range(len(ps)):
        for j in range(len(qs)):
            if np.isfinite(values[i, j]):
                dark = values[i, j] < middle if cmap == "viridis" else abs(values[i, j]) > 0.6
                axes.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=size,
                          color="white" if dark else "black")
    figure.colorbar(image, ax=axes, label=colorbar)
    save_figure(figure, path, dpi=DPI, tight=False)
    plt.close(figure)
