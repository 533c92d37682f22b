"""Figures in the style of the paper, drawn from plain arrays: attention maps with candidate regions and dropped
positions (Fig. 1), per-token attribution bars, train / dev loss curves of several runs (Fig. 2) and the p × q
sensitivity heatmaps of a sweep (Fig. 6).

Figures are built with matplotlib's object API (no pyplot, so no global state or GUI backend) and saved
atomically by :func:`save_figure`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from addrop_cli.errors import UserError
from addrop_cli.outputs import write_bytes

FORMATS = ("png", "pdf", "svg")
CELL_INCHES = 0.3
ATTRIBUTION_COLORS = "Blues"
CROSS_COLOR = (1.0, 0.5, 0.05, 1.0)
HEATMAP_INCHES, HEATMAP_DPI = (7.0, 6.0), 100  # 700 x 600 pixels: room for a 9 x 9 grid with values


def save_figure(figure: Figure, path: Path, dpi: int = 100, tight: bool = True) -> None:
    """Render ``figure`` in the format its suffix names (png, pdf, svg) and write it atomically.

    ``tight=False`` keeps the figure's own size (figsize x dpi pixels) instead of cropping to its contents.
    """
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"{path}: unsupported figure format {path.suffix or '(no suffix)'!r}; valid: "
                        + ", ".join(f".{f}" for f in FORMATS))
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight" if tight else None)
    write_bytes(path, buffer.getvalue())


def region_outline(region: np.ndarray) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Segments tracing the border of a boolean (rows, cols) region, in cell coordinates (cell centres at
    integers): every side of a region cell whose neighbour across it is outside the region."""
    padded = np.pad(region, 1)
    segments = []
    for row, col in zip(*np.nonzero(region), strict=True):
        r, c = row + 1, col + 1
        if not padded[r - 1, c]:
            segments.append(((col - 0.5, row - 0.5), (col + 0.5, row - 0.5)))
        if not padded[r + 1, c]:
            segments.append(((col - 0.5, row + 0.5), (col + 0.5, row + 0.5)))
        if not padded[r, c - 1]:
            segments.append(((col - 0.5, row - 0.5), (col - 0.5, row + 0.5)))
        if not padded[r, c + 1]:
            segments.append(((col + 0.5, row - 0.5), (col + 0.5, row + 0.5)))
    return segments


def attention_map(
    tokens: Sequence[str],
    attention: np.ndarray,
    shade: np.ndarray,
    candidate_share: np.ndarray,
    drop_share: np.ndarray,
    title: str,
    note: str = "",
    shade_label: str = "attribution",
    blank_rows: np.ndarray | None = None,
    hidden: np.ndarray | None = None,
) -> Figure:
    """Fig. 1: one circle per attention position (query row, key column), its area the attention probability
    and its shade the attribution (darker is higher); the candidate region outlined with a red dotted line and
    dropped positions crossed out. ``blank_rows`` ((n,) bool) are query rows without attribution: greyed out
    and labelled, with no outline or crosses. ``hidden`` ((n, n) bool) are positions the row cannot see (a causal
    model's later keys): left empty.

    Args:
        tokens: the n tokens, on both axes.
        attention: (n, n) probabilities, one head or the mean over heads.
        shade: (n, n) attribution, or a transform of it in [0, 1] such as its rank within the row.
        candidate_share, drop_share: (n, n) share of the shown heads in which a position is a candidate /
            dropped (0 or 1 for one head). Positions that are candidates in at least half of them are outlined;
            a cross is as opaque as the share of heads that drop the position.
        note: a line under the title (e.g. that the map is cropped).
    """
    n = len(tokens)
    side = max(3.0, CELL_INCHES * n)
    figure = Figure(figsize=(side + 2.2, side + 1.6))
    axes = figure.add_subplot()
    rows, cols = np.indices((n, n))
    largest = max(float(attention.max()), 1e-12)
    cell_points = 72 * CELL_INCHES
    # Area proportional to attention, with a floor so that every position stays visible.
    sizes = (0.9 * cell_points) ** 2 * (0.06 + 0.94 * attention / largest)
    shown = np.ones((n, n), dtype=bool) if hidden is None else ~hidden
    dots = axes.scatter(cols[shown], rows[shown], s=sizes[shown], c=shade[shown], cmap=ATTRIBUTION_COLORS,
                        edgecolors="0.5", linewidths=0.4)
    figure.colorbar(dots, ax=axes, fraction=0.04, pad=0.02, label=shade_label)
    blank = np.zeros(n, dtype=bool) if blank_rows is None else blank_rows
    axes.add_collection(LineCollection(region_outline((candidate_share >= 0.5) & ~blank[:, None]), colors="red",
                                       linestyles=":", linewidths=1.6))
    for row in np.nonzero(blank)[0]:
        axes.axhspan(row - 0.5, row + 0.5, color="0.85", alpha=0.7, zorder=3)
        axes.text((n - 1) / 2, row, "no attribution", ha="center", va="center", fontsize=7, color="0.3", zorder=4)
    crossed = (drop_share > 0) & ~blank[:, None]
    if crossed.any():
        colors = np.tile(CROSS_COLOR, (int(crossed.sum()), 1))  # orange stands out on every shade of blue
        colors[:, 3] = drop_share[crossed]
        axes.scatter(cols[crossed], rows[crossed], marker="x", s=(0.6 * cell_points) ** 2, c=colors, linewidths=1.6)
    axes.set_xlim(-0.5, n - 0.5)
    axes.set_ylim(n - 0.5, -0.5)
    axes.set_aspect("equal")
    axes.set_xticks(range(n), tokens, rotation=90, fontsize=8)
    axes.set_yticks(range(n), tokens, fontsize=8)
    axes.set_xlabel("key")
    axes.set_ylabel("query")
    axes.set_title(title + (f"\n{note}" if note else ""), fontsize=10)
    return figure


