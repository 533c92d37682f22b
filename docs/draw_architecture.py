"""Draw docs/images/architecture.png: the layers (each imports only those below it) and the two seams of core/.

Run from the repository root: ``python docs/draw_architecture.py``.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

LAYERS = [  # top to bottom: (name, what it owns)
    ("cli/", "one thin module per command: parse, validate, call the library"),
    ("sweep/ · attribute · predict · ood · integrations", "grids and backends; the analysis engines; ADDropTrainer"),
    ("training/", "the one Accelerate loop, checkpoints, disk plan, trackers, run directory"),
    ("tasks/", "readers, pipelines, metrics, models (sequence, token, seq2seq, generation)"),
    ("recipe.py", "typed dataclasses, YAML, recipe < flags < --set"),
    ("core/", "AD-DROP maths (Eq. 2-7), pure torch; two seams:"),
    ("errors · outputs · interrupts · locks · plots", "one-line errors, atomic writes, signals, locks, figures"),
]
SEAMS = [
    ("routes/  (AttentionRoute)", ["interface.py: AttentionInterface", "hooks.py: module hooks (eager families)"]),
    ("methods/  (Regularizer)", ["addrop.py · rdrop.py · hiddencut.py", "plugins: entry point addrop.methods"]),
]


def draw(path: Path) -> None:
    figure = Figure(figsize=(9, 6.4), dpi=110)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.axis("off")
    top, height, gap = 96, 9.2, 2.3
    for index, (name, owns) in enumerate(LAYERS):
        y = top - (index + 1) * height - index * gap
        core = name == "core/"
        box_height = height * (2.3 if core else 1)
        if index > LAYERS.index(("core/", LAYERS[5][1])):
            y -= height * 1.3
        axes.add_patch(FancyBboxPatch((4, y - (box_height - height)), 72, box_height, boxstyle="round,pad=0.4",
                                      facecolor="#e8eaf6" if not core else "#c5cae9", edgecolor="#3949ab"))
        axes.text(6, y + height - 3.2, name, fontsize=10.5, weight="bold", va="center", family="monospace")
        axes.text(6, y + height - 6.8, owns, fontsize=8.5, va="center")
        if core:
            for column, (seam, modules) in enumerate(SEAMS):
                x = 7 + column * 34
                axes.add_patch(FancyBboxPatch((x, y - box_height + height + 1.2), 31, 10.5,
                                              boxstyle="round,pad=0.3", facecolor="white", edgecolor="#5c6bc0"))
                axes.text(x + 1, y - box_height + height + 9.3, seam, fontsize=8.5, weight="bold")
                for line, module in enumerate(modules):
                    axes.text(x + 1, y - box_height + height + 6 - line * 3.4, module, fontsize=7.8)
    axes.annotate("", xy=(86, 6), xytext=(86, 92), arrowprops={"arrowstyle": "->", "color": "#3949ab", "lw": 2})
    axes.text(88, 50, "imports only downward\n(tests/test_architecture.py)", fontsize=8.5, rotation=90,
              va="center", ha="center", color="#3949ab")
    figure.savefig(path)


if __name__ == "__main__":
    draw(Path(__file__).with_name("images") / "architecture.png")