def token_bars(tokens: Sequence[str], values: np.ndarray, title: str, note: str = "") -> Figure:
    """One bar per token (e.g. its attribution summed over layers); negative bars in a second colour."""
    n = len(tokens)
    figure = Figure(figsize=(max(4.0, CELL_INCHES * n + 1.5), 3.2))
    axes = figure.add_subplot()
    axes.bar(range(n), values, color=np.where(values >= 0, "tab:blue", "tab:orange"))
    axes.axhline(0, color="0.3", linewidth=0.6)
    axes.set_xlim(-0.6, n - 0.4)
    axes.set_xticks(range(n), tokens, rotation=90, fontsize=8)
    axes.set_ylabel("attribution")
    axes.set_title(title + (f"\n{note}" if note else ""), fontsize=10)
    return figure


def loss_curves(runs: dict[str, list[dict]]) -> Figure:
    """Fig. 2: training and validation loss per epoch, one line per run (same colour in both panels).

    Args:
        runs: legend label -> the run's ``history.jsonl`` rows (``epoch``, ``train_loss``, and ``eval_loss`` in
            the epochs that were evaluated).
    """
    figure = Figure(figsize=(10, 4))
    train_axes, dev_axes = figure.subplots(1, 2)
    for label, rows in runs.items():
        (line,) = train_axes.plot([row["epoch"] for row in rows], [row["train_loss"] for row in rows], marker="o",
                                  label=label)
        evaluated = [row for row in rows if "eval_loss" in row]
        dev_axes.plot([row["epoch"] for row in evaluated], [row["eval_loss"] for row in evaluated], marker="o",
                      color=line.get_color(), label=label)
    for axes, title in ((train_axes, "Training loss"), (dev_axes, "Validation loss")):
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel("loss")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
    dev_axes.legend()
    figure.tight_layout()
    return figure


def sensitivity_heatmap(values: np.ndarray, ps: Sequence[str], qs: Sequence[str], *, cmap: str,
                        limits: tuple[float, float], title: str, colorbar: str, fmt: str,
                        labels: np.ndarray | None = None) -> Figure:
    """Fig. 6: one cell per (p, q), coloured by ``values`` within ``limits`` and labelled with ``fmt``.

    Args:
        values: (len(ps), len(qs)), nan where no trial finished.
        ps, qs: the axis labels (p down, q across).
        labels: what each cell says, shaped like ``values`` (default: ``values``), e.g. a difference in points
            where the colour shows it scaled.
    """
    labels = values if labels is None else labels
    low, high = limits
    if not (math.isfinite(low) and math.isfinite(high)) or low == high:
        low, high = (low - 1, high + 1) if math.isfinite(low) else (0, 1)
    figure = Figure(figsize=HEATMAP_INCHES, dpi=HEATMAP_DPI, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=high, aspect="auto")
    axes.set_xticks(range(len(qs)), qs)
    axes.set_yticks(range(len(ps)), ps)
    axes.set_xlabel("q (drop rate)")
    axes.set_ylabel("p (candidate share)")
    axes.set_title(title, fontsize=9, wrap=True)
    size = 9 if max(len(ps), len(qs)) <= 5 else 7
    middle = (low + high) / 2
    for i in range(len(ps)):
        for j in range(len(qs)):
            if np.isfinite(values[i, j]):
                dark = values[i, j] < middle if cmap == "viridis" else abs(values[i, j]) > 0.6
                axes.text(j, i, fmt.format(labels[i, j]), ha="center", va="center", fontsize=size,
                          color="white" if dark else "black")
    figure.colorbar(image, ax=axes, label=colorbar)
    return figure
